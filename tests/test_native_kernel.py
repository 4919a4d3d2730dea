"""The fused C bias kernel (ksmodel/model/_rpb_native.c) against the eager one it replaces."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from ksmodel.model import _rpb_kernel as kernel
from ksmodel.model import _rpb_native as native
from ksmodel.model import rpb_bias


@pytest.fixture
def compiled() -> None:
    """The C kernel must be buildable here; .ci/run installs a compiler and requires it."""
    if native.library() is None:
        reason = "no C compiler to build the fused bias kernel (install gcc or set CC)"
        if os.environ.get("KS_REQUIRE_NATIVE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def _leaves(s=5, h=6, w=7, n=13, r=32, hpg=1, n_mid=1, dtype=torch.float32, seed=0):
    """fx, fy, w1, b1, w_out and the hidden layers' (W, b): n = 13 keys is one full block of
    8 and a partial one."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    mids = [t for _ in range(n_mid) for t in (leaf(r, r, scale=r**-0.5), leaf(r, scale=0.3))]
    return [leaf(s, w, n), leaf(s, h, n), leaf(r, 2), leaf(r, scale=0.5), leaf(hpg, r), *mids]


def _bias_and_grads(leaves, weight):
    out = rpb_bias(*leaves[:5], list(leaves[5:]))
    return out, torch.autograd.grad((out * weight).sum(), leaves)


def _uses_native(leaves, dtype=torch.float32) -> bool:
    fx, fy, w1, b1, w_out, *mids = (t.detach() for t in leaves)
    return kernel._Kernel(fx, fy, w1, b1, w_out, mids, dtype, 1 << 20).native


@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kernel_equals_the_float64_eager_bias_and_gradients(compiled, threads):
    """Bias and every gradient (displacements, first layer, hidden layer, output weight) agree
    with the eager kernel in float64 to float32 rounding, one thread or slices over two."""
    leaves = _leaves()
    assert _uses_native(leaves)
    weight = torch.randn(5, 1, 6 * 7, 13, generator=torch.Generator().manual_seed(9))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        got, got_g = _bias_and_grads(leaves, weight)
    finally:
        torch.set_num_threads(before)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    want, want_g = _bias_and_grads(ref_leaves, weight.double())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    names = ["fx", "fy", "w1", "b1", "w_out", "W2", "b2"]
    for name, a, b in zip(names, got_g, want_g, strict=True):
        assert a.dtype == torch.float32
        err = float((a.double() - b).norm() / b.norm())
        assert err < 1e-5, f"{name}: relative error {err:.2e}"


def test_fused_kernel_agrees_with_the_eager_float32_path(compiled, monkeypatch):
    """The same float32 inputs through both paths (KS_NATIVE_KERNEL=0 forces the eager one)."""
    leaves = _leaves(s=3, h=4, w=5, n=24, seed=1)
    weight = torch.randn(3, 1, 20, 24, generator=torch.Generator().manual_seed(2))
    got, got_g = _bias_and_grads(leaves, weight)
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert not _uses_native(leaves)
    want, want_g = _bias_and_grads(leaves, weight)
    assert not torch.equal(got, want)  # really two computations (sums in another order)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize(("why", "kw"), [
    ("float64", {"dtype": torch.float64}),
    ("two output heads per group", {"hpg": 2}),
    ("two hidden layers", {"n_mid": 2}),
    ("hidden width 16", {"r": 16}),
])
def test_other_configurations_take_the_eager_path(compiled, why, kw):
    leaves = _leaves(**kw)
    assert not _uses_native(leaves, kw.get("dtype", torch.float32)), why
    out, _ = _bias_and_grads(leaves, 1.0)  # and still compute
    assert torch.isfinite(out).all()


def test_a_flop_count_sees_the_eager_products(compiled):
    """Under FlopCounterMode the kernel runs eagerly, so its products are counted: the same
    arithmetic as the fused kernel's, which the counter cannot see inside C."""
    leaves = _leaves()
    with FlopCounterMode(display=False) as counter:
        assert not _uses_native(leaves)
        rpb_bias(*leaves[:5], list(leaves[5:]))
    elements = 5 * 6 * 7 * 13
    assert counter.get_total_flops() >= 2 * elements * 32 * 32  # the hidden layer's product


def test_without_a_compiler_the_eager_path_runs_and_says_so(monkeypatch, caplog):
    monkeypatch.setattr(native, "_LIB", [])  # forget this process's build
    monkeypatch.setenv("CC", "/nonexistent/cc")
    leaves = _leaves(s=2, h=3, w=4, n=5)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert not _uses_native(leaves)
        out = rpb_bias(*leaves[:5], list(leaves[5:]))
    assert "eager path" in caplog.text and "/nonexistent/cc" in caplog.text
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    torch.testing.assert_close(out, rpb_bias(*leaves[:5], list(leaves[5:])), rtol=0, atol=0)


def test_the_library_is_built_once_into_the_cache(compiled, monkeypatch, tmp_path):
    """A fresh process builds into $KS_KERNEL_CACHE; the next one loads that file as it is."""
    monkeypatch.setenv(native.ENV_CACHE, str(tmp_path))
    monkeypatch.setattr(native, "_LIB", [])
    assert native.library() is not None
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].name.startswith("rpb_")  # no temporary left behind
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(native, "_LIB", [])
    assert native.library() is not None
    assert [p.stat().st_mtime_ns for p in tmp_path.iterdir()] == [stamp]


def test_the_forward_keeps_the_active_units_only_for_a_backward(compiled):
    """The fused forward records which hidden units were active (32 bits per bias element) so
    the backward skips the hidden layer's product; without a backward to come it records
    nothing, and the bias is the same either way."""
    fx, fy, w1, b1, w_out, *mids = (t.detach() for t in _leaves())

    def bias(keep: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        k = kernel._Kernel(fx, fy, w1, b1, w_out, mids, torch.float32, 1 << 20)
        return k.forward_all(fx.new_empty(k.out_shape), keep_active=keep), k.active

    with_units, active = bias(True)
    without, none = bias(False)
    assert none is None and active is not None
    assert active.dtype == torch.int32 and active.shape == with_units.shape
    torch.testing.assert_close(with_units, without, rtol=0, atol=0)
    # the bits are the hidden layer's pre-activations > 0, element by element
    e = (1, 2, 3, 4)  # slice, query row, query column, key
    h1 = torch.relu(fy[e[0], e[1], e[3]] * w1[:, 1] + fx[e[0], e[2], e[3]] * w1[:, 0] + b1)
    units = (mids[0] @ h1 + mids[1]) > 0
    bits = int(active[e[0], 0, e[1], e[2], e[3]]) & 0xFFFFFFFF
    assert [(bits >> i) & 1 == 1 for i in range(32)] == units.tolist()


def test_the_attention_reuses_its_large_buffers_across_steps(compiled):
    """The fused attention's logit gradient and the kernel's active units go back to
    ``_buffers`` after its backward and the next step takes them again: the same memory, and
    the second step's results equal the first's (nothing stale read)."""
    from ksmodel.model import _buffers
    from ksmodel.model._biased_attention import biased_attention

    b, heads, d = 2, 3, 4  # one head per offset group: the fused kernel's case
    leaves = _leaves(s=b * heads, h=5, w=6, n=11, seed=3)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(b, 5 * 6, heads * d, generator=g).requires_grad_()
    k = torch.randn(b, 11, heads * d, generator=g).requires_grad_()
    v = torch.randn(b, 11, heads * d, generator=g).requires_grad_()
    inputs = [q, k, v, *leaves]
    _buffers.clear()

    def step():
        out = biased_attention(q, k, v, *leaves[:5], list(leaves[5:]), heads=heads, scale=0.5)
        return out, torch.autograd.grad((out * out).sum(), inputs)

    first, first_g = step()
    kept = {key: [t.data_ptr() for t in ts] for key, ts in _buffers._FREE.items()}
    assert set(kept) == {((b, heads, 30, 11), torch.float32), ((b * heads, 1, 5, 6, 11),
                                                                torch.int32)}
    second, second_g = step()
    assert {key: [t.data_ptr() for t in ts] for key, ts in _buffers._FREE.items()} == kept
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    for a, c in zip(second_g, first_g, strict=True):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
