"""Cross-modal deformable attention (DESIGN §3.4) with a memory-lean relative-position bias.

Geometry (positions in ``grid_sample``'s normalised [-1, 1] coordinates, ``align_corners=False``,
stored as (x, y)):

* Token ``(i, j)`` of the ``H x W`` grid (row-major, token ``t = i*W + j``) sits at its cell centre
  ``((2j+1)/W - 1, (2i+1)/H - 1)``.
* The offset network runs on the grouped *queries*: ``(B*G, d/G, H, W)`` -> depth-wise conv (kernel
  ``k``, stride ``r``, padding ``p``) -> GELU -> 1x1 conv -> 2 channels -> ``tanh * offset_scale``,
  in units of half a reference cell (``1/w'`` in x, ``1/h'`` in y), as DAT's offset range factor.
* Padding rule (per axis of length ``S``): ``p = max((k - r) // 2, ceil((k - S) / 2), 0)``, giving
  ``h' = floor((S + 2p - k) / r) + 1``. When ``k - r`` is even and ``S >= r`` this is exactly
  ``floor(S / r)`` (50x50, r=4, k=6 -> 12x12 = 144 keys per group); tiny grids still get >= 1.
* Reference points are the centres of the ``h' x w'`` cells; ``vgrid`` = reference + offsets,
  shape ``[B, G, h', w', 2]``. Keys/values are bilinearly sampled (zero padding) from the
  *histology* tokens, group ``g`` sampling channel slice ``g`` at its own positions (as DAT).
* Relative-position bias (Swin-V2 / DAT log-CPB): displacement ``delta = 4 * (query - key)``,
  ``f(delta) = sign(delta) * log2(1 + |delta|) / 3``, then an MLP ``2 -> R (ReLU) -> [R -> R (ReLU)]
  * (depth-1) -> heads_per_group`` (last layer without bias: a per-head constant cancels in
  softmax). Head ``h`` uses group ``h // (heads/G)``; with more groups than heads a head averages
  the biases of its ``G/heads`` groups.

Why the fast path: the naive bias materialises ``[B*G, T, n, R]`` hidden activations (3 GB per
tensor at B=8 of the paper config). Here the first layer is separable (``f`` acts per axis, so its
pre-activation is ``A_y[i, key] + A_x[j, key]``), and ``_RPBBias`` evaluates the rest of the MLP in
cache-sized chunks over (batch*group, query rows), keeping only the ``[B*G, hpg, T, n]`` bias; the
backward recomputes each chunk (flash-attention style) and accumulates weight gradients, so peak
memory no longer scales with ``R``. Chunk intermediates live in reused buffers (no allocator churn)
and, on CPU, the chunks are spread over ``torch.get_num_threads()`` worker threads that each run
torch single-threaded: thousands of small ops per step would otherwise each be an OpenMP barrier,
which collapses when other processes compete for the cores (measured 24-50 s vs 4-5 s per B=2
step on a loaded 2-core machine). ``THREADED_CHUNKS = False`` switches that off. The result does
not depend on the chunking or threading (fixed partition, fixed summation order).
tests/reference_attention.py is the straightforward oracle; same outputs and gradients.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_CPB_SCALE = 4.0  # DAT: displacement in normalised units * 4, i.e. roughly [-8, 8]
LOG_CPB_NORM = 3.0  # log2(8)


def reference_padding(size: int, kernel: int, stride: int) -> int:
    """Offset-conv padding along one axis (module docstring): floor(size/r) cells, never 0."""
    return max((kernel - stride) // 2, -((size - kernel) // 2), 0)


def reference_size(size: int, kernel: int, stride: int) -> int:
    """Length of the reference grid along an axis of ``size`` tokens."""
    pad = reference_padding(size, kernel, stride)
    return (size + 2 * pad - kernel) // stride + 1


def cell_centres(n: int, *, device=None, dtype=None) -> Tensor:
    """Centres of ``n`` equal cells spanning [-1, 1] (grid_sample with align_corners=False)."""
    return (2 * torch.arange(n, device=device, dtype=dtype) + 1) / n - 1


def log_cpb(delta: Tensor) -> Tensor:
    """Log-spaced displacement (Swin-V2 continuous position bias, DAT constants)."""
    delta = delta * LOG_CPB_SCALE
    return torch.sign(delta) * torch.log2(delta.abs() + 1.0) / LOG_CPB_NORM


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
                dst.copy_(o.view(s1 - s0, y1 - y0, self.w_, self.n, hpg).permute(0, 4, 1, 2, 3))

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
            g = gout[s0:s1, :, y0:y1].permute(0, 2, 3, 4, 1).reshape(m, hpg).to(self.dtype)
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


class DeformableCrossAttention(nn.Module):
    """Fused queries attend over histology keys sampled at a learned deformed grid.

    ``forward(queries [B, T, d], tokens [B, T, d]) -> (h [B, d], vgrid [B, G, h', w', 2])`` with
    ``T = H*W`` of ``grid``. Parameter names are shared with tests/reference_attention.py.
    """

    def __init__(self, dim: int, grid: tuple[int, int], heads: int, head_dim: int, groups: int,
                 downsample: int, kernel: int, offset_scale: float, rpb_hidden: int,
                 rpb_depth: int, chunk_elems: int | None = None) -> None:
        super().__init__()
        if dim % groups or (heads % groups and groups % heads):
            raise ValueError(f"dim={dim}, heads={heads} and groups={groups} are incompatible")
        self.dim, self.grid, self.groups = dim, grid, groups
        self.heads, self.head_dim = heads, head_dim
        self.offset_scale = float(offset_scale)
        self.chunk_elems = chunk_elems
        inner = heads * head_dim
        cg = dim // groups
        pads = tuple(reference_padding(s, kernel, downsample) for s in grid)
        self.ref_size = tuple(reference_size(s, kernel, downsample) for s in grid)
        self.proj_q = nn.Linear(dim, inner)
        self.proj_k = nn.Linear(dim, inner)
        self.proj_v = nn.Linear(dim, inner)
        self.proj_out = nn.Linear(inner, dim)
        self.offset_dw = nn.Conv2d(cg, cg, kernel, stride=downsample, padding=pads, groups=cg)
        self.offset_pw = nn.Conv2d(cg, 2, 1, bias=False)
        hpg = max(heads // groups, 1)
        layers: list[nn.Module] = [nn.Linear(2, rpb_hidden), nn.ReLU()]
        for _ in range(rpb_depth - 1):
            layers += [nn.Linear(rpb_hidden, rpb_hidden), nn.ReLU()]
        layers.append(nn.Linear(rpb_hidden, hpg, bias=False))
        self.rpb = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.pool = nn.Linear(dim, dim)

    # -- geometry -------------------------------------------------------------------------
    def _grouped_map(self, x: Tensor) -> Tensor:
        """[B, T, d] -> [B*G, d/G, H, W]."""
        b = x.shape[0]
        h, w = self.grid
        return x.transpose(1, 2).reshape(b * self.groups, self.dim // self.groups, h, w)

    def sample_positions(self, queries: Tensor) -> Tensor:
        """Deformed reference grid [B*G, h', w', 2] (x, y) predicted from the grouped queries."""
        off = self.offset_pw(F.gelu(self.offset_dw(self._grouped_map(queries))))
        hk, wk = off.shape[-2:]
        scale = off.new_tensor([1.0 / wk, 1.0 / hk]).view(1, 2, 1, 1) * self.offset_scale
        off = (torch.tanh(off) * scale).permute(0, 2, 3, 1)
        ry = cell_centres(hk, device=off.device, dtype=off.dtype)
        rx = cell_centres(wk, device=off.device, dtype=off.dtype)
        ref = torch.stack(torch.meshgrid(rx, ry, indexing="xy"), dim=-1)  # [hk, wk, 2] (x, y)
        return ref + off

    def sample_tokens(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Bilinear samples of the histology tokens: group g's channels at group g's points."""
        b = tokens.shape[0]
        s = F.grid_sample(self._grouped_map(tokens), pos, mode="bilinear",
                          padding_mode="zeros", align_corners=False)  # [B*G, d/G, hk, wk]
        return s.reshape(b, self.dim, -1).transpose(1, 2)  # [B, n, d]

    def position_bias(self, pos: Tensor) -> Tensor:
        """Relative-position bias per head [B, heads, T, n] via the chunked kernel."""
        h, w = self.grid
        bg, hk, wk, _ = pos.shape
        key = pos.reshape(bg, hk * wk, 2)
        lin1 = self.rpb[0]
        qx = cell_centres(w, device=pos.device, dtype=pos.dtype)
        qy = cell_centres(h, device=pos.device, dtype=pos.dtype)
        fx = log_cpb(qx[None, :, None] - key[:, None, :, 0])  # [BG, W, n]
        fy = log_cpb(qy[None, :, None] - key[:, None, :, 1])  # [BG, H, n]
        ax = fx[..., None] * lin1.weight[:, 0] + lin1.bias  # [BG, W, n, R]
        ay = fy[..., None] * lin1.weight[:, 1]  # [BG, H, n, R]
        mids = [p for m in self.rpb[2:-1:2] for p in (m.weight, m.bias)]
        bias = rpb_bias(ay, ax, self.rpb[-1].weight, mids, self.chunk_elems)
        return self._bias_per_head(bias)

    def _bias_per_head(self, bias: Tensor) -> Tensor:
        """[B*G, hpg, T, n] -> [B, heads, T, n] (mean over a head's groups when G > heads)."""
        bg, _, t, n = bias.shape
        b = bg // self.groups
        if self.groups <= self.heads:
            return bias.view(b, self.heads, t, n)
        return bias.view(b, self.heads, self.groups // self.heads, t, n).mean(2)

    # -- forward --------------------------------------------------------------------------
    def forward(self, queries: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        b, t, d = queries.shape
        if t != self.grid[0] * self.grid[1] or tokens.shape != queries.shape:
            raise ValueError(f"expected queries and tokens [B, {self.grid[0] * self.grid[1]}, "
                             f"{self.dim}], got {tuple(queries.shape)} / {tuple(tokens.shape)}")
        pos = self.sample_positions(queries)
        kv = self.sample_tokens(tokens, pos)  # [B, n, d]
        n = kv.shape[1]
        nh, hd = self.heads, self.head_dim
        q = self.proj_q(queries).view(b, t, nh, hd).transpose(1, 2).reshape(b * nh, t, hd)
        k = self.proj_k(kv).view(b, n, nh, hd).transpose(1, 2).reshape(b * nh, n, hd)
        v = self.proj_v(kv).view(b, n, nh, hd).transpose(1, 2).reshape(b * nh, n, hd)
        bias = self.position_bias(pos).reshape(b * nh, t, n)
        logits = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(hd))
        out = torch.bmm(torch.softmax(logits, dim=-1), v)  # [B*heads, T, hd]
        out = out.view(b, nh, t, hd).transpose(1, 2).reshape(b, t, nh * hd)
        y = self.norm(queries + self.proj_out(out))
        h = torch.tanh(self.pool(y.mean(dim=1)))
        return h, pos.view(b, self.groups, *pos.shape[1:])
