"""Validation metrics: macro one-vs-rest AUC, accuracy, balanced accuracy, macro F1, C-index."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from lifelines.utils import concordance_index
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score
from torch import Tensor


def macro_auc(label, prob) -> float:
    """Macro one-vs-rest ROC AUC over the classes present in ``label``.

    Equals ``roc_auc_score(label, prob, multi_class="ovr", average="macro")`` when every class is
    present (sklearn's macro OvR is the mean of per-class binary AUCs). A class missing from a
    validation fold has no AUC, so it is left out instead of raising; < 2 classes present -> nan.
    """
    y = np.asarray(label).reshape(-1)
    p = np.asarray(prob, dtype=np.float64)
    present = np.unique(y)
    if present.size < 2:
        return float("nan")
    return float(np.mean([roc_auc_score(y == c, p[:, int(c)]) for c in present]))


def classification_metrics(label, prob) -> dict[str, float]:
    """``{"auc", "accuracy", "balanced_accuracy", "f1"}`` from labels [N], probabilities [N, C]."""
    y = np.asarray(label).reshape(-1)
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"prob must be [N, C] with N = {y.shape[0]}, got {p.shape}")
    pred = p.argmax(axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true" on small folds
        return {
            "auc": macro_auc(y, p),
            "accuracy": float(accuracy_score(y, pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        }


def concordance(time, event, risk) -> float:
    """Harrell's C-index (lifelines); higher risk = earlier death. nan without a comparable pair."""
    t = np.asarray(time, dtype=np.float64).reshape(-1)
    r = np.asarray(risk, dtype=np.float64).reshape(-1)
    e = np.asarray(event).reshape(-1).astype(bool)
    try:
        return float(concordance_index(t, -r, e))
    except ZeroDivisionError:
        return float("nan")


def batch_concordance(time: Tensor, event: Tensor, risk: Tensor) -> float | None:
    """C-index of a batch in torch (vectorised over pairs), lifelines' pair rules.

    Pair (i, j) is comparable when i died and ``t_i < t_j``, or ``t_i == t_j`` and j is censored;
    concordant when ``risk_i > risk_j``, risk ties count 1/2. None when no pair is comparable.
    """
    t = time.reshape(-1, 1).to(torch.float64)
    e = event.reshape(-1).to(torch.bool)
    r = risk.detach().reshape(-1, 1).to(torch.float64)
    comparable = e[:, None] & ((t < t.T) | ((t == t.T) & ~e[None, :]))
    n_pairs = comparable.sum()
    if int(n_pairs) == 0:
        return None
    score = (r > r.T).to(torch.float64) + 0.5 * (r == r.T).to(torch.float64)
    return float((score * comparable).sum() / n_pairs)


__all__ = ["macro_auc", "classification_metrics", "concordance", "batch_concordance"]
