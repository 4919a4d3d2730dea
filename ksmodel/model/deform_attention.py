"""Cross-modal deformable attention: gene-steered queries attend over deformably sampled histology.

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

The bias MLP runs in the chunked, recomputing kernel of ``_rpb_kernel`` (the naive version holds
a ``[B*G, T, n, R]`` activation, gigabytes at the paper size), and with groups <= heads in full
precision the bias, scores, softmax and weighted sum are one node (``_biased_attention``: one
logits-sized buffer instead of five). tests/reference_attention.py is the straightforward
oracle; same outputs and gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor, nn

from ksmodel.model._biased_attention import biased_attention, fused_attention_applies
from ksmodel.model._rpb_kernel import rpb_bias

__all__ = ["DeformableCrossAttention", "cell_centres", "log_cpb", "reference_padding",
           "reference_size", "rpb_bias"]

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


class DeformableCrossAttention(nn.Module):
    """Fused queries attend over histology keys sampled at a learned deformed grid.

    ``forward(queries [B, T, d], tokens [B, T, d]) -> (h [B, d], vgrid [B, G, h', w', 2])`` with
    ``T = H*W`` of ``grid``. Keyword-only: ten integers in a row are too easy to pass out of
    order. Parameter names are shared with tests/reference_attention.py.
    """

    def __init__(self, *, dim: int, grid: tuple[int, int], heads: int, head_dim: int,
                 groups: int, downsample: int, kernel: int, offset_scale: float,
                 rpb_hidden: int, rpb_depth: int, chunk_elems: int | None = None) -> None:
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
        # Creation order fixes what a seed initialises: keep it.
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
        layers.append(nn.Linear(rpb_hidden, hpg, bias=False))  # no bias: cancels in softmax
        self.rpb = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.pool = nn.Linear(dim, dim)

    # -- geometry -------------------------------------------------------------------------
    def _grouped_map(self, x: Tensor) -> Tensor:
        """Tokens as one 2-D map per offset group: group g holds channel slice g."""
        return rearrange(x, "b (h w) (g c) -> (b g) c h w", h=self.grid[0], g=self.groups)

    def sample_positions(self, queries: Tensor) -> Tensor:
        """Deformed reference grid [B*G, h', w', 2] (x, y) predicted from the grouped queries."""
        off = self.offset_pw(F.gelu(self.offset_dw(self._grouped_map(queries))))
        hk, wk = off.shape[-2:]
        scale = off.new_tensor([1.0 / wk, 1.0 / hk]) * self.offset_scale  # half-cells, (x, y)
        off = torch.tanh(rearrange(off, "bg xy h w -> bg h w xy")) * scale
        ry = cell_centres(hk, device=off.device, dtype=off.dtype)
        rx = cell_centres(wk, device=off.device, dtype=off.dtype)
        ref = torch.stack(torch.meshgrid(rx, ry, indexing="xy"), dim=-1)  # [h', w', 2] (x, y)
        return ref + off

    def sample_tokens(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Bilinear samples [B, n, d] of the histology tokens: group g's channels at its points."""
        sampled = F.grid_sample(self._grouped_map(tokens), pos, mode="bilinear",
                                padding_mode="zeros", align_corners=False)
        return rearrange(sampled, "(b g) c h w -> b (h w) (g c)", g=self.groups)

    def displacements(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """Log-CPB displacement of every query column / row to every sampled key:
        ``fx`` [B*G, W, n] and ``fy`` [B*G, H, n], the bias MLP's two inputs (per axis, which
        is what makes its first layer separable)."""
        h, w = self.grid
        key = rearrange(pos, "bg h w xy -> bg (h w) xy")
        qx = cell_centres(w, device=pos.device, dtype=pos.dtype)
        qy = cell_centres(h, device=pos.device, dtype=pos.dtype)
        return (log_cpb(qx[None, :, None] - key[:, None, :, 0]),
                log_cpb(qy[None, :, None] - key[:, None, :, 1]))

    def _bias_mlp(self) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
        """The bias MLP's weights as the kernels take them: w1, b1, w_out, [W_l, b_l, ...]."""
        mids = [p for m in self.rpb[2:-1:2] for p in (m.weight, m.bias)]
        return self.rpb[0].weight, self.rpb[0].bias, self.rpb[-1].weight, mids

    def position_bias(self, pos: Tensor) -> Tensor:
        """Relative-position bias per head [B, heads, T, n] via the chunked kernel."""
        w1, b1, w_out, mids = self._bias_mlp()
        bias = rpb_bias(*self.displacements(pos), w1, b1, w_out, mids, self.chunk_elems)
        return self._bias_per_head(bias)

    def _bias_per_head(self, bias: Tensor) -> Tensor:
        """[B*G, hpg, T, n] -> [B, heads, T, n]; with more groups than heads, average a head's."""
        if self.groups <= self.heads:
            return rearrange(bias, "(b g) k t n -> b (g k) t n", g=self.groups)
        return reduce(bias, "(b h k) 1 t n -> b h t n", "mean", h=self.heads,
                      k=self.groups // self.heads)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, pos: Tensor) -> Tensor:
        """softmax(q k^T / sqrt(d) + bias) v per head: [B, T, heads*d] from q [B, T, heads*d],
        k, v [B, n, heads*d]. One fused node (``_biased_attention``) where it applies, else
        the bias, a batched product, softmax and a product as separate nodes."""
        scale = 1.0 / math.sqrt(self.head_dim)
        if fused_attention_applies(q, self.groups, self.heads):
            w1, b1, w_out, mids = self._bias_mlp()
            return biased_attention(q, k, v, *self.displacements(pos), w1, b1, w_out, mids,
                                    heads=self.heads, scale=scale, chunk_elems=self.chunk_elems)
        heads = self.heads
        bias = rearrange(self.position_bias(pos), "b h t n -> (b h) t n")
        q, k, v = (rearrange(x, "b l (h d) -> (b h) l d", h=heads) for x in (q, k, v))
        logits = torch.baddbmm(bias, q, k.mT, alpha=scale)  # bias + scaled scores in one product
        out = torch.bmm(logits.softmax(dim=-1), v)
        return rearrange(out, "(b h) t d -> b t (h d)", h=heads)

    # -- forward --------------------------------------------------------------------------
    def forward(self, queries: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        t = queries.shape[1]
        if t != self.grid[0] * self.grid[1] or tokens.shape != queries.shape:
            raise ValueError(f"expected queries and tokens [B, {self.grid[0] * self.grid[1]}, "
                             f"{self.dim}], got {tuple(queries.shape)} / {tuple(tokens.shape)}")
        pos = self.sample_positions(queries)
        kv = self.sample_tokens(tokens, pos)
        out = self.attend(self.proj_q(queries), self.proj_k(kv), self.proj_v(kv), pos)
        y = self.norm(queries + self.proj_out(out))
        feature = torch.tanh(self.pool(y.mean(dim=1)))
        return feature, rearrange(pos, "(b g) h w xy -> b g h w xy", g=self.groups)
