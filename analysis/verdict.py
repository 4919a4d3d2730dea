"""A verdict that k-fold cross-validation can reach: the Bayesian correlated t-test.

Two arms scored on the same (run, fold) pairs - k folds per run, runs = repeats of the
cross-validation and/or training seeds - are compared by the posterior of the mean difference
d = a − b under the correlated t-test of Benavoli et al. ("Time for a change", JMLR 2017): a
Student t with n − 1 degrees of freedom, location mean(d) and scale² = s² · (1/n + ρ/(1 − ρ)),
where s² is the sample variance of the n = k · runs differences and ρ = 1/k the correlation
that overlapping training sets give (Nadeau & Bengio 2003). The probabilities come from the
maintained ``baycomp`` package (its ``Posterior``; ``two_on_single`` gives the same numbers when
every run is complete, which the tests check).

A region of practical equivalence (ROPE, ± ``rope``) splits the posterior into three:
P(better) = P(d > rope), P(equivalent) = P(|d| ≤ rope), P(worse) = P(d < −rope). The verdict
word is the one whose probability reaches ``threshold`` (0.95), else "undecided"; then the
posterior says what would decide it. More repeats shrink 1/n but not ρ/(1 − ρ) = 1/(k − 1): the
scale never falls below s / √(k − 1), so some differences no number of repeats can decide
(only more folds, more patients or a larger effect can).

The frequentist line beside it is the corrected resampled t-test (Nadeau & Bengio 2003): the
same variance inflation (1/n + n_test/n_train, with n_test/n_train = 1/(k − 1)), two-sided p from
the t distribution with n − 1 degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from baycomp.single import Posterior
from scipy import stats as sps

#: The region of practical equivalence per metric: differences within ± this are "the same" in
#: practice. 0.01 of AUC / C-index / accuracy / balanced accuracy / F1 is about the spread that
#: re-running one configuration with another seed gives on a cohort of a few hundred patients.
DEFAULT_ROPE: dict[str, float] = {"auc": 0.01, "cindex": 0.01, "accuracy": 0.01,
                                  "balanced_accuracy": 0.01, "f1": 0.01}
FALLBACK_ROPE = 0.01
THRESHOLD = 0.95
#: The most extra repeats "what would decide it" looks at before calling it out of reach.
MAX_EXTRA_REPEATS = 200

BETTER, WORSE, EQUIVALENT, UNDECIDED = "better", "worse", "equivalent", "undecided"
WORDS = (BETTER, WORSE, EQUIVALENT, UNDECIDED)


def default_rope(metric: str) -> float:
    """The ROPE of ``metric`` (``DEFAULT_ROPE``; 0.01 for a metric not listed)."""
    return DEFAULT_ROPE.get(metric, FALLBACK_ROPE)


def prob_text(p: float) -> str:
    """A probability for a reader: 0.62, 0.995, "> 0.999", "< 0.001", "–" when undefined."""
    if not math.isfinite(p):
        return "–"
    if p > 0.999:
        return "> 0.999"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.3f}" if p > 0.99 or p < 0.01 else f"{p:.2f}"


@dataclass(frozen=True)
class Verdict:
    """The correlated t-test of a − b on paired (run, fold) scores (see the module doc)."""

    p_better: float  # P(mean(a - b) > rope)
    p_equivalent: float  # P(|mean(a - b)| <= rope)
    p_worse: float  # P(mean(a - b) < -rope)
    word: str  # "better" | "worse" | "equivalent" | "undecided"  (a relative to b)
    mean_diff: float
    rope: float
    n: int  # paired differences used
    folds: int  # k, folds per run (the correlation is 1/k)
    runs: float  # n / k: repeats × seeds (fractional when some pairs are missing)
    sd_diff: float = math.nan  # sample sd of the differences (ddof = 1)
    scale: float = math.nan  # the posterior's scale: sd_diff · √(1/n + 1/(k − 1))
    ci_low: float = math.nan  # 95% credible interval of the mean difference
    ci_high: float = math.nan
    t_stat: float = math.nan  # corrected resampled t-test (Nadeau & Bengio): mean / scale
    p_corrected: float = math.nan  # its two-sided p
    threshold: float = THRESHOLD
    extra_repeats: int | None = None  # runs of k folds more that would decide it (None: none)
    decide: str = ""  # what would decide it, in words ("" when decided)

    @property
    def decided(self) -> bool:
        return self.word != UNDECIDED

    def probabilities(self, a: str = "a", b: str = "b") -> str:
        """``P(a better) 0.62, P(equivalent within ±0.01) 0.30, P(b better) 0.08``."""
        return (f"P({a} better) {prob_text(self.p_better)}, P(equivalent within "
                f"±{self.rope:g}) {prob_text(self.p_equivalent)}, P({b} better) "
                f"{prob_text(self.p_worse)}")

    def phrase(self, a: str, b: str) -> str:
        """The verdict alone: ``a is better than b`` / ``undecided between a and b`` ..."""
        if self.word == BETTER:
            return f"{a} is better than {b}"
        if self.word == WORSE:
            return f"{a} is worse than {b}"
        if self.word == EQUIVALENT:
            return f"{a} and {b} are equivalent within ±{self.rope:g}"
        return f"undecided between {a} and {b}"

    def sentence(self, a: str, b: str) -> str:
        """One sentence for a report: the verdict, the three probabilities, the design and,
        when undecided, what would decide it."""
        if self.n < 2 or not math.isfinite(self.p_better):
            return (f"{a} vs {b}: no verdict ({self.n} paired result"
                    f"{'' if self.n == 1 else 's'}; the test needs at least 2).")
        diff = f"{self.mean_diff:+.3g}"
        ci = (f", 95% credible interval {self.ci_low:+.3g} to {self.ci_high:+.3g}"
              if math.isfinite(self.ci_low) else "")
        design = (f"{self.n} pairs = {self.folds} folds × {_runs_text(self.runs)} run"
                  f"{'' if self.runs == 1 else 's'}")
        text = (f"{self.phrase(a, b)} (P ≥ {self.threshold:g} needed): "
                f"{self.probabilities(a, b)}; mean difference {a} − {b} {diff}{ci} "
                f"({design}; Bayesian correlated t-test, ρ = 1/{self.folds}).")
        if self.decide:
            text += f" {self.decide}"
        return text


def _runs_text(runs: float) -> str:
    return f"{runs:g}" if float(runs).is_integer() else f"{runs:.1f}"


def _posterior_probs(mean: float, var: float, df: float, rope: float) -> tuple[float, float,
                                                                                   float]:
    """(P(d > rope), P(|d| ≤ rope), P(d < −rope)) from baycomp's posterior. A zero variance
    (every difference equal) is a point mass at the mean; rope 0 leaves no equivalence."""
    if var == 0:  # baycomp's own convention for rope > 0, spelt out for rope = 0 as well
        better, worse = float(mean > rope), float(mean < -rope)
        return better, 1.0 - better - worse, worse
    post = Posterior(mean, var, df, rope)
    probs = post.probs()
    if rope == 0:
        worse, better = probs
        return float(better), 0.0, float(worse)
    worse, eq, better = probs
    return float(better), float(eq), float(worse)


def _word(p_better: float, p_eq: float, p_worse: float, threshold: float) -> str:
    if p_better >= threshold:
        return BETTER
    if p_worse >= threshold:
        return WORSE
    if p_eq >= threshold:
        return EQUIVALENT
    return UNDECIDED


def _what_would_decide(mean: float, sd: float, n: int, k: int, rope: float,
                       threshold: float) -> tuple[int | None, str]:
    """Extra runs of k folds after which, if the mean and sd of the differences stayed as
    observed, one probability would reach ``threshold``; None when none would (the floor)."""
    if not (math.isfinite(sd) and sd > 0):
        return None, ""
    floor = sd / math.sqrt(k - 1)  # the scale with infinitely many repeats
    limit = max(sps.norm.sf((rope - mean) / floor), sps.norm.cdf((-rope - mean) / floor),
                sps.norm.cdf((rope - mean) / floor) - sps.norm.cdf((-rope - mean) / floor))
    if limit < threshold:
        return None, (f"No number of repeats would decide it: with {k} folds the correlation "
                      f"between folds (ρ/(1 − ρ) = 1/{k - 1}) keeps the posterior sd at or above "
                      f"sd/√{k - 1} = {floor:.2g}, where the best probability reaches only "
                      f"{limit:.2f}; only more patients (or folds), or a larger difference, "
                      f"could.")
    m = np.arange(1, MAX_EXTRA_REPEATS + 1)
    n2 = n + m * k
    scale = sd * np.sqrt(1.0 / n2 + 1.0 / (k - 1))
    df = n2 - 1
    better = sps.t.sf(rope, df, mean, scale)
    worse = sps.t.cdf(-rope, df, mean, scale)
    best = np.maximum.reduce([better, worse, 1.0 - better - worse])
    hit = np.flatnonzero(best >= threshold)
    if hit.size == 0:
        return None, (f"More than {MAX_EXTRA_REPEATS} further runs of the {k} folds would be "
                      f"needed to decide it (if the differences stayed as observed).")
    extra = int(m[hit[0]])
    which = ("better" if better[hit[0]] >= threshold else "worse" if worse[hit[0]] >= threshold
             else "equivalent")
    return extra, (f"About {extra} more run{'' if extra == 1 else 's'} of the {k} folds (repeats "
                   f"or seeds) would decide it ({which}), if the differences stayed as observed.")


def correlated_verdict(a: np.ndarray | list[float], b: np.ndarray | list[float], *, folds: int,
                       rope: float, threshold: float = THRESHOLD) -> Verdict:
    """The correlated t-test verdict of a − b; a, b: scores on identical (run, fold) pairs,
    ``folds`` = k folds per run (ρ = 1/k). Fewer than 2 pairs: NaN probabilities, undecided."""
    if folds < 2:
        raise ValueError(f"folds must be at least 2 (got {folds})")
    if rope < 0:
        raise ValueError(f"rope must be ≥ 0 (got {rope})")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"a and b must be paired 1-d scores (shapes {x.shape} and {y.shape})")
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    n = int(d.size)
    runs = n / folds
    if n < 2:
        nan = math.nan
        return Verdict(nan, nan, nan, UNDECIDED, float(d.mean()) if n else nan, rope, n, folds,
                       runs, threshold=threshold,
                       decide="At least 2 paired results are needed for a verdict.")
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd <= 1e-15 * max(1.0, abs(mean)):  # equal differences (ties): no spread at all
        sd = 0.0
    var = sd ** 2 * (1.0 / n + 1.0 / (folds - 1))
    df = n - 1
    p_better, p_eq, p_worse = _posterior_probs(mean, var, df, rope)
    word = _word(p_better, p_eq, p_worse, threshold)
    scale = math.sqrt(var)
    if var > 0:
        lo, hi = (float(v) for v in sps.t.interval(0.95, df, mean, scale))
        t_stat = mean / scale
        p_corr = float(2 * sps.t.sf(abs(t_stat), df))
    else:
        lo = hi = mean
        t_stat = math.copysign(math.inf, mean) if mean else math.nan
        p_corr = 0.0 if mean else 1.0
    extra, decide = (0, "") if word != UNDECIDED else _what_would_decide(
        mean, sd, n, folds, rope, threshold)
    return Verdict(p_better, p_eq, p_worse, word, mean, rope, n, folds, runs, sd_diff=sd,
                   scale=scale, ci_low=lo, ci_high=hi, t_stat=t_stat, p_corrected=p_corr,
                   threshold=threshold, extra_repeats=extra, decide=decide)


__all__ = ["Verdict", "correlated_verdict", "DEFAULT_ROPE", "default_rope", "THRESHOLD",
           "BETTER", "WORSE", "EQUIVALENT", "UNDECIDED", "WORDS", "prob_text"]
