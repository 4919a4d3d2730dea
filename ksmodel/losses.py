"""Task losses and the gene-guided consistency loss.

The total objective is ``L_task + lam * consistency_total(out, alpha)``; the trainer applies
``lam`` (so ``lam = 0`` can skip computing the consistency term altogether).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from ksmodel.model.ksfusion import KSOutput


def class_weights(labels, n_classes: int) -> Tensor:
    """Inverse-frequency weights ``N / (C * n_c)`` from the training fold's labels.

    A class absent from the fold gets weight 0: it never appears as a target, so its weight is
    never used, and 0 makes that visible instead of an arbitrary large number.
    """
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
    if y.numel() == 0:
        raise ValueError("class_weights needs at least one label")
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"labels must be in [0, {n_classes - 1}], got [{int(y.min())}, "
                         f"{int(y.max())}]")
    counts = torch.bincount(y, minlength=n_classes).to(torch.float32)
    w = y.numel() / (n_classes * counts.clamp(min=1))
    return torch.where(counts > 0, w, torch.zeros_like(w))


def classification_loss(logits: Tensor, label: Tensor, weights: Tensor | None = None) -> Tensor:
    """Class-weighted cross-entropy (weighted mean, as ``F.cross_entropy``)."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if weights is not None:
        weights = weights.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, label, weight=weights)


def survival_bin_edges(time, event, n_bins: int = 4) -> np.ndarray:
    """Bin edges ``[-inf, q_1, ..., q_{n-1}, inf]`` at quantiles of the training fold's event times.

    Outer edges are infinite so validation times outside the training range still get a bin.
    With no observed event the quantiles of all times are used.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    if t.size == 0 or t.size != e.size:
        raise ValueError(f"time and event must be non-empty and equally long "
                         f"({t.size} vs {e.size})")
    ref = t[e] if e.any() else t
    inner = np.quantile(ref, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.empty(0)
    return np.concatenate([[-np.inf], inner, [np.inf]])


def discretise(time, edges) -> Tensor:
    """Bin index in ``0 .. len(edges) - 2`` (bin k holds ``edges[k] <= t < edges[k+1]``)."""
    t = torch.as_tensor(np.asarray(time, dtype=np.float64))
    inner = torch.as_tensor(np.asarray(edges, dtype=np.float64)[1:-1])
    return torch.bucketize(t, inner, right=True).to(torch.long)


def survival_nll(logits: Tensor, bin: Tensor, event: Tensor, alpha: float = 0.0) -> Tensor:
    """Discrete-time hazard NLL with censoring (Zadeh & Schmid 2020; MCAT's ``nll_loss``).

    hazards h_k = sigmoid(logits_k), survival S_k = prod_{j<=k} (1 - h_j), S_{-1} = 1.
    Event in bin y: -log S_{y-1} - log h_y. Censored in bin y: -log S_y. ``alpha`` up-weights the
    uncensored term as MCAT's ``alpha_surv`` (0 = plain NLL). Log-space (logsigmoid) instead of
    MCAT's eps-clamped logs: same function, no underflow.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    y = bin.to(torch.long).view(-1, 1)
    c = 1.0 - event.to(logits.dtype).view(-1, 1)  # censorship
    log_h = F.logsigmoid(logits)
    log_1mh = F.logsigmoid(-logits)
    log_s = torch.cumsum(log_1mh, dim=1)
    log_s_pad = torch.cat([torch.zeros_like(log_s[:, :1]), log_s], dim=1)  # S_{-1} = 1
    uncensored = -(1 - c) * (log_s_pad.gather(1, y) + log_h.gather(1, y))
    censored = -c * log_s_pad.gather(1, y + 1)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def survival_risk(logits: Tensor) -> Tensor:
    """Risk = -sum_k S_k (higher = earlier death), [B]."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return -torch.cumprod(1 - torch.sigmoid(logits), dim=1).sum(dim=1)


def _cosine_gram(x: Tensor) -> Tensor:
    """Gram of L2-normalised rows (cosine similarity), over the last two dims."""
    x = F.normalize(x, dim=-1, eps=1e-8)
    return x @ x.transpose(-1, -2)


def consistency_loss(gene_emb: Tensor, vgrid: Tensor) -> Tensor:
    """Gene-guided consistency ``sum((G_gene - G_grid)^2) / B``.

    "Row-normalised Gram" is taken as the cosine Gram (rows L2-normalised, then X X^T): scale
    free, entries in [-1, 1] on both sides so the two matrices are comparable. G_grid is the
    per-offset-group Gram across patients (``(b g) ... -> g b ...``), averaged over groups.
    B = 1 has no pair to compare: 0.
    """
    b = gene_emb.shape[0]
    if b < 2:
        return gene_emb.new_zeros(())
    g_gene = _cosine_gram(gene_emb.float())
    grid = vgrid.float().reshape(b, vgrid.shape[1], -1).transpose(0, 1)  # [G, B, h'w'2]
    g_grid = _cosine_gram(grid).mean(dim=0)
    return ((g_gene - g_grid) ** 2).sum() / b


def consistency_total(out: KSOutput, alpha: float) -> Tensor:
    """alpha * L_cons,t + (1 - alpha) * L_cons,m (decomposed), L_cons (one stream), else 0."""
    pairs = list(zip(out.gene_emb, out.vgrids, strict=False))
    if not out.gene_emb or not out.vgrids:
        return out.logits.new_zeros(())
    if len(pairs) == 1:
        return consistency_loss(*pairs[0])
    return alpha * consistency_loss(*pairs[0]) + (1 - alpha) * consistency_loss(*pairs[1])


__all__ = ["class_weights", "classification_loss", "survival_bin_edges", "discretise",
           "survival_nll", "survival_risk", "consistency_loss", "consistency_total"]
