"""Per-subspace encoders: genes -> embedding, patches -> tokens, and the teacher fusing them."""

from __future__ import annotations

import math

from einops import rearrange
from torch import Tensor, nn


class GeneEncoder(nn.Module):
    """Self-normalising MLP (Klambauer et al. 2017): blocks of Linear -> ELU -> AlphaDropout.

    Dimensions ``n_genes -> hidden -> ... -> dim`` over ``blocks`` blocks. SNN init (weights
    N(0, 1/fan_in), zero bias) keeps activations near zero mean / unit variance, which is what
    AlphaDropout assumes; it is the MCAT/PORPOISE genomic encoder.
    """

    def __init__(self, n_genes: int, dim: int, hidden: int = 256, blocks: int = 2,
                 dropout: float = 0.25) -> None:
        super().__init__()
        dims = [n_genes] + [hidden] * (blocks - 1) + [dim]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            lin = nn.Linear(a, b)
            nn.init.normal_(lin.weight, 0.0, 1.0 / math.sqrt(a))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ELU(), nn.AlphaDropout(dropout)]
        self.net = nn.Sequential(*layers)

    def forward(self, genes: Tensor) -> Tensor:
        """[B, n_genes] -> [B, dim]."""
        return self.net(genes)


class PatchProjection(nn.Sequential):
    """Linear D -> d + ReLU on every patch embedding ([B, T, D] -> [B, T, d])."""

    def __init__(self, feature_dim: int, dim: int) -> None:
        super().__init__(nn.Linear(feature_dim, dim), nn.ReLU())


class Teacher(nn.Linear):
    """Fuses each patch token with the subspace's gene embedding: Linear([patch, e_s]) 2d -> d.

    Computed as ``W[:, :d] p + (W[:, d:] e + b)`` so the [B, T, 2d] concatenation is never built
    (same function, half the FLOPs); the parameter is a plain ``nn.Linear(2d, d)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__(2 * dim, dim)
        self.dim = dim

    def forward(self, patches: Tensor, gene_emb: Tensor) -> Tensor:  # type: ignore[override]
        d = self.dim
        per_patient = nn.functional.linear(gene_emb, self.weight[:, d:], self.bias)
        per_patient = rearrange(per_patient, "b d -> b 1 d")  # shared by all of a bag's patches
        return nn.functional.linear(patches, self.weight[:, :d]) + per_patient
