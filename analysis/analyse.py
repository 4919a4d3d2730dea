"""Turn a finished study into evidence: tables, paired verdicts, figures and a report.

``run_compare`` reads a study from MLflow, ``analyse`` works on one already read; both write
report.md and a self-contained report.html (figures embedded), comparison.csv, methods.csv,
missing.csv (and claims.csv, friedman.csv, update_effect.csv, best_per_fold.csv,
baselines.csv when they apply) and PNG figures, and log the same files under ``report/`` of
the study's parent MLflow run.

Budgets are never mixed: summaries, paired tests, ranks, importance and curves use completed
trials only; trials the scheduler (ASHA) stopped early are counted, listed and drawn hollow in the
sensitivity plot and the optimisation history, and the report says so.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from analysis import claims as claims_mod
from analysis import evaluation as ev
from analysis import multi, recorded, stats
from analysis.evaluation import is_search, selection_rule
from analysis.figures import NOT_HYPERPARAMS, FigureResult, cd_diagram
from analysis.load import Study, load_study, param_column
from analysis.report import write_report
from analysis.stats import Design
from analysis.task_figures import task_figures
from analysis.trials_summary import best_trial
from study.record import FIT_SECONDS, Roles, Tags

#: Baseline-run tags and metric the baselines section lists when a run carries them.
BASELINE_INPUTS, BASELINE_TUNING = Tags.BASELINE_INPUTS, Tags.BASELINE_TUNING


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
    outer_fold: int | None = None  # nested evaluation: the outer fold whose search it belongs to


@dataclass(kw_only=True)
class Analysis:
    """Everything one analysis of a study produced, by name (the report is built from it)."""

    out_dir: Path
    study: Study
    # tables (each also written as CSV)
    comparison: pd.DataFrame = field(default_factory=pd.DataFrame)
    methods: pd.DataFrame = field(default_factory=pd.DataFrame)
    missing: pd.DataFrame = field(default_factory=pd.DataFrame)
    failed: pd.DataFrame = field(default_factory=pd.DataFrame)
    claims: pd.DataFrame = field(default_factory=pd.DataFrame)
    update_effect: pd.DataFrame = field(default_factory=pd.DataFrame)
    baselines: pd.DataFrame = field(default_factory=pd.DataFrame)
    multi: dict[tuple[str, str], multi.Friedman] = field(default_factory=dict)
    # per task
    best: dict[str, Best] = field(default_factory=dict)
    model_rows: dict[str, str] = field(default_factory=dict)  # task -> what stands for the model
    designs: dict[tuple[str, str], Design] = field(default_factory=dict)  # (task, metric)
    nested: dict[str, pd.DataFrame] = field(default_factory=dict)  # task -> outer-fold table
    reference: str | None = None
    figures: dict[str, FigureResult] = field(default_factory=dict)
    # what was left out and why
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # outputs
    files: list[Path] = field(default_factory=list)
    logged_to: str | None = None

    @property
    def parent_params(self) -> dict[str, str]:
        return self.study.parent_params


Report = Analysis  # the name earlier callers use


# --- what the study recorded ---------------------------------------------------------------

def nested_estimate(study: Study, task: str, metric: str) -> pd.DataFrame | None:
    """Nested evaluation's outer-fold table (analysis/evaluation.py), None when not nested."""
    return ev.nested_table(study, task, metric)


def best_configuration(study: Study, task: str, metric: str) -> Best | None:
    """Search: the completed trial with the best final metric (in the study's direction). Grid:
    the method with the best mean over its completed (seed, fold) values. Per-fold values of
    every metric."""
    f = study.folds[study.folds["task"] == task]
    mcols = [c for c in stats.metric_columns(f) if f[c].notna().any()]
    if is_search(study, task):
        b = best_trial(study, task)
        if b is None:
            return None
        rows = f[f["run_id"] == b["run_id"]]
        params = recorded.trial_params(study, b, exclude=NOT_HYPERPARAMS)
        outer = b.get("outer_fold")
        return Best(task, metric, "trial", str(b["trial_id"]), float(b["final"]),
                    rows[["seed", "fold", *mcols]].reset_index(drop=True), params,
                    [p for p in recorded.searched_params(study) if p in params],
                    [str(b["run_id"])], None if outer is None or pd.isna(outer) else int(outer))
    good = stats.usable(f, metric)
    if good.empty:
        return None
    means = good.groupby("arm")[metric].mean()
    arm = str(stats.best_label(means, study.mode))
    rows = good[good["arm"] == arm]
    t = stats.full_budget(study.trials, task)
    t = t[t["arm"] == arm]
    params = {}
    if len(t):
        params = {k: v for k, v in recorded.trial_params(study, t.iloc[0],
                                                         exclude=NOT_HYPERPARAMS).items()
                  if t[param_column(k)].nunique(dropna=True) <= 1}
    return Best(task, metric, "method", arm, float(means[arm]),
                rows[["seed", "fold", *mcols]].sort_values(["seed", "fold"]).reset_index(
                    drop=True), params, [], list(t["run_id"]))


def baseline_table(study: Study) -> pd.DataFrame:
    """One row per baseline run: what it reads (``ks.baseline_inputs``), how it was tuned
    (``ks.baseline_tuning``), its cost (metric ``fit_seconds``) and its mean score, when the
    run records them."""
    t = study.trials
    if "role" not in t:
        return pd.DataFrame()
    base = t[(t["role"] == Roles.BASELINE) & ~t["superseded"].astype(bool)]
    if base.empty:
        return pd.DataFrame()
    extra = _run_details(study, list(base["run_id"]))
    rows = []
    for r in base.itertuples(index=False):
        info = extra.get(r.run_id, {})
        rows.append({"task": r.task, "baseline": r.arm, "status": r.status,
                     "inputs": info.get(BASELINE_INPUTS, ""),
                     "tuning": info.get(BASELINE_TUNING, ""),
                     "fit seconds": info.get(FIT_SECONDS, np.nan),
                     f"final {r.metric}": r.final, "run_id": r.run_id})
    return pd.DataFrame(rows)


def _run_details(study: Study, run_ids: list[str]) -> dict[str, dict[str, object]]:
    """Tags and metrics the tidy tables leave out (baseline inputs, tuning, fit time)."""
    own = getattr(study, "run_details", None)
    if isinstance(own, dict):
        return own
    if study.tracking_uri.endswith(":memory:"):
        return {}
    client = MlflowClient(tracking_uri=study.tracking_uri)
    out: dict[str, dict[str, object]] = {}
    for rid in run_ids:
        try:
            run = client.get_run(rid)
        except Exception:  # noqa: BLE001 - the table is still useful without them
            continue
        out[rid] = {**{k: v for k, v in run.data.tags.items()
                       if k in (BASELINE_INPUTS, BASELINE_TUNING)},
                    **{k: v for k, v in run.data.metrics.items() if k == FIT_SECONDS}}
    return out


# --- the analysis -------------------------------------------------------------------------

def run_compare(experiment: str, tracking_uri: str | None = None, out: Path | str | None = None,
                *, candidate: str = "cgcoord", baselines: list[str] | None = None,
                metrics: list[str] | None = None, reference: str | None = None,
                n_boot: int = 10_000, seed: int = 0, log_to_mlflow: bool = True,
                parent_run_id: str | None = None, rope: float | None = None,
                progress: Callable[[str], None] = _stderr) -> Analysis:
    """The whole analysis of one study; see the module docstring for what is written."""
    progress(f"reading experiment '{experiment}'")
    study = load_study(experiment, tracking_uri, parent_run_id=parent_run_id)
    return analyse(study, out if out is not None else Path("reports") / experiment,
                   candidate=candidate, baselines=baselines, metrics=metrics,
                   reference=reference, n_boot=n_boot, seed=seed, log_to_mlflow=log_to_mlflow,
                   rope=rope, progress=progress)


def analyse(study: Study, out: Path | str, *, candidate: str = "cgcoord",
            baselines: list[str] | None = None, metrics: list[str] | None = None,
            reference: str | None = None, n_boot: int = 10_000, seed: int = 0,
            log_to_mlflow: bool = True, rope: float | None = None,
            progress: Callable[[str], None] = _stderr) -> Analysis:
    """``run_compare`` on a study already read (or built in memory)."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ev.ensure_roles(study)
    t = study.trials
    by_status = ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items())
    progress(f"{len(t)} runs ({by_status}), tasks: {', '.join(study.tasks)}")
    result = Analysis(out_dir=out_dir, study=study, failed=stats.failed_trials(t),
                      notes=list(study.notes),
                      reference=reference or study.parent_tags.get(Tags.REFERENCE))
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
            progress(f"{task}/{metric}: per-method summary and paired verdicts")
            design = recorded.design(study, task, metric, rope)
            result.designs[(task, metric)] = design
            # the model's rows on the baselines' folds (README, "Evaluation modes")
            paired, result.model_rows[task] = ev.comparison_folds(study, task, metric)
            nested = ev.is_nested(study)
            summary_folds = paired if nested else study.folds
            summary_trials = t[t["run_id"].isin(paired["run_id"])] if nested else t
            methods.append(stats.describe_methods(summary_folds, summary_trials, metric, task))
            missing.append(stats.missing_keys(summary_folds, summary_trials, metric, task))
            comp = stats.compare_arms(paired, metric, task,
                                      candidate=ev.pick_candidate(paired, candidate),
                                      baselines=baselines, n_boot=n_boot, seed=seed,
                                      design=design)
            comparisons.append(comp.table)
            result.skipped += comp.notes
            _friedman(result, paired, metric, task, progress)
            if result.reference:
                cl = claims_mod.claims_table(ev.role_view(study).folds, metric, task,
                                             result.reference, by=by, n_boot=n_boot, seed=seed,
                                             design=design)
                claim_tables.append(cl.table)
                result.skipped += cl.notes
        metric = study.metric_for(task)
        best = best_configuration(ev.role_view(study), task, metric)
        if best is not None:
            result.best[task] = best
        table = nested_estimate(study, task, metric)
        if table is not None:
            result.nested[task] = table
        task_figures(result, task, task_metrics[0], candidate, seed, progress)
    result.comparison = (pd.concat(comparisons, ignore_index=True) if comparisons
                         else pd.DataFrame(columns=stats.COMPARISON_COLUMNS))
    result.methods = pd.concat(methods, ignore_index=True) if methods else pd.DataFrame()
    result.missing = pd.concat(missing, ignore_index=True) if missing else pd.DataFrame(
        columns=["task", "metric", "arm", "seed", "fold", "reason", "run_id"])
    result.claims = (pd.concat(claim_tables, ignore_index=True) if claim_tables
                     else pd.DataFrame(columns=claims_mod.CLAIM_COLUMNS))
    result.baselines = baseline_table(study)
    _write_tables(result)
    write_report(result)
    if log_to_mlflow:
        _log(result, progress)
    progress(f"report: {out_dir / 'report.md'} and {out_dir / 'report.html'}")
    return result


def _friedman(result: Analysis, paired: pd.DataFrame, metric: str, task: str,
              progress: Callable[[str], None]) -> None:
    fr = multi.friedman(paired, metric, task)
    if fr is None:
        return
    progress(f"{task}/{metric}: Friedman test over {fr.n_blocks} blocks, {len(fr.arms)} methods")
    result.multi[(task, metric)] = fr
    if fr.excluded:
        result.skipped.append(f"{task}/{metric}: left out of the Friedman test (several runs "
                              f"per (seed, fold)): {', '.join(fr.excluded)}")
    if fr.n_blocks >= multi.MIN_BLOCKS and np.isfinite(fr.statistic):
        result.figures[f"{task}_{metric}_cd"] = cd_diagram(
            fr, result.out_dir / f"{task}_cd_{metric}.png")


# --- outputs ------------------------------------------------------------------------------

def _friedman_csv(r: Analysis) -> pd.DataFrame:
    frames = []
    for fr in r.multi.values():
        tab = fr.table()
        tab["friedman_chi2"], tab["friedman_p"] = fr.statistic, fr.p
        tab["n_dropped_blocks"], tab["nemenyi_cd"] = fr.n_dropped, fr.cd
        frames.append(tab)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _write_tables(r: Analysis) -> None:
    out = r.out_dir
    paths = {"comparison.csv": r.comparison, "methods.csv": r.methods, "missing.csv": r.missing}
    if r.reference:
        paths["claims.csv"] = r.claims
    if r.multi:
        paths["friedman.csv"] = _friedman_csv(r)
    if not r.update_effect.empty:
        paths["update_effect.csv"] = r.update_effect
    if not r.baselines.empty:
        paths["baselines.csv"] = r.baselines
    if r.best:
        paths["best_per_fold.csv"] = pd.concat(
            [b.per_fold.assign(task=b.task, best=b.label) for b in r.best.values()],
            ignore_index=True)
    for name, df in paths.items():
        df.to_csv(out / name, index=False)
        r.files.append(out / name)


def _log(r: Analysis, progress: Callable[[str], None]) -> None:
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


__all__ = ["Analysis", "Report", "Best", "run_compare", "analyse", "best_configuration",
           "selection_rule", "is_search", "nested_estimate", "baseline_table"]
