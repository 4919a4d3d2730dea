"""What the benchmarks share: a random batch at a model config's shapes and the training
objective of the study's default task, so every benchmark times ``ksmodel.step.train_step``."""

from __future__ import annotations

import torch

from ksmodel.config import ModelConfig
from ksmodel.step import Batch, Objective
from ksmodel.tasks import FoldTargets, get_task


def random_batch(cfg: ModelConfig, b: int, device: torch.device, seed: int = 0) -> Batch:
    """B patients of random bags, genes and diagnosis labels at ``cfg``'s shapes."""
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(b, cfg.n_tokens, cfg.feature_dim, generator=g).to(device),
                 torch.randn(b, cfg.n_tumour_genes, generator=g).to(device),
                 torch.randn(b, cfg.n_tme_genes, generator=g).to(device),
                 {"label": (torch.arange(b) % cfg.n_outputs).to(device)})


def diagnosis_objective(cfg: ModelConfig, batch: Batch, lam: float = 0.1) -> Objective:
    """Weighted cross-entropy (uniform weights) + lam x consistency, as a diagnosis trial."""
    weights = torch.ones(cfg.n_outputs, device=batch.genes_t.device)
    return Objective(get_task("diagnosis"), FoldTargets(batch.targets, class_weights=weights),
                     lam=lam, alpha=0.5)
