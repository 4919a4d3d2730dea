"""Which runs stand for the model when it is compared with the baselines, and the nested estimate.

A study's children are search trials (``role`` trial), baselines (``role`` baseline, scored on
the study's folds) and, with nested evaluation, one outer run per outer fold (``role`` outer).
The paired statistics need one value per (seed, fold) per method, on the folds the baselines
were scored on:

* ``evaluation: nested`` - the outer runs: each outer fold is scored by the configuration its
  own search chose without seeing it, so the model's values are unbiased. Inner trials ran on
  other (inner) folds and never enter the paired table.
* ``evaluation: cv``, a grid (one trial per method and seed) - every trial, as before.
* ``evaluation: cv``, a search (several trials per method and (seed, fold)) - the best completed
  trial of each method: its values were chosen on the same folds, so they are optimistic, and
  the report says so wherever they appear.

Baselines are deterministic and logged once per study (seed ``any``); ``analysis/load.py``
already repeats their rows for every seed of the model's runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from analysis.load import Study, param_column
from analysis.recorded import NOT_RECORDED
from analysis.stats import best_label, duplicated_arms, full_budget
from study.record import Params, Roles, Status, Tags, inner_metric

#: What stands for the model in the paired comparison, per case (text for the report).
NESTED_ROWS = ("the outer runs of nested evaluation: each outer fold scored once by the "
               "configuration its own search chose on inner folds (unbiased)")
SEARCH_ROWS = ("the best completed trial of the search{per}, whose values were chosen on these "
               "same folds, so they are optimistic (best-of-search); `evaluation: nested` gives "
               "an unbiased comparison")
GRID_ROWS = "every completed trial (one per method and seed)"


def ensure_roles(study: Study) -> Study:
    """Give a study built in memory (without ``role``/``outer_fold``/``seedless`` columns) the
    columns ``load_study`` adds: every run a search trial."""
    for frame in (study.trials, study.folds):
        if "role" not in frame:
            frame["role"] = Roles.TRIAL
        if "outer_fold" not in frame:
            frame["outer_fold"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    if "seedless" not in study.trials:
        study.trials["seedless"] = False
    return study


def is_nested(study: Study) -> bool:
    return study.parent_tags.get(Tags.EVALUATION) == "nested"


def role_view(study: Study, roles: tuple[str, ...] = (Roles.TRIAL,)) -> Study:
    """The study with only runs of ``roles`` (default: the search's trials), e.g. for the
    figures that describe the search (sensitivity, history, importance, curves)."""
    t = study.trials[study.trials["role"].isin(roles)].reset_index(drop=True)
    f = study.folds[study.folds["role"].isin(roles)].reset_index(drop=True)
    return dataclasses.replace(study, trials=t, folds=f)


def searched_arms(study: Study, task: str, metric: str) -> list[str]:
    """The model's arms whose trials come from a search: several usable runs per (seed, fold),
    or - when the study says its sampler searched (tag ``ks.sampler`` not grid) - every arm,
    even one whose other trials were stopped early (the one completed trial was still chosen
    on these folds)."""
    f = study.folds
    trials = f[(f["task"] == task) & (f["role"] == Roles.TRIAL)]
    dup = duplicated_arms(trials, metric)
    sampler = study.parent_tags.get(Tags.SAMPLER, "").strip().lower()
    if dup or sampler in ("", "grid"):
        return dup
    return sorted(trials["arm"].dropna().unique())


def model_rows(study: Study, task: str, metric: str) -> tuple[pd.DataFrame, str]:
    """The (seed, fold) rows that stand for the model in paired comparisons, and what they are
    (see the module docstring)."""
    f = study.folds[study.folds["task"] == task]
    if is_nested(study):
        rows = f[f["role"] == Roles.OUTER].copy()
        arms = rows["arm"].unique()
        if len(arms) > 1:  # the search chose different methods: the procedure is the method
            rows["arm"] = rows["method"] = "nested search"
        return rows, NESTED_ROWS
    trials = f[f["role"] == Roles.TRIAL]
    searched = searched_arms(study, task, metric)
    if not searched:
        return trials, GRID_ROWS
    done = full_budget(study.trials[study.trials["role"] == Roles.TRIAL], task)
    keep = trials[~trials["arm"].isin(searched)]
    best = []
    for arm in searched:
        g = done[done["arm"] == arm]
        if len(g):
            best.append(str(g.loc[best_label(g["final"], study.mode), "run_id"]))
    per = " (per method)" if len(searched) > 1 else ""
    return pd.concat([keep, trials[trials["run_id"].isin(best)]]), SEARCH_ROWS.format(per=per)


def comparison_folds(study: Study, task: str, metric: str) -> tuple[pd.DataFrame, str]:
    """Model rows (``model_rows``) and the baselines' rows of ``task``: the folds frame the paired
    statistics, ranks and the per-fold figure use; and what stands for the model."""
    rows, what = model_rows(study, task, metric)
    f = study.folds
    baselines = f[(f["task"] == task) & (f["role"] == Roles.BASELINE)]
    return pd.concat([rows, baselines], ignore_index=True), what


def pick_candidate(frame: pd.DataFrame, candidate: str) -> str:
    """``candidate`` if it is one of the model's arms; else the model's only arm (e.g. the
    study fixed another coordination rule, or nested evaluation chose several)."""
    model = frame.loc[frame["role"] != Roles.BASELINE, "arm"].unique()
    if candidate in set(model) or len(model) != 1:
        return candidate
    return str(model[0])


def nested_table(study: Study, task: str, metric: str) -> pd.DataFrame | None:
    """One row per outer fold of a nested study (latest attempt of each outer run): the chosen
    trial, its method, best-of-search (its inner cross-validation score), ``value`` (the outer
    fold's score: unbiased), the refit's epochs and the searched parameters. None when the
    study is not nested or no outer run completed."""
    if not is_nested(study):
        return None
    t = study.trials
    outer = t[(t["task"] == task) & (t["role"] == Roles.OUTER) & ~t["superseded"].astype(bool)
              & (t["status"] == Status.COMPLETED)]
    if outer.empty:
        return None
    f = study.folds
    rows = []
    for run in outer.sort_values("outer_fold").itertuples(index=False):
        r = run._asdict()
        k = r["outer_fold"]
        value = f.loc[(f["run_id"] == r["run_id"]) & (f["fold"] == k), metric]
        chosen, inner = _outer_info(study, r["run_id"], metric)
        row = {"outer_fold": int(k), "chosen trial": chosen, "method": r["arm"],
               "best-of-search": inner, "value": float(value.iloc[0]) if len(value) else np.nan}
        refit = param_column(Params.REFIT_EPOCHS)
        epochs = outer.loc[outer["run_id"] == r["run_id"], refit] \
            if refit in outer else pd.Series(dtype=float)
        row["refit epochs"] = int(epochs.iloc[0]) if len(epochs) and pd.notna(
            epochs.iloc[0]) else np.nan
        for p in study.searched:
            col = param_column(p)
            if col in outer:
                row[p] = outer.loc[outer["run_id"] == r["run_id"], col].iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


def _outer_info(study: Study, run_id: str, metric: str) -> tuple[str, float]:
    """(chosen inner trial, its inner score ``inner_<metric>``) of an outer run."""
    from mlflow import MlflowClient

    try:
        run = MlflowClient(tracking_uri=study.tracking_uri).get_run(run_id)
    except Exception:  # noqa: BLE001 - the table is still useful without them
        return "", np.nan
    return (run.data.tags.get(Tags.CHOSEN_TRIAL, ""),
            float(run.data.metrics.get(inner_metric(metric), np.nan)))




def selection_rule(trials: pd.DataFrame, task: str | None = None) -> str:
    """How each fold's value was selected, from the trials' ``patience`` param: 0 -> the last
    epoch, p > 0 -> the best epoch with early stopping after p epochs without improvement."""
    t = trials if task is None else trials[trials["task"] == task]
    t = t[~t["superseded"].astype(bool)]
    col = t.get(param_column("patience"))
    if col is None or col.dropna().empty:
        return f"{NOT_RECORDED} (no trial logged the param `patience`)"
    values = pd.to_numeric(col, errors="coerce").dropna().astype(int)
    counts = values.value_counts().sort_index()

    def rule(p: int) -> str:
        return "last epoch" if p == 0 else f"best epoch, early stopping with patience {p}"

    if len(counts) == 1:
        return rule(int(counts.index[0]))
    return "; ".join(f"{rule(int(p))} ({n} trials)" for p, n in counts.items())


def is_search(study: Study, task: str) -> bool:
    """A search (trial order and 'best trial' mean something) rather than a grid: the parent tag
    ``ks.sampler`` when recorded, else whether some method has several trials per seed."""
    sampler = study.parent_tags.get(Tags.SAMPLER)
    if sampler:
        return sampler.strip().lower() != "grid"
    t = study.trials[(study.trials["task"] == task) & ~study.trials["superseded"].astype(bool)]
    return bool(t.duplicated(["arm", "seed"]).any())


__all__ = ["ensure_roles", "is_nested", "role_view", "model_rows", "comparison_folds",
           "pick_candidate", "nested_table", "searched_arms", "NESTED_ROWS", "SEARCH_ROWS",
           "GRID_ROWS",
           "selection_rule", "is_search"]
