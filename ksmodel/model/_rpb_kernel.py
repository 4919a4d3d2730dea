"""Chunked relative-position bias: a custom autograd kernel for the deformable attention's RPB MLP.

Why: the naive bias materialises ``[B*G, T, n, R]`` hidden activations (3 GB per tensor at B=8 of
the paper config). The first MLP layer is separable (the log-CPB transform acts per axis, so its
pre-activation is ``A_y[i, key] + A_x[j, key]``), so ``_RPBBias`` evaluates the rest of the MLP in
cache-sized chunks over (batch*group, query rows) and keeps only the ``[B*G, hpg, T, n]`` bias; the
backward recomputes each chunk (flash-attention style) and accumulates weight gradients, so peak
memory no longer scales with ``R``. Chunk intermediates live in reused buffers (no allocator churn)
and, on CPU, the chunks are spread over ``torch.get_num_threads()`` worker threads that each run
torch single-threaded: thousands of small ops per step would otherwise each be an OpenMP barrier,
which collapses when other processes compete for the cores (measured 24-50 s vs 4-5 s per B=2
step on a loaded 2-core machine). ``THREADED_CHUNKS = False`` switches that off. The result does
not depend on the chunking or threading (fixed partition, fixed summation order).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from einops import rearrange
from torch import Tensor


def _default_chunk_elems(device: torch.device) -> int:
    # CPU: each [rows, R] hidden buffer ~2 MB, so a chunk's working set stays in L2/L3 and the
    # skinny [rows, R] x [R, R] GEMMs run near peak. CUDA: big chunks, kernels not launch-bound.
    return (1 << 25) if device.type == "cuda" else (1 << 19)


def _plan(bg: int, rows: int, row_elems: int, chunk_elems: int) -> list[tuple[int, int, int, int]]:
    """Chunks (s0, s1, y0, y1) over slices x query rows, each ~chunk_elems hidden elements."""
    per_slice = rows * row_elems
    if per_slice <= chunk_elems:
        step = max(1, chunk_elems // per_slice)
        return [(s, min(s + step, bg), 0, rows) for s in range(0, bg, step)]
    step = max(1, chunk_elems // row_elems)
    return [(s, s + 1, y, min(y + step, rows)) for s in range(bg) for y in range(0, rows, step)]


def _compute_dtype(t: Tensor) -> torch.dtype:
    kind = t.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return t.dtype


class _RPBBias(torch.autograd.Function):
    """bias[s, :, i*W+j, key] = MLP_{2..L}(relu(ay[s, i, key] + ax[s, j, key])), chunked.

    Inputs: ay [S, H, n, R], ax [S, W, n, R] (first-layer pre-activations, bias folded into ax),
    w_out [hpg, R], chunk_elems, compute dtype, then (W_l, b_l) for each hidden R->R layer.
    Output: [S, hpg, H*W, n] in ay's dtype. Nothing of size R is saved for backward; each chunk
    is recomputed there.
    """

    @staticmethod
    def forward(ctx, ay, ax, w_out, chunk_elems, dtype, *mids):  # type: ignore[override]
        k = _Kernel(ay, ax, w_out, mids, dtype, chunk_elems)
        s_, h_, n, _ = ay.shape
        out = ay.new_empty((s_, w_out.shape[0], h_, ax.shape[1], n))
        _run(k, lambda chunks: k.forward(chunks, out))
        ctx.save_for_backward(ay, ax, w_out, *mids)
        ctx.chunk_elems, ctx.dtype = chunk_elems, dtype
        return out.view(s_, -1, h_ * ax.shape[1], n)

    @staticmethod
    def backward(ctx, gout):  # type: ignore[override]
        ay, ax, w_out, *mids = ctx.saved_tensors
        k = _Kernel(ay, ax, w_out, tuple(mids), ctx.dtype, ctx.chunk_elems)
        s_, h_, n, _ = ay.shape
        gout = gout.reshape(s_, w_out.shape[0], h_, ax.shape[1], n)
        need_a = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        day = torch.zeros(ay.shape, dtype=k.acc, device=ay.device) if need_a else None
        dax = torch.zeros(ax.shape, dtype=k.acc, device=ax.device) if need_a else None
        parts = _run(k, lambda chunks: k.backward(chunks, gout, day, dax))
        dweights = [torch.stack(ws).sum(0) for ws in zip(*parts, strict=True)]
        grads = [day, dax, *dweights]
        like = (ay, ax, w_out, *mids)
        day, dax, dw_out, *dmids = [None if g is None else g.to(p.dtype)
                                    for g, p in zip(grads, like, strict=True)]
        return (day, dax, dw_out, None, None, *dmids)


class _Kernel:
    """Chunk plan and per-chunk math of ``_RPBBias``.

    Chunk intermediates live in a few buffers reused across chunks: a fresh multi-MB allocation
    per chunk costs more in page faults than the arithmetic (issue 7's "allocator churn").
    """

    def __init__(self, ay: Tensor, ax: Tensor, w_out: Tensor, mids: tuple[Tensor, ...],
                 dtype: torch.dtype, chunk_elems: int) -> None:
        s_, h_, n, r = ay.shape
        self.w_, self.n, self.r = ax.shape[1], n, r
        self.dtype = dtype
        self.acc = torch.float32 if ay.dtype in (torch.float16, torch.bfloat16) else ay.dtype
        self.ay, self.ax, self.w_out = ay.to(dtype), ax.to(dtype), w_out.to(dtype)
        self.mids = [m.to(dtype) for m in mids]
        self.plan = _plan(s_, h_, self.w_ * n * r, chunk_elems)
        self.rows = max((s1 - s0) * (y1 - y0) for s0, s1, y0, y1 in self.plan) * self.w_ * n
        self.n_slices = s_

    def _buffers(self, k: int) -> list[Tensor]:
        return [self.ay.new_empty((self.rows, self.r)) for _ in range(k)]

    def _hidden(self, bufs: list[Tensor], s0: int, s1: int, y0: int, y1: int) -> list[Tensor]:
        """Post-ReLU activations of every hidden layer for one chunk, each [rows, R]."""
        a = self.ay[s0:s1, y0:y1, None]
        b = self.ax[s0:s1, None]
        m = (s1 - s0) * (y1 - y0) * self.w_ * self.n
        h = bufs[0][:m]
        torch.add(a, b, out=h.view(s1 - s0, y1 - y0, self.w_, self.n, self.r)).relu_()
        hs = [h]
        for li in range(len(self.mids) // 2):
            nxt = bufs[li + 1][:m]
            torch.addmm(self.mids[2 * li + 1], h, self.mids[2 * li].t(), out=nxt).relu_()
            hs.append(nxt)
            h = nxt
        return hs

    def forward(self, chunks: list[tuple[int, int, int, int]], out: Tensor) -> None:
        bufs = self._buffers(len(self.mids) // 2 + 1)
        hpg = self.w_out.shape[0]
        for s0, s1, y0, y1 in chunks:
            hid = self._hidden(bufs, s0, s1, y0, y1)[-1]
            dst = out[s0:s1, :, y0:y1]
            if hpg == 1 and dst.is_contiguous() and out.dtype == self.dtype:
                torch.mv(hid, self.w_out[0], out=dst.view(-1))
            else:
                o = hid @ self.w_out.t()
                dst.copy_(rearrange(o, "(s y x n) h -> s h y x n", s=s1 - s0, y=y1 - y0,
                                    x=self.w_))

    def backward(self, chunks: list[tuple[int, int, int, int]], gout: Tensor,
                 day: Tensor | None, dax: Tensor | None) -> list[Tensor]:
        """Accumulates into the (disjoint) day/dax regions of ``chunks``; returns weight grads."""
        bufs = self._buffers(len(self.mids) // 2 + 3)
        dh_buf, dpre_buf = bufs[-2:]
        hpg = self.w_out.shape[0]
        dw_out = torch.zeros(self.w_out.shape, dtype=self.acc, device=self.ay.device)
        dmids = [torch.zeros(m.shape, dtype=self.acc, device=m.device) for m in self.mids]
        for s0, s1, y0, y1 in chunks:
            hs = self._hidden(bufs, s0, s1, y0, y1)
            m = hs[0].shape[0]
            dh, dpre = dh_buf[:m], dpre_buf[:m]
            g = rearrange(gout[s0:s1, :, y0:y1], "s h y x n -> (s y x n) h").to(self.dtype)
            if hpg == 1:
                dw_out[0].add_(torch.mv(hs[-1].t(), g[:, 0]))
                torch.mul(g, self.w_out, out=dh)
            else:
                dw_out.add_(g.t() @ hs[-1])
                torch.mm(g, self.w_out, out=dh)
            for li in range(len(self.mids) // 2 - 1, -1, -1):
                torch.ops.aten.threshold_backward.grad_input(dh, hs[li + 1], 0, grad_input=dpre)
                dmids[2 * li].add_(dpre.t() @ hs[li])
                dmids[2 * li + 1].add_(dpre.sum(0))
                torch.mm(dpre, self.mids[2 * li], out=dh)
            if day is not None and dax is not None:
                torch.ops.aten.threshold_backward.grad_input(dh, hs[0], 0, grad_input=dpre)
                d5 = dpre.view(s1 - s0, y1 - y0, self.w_, self.n, self.r)
                day[s0:s1, y0:y1].add_(d5.sum(2))
                dax[s0:s1].add_(d5.sum(1))
        return [dw_out, *dmids]


THREADED_CHUNKS = True  # CPU: spread chunks over torch.get_num_threads() single-threaded workers
_POOLS: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child must not reuse dead threads


def _pool(workers: int) -> ThreadPoolExecutor:
    # Worker threads run torch single-threaded (thread-local setting): chunks are independent,
    # so two threads on two chunks beat two OpenMP threads splitting each small op, and a
    # descheduled thread delays only its own chunks instead of every op's barrier.
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="ks-rpb",
                                             initializer=torch.set_num_threads, initargs=(1,))
    return _POOLS[workers]


def _run(k: _Kernel, fn):
    """Run ``fn(chunks)`` over the plan, split by slice across CPU threads when worthwhile."""
    workers = min(torch.get_num_threads(), k.n_slices)
    # Dispatch modes (FlopCounterMode, ...) are thread-local: stay on this thread under one.
    if (not THREADED_CHUNKS or k.ay.device.type != "cpu" or workers < 2
            or len(k.plan) < 4 * workers or torch._C._len_torch_dispatch_stack() > 0):
        return [fn(k.plan)]
    # Partition by first slice: every day/dax region is then written by one worker only.
    bounds = [round(i * k.n_slices / workers) for i in range(workers + 1)]
    parts = [[c for c in k.plan if lo <= c[0] < hi] for lo, hi in zip(bounds, bounds[1:],
                                                                       strict=False)]

    def job(chunks):
        with torch.no_grad():
            return fn(chunks)

    return list(_pool(workers).map(job, [p for p in parts if p]))


@torch.compiler.disable
def rpb_bias(ay: Tensor, ax: Tensor, w_out: Tensor, mids: list[Tensor],
             chunk_elems: int | None = None) -> Tensor:
    """Chunked relative-position bias ``[S, hpg, H*W, n]`` (see ``_RPBBias``)."""
    chunk = chunk_elems or _default_chunk_elems(ay.device)
    return _RPBBias.apply(ay, ax, w_out, chunk, _compute_dtype(ay), *mids)
