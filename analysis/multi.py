"""More than two methods on the same folds: Friedman test, post-hoc mean ranks, critical difference;
and how much each method changed the update (coordination telemetry).

Design: blocks are the (seed, fold) keys every method was evaluated on; within a block the methods
are ranked (1 = best, ties share the average rank). The Friedman test (scipy) asks whether any
method ranks consistently better; the Nemenyi post-hoc test (scikit-posthocs) compares every pair of
mean ranks, and the critical difference CD = q_α(k, ∞)/√2 · √(k(k+1)/(6N)) is the smallest
difference of mean ranks it calls significant (Demšar 2006). Only complete blocks enter (a block
missing one method cannot be ranked); how many were dropped is reported. Only completed trials
count (the budget rule of stats.py).

The effect on the update turns a null result into numbers: if a rule changes the coordinated
gradient by 2 % on average, nobody should expect it to move the AUC.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scikit_posthocs as sp
from scipy import stats as sps

from analysis.stats import KEY, duplicated_arms, usable
from study.record import LAYER_COS, REL_CHANGE, telemetry_metric

#: Per-epoch telemetry keys (step = epoch): relative change of the coordinated gradient
#: |g' - g| / |g| and the cosine between the two streams' whole-layer gradients, each averaged
#: over the epoch's steps (and folds).
UPDATE_KEYS = (telemetry_metric(REL_CHANGE), telemetry_metric(LAYER_COS))
UPDATE_LABELS = {UPDATE_KEYS[0]: "relative change of the update |g′ − g| / |g|",
                 UPDATE_KEYS[1]: "cosine of the two streams' whole-layer gradients"}
MIN_BLOCKS = 2


@dataclass
class Friedman:
    """The multi-method test of one (task, metric)."""

    task: str
    metric: str
    arms: list[str]
    blocks: pd.DataFrame  # complete blocks: index (seed, fold), one column per arm
    dropped: pd.DataFrame  # seed, fold, missing: blocks left out and the arms they lacked
    statistic: float
    p: float
    mean_ranks: pd.Series  # arm -> mean rank over complete blocks (1 = best), best first
    posthoc: pd.DataFrame  # Nemenyi p-values (arm × arm), rows/columns in mean-rank order
    cd: float  # Nemenyi critical difference of mean ranks at ``alpha``
    alpha: float = 0.05
    excluded: list[str] = field(default_factory=list)  # arms with several runs per block
    note: str = ""

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)

    def table(self) -> pd.DataFrame:
        """One row per method: mean rank, mean and sd of the metric over the complete blocks,
        and the methods it differs from (Nemenyi p < alpha)."""
        rows = []
        for arm, rank in self.mean_ranks.items():
            v = self.blocks[arm].to_numpy(dtype=float)
            differs = [o for o in self.mean_ranks.index if o != arm
                       and np.isfinite(self.posthoc.loc[arm, o])
                       and self.posthoc.loc[arm, o] < self.alpha]
            rows.append({"task": self.task, "metric": self.metric, "arm": arm,
                         "mean_rank": float(rank), "n_blocks": self.n_blocks,
                         "mean": float(v.mean()) if v.size else np.nan,
                         "sd": float(v.std(ddof=1)) if v.size > 1 else np.nan,
                         "differs_from": ", ".join(differs)})
        return pd.DataFrame(rows)


def critical_difference(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi CD of mean ranks for ``k`` methods over ``n_blocks`` blocks (Demšar 2006, eq. 5):
    the studentized-range quantile q_{1-α}(k, ∞) / √2 times √(k(k+1) / (6N))."""
    if k < 2 or n_blocks < 1:
        return math.nan
    q = float(sps.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2.0)
    return q * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def block_matrix(folds: pd.DataFrame, metric: str, task: str,
                 arms: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(complete blocks × arms matrix, dropped blocks with the arms they lack).

    The universe of blocks is every (seed, fold) any of ``arms`` was expected on in this task
    (failed runs keep their expected folds), so a failed run's blocks show up as dropped."""
    f = folds[(folds["task"] == task) & folds["arm"].isin(arms)]
    universe = f[KEY].drop_duplicates()
    good = usable(f, metric)
    wide = good.pivot_table(index=KEY, columns="arm", values=metric, aggfunc="first")
    index = pd.MultiIndex.from_frame(universe.sort_values(KEY))
    wide = wide.reindex(index=index, columns=list(arms))
    complete = wide.notna().all(axis=1)
    dropped = [{"seed": s, "fold": k, "missing": ", ".join(a for a in arms if pd.isna(row[a]))}
               for (s, k), row in wide[~complete].iterrows()]
    blocks = wide[complete].astype(float)
    blocks.columns.name = None
    return blocks, pd.DataFrame(dropped, columns=["seed", "fold", "missing"])


def friedman(folds: pd.DataFrame, metric: str, task: str, *, arms: Iterable[str] | None = None,
             alpha: float = 0.05) -> Friedman | None:
    """Friedman test + Nemenyi post-hoc over complete (seed, fold) blocks; None when fewer than
    three methods can be ranked (two methods: the paired Wilcoxon test says it all)."""
    f = folds[folds["task"] == task]
    chosen = sorted(f["arm"].unique()) if arms is None else list(arms)
    dups = set(duplicated_arms(f, metric))
    excluded = [a for a in chosen if a in dups]
    chosen = [a for a in chosen if a not in dups]
    if len(chosen) < 3:
        return None
    blocks, dropped = block_matrix(folds, metric, task, chosen)
    k, n = len(chosen), len(blocks)
    nan_matrix = pd.DataFrame(np.nan, index=chosen, columns=chosen)
    if n < MIN_BLOCKS:
        return Friedman(task, metric, chosen, blocks, dropped, math.nan, math.nan,
                        pd.Series(np.nan, index=chosen, dtype=float), nan_matrix, math.nan,
                        alpha, excluded,
                        f"only {n} complete (seed, fold) block(s): no Friedman test")
    ranks = blocks.rank(axis=1, ascending=False, method="average").mean().sort_values()
    note = ""
    if (blocks.nunique(axis=1) == 1).all():
        stat, p = math.nan, math.nan
        note = "every method ties in every block: no Friedman test"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sps.friedmanchisquare(*(blocks[a].to_numpy() for a in chosen))
        stat, p = float(res.statistic), float(res.pvalue)
    posthoc = sp.posthoc_nemenyi_friedman(blocks)
    order = list(ranks.index)
    posthoc = posthoc.loc[order, order]
    return Friedman(task, metric, chosen, blocks, dropped, stat, p, ranks, posthoc,
                    critical_difference(k, n, alpha), alpha, excluded, note)


def update_effect(hist: pd.DataFrame, keys: Sequence[str] = UPDATE_KEYS) -> pd.DataFrame:
    """Per method and telemetry key: number of runs, mean and sd (ddof=1) over runs of each run's
    mean over epochs. ``hist`` is ``load.metric_histories`` output (run_id, arm, key, step,
    value); pass only the runs that should count (completed ones)."""
    cols = ["arm", "key", "n_runs", "mean", "sd"]
    h = hist[hist["key"].isin(list(keys))]
    if h.empty:
        return pd.DataFrame(columns=cols)
    per_run = h.groupby(["arm", "key", "run_id"])["value"].mean().reset_index()
    out = per_run.groupby(["arm", "key"])["value"].agg(
        n_runs="size", mean="mean", sd=lambda v: v.std(ddof=1) if len(v) > 1 else np.nan)
    out = out.reset_index()
    out["key"] = pd.Categorical(out["key"], categories=list(keys), ordered=True)
    return out.sort_values(["key", "arm"]).reset_index(drop=True)[cols].assign(
        key=lambda d: d["key"].astype(str))
