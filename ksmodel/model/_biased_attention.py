"""Multi-head attention with the relative-position bias, forward and backward in one node.

``softmax(scale * q k^T + bias) v`` per head, where the bias comes from the chunked MLP kernel of
``_rpb_kernel``. As separate autograd nodes (kernel, ``baddbmm``, ``softmax``, ``bmm``) the step
allocates the [B, heads, T, n] logits-sized tensor five times per forward and backward - bias,
logits, probabilities, their gradient, the gradient of the logits - plus head-major copies of q,
k, v and of the output; at B = 8 of the paper config each of those is a fresh 92 MB block, and
page-faulting it in costs more than the arithmetic on it. Here the kernel writes the bias
straight into one buffer, the scores are added in place (``baddbmm`` with the buffer as input and
output), the softmax runs in place, and the backward reuses one buffer for the gradient of the
probabilities and then of the logits, which is also the bias's gradient that the kernel's
backward consumes. q, k, v and the output stay in their [B, tokens, heads * d] layout: each
batch element's heads are one strided batched product, no copies.

Used when every head reads the bias of one offset group (groups <= heads) and the inputs are
float32 or float64 (no autocast); ``DeformableCrossAttention`` falls back to the separate nodes
otherwise. Same value and gradients as ``baddbmm -> softmax -> bmm`` up to rounding
(tests/test_model.py checks it against tests/reference_attention.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ksmodel.model import _buffers
from ksmodel.model._eager import eager_only
from ksmodel.model._rpb_kernel import _compute_dtype, _default_chunk_elems, _Kernel

__all__ = ["biased_attention", "fused_attention_applies"]


def fused_attention_applies(q: Tensor, groups: int, heads: int) -> bool:
    """Whether ``biased_attention`` takes ``q`` (one group per head-set, full precision)."""
    return groups <= heads and q.dtype in (torch.float32, torch.float64) \
        and _compute_dtype(q) == q.dtype


def _heads(x: Tensor, b: int, heads: int) -> Tensor:
    """[B, L, heads * d] -> element b's heads as a strided [heads, L, d] view (no copy)."""
    return x[b].unflatten(-1, (heads, -1)).transpose(0, 1)


class _BiasedAttention(torch.autograd.Function):
    """Inputs: q [B, T, heads*d], k and v [B, n, heads*d], fx [B*G, W, n], fy [B*G, H, n], the
    bias MLP's first layer (w1 [R, 2], b1 [R]) and output weight [heads/G, R], heads, scale,
    chunk_elems, then (W_l, b_l) per hidden layer. Output [B, T, heads*d]."""

    @staticmethod
    def forward(ctx, q, k, v, fx, fy, w1, b1, w_out, heads, scale, chunk_elems,
                *mids):  # type: ignore[override]
        b, t, _ = q.shape
        n = k.shape[1]
        kernel = _Kernel(fx, fy, w1, b1, w_out, mids, q.dtype, chunk_elems)
        probs = q.new_empty((b, heads, t, n))
        # the bias, head h from group h // hpg
        kernel.forward_all(probs.view(kernel.out_shape), keep_active=any(ctx.needs_input_grad))
        out = q.new_empty((b, t, v.shape[2]))
        for i in range(b):
            logits = probs[i]
            torch.baddbmm(logits, _heads(q, i, heads), _heads(k, i, heads).mT, alpha=scale,
                          out=logits)
            torch.ops.aten._softmax.out(logits, -1, False, out=logits)  # in place
            torch.bmm(logits, _heads(v, i, heads), out=_heads(out, i, heads))
        ctx.save_for_backward(q, k, v, probs, fx, fy, w1, b1, w_out, *mids)
        ctx.heads, ctx.scale, ctx.chunk_elems = heads, scale, chunk_elems
        ctx.active = kernel.active
        return out

    @staticmethod
    def backward(ctx, gout):  # type: ignore[override]
        q, k, v, probs, fx, fy, w1, b1, w_out, *mids = ctx.saved_tensors
        heads, scale = ctx.heads, ctx.scale
        gout = gout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dlogits = _buffers.take(tuple(probs.shape), probs.dtype, probs.device)
        for i in range(q.shape[0]):
            p, g = probs[i], _heads(gout, i, heads)
            torch.bmm(p.mT, g, out=_heads(dv, i, heads))
            dl = dlogits[i]
            torch.bmm(g, _heads(v, i, heads).mT, out=dl)  # d probs
            torch.ops.aten._softmax_backward_data.out(dl, p, -1, p.dtype, grad_input=dl)  # in place
            torch.baddbmm(_heads(dq, i, heads), dl, _heads(k, i, heads), beta=0, alpha=scale,
                          out=_heads(dq, i, heads))
            torch.baddbmm(_heads(dk, i, heads), dl.mT, _heads(q, i, heads), beta=0,
                          alpha=scale, out=_heads(dk, i, heads))
        del probs
        kernel = _Kernel(fx, fy, w1, b1, w_out, tuple(mids), q.dtype, ctx.chunk_elems,
                         active=ctx.active, backward=True)
        ctx.active = None  # a second backward (retain_graph) recomputes it, eagerly
        need = ctx.needs_input_grad
        dfx, dfy, dw1, db1, dw_out, *dmids = kernel.backward_all(dlogits,
                                                                 need_inputs=need[3] or need[4])
        _buffers.give(dlogits)
        _buffers.give(kernel.active)
        return (dq, dk, dv, dfx, dfy, dw1, db1, dw_out, None, None, None, *dmids)


@eager_only
def biased_attention(q: Tensor, k: Tensor, v: Tensor, fx: Tensor, fy: Tensor, w1: Tensor,
                     b1: Tensor, w_out: Tensor, mids: list[Tensor], *, heads: int, scale: float,
                     chunk_elems: int | None = None) -> Tensor:
    """``softmax(scale q k^T + bias) v`` per head, [B, T, heads*d] (see the module docstring)."""
    chunk = chunk_elems or _default_chunk_elems(q.device)
    return _BiasedAttention.apply(q, k, v, fx, fy, w1, b1, w_out, heads, scale, chunk, *mids)
