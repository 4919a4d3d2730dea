"""Gradient coordination: PCGrad and the whole-layer peers (MGDA, UPGrad, CAGrad, Nash-MTL) against
torchjd, OGM-GE against its formula, CG-Coord properties, telemetry, confidence, and the one rule
registry (hyper-parameters declared with the rule, read by the config)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchjd.aggregation as jd
from lifelines.utils import concordance_index

from ksmodel.config import ConfigError, TrainConfig, coordination_keys, split_params
from ksmodel.coordination import RULES, HyperParam, Rule
from ksmodel.coordination.coordinator import make_coordinator
from ksmodel.coordination.rules import RuleResult
from ksmodel.losses import survival_risk
from ksmodel.tasks import get_task


def subspace_confidence(task, logits, targets):
    return get_task(task).confidence(logits, targets)

D = 6


def conflicting(rows=5, seed=0, dtype=torch.float64):
    """Rows whose two blocks point against each other (cos < 0)."""
    g = torch.Generator().manual_seed(seed)
    g_t = torch.randn(rows, D, generator=g, dtype=dtype)
    g_m = -0.7 * g_t + 0.2 * torch.randn(rows, D, generator=g, dtype=dtype)
    assert (F.cosine_similarity(g_t, g_m, dim=1) < 0).all()
    return g_t, g_m


def agreeing(rows=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    g_t = torch.randn(rows, D, generator=g, dtype=torch.float64)
    g_m = g_t + 0.3 * torch.randn(rows, D, generator=g, dtype=torch.float64)
    assert (F.cosine_similarity(g_t, g_m, dim=1) > 0).all()
    return g_t, g_m


def test_pcgrad_equals_torchjd_pcgrad():
    from torchjd.aggregation import PCGrad

    g_t, g_m = conflicting(rows=8)
    a_t, a_m = agreeing(rows=4, seed=3)
    g_t, g_m = torch.cat([g_t, a_t]), torch.cat([g_m, a_m])  # mixed conflict / no conflict
    new, tel = make_coordinator("pcgrad")(torch.cat([g_t, g_m], dim=1))
    ours = new[:, :D] + new[:, D:]
    for row in range(g_t.shape[0]):
        theirs = PCGrad()(torch.stack([g_t[row], g_m[row]]))
        torch.testing.assert_close(ours[row], theirs)
    assert tel["conflict_rate"] == pytest.approx(8 / 12)
    assert tel["projected_tumour"] == tel["projected_tme"] == pytest.approx(8 / 12)


GATED = ("uniform", "pcgrad", "cgcoord", "cgcoord_ref")  # act only on rows that conflict


def test_every_rule_is_either_conflict_gated_or_checked_below():
    assert set(RULES) == {*GATED, *TORCHJD, "ogm_ge"}


@pytest.mark.parametrize("rule", GATED)
def test_no_conflict_leaves_gradients_untouched(rule):
    g_t, g_m = agreeing()
    grad = torch.cat([g_t, g_m], dim=1)
    new, tel = make_coordinator(rule)(grad, 0.1, 0.9)  # t much weaker, but no conflict
    assert torch.equal(new, grad)
    assert tel["projected_tumour"] == tel["projected_tme"] == tel["proj_norm"] == 0.0
    assert tel["conflict_rate"] == 0.0 and tel["cos_mean"] > 0


@pytest.mark.parametrize(("conf_t", "conf_m", "weaker"), [(0.2, 0.8, "tumour"),
                                                          (0.9, 0.3, "tme")])
def test_cgcoord_projects_only_the_weaker_block_orthogonal_and_norm_kept(conf_t, conf_m, weaker):
    g_t, g_m = conflicting()
    new, tel = make_coordinator("cgcoord")(torch.cat([g_t, g_m], dim=1), conf_t, conf_m)
    n_t, n_m = new[:, :D], new[:, D:]
    weak_new, weak_old, strong_new, strong_old = (
        (n_t, g_t, n_m, g_m) if weaker == "tumour" else (n_m, g_m, n_t, g_t))
    assert torch.equal(strong_new, strong_old)  # the stronger side is never touched
    assert not torch.allclose(weak_new, weak_old)  # the weaker side is the one changed
    torch.testing.assert_close((weak_new * strong_old).sum(1), torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(weak_new.norm(dim=1), weak_old.norm(dim=1))
    assert tel[f"projected_{weaker}"] == 1.0
    assert tel[f"projected_{'tme' if weaker == 'tumour' else 'tumour'}"] == 0.0
    removed = ((weak_old * strong_old).sum(1).abs() / strong_old.norm(dim=1)).mean()
    assert tel["proj_norm"] == pytest.approx(removed.item())


def test_cgcoord_ref_reflects_instead_of_projecting():
    g_t, g_m = conflicting()
    new, _ = make_coordinator("cgcoord_ref")(torch.cat([g_t, g_m], dim=1), 0.2, 0.8)
    unit = g_m / g_m.norm(dim=1, keepdim=True)
    reflected = g_t - 2 * (g_t * unit).sum(1, keepdim=True) * unit
    torch.testing.assert_close(new[:, :D], reflected)  # reflection already keeps the norm
    assert torch.equal(new[:, D:], g_m)


def test_tau_rho_margin_is_respected():
    grad = torch.cat(conflicting(), dim=1)
    coord = make_coordinator("cgcoord", tau_rho=0.2)
    same, tel = coord(grad, 0.85, 1.0)  # rho = 0.85 >= 1 - 0.2: within the margin
    assert torch.equal(same, grad) and tel["projected_tumour"] == 0.0
    moved, tel = coord(grad, 0.75, 1.0)  # rho = 0.75 < 0.8: projected
    assert tel["projected_tumour"] == 1.0 and not torch.equal(moved, grad)
    equal, tel = make_coordinator("cgcoord")(grad, 0.5, 0.5)  # tau_rho = 0: nobody is weaker
    assert torch.equal(equal, grad)


def test_tau_cos_threshold_counts_mild_agreement_as_conflict():
    g_t = torch.tensor([[1.0, 0.0]])
    g_m = torch.tensor([[1.0, 3.0]])  # cos ~ 0.32
    grad = torch.cat([g_t, g_m], dim=1)
    assert torch.equal(make_coordinator("cgcoord")(grad, 0.1, 0.9)[0], grad)
    new, tel = make_coordinator("cgcoord", tau_cos=0.5)(grad, 0.1, 0.9)
    assert tel["projected_tumour"] == 1.0 and tel["conflict_rate"] == 0.0  # conflict_rate = cos < 0
    assert abs(float(new[0, :2] @ g_m[0])) < 1e-6


def test_missing_confidence_skips_and_reports():
    grad = torch.cat(conflicting(), dim=1)
    new, tel = make_coordinator("cgcoord")(grad, None, 0.7)
    assert torch.equal(new, grad) and tel["skipped"] == 1.0 and tel["projected_tumour"] == 0.0
    assert make_coordinator("pcgrad")(grad, None, None)[1]["skipped"] == 0.0


def test_vectorised_over_many_rows_and_dtype_kept():
    g_t, g_m = conflicting(rows=1000, dtype=torch.float32)
    grad = torch.cat([g_t, g_m], dim=1)
    new, tel = make_coordinator("cgcoord")(grad, 0.1, 0.5)
    assert new.dtype == grad.dtype and new.shape == grad.shape
    assert tel["projected_tumour"] == 1.0


def test_apply_writes_the_classifier_gradient():
    lin = torch.nn.Linear(2 * D, 5, dtype=torch.float64)
    lin.weight.grad = torch.cat(conflicting(), dim=1)
    before = lin.weight.grad.clone()
    tel = make_coordinator("pcgrad").apply_(lin)
    assert not torch.equal(lin.weight.grad, before) and tel["projected_tumour"] == 1.0


def scale_m(b, params):
    """A rule with its own hyper-parameter: scale the TME block."""
    none = torch.zeros_like(b.cos, dtype=torch.bool)
    return RuleResult(b.g_t, b.g_m * params["m_scale"], none, ~none, torch.zeros_like(b.cos),
                      b.norm_m * abs(1 - params["m_scale"]))


def test_a_new_rule_with_its_own_hyper_parameter_is_one_declaration():
    rule = Rule("scale_m", "scale the TME block", "tests.test_coordination:scale_m",
                (HyperParam("m_scale", 0.5, 0.0, 1.0, "factor on the TME block"),))
    RULES[rule.name] = rule
    try:
        # the config, the study-file keys and the coordinator all read it from the registry
        assert "m_scale" in coordination_keys()
        _, train = split_params({"coordination": "scale_m", "m_scale": 0.25})
        cfg = TrainConfig(**train)
        assert cfg.coord_params == {"m_scale": 0.25}
        assert TrainConfig(coordination="scale_m").coord_params == {"m_scale": 0.5}  # default
        with pytest.raises(ConfigError, match="m_scale"):
            TrainConfig(coordination="scale_m", coord_params={"m_scale": 2.0})
        grad = torch.cat(agreeing(), dim=1)
        new, tel = make_coordinator("scale_m", **cfg.coord_params)(grad)
        torch.testing.assert_close(new[:, D:], grad[:, D:] / 4)
        assert tel["projected_tme"] == 1.0
    finally:
        del RULES["scale_m"]
    with pytest.raises(ConfigError, match="coordination"):
        make_coordinator("scale_m")
    assert "m_scale" not in coordination_keys()


def test_cgcoord_declares_its_thresholds_and_defaults_reach_the_config() -> None:
    assert [p.name for p in RULES["cgcoord"].params] == ["tau_cos", "tau_rho"]
    assert TrainConfig(coordination="cgcoord").coord_params == {"tau_cos": 0.0, "tau_rho": 0.0}
    assert TrainConfig(coordination="pcgrad").coord_params == {}
    with pytest.raises(ConfigError, match="tau_rho"):
        TrainConfig(coordination="cgcoord", coord_params={"tau_rho": 1.0})


def test_classification_confidence_is_mean_true_class_probability():
    logits = torch.randn(6, 4)
    label = torch.tensor([0, 1, 2, 3, 0, 1])
    want = F.softmax(logits, 1)[torch.arange(6), label].mean().item()
    assert subspace_confidence("diagnosis", logits, {"label": label}) == pytest.approx(want)
    assert subspace_confidence("grade", logits[:, :3], {"label": label % 3}) == pytest.approx(
        F.softmax(logits[:, :3], 1)[torch.arange(6), label % 3].mean().item())


def test_survival_confidence_is_batch_cindex_and_skips_batches_without_pairs():
    torch.manual_seed(0)
    logits = torch.randn(12, 4)
    time = torch.arange(1.0, 13.0)
    event = torch.tensor([1, 0] * 6)
    conf = subspace_confidence("survival", logits, {"time": time, "event": event})
    risk = survival_risk(logits)
    assert conf == pytest.approx(concordance_index(time.numpy(), -risk.numpy(), event.numpy()))
    none = subspace_confidence("survival", logits, {"time": time, "event": torch.zeros(12)})
    assert none is None
    grad = torch.cat(conflicting(), dim=1)
    new, tel = make_coordinator("cgcoord")(grad, none, conf)
    assert torch.equal(new, grad) and tel["skipped"] == 1.0


# --- whole-layer peers through torchjd --------------------------------------------------------

TORCHJD = {"mgda": lambda p: jd.MGDA(), "upgrad": lambda p: jd.UPGrad(),
           "cagrad": lambda p: jd.CAGrad(c=p["cagrad_c"]),
           "nashmtl": lambda p: jd.NashMTL(n_tasks=2)}


def mixed_blocks(seed=0):
    """Rows that conflict and rows that agree, as on a real layer."""
    g_t, g_m = conflicting(rows=6, seed=seed)
    a_t, a_m = agreeing(rows=4, seed=seed + 1)
    return torch.cat([g_t, a_t]), torch.cat([g_m, a_m])


@pytest.mark.filterwarnings("ignore:You are solving a parameterized problem")  # cvxpy, Nash-MTL
@pytest.mark.parametrize(("rule", "params"), [("mgda", {}), ("upgrad", {}),
                                              ("cagrad", {}), ("cagrad", {"cagrad_c": 0.9}),
                                              ("nashmtl", {})])
def test_whole_layer_rules_equal_torchjd_on_fixed_gradients(rule, params):
    """Ours (2x2 Gramian -> torchjd's weighting -> per-stream weights on the blocks) equals
    torchjd's aggregator on the [2, n] Jacobian of the two whole-layer gradients, times 2 (the
    sum's scale). Nash-MTL carries solver state: two consecutive steps are compared."""
    coord = make_coordinator(rule, **params)
    theirs_agg = TORCHJD[rule](coord.params)
    for seed in (0, 7):
        g_t, g_m = mixed_blocks(seed)
        new, tel = coord(torch.cat([g_t, g_m], dim=1))
        ours = (new[:, :D] + new[:, D:]).flatten()
        theirs = 2 * theirs_agg(torch.stack([g_t.flatten(), g_m.flatten()]))
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
        # the blocks keep their direction: a whole-layer weighting scales each stream
        w_t = (new[:, :D] * g_t).sum() / g_t.square().sum()
        torch.testing.assert_close(new[:, :D], w_t * g_t)
        assert tel["scale_tumour"] == pytest.approx(abs(w_t.item()))


def test_upgrad_and_cagrad_c0_are_the_plain_sum_when_nothing_conflicts():
    g_t, g_m = agreeing(rows=8)
    grad = torch.cat([g_t, g_m], dim=1)
    for coord in (make_coordinator("upgrad"), make_coordinator("cagrad", cagrad_c=0.0)):
        new, tel = coord(grad)
        torch.testing.assert_close(new, grad)
        assert tel["rel_change"] < 1e-6


def test_whole_layer_rules_act_on_a_conflicting_layer():
    """Streams pulling against each other: every peer changes the update (MGDA most)."""
    g_t, g_m = conflicting(rows=8)
    grad = torch.cat([g_t, g_m], dim=1)
    for rule in TORCHJD:
        _, tel = make_coordinator(rule)(grad)
        assert tel["layer_cos"] < -0.5 and tel["rel_change"] > 0.1, (rule, tel)


def test_cagrad_c_is_declared_and_range_checked():
    assert [p.name for p in RULES["cagrad"].params] == ["cagrad_c"]
    assert TrainConfig(coordination="cagrad").coord_params == {"cagrad_c": 0.5}
    with pytest.raises(ConfigError, match="cagrad_c"):
        TrainConfig(coordination="cagrad", coord_params={"cagrad_c": 1.0})


# --- OGM-GE ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("conf_t", "conf_m"), [(0.9, 0.3), (0.2, 0.5), (0.6, 0.6)])
def test_ogm_scales_the_dominant_stream_by_one_minus_tanh(conf_t, conf_m):
    alpha = 0.7
    g_t, g_m = mixed_blocks()
    coord = make_coordinator("ogm_ge", ogm_alpha=alpha, ogm_noise=0.0)
    new, tel = coord(torch.cat([g_t, g_m], dim=1), conf_t, conf_m)
    rho_t, rho_m = conf_t / conf_m, conf_m / conf_t
    k_t = 1 - math.tanh(alpha * (rho_t - 1)) if rho_t > 1 else 1.0
    k_m = 1 - math.tanh(alpha * (rho_m - 1)) if rho_m > 1 else 1.0
    torch.testing.assert_close(new[:, :D], k_t * g_t)
    torch.testing.assert_close(new[:, D:], k_m * g_m)
    assert tel["scale_tumour"] == pytest.approx(k_t) and tel["scale_tme"] == pytest.approx(k_m)
    assert tel["projected_tumour"] == float(k_t < 1) and tel["projected_tme"] == float(k_m < 1)
    res, _ = coord.coordinate(g_t, g_m, conf_t, conf_m)
    assert res.stream_scale == pytest.approx((k_t, k_m)) and res.stream_noise == 0.0


def test_ogm_ge_noise_has_the_gradients_standard_deviation():
    torch.manual_seed(0)
    g_t = torch.randn(200, 50, dtype=torch.float64) * 3.0
    g_m = torch.randn(200, 50, dtype=torch.float64)
    coord = make_coordinator("ogm_ge", ogm_alpha=1.0, ogm_noise=1.0)
    new, _ = coord(torch.cat([g_t, g_m], dim=1), 0.8, 0.4)  # tumour dominant: rho = 2
    k_t = 1 - math.tanh(1.0)
    noise_t, noise_m = new[:, :50] - k_t * g_t, new[:, 50:] - g_m
    assert noise_t.mean().abs() < 0.05 * noise_t.std()
    assert noise_t.std().item() == pytest.approx((k_t * g_t).std().item(), rel=0.05)
    assert noise_m.std().item() == pytest.approx(g_m.std().item(), rel=0.05)  # GE on both
    res, _ = coord.coordinate(g_t, g_m, 0.8, 0.4)
    assert res.stream_noise == 1.0


def test_ogm_ge_declares_its_parameters_and_needs_confidence():
    rule = RULES["ogm_ge"]
    assert rule.needs_confidence and [p.name for p in rule.params] == ["ogm_alpha", "ogm_noise"]
    grad = torch.cat(mixed_blocks(), dim=1)
    new, tel = make_coordinator("ogm_ge")(grad, None, 0.5)
    assert torch.equal(new, grad) and tel["skipped"] == 1.0


# --- telemetry ---------------------------------------------------------------------------------

def test_layer_telemetry_definitions_for_both_layouts():
    g_t, g_m = mixed_blocks()
    grad = torch.cat([g_t, g_m], dim=1)
    layer_cos = (g_t * g_m).sum() / (g_t.norm() * g_m.norm())
    for target in ("classifier_rows", "shared_trunk"):
        coord = make_coordinator("pcgrad", target=target)
        new, tel = coord(grad)
        n_t, n_m = new[:, :D], new[:, D:]
        if target == "shared_trunk":  # one parameter gradient: the sum of the blocks
            want = (n_t + n_m - g_t - g_m).norm() / (g_t + g_m).norm()
        else:  # the blocks side by side
            want = (new - grad).norm() / grad.norm()
        assert tel["rel_change"] == pytest.approx(want.item(), rel=1e-6)
        assert tel["layer_cos"] == pytest.approx(layer_cos.item(), rel=1e-6)
        cos = F.cosine_similarity(g_t, g_m, dim=1)
        assert tel["cos_p01"] == pytest.approx(torch.quantile(cos, 0.01).item(), rel=1e-5)
        assert tel["cos_p99"] == pytest.approx(torch.quantile(cos, 0.99).item(), rel=1e-5)
    assert make_coordinator("uniform")(grad)[1]["rel_change"] == 0.0
