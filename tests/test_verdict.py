"""analysis/verdict.py: the Bayesian correlated t-test against baycomp and by hand, and the words
5 folds can reach."""

from __future__ import annotations

import math

import baycomp
import numpy as np
import pytest
from scipy import stats as sps

from analysis.verdict import (
    DEFAULT_ROPE,
    EQUIVALENT,
    UNDECIDED,
    correlated_verdict,
    default_rope,
)


@pytest.mark.parametrize("runs", [1, 3])
@pytest.mark.parametrize("rope", [0.0, 0.01, 0.03])
def test_probabilities_equal_baycomp_two_on_single(runs, rope):
    rng = np.random.default_rng(7 + runs)
    a = 0.75 + 0.03 * rng.standard_normal(5 * runs)
    b = a - 0.012 + 0.02 * rng.standard_normal(5 * runs)
    v = correlated_verdict(a, b, folds=5, rope=rope)
    probs = baycomp.two_on_single(a, b, rope=rope, runs=runs)
    if rope == 0:
        p_a, p_b = probs
        assert v.p_equivalent == 0
    else:
        p_a, p_eq, p_b = probs
        assert v.p_equivalent == pytest.approx(p_eq, abs=1e-6)
    assert v.p_better == pytest.approx(p_a, abs=1e-6)
    assert v.p_worse == pytest.approx(p_b, abs=1e-6)
    assert v.n == 5 * runs and v.runs == runs and v.folds == 5


def test_hand_computed_case():
    d = np.array([0.10, 0.12, 0.08, 0.11, 0.09])
    b = np.full(5, 0.7)
    v = correlated_verdict(b + d, b, folds=5, rope=0.01)
    # s² = 0.001 / 4; scale² = s² (1/5 + 1/(5 − 1)); t with 4 df
    scale = math.sqrt(0.001 / 4 * (1 / 5 + 1 / 4))
    assert v.scale == pytest.approx(scale, rel=1e-9)
    assert v.p_better == pytest.approx(sps.t.sf((0.01 - 0.10) / scale, 4), abs=1e-9)
    assert v.p_worse == pytest.approx(sps.t.cdf((-0.01 - 0.10) / scale, 4), abs=1e-9)
    # the frequentist line: corrected resampled t-test, same variance inflation
    assert v.t_stat == pytest.approx(0.10 / scale)
    assert v.p_corrected == pytest.approx(2 * sps.t.sf(0.10 / scale, 4))
    lo, hi = sps.t.interval(0.95, 4, 0.10, scale)
    assert (v.ci_low, v.ci_high) == pytest.approx((lo, hi))


def test_five_of_five_win_and_loss_by_a_wide_margin():
    """The case issue 21 found: +0.11 AUC on 5 of 5 folds; Wilcoxon cannot go below 0.0625."""
    model = np.array([0.86, 0.84, 0.88, 0.83, 0.87])
    base = np.array([0.74, 0.75, 0.76, 0.71, 0.77])
    win = correlated_verdict(model, base, folds=5, rope=0.01)
    assert win.word == "better" and win.p_better > 0.99 and win.decide == ""
    assert win.sentence("model", "logreg").startswith("model is better than logreg")
    loss = correlated_verdict(base, model, folds=5, rope=0.01)
    assert loss.word == "worse" and loss.p_worse > 0.99
    assert "worse than" in loss.sentence("logreg", "model")


def test_mixed_small_difference_is_undecided_and_says_what_would_decide_it():
    a = np.array([0.80, 0.78, 0.83, 0.79, 0.81])
    b = a - np.array([0.02, -0.03, 0.025, -0.015, 0.03])  # mean +0.012, sd 0.027
    v = correlated_verdict(a, b, folds=5, rope=0.01)
    assert v.word == UNDECIDED
    assert max(v.p_better, v.p_equivalent, v.p_worse) < 0.95
    # sd/√(k−1) ≈ 0.013: P(d > 0.01) can never reach 0.95 however many repeats are added
    assert v.extra_repeats is None and "No number of repeats would decide it" in v.decide
    assert "ρ/(1 − ρ) = 1/4" in v.decide
    assert "undecided between a and b" in v.sentence("a", "b")
    # a clear but noisy effect: more repeats would decide it
    rng = np.random.default_rng(3)
    b2 = 0.75 + 0.01 * rng.standard_normal(5)
    a2 = b2 + 0.04 + np.array([0.03, -0.02, 0.035, -0.025, 0.0])
    v2 = correlated_verdict(a2, b2, folds=5, rope=0.01)
    assert v2.word == UNDECIDED and v2.extra_repeats and v2.extra_repeats > 0
    more = v2.extra_repeats
    # check the claim: with that many more runs of the same spread, the posterior decides
    n2 = 5 + 5 * more
    scale = v2.sd_diff * math.sqrt(1 / n2 + 1 / 4)
    assert sps.t.sf(0.01, n2 - 1, v2.mean_diff, scale) >= 0.95
    n1 = n2 - 5
    assert sps.t.sf(0.01, n1 - 1, v2.mean_diff, v2.sd_diff * math.sqrt(1 / n1 + 1 / 4)) < 0.95


def test_ties_and_degenerate_inputs_do_not_crash():
    a = np.full(5, 0.8)
    tie = correlated_verdict(a, a, folds=5, rope=0.01)
    assert (tie.p_better, tie.p_equivalent, tie.p_worse) == (0.0, 1.0, 0.0)
    assert tie.word == EQUIVALENT
    shifted = correlated_verdict(a + 0.05, a, folds=5, rope=0.01)  # every fold exactly +0.05
    assert shifted.word == "better" and shifted.p_better == 1.0
    assert correlated_verdict(a, a, folds=5, rope=0.0).word == EQUIVALENT
    one = correlated_verdict([0.8], [0.7], folds=5, rope=0.01)
    assert one.word == UNDECIDED and math.isnan(one.p_better) and "no verdict" in one.sentence(
        "a", "b")
    nan = correlated_verdict([0.8, np.nan, 0.7], [0.7, 0.6, 0.65], folds=3, rope=0.01)
    assert nan.n == 2
    with pytest.raises(ValueError, match="folds"):
        correlated_verdict(a, a, folds=1, rope=0.01)


def test_default_rope_per_metric():
    for m in ("auc", "cindex", "accuracy", "balanced_accuracy", "f1"):
        assert DEFAULT_ROPE[m] == 0.01 == default_rope(m)
