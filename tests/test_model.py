"""Shapes, gradients and the fast-vs-oracle check of the KS-Fusion modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ksmodel.config import ModelConfig
from ksmodel.losses import consistency_total
from ksmodel.model import (
    DeformableCrossAttention,
    GeneEncoder,
    KSFusion,
    PatchProjection,
    SubspaceStream,
    Teacher,
    rpb_bias,
    side_by_side,
)
from ksmodel.model import _rpb_kernel as kernel
from ksmodel.model._biased_attention import biased_attention, fused_attention_applies
from ksmodel.model.deform_attention import reference_size
from tests import step_reference
from tests.reference_attention import ReferenceDeformableAttention

pytestmark = pytest.mark.usefixtures("machine_threads")  # the threaded paths are tested here

SMALL = dict(feature_dim=384, n_tumour_genes=5, n_tme_genes=7, n_outputs=4, dim=32, gene_hidden=16,
             grid=(10, 13), heads=2, head_dim=8, offset_groups=2, rpb_hidden=8)


def small_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


def inputs(cfg: ModelConfig, b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, cfg.n_tokens, cfg.feature_dim, generator=g),
            torch.randn(b, cfg.n_tumour_genes, generator=g),
            torch.randn(b, cfg.n_tme_genes, generator=g))


# --- geometry --------------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "want"), [(50, 12), (16, 4), (10, 2), (13, 3), (4, 1), (3, 1),
                                            (1, 1)])
def test_reference_grid_is_floor_size_over_r_and_never_empty(size, want):
    assert reference_size(size, kernel=6, stride=4) == want


def test_paper_config_samples_144_keys_per_group():
    cfg = ModelConfig.paper()
    att = DeformableCrossAttention(
        dim=cfg.dim, grid=cfg.grid, heads=cfg.heads, head_dim=cfg.head_dim,
        groups=cfg.offset_groups, downsample=cfg.downsample, kernel=cfg.offset_kernel,
        offset_scale=cfg.offset_scale, rpb_hidden=cfg.rpb_hidden, rpb_depth=cfg.rpb_depth)
    pos = att.sample_positions(torch.randn(1, cfg.n_tokens, cfg.dim))
    assert pos.shape == (cfg.offset_groups, 12, 12, 2)
    # offsets are bounded by offset_scale half-cells around the reference centres
    centres = (2 * torch.arange(12) + 1) / 12 - 1
    assert (pos[..., 0] - centres[None, None, :]).abs().max() <= cfg.offset_scale / 12 + 1e-6


# --- fast path vs straightforward oracle -----------------------------------------------------

ATT = dict(dim=16, grid=(10, 13), heads=4, head_dim=8, groups=2, downsample=4, kernel=6,
           offset_scale=4.0, rpb_hidden=8, rpb_depth=2)


def _fast_and_oracle(chunk_elems=700, **kw):
    args = {**ATT, **kw}
    torch.manual_seed(0)
    fast = DeformableCrossAttention(**args, chunk_elems=chunk_elems)
    # make the offsets non-trivial so sampling leaves the reference points
    torch.nn.init.normal_(fast.offset_pw.weight, std=2.0)
    ref = ReferenceDeformableAttention(**args)
    ref.load_state_dict(fast.state_dict())
    return fast, ref, args


def _run(mod, q, x):
    h, vgrid = mod(q, x)
    w = torch.linspace(-1, 1, h.shape[1])
    loss = (h * w).sum() + (vgrid * 0.3).sin().sum()
    grads = torch.autograd.grad(loss, [q, x, *mod.parameters()])
    return h, vgrid, grads


@pytest.mark.parametrize("kw", [
    {},  # several chunks per slice, last one partial
    {"heads": 2, "groups": 4},  # more offset groups than heads
    {"rpb_depth": 1}, {"rpb_depth": 3},
    # one head per group (the paper's layout: the output weight folds into the hidden layer)
    {"heads": 4, "groups": 4}, {"heads": 4, "groups": 4, "rpb_depth": 1},
    {"heads": 4, "groups": 4, "rpb_depth": 3},
    {"grid": (7, 5), "chunk_elems": 10**9},  # whole batch in one chunk
    {"grid": (1, 1)},
])
@pytest.mark.parametrize("b", [1, 3])
def test_fast_attention_matches_oracle_outputs_and_gradients(kw, b):
    kw = dict(kw)
    chunk = kw.pop("chunk_elems", 700)
    fast, ref, args = _fast_and_oracle(chunk, **kw)
    t = args["grid"][0] * args["grid"][1]
    q = torch.randn(b, t, args["dim"], requires_grad=True)
    x = torch.randn(b, t, args["dim"], requires_grad=True)
    hf, vf, gf = _run(fast, q, x)
    hr, vr, gr = _run(ref, q, x)
    torch.testing.assert_close(hf, hr, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(vf, vr, rtol=1e-4, atol=1e-6)
    names = ["queries", "tokens", *(n for n, _ in fast.named_parameters())]
    for name, a, r in zip(names, gf, gr, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def _kernel_leaves(g, s, h, w, n, r, hpg=1, n_mid=1, dtype=torch.float32):
    """fx, fy, w1, b1, w_out and the hidden layers' (W, b) for ``rpb_bias``, all leaves."""
    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    mids = [t for _ in range(n_mid) for t in (leaf(r, r, scale=r**-0.5), leaf(r))]
    return [leaf(s, w, n), leaf(s, h, n), leaf(r, 2), leaf(r), leaf(hpg, r), *mids]


def _bias(leaves, chunk_elems=None):
    return rpb_bias(*leaves[:5], list(leaves[5:]), chunk_elems=chunk_elems)


@pytest.mark.parametrize(("hpg", "n_mid"), [(1, 1), (2, 1), (1, 0), (1, 2), (2, 2)])
def test_rpb_kernel_gradcheck_float64(hpg, n_mid):
    """Exact gradients of every input, on both backward paths (one head per group folds the
    output weight into the last hidden layer) and with chunks that split slices by rows."""
    g = torch.Generator().manual_seed(1)
    s, h, w, n, r = 3, 3, 4, 5, 4
    leaves = _kernel_leaves(g, s, h, w, n, r, hpg, n_mid, torch.float64)
    assert torch.autograd.gradcheck(lambda *t: _bias(t, chunk_elems=w * n * r), tuple(leaves),
                                    fast_mode=True, rtol=1e-5, atol=1e-7)


def test_rpb_kernel_independent_of_chunking():
    g = torch.Generator().manual_seed(2)
    leaves = _kernel_leaves(g, 4, 6, 7, 9, 8)
    outs = []
    for c in (1, 7 * 9 * 8 * 2, 10**9):
        out = _bias(leaves, chunk_elems=c)
        outs.append((out, torch.autograd.grad((out * out).sum(), leaves)))
    for out, grads in outs[1:]:
        torch.testing.assert_close(out, outs[0][0])
        for a, b in zip(grads, outs[0][1], strict=True):
            torch.testing.assert_close(a, b)


def test_rpb_kernel_threaded_chunks_equal_single_thread(monkeypatch):
    g = torch.Generator().manual_seed(4)
    leaves = _kernel_leaves(g, 6, 8, 5, 9, 8)

    def run():
        out = _bias(leaves, chunk_elems=5 * 9 * 8 * 2)
        return out, torch.autograd.grad((out * out).sum(), leaves)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(kernel, "THREADED_CHUNKS", False)
        want, want_g = run()
        monkeypatch.setattr(kernel, "THREADED_CHUNKS", True)
        kernel._POOLS.clear()
        got, got_g = run()
        assert 2 in kernel._POOLS  # the worker pool really ran the chunks
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # each bias value: one chunk's math
    for a, b in zip(got_g, want_g, strict=True):  # weight gradients: partial sums per worker
        torch.testing.assert_close(a, b)


def test_rpb_kernel_bf16_autocast_is_close_to_fp32():
    """The GPU path runs the bias MLP in the autocast dtype; checked here with CPU bf16."""
    g = torch.Generator().manual_seed(3)
    leaves = _kernel_leaves(g, 2, 5, 4, 6, 8)
    full = _bias(leaves)
    gfull = torch.autograd.grad(full.sum(), leaves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = _bias(leaves)
    assert half.dtype == torch.float32  # bias buffer stays in the input dtype
    ghalf = torch.autograd.grad(half.sum(), leaves)
    assert not torch.equal(half, full)  # really computed in bf16
    torch.testing.assert_close(half, full, rtol=5e-2, atol=5e-2)
    for a, b in zip(ghalf, gfull, strict=True):
        assert a.dtype == b.dtype
        assert (a - b).norm() <= 5e-2 * b.norm()


@pytest.mark.parametrize("heads", [2, 4])
def test_fused_attention_gradcheck_float64(heads):
    """The fused bias + attention node: exact gradients of q, k, v, the displacements and the
    bias MLP (in-place softmax and its in-place backward included)."""
    g = torch.Generator().manual_seed(5)
    b, hh, w, n, d, groups, r = 2, 2, 3, 4, 2, 2, 3
    k_leaves = _kernel_leaves(g, b * groups, hh, w, n, r, heads // groups, 1, torch.float64)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    q, k, v = leaf(b, hh * w, heads * d), leaf(b, n, heads * d), leaf(b, n, heads * d)
    assert fused_attention_applies(q, groups, heads)

    def attn(q, k, v, *kl):
        return biased_attention(q, k, v, *kl[:5], list(kl[5:]), heads=heads, scale=0.7,
                                chunk_elems=w * n * r)

    assert torch.autograd.gradcheck(attn, (q, k, v, *k_leaves), fast_mode=True, rtol=1e-5,
                                    atol=1e-7)


def test_streams_side_by_side_match_one_after_the_other(monkeypatch):
    """The two histology streams on their own threads (forward and backward) give what the
    sequential forward gives: the same dropout draws (gene encoders stay on the calling thread,
    in stream order) and the same values and gradients up to rounding."""
    cfg = small_cfg(dropout=0.3)
    bags, gt, gm = inputs(cfg, 3)
    torch.manual_seed(0)
    model = KSFusion(cfg).train()

    def run(parallel: bool):
        monkeypatch.setattr(side_by_side, "PARALLEL_STREAMS", parallel)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        out = model(bags, gt, gm)
        (out.logits.square().sum() + consistency_total(out, 0.5)).backward()
        return out, {n: p.grad.clone() for n, p in model.named_parameters()}

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        side_by_side._POOLS.clear()
        par, par_grads = run(True)
        assert side_by_side._POOLS  # the streams really ran on the worker threads
        seq, seq_grads = run(False)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(par.gene_emb, seq.gene_emb, strict=True):
        assert torch.equal(a, b)  # same dropout masks
    torch.testing.assert_close(par.logits, seq.logits)
    for a, b in zip(par.vgrids, seq.vgrids, strict=True):
        torch.testing.assert_close(a, b)
    for name, grad in par_grads.items():
        torch.testing.assert_close(grad, seq_grads[name], msg=lambda m, n=name: f"{n}: {m}")


# --- encoders --------------------------------------------------------------------------------

def test_gene_encoder_shapes_and_self_normalising_init():
    enc = GeneEncoder(361, 128, hidden=256, blocks=2, dropout=0.25).eval()
    out = enc(torch.randn(512, 361))
    assert out.shape == (512, 128)
    assert isinstance(enc.net[1], torch.nn.ELU) and isinstance(enc.net[2], torch.nn.AlphaDropout)
    first = enc.net[0].weight
    assert abs(first.std().item() - 361**-0.5) < 0.1 * 361**-0.5
    assert torch.all(enc.net[0].bias == 0)


def test_patch_projection_and_teacher_match_their_definitions():
    proj = PatchProjection(384, 16)
    x = torch.randn(2, 5, 384)
    p = proj(x)
    assert p.shape == (2, 5, 16) and (p >= 0).all()
    teacher = Teacher(16)
    e = torch.randn(2, 16)
    want = torch.nn.functional.linear(torch.cat([p, e[:, None].expand(-1, 5, -1)], -1),
                                      teacher.weight, teacher.bias)
    torch.testing.assert_close(teacher(p, e), want)


# --- the full model --------------------------------------------------------------------------

@pytest.mark.parametrize("b", [1, 3])
def test_ksfusion_shapes_and_gradients_reach_every_parameter(b):
    cfg = small_cfg()
    model = KSFusion(cfg)
    out = model(*inputs(cfg, b))
    assert out.logits.shape == out.logits_t.shape == out.logits_m.shape == (b, 4)
    assert [e.shape for e in out.gene_emb] == [(b, 32), (b, 32)]
    assert [v.shape for v in out.vgrids] == [(b, 2, 2, 3, 2)] * 2
    assert model.classifier.in_features == 64
    # per-subspace logits split the classifier: W[:, :d] h_t + b/2 and W[:, d:] h_m + b/2
    torch.testing.assert_close(out.logits_t + out.logits_m, out.logits)
    d, w = cfg.dim, model.classifier.weight
    torch.testing.assert_close(out.logits_t, out.features[0] @ w[:, :d].T
                               + model.classifier.bias / 2)
    loss = out.logits.square().sum() + consistency_total(out, 0.5) * (b > 1)
    loss.backward()
    # proj_k.bias shifts all logits of a query equally: softmax-invariant, gradient ~0 by design
    missing = [n for n, p in model.named_parameters()
               if not n.endswith("proj_k.bias") and (p.grad is None or not p.grad.any())]
    assert missing == []


def test_ksfusion_default_cpu_config_runs():
    cfg = ModelConfig()
    model = KSFusion(cfg)
    out = model(*inputs(cfg, 2))
    assert out.logits.shape == (2, cfg.n_outputs)
    assert out.vgrids[0].shape == (2, cfg.offset_groups, 4, 4, 2)


def test_genes_steer_the_attention_only_through_the_teacher():
    cfg = small_cfg(dropout=0.0)
    bags, gt, gm = inputs(cfg, 2)
    for teacher, changes in ((True, True), (False, False)):
        torch.manual_seed(0)
        model = KSFusion(small_cfg(dropout=0.0, teacher=teacher)).eval()
        a = model(bags, gt, gm)
        b = model(bags, gt + 1.0, gm)
        assert changes == (not torch.allclose(a.logits, b.logits))
        assert changes == (not torch.allclose(a.vgrids[0], b.vgrids[0]))
        assert all((s.teacher is not None) == teacher for s in model.streams.values())


def test_a_stream_rejects_part_sets_that_do_not_make_a_modality():
    enc, head = GeneEncoder(5, 8), torch.nn.Linear(8, 8)
    proj = PatchProjection(16, 8)
    att = DeformableCrossAttention(**{**ATT, "dim": 8, "grid": (4, 4)})
    SubspaceStream(gene_encoder=enc, gene_head=head)  # genomics only
    SubspaceStream(proj=proj, attention=att)  # histology only
    SubspaceStream(gene_encoder=enc, proj=proj, teacher=Teacher(8), attention=att)
    for parts in ({"gene_encoder": enc}, {"proj": proj, "gene_head": head},
                  {"proj": proj, "attention": att, "gene_head": head},
                  {"proj": proj, "attention": att, "teacher": Teacher(8)}):
        with pytest.raises(ValueError, match="stream needs|teacher"):
            SubspaceStream(**parts)


def test_decompose_false_is_one_stream_on_all_genes():
    cfg = small_cfg(decompose=False)
    model = KSFusion(cfg)
    out = model(*inputs(cfg, 2))
    assert out.logits_t is None and out.logits_m is None
    assert len(out.gene_emb) == 1 and len(out.vgrids) == 1
    assert model.classifier.in_features == cfg.dim
    assert list(model.streams) == ["all"]
    assert model.streams["all"].gene_encoder.net[0].in_features == 12


def test_modality_genomics_needs_no_bags():
    cfg = small_cfg(modality="genomics")
    model = KSFusion(cfg)
    _, gt, gm = inputs(cfg, 2)
    out = model(None, gt, gm)
    assert out.vgrids == () and len(out.gene_emb) == 2
    assert out.logits.shape == (2, 4)
    assert consistency_total(out, 0.5).item() == 0.0


def test_modality_histology_needs_no_genes():
    cfg = small_cfg(modality="histology")
    model = KSFusion(cfg)
    bags, _, _ = inputs(cfg, 2)
    out = model(bags)
    assert out.gene_emb == () and len(out.vgrids) == 2
    assert all(s.gene_encoder is None and s.teacher is None for s in model.streams.values())
    assert consistency_total(out, 0.5).item() == 0.0


def test_bad_shapes_are_named():
    cfg = small_cfg()
    model = KSFusion(cfg)
    bags, gt, gm = inputs(cfg, 2)
    with pytest.raises(ValueError, match="bags must be"):
        model(bags[:, :-1], gt, gm)
    with pytest.raises(ValueError, match="genes_m"):
        model(bags, gt, gm[:, :-1])


def test_paper_config_forward_backward_batch_one():
    cfg = ModelConfig.paper(n_outputs=4)
    model = KSFusion(cfg)
    out = model(*inputs(cfg, 1))
    assert [v.shape for v in out.vgrids] == [(1, 8, 12, 12, 2)] * 2
    out.logits.sum().backward()
    assert model.streams["tumour"].attention.rpb[2].weight.grad.abs().sum() > 0


# --- the step against saved outputs of bd3adde ---------------------------------------------

STEP_REFERENCE = Path(__file__).parent / "data" / "step_bd3adde.pt"


@pytest.mark.parametrize("name", list(step_reference.SCENARIOS))
def test_training_step_reproduces_bd3adde(name):
    """Two seeded training steps (dropout, coordination, AdamW) give what bd3adde gave within
    fp32 tolerance: logits, losses, telemetry and every coordinated gradient
    (tests/step_reference.py). The fast kernels sum in another order, so a gradient may differ
    by rounding: |got - want| <= 1e-4 |want| + 1e-5 x the step's largest gradient (a wrong
    formula is off by orders of magnitude more; the near-zero gradients of parameters the
    softmax cancels, ~1e-10, are rounding noise in both trees)."""
    want = torch.load(STEP_REFERENCE, weights_only=True)[name]
    got = step_reference.run(name)
    torch.testing.assert_close(got["logits"], want["logits"], rtol=1e-5, atol=1e-6)
    for g, w in zip(got["steps"], want["steps"], strict=True):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-6)
        assert g["telemetry"] == pytest.approx(w["telemetry"], rel=1e-4, abs=1e-6)
        assert g["grads"].keys() == w["grads"].keys()
        scale = max(float(v.abs().max()) for v in w["grads"].values())
        for key, grad in g["grads"].items():
            torch.testing.assert_close(grad, w["grads"][key], rtol=1e-4, atol=1e-5 * scale,
                                       msg=lambda m, k=key: f"{k}: {m}")



@pytest.mark.slow
def test_importing_the_model_imports_no_dynamo():
    """``eager_only`` keeps TorchDynamo (1.3 s) out of every process that imports the model
    (each trial worker) until the optional compile path is taken."""
    import subprocess
    import sys

    probe = "import sys, study.trial; print('torch._dynamo' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    assert loaded.stdout.strip() == "False"


@pytest.mark.slow
def test_compiled_model_matches_eager():
    """TrainConfig.compile's path: the custom attention kernels run eagerly inside a compiled
    model (``eager_only``: a graph break) with the same outputs and gradients."""
    torch.manual_seed(0)
    cfg = small_cfg(dropout=0.0)
    model = KSFusion(cfg)
    x = inputs(cfg, 2)

    def loss_and_grads(run):
        model.zero_grad()
        loss = run(*x).logits.square().sum()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    eager, eager_grads = loss_and_grads(model)
    compiled, compiled_grads = loss_and_grads(torch.compile(model, backend="eager"))
    torch.testing.assert_close(compiled, eager)
    assert len(compiled_grads) == len(eager_grads)
    for a, b in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(a, b)
