"""KS-Fusion: gene-steered deformable attention per knowledge subspace, one linear classifier.

Streams: ``decompose=True`` gives two subspaces, tumour (t) and TME (m), each a
``SubspaceStream`` with its own gene encoder, patch projection, teacher and attention;
``decompose=False`` gives one stream on all genes. ``shared_projection=True`` replaces the two
patch projections by one, ``shared_proj``, whose tokens each stream reads through its own view
(``ksmodel.model.shared``): the place where the two subspaces' gradients meet on the same
parameters. The classifier reads the concatenated subspace
features; per-subspace logits ``out_t = W[:, :d] h_t + b/2`` and ``out_m = W[:, d:] h_m + b/2``
(they sum to the logits) are what CG-Coord's confidences are computed from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksmodel.config import ModelConfig
from ksmodel.model.deform_attention import DeformableCrossAttention
from ksmodel.model.encoders import GeneEncoder, PatchProjection, Teacher
from ksmodel.model.shared import SharedTokens
from ksmodel.model.side_by_side import run_streams
from ksmodel.model.stream import SubspaceStream

M = TypeVar("M", bound=nn.Module)


@dataclass
class KSOutput:
    """Model outputs. ``gene_emb``/``vgrids``/``features`` are per stream, (t, m) or (all,)."""

    logits: Tensor  # [B, C]
    logits_t: Tensor | None  # [B, C]; None when decompose=False
    logits_m: Tensor | None
    gene_emb: tuple[Tensor, ...]  # [B, d] each; () for modality=histology
    vgrids: tuple[Tensor, ...]  # [B, G, h', w', 2] each; () for modality=genomics
    features: tuple[Tensor, ...] = ()  # h_s [B, d] each
    # with shared_projection, while gradients are recorded: the shared tokens and (after
    # backward) what each stream sent back to them; None otherwise
    shared: SharedTokens | None = None


class KSFusion(nn.Module):
    """``forward(bags [B, T, D] | None, genes_t [B, n_t] | None, genes_m [B, n_m] | None)``.

    ``cfg.modality`` picks the inputs (both, genomics, histology), ``cfg.teacher`` whether genes
    steer the attention queries, ``cfg.decompose`` two subspace streams or one.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        names = ("tumour", "tme") if cfg.decompose else ("all",)
        n_genes = {"tumour": cfg.n_tumour_genes, "tme": cfg.n_tme_genes,
                   "all": cfg.n_tumour_genes + cfg.n_tme_genes}
        self.uses_genes = cfg.modality != "histology"
        self.uses_histology = cfg.modality != "genomics"

        def each(make: Callable[[str], M], when: bool = True) -> dict[str, M | None]:
            return {s: make(s) if when else None for s in names}

        # Parts are created kind by kind across the streams (every gene encoder, then every
        # projection, ...): the order seeded initialisation draws them in.
        gene_encoders = each(lambda s: GeneEncoder(n_genes[s], d, cfg.gene_hidden,
                                                   cfg.gene_blocks, cfg.dropout),
                             when=self.uses_genes)
        shared = cfg.shared_projection  # validated: two streams with histology
        projs = each(lambda s: PatchProjection(cfg.feature_dim, d),
                     when=self.uses_histology and not shared)
        self.shared_proj = PatchProjection(cfg.feature_dim, d) if shared else None
        teachers = each(lambda s: Teacher(d),
                        when=self.uses_histology and self.uses_genes and cfg.teacher)
        attentions = each(lambda s: DeformableCrossAttention(
            dim=d, grid=cfg.grid, heads=cfg.heads, head_dim=cfg.head_dim,
            groups=cfg.offset_groups, downsample=cfg.downsample, kernel=cfg.offset_kernel,
            offset_scale=cfg.offset_scale, rpb_hidden=cfg.rpb_hidden, rpb_depth=cfg.rpb_depth,
        ), when=self.uses_histology)
        gene_heads = each(lambda s: nn.Linear(d, d), when=not self.uses_histology)
        self.streams = nn.ModuleDict({s: SubspaceStream(
            gene_encoder=gene_encoders[s], proj=projs[s], teacher=teachers[s],
            attention=attentions[s], gene_head=gene_heads[s]) for s in names})
        self.classifier = nn.Linear(len(names) * d, cfg.n_outputs)

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

    def _stream_genes(self, genes_t: Tensor | None,
                      genes_m: Tensor | None) -> dict[str, Tensor | None]:
        """Each stream's gene input: its own subset, all genes, or None (histology only)."""
        if not self.uses_genes:
            return dict.fromkeys(self.streams)
        assert genes_t is not None and genes_m is not None
        if self.cfg.decompose:
            return {"tumour": genes_t, "tme": genes_m}
        return {"all": torch.cat([genes_t, genes_m], dim=1)}

    def forward(self, bags: Tensor | None, genes_t: Tensor | None = None,
                genes_m: Tensor | None = None) -> KSOutput:
        self._check(bags, genes_t, genes_m)
        genes = self._stream_genes(genes_t, genes_m)
        inputs: dict[str, Tensor | None] = dict.fromkeys(self.streams, bags)
        shared = None
        if self.shared_proj is not None:
            tokens = self.shared_proj(bags)
            if tokens.requires_grad:  # training: record what each stream sends back
                shared = SharedTokens(bags, tokens)
                inputs = {name: shared.view_for(name) for name in self.streams}
            else:
                inputs = dict.fromkeys(self.streams, tokens)
        names = list(self.streams)
        outs = run_streams([self.streams[n] for n in names], [inputs[n] for n in names],
                           [genes[n] for n in names])
        feats = tuple(o.feature for o in outs)
        logits = self.classifier(torch.cat(feats, dim=1))
        logits_t = logits_m = None
        if self.cfg.decompose:
            d, w, b = self.cfg.dim, self.classifier.weight, self.classifier.bias
            logits_t = F.linear(feats[0], w[:, :d], b / 2)
            logits_m = F.linear(feats[1], w[:, d:], b / 2)
        return KSOutput(logits, logits_t, logits_m,
                        gene_emb=tuple(o.gene_emb for o in outs if o.gene_emb is not None),
                        vgrids=tuple(o.vgrid for o in outs if o.vgrid is not None),
                        features=feats, shared=shared)
