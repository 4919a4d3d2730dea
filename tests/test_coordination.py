"""Gradient coordination: PCGrad against torchjd, CG-Coord properties, telemetry, confidence,
and the one rule registry (hyper-parameters declared with the rule, read by the config)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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


@pytest.mark.parametrize("rule", sorted(RULES))
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
