"""The figures of one task of an analysis, one per question: per-fold values of what the paired
verdicts compare, sensitivity to every searched parameter, the optimisation history (searches
only), fANOVA importance, Kaplan–Meier of predicted risk groups, coordination telemetry and
validation curves. Each figure that cannot be drawn is listed under "skipped" with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pandas as pd
from mlflow.exceptions import MlflowException

from analysis import evaluation as ev
from analysis import figures as figs
from analysis import multi, recorded, stats
from analysis.load import Study, load_predictions, metric_histories, param_column
from study.record import STUDY_PARAM, Roles, Tags, telemetry_metric, val_metric

if TYPE_CHECKING:
    from analysis.analyse import Analysis

MIN_TRIALS_IMPORTANCE = 4
#: Telemetry drawn per method, one figure each: key suffix -> axis label. The key is looked up as
#: ``coord/<suffix>`` in the MLflow record.
TELEMETRY_PANELS = {
    "conflict_rate": "gradient-conflict rate (share of rows with cos < 0)",
    "cos_mean": "mean cosine of the tumour and TME gradient blocks",
    "rel_change": "relative change of the update |g′ − g| / |g|",
    "layer_cos": "cosine of the two streams' whole-layer gradients",
}
#: Telemetry whose sign depends on the basis of each stream when coordination acts on the
#: classifier rows (two disjoint parameter blocks; README, "Where coordination acts").
BASIS_DEPENDENT = ("conflict_rate", "cos_mean")
CLASSIFIER_ROWS = "classifier_rows"
BASIS_NOTE = ("on classifier_rows the sign of these cosines depends on an arbitrary basis of "
              "each stream (a loss-preserving permutation of hidden units flips about half the "
              "conflicts): read them as a description of the run, not as evidence of conflict")
UPDATE_SUFFIXES = ("rel_change", "layer_cos")
SURVIVAL_COLUMNS = {"time", "event", "risk", "fold"}  # a time-to-event task's predictions


def coord_target(study: Study) -> str | None:
    """Where coordination acted: the parent's param or tag, else the trials' own param."""
    target = (study.parent_params.get(f"{STUDY_PARAM}coord_target")
              or study.parent_tags.get(Tags.COORD_TARGET))
    col = param_column("coord_target")
    if not target and col in study.trials:
        values = study.trials[col].dropna().astype(str).unique()
        target = ", ".join(sorted(values)) if len(values) else None
    return target


def _selection_short(trials: pd.DataFrame, task: str) -> str:

    rule = ev.selection_rule(trials, task)
    if rule == "last epoch":
        return "last epoch"
    if rule.startswith("best epoch") and ";" not in rule:
        return "best epoch"
    return "selected epoch"


def _telemetry_key(study: Study, run_ids: set[str], suffix: str) -> str | None:
    key = telemetry_metric(suffix)
    return key if any(key in study.metric_keys.get(r, ()) for r in run_ids) else None


def task_figures(result: Analysis, task: str, fold_metric: str, candidate: str, seed: int,
                 progress: Callable[[str], None]) -> None:
    """Figures of one task. Per-fold values use ``fold_metric``; trial-level figures use the
    trial's final value, which is of the task's selection metric."""

    study, out = ev.role_view(result.study), result.out_dir  # the search's trials
    metric = study.metric_for(task)
    t = study.trials
    finished = stats.full_budget(t, task)
    stopped = stats.stopped_early(t, task)
    _per_fold(result, task, fold_metric, candidate, progress)
    _sensitivity(result, study, task, metric, pd.concat([finished, stopped]), seed, progress)
    if not ev.is_search(study, task):
        result.skipped.append(f"{task}: optimisation history not drawn: a grid study (the order "
                              f"of its trials carries no information)")
    elif len(finished) + len(stopped) >= 2:
        progress(f"{task}: optimisation history")
        result.figures[f"{task}_history"] = figs.history(t, metric, task,
                                                         out / f"{task}_history.png",
                                                         mode=study.mode)
    else:
        result.skipped.append(f"{task}: optimisation history skipped: fewer than 2 finished "
                              f"trials")
    _importance(result, study, task, metric, len(finished), seed, progress)
    _km(result, task, progress)
    _curves(result, study, task, metric, progress)


def _sensitivity(result: Analysis, study: Study, task: str, metric: str, drawn: pd.DataFrame,
                 seed: int, progress: Callable[[str], None]) -> None:
    """One figure, one panel per parameter the study searched (as it recorded them: the
    parent's ``study.search.*`` params or tag ``ks.searched``), numeric or categorical, that
    some completed or stopped trial carries. A parameter that is what the methods are (each
    method one value of it, e.g. a grid over ``coordination``) is compared in the per-fold
    figure and the paired table instead."""
    searched = [p for p in recorded.searched_params(result.study)
                if p not in figs.NOT_HYPERPARAMS]  # a searched seed is not a hyper-parameter
    carried = [p for p in searched
               if param_column(p) in drawn and drawn[param_column(p)].notna().any()]
    arms = [p for p in carried if _names_the_arms(drawn, p)]
    params = [p for p in carried if p not in arms]
    absent = [p for p in searched if p not in carried]
    if absent:
        result.skipped.append(f"{task}: sensitivity: no finished trial carries the searched "
                              f"parameter(s) {', '.join(absent)}")
    if arms:
        result.skipped.append(f"{task}: sensitivity: {', '.join(arms)} not drawn there: each "
                              f"method ran with one value of it (it is what the methods are), "
                              f"so the per-fold figure and the paired table compare it")
    if not params:
        result.skipped.append(f"{task}: sensitivity figure skipped: "
                              + ("the study recorded no searched parameter" if not searched
                                 else "no finished trial carries a searched parameter"))
        return
    progress(f"{task}: sensitivity to {', '.join(params)}")
    result.figures[f"{task}_sensitivity"] = figs.sensitivity(
        study.trials, study.folds, metric, task, params, result.out_dir /
        f"{task}_sensitivity.png", seed=seed)


def _names_the_arms(trials: pd.DataFrame, param: str) -> bool:
    """Whether ``param`` is what tells the arms apart: one value per arm, several arms."""
    values = trials[["arm", param_column(param)]].dropna()
    per_arm = values.groupby("arm")[param_column(param)].nunique()
    return len(per_arm) > 1 and bool((per_arm == 1).all())


def _per_fold(result: Analysis, task: str, fold_metric: str, candidate: str,
              progress: Callable[[str], None]) -> None:
    """What the paired table compares: the model's rows (nested: the outer folds) and the
    baselines', on the same folds."""
    task_folds, _ = ev.comparison_folds(result.study, task, fold_metric)
    searched_arms = set(stats.duplicated_arms(task_folds, fold_metric))
    arms = sorted((a for a in task_folds["arm"].unique() if a not in searched_arms),
                  key=lambda a: (a == candidate, a))
    if searched_arms:
        left = ", ".join(sorted(searched_arms))
        result.skipped.append(f"{task}: per-fold figure leaves out {left} (several runs per "
                              f"(seed, fold))")
    if arms and len(stats.usable(task_folds[task_folds["arm"].isin(arms)], fold_metric)):
        progress(f"{task}: per-fold figure")
        result.figures[f"{task}_per_fold"] = figs.per_fold(
            task_folds, fold_metric, task, arms, result.out_dir /
            f"{task}_per_fold_{fold_metric}.png",
            selection=_selection_short(result.study.trials, task))


def _importance(result: Analysis, study: Study, task: str, metric: str, n_finished: int,
                seed: int, progress: Callable[[str], None]) -> None:
    if n_finished < MIN_TRIALS_IMPORTANCE:
        result.skipped.append(f"{task}: parameter importance skipped: fewer than "
                              f"{MIN_TRIALS_IMPORTANCE} completed trials")
        return
    progress(f"{task}: fANOVA parameter importance")
    try:
        res = figs.importance(study.trials, metric, task, result.out_dir /
                              f"{task}_importance.png", seed=seed,
                              params=recorded.searched_params(result.study) or None)
    except (ValueError, RuntimeError) as exc:  # e.g. every trial has the same value
        res = None
        result.notes.append(f"{task}: fANOVA failed: {exc}")
    if res is None:
        result.skipped.append(f"{task}: parameter importance skipped: fewer than 2 "
                              f"hyper-parameters vary across completed trials")
    else:
        result.figures[f"{task}_importance"] = res


def _curves(result: Analysis, study: Study, task: str, metric: str,
            progress: Callable[[str], None]) -> None:
    """Telemetry and validation curves of every completed run (a completed run with a missing
    fold still has its curves)."""
    t = study.trials
    done = t[(t["task"] == task) & (t["status"].isin(stats.FULL_BUDGET_STATUSES))
             & ~t["superseded"].astype(bool)]
    run_ids = set(done["run_id"])
    keys = {s: _telemetry_key(study, run_ids, s) for s in TELEMETRY_PANELS}
    wanted = [k for k in keys.values() if k] + [val_metric(metric)]
    if any(k in study.metric_keys.get(r, ()) for r in run_ids for k in wanted):
        progress(f"{task}: metric histories")
        hist = metric_histories(study, wanted, run_ids)
    else:
        hist = pd.DataFrame(columns=["run_id", "arm", "method", "task", "key", "step", "value"])
    target = coord_target(result.study) or CLASSIFIER_ROWS  # the model's default
    for suffix, label in TELEMETRY_PANELS.items():
        key = keys[suffix]
        tele = hist[hist["key"] == key] if key else hist.iloc[0:0]
        if len(tele):
            caption = "completed runs; each epoch: mean over steps and folds"
            if suffix in BASIS_DEPENDENT and CLASSIFIER_ROWS in target:
                caption += "\nbasis-dependent on classifier_rows: sign not meaningful"
            result.figures[f"{task}_telemetry_{suffix}"] = figs.epoch_curves(
                tele, [(key, label)], task, caption, result.out_dir /
                f"{task}_telemetry_{suffix}.png")
            result.figures[f"{task}_telemetry_{suffix}"].stats["coord_target"] = target
    if not any(keys.values()):
        result.skipped.append(f"{task}: coordination telemetry skipped: no completed run logged "
                              f"{telemetry_metric('<key>')} metrics")
    update_keys = [keys[s] for s in UPDATE_SUFFIXES if keys[s]]
    if update_keys:
        eff = multi.update_effect(hist, update_keys)
        eff.insert(0, "task", task)
        result.update_effect = pd.concat([result.update_effect, eff], ignore_index=True)
    else:
        result.skipped.append(f"{task}: effect on the update skipped: no completed run logged "
                              f"{' or '.join(telemetry_metric(s) for s in UPDATE_SUFFIXES)}")
    curves = hist[hist["key"] == val_metric(metric)]
    if len(curves):
        result.figures[f"{task}_learning"] = figs.epoch_curves(
            curves, [(val_metric(metric), f"validation {metric} (mean over folds)")], task,
            "completed runs; each epoch: mean over folds",
            result.out_dir / f"{task}_learning_curves.png", bounded=True)


# --- Kaplan–Meier -----------------------------------------------------------------------------

def _predictions(study: Study, run_id: str) -> pd.DataFrame | None:
    try:
        return load_predictions(study, run_id)
    except MlflowException:  # a run the store no longer has: no predictions to draw
        return None


def _representative_runs(study: Study, task: str) -> dict[str, list[pd.Series]]:
    """Per arm, the completed run(s) whose predictions go into the KM figure.

    Nested evaluation: the model is every outer run together (each predicted its own outer
    fold), so it covers the same patients as the baselines. Otherwise one run per arm: the
    lowest seed of a grid (nothing picked on the outcome), the best final metric of a search.
    """
    t = stats.full_budget(study.trials, task)
    out: dict[str, list[pd.Series]] = {}
    if ev.is_nested(study):
        outer = t[t["role"] == Roles.OUTER].sort_values("outer_fold")
        if len(outer):
            out["nested (outer folds)"] = [row for _, row in outer.iterrows()]
        t = t[t["role"] == Roles.BASELINE]
    else:
        t = t[t["role"].isin((Roles.TRIAL, Roles.BASELINE))]
    for arm, g in t.groupby("arm"):
        g = g.sort_values("final", ascending=False) if g["seed"].duplicated().any() \
            else g.sort_values("seed")
        if len(g):
            out[str(arm)] = [g.iloc[0]]
    return out


def _km(result: Analysis, task: str, progress: Callable[[str], None]) -> None:
    """Kaplan–Meier of each arm's risk groups, for any task whose predictions carry survival
    times (decided from the logged predictions, not from the task's name)."""
    study = result.study
    loaded = {arm: [(run, _predictions(study, run["run_id"])) for run in runs]
              for arm, runs in _representative_runs(study, task).items()}
    survival = [p for runs in loaded.values() for _, p in runs
                if p is not None and set(p.columns) >= SURVIVAL_COLUMNS]
    if not survival:
        result.skipped.append(f"{task}: Kaplan–Meier skipped: no run's predictions carry "
                              f"survival times (time, event, risk)")
        return
    progress(f"{task}: Kaplan–Meier from predictions.parquet")
    preds, used, labels = {}, [], {}
    for arm, runs in loaded.items():
        frames = []
        for run, p in runs:
            if p is None or not set(p.columns) >= SURVIVAL_COLUMNS:
                result.notes.append(f"{task}: {arm}: run {run['run_id']} has no survival "
                                    f"predictions.parquet (time, event, risk, fold)")
                continue
            if "seed" in p and p["seed"].nunique() > 1:  # one patient once: the lowest seed
                p = p[p["seed"] == p["seed"].min()]
            frames.append(p)
        if not frames:
            continue
        preds[arm] = pd.concat(frames, ignore_index=True)
        if len(runs) > 1:
            labels[arm] = f"{len(frames)} outer-fold runs, each on its own outer fold"
            used.append(f"{arm}: the outer runs " + ", ".join(
                f"{r['trial_id']} (run {r['run_id']})" for r, _ in runs))
        else:
            run = runs[0][0]
            seed = "any seed" if run.get("seedless", False) else f"seed {run['seed']}"
            labels[arm] = f"trial {run['trial_id']}, {seed}"
            used.append(f"{arm}: trial {run['trial_id']} ({seed}, run {run['run_id']})")
    if not preds:
        result.skipped.append(f"{task}: Kaplan–Meier skipped: no predictions.parquet with "
                              f"time/event/risk")
        return
    res = figs.kaplan_meier(preds, task, result.out_dir / f"{task}_kaplan_meier.png", labels)
    res.stats["runs"] = used
    result.figures[f"{task}_km"] = res


__all__ = ["task_figures", "coord_target", "TELEMETRY_PANELS", "BASIS_NOTE",
           "MIN_TRIALS_IMPORTANCE"]
