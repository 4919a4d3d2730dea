"""KS-Fusion: gene-steered deformable attention per knowledge subspace.

Streams: ``decompose=True`` gives two subspaces, tumour (t) and TME (m), each with its own gene
encoder, patch projection, teacher and attention; ``decompose=False`` gives one stream on all
genes. The classifier reads the concatenated subspace features; per-subspace logits
``out_t = W[:, :d] h_t + b/2`` and ``out_m = W[:, d:] h_m + b/2`` (they sum to the logits) are
what CG-Coord's confidences are computed from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksmodel.config import ModelConfig
from ksmodel.model.deform_attention import DeformableCrossAttention
from ksmodel.model.encoders import GeneEncoder, PatchProjection, Teacher


@dataclass
class KSOutput:
    """Model outputs. ``gene_emb``/``vgrids``/``features`` are per stream, (t, m) or (all,)."""

    logits: Tensor  # [B, C]
    logits_t: Tensor | None  # [B, C]; None when decompose=False
    logits_m: Tensor | None
    gene_emb: tuple[Tensor, ...]  # [B, d] each; () for modality=histology
    vgrids: tuple[Tensor, ...]  # [B, G, h', w', 2] each; () for modality=genomics
    features: tuple[Tensor, ...] = ()  # h_s [B, d] each


class KSFusion(nn.Module):
    """``forward(bags [B, T, D] | None, genes_t [B, n_t] | None, genes_m [B, n_m] | None)``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.streams: tuple[str, ...] = ("tumour", "tme") if cfg.decompose else ("all",)
        n_genes = {"tumour": cfg.n_tumour_genes, "tme": cfg.n_tme_genes,
                   "all": cfg.n_tumour_genes + cfg.n_tme_genes}
        self.uses_genes = cfg.modality != "histology"
        self.uses_histology = cfg.modality != "genomics"

        def per_stream(make) -> nn.ModuleDict:
            return nn.ModuleDict({s: make(s) for s in self.streams})

        self.gene_encoders = per_stream(lambda s: GeneEncoder(
            n_genes[s], d, cfg.gene_hidden, cfg.gene_blocks, cfg.dropout)
        ) if self.uses_genes else None
        if self.uses_histology:
            self.patch_proj = per_stream(lambda s: PatchProjection(cfg.feature_dim, d))
            self.teachers = (per_stream(lambda s: Teacher(d))
                             if cfg.teacher and self.uses_genes else None)
            self.attention = per_stream(lambda s: DeformableCrossAttention(
                dim=d, grid=cfg.grid, heads=cfg.heads, head_dim=cfg.head_dim,
                groups=cfg.offset_groups, downsample=cfg.downsample, kernel=cfg.offset_kernel,
                offset_scale=cfg.offset_scale, rpb_hidden=cfg.rpb_hidden,
                rpb_depth=cfg.rpb_depth))
            self.gene_heads = None
        else:
            self.patch_proj = self.teachers = self.attention = None
            self.gene_heads = per_stream(lambda s: nn.Linear(d, d))
        self.classifier = nn.Linear(len(self.streams) * d, cfg.n_outputs)

    def _check(self, bags: Tensor | None, genes_t: Tensor | None, genes_m: Tensor | None) -> None:
        cfg = self.cfg
        if self.uses_histology:
            want = (cfg.n_tokens, cfg.feature_dim)
            if bags is None or bags.dim() != 3 or tuple(bags.shape[1:]) != want:
                got = None if bags is None else tuple(bags.shape)
                raise ValueError(f"bags must be [B, {want[0]}, {want[1]}] (grid {cfg.grid}, "
                                 f"feature_dim {cfg.feature_dim}), got {got}")
        if self.uses_genes:
            for name, g, n in (("genes_t", genes_t, cfg.n_tumour_genes),
                               ("genes_m", genes_m, cfg.n_tme_genes)):
                if g is None or g.dim() != 2 or g.shape[1] != n:
                    got = None if g is None else tuple(g.shape)
                    raise ValueError(f"{name} must be [B, {n}], got {got}")

    def forward(self, bags: Tensor | None, genes_t: Tensor | None = None,
                genes_m: Tensor | None = None) -> KSOutput:
        self._check(bags, genes_t, genes_m)
        if self.uses_genes:
            assert genes_t is not None and genes_m is not None
            inputs = ({"tumour": genes_t, "tme": genes_m} if self.cfg.decompose
                      else {"all": torch.cat([genes_t, genes_m], dim=1)})
        feats, embs, grids = [], [], []
        for s in self.streams:
            e = self.gene_encoders[s](inputs[s]) if self.gene_encoders is not None else None
            if e is not None:
                embs.append(e)
            if self.attention is not None:
                p = self.patch_proj[s](bags)
                q = self.teachers[s](p, e) if self.teachers is not None else p
                h, vgrid = self.attention[s](q, p)
                grids.append(vgrid)
            else:
                h = torch.tanh(self.gene_heads[s](e))
            feats.append(h)
        logits = self.classifier(torch.cat(feats, dim=1))
        logits_t = logits_m = None
        if self.cfg.decompose:
            d, w, b = self.cfg.dim, self.classifier.weight, self.classifier.bias
            logits_t = F.linear(feats[0], w[:, :d], b / 2)
            logits_m = F.linear(feats[1], w[:, d:], b / 2)
        return KSOutput(logits, logits_t, logits_m, tuple(embs), tuple(grids), tuple(feats))
