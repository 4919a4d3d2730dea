"""Turn a finished study into evidence: tables, paired statistics, figures and a Markdown report.

    python -m analysis.compare --experiment NAME [--tracking-uri URI] [--out DIR]

Writes report.md, comparison.csv, methods.csv, missing.csv and PNG figures to DIR and logs the
same files under ``report/`` of the study's parent MLflow run.
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

from analysis import figures as figs
from analysis import stats
from analysis.load import (
    AnalysisError,
    Study,
    load_predictions,
    load_study,
    metric_histories,
)
from analysis.stats import USABLE_STATUSES
from study.record import telemetry_metric, val_metric

SENSITIVITY_PARAMS = ("alpha", "lam", "tau_cos", "tau_rho")
MIN_TRIALS_IMPORTANCE = 4


def _stderr(msg: str) -> None:
    print(f"[analysis.compare] {msg}", file=sys.stderr, flush=True)


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


# --- formatting ---------------------------------------------------------------------------

def _num(v: object, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or v is pd.NA:
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _p(v: object) -> str:
    if v is None or not np.isfinite(float(v)):
        return "–"
    return "<0.001" if float(v) < 0.001 else f"{float(v):.3g}"


def _p_eq(v: object) -> str:
    s = _p(v)
    return f"< {s[1:]}" if s.startswith("<") else f"= {s}"


def _md_table(df: pd.DataFrame, fmt: dict[str, Callable[[object], str]] | None = None) -> str:
    fmt = fmt or {}
    if df.empty:
        return "_(none)_\n"
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    lines = [head, sep]
    for _, row in df.iterrows():
        cells = [fmt.get(c, lambda v: "–" if v is None or v is pd.NA or
                         (isinstance(v, float) and not math.isfinite(v)) else str(v))(row[c])
                 for c in df.columns]
        lines.append("| " + " | ".join(s.replace("|", "/") for s in cells) + " |")
    return "\n".join(lines) + "\n"


# --- analysis steps -----------------------------------------------------------------------

def _representative_runs(study: Study, task: str) -> dict[str, pd.Series]:
    """Per arm, the run whose predictions go into the KM figure.

    One run per seed (an ablation grid): the lowest seed, so nothing is picked on the outcome.
    Several runs per seed (a search): the best final metric, said so in the figure's notes.
    """
    trials = study.trials
    t = trials[(trials["task"] == task) & trials["status"].isin(USABLE_STATUSES)]
    out = {}
    for arm, g in t.groupby("arm"):
        if g["seed"].duplicated().any():
            g = g[np.isfinite(g["final"].astype(float))].sort_values("final", ascending=False)
        else:
            g = g.sort_values("seed")
        if len(g):
            out[str(arm)] = g.iloc[0]
    return out


def run_compare(experiment: str, tracking_uri: str | None = None, out: Path | str | None = None,
                *, candidate: str = "cgcoord", baselines: list[str] | None = None,
                metrics: list[str] | None = None, n_boot: int = 10_000, seed: int = 0,
                log_to_mlflow: bool = True, parent_run_id: str | None = None,
                progress: Callable[[str], None] = _stderr) -> Report:
    """The whole analysis of one study; see the module docstring for what is written."""
    progress(f"reading experiment '{experiment}'")
    study = load_study(experiment, tracking_uri, parent_run_id=parent_run_id)
    out_dir = Path(out) if out is not None else Path("reports") / experiment
    out_dir.mkdir(parents=True, exist_ok=True)
    t = study.trials
    by_status = ", ".join(f"{n} {s}" for s, n in t["status"].value_counts().items())
    progress(f"{len(t)} trial runs ({by_status}), tasks: {', '.join(study.tasks)}")
    comparisons, methods, missing = [], [], []
    result = Report(out_dir, study, pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                    stats.failed_trials(t), notes=list(study.notes))
    for task in study.tasks:
        task_metrics = metrics or [study.metric_for(task)]
        for metric in task_metrics:
            if metric not in study.folds.columns:
                logged = study.fold_metric_names
                result.skipped.append(f"{task}/{metric}: no run logged fold_<k>_{metric} "
                                      f"(per-fold metrics logged: {', '.join(logged) or 'none'})")
                if logged:  # a metric this study does not have: nothing to say about it
                    continue
                study.folds[metric] = np.nan  # every run failed: list them all as missing
            progress(f"{task}/{metric}: per-method summary and paired statistics")
            methods.append(stats.describe_methods(study.folds, t, metric, task))
            missing.append(stats.missing_keys(study.folds, t, metric, task))
            comp = stats.compare_arms(study.folds, metric, task, candidate=candidate,
                                      baselines=baselines, n_boot=n_boot, seed=seed)
            comparisons.append(comp.table)
            result.skipped += comp.notes
        _task_figures(result, task, task_metrics[0], candidate, seed, progress)
    result.comparison = (pd.concat(comparisons, ignore_index=True) if comparisons
                         else pd.DataFrame(columns=stats.COMPARISON_COLUMNS))
    result.methods = pd.concat(methods, ignore_index=True) if methods else pd.DataFrame()
    result.missing = pd.concat(missing, ignore_index=True) if missing else pd.DataFrame(
        columns=["task", "metric", "arm", "seed", "fold", "reason", "run_id"])
    _write(result)
    if log_to_mlflow:
        _log(result, progress)
    progress(f"report: {out_dir / 'report.md'}")
    return result


def _task_figures(result: Report, task: str, fold_metric: str, candidate: str, seed: int,
                  progress: Callable[[str], None]) -> None:
    """Figures of one task: per-fold values use ``fold_metric``; trial-level figures use the
    trial's final value, which is of the task's selection metric."""
    study, out = result.study, result.out_dir
    metric = study.metric_for(task)
    t = study.trials
    finished = t[(t["task"] == task) & t["status"].isin(USABLE_STATUSES)
                 & np.isfinite(t["final"].astype(float))]
    arms = sorted(t.loc[t["task"] == task, "arm"].unique(), key=lambda a: (a == candidate, a))
    if stats.usable(study.folds[study.folds["task"] == task], fold_metric).shape[0]:
        progress(f"{task}: per-fold figure")
        result.figures[f"{task}_per_fold"] = figs.per_fold(
            study.folds, fold_metric, task, arms, out / f"{task}_per_fold_{fold_metric}.png")
    params = figs.varying_numeric(finished, SENSITIVITY_PARAMS)
    if params:
        progress(f"{task}: sensitivity to {', '.join(params)}")
        result.figures[f"{task}_sensitivity"] = figs.sensitivity(
            t, metric, task, params, out / f"{task}_sensitivity.png")
    else:
        result.skipped.append(f"{task}: sensitivity curves skipped: none of "
                              f"{', '.join(SENSITIVITY_PARAMS)} took 3 or more values")
    if len(finished) >= 2:
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
                                  f"hyper-parameters vary across finished trials")
        else:
            result.figures[f"{task}_importance"] = res
    else:
        result.skipped.append(f"{task}: parameter importance skipped: fewer than "
                              f"{MIN_TRIALS_IMPORTANCE} finished trials")
    if task == "survival" or metric == "cindex":
        _km(result, task, progress)
    else:
        result.skipped.append(f"{task}: Kaplan–Meier skipped: not a survival task")
    run_ids = t.loc[t["task"] == task, "run_id"]
    progress(f"{task}: metric histories")
    conflict, cosine = telemetry_metric("conflict_rate"), telemetry_metric("cos_mean")
    hist = metric_histories(study, [conflict, cosine, val_metric(metric)], run_ids)
    tele = hist[hist["key"].isin([conflict, cosine])]
    if len(tele):
        result.figures[f"{task}_telemetry"] = figs.epoch_curves(
            tele, [(conflict, "gradient-conflict rate (share of class rows)"),
                   (cosine, "mean cosine(g_t, g_m)")],
            task, "Gradient-conflict telemetry per method (fold means per epoch)",
            out / f"{task}_telemetry.png")
    else:
        result.skipped.append(f"{task}: gradient-conflict telemetry skipped: no run logged "
                              f"coord_conflict_rate / coord_cos_mean")
    curves = hist[hist["key"] == val_metric(metric)]
    if len(curves):
        result.figures[f"{task}_learning"] = figs.epoch_curves(
            curves, [(val_metric(metric), f"validation {metric} (mean over folds)")], task,
            "Validation curves per method", out / f"{task}_learning_curves.png")


def _km(result: Report, task: str, progress: Callable[[str], None]) -> None:
    progress(f"{task}: Kaplan–Meier from predictions.parquet")
    preds, used, labels = {}, [], {}
    for arm, run in _representative_runs(result.study, task).items():
        p = load_predictions(result.study, run["run_id"])
        if p is None or not {"time", "event", "risk", "fold"} <= set(p.columns):
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

def _write(r: Report) -> None:
    out = r.out_dir
    paths = {"comparison.csv": r.comparison, "methods.csv": r.methods, "missing.csv": r.missing}
    for name, df in paths.items():
        df.to_csv(out / name, index=False)
        r.files.append(out / name)
    (out / "report.md").write_text(_markdown(r), encoding="utf-8")
    r.files.append(out / "report.md")
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


def _conclusion(r: Report) -> str:
    lines = []
    if r.comparison.empty:
        return ("No paired comparison could be made (see *Skipped* below), so this report makes "
                "no claim about which method is better.\n")
    for row in r.comparison.itertuples(index=False):
        if row.n_pairs == 0:
            lines.append(f"- **{row.method} vs {row.baseline}** ({row.task}, {row.metric}): no "
                         f"(seed, fold) result exists for both; not compared.")
            continue
        text = (f"- **{row.method} vs {row.baseline}** ({row.task}, {row.metric}, "
                f"{row.n_pairs} paired seed × fold results): mean difference "
                f"{row.mean_diff:+.3f} (95% bootstrap CI {row.ci_low:+.3f} to {row.ci_high:+.3f}); "
                f"{row.method} was better on {row.n_wins} of {row.n_pairs} pairs; Wilcoxon "
                f"p {_p_eq(row.wilcoxon_p)}, Holm-adjusted p {_p_eq(row.holm_p)}. ")
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
                     f"*Missing / failed*).")
        lines.append(text)
    lines.append("")
    lines.append("Caveat: cross-validation folds and seeds reuse the same patients, so the pairs "
                 "are not fully independent; p-values and intervals are approximate (typically "
                 "optimistic) and describe this cohort and these settings only.")
    return "\n".join(lines) + "\n"


def _group_missing(missing: pd.DataFrame) -> pd.DataFrame:
    """One line per (task, metric, method, seed, reason) listing its folds."""
    g = missing.groupby(["task", "metric", "arm", "seed", "reason", "run_id"], sort=True,
                        dropna=False)["fold"]
    out = g.agg(lambda f: ", ".join(str(int(x)) for x in sorted(f))).reset_index()
    return out[["task", "metric", "arm", "seed", "fold", "reason", "run_id"]].rename(
        columns={"arm": "method", "fold": "folds"})


def _markdown(r: Report) -> str:
    s = r.study
    t = s.trials
    latest = t[~t["superseded"]]
    counts = ", ".join(f"{n} {k.lower()}" for k, n in latest["status"].value_counts().items())
    md = [f"# Study report: {s.name}", "",
          f"- Tracking URI: `{s.tracking_uri}` — experiment id {s.experiment_id}, parent run "
          f"`{s.parent_run_id or 'none'}`",
          f"- Tasks: {', '.join(s.tasks)}; trials: {len(latest)} ({counts})"
          + (f"; {len(t) - len(latest)} earlier attempt(s) retried" if len(t) > len(latest)
             else ""),
          f"- Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
          f"`python -m analysis.compare`", ""]
    md += ["## Conclusion", "", _conclusion(r)]
    md += ["## Per-method results", "",
           "Mean, SD (ddof = 1) and median over every usable (seed, fold) value of the best-epoch "
           "validation metric; trials of that method by their latest attempt (completed / "
           "stopped early / failed or unfinished). Also in `methods.csv`.", ""]
    if not r.methods.empty:
        cols = ["task", "metric", "arm", "trials", "completed", "stopped_early", "failed",
                "n_values", "mean", "sd", "median", "min", "max"]
        table = r.methods[cols].rename(columns={"arm": "method"})
        md.append(_md_table(table, {c: _num for c in ("mean", "sd", "median", "min", "max")}))
    md += ["## Paired comparison", "",
           "Difference = method − baseline on identical (seed, fold) keys (> 0: the method is "
           "better). CI: percentile bootstrap of the mean difference (10,000 resamples unless "
           "set otherwise, fixed seed). p: two-sided Wilcoxon signed-rank (zero differences "
           "dropped); Holm: Holm–Bonferroni over the comparisons of the same task and metric. "
           "Win rate: share of pairs where the method is strictly better. mean_method / "
           "mean_baseline: means over the paired keys only. All columns in `comparison.csv`.", ""]
    if not r.comparison.empty:
        c = r.comparison
        shown = c[["task", "metric", "method", "baseline", "n_pairs", "mean_method",
                   "mean_baseline", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "holm_p",
                   "win_rate", "note"]].fillna({"note": ""})
        four = lambda v: _num(v, 4)  # noqa: E731
        md.append(_md_table(shown, {"mean_method": _num, "mean_baseline": _num, "mean_diff": four,
                                    "ci_low": four, "ci_high": four, "wilcoxon_p": _p,
                                    "holm_p": _p, "win_rate": lambda v: _num(v, 2)}))
    else:
        md.append("_No paired comparison (see Skipped)._\n")
    sections = [
        ("_per_fold", "Per-fold results", "Each dot is one (seed, fold); grey lines join the same "
         "(seed, fold) across methods, so crossing lines show where methods swap order."),
        ("_sensitivity", "Sensitivity (α, λ, …)", "Final metric of each finished trial against "
         "the parameter, with binned means and a 95% t-interval band per bin."),
        ("_history", "Optimisation history", "Trials in start order; the black line is the best "
         "value so far."),
        ("_importance", "Parameter importance (fANOVA)", "Optuna's FanovaImportanceEvaluator on a "
         "study rebuilt from the finished trials (distributions inferred from observed values)."),
        ("_km", "Survival: Kaplan–Meier by predicted risk", "Patients split at the median "
         "predicted risk of their validation fold, pooled over folds; log-rank test (lifelines). "
         "The p-value says how well one run's validation predictions separate patients; it is "
         "not a test between methods (that is the paired comparison above)."),
        ("_telemetry", "Gradient-conflict telemetry", "Per epoch, fold means logged by the "
         "trainer; line = mean over runs, band = ± 1 SD."),
        ("_learning", "Validation curves", "Mean validation metric over folds per epoch."),
    ]
    for task in s.tasks:
        for suffix, title, text in sections:
            fig = r.figures.get(f"{task}{suffix}")
            if fig is None:
                continue
            md += [f"## {title} — {task}", "", text, "", f"![{title}]({fig.path.name})", ""]
            if suffix == "_km":
                rows = pd.DataFrame([{"method": a, **v} for a, v in fig.stats.items()
                                     if a != "runs"])
                md.append(_md_table(rows, {"logrank_p": _p, "test_statistic": _num}))
                md.append("Predictions used: " + "; ".join(fig.stats.get("runs", [])) + "\n")
            if suffix == "_importance":
                md.append(_md_table(fig.data, {"importance": _num}))
    md += ["## Missing / failed", ""]
    failed = r.failed.fillna({"error": ""}).rename(columns={"arm": "method"})
    failed["error"] = failed["error"].map(lambda e: e.strip().splitlines()[-1][:300] if e else "")
    final, retried = failed[~failed["retried"]], failed[failed["retried"]]
    if final.empty:
        md.append("No trial failed or was left unfinished.\n")
    else:
        md += ["Trials that failed or never finished (their latest attempt):", "",
               _md_table(final.drop(columns="retried"))]
    if not retried.empty:
        md += ["Earlier attempts of trials that were retried (the retry's outcome counts):", "",
               _md_table(retried.drop(columns="retried"))]
    stopped = t[(t["status"] == "STOPPED_EARLY") & ~t["superseded"]]
    if len(stopped):
        md.append(f"{len(stopped)} trial(s) were stopped early by the scheduler: they have no "
                  f"final per-fold metrics; their last mean validation value is used in the "
                  f"history, sensitivity and importance figures only.\n")
    if r.missing.empty:
        md.append("No (method, seed, fold) result is missing.\n")
    else:
        md += ["(method, seed, fold) results missing from the full grid (all methods × seeds × "
               "folds seen), so left out of the paired statistics (also in `missing.csv`):", "",
               _md_table(_group_missing(r.missing))]
    if r.skipped or r.notes:
        md += ["### Skipped / notes", ""] + [f"- {x}" for x in r.skipped + r.notes] + [""]
    md += ["## Files", "", "`report.md`, `comparison.csv` (one row per comparison), `methods.csv` "
           "(one row per task, metric and method), `missing.csv`, and the PNG figures above; the "
           "same files are logged under `report/` of the study's parent MLflow run.", ""]
    return "\n".join(md)


# --- CLI ----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description="Analyse a finished KS-Study study from MLflow: per-method tables, paired "
                    "statistics of CG-Coord against each baseline on identical (seed, fold) "
                    "keys (Wilcoxon, bootstrap CI, win rate, Holm), figures (per-fold, α/λ "
                    "sensitivity, optimisation history, fANOVA importance, Kaplan–Meier, "
                    "gradient-conflict telemetry) and a Markdown report, also logged to the "
                    "study's parent MLflow run.",
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
                        baselines=args.baseline, metrics=args.metric, n_boot=args.n_boot,
                        seed=args.seed, log_to_mlflow=not args.no_log,
                        parent_run_id=args.parent_run_id)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not r.comparison.empty:
        cols = ["task", "metric", "method", "baseline", "n_pairs", "mean_diff", "ci_low",
                "ci_high", "wilcoxon_p", "holm_p", "win_rate"]
        with pd.option_context("display.width", 160, "display.precision", 4):
            print(r.comparison[cols].to_string(index=False))
    print(f"report written to {r.out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
