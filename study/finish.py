"""The end of a study: every trial's MLflow history checked against Ray's results, one summary
row per trial (summary.csv), the terminal table, the best configuration (best_config.yaml) and
the parent run closed with the best value.

Every step can be run again (a value already logged is not logged twice), so when one fails -
the artifact store is full or read-only, say - `finish_guarded` closes every run, prints one
``error:`` line, and ``--resume`` later finishes the job from the saved Ray results without
starting Ray (`load_results`).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from analysis.answer import terminal_lines  # standard library only at import
from study.folder import write_state
from study.progress import can_stop, short, stopper
from study.quiet import WIDTH
from study.record import (
    SUMMARY_PARAM,
    Artifacts,
    Status,
    Tags,
    best_metric,
    summary_param,
    val_metric,
)
from study.results import COMPLETED, ITERATION, NODE, RUN_ID, TRIAL_ID
from study.space import StudyConfig
from study.variants import expand as expand_variant

NOT_RUN = "NOT_RUN"
"""summary.csv status of a trial that never reported (e.g. an interrupted study's last ones)."""


def summarise(grid: Any, cfg: StudyConfig) -> pd.DataFrame:
    """One row per trial: id, status, searched params, final metric."""
    from study.faults import error_text

    key = val_metric(cfg.metric)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        iters = metrics.get(ITERATION, 0) or 0
        if result.error is not None:
            status = Status.FAILED
        elif metrics.get(COMPLETED):
            status = Status.COMPLETED
        else:
            status = Status.STOPPED_EARLY if iters else NOT_RUN
        trial_id = metrics.get(TRIAL_ID) or Path(result.path).name.split("_")[2]
        rows.append({"trial_id": trial_id, "status": status,
                     **{summary_param(k): v for k, v in (result.config or {}).items()},
                     key: metrics.get(key), "epochs": iters,
                     RUN_ID: metrics.get(RUN_ID),
                     NODE: metrics.get(NODE),
                     "error": error_text(result.error, 200)})
    return pd.DataFrame(rows)


def load_results(path: str, cfg: StudyConfig) -> Any:
    """A finished experiment's `ResultGrid` read from Ray's saved state, without starting Ray."""
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(path, default_metric=val_metric(cfg.metric),
                                         default_mode=cfg.mode))


def reconcile_results(grid: Any, client: Any, metric: str) -> dict[str, list[int]]:
    """Refill, in every trial's MLflow run, the epochs the trial reported to Ray but whose
    MLflow batch was lost (study/reconcile.py); {run id: filled epochs}."""
    from study.reconcile import reconcile_reported

    filled: dict[str, list[int]] = {}
    for result in grid:
        frame = result.metrics_dataframe
        if frame is None or frame.empty:
            continue
        filled.update(reconcile_reported(client, frame.to_dict("records"), metric))
    return filled


def finish_guarded(grid: Any, cfg: StudyConfig, out: Path, client: Any, experiment_id: str,
                   parent: str, seconds: float | None) -> int:
    """`finish_study`; if a step fails, leave every run terminal and say so in one line."""
    from study.tracking import close_open_runs

    try:
        return finish_study(grid, cfg, out, client, parent, seconds)
    except Exception as exc:  # noqa: BLE001 - any failure of the last step is reported alike
        from study.faults import Reserve, error_text

        Reserve(out).release()  # a full disk: room to close the runs
        reason = error_text(exc)
        try:
            close_open_runs(client, experiment_id, parent, "FAILED",
                            error=f"the study's final step failed: {reason}")
            closed = "every MLflow run is closed"
        except Exception:  # noqa: BLE001 - the store itself is failing: say so, do not mask
            closed = "the MLflow store could not be updated either"
        print(f"error: {cfg.name}: every trial has ended and its results are saved, but the "
              f"final step (summary, best configuration, report) failed: {reason}; {closed}. "
              f"Fix the cause and run the same command with --resume to finish it "
              f"(see docs/errors.md)", file=sys.stderr)
        return 1


def finish_study(grid: Any, cfg: StudyConfig, out: Path, client: Any, parent: str,
                 seconds: float | None) -> int:
    """Refill lost epochs, close trial runs a dead process left open, summary.csv, the
    terminal table, best_config.yaml; close the parent run; record the study as finished."""
    from study.tracking import close_open_children, log_frame, retry

    filled = reconcile_results(grid, client, cfg.metric)
    if filled:
        print(f"note: {sum(map(len, filled.values()))} epoch(s) of {len(filled)} trial run(s) "
              "were missing in MLflow and were filled from the results the trials reported to "
              "Ray (tag ks.reconciled on those runs)")
    experiment_id = retry(lambda: client.get_run(parent)).info.experiment_id
    closed = close_open_children(client, experiment_id, parent)
    if closed:
        print(f"note: {closed} trial run(s) left open by an interrupted process were closed "
              "(ks.status INTERRUPTED)")
    summary = summarise(grid, cfg)
    summary.to_csv(out / Artifacts.SUMMARY, index=False)
    log_frame(client, parent, summary, Artifacts.SUMMARY)
    key = val_metric(cfg.metric)
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    print(f"\n{cfg.name}: {len(summary)} trials{took}: {counts_text(summary, cfg)}")
    print(trial_table(summary, key, mode=cfg.mode))
    done = summary[summary["status"] == Status.COMPLETED]
    if done.empty:
        print("no trial completed; see the errors above and in MLflow", file=sys.stderr)
        retry(lambda: client.set_terminated(parent, "FAILED"))
        write_state(out, finished=True)
        print(next_steps(client.tracking_uri, experiment_id, cfg.name))
        return 1
    best = best_row(done, key, cfg.mode)
    best_params = {k.removeprefix(SUMMARY_PARAM): _plain(v) for k, v in best.items()
                   if k.startswith(SUMMARY_PARAM) and pd.notna(v)}
    params, variant = expand_variant(best_params, cfg.variants)  # a variant's own overrides
    best_cfg = {"study": cfg.name, "trial_id": best["trial_id"], cfg.metric: float(best[key]),
                **({"variant": variant} if variant else {}), "params": {**cfg.fixed, **params}}
    (out / Artifacts.BEST_CONFIG).write_text(yaml.safe_dump(best_cfg, sort_keys=False))
    retry(lambda: client.log_artifact(parent, str(out / Artifacts.BEST_CONFIG)))
    run = retry(lambda: client.get_run(parent))
    logged = run.data.metrics.get(best_metric(cfg.metric))
    if logged is None or logged != float(best[key]):  # a finish run again logs it once
        retry(lambda: client.log_metric(parent, best_metric(cfg.metric), float(best[key])))
    if Tags.ERROR in run.data.tags:  # an earlier finish failed; this one did not
        retry(lambda: client.delete_tag(parent, Tags.ERROR))
    retry(lambda: client.set_terminated(parent, "FINISHED"))
    write_state(out, finished=True)
    shown = " ".join(f"{k}={short(v)}" for k, v in best_params.items())
    print(f"best: trial {best['trial_id']}, {key} {float(best[key]):.4f} after "
          f"{int(best['epochs'])} epochs{', ' + shown if shown else ''}")
    print(f"  its configuration: {out / Artifacts.BEST_CONFIG}")
    for line in terminal_lines(client.tracking_uri, cfg.name, parent):  # vs each baseline
        print(line)
    print(next_steps(client.tracking_uri, experiment_id, cfg.name,
                     _plain(best.get(RUN_ID))))
    return 0


def best_row(trials: pd.DataFrame, key: str, mode: str) -> pd.Series:
    """The trial with the best ``key`` in the study's direction (``mode`` max or min)."""
    values = trials[key].astype(float)
    return trials.loc[values.idxmin() if mode == "min" else values.idxmax()]


def counts_text(summary: pd.DataFrame, cfg: StudyConfig) -> str:
    """``1 completed, 3 stopped early by ASHA, 0 failed``: stopped trials are counted only
    where the scheduler stops trials (or one was stopped), trials never run only if any."""
    counts = summary["status"].value_counts()
    parts = [f"{counts.get(Status.COMPLETED, 0)} completed"]
    stopped = counts.get(Status.STOPPED_EARLY, 0)
    if stopped or can_stop(cfg.scheduler.type):
        parts.append(f"{stopped} stopped early by {stopper(cfg.scheduler.type)}")
    parts.append(f"{counts.get(Status.FAILED, 0)} failed")
    if counts.get(NOT_RUN, 0):
        parts.append(f"{counts.get(NOT_RUN, 0)} not run")
    return ", ".join(parts)


TABLE_ROWS = 20
"""Trials the terminal table shows (the best ones); summary.csv has them all."""


def trial_table(summary: pd.DataFrame, key: str, rows: int = TABLE_ROWS, *,
                mode: str = "max") -> str:
    """The terminal's table of the trials, best first (in the study's direction ``mode``), at
    most ``rows`` and 119 columns; the error column only when a trial failed (its start; all of
    it in summary.csv and MLflow)."""
    cols = [c for c in summary.columns if c not in (RUN_ID, NODE)]
    shown = summary[cols].sort_values(key, ascending=mode == "min", na_position="last")
    if not shown["error"].astype(str).str.len().any():
        shown = shown.drop(columns="error")
    else:
        shown["error"] = shown["error"].astype(str).map(
            lambda e: e if len(e) <= 40 else e[:39] + "…")
    shown = shown.rename(columns=lambda c: c.removeprefix(SUMMARY_PARAM))
    with pd.option_context("display.width", WIDTH, "display.max_columns", 20,
                           "display.max_colwidth", 40):
        text = shown.head(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}")
    more = len(shown) - rows
    return text + (f"\n… and {more} more trials in {Artifacts.SUMMARY}" if more > 0 else "")


UI_PORT = 5000


def _tool(name: str) -> str:
    """``name`` as installed beside the running Python (the venv's), else the bare name."""
    path = Path(sys.executable).parent / name
    return str(path) if path.is_file() else name


def shell_lines(parts: list[str | tuple[str, ...]], indent: str = "  ",
                width: int = WIDTH) -> list[str]:
    """A command as lines of at most ``width`` columns (where its parts allow), continued with
    a backslash, so that a copy of all its lines runs as it is. A tuple part (an option and
    its value) stays on one line."""
    lines, line = [], indent
    for part in parts:
        words = " ".join(shlex.quote(w) for w in (part if isinstance(part, tuple) else (part,)))
        if line.strip() and len(line) + 1 + len(words) + 2 > width:
            lines.append(line + " \\")
            line = indent + "    "
        line = f"{line} {words}" if line.strip() else line + words
    return [*lines, line]


TRIALS_VIEW = "the trials side by side (status, metric, searched parameters)"


def mlflow_hint(tracking_uri: str, experiment_id: str, when: str = "") -> str:
    """How to open the study in the MLflow UI: the command that starts the UI (a local store)
    and the URL of its trials side by side (study/view.py); ``when`` qualifies the first line
    (the study prints this at its start too)."""
    from study.view import trials_url, ui_base

    url = f"  {trials_url(ui_base(tracking_uri, UI_PORT), experiment_id)}"
    if tracking_uri.startswith(("http://", "https://")):
        return "\n".join([f"MLflow{when}: {TRIALS_VIEW}:", url])
    return "\n".join([f"MLflow{when}: start the UI with",
                      *shell_lines([_tool("mlflow"), "ui", ("--backend-store-uri", tracking_uri),
                                    ("--host", "127.0.0.1"), ("--port", str(UI_PORT))]),
                      f"then open {TRIALS_VIEW}:", url])


def next_steps(tracking_uri: str, experiment_id: str, name: str,
               best_run_id: str | None = None) -> str:
    """The end-of-run hints: the study in the MLflow UI (the best trial's own page too) and
    the command that writes its report."""
    from study.view import run_url, ui_base

    lines = [mlflow_hint(tracking_uri, experiment_id)]
    if best_run_id:
        lines += ["the best trial's page (params, metrics, validation curves, predictions):",
                  f"  {run_url(ui_base(tracking_uri, UI_PORT), experiment_id, best_run_id)}"]
    lines += ["Report (tables, paired statistics, figures):",
              *shell_lines([_tool("python"), ("-m", "analysis.compare"), ("--experiment", name),
                            ("--tracking-uri", tracking_uri)])]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


__all__ = ["summarise", "finish_study", "finish_guarded", "load_results", "reconcile_results",
           "next_steps", "mlflow_hint", "counts_text", "trial_table", "shell_lines", "UI_PORT",
           "best_row"]
