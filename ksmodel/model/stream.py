"""One knowledge subspace of KS-Fusion: its genes, its view of the histology, its feature.

A stream owns exactly the parts its modality needs. With histology, the patch projection's tokens
are both the keys/values of the deformable attention and (fused with the gene embedding by the
teacher, when there is one) its queries, so the genes steer where the attention looks. Without
histology, a linear head turns the gene embedding into the feature. A histology stream without a
projection of its own reads tokens projected by KS-Fusion's shared projection instead of bags.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ksmodel.model.deform_attention import DeformableCrossAttention
from ksmodel.model.encoders import GeneEncoder, PatchProjection, Teacher


class StreamOutput(NamedTuple):
    """``feature`` h_s [B, d]; ``gene_emb`` e_s [B, d] (None without genes); ``vgrid`` the
    deformed sampling grid [B, G, h', w', 2] (None without histology)."""

    feature: Tensor
    gene_emb: Tensor | None
    vgrid: Tensor | None


class SubspaceStream(nn.Module):
    """``forward(bags [B, T, D] | None, genes [B, n] | None) -> StreamOutput``.

    Built from its parts (rather than from the config) so that KS-Fusion can create the parts of
    all streams kind by kind, the order that fixes seeded initialisation. Valid part sets:
    histology (``attention``, optionally ``proj``, optionally ``gene_encoder`` and then optionally
    ``teacher``) or genomics only (``gene_encoder`` + ``gene_head``). A histology stream without
    ``proj`` takes already projected tokens [B, T, d] (a projection shared with another stream).
    """

    def __init__(self, *, gene_encoder: GeneEncoder | None = None,
                 proj: PatchProjection | None = None, teacher: Teacher | None = None,
                 attention: DeformableCrossAttention | None = None,
                 gene_head: nn.Linear | None = None) -> None:
        super().__init__()
        histology = attention is not None
        genomics_only = (proj is None and attention is None and gene_encoder is not None
                         and gene_head is not None)
        if not (histology or genomics_only) or (histology and gene_head is not None):
            raise ValueError("a stream needs attention (histology, with its own proj or reading "
                             "shared tokens) or gene_encoder + gene_head (genomics only)")
        if teacher is not None and (gene_encoder is None or not histology):
            raise ValueError("a teacher fuses genes into histology queries: it needs both")
        self.gene_encoder = gene_encoder
        self.proj = proj
        self.teacher = teacher
        self.attention = attention
        self.gene_head = gene_head

    def forward(self, bags: Tensor | None, genes: Tensor | None) -> StreamOutput:
        """``bags`` [B, T, D], or the shared projection's tokens [B, T, d] without ``proj``."""
        emb = self.encode_genes(genes)
        if self.attention is None:
            return StreamOutput(torch.tanh(self.gene_head(emb)), emb, None)
        feature, vgrid = self.histology(bags, emb)
        return StreamOutput(feature, emb, vgrid)

    @property
    def reads_histology(self) -> bool:
        return self.attention is not None

    def encode_genes(self, genes: Tensor | None) -> Tensor | None:
        """The gene embedding e_s [B, d] (None without a gene encoder). The stream's only
        random draws (dropout) happen here."""
        return self.gene_encoder(genes) if self.gene_encoder is not None else None

    def histology(self, bags: Tensor, emb: Tensor | None) -> tuple[Tensor, Tensor]:
        """Feature h_s [B, d] and sampling grid of a histology stream, given its gene embedding
        (deterministic: no random draws, so streams may run it side by side)."""
        tokens = self.proj(bags) if self.proj is not None else bags
        queries = self.teacher(tokens, emb) if self.teacher is not None else tokens
        return self.attention(queries, tokens)
