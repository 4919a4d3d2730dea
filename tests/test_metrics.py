"""Metrics agree with scikit-learn and lifelines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from lifelines.utils import concordance_index
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

from ksmodel.metrics import batch_concordance, classification_metrics, concordance, macro_auc


def _probs(rng, n, c):
    p = rng.random((n, c)) + 0.2 * np.eye(c)[rng.integers(0, c, n)]
    return p / p.sum(1, keepdims=True)


def test_classification_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    y[:4] = [0, 1, 2, 3]
    p = _probs(rng, 60, 4)
    m = classification_metrics(y, p)
    assert m["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(1)))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    assert m["f1"] == pytest.approx(f1_score(y, p.argmax(1), average="macro"))


def test_auc_with_a_class_missing_uses_present_classes():
    rng = np.random.default_rng(1)
    y = rng.choice([0, 1, 3], 40)
    p = _probs(rng, 40, 4)
    want = np.mean([roc_auc_score(y == c, p[:, c]) for c in (0, 1, 3)])
    assert macro_auc(y, p) == pytest.approx(want)
    assert math.isnan(macro_auc(np.zeros(5, int), _probs(rng, 5, 4)))


def test_binary_auc_equals_sklearn_binary():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 30)
    p = _probs(rng, 30, 2)
    assert macro_auc(y, p) == pytest.approx(roc_auc_score(y, p[:, 1]))


def _survival(rng, n):
    time = rng.integers(1, 12, n).astype(float)  # integer days -> many ties
    event = rng.integers(0, 2, n)
    risk = np.round(rng.normal(size=n), 1)  # ties in risk too
    return time, event, risk


@pytest.mark.parametrize("seed", range(5))
def test_concordance_equals_lifelines_with_ties_and_censoring(seed):
    time, event, risk = _survival(np.random.default_rng(seed), 50)
    want = concordance_index(time, -risk, event)
    assert concordance(time, event, risk) == pytest.approx(want)
    got = batch_concordance(torch.tensor(time), torch.tensor(event), torch.tensor(risk))
    assert got == pytest.approx(want)


def test_concordance_direction_and_no_pairs():
    time, event = np.array([1.0, 2, 3]), np.array([1, 1, 1])
    assert concordance(time, event, np.array([3.0, 2, 1])) == 1.0  # early death = high risk
    assert concordance(time, event, np.array([1.0, 2, 3])) == 0.0
    assert math.isnan(concordance(time, np.zeros(3), np.array([1.0, 2, 3])))
    assert batch_concordance(torch.tensor(time), torch.zeros(3), torch.tensor([1.0, 2, 3])) is None
    assert batch_concordance(torch.tensor([1.0]), torch.tensor([1]), torch.tensor([0.3])) is None
    # two deaths at the same time are not comparable
    assert batch_concordance(torch.tensor([2.0, 2.0]), torch.tensor([1, 1]),
                             torch.tensor([0.0, 1.0])) is None
