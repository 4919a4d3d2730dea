"""Straightforward oracle of the cross-modal deformable attention (test/benchmark only).

Written the obvious way, DAT-style: every (query, sampled key) displacement is materialised and
pushed through the relative-position-bias MLP as one [B*G, T, n, 2] tensor, attention is plain
einsum + softmax. Same parameter names as
``ksmodel.model.deform_attention.DeformableCrossAttention`` so ``load_state_dict`` shares
weights; the fast path must match it in outputs and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReferenceDeformableAttention(nn.Module):
    def __init__(self, *, dim: int, grid: tuple[int, int], heads: int, head_dim: int,
                 groups: int, downsample: int, kernel: int, offset_scale: float, rpb_hidden: int,
                 rpb_depth: int, **_: object) -> None:
        super().__init__()
        self.dim, self.grid, self.groups = dim, grid, groups
        self.heads, self.head_dim = heads, head_dim
        self.offset_scale = offset_scale
        inner = heads * head_dim
        cg = dim // groups
        # Padding so the reference grid is floor(S / r) cells (>= 1 on tiny grids).
        pads = tuple(max((kernel - downsample) // 2, -((s - kernel) // 2), 0) for s in grid)
        self.proj_q = nn.Linear(dim, inner)
        self.proj_k = nn.Linear(dim, inner)
        self.proj_v = nn.Linear(dim, inner)
        self.proj_out = nn.Linear(inner, dim)
        self.offset_dw = nn.Conv2d(cg, cg, kernel, stride=downsample, padding=pads, groups=cg)
        self.offset_pw = nn.Conv2d(cg, 2, 1, bias=False)
        layers: list[nn.Module] = [nn.Linear(2, rpb_hidden), nn.ReLU()]
        for _ in range(rpb_depth - 1):
            layers += [nn.Linear(rpb_hidden, rpb_hidden), nn.ReLU()]
        layers.append(nn.Linear(rpb_hidden, max(heads // groups, 1), bias=False))
        self.rpb = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(dim)
        self.pool = nn.Linear(dim, dim)

    def forward(self, queries: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        b, t, d = queries.shape
        h, w = self.grid
        g, cg = self.groups, d // self.groups
        nh, hd = self.heads, self.head_dim

        # offsets on the reference grid, from the grouped queries
        qmap = queries.permute(0, 2, 1).reshape(b, d, h, w).reshape(b * g, cg, h, w)
        off = self.offset_pw(F.gelu(self.offset_dw(qmap)))  # [B*G, 2, hk, wk]
        hk, wk = off.shape[-2:]
        off_x = torch.tanh(off[:, 0]) * self.offset_scale / wk
        off_y = torch.tanh(off[:, 1]) * self.offset_scale / hk
        ref_y, ref_x = torch.meshgrid(
            torch.linspace(-1 + 1 / hk, 1 - 1 / hk, hk, device=off.device, dtype=off.dtype),
            torch.linspace(-1 + 1 / wk, 1 - 1 / wk, wk, device=off.device, dtype=off.dtype),
            indexing="ij")
        pos = torch.stack([ref_x + off_x, ref_y + off_y], dim=-1)  # [B*G, hk, wk, 2]

        # keys / values sampled from the histology tokens
        tmap = tokens.permute(0, 2, 1).reshape(b * g, cg, h, w)
        sampled = F.grid_sample(tmap, pos, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
        n = hk * wk
        sampled = sampled.reshape(b, d, n).permute(0, 2, 1)  # [B, n, d]
        q = self.proj_q(queries).reshape(b, t, nh, hd)
        k = self.proj_k(sampled).reshape(b, n, nh, hd)
        v = self.proj_v(sampled).reshape(b, n, nh, hd)
        attn = torch.einsum("bthc,bnhc->bhtn", q, k) / hd**0.5

        # relative-position bias on every (query, key) pair
        like = dict(device=off.device, dtype=off.dtype)
        qy, qx = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h, **like),
                                torch.linspace(-1 + 1 / w, 1 - 1 / w, w, **like), indexing="ij")
        qpos = torch.stack([qx, qy], dim=-1).reshape(t, 2)
        disp = (qpos[None, :, None, :] - pos.reshape(b * g, 1, n, 2)) * 4.0
        disp = torch.sign(disp) * torch.log2(disp.abs() + 1.0) / 3.0
        bias = self.rpb(disp)  # [B*G, T, n, hpg]
        bias = bias.reshape(b, g, t, n, -1).permute(0, 1, 4, 2, 3).reshape(b, -1, t, n)
        if g > nh:
            bias = bias.reshape(b, nh, g // nh, t, n).mean(dim=2)
        attn = torch.softmax(attn + bias, dim=-1)

        out = torch.einsum("bhtn,bnhc->bthc", attn, v).reshape(b, t, nh * hd)
        y = self.norm(queries + self.proj_out(out))
        return torch.tanh(self.pool(y.mean(dim=1))), pos.reshape(b, g, hk, wk, 2)
