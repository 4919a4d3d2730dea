"""Paired statistics for method comparisons (pure functions on numpy / pandas).

Every trial of a study sees the same patient-level folds, so methods are compared on identical
(seed, fold) keys: difference = candidate − baseline (all metrics are maximised, so > 0 means the
candidate did better). Keys present for one method and not the other are reported, never silently
dropped.

The verdict of each pair is the Bayesian correlated t-test (analysis/verdict.py: P(better),
P(equivalent within ±rope), P(worse)), with the corrected resampled t-test as its frequentist
line; the Wilcoxon signed-rank test is kept only where it can reach p < 0.05 (at least 6 non-zero
pairs) and a bootstrap interval only over at least 6 pairs: with the 5 folds most cohorts have,
neither can say anything, and the report says so instead of printing them.

Budgets are never mixed: every summary and test here uses only trials that ran their whole budget
(status COMPLETED: all epochs, or until their own early-stopping patience). Trials the scheduler
(ASHA) stopped early were judged after fewer epochs; they are counted, listed and drawn apart
(figures.py), never averaged with the others.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis.load import is_param_column
from analysis.verdict import Verdict, correlated_verdict, default_rope
from study.record import Status

KEY = ["seed", "fold"]
#: Trial states that reached the study's full budget: the only ones summarised and compared.
FULL_BUDGET_STATUSES = (Status.COMPLETED,)
#: Trial states with validation metrics (STOPPED_EARLY = cut short by the ASHA scheduler; its
#: values come from fewer epochs, so it only appears where it is marked as such).
USABLE_STATUSES = Status.USABLE
#: Below this many non-zero paired differences the Wilcoxon test cannot reach p < 0.05
#: (two-sided exact test: smallest attainable p = 2 / 2**n).
WILCOXON_MIN_SIGNIFICANT = 6
#: No bootstrap (or t) interval over fewer pairs than this: it would be the pairs themselves.
MIN_PAIRS_INTERVAL = 6


#: folds-frame columns that are not metric values
FOLD_ID_COLUMNS = {"run_id", "trial_id", "task", "metric", "method", "arm", "seed", "status",
                   "fold", "variant", "setting", "role", "outer_fold", "seedless"}


def metric_columns(folds: pd.DataFrame) -> list[str]:
    """The per-fold metric columns of a folds frame (auc, f1, cindex, ...)."""
    return [c for c in folds.columns if c not in FOLD_ID_COLUMNS and not is_param_column(c)
            and pd.api.types.is_numeric_dtype(folds[c])]


def usable(folds: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows with a finite ``metric`` value from runs that reached the full budget (COMPLETED)."""
    if metric not in folds:
        return folds.iloc[0:0]
    ok = folds["status"].isin(FULL_BUDGET_STATUSES) & np.isfinite(folds[metric].astype(float))
    return folds[ok]


def full_budget(trials: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """Latest attempts that reached the full budget and have a finite final value."""
    t = trials if task is None else trials[trials["task"] == task]
    ok = (t["status"].isin(FULL_BUDGET_STATUSES) & ~t["superseded"].astype(bool)
          & np.isfinite(t["final"].astype(float)))
    return t[ok]


def stopped_early(trials: pd.DataFrame, task: str | None = None) -> pd.DataFrame:
    """Latest attempts stopped by the scheduler before the full budget (with their last value)."""
    t = trials if task is None else trials[trials["task"] == task]
    return t[(t["status"] == Status.STOPPED_EARLY) & ~t["superseded"].astype(bool)]


def describe_methods(folds: pd.DataFrame, trials: pd.DataFrame, metric: str,
                     task: str) -> pd.DataFrame:
    """Per arm: trials (by their latest attempt: completed / stopped early / failed or
    unfinished) and mean, sd (ddof=1), median, min, max of ``metric`` over the (seed, fold)
    values of completed trials only (stopped-early trials are counted, not averaged)."""
    t = trials[(trials["task"] == task) & ~trials["superseded"]]
    f = usable(folds[folds["task"] == task], metric)
    counts = t.groupby("arm")["status"].agg(
        trials="size",
        completed=lambda s: int((s == Status.COMPLETED).sum()),
        stopped_early=lambda s: int((s == Status.STOPPED_EARLY).sum()),
        failed=lambda s: int((~s.isin(USABLE_STATUSES)).sum()))
    values = f.groupby("arm")[metric].agg(
        n_values="size", mean="mean", sd=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan,
        median="median", min="min", max="max")
    out = counts.join(values, how="left")
    out["n_values"] = out["n_values"].fillna(0).astype(int)
    out = out.reset_index()
    out.insert(0, "metric", metric)
    out.insert(0, "task", task)
    methods = t.drop_duplicates("arm").set_index("arm")["method"]
    out.insert(3, "method", out["arm"].map(methods))
    return out


def holm(p: np.ndarray | list[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values; NaNs are left out of the family and stay NaN."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def wilcoxon_test(diff: np.ndarray) -> tuple[float, float, str]:
    """Two-sided Wilcoxon signed-rank test of the paired differences (scipy defaults: zero
    differences dropped). Returns (statistic, p, note); NaN and a note when it cannot run."""
    diff = np.asarray(diff, dtype=float)
    nonzero = int(np.count_nonzero(diff))
    if diff.size == 0:
        return np.nan, np.nan, "no complete pairs"
    if nonzero == 0:
        return np.nan, np.nan, "all paired differences are zero (the methods tie on every pair)"
    if nonzero < WILCOXON_MIN_SIGNIFICANT:
        return np.nan, np.nan, (
            f"Wilcoxon not run: with {nonzero} non-zero pair{'' if nonzero == 1 else 's'} its "
            f"smallest attainable p is 2/2^{nonzero} = {2 / 2 ** nonzero:.3g}, so it could never "
            f"reach p < 0.05")
    res = sps.wilcoxon(diff)
    return float(res.statistic), float(res.pvalue), ""


def bootstrap_mean_ci(diff: np.ndarray, *, n_boot: int = 10_000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean difference.

    Exactly: ``rng = np.random.default_rng(seed)``; ``idx = rng.integers(0, n, size=(n_boot, n))``;
    ``means = diff[idx].mean(axis=1)``; CI = ``np.quantile(means, [(1-level)/2, (1+level)/2])``.
    Pairs are in (seed, fold) order, so the result is reproducible from the CSV's inputs.
    """
    diff = np.asarray(diff, dtype=float)
    n = diff.size
    if n < MIN_PAIRS_INTERVAL:  # a resample of < 6 pairs is little more than the pairs
        return np.nan, np.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = diff[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class Paired:
    """Values of two arms on their common (seed, fold) keys, in (seed, fold) order."""

    keys: pd.DataFrame  # seed, fold
    candidate: np.ndarray
    baseline: np.ndarray
    only_candidate: pd.DataFrame  # keys with a candidate value and no baseline value
    only_baseline: pd.DataFrame

    @property
    def diff(self) -> np.ndarray:
        return self.candidate - self.baseline


def arm_values(folds: pd.DataFrame, metric: str, arm: str) -> pd.Series:
    """``metric`` of one arm indexed by (seed, fold); raises if a key has several runs."""
    f = usable(folds[folds["arm"] == arm], metric)
    s = f.set_index(KEY)[metric].astype(float).sort_index()
    if s.index.has_duplicates:
        raise ValueError(f"arm '{arm}' has several runs for the same (seed, fold)")
    return s


def pair(folds: pd.DataFrame, metric: str, candidate: str, baseline: str) -> Paired:
    a = arm_values(folds, metric, candidate)
    b = arm_values(folds, metric, baseline)
    common = a.index.intersection(b.index).sort_values()
    keys = common.to_frame(index=False)
    return Paired(keys=keys, candidate=a.loc[common].to_numpy(), baseline=b.loc[common].to_numpy(),
                  only_candidate=a.index.difference(b.index).to_frame(index=False),
                  only_baseline=b.index.difference(a.index).to_frame(index=False))


def duplicated_arms(folds: pd.DataFrame, metric: str) -> list[str]:
    """Arms with more than one usable run per (seed, fold): a search, not a paired design."""
    f = usable(folds, metric)
    dup = f.duplicated(["arm", *KEY], keep=False)
    return sorted(f.loc[dup, "arm"].unique())


def missing_keys(folds: pd.DataFrame, trials: pd.DataFrame, metric: str,
                 task: str) -> pd.DataFrame:
    """Every (arm, seed, fold) of the full grid (all arms × all seeds × all folds seen in the task)
    without a full-budget value, with the reason (no run / failed / stopped early / not logged)."""
    f = folds[folds["task"] == task]
    t = trials[trials["task"] == task]
    cols = ["task", "metric", "arm", "seed", "fold", "reason", "run_id"]
    if f.empty:
        return pd.DataFrame(columns=cols)
    grid = pd.MultiIndex.from_product(
        [sorted(t["arm"].unique()), sorted(f["seed"].unique()), sorted(f["fold"].unique())],
        names=["arm", *KEY]).to_frame(index=False)
    good = usable(f, metric)[["arm", *KEY]].drop_duplicates()
    merged = grid.merge(good, how="left", indicator=True)
    miss = merged[merged["_merge"] == "left_only"].drop(columns="_merge")
    # Why: look at the runs of that (arm, seed).
    runs = t.loc[~t["superseded"], ["arm", "seed", "run_id", "status", "error"]]
    rows = []
    for rec in miss.itertuples(index=False):
        r = runs[(runs["arm"] == rec.arm) & (runs["seed"] == rec.seed)]
        run_id = ",".join(r["run_id"])
        status = set(r["status"])
        if r.empty:
            reason = "no run logged"
        elif status <= {Status.FAILED}:
            err = next((e for e in r["error"] if isinstance(e, str) and e), "")
            reason = "run failed" + (f": {err.strip().splitlines()[-1][:200]}" if err else "")
        elif status <= {Status.RUNNING}:
            reason = "run unfinished (status RUNNING)"
        elif status <= {Status.STOPPED_EARLY}:
            reason = "stopped early by the scheduler (did not reach the full budget; left out)"
        elif not status & set(USABLE_STATUSES):
            reason = "run " + "/".join(sorted(status)).lower()
        else:
            reason = f"{metric} of fold {rec.fold} not logged"
        rows.append((task, metric, rec.arm, int(rec.seed), int(rec.fold), reason, run_id))
    return pd.DataFrame(rows, columns=cols)


VERDICT_COLUMNS = [
    "verdict", "p_better", "p_equivalent", "p_worse", "rope", "folds", "runs", "design",
    "cred_low", "cred_high", "t_corrected", "p_corrected", "decide"]
COMPARISON_COLUMNS = [
    "task", "metric", "method", "baseline", "n_pairs", "mean_method", "mean_baseline",
    "mean_diff", *VERDICT_COLUMNS, "median_diff", "sd_diff", "ci_low", "ci_high",
    "wilcoxon_stat", "wilcoxon_p", "holm_p", "win_rate", "n_wins", "n_ties", "n_losses",
    "n_missing_pairs", "note"]


@dataclass(frozen=True)
class Design:
    """What the correlated test needs beyond the pairs: k folds per run (ρ = 1/k), r repeats of
    the cross-validation, the ROPE, and where each came from (analysis/recorded.py reads them
    from the study)."""

    folds: int
    rope: float
    repeats: int = 1
    source: str = ""

    def runs_text(self, seeds: int) -> str:
        """Which dimension the test's runs are: seeds, repeats or both."""
        s = f"{seeds} seed{'' if seeds == 1 else 's'}"
        r = f"{self.repeats} repeats of the {self.folds} folds"
        if self.repeats > 1 and seeds > 1:
            return f"runs = {s} × {r}"
        if self.repeats > 1:
            return f"runs = {r}"
        if seeds > 1:
            return (f"runs = {s} (one split into {self.folds} folds: the seeds are the repeat "
                    f"dimension)")
        return f"one run of {self.folds} folds"


def verdict_columns(p: Paired, design: Design) -> tuple[Verdict, dict[str, object]]:
    """The correlated t-test of a pair and its columns (VERDICT_COLUMNS)."""
    v = correlated_verdict(p.candidate, p.baseline, folds=design.folds, rope=design.rope)
    seeds = int(p.keys["seed"].nunique()) if len(p.keys) else 0
    return v, {"verdict": v.word, "p_better": v.p_better, "p_equivalent": v.p_equivalent,
               "p_worse": v.p_worse, "rope": v.rope, "folds": v.folds, "runs": v.runs,
               "design": design.runs_text(seeds), "cred_low": v.ci_low, "cred_high": v.ci_high,
               "t_corrected": v.t_stat, "p_corrected": v.p_corrected, "decide": v.decide}


def _default_design(f: pd.DataFrame, metric: str) -> Design:
    return Design(max(2, int(f["fold"].nunique()) if len(f) else 2), default_rope(metric))


@dataclass
class Comparison:
    table: pd.DataFrame  # COMPARISON_COLUMNS, one row per (task, metric, baseline)
    pairs: dict[tuple[str, str, str], Paired] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def compare_arms(folds: pd.DataFrame, metric: str, task: str, *, candidate: str = "cgcoord",
                 baselines: list[str] | None = None, n_boot: int = 10_000,
                 seed: int = 0, design: Design | None = None) -> Comparison:
    """Candidate vs each baseline on identical (seed, fold) keys: the correlated t-test's verdict
    (``design``: folds per run and ROPE; default: the fold ids seen and the metric's ROPE), the
    corrected resampled t-test, and Wilcoxon with Holm over this (task, metric) family where it
    can reach significance. ``baselines`` are arm labels or method names (default: every
    other arm)."""
    f = folds[folds["task"] == task]
    design = design or _default_design(f, metric)
    arms = sorted(f["arm"].unique())
    notes: list[str] = []
    empty = Comparison(pd.DataFrame(columns=COMPARISON_COLUMNS), notes=notes)
    if len(arms) < 2:
        notes.append(f"{task}: only one method ({', '.join(arms) or 'none'}): no paired comparison")
        return empty
    if candidate not in arms:
        notes.append(f"{task}: method '{candidate}' not in the study (methods: {', '.join(arms)}): "
                     f"no paired comparison")
        return empty
    if baselines:
        chosen: list[str] = []
        for name in baselines:
            match = [a for a in arms if a == name] or [a for a in arms if a.split(" ")[0] == name
                                                       and a != candidate]
            if not match:
                notes.append(f"{task}: baseline '{name}' not in the study (methods: "
                             f"{', '.join(arms)})")
            chosen += [m for m in match if m not in chosen]
    else:
        chosen = [a for a in arms if a != candidate]
    dups = duplicated_arms(f, metric)
    if candidate in dups:
        notes.append(f"{task}: '{candidate}' has several runs per (seed, fold) (a search study, "
                     f"not an ablation grid): no paired comparison")
        return empty
    rows, pairs = [], {}
    for base in chosen:
        if base in dups:
            notes.append(f"{task}: '{base}' has several runs per (seed, fold): not paired")
            continue
        p = pair(f, metric, candidate, base)
        d = p.diff
        stat, pval, note = wilcoxon_test(d)
        lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed)
        n = d.size
        _, verdict = verdict_columns(p, design)
        rows.append({
            "task": task, "metric": metric, "method": candidate, "baseline": base, "n_pairs": n,
            "mean_method": p.candidate.mean() if n else np.nan,
            "mean_baseline": p.baseline.mean() if n else np.nan,
            "mean_diff": d.mean() if n else np.nan, **verdict,
            "median_diff": float(np.median(d)) if n else np.nan,
            "sd_diff": d.std(ddof=1) if n > 1 else np.nan,
            "ci_low": lo, "ci_high": hi, "wilcoxon_stat": stat, "wilcoxon_p": pval,
            "win_rate": float((d > 0).mean()) if n else np.nan,
            "n_wins": int((d > 0).sum()), "n_ties": int((d == 0).sum()),
            "n_losses": int((d < 0).sum()),
            "n_missing_pairs": len(p.only_candidate) + len(p.only_baseline), "note": note})
        pairs[(task, metric, base)] = p
    table = pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
    table["holm_p"] = holm(table["wilcoxon_p"].to_numpy(dtype=float))
    return Comparison(table, pairs, notes)


def failed_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Runs that failed or never finished (FAILED, INTERRUPTED, RUNNING, ...); ``retried`` marks
    earlier attempts of a trial that was run again."""
    bad = trials[~trials["status"].isin(USABLE_STATUSES)]
    out = bad[["task", "arm", "seed", "trial_id", "run_id", "status", "error", "superseded"]]
    return out.rename(columns={"superseded": "retried"}).reset_index(drop=True)


def best_label(values: pd.Series, mode: str = "max") -> object:
    """The index label of the best value in the study's direction (``mode``: max or min)."""
    v = values.astype(float)
    return v.idxmin() if mode == "min" else v.idxmax()


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) t-interval of the mean; low/high NaN for fewer than
    ``MIN_PAIRS_INTERVAL`` values (an interval from 2 values spans most of the scale)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.nan, np.nan, np.nan
    m = float(v.mean())
    if v.size < MIN_PAIRS_INTERVAL:
        return m, np.nan, np.nan
    half = float(sps.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half
