"""Chunked relative-position bias: a custom autograd kernel for the deformable attention's RPB MLP.

Why: the naive bias materialises ``[B*G, T, n, R]`` hidden activations (3 GB per tensor at B=8 of
the paper config). The first MLP layer acts on the log-CPB displacement ``(fx, fy)`` of a query
column/row to a key, so its pre-activation is ``fy[i, key] w1_y + fx[j, key] w1_x + b1``: the
kernel takes the per-axis displacements ``fx`` [S, W, n] and ``fy`` [S, H, n] and evaluates the
MLP in cache-sized chunks over (batch*group, query rows), keeping only the ``[B*G, hpg, T, n]``
bias; the backward recomputes each chunk (flash-attention style), accumulates the weight
gradients and reduces the first layer's gradient to ``dfx``/``dfy`` chunk by chunk, so nothing of
size ``R`` per (slice, row or column, key) is ever a full tensor either (at B=8 of the paper
config those were nine 59 MB tensors per stream and step, each freshly page-faulted). Chunk
intermediates live in reused buffers (no allocator churn) and, on CPU, the chunks are spread over
``torch.get_num_threads()`` worker threads that each run torch single-threaded: thousands of
small ops per step would otherwise each be an OpenMP barrier, which collapses when other
processes compete for the cores (measured 24-50 s vs 4-5 s per B=2 step on a loaded 2-core
machine). ``THREADED_CHUNKS = False`` switches that off. The bias does not depend on the
chunking or threading; the weight gradients are sums of per-worker partial sums, so they are
deterministic for a given thread count and differ across thread counts only by rounding.

``_Kernel`` is also the bias half of ``ksmodel.model._biased_attention`` (bias, attention and
their backward in one node, writing the bias straight into the attention logits).

On CPU in float32 with one 32 x 32 hidden layer and one output per group (the original and the
default configurations) the per-slice math is the fused C kernel of ``_rpb_native`` instead of
the chunked torch ops below: same inputs, outputs and gradients, one slice per chunk.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from einops import rearrange
from torch import Tensor

from ksmodel.model import _buffers
from ksmodel.model import _rpb_native as native
from ksmodel.model._eager import eager_only


def _default_chunk_elems(device: torch.device) -> int:
    # CPU: each [rows, R] hidden buffer ~4 MB, so a chunk's working set stays in L3 and the
    # skinny [rows, R] x [R, R] GEMMs run near peak, while the per-chunk Python and dispatch
    # cost stays small. A paper-size step on 2 threads (2 MB L2 per core, idle machine), by
    # chunk elements: 2^19 1.21 s, 2^20 1.05 s, 2^21 1.02 s, 2^22 1.27 s at B = 2; 4.83, 4.24,
    # 4.13, 5.10 s at B = 8 - 2^20 keeps a margin below the cliff for smaller caches.
    # CUDA: each chunk is ~15 kernel launches forward and ~30 backward, so the step is
    # launch-bound with small chunks. A paper-size B = 8 bf16 step on one H200
    # (benchmarks/gpu_check.py --chunks): 2^25 91 ms / 0.85 GiB peak, 2^26 59 ms / 1.05 GiB,
    # 2^27 56 ms / 1.59 GiB, 2^28 54 ms / 2.67 GiB - 2^27 takes most of the gain for ~0.75 GiB
    # of fixed buffers (they do not grow with the batch).
    return (1 << 27) if device.type == "cuda" else (1 << 20)


def _plan(bg: int, rows: int, row_elems: int, chunk_elems: int) -> list[tuple[int, int, int, int]]:
    """Chunks (s0, s1, y0, y1) over slices x query rows, each ~chunk_elems hidden elements."""
    per_slice = rows * row_elems
    if per_slice <= chunk_elems:
        step = max(1, chunk_elems // per_slice)
        return [(s, min(s + step, bg), 0, rows) for s in range(0, bg, step)]
    step = max(1, chunk_elems // row_elems)
    return [(s, s + 1, y, min(y + step, rows)) for s in range(bg) for y in range(0, rows, step)]


def _add_relu(a: Tensor, b: Tensor, out: Tensor) -> None:
    """``out = relu(a + b)`` (broadcast). ATen's fused CPU kernel (float32/64) writes ``out``
    once, as fast as the add alone: the add then an in-place ReLU was a second pass over every
    hidden activation, ~6% of a paper-size step."""
    if out.device.type == "cpu" and out.dtype in (torch.float32, torch.float64):
        torch.ops.aten._add_relu.out(a, b, out=out)
    else:
        torch.add(a, b, out=out).relu_()


def _compute_dtype(t: Tensor) -> torch.dtype:
    kind = t.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return t.dtype


class _RPBBias(torch.autograd.Function):
    """bias[s, k, i*W+j, key] = w_out[k] . MLP_mid(relu(fy[s,i,key] w1[:,1] + fx[s,j,key] w1[:,0]
    + b1)), chunked.

    Inputs: fx [S, W, n], fy [S, H, n], w1 [R, 2], b1 [R], w_out [hpg, R], chunk_elems, compute
    dtype, then (W_l, b_l) for each hidden R->R layer. Output: [S, hpg, H*W, n] in fx's dtype.
    Nothing of size R is saved for backward; each chunk is recomputed there.
    """

    @staticmethod
    def forward(ctx, fx, fy, w1, b1, w_out, chunk_elems, dtype, *mids):  # type: ignore[override]
        k = _Kernel(fx, fy, w1, b1, w_out, mids, dtype, chunk_elems)
        out = k.forward_all(fx.new_empty(k.out_shape), keep_active=any(ctx.needs_input_grad))
        ctx.save_for_backward(fx, fy, w1, b1, w_out, *mids)
        ctx.chunk_elems, ctx.dtype, ctx.active = chunk_elems, dtype, k.active
        return out.view(k.n_slices, -1, k.h_ * k.w_, k.n)

    @staticmethod
    def backward(ctx, gout):  # type: ignore[override]
        fx, fy, w1, b1, w_out, *mids = ctx.saved_tensors
        k = _Kernel(fx, fy, w1, b1, w_out, tuple(mids), ctx.dtype, ctx.chunk_elems,
                    active=ctx.active, backward=True)
        ctx.active = None  # a second backward (retain_graph) recomputes it, eagerly
        dfx, dfy, dw1, db1, dw_out, *dmids = k.backward_all(
            gout, need_inputs=ctx.needs_input_grad[0] or ctx.needs_input_grad[1])
        _buffers.give(k.active)
        return (dfx, dfy, dw1, db1, dw_out, None, None, *dmids)


class _Kernel:
    """Chunk plan and per-chunk math of the bias MLP (see the module docstring).

    Chunk intermediates live in a few buffers reused across chunks: a fresh multi-MB allocation
    per chunk costs more in page faults than the arithmetic (issue 7's "allocator churn").
    """

    def __init__(self, fx: Tensor, fy: Tensor, w1: Tensor, b1: Tensor, w_out: Tensor,
                 mids: tuple[Tensor, ...] | list[Tensor], dtype: torch.dtype,
                 chunk_elems: int, *, active: Tensor | None = None,
                 backward: bool = False) -> None:
        """``active``: what the fused forward recorded (``forward_all(keep_active=True)``); a
        backward kernel (``backward``) is fused only with it, else eager."""
        s_, w_, n = fx.shape
        self.h_, self.w_, self.n, self.r = fy.shape[1], w_, n, w1.shape[0]
        self.dtype = dtype
        self.acc = torch.float32 if fx.dtype in (torch.float16, torch.bfloat16) else fx.dtype
        self.fx, self.fy = fx.to(dtype), fy.to(dtype)
        self.w1x, self.w1y, self.b1 = w1[:, 0].to(dtype), w1[:, 1].to(dtype), b1.to(dtype)
        self.w_out = w_out.to(dtype)
        self.mids = [m.to(dtype) for m in mids]
        # float32 on CPU at the usual shapes: the fused C kernel, one slice per chunk
        self.native = (native.applies(fx, dtype, self.r, len(mids) // 2, w_out.shape[0])
                       and (active is not None or not backward))
        self.active = active
        if self.native:
            self.fx, self.fy = self.fx.contiguous(), self.fy.contiguous()
            self.weights = native.Weights(self.w1x, self.w1y, self.b1, *self.mids, self.w_out[0])
            self.plan = [(s, s + 1, 0, self.h_) for s in range(s_)]
        else:
            self.plan = _plan(s_, self.h_, w_ * n * self.r, chunk_elems)
        self.rows = max((s1 - s0) * (y1 - y0) for s0, s1, y0, y1 in self.plan) * w_ * n
        self.slices_per_chunk = max(s1 - s0 for s0, s1, _, _ in self.plan)
        self.rows_per_chunk = max(y1 - y0 for _, _, y0, y1 in self.plan)
        self.n_slices = s_
        self.out_shape = (s_, w_out.shape[0], self.h_, w_, n)
        self.grad_dtypes = (fx.dtype, fy.dtype, w1.dtype, b1.dtype, w_out.dtype,
                            *(m.dtype for m in mids))

    @property
    def device(self) -> torch.device:
        return self.fx.device

    def _buffers(self, k: int) -> list[Tensor]:
        return [self.fx.new_empty((self.rows, self.r)) for _ in range(k)]

    def _column_buffer(self, dtype: torch.dtype | None = None) -> Tensor:
        """[slices, W, n, R]: the first layer's column part, or its gradient, for one chunk."""
        return self.fx.new_empty((self.slices_per_chunk, self.w_, self.n, self.r),
                                 dtype=dtype or self.dtype)

    def _columns(self, col: Tensor, s0: int, s1: int) -> Tensor:
        """fx w1_x + b1 for slices s0:s1 into ``col`` (one pass; reused by the chunks of a
        slice, which run in order on one worker)."""
        dst = col[:s1 - s0]
        torch.addcmul(self.b1, self.fx[s0:s1, :, :, None], self.w1x, out=dst)
        return dst

    def _row_buffer(self) -> Tensor:
        """[slices, rows, n, R]: the first layer's row part, or its gradient, for one chunk."""
        return self.fx.new_empty((self.slices_per_chunk, self.rows_per_chunk, self.n, self.r),
                                 dtype=self.dtype)

    def _hidden(self, bufs: list[Tensor], row_buf: Tensor, cols: Tensor, s0: int, s1: int,
                y0: int, y1: int) -> list[Tensor]:
        """Post-ReLU activations of every hidden layer for one chunk, each [rows, R] (the
        backward takes a layer's active units from them: relu(x) > 0 exactly where x > 0)."""
        m = (s1 - s0) * (y1 - y0) * self.w_ * self.n
        h = bufs[0][:m]
        # fy w1_y for the chunk's rows (small), then + cols over all (row, column) pairs: one
        # broadcast add with a contiguous R axis (a three-input addcmul broadcasting fy over R
        # measured 3x slower), the ReLU fused into it where ATen has that kernel
        rows = torch.mul(self.fy[s0:s1, y0:y1, :, None], self.w1y,
                         out=row_buf[:s1 - s0, :y1 - y0])
        _add_relu(rows[:, :, None], cols[:, None],
                  h.view(s1 - s0, y1 - y0, self.w_, self.n, self.r))
        hs = [h]
        n_mid = len(self.mids) // 2
        for li in range(n_mid):
            nxt = bufs[li + 1][:m]
            # the product, then bias and ReLU in one pass (addmm first copies the bias over every
            # row, and the ReLU was a pass of its own)
            torch.mm(h, self.mids[2 * li].t(), out=nxt)
            _add_relu(nxt, self.mids[2 * li + 1], nxt)
            hs.append(nxt)
            h = nxt
        return hs

    # -- forward ----------------------------------------------------------------------------
    def forward_all(self, out: Tensor, keep_active: bool = False) -> Tensor:
        """The bias into ``out`` [S, hpg, H, W, n] (any tensor of that shape and layout).
        ``keep_active``: a backward will follow; the fused kernel then records the hidden
        layer's active units in ``self.active`` for it."""
        if self.native and not out.is_contiguous():
            return out.copy_(self.forward_all(torch.empty_like(
                out, memory_format=torch.contiguous_format), keep_active))
        if self.native and keep_active:
            self.active = native.active_units(out)
        _run(self, lambda chunks: self.forward(chunks, out))
        return out

    def forward(self, chunks: list[tuple[int, int, int, int]], out: Tensor) -> None:
        if self.native:
            native.forward(self.fx, self.fy, self.weights, chunks[0][0], chunks[-1][1], out,
                           self.active)
            return
        bufs = self._buffers(len(self.mids) // 2 + 1)
        col_buf, row_buf, cached = self._column_buffer(), self._row_buffer(), None
        hpg = self.w_out.shape[0]
        for s0, s1, y0, y1 in chunks:
            if cached != (s0, s1):
                cols, cached = self._columns(col_buf, s0, s1), (s0, s1)
            hid = self._hidden(bufs, row_buf, cols, s0, s1, y0, y1)[-1]
            dst = out[s0:s1, :, y0:y1]
            if hpg == 1 and dst.is_contiguous() and out.dtype == self.dtype:
                torch.mv(hid, self.w_out[0], out=dst.view(-1))
            else:
                o = hid @ self.w_out.t()
                dst.copy_(rearrange(o, "(s y x n) h -> s h y x n", s=s1 - s0, y=y1 - y0,
                                    x=self.w_))

    # -- backward ---------------------------------------------------------------------------
    def backward_all(self, gout: Tensor, need_inputs: bool = True) -> list[Tensor | None]:
        """Gradients (dfx, dfy, dw1, db1, dw_out, *dmids) in the inputs' dtypes from ``gout``
        [S, hpg, H*W, n] (or any view of that shape); dfx/dfy None without ``need_inputs``."""
        gout = gout.reshape(self.out_shape)
        if self.native:
            gout = gout.contiguous()
        dfx = dfy = None
        if need_inputs:
            dfx = torch.empty(self.fx.shape, dtype=self.acc, device=self.device)
            dfy = torch.empty(self.fy.shape, dtype=self.acc, device=self.device)
        parts = _run(self, lambda chunks: self.backward(chunks, gout, dfx, dfy))
        dweights = [torch.stack(ws).sum(0) for ws in zip(*parts, strict=True)]
        dw1x, dw1y, db1, dw_out, *dmids = dweights
        grads = [dfx, dfy, torch.stack([dw1x, dw1y], dim=1), db1, dw_out, *dmids]
        return [None if g is None else g.to(dt) for g, dt in zip(grads, self.grad_dtypes,
                                                                    strict=True)]

    def backward(self, chunks: list[tuple[int, int, int, int]], gout: Tensor,
                 dfx: Tensor | None, dfy: Tensor | None) -> list[Tensor]:
        """Writes the (disjoint) dfx/dfy regions of ``chunks``; returns this part's weight
        gradients (dw1_x, dw1_y, db1, dw_out, *dmids).

        With one head per group (``hpg == 1``, the paper's configuration) the output weight
        ``u = w_out[0]`` is a per-unit scale, so the last hidden layer's gradient is
        ``P * u`` with ``P = g`` where that layer is active, and ``u`` folds into the small
        weight matrices instead of a pass over the chunk: with ``C = sum P^T h`` and
        ``c = sum P`` over the chunks, ``dW = u * C``, ``db = u * c``, ``dh = P @ (u * W)``,
        and ``dw_out = sum_e g_e relu(pre_e) = rowsum(C * W) + c * b`` (``relu(pre) = pre``
        where P is non-zero). The first layer's gradient is summed over query columns
        (-> ``dfy``, ``dw1_y``) per chunk and over query rows (-> ``dfx``, ``dw1_x``,
        ``db1``) per slice."""
        if self.native:
            dw1x, dw1y, db1, c, cb = native.backward(self.fx, self.fy, self.weights, gout,
                                                     self.active, chunks[0][0], chunks[-1][1],
                                                     dfx, dfy)
            dw_last, db_last, dw_out = _unfold(c, cb, self.w_out[0], *self.mids[-2:])
            return [dw1x, dw1y, db1, dw_out[None], dw_last, db_last]
        acc, dev, r = self.acc, self.device, self.r
        n_mid = len(self.mids) // 2
        hpg = self.w_out.shape[0]
        fold = hpg == 1 and n_mid > 0
        bufs = self._buffers(n_mid + 3)  # hidden layers, dh, p
        dh_buf, p_buf = bufs[-2:]
        col_buf, col_part = self._column_buffer(), self._column_buffer()
        col_grad = self._column_buffer(acc)
        row_buf, row_grad = self._row_buffer(), self._row_buffer()
        ones = self.fx.new_ones((self.slices_per_chunk, 1, self.rows_per_chunk))
        dw1x, dw1y, db1 = (torch.zeros(r, dtype=acc, device=dev) for _ in range(3))
        dw_out = torch.zeros(self.w_out.shape, dtype=acc, device=dev)
        dmids = [torch.zeros(m.shape, dtype=acc, device=dev) for m in self.mids]
        if fold:
            u = self.w_out[0]
            w_last = self.mids[-2]
            w_last_u = w_last * u[:, None]  # rows of the last hidden layer scaled by u
            c_sum = torch.zeros((r, r), dtype=acc, device=dev)  # sum of P^T h
            cb_sum = torch.zeros(r, dtype=acc, device=dev)  # sum of P
        cached = None

        def flush_columns() -> None:
            """The finished slices' column gradient -> dfx, dw1_x, db1."""
            if cached is None:
                return
            s0, s1 = cached
            dcol = col_grad[:s1 - s0]
            if dfx is not None:
                dfx[s0:s1] = dcol @ self.w1x.to(acc)
            flat = dcol.view(-1, r)
            dw1x.addmv_(flat.t(), self.fx[s0:s1].reshape(-1).to(acc))
            db1.add_(flat.sum(0))

        for s0, s1, y0, y1 in chunks:
            if cached != (s0, s1):
                flush_columns()
                cols, cached = self._columns(col_buf, s0, s1), (s0, s1)
                col_grad[:s1 - s0].zero_()
            hs = self._hidden(bufs, row_buf, cols, s0, s1, y0, y1)
            m = hs[0].shape[0]
            dh, p = dh_buf[:m], p_buf[:m]
            g = gout[s0:s1, :, y0:y1]
            g = (g.reshape(m, 1) if hpg == 1
                 else rearrange(g, "s h y x n -> (s y x n) h")).to(self.dtype)
            if fold:
                # P = g where the last hidden layer is active (one pass, g broadcast over units;
                # hs[-1] > 0 exactly where its pre-activation is)
                torch.ops.aten.threshold_backward.grad_input(g.expand(m, r), hs[-1], 0,
                                                             grad_input=p)
                if acc == self.dtype:
                    c_sum.addmm_(p.t(), hs[-2])
                else:  # bf16 chunks, float32 sums
                    c_sum.add_(p.t() @ hs[-2])
                cb_sum.add_(p.sum(0))
                torch.mm(p, w_last_u, out=dh)
                layers = range(n_mid - 2, -1, -1)
            else:
                if hpg == 1:
                    dw_out[0].add_(torch.mv(hs[-1].t(), g[:, 0]))
                    torch.mul(g, self.w_out, out=dh)
                else:
                    dw_out.add_(g.t() @ hs[-1])
                    torch.mm(g, self.w_out, out=dh)
                layers = range(n_mid - 1, -1, -1)
            for li in layers:
                torch.ops.aten.threshold_backward.grad_input(dh, hs[li + 1], 0, grad_input=p)
                dmids[2 * li].add_(p.t() @ hs[li])
                dmids[2 * li + 1].add_(p.sum(0))
                torch.mm(p, self.mids[2 * li], out=dh)
            # first layer: through its ReLU, then summed over columns (rows of fy) and rows;
            # the sums go to preallocated buffers (a fresh ~1 MB block per chunk can cost more
            # in page faults than the sum, depending on the allocator's state)
            torch.ops.aten.threshold_backward.grad_input(dh, hs[0], 0, grad_input=dh)
            d5 = dh.view(s1 - s0, y1 - y0, self.w_, self.n, r)
            drow = torch.sum(d5, 2, out=row_grad[:s1 - s0, :y1 - y0])  # [s, y, n, R]
            if dfy is not None:
                dfy[s0:s1, y0:y1] = drow @ self.w1y
            dw1y.addmv_(drow.view(-1, r).t().to(acc), self.fy[s0:s1, y0:y1].reshape(-1).to(acc))
            if acc == self.dtype:  # += the sum over the chunk's rows: one pass, as a product
                cg = col_grad[:s1 - s0].view(s1 - s0, 1, -1)  # with ones (a sum over a short
                torch.baddbmm(cg, ones[:s1 - s0, :, :y1 - y0], d5.view(s1 - s0, y1 - y0, -1),
                              out=cg)  # middle axis, then an add, was twice the time)
            else:
                col_grad[:s1 - s0].add_(torch.sum(d5, 1, out=col_part[:s1 - s0]))
        flush_columns()
        if fold:
            for total, part in zip((dmids[-2], dmids[-1], dw_out[0]),
                                   _unfold(c_sum, cb_sum, u, w_last, self.mids[-1]), strict=True):
                total.add_(part)
        return [dw1x, dw1y, db1, dw_out, *dmids]


def _unfold(c: Tensor, cb: Tensor, u: Tensor, w_last: Tensor, b_last: Tensor
            ) -> tuple[Tensor, Tensor, Tensor]:
    """With one head per group: the last hidden layer's weight and bias gradients and the
    output weight's, (u * C, u * c, rowsum(C * W) + c * b), from C = sum P^T h and c = sum P
    (see ``_Kernel.backward``; the fused kernel returns the same two sums)."""
    return c * u[:, None], cb * u, (c * w_last).sum(1) + cb * b_last


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
    if (not THREADED_CHUNKS or k.device.type != "cpu" or workers < 2
            or len(k.plan) < (1 if k.native else 4) * workers
            or torch._C._len_torch_dispatch_stack() > 0):
        return [fn(k.plan)]
    # Partition by first slice: every dfx/dfy region, and every slice's column gradient, is
    # then written by one worker only.
    bounds = [round(i * k.n_slices / workers) for i in range(workers + 1)]
    parts = [[c for c in k.plan if lo <= c[0] < hi] for lo, hi in zip(bounds, bounds[1:],
                                                                       strict=False)]

    def job(chunks):
        with torch.no_grad():
            return fn(chunks)

    return list(_pool(workers).map(job, [p for p in parts if p]))


@eager_only
def rpb_bias(fx: Tensor, fy: Tensor, w1: Tensor, b1: Tensor, w_out: Tensor, mids: list[Tensor],
             chunk_elems: int | None = None) -> Tensor:
    """Chunked relative-position bias ``[S, hpg, H*W, n]`` (see ``_RPBBias``)."""
    chunk = chunk_elems or _default_chunk_elems(fx.device)
    return _RPBBias.apply(fx, fy, w1, b1, w_out, chunk, _compute_dtype(fx), *mids)
