"""Turn a finished study into evidence: tables, paired statistics, figures and a report.

    python -m analysis.compare --experiment NAME [--tracking-uri URI] [--out DIR]

Writes report.md and a self-contained report.html (figures embedded), comparison.csv,
methods.csv, missing.csv (and claims.csv, friedman.csv, update_effect.csv, best_per_fold.csv when
they apply) and PNG figures to DIR, and logs the same files under ``report/`` of the study's
parent MLflow run.

Budgets are never mixed: summaries, paired tests, ranks, importance and curves use completed
trials only; trials the scheduler (ASHA) stopped early are counted, listed and drawn hollow in the
sensitivity plot and the optimisation history, and the report says so.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from analysis import claims as claims_mod
from analysis import evaluation as ev
from analysis import figures as figs
from analysis import fmt, multi, stats
from analysis.document import Doc
from analysis.load import AnalysisError, Study, load_predictions, load_study, metric_histories
from analysis.summary import best_trial
from study.record import COHORT_PARAM, STUDY_PARAM, Roles, Tags, telemetry_metric, val_metric

SENSITIVITY_PARAMS = ("alpha", "lam", "tau_cos", "tau_rho")
MIN_TRIALS_IMPORTANCE = 4
#: Telemetry drawn per method, one figure each: key suffix -> axis label. The key is looked up as
#: ``coord/<suffix>`` in the MLflow record.
TELEMETRY_PANELS = {
    "conflict_rate": "gradient-conflict rate (share of rows with cos < 0)",
    "cos_mean": "mean cosine of the tumour and TME gradient blocks",
    "rel_change": "relative change of the update |g′ − g| / |g|",
    "layer_cos": "cosine of the two streams' whole-layer gradients",
}
UPDATE_SUFFIXES = ("rel_change", "layer_cos")
#: What the parent run records about the study, in the order a reader wants it.
PARENT_PARAMS = tuple(
    (f"{STUDY_PARAM}{key}", label) for key, label in (
        ("epochs", "epochs per trial"), ("folds", "folds"), ("seeds", "seeds"),
        ("trials", "trials planned (grid)"), ("evaluation", "evaluation"),
        ("coord_target", "coordination target"))) + tuple(
    (f"{COHORT_PARAM}{key}", label) for key, label in (
        ("n_cases", "cases in the cohort"), ("genes_tumour", "tumour genes used"),
        ("genes_tme", "TME genes used"), ("genes_table", "genes in the expression table")))
PARENT_TAGS = ((Tags.SAMPLER, "sampler"), (Tags.MODE, "metric direction"),
               (Tags.SEARCHED, "searched parameters"), (Tags.EVALUATION, "evaluation (tag)"),
               (Tags.REFERENCE, "reference variant"))
NOT_RECORDED = "not recorded"
#: folds-frame columns that are not metric values
_FOLD_ID_COLUMNS = {"run_id", "trial_id", "task", "metric", "method", "arm", "seed", "status",
                    "fold", "variant", "setting", "role", "outer_fold", "seedless"}


def _stderr(msg: str) -> None:
    print(f"[analysis.compare] {msg}", file=sys.stderr, flush=True)


@dataclass
class Best:
    """The best configuration of one task: a trial (search) or a method (grid)."""

    task: str
    metric: str
    kind: str  # "trial" | "method"
    label: str
    value: float  # mean of the metric over its (seed, fold) values
    per_fold: pd.DataFrame  # seed, fold, one column per metric
    params: dict[str, object] = field(default_factory=dict)
    searched: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


@dataclass
class Report:
    out_dir: Path
    study: Study
    comparison: pd.DataFrame
    methods: pd.DataFrame
    missing: pd.DataFrame
    failed: pd.DataFrame
    figures: dict[str, figs.FigureResult] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    logged_to: str | None = None
    multi: dict[tuple[str, str], multi.Friedman] = field(default_factory=dict)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    update_effect: pd.DataFrame = field(default_factory=pd.DataFrame)
    best: dict[str, Best] = field(default_factory=dict)
    parent_params: dict[str, str] = field(default_factory=dict)
    reference: str | None = None
    model_rows: dict[str, str] = field(default_factory=dict)  # task -> what stands for the model


# --- what the study recorded ---------------------------------------------------------------

def parent_params(study: Study) -> dict[str, str]:
    """Params of the study's parent run (``study.*``, ``cohort.*``, ...); empty without one."""
    own = getattr(study, "parent_params", None)
    if isinstance(own, dict):
        return {str(k): str(v) for k, v in own.items()}
    if study.parent_run_id is None:
        return {}
    try:
        run = MlflowClient(tracking_uri=study.tracking_uri).get_run(study.parent_run_id)
    except Exception:  # the tables are still complete without the parent's params
        return {}
    return dict(run.data.params)


def selection_rule(trials: pd.DataFrame, task: str | None = None) -> str:
    """How each fold's value was selected, from the trials' ``patience`` param: 0 -> the last
    epoch, p > 0 -> the best epoch with early stopping after p epochs without improvement."""
    t = trials if task is None else trials[trials["task"] == task]
    t = t[~t["superseded"].astype(bool)]
    col = t.get("params.patience")
    if col is None or col.dropna().empty:
        return f"{NOT_RECORDED} (no trial logged the param `patience`)"
    values = pd.to_numeric(col, errors="coerce").dropna().astype(int)
    counts = values.value_counts().sort_index()

    def rule(p: int) -> str:
        return "last epoch" if p == 0 else f"best epoch, early stopping with patience {p}"

    if len(counts) == 1:
        return rule(int(counts.index[0]))
    return "; ".join(f"{rule(int(p))} ({n} trials)" for p, n in counts.items())


def _selection_short(trials: pd.DataFrame, task: str) -> str:
    rule = selection_rule(trials, task)
    if rule == "last epoch":
        return "last epoch"
    if rule.startswith("best epoch") and ";" not in rule:
        return "best epoch"
    return "selected epoch"


def is_search(study: Study, task: str) -> bool:
    """A search (trial order and 'best trial' mean something) rather than a grid: the parent tag
    ``ks.sampler`` when recorded, else whether some method has several trials per seed."""
    sampler = study.parent_tags.get(Tags.SAMPLER)
    if sampler:
        return sampler.strip().lower() != "grid"
    t = study.trials[(study.trials["task"] == task) & ~study.trials["superseded"].astype(bool)]
    return bool(t.duplicated(["arm", "seed"]).any())


def evaluation_mode(study: Study, params: dict[str, str]) -> str | None:
    return study.parent_tags.get(Tags.EVALUATION) or params.get(f"{STUDY_PARAM}evaluation")


def nested_estimate(study: Study, task: str, metric: str) -> pd.DataFrame | None:
    """Hook for nested evaluation (parent tag ``ks.evaluation`` = nested): return one row per
    outer fold (columns outer_fold, value, and anything useful such as the chosen config) and the
    report shows it beside best-of-search as the unbiased estimate. None: not available (the
    report then says that the nested estimate could not be read)."""
    return ev.nested_table(study, task, metric)


def _metric_columns(folds: pd.DataFrame) -> list[str]:
    return [c for c in folds.columns if c not in _FOLD_ID_COLUMNS and not c.startswith("params.")
            and pd.api.types.is_numeric_dtype(folds[c])]


def best_configuration(study: Study, task: str, metric: str) -> Best | None:
    """Search: the completed trial with the highest final metric. Grid: the method with the
    highest mean over its completed (seed, fold) values. Per-fold values of every metric."""
    f = study.folds[study.folds["task"] == task]
    mcols = [c for c in _metric_columns(f) if f[c].notna().any()]
    if is_search(study, task):
        b = best_trial(study, task)
        if b is None:
            return None
        rows = f[f["run_id"] == b["run_id"]]
        params = {c[len("params."):]: b[c] for c in study.param_columns
                  if c in b.index and not _missing(b[c])
                  and c[len("params."):] not in figs.NOT_HYPERPARAMS}
        return Best(task, metric, "trial", str(b["trial_id"]), float(b["final"]),
                    rows[["seed", "fold", *mcols]].reset_index(drop=True), params,
                    [p for p in study.searched if p in params], [str(b["run_id"])])
    good = stats.usable(f, metric)
    if good.empty:
        return None
    means = good.groupby("arm")[metric].mean()
    arm = str(means.idxmax())
    rows = good[good["arm"] == arm]
    t = stats.full_budget(study.trials, task)
    t = t[t["arm"] == arm]
    params = {}
    if len(t):
        first = t.iloc[0]
        params = {c[len("params."):]: first[c] for c in study.param_columns
                  if not _missing(first[c]) and t[c].nunique(dropna=True) <= 1
                  and c[len("params."):] not in figs.NOT_HYPERPARAMS}
    return Best(task, metric, "method", arm, float(means.max()),
                rows[["seed", "fold", *mcols]].sort_values(["seed", "fold"]).reset_index(
                    drop=True), params, [], list(t["run_id"]))


def _missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def _telemetry_key(study: Study, run_ids: set[str], suffix: str) -> str | None:
    key = telemetry_metric(suffix)
    return key if any(key in study.metric_keys.get(r, ()) for r in run_ids) else None


# --- analysis steps -----------------------------------------------------------------------

def _representative_runs(study: Study, task: str) -> dict[str, pd.Series]:
    """Per arm, the completed run whose predictions go into the KM figure.

    One run per seed (an ablation grid): the lowest seed, so nothing is picked on the outcome.
    Several runs per seed (a search): the best final metric, said so in the figure's notes.
    """
    t = stats.full_budget(study.trials, task)
    out = {}
    for arm, g in t.groupby("arm"):
        if g["seed"].duplicated().any():
            g = g.sort_values("final", ascending=False)
        else:
            g = g.sort_values("seed")
        if len(g):
            out[str(arm)] = g.iloc[0]
    return out


def run_compare(experiment: str, tracking_uri: str | None = None, out: Path | str | None = None,
                *, candidate: str = "cgcoord", baselines: list[str] | None = None,
                metrics: list[str] | None = None, reference: str | None = None,
                n_boot: int = 10_000, seed: int = 0, log_to_mlflow: bool = True,
                parent_run_id: str | None = None,
                progress: Callable[[str], None] = _stderr) -> Report:
    """The whole analysis of one study; see the module docstring for what is written."""
    progress(f"reading experiment '{experiment}'")
    study = load_study(experiment, tracking_uri, parent_run_id=parent_run_id)
    return analyse(study, out if out is not None else Path("reports") / experiment,
                   candidate=candidate, baselines=baselines, metrics=metrics,
                   reference=reference, n_boot=n_boot, seed=seed, log_to_mlflow=log_to_mlflow,
                   progress=progress)


def analyse(study: Study, out: Path | str, *, candidate: str = "cgcoord",
            baselines: list[str] | None = None, metrics: list[str] | None = None,
            reference: str | None = None, n_boot: int = 10_000, seed: int = 0,
            log_to_mlflow: bool = True, progress: Callable[[str], None] = _stderr) -> Report:
    """``run_compare`` on a study already read (or built in memory)."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev.ensure_roles(study)
    t = study.trials
    by_status = ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items())
    progress(f"{len(t)} trial runs ({by_status}), tasks: {', '.join(study.tasks)}")
    result = Report(out_dir, study, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                    stats.failed_trials(t), notes=list(study.notes))
    result.parent_params = parent_params(study)
    result.reference = reference or study.parent_tags.get(Tags.REFERENCE)
    by = "variant" if "variant" in study.folds.columns else "arm"
    if by == "variant" and result.reference and candidate not in set(study.folds["arm"]):
        candidate = result.reference  # a variants study: methods are variants, not rules
    comparisons, methods, missing, claim_tables = [], [], [], []
    for task in study.tasks:
        task_metrics = metrics or [study.metric_for(task)]
        for metric in task_metrics:
            if metric not in study.folds.columns:
                logged = study.fold_metric_names
                result.skipped.append(f"{task}/{metric}: no run logged per-fold values of "
                                      f"{metric} (per-fold metrics logged: "
                                      f"{', '.join(logged) or 'none'})")
                if logged:  # a metric this study does not have: nothing to say about it
                    continue
                study.folds[metric] = np.nan  # every run failed: list them all as missing
            progress(f"{task}/{metric}: per-method summary and paired statistics")
            # the model's rows on the baselines' folds (README, "Evaluation modes")
            paired, result.model_rows[task] = ev.comparison_folds(study, task, metric)
            nested = ev.is_nested(study)
            summary_folds = paired if nested else study.folds
            summary_trials = t[t["run_id"].isin(paired["run_id"])] if nested else t
            methods.append(stats.describe_methods(summary_folds, summary_trials, metric, task))
            missing.append(stats.missing_keys(summary_folds, summary_trials, metric, task))
            comp = stats.compare_arms(paired, metric, task,
                                      candidate=ev.pick_candidate(paired, candidate),
                                      baselines=baselines, n_boot=n_boot, seed=seed)
            comparisons.append(comp.table)
            result.skipped += comp.notes
            fr = multi.friedman(paired, metric, task)
            if fr is not None:
                progress(f"{task}/{metric}: Friedman test over {fr.n_blocks} blocks, "
                         f"{len(fr.arms)} methods")
                result.multi[(task, metric)] = fr
                if fr.excluded:
                    result.skipped.append(f"{task}/{metric}: left out of the Friedman test "
                                          f"(several runs per (seed, fold)): "
                                          f"{', '.join(fr.excluded)}")
                if fr.n_blocks >= multi.MIN_BLOCKS and np.isfinite(fr.statistic):
                    result.figures[f"{task}_{metric}_cd"] = figs.cd_diagram(
                        fr, out_dir / f"{task}_cd_{metric}.png")
            if result.reference:
                cl = claims_mod.claims_table(ev.role_view(study).folds, metric, task,
                                             result.reference,
                                             by=by, n_boot=n_boot, seed=seed)
                claim_tables.append(cl.table)
                result.skipped += cl.notes
        best = best_configuration(ev.role_view(study), task, study.metric_for(task))
        if best is not None:
            result.best[task] = best
        _task_figures(result, task, task_metrics[0], candidate, seed, progress)
    result.comparison = (pd.concat(comparisons, ignore_index=True) if comparisons
                         else pd.DataFrame(columns=stats.COMPARISON_COLUMNS))
    result.methods = pd.concat(methods, ignore_index=True) if methods else pd.DataFrame()
    result.missing = pd.concat(missing, ignore_index=True) if missing else pd.DataFrame(
        columns=["task", "metric", "arm", "seed", "fold", "reason", "run_id"])
    result.claims = (pd.concat(claim_tables, ignore_index=True) if claim_tables
                     else pd.DataFrame(columns=claims_mod.CLAIM_COLUMNS))
    _write(result)
    if log_to_mlflow:
        _log(result, progress)
    progress(f"report: {out_dir / 'report.md'} and {out_dir / 'report.html'}")
    return result


def _task_figures(result: Report, task: str, fold_metric: str, candidate: str, seed: int,
                  progress: Callable[[str], None]) -> None:
    """Figures of one task, one per question. Per-fold values use ``fold_metric``; trial-level
    figures use the trial's final value, which is of the task's selection metric."""
    study, out = ev.role_view(result.study), result.out_dir  # the search's trials
    metric = study.metric_for(task)
    t = study.trials
    finished = stats.full_budget(t, task)
    stopped = stats.stopped_early(t, task)
    # per-fold figure: what the paired table compares (the model's rows and the baselines)
    task_folds, _ = ev.comparison_folds(result.study, task, fold_metric)
    searched_arms = set(stats.duplicated_arms(task_folds, fold_metric))
    arms = sorted((a for a in task_folds["arm"].unique() if a not in searched_arms),
                  key=lambda a: (a == candidate, a))
    if searched_arms:
        left = ", ".join(sorted(searched_arms))
        result.skipped.append(f"{task}: per-fold figure leaves out {left} (several runs "
                              f"per (seed, fold))")
    if arms and stats.usable(task_folds[task_folds["arm"].isin(arms)], fold_metric).shape[0]:
        progress(f"{task}: per-fold figure")
        result.figures[f"{task}_per_fold"] = figs.per_fold(
            task_folds, fold_metric, task, arms, out / f"{task}_per_fold_{fold_metric}.png",
            selection=_selection_short(t, task))
    params = figs.varying_numeric(pd.concat([finished, stopped]), SENSITIVITY_PARAMS)
    for p in params:
        progress(f"{task}: sensitivity to {p}")
        result.figures[f"{task}_sensitivity_{p}"] = figs.sensitivity(
            t, study.folds, metric, task, p, out / f"{task}_sensitivity_{p}.png", seed=seed)
    if not params:
        result.skipped.append(f"{task}: sensitivity curves skipped: none of "
                              f"{', '.join(SENSITIVITY_PARAMS)} took 3 or more values")
    if not is_search(study, task):
        result.skipped.append(f"{task}: optimisation history not drawn: a grid study (the order "
                              f"of its trials carries no information)")
    elif len(finished) + len(stopped) >= 2:
        progress(f"{task}: optimisation history")
        result.figures[f"{task}_history"] = figs.history(t, metric, task,
                                                         out / f"{task}_history.png")
    else:
        result.skipped.append(f"{task}: optimisation history skipped: fewer than 2 finished "
                              f"trials")
    if len(finished) >= MIN_TRIALS_IMPORTANCE:
        progress(f"{task}: fANOVA parameter importance")
        try:
            res = figs.importance(t, metric, task, out / f"{task}_importance.png", seed=seed,
                                  params=study.searched or None)
        except (ValueError, RuntimeError) as exc:  # e.g. every trial has the same value
            res = None
            result.notes.append(f"{task}: fANOVA failed: {exc}")
        if res is None:
            result.skipped.append(f"{task}: parameter importance skipped: fewer than 2 "
                                  f"hyper-parameters vary across completed trials")
        else:
            result.figures[f"{task}_importance"] = res
    else:
        result.skipped.append(f"{task}: parameter importance skipped: fewer than "
                              f"{MIN_TRIALS_IMPORTANCE} completed trials")
    _km(result, ev.role_view(result.study, (Roles.TRIAL, Roles.BASELINE)), task, progress)
    # curves: every completed run (a completed run with a missing fold still has its curves)
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
    for suffix, label in TELEMETRY_PANELS.items():
        key = keys[suffix]
        tele = hist[hist["key"] == key] if key else hist.iloc[0:0]
        if len(tele):
            result.figures[f"{task}_telemetry_{suffix}"] = figs.epoch_curves(
                tele, [(key, label)], task, "completed runs; each epoch: mean over steps "
                "and folds",
                out / f"{task}_telemetry_{suffix}.png")
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
            "completed runs; each epoch: mean over folds", out / f"{task}_learning_curves.png")


SURVIVAL_COLUMNS = {"time", "event", "risk", "fold"}  # a time-to-event task's predictions


def _predictions(study: Study, run_id: str) -> pd.DataFrame | None:
    try:
        return load_predictions(study, run_id)
    except MlflowException:  # a run the store no longer has: no predictions to draw
        return None


def _km(result: Report, study: Study, task: str, progress: Callable[[str], None]) -> None:
    """Kaplan–Meier of each arm's risk groups, for any task whose predictions carry survival
    times (decided from the logged predictions, not from the task's name)."""
    loaded = {arm: (run, _predictions(study, run["run_id"]))
              for arm, run in _representative_runs(study, task).items()}
    if not any(p is not None and set(p.columns) >= SURVIVAL_COLUMNS for _, p in loaded.values()):
        result.skipped.append(f"{task}: Kaplan–Meier skipped: no run's predictions carry "
                              f"survival times (time, event, risk)")
        return
    progress(f"{task}: Kaplan–Meier from predictions.parquet")
    preds, used, labels = {}, [], {}
    for arm, (run, p) in loaded.items():
        if p is None or not set(p.columns) >= SURVIVAL_COLUMNS:
            result.notes.append(f"{task}: {arm}: run {run['run_id']} has no survival "
                                f"predictions.parquet (time, event, risk, fold)")
            continue
        seed_note = f"seed {run['seed']}"
        if "seed" in p and p["seed"].nunique() > 1:  # one patient once: keep the lowest seed
            p = p[p["seed"] == p["seed"].min()]
            seed_note = f"seed {p['seed'].iloc[0]} of the trial's seeds"
        preds[arm] = p
        labels[arm] = f"trial {run['trial_id']}, {seed_note}"
        used.append(f"{arm}: trial {run['trial_id']} ({seed_note}, run {run['run_id']})")
    if not preds:
        result.skipped.append(f"{task}: Kaplan–Meier skipped: no predictions.parquet with "
                              f"time/event/risk")
        return
    res = figs.kaplan_meier(preds, task, result.out_dir / f"{task}_kaplan_meier.png", labels)
    res.stats["runs"] = used
    result.figures[f"{task}_km"] = res


# --- outputs ------------------------------------------------------------------------------

def _friedman_csv(r: Report) -> pd.DataFrame:
    frames = []
    for fr in r.multi.values():
        tab = fr.table()
        tab["friedman_chi2"], tab["friedman_p"] = fr.statistic, fr.p
        tab["n_dropped_blocks"], tab["nemenyi_cd"] = fr.n_dropped, fr.cd
        frames.append(tab)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _write(r: Report) -> None:
    out = r.out_dir
    paths = {"comparison.csv": r.comparison, "methods.csv": r.methods, "missing.csv": r.missing}
    if r.reference:
        paths["claims.csv"] = r.claims
    if r.multi:
        paths["friedman.csv"] = _friedman_csv(r)
    if not r.update_effect.empty:
        paths["update_effect.csv"] = r.update_effect
    if r.best:
        paths["best_per_fold.csv"] = pd.concat(
            [b.per_fold.assign(task=b.task, best=b.label) for b in r.best.values()],
            ignore_index=True)
    for name, df in paths.items():
        df.to_csv(out / name, index=False)
        r.files.append(out / name)
    doc = build_document(r)
    (out / "report.md").write_text(doc.to_markdown(), encoding="utf-8")
    (out / "report.html").write_text(doc.to_html(), encoding="utf-8")
    r.files += [out / "report.md", out / "report.html"]
    r.files += [f.path for f in r.figures.values()]


def _log(r: Report, progress: Callable[[str], None]) -> None:
    if r.study.parent_run_id is None:
        progress("no parent run: report not logged to MLflow")
        return
    client = MlflowClient(tracking_uri=r.study.tracking_uri)
    try:
        for path in r.files:
            client.log_artifact(r.study.parent_run_id, str(path), "report")
    except Exception as exc:  # the report on disk is still complete
        progress(f"WARNING: could not log the report to MLflow run {r.study.parent_run_id}: {exc}")
        return
    r.logged_to = r.study.parent_run_id
    progress(f"logged {len(r.files)} files to run {r.study.parent_run_id} under report/")


# --- the report ---------------------------------------------------------------------------

def _study_rows(r: Report) -> pd.DataFrame:
    """What the parent run records, known items first ("not recorded" when absent)."""
    s, params = r.study, r.parent_params
    t = s.trials[~s.trials["superseded"].astype(bool)]
    rows = []

    def from_trials(name: str) -> str | None:
        if name == f"{STUDY_PARAM}epochs" and "params.epochs" in t:
            v = sorted(pd.to_numeric(t["params.epochs"], errors="coerce").dropna().astype(int)
                       .unique())
            return ", ".join(map(str, v)) if v else None
        if name == f"{STUDY_PARAM}folds":
            n = sorted({len(f) for f in t["folds"] if len(f)}) if "folds" in t else []
            return ", ".join(map(str, n)) if n else None
        if name == f"{STUDY_PARAM}seeds":
            v = sorted(int(x) for x in t["seed"].unique() if int(x) >= 0)
            return ", ".join(map(str, v)) if v else None
        return None

    for key, what in PARENT_PARAMS:
        if key in params:
            value = params[key]
        else:
            seen = from_trials(key)
            value = NOT_RECORDED + (f" on the parent run (trials: {seen})" if seen else "")
        rows.append({"what": what, "value": value, "recorded as": f"`{key}`"})
    try:
        used = int(params[f"{COHORT_PARAM}genes_tumour"]) + int(params[f"{COHORT_PARAM}genes_tme"])
        total = int(params[f"{COHORT_PARAM}genes_table"])
        rows.append({"what": "genes reaching the model", "value": f"{used} of {total} "
                     f"({used / total:.1%})" if total else str(used), "recorded as": "(derived)"})
    except (KeyError, ValueError):
        pass
    known = {k for k, _ in PARENT_PARAMS}
    extra = (k for k in params if k.startswith((STUDY_PARAM, COHORT_PARAM)) and k not in known)
    for key in sorted(extra):
        rows.append({"what": key.split(".", 1)[1].replace("_", " "), "value": params[key],
                     "recorded as": f"`{key}`"})
    for tag, what in PARENT_TAGS:
        if tag in s.parent_tags and s.parent_tags[tag] != "":
            rows.append({"what": what, "value": s.parent_tags[tag], "recorded as": f"`{tag}`"})
    for task in s.tasks:
        rows.append({"what": f"selection rule ({task})", "value": selection_rule(t, task),
                     "recorded as": "trial param `patience`"})
    return pd.DataFrame(rows)


def _effect_cols(df: pd.DataFrame, mean: str, lo: str, hi: str) -> tuple[list[str], list[int]]:
    """Formatted effects and the decimals each row needs."""
    texts, decs = [], []
    for m, a, b in zip(df[mean], df[lo], df[hi], strict=True):
        texts.append(fmt.effect(m, a, b))
        w = float(b) - float(a) if np.isfinite([float(a), float(b)]).all() else None
        decs.append(max(3, fmt.decimals_for(width=w, value=m)))
    return texts, decs


def _conclusion(r: Report) -> list[str]:
    lines = []
    # a pair the claims table states (a variants study) is concluded there, once
    claimed = {(c.task, c.metric, c.reference, c.variant) for c in r.claims.itertuples(index=False)}
    for row in r.comparison.itertuples(index=False):
        if (row.task, row.metric, row.method, row.baseline) in claimed:
            continue
        if row.n_pairs == 0:
            lines.append(f"**{row.method} vs {row.baseline}** ({row.task}, {row.metric}): no "
                         f"(seed, fold) result exists for both; not compared.")
            continue
        text = (f"**{row.method} vs {row.baseline}** ({row.task}, {row.metric}, "
                f"{row.n_pairs} paired seed × fold results): mean difference "
                f"{fmt.effect(row.mean_diff, row.ci_low, row.ci_high, level='95% bootstrap CI')}"
                f"; {row.method} was better on {row.n_wins} of {row.n_pairs} pairs; Wilcoxon "
                f"p {fmt.p_eq(row.wilcoxon_p)}, Holm-adjusted p {fmt.p_eq(row.holm_p)}. ")
        if np.isfinite(row.holm_p) and row.holm_p < 0.05:
            word = "higher" if row.mean_diff > 0 else "lower"
            text += (f"The difference is significant at the 5% level after Holm correction: on "
                     f"this cohort {row.method} scored {word} than {row.baseline}.")
        elif np.isfinite(row.holm_p):
            text += (f"Not significant at the 5% level after Holm correction: these results do "
                     f"not show a difference between {row.method} and {row.baseline} (which is "
                     f"not evidence that they are equal).")
        else:
            text += f"No test p-value ({row.note})."
        if row.n_missing_pairs:
            text += (f" {row.n_missing_pairs} result(s) without a partner were left out (see "
                     f"_Missing / failed_).")
        lines.append(text)
    for task, what in r.model_rows.items():
        if what == ev.GRID_ROWS or r.comparison.empty or \
                not (r.comparison["task"] == task).any():
            continue
        if what == ev.NESTED_ROWS:
            lines.append(f"**{task}**: the model's values above are the outer folds of nested "
                         f"evaluation (each scored by a configuration chosen without it), so "
                         f"the comparison with the baselines is unbiased by the search.")
        else:
            lines.append(f"**{task}**: the model's values above are its best-of-search trial's, "
                         f"chosen on the same folds they are scored on: optimistic, so a "
                         f"difference in the model's favour overstates it (the baselines were "
                         f"not searched). `evaluation: nested` gives an unbiased comparison.")
    for (task, metric), fr in r.multi.items():
        if not np.isfinite(fr.p):
            lines.append(f"**All {len(fr.arms)} methods** ({task}, {metric}): {fr.note}.")
            continue
        best = fr.mean_ranks.index[0]
        verdict = ("the methods' ranks differ" if fr.p < fr.alpha
                   else "no method ranks consistently better")
        lines.append(f"**All {len(fr.arms)} methods** ({task}, {metric}, {fr.n_blocks} complete "
                     f"(seed, fold) blocks): Friedman p {fmt.p_eq(fr.p)}: {verdict}; best mean "
                     f"rank {best} ({fr.mean_ranks.iloc[0]:.2f}).")
    for _, row in r.claims.iterrows():
        lines.append(claims_mod.verdict_sentence(row))
    return lines


def _pairs_table(c: pd.DataFrame) -> pd.DataFrame:
    texts, decs = _effect_cols(c, "mean_diff", "ci_low", "ci_high")
    shown = pd.DataFrame({
        "task": c["task"], "metric": c["metric"], "method": c["method"],
        "baseline": c["baseline"], "pairs": c["n_pairs"],
        "mean (method)": [fmt.value(v, decimals=d) for v, d in zip(c["mean_method"], decs,
                                                                    strict=True)],
        "mean (baseline)": [fmt.value(v, decimals=d) for v, d in zip(c["mean_baseline"], decs,
                                                                      strict=True)],
        "difference (95% CI)": texts, "Wilcoxon p": c["wilcoxon_p"].map(fmt.pvalue),
        "Holm p": c["holm_p"].map(fmt.pvalue),
        "win rate": c["win_rate"].map(lambda v: fmt.value(v, decimals=2)),
        "note": c["note"].fillna("")})
    return shown


def _claims_table(c: pd.DataFrame) -> pd.DataFrame:
    texts, _ = _effect_cols(c, "mean_diff", "ci_low", "ci_high")
    setting = c["setting"].fillna("") if "setting" in c else pd.Series("", index=c.index)
    shown = {"setting": setting} if (setting != "").any() else {}
    return pd.DataFrame({
        **shown, "claim": c["claim"], "variant": c["variant"], "pairs": c["n_pairs"],
        "reference − variant (95% CI)": texts, "Wilcoxon p": c["wilcoxon_p"].map(fmt.pvalue),
        "Holm p": c["holm_p"].map(fmt.pvalue),
        "win rate": c["win_rate"].map(lambda v: fmt.value(v, decimals=2)),
        "verdict": c["verdict"].map(lambda v: f"**{v}**"),
        "smallest detectable difference": c["mdd"].map(fmt.sig),
        "smallest attainable p": c["min_p"].map(lambda v: fmt.sig(v, 2))})


def build_document(r: Report) -> Doc:
    """The report as blocks (rendered to report.md and report.html)."""
    s = r.study
    t = s.trials
    latest = t[~t["superseded"].astype(bool)]
    counts = ", ".join(f"{n} {k.lower()}" for k, n in latest["status"].value_counts().items())
    doc = Doc(f"Study report: {s.name}")
    doc.bullets([
        f"Tracking URI: `{s.tracking_uri}` — experiment id {s.experiment_id}, parent run "
        f"`{s.parent_run_id or 'none'}`",
        f"Tasks: {', '.join(s.tasks)}; trials: {len(latest)} ({counts})"
        + (f"; {len(t) - len(latest)} earlier attempt(s) retried" if len(t) > len(latest)
           else ""),
        f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"`python -m analysis.compare`"])

    doc.heading("Study")
    doc.para("What the study's parent run records (params `study.*` and `cohort.*`, tags "
             "`ks.*`); items the study did not record say so, so a reduced run cannot pass for "
             "a full one.")
    doc.table(_study_rows(r))

    doc.heading("Conclusion")
    lines = _conclusion(r)
    if not lines:
        doc.para("No paired comparison could be made (see _Skipped / notes_ below), so this report "
                 "makes no claim about which method is better.")
    else:
        doc.bullets(lines)
    stopped = stats.stopped_early(t)
    budget = ("Only trials that ran their full budget (status COMPLETED) enter the summaries, "
              "paired tests, ranks, parameter importance and curves.")
    if len(stopped):
        budget += (f" {len(stopped)} trial(s) stopped early by the scheduler (ASHA) were judged "
                   f"after fewer epochs: they are counted and listed, drawn hollow in the "
                   f"sensitivity and history figures, and left out of every number above.")
    doc.para(budget)
    doc.para("Caveat: cross-validation folds and seeds reuse the same patients, so the pairs are "
             "not fully independent; p-values and intervals are approximate (typically "
             "optimistic) and describe this cohort and these settings only.")

    if r.reference:
        doc.heading("Claims")
        doc.para(f"One row per variant against the reference variant **{r.reference}** on "
                 "identical (seed, fold) keys: difference = reference − variant (> 0 supports "
                 "the claim); CI: percentile bootstrap of the mean difference; p: two-sided "
                 "Wilcoxon signed-rank, Holm-adjusted across the rows. Verdict: _supported_ "
                 "(Holm p < 0.05 and the difference in the claimed direction), _contradicted_ "
                 "(significant in the opposite direction), _not supported at this sample size_ "
                 "otherwise, which is not evidence of no effect. Smallest detectable difference: "
                 "paired normal approximation (z₀.₉₇₅ + z₀.₈₀) · sd_diff / √n, the true mean "
                 "difference these pairs would detect with 80% power; smallest attainable p: "
                 "2 / 2ⁿ for n non-zero pairs (exact Wilcoxon floor, before Holm). Also in "
                 "`claims.csv`.")
        if r.claims.empty:
            doc.para("_No claim could be tested (see Skipped)._")
        else:
            doc.table(_claims_table(r.claims))
            doc.bullets([f"{row.variant}: {row.power_note}" for row in
                         r.claims.itertuples(index=False)])

    _best_section(doc, r)

    doc.heading("Per-method results")
    doc.para("Mean, SD (ddof = 1) and median over every (seed, fold) value of completed trials; "
             "trials of that method by their latest attempt (completed / stopped early / failed "
             "or unfinished); stopped-early trials are counted, not averaged. Also in "
             "`methods.csv`."
             + (" In a search a method's row pools every configuration it was tried with; the "
                "chosen one is under _Best configuration_." if any(
                    is_search(s, task) for task in s.tasks) else ""))
    if not r.methods.empty:
        cols = ["task", "metric", "arm", "trials", "completed", "stopped_early", "failed",
                "n_values", "mean", "sd", "median", "min", "max"]
        table = r.methods[cols].rename(columns={"arm": "method"})
        doc.table(table, {c: fmt.value for c in ("mean", "sd", "median", "min", "max")})

    doc.heading("Paired comparison")
    doc.para("Difference = method − baseline on identical (seed, fold) keys (> 0: the method is "
             "better), printed to 2 significant digits of its CI width. CI: percentile bootstrap "
             "of the mean difference (10,000 resamples unless set otherwise, fixed seed). p: "
             "two-sided Wilcoxon signed-rank (zero differences dropped); Holm: Holm–Bonferroni "
             "over the comparisons of the same task and metric. Win rate: share of pairs where "
             "the method is strictly better. Means over the paired keys only. All columns in "
             "`comparison.csv`.")
    for task, what in r.model_rows.items():
        doc.para(f"{task}: the model is represented by {what}; baselines (if any) are fit on "
                 f"each fold's training part and scored on the same folds.")
    if not r.comparison.empty:
        doc.table(_pairs_table(r.comparison))
    else:
        doc.para("_No paired comparison (see Skipped)._")

    _multi_section(doc, r)
    _update_section(doc, r)
    _figure_sections(doc, r)
    _missing_section(doc, r)
    doc.heading("Files")
    doc.para("`report.md`, `report.html` (the same report, self-contained), `comparison.csv` "
             "(one row per comparison), `methods.csv` (one row per task, metric and method), "
             "`missing.csv`, and where they apply `claims.csv`, `friedman.csv`, "
             "`update_effect.csv`, `best_per_fold.csv`, and the PNG figures above; the same "
             "files are logged under `report/` of the study's parent MLflow run.")
    return doc


def _best_section(doc: Doc, r: Report) -> None:
    doc.heading("Best configuration")
    mode = evaluation_mode(r.study, r.parent_params)
    doc.para("**Best-of-search is optimistically biased**: the configuration below was chosen on "
             "the same validation folds it is scored on, so its score overstates what to expect "
             "on new patients. Use it to pick a configuration, not to report performance"
             + (" (see the nested estimate below)." if mode == "nested" else
                "; an unbiased number needs nested evaluation (`evaluation: nested`)."))
    if not r.best:
        doc.para("_No completed trial: no best configuration._")
    for task, b in r.best.items():
        what = (f"trial `{b.label}` (run `{b.run_ids[0]}`)" if b.kind == "trial"
                else f"method **{b.label}** (highest mean over its (seed, fold) values)")
        sel = selection_rule(r.study.trials, task)
        sel = (f"each fold's value is taken at the {sel}" if not sel.startswith(NOT_RECORDED)
               else "how each fold's epoch was selected is not recorded (no trial logged "
                    "the param `patience`)")
        doc.heading(f"{task}: {b.metric} {b.value:.4f}", level=3)
        doc.para(f"Best {what}: mean {b.metric} {b.value:.4f} over {len(b.per_fold)} "
                 f"(seed, fold) value(s); {sel}.")
        if b.params:
            keys = b.searched + sorted(k for k in b.params if k not in b.searched)
            items = [f"`{k}={_param_text(b.params[k])}`" for k in keys]
            doc.para(("Searched: " + ", ".join(items[:len(b.searched)]) + ". Fixed: "
                      if b.searched else "Parameters: ") + ", ".join(items[len(b.searched):]))
        pf = b.per_fold.copy()
        mcols = [c for c in pf.columns if c not in ("seed", "fold")]
        if len(pf) > 1:
            summary = {"seed": "mean ± sd", "fold": ""}
            for c in mcols:
                v = pf[c].astype(float)
                summary[c] = (f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if v.notna().sum() > 1
                              else fmt.value(v.mean(), decimals=4))
            pf = pd.concat([pf.astype(object), pd.DataFrame([summary])], ignore_index=True)
        doc.table(pf, {c: (lambda v: v if isinstance(v, str) else fmt.value(v, decimals=4))
                       for c in mcols})
        if mode == "nested":
            _nested_block(doc, r, task, b)


def _nested_block(doc: Doc, r: Report, task: str, b: Best) -> None:
    """The nested estimate beside best-of-search (README, "Evaluation modes")."""
    nested = nested_estimate(r.study, task, b.metric)
    if nested is None:
        doc.para("This study ran nested evaluation (`ks.evaluation` = nested), but the report "
                 "cannot read its nested estimate yet: no completed outer-fold run "
                 "(`ks.role` = outer) was found (the study may still be running, or its refits "
                 "failed); the number above remains the optimistic best-of-search value.")
        return
    doc.para(f"**Nested estimate (unbiased)** of {b.metric}, one row per outer fold, beside the "
             f"best-of-search {b.value:.4f} above. Each outer fold's search ran on inner folds "
             "of its training part only; the configuration it chose was retrained on the whole "
             "training part and scored once on the outer fold (`value`). `best-of-search` is "
             "that configuration's own inner score: selected on the inner folds it is scored on "
             "(optimistic), from models trained on the smaller inner training parts.")
    four = {c: (lambda v: v if isinstance(v, str) else fmt.value(v, decimals=4))
            for c in ("value", "best-of-search")}
    rest = {c: (lambda v: v if isinstance(v, str) else _param_text(v))
            for c in nested.columns if c not in four and c not in ("outer_fold", "method",
                                                                   "chosen trial")}
    doc.table(nested, {**four, **rest})
    v = nested["value"].astype(float)
    inner = (pd.to_numeric(nested["best-of-search"], errors="coerce")
             if "best-of-search" in nested else None)
    text = (f"Nested estimate: {b.metric} {v.mean():.4f}"
            + (f" ± {v.std(ddof=1):.4f} (sd over {v.notna().sum()} outer folds)"
               if v.notna().sum() > 1 else ""))
    if inner is not None and inner.notna().any():
        text += (f"; best-of-search: {inner.mean():.4f} (mean of the chosen configurations' "
                 f"inner scores), {b.value:.4f} (the single best inner trial). The nested "
                 f"estimate is the unbiased one: each outer fold was scored once, by a "
                 f"configuration chosen without it; the best-of-search numbers were selected on "
                 f"the data they are scored on.")
    doc.para(text + " The paired comparison with the baselines uses the outer folds' values.")


def _param_text(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def _multi_section(doc: Doc, r: Report) -> None:
    if not r.multi:
        return
    doc.heading("All methods together: Friedman test and mean ranks")
    doc.para("Blocks are the (seed, fold) keys; within each block the methods are ranked "
             "(1 = best, ties share the average rank). Friedman test (scipy) over complete "
             "blocks only (a block that lacks one method cannot be ranked); post-hoc: Nemenyi "
             "test of every pair of mean ranks (scikit-posthocs); CD = q₀.₉₅(k, ∞)/√2 · "
             "√(k(k+1)/(6N)), the smallest difference of mean ranks Nemenyi calls significant. "
             "Also in `friedman.csv`.")
    for (task, metric), fr in r.multi.items():
        doc.heading(f"{task}, {metric}: {len(fr.arms)} methods", level=3)
        text = (f"{fr.n_blocks} complete (seed, fold) blocks used, {fr.n_dropped} dropped"
                + (" (" + "; ".join(f"seed {d.seed} fold {d.fold}: no {d.missing}"
                                    for d in fr.dropped.itertuples(index=False)) + ")"
                   if fr.n_dropped else "") + ". ")
        if np.isfinite(fr.p):
            text += (f"Friedman χ² = {fr.statistic:.3g} ({len(fr.arms) - 1} df), p "
                     f"{fmt.p_eq(fr.p)}; Nemenyi CD = {fr.cd:.2f} at α = {fr.alpha:g}.")
        else:
            text += fr.note + "."
        doc.para(text)
        tab = fr.table().rename(columns={"arm": "method", "differs_from":
                                         "differs (Nemenyi p < 0.05) from"})
        doc.table(tab.drop(columns=["task", "metric"]),
                  {"mean_rank": lambda v: fmt.value(v, decimals=2), "mean": fmt.value,
                   "sd": fmt.value})
        if np.isfinite(fr.p):
            ph = fr.posthoc.copy()
            ph.insert(0, "Nemenyi p", ph.index)
            doc.table(ph.reset_index(drop=True), {c: fmt.pvalue for c in fr.posthoc.columns})
        fig = r.figures.get(f"{task}_{metric}_cd")
        if fig is not None:
            doc.image(fig.path, "critical-difference diagram")


def _update_section(doc: Doc, r: Report) -> None:
    e = r.update_effect
    if e.empty:
        return
    doc.heading("Effect on the update")
    doc.para("How much each method changed the coordinated gradient, from the telemetry the "
             "trials log per epoch (means over the epoch's steps and folds): each completed "
             "run's mean over epochs, then mean ± SD over runs. A rule that changes the update by "
             "a few percent cannot be expected to move the metric; a null result with large "
             "changes says the changes did not matter. Also in `update_effect.csv`.")
    rows = []
    for (task, arm), g in e.groupby(["task", "arm"], sort=True):
        row: dict[str, object] = {"task": task, "method": arm,
                                  "runs": int(g["n_runs"].max())}
        for key in dict.fromkeys(e["key"]):
            label = multi.UPDATE_LABELS.get(key, key)
            k = g[g["key"] == key]
            row[label] = ("–" if k.empty else fmt.value(k["mean"].item(), decimals=4)
                          + (f" ± {fmt.value(k['sd'].item(), decimals=4)}"
                             if np.isfinite(k["sd"].item()) else ""))
        rows.append(row)
    doc.table(pd.DataFrame(rows))


_SECTIONS = [
    ("_per_fold", "Per-fold results", "Each marker is one (seed, fold) of a completed trial, "
     "spread slightly by seed and fold; grey lines join the same (seed, fold) across methods, so "
     "crossing lines show where methods swap order; black diamonds: mean ± 95% t-interval."),
    ("_history", "Optimisation history", "Trials in start order; filled: completed, hollow: "
     "stopped early by the scheduler (their last value); the black line is the best completed "
     "value so far."),
    ("_importance", "Parameter importance (fANOVA)", "Optuna's FanovaImportanceEvaluator on a "
     "study rebuilt from the completed trials (distributions inferred from observed values); "
     "trials stopped early are left out."),
    ("_km", "Survival: Kaplan–Meier by predicted risk", "Patients split at the median predicted "
     "risk of their validation fold, pooled over folds; log-rank test (lifelines). The p-value "
     "says how well one run's validation predictions separate patients; it is not a test "
     "between methods (that is the paired comparison above)."),
    ("_learning", "Validation curves", "Mean validation metric over folds per epoch, completed "
     "runs; line: mean over runs, band: ± 1 SD."),
]


def _figure_sections(doc: Doc, r: Report) -> None:
    for task in r.study.tasks:
        for suffix, title, text in _SECTIONS[:1]:
            _fig(doc, r, f"{task}{suffix}", f"{title} — {task}", text)
        for key, fig in r.figures.items():
            if key.startswith(f"{task}_sensitivity_"):
                p = key[len(f"{task}_sensitivity_"):]
                text = ("Final metric of each completed trial (filled) against the parameter, "
                        "with the mean per bin (one bin per distinct value when there are at "
                        "most 8, else quantile bins)")
                text += ("; band: 95% percentile-bootstrap interval of the bin mean, resampling "
                         "folds" if fig.stats.get("band") else "; no band (no per-fold values)")
                n_stop = len(fig.stats.get("stopped", []))
                if n_stop:
                    text += (f". Hollow: {n_stop} trial(s) stopped early by the scheduler at "
                             f"their last value, not in the binned mean (fewer epochs)")
                _fig(doc, r, key, f"Sensitivity to {p} — {task}", text + ".")
        for suffix, title, text in _SECTIONS[1:4]:
            _fig(doc, r, f"{task}{suffix}", f"{title} — {task}", text)
        for suffix, label in TELEMETRY_PANELS.items():
            _fig(doc, r, f"{task}_telemetry_{suffix}", f"Telemetry: {label} — {task}",
                 "Per epoch, the trainer's means over steps and folds; line: mean over "
                 "completed runs, band: ± 1 SD over runs.")
        _fig(doc, r, f"{task}{_SECTIONS[4][0]}", f"{_SECTIONS[4][1]} — {task}", _SECTIONS[4][2])


def _fig(doc: Doc, r: Report, key: str, title: str, text: str) -> None:
    fig = r.figures.get(key)
    if fig is None:
        return
    doc.heading(title)
    doc.para(text)
    doc.image(fig.path, title)
    if key.endswith("_km"):
        rows = pd.DataFrame([{"method": a, **v} for a, v in fig.stats.items() if a != "runs"])
        doc.table(rows, {"logrank_p": fmt.pvalue, "test_statistic": fmt.value})
        doc.para("Predictions used: " + "; ".join(fig.stats.get("runs", [])))
    if key.endswith("_importance"):
        doc.table(fig.data, {"importance": fmt.value})


def _group_missing(missing: pd.DataFrame) -> pd.DataFrame:
    """One line per (task, metric, method, seed, reason) listing its folds."""
    g = missing.groupby(["task", "metric", "arm", "seed", "reason", "run_id"], sort=True,
                        dropna=False)["fold"]
    out = g.agg(lambda f: ", ".join(str(int(x)) for x in sorted(f))).reset_index()
    return out[["task", "metric", "arm", "seed", "fold", "reason", "run_id"]].rename(
        columns={"arm": "method", "fold": "folds"})


def _missing_section(doc: Doc, r: Report) -> None:
    t = r.study.trials
    doc.heading("Missing / failed")
    failed = r.failed.fillna({"error": ""}).rename(columns={"arm": "method"})
    failed["error"] = failed["error"].map(lambda e: e.strip().splitlines()[-1][:300] if e else "")
    final, retried = failed[~failed["retried"]], failed[failed["retried"]]
    if final.empty:
        doc.para("No trial failed or was left unfinished.")
    else:
        doc.para("Trials that failed or never finished (their latest attempt):")
        doc.table(final.drop(columns="retried"))
    if not retried.empty:
        doc.para("Earlier attempts of trials that were retried (the retry's outcome counts):")
        doc.table(retried.drop(columns="retried"))
    stopped = stats.stopped_early(t)
    if len(stopped):
        doc.para(f"{len(stopped)} trial(s) were stopped early by the scheduler (ASHA): they did "
                 f"not reach the full budget, so they are left out of the method summaries, "
                 f"paired statistics, ranks and parameter importance, and drawn hollow (at "
                 f"their last validation value) in the sensitivity and history figures only.")
        cols = [c for c in ("task", "arm", "trial_id", "run_id", "epochs_run", "final")
                if c in stopped]
        doc.table(stopped[cols].rename(columns={"arm": "method", "final": "last value"}),
                  {"last value": lambda v: fmt.value(v, decimals=4), "epochs_run": fmt.value})
    if r.missing.empty:
        doc.para("No (method, seed, fold) result is missing.")
    else:
        doc.para("(method, seed, fold) results missing from the full grid (all methods × seeds × "
                 "folds seen), so left out of the paired statistics (also in `missing.csv`):")
        doc.table(_group_missing(r.missing))
    if r.skipped or r.notes:
        doc.heading("Skipped / notes", level=3)
        doc.bullets(r.skipped + r.notes)


# --- CLI ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description="Analyse a finished KS-Study study from MLflow: per-method tables over "
                    "completed trials, paired statistics of CG-Coord against each baseline on "
                    "identical (seed, fold) keys (Wilcoxon, bootstrap CI, win rate, Holm), the "
                    "Friedman test with mean ranks and a critical-difference diagram when there "
                    "are more than two methods, a claims table against a reference variant, "
                    "figures (per-fold, α/λ sensitivity, optimisation history for searches, "
                    "fANOVA importance, Kaplan–Meier, coordination telemetry) and a report "
                    "(report.md and a self-contained report.html), also logged to the study's "
                    "parent MLflow run.",
        epilog="Example: python -m analysis.compare --experiment ablation "
               "--tracking-uri sqlite:///studies/ablation/mlflow.db")
    p.add_argument("--experiment", required=True,
                   help="MLflow experiment name (= the study name)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI), e.g. "
                        "sqlite:///studies/NAME/mlflow.db or http://host:5000")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: ./reports/<experiment>)")
    p.add_argument("--method", default="cgcoord",
                   help="method compared against the baselines (default: cgcoord)")
    p.add_argument("--baseline", action="append", default=None,
                   help="baseline method; repeat for several (default: every other method)")
    p.add_argument("--reference", default=None,
                   help="reference variant of the claims table (default: the study's "
                        f"{Tags.REFERENCE} tag; without either, no claims table)")
    p.add_argument("--metric", action="append", default=None,
                   help="metric to compare (auc, accuracy, balanced_accuracy, f1, cindex); "
                        "repeat for several (default: the task's selection metric)")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples (10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and fANOVA (0)")
    p.add_argument("--parent-run-id", default=None,
                   help="study (parent) run to analyse when the experiment has several")
    p.add_argument("--no-log", action="store_true",
                   help="do not log the report files to the parent MLflow run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        r = run_compare(args.experiment, args.tracking_uri, args.out, candidate=args.method,
                        baselines=args.baseline, metrics=args.metric, reference=args.reference,
                        n_boot=args.n_boot, seed=args.seed, log_to_mlflow=not args.no_log,
                        parent_run_id=args.parent_run_id)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not r.comparison.empty:
        cols = ["task", "metric", "method", "baseline", "n_pairs", "mean_diff", "ci_low",
                "ci_high", "wilcoxon_p", "holm_p", "win_rate"]
        with pd.option_context("display.width", 160, "display.precision", 4):
            print(r.comparison[cols].to_string(index=False))
    print(f"report written to {r.out_dir / 'report.md'} and {r.out_dir / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
