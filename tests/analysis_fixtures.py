"""Log a fake-but-real study into an MLflow store, in the layout ``study/`` writes.

Real MLflow (client API, SQLite store, file artifacts), known numbers: tests of the analysis (and
anything else that reads studies) can build the runs they need without training a model.

Each row of ``table`` is one trial::

    {"method": "cgcoord", "seed": 0,
     "folds": {0: 0.81, 1: 0.77, ...},          # fold -> value of `metric` (NaN = not logged),
                                                 # or fold -> {metric name: value}
     "status": "COMPLETED",                      # or STOPPED_EARLY / FAILED / INTERRUPTED
     "error": "...",                             # FAILED only
     "trial_id": "t1", "attempt": 2,             # optional; a retry reuses the trial id
     "params": {"alpha": 0.5, "lam": 0.1},       # more trial params (strings in MLflow)
     "history": {"val_auc": [...], "coord/conflict_rate": [...]},   # per epoch, step 1..E
     "predictions": pd.DataFrame(...)}          # logged as predictions.parquet

Like the study runner, a STOPPED_EARLY trial logs only its per-epoch history (no final_<metric>
nor fold_<k>/final_*), and a FAILED / INTERRUPTED one no final metrics. Every name comes from
study.record, as in the runner.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from analysis.load import Study
from ksmodel.data import cache_dir
from study.record import (
    EPOCHS_RUN,
    Artifacts,
    Roles,
    Status,
    Tags,
    best_metric,
    final_metric,
    fold_metric,
    run_name,
)
from study.store import schema_template

DEFAULT_PARAMS = {"alpha": 0.5, "lam": 0.1, "tau_cos": 0.0, "tau_rho": 0.0, "lr": 1e-3,
                  "weight_decay": 1e-4, "dropout": 0.25, "decompose": True, "teacher": True,
                  "modality": "both", "epochs": 4}


def fresh_store(tracking_uri: str) -> str:
    """Give a new ``sqlite:///`` store its schema as a study does: a copy of the schema template
    (`study.store.schema_template`) in the session's cache folder (MLflow's migrations cost 1-2 s
    per new file on an idle 2-core machine; a copy ~10 ms). An existing file and other URIs are
    left alone. Returns ``tracking_uri``."""
    if not tracking_uri.startswith("sqlite:///"):
        return tracking_uri
    db = Path(urlparse(tracking_uri).path)
    if db.exists():
        return tracking_uri
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(schema_template(cache_dir()), db)
    return tracking_uri


def artifact_root_for(tracking_uri: str) -> str | None:
    """``<dir of mlflow.db>/mlartifacts`` for a sqlite URI (the study layout), else None."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(urlparse(tracking_uri).path)
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def log_study(tracking_uri: str, name: str, table: Iterable[Mapping] | pd.DataFrame, *,
              task: str = "grade", metric: str = "auc", n_folds: int = 5,
              node_id: str = "node-0", searched: str = "",
              parent_params: Mapping[str, object] | None = None,
              parent_tags: Mapping[str, str] | None = None) -> str:
    """Create experiment ``name`` (if needed), one parent run and one child run per row of
    ``table``; returns the parent run id. ``parent_params`` / ``parent_tags``: more params
    (e.g. ``study.epochs``, ``cohort.n_cases``) and tags (e.g. ``ks.sampler``) of the parent;
    a row's ``tags`` adds tags to its trial run (e.g. ``ks.variant``)."""
    rows = table.to_dict("records") if isinstance(table, pd.DataFrame) else list(table)
    client = MlflowClient(tracking_uri=fresh_store(tracking_uri))
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        name, artifact_location=artifact_root_for(tracking_uri))
    parent = client.create_run(exp_id, run_name=run_name(Roles.STUDY, name), tags={
        Tags.ROLE: Roles.STUDY, Tags.STUDY: name, Tags.TASK: task, Tags.METRIC: metric,
        Tags.MODE: "max", Tags.SEARCHED: searched, **(parent_tags or {})}).info.run_id
    if parent_params:
        client.log_batch(parent, params=[Param(k, str(v)) for k, v in parent_params.items()])
    fold_tag = ",".join(str(k) for k in range(n_folds))
    best = -math.inf
    for i, row in enumerate(rows):
        status = row.get("status", Status.COMPLETED)
        params = {**DEFAULT_PARAMS, "coordination": row["method"], "seed": row["seed"],
                  "seeds": str(row["seed"]), "folds": n_folds, "task": task,
                  **row.get("params", {})}
        trial_id = row.get("trial_id", f"trial_{i:03d}")
        run = client.create_run(exp_id, run_name=run_name(Roles.TRIAL, trial_id), tags={
            Tags.PARENT: parent, Tags.ROLE: Roles.TRIAL, Tags.TRIAL_ID: trial_id,
            Tags.ATTEMPT: str(row.get("attempt", 1)), Tags.METHOD: row["method"],
            Tags.TASK: task, Tags.METRIC: metric, Tags.NODE_ID: node_id, Tags.STATUS: status,
            Tags.FOLDS: fold_tag, Tags.SEED: str(row["seed"]), **row.get("tags", {})})
        rid = run.info.run_id
        metrics: list[Metric] = []
        tags: list[RunTag] = []
        if status == Status.FAILED:
            tags.append(RunTag(Tags.ERROR, row.get("error", "RuntimeError: trial failed")))
        finished = status == Status.COMPLETED
        for key, values in row.get("history", {}).items():
            metrics += [Metric(key, float(v), 0, step) for step, v in enumerate(values, 1)]
        primary = []
        for fold, value in (row.get("folds", {}) if finished else {}).items():
            named = value if isinstance(value, Mapping) else {metric: value}
            for mname, v in named.items():
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    continue
                metrics.append(Metric(fold_metric(fold, final_metric(mname)), float(v), 0, 0))
            primary.append(named.get(metric, math.nan))
        if finished and primary and all(not math.isnan(float(v)) for v in primary):
            final = float(row.get("final", sum(primary) / len(primary)))
            metrics.append(Metric(final_metric(metric), final, 0, 0))
            metrics.append(Metric(EPOCHS_RUN, float(row.get("epochs_run", 4)), 0, 0))
            best = max(best, final)
        client.log_batch(rid, metrics=metrics,
                         params=[Param(k, str(v)) for k, v in params.items()], tags=tags)
        if row.get("predictions") is not None:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Artifacts.PREDICTIONS
                row["predictions"].to_parquet(path, index=False)
                client.log_artifact(rid, str(path))
        client.set_terminated(rid, {Status.FAILED: "FAILED", Status.INTERRUPTED: "KILLED"}.get(
            status, "FINISHED"))
    if best > -math.inf:
        client.log_metric(parent, best_metric(metric), best)
    client.set_terminated(parent, "FINISHED")
    return parent


# --- in-memory studies (no MLflow): the tidy frames analysis/load.py produces -----------------

def make_study(rows: Iterable[Mapping], *, name: str = "memory", task: str = "grade",
               metric: str = "auc", n_folds: int = 5,
               parent_tags: Mapping[str, str] | None = None) -> Study:
    """A ``Study`` built directly from rows like ``log_study``'s, shaped as ``load_study`` returns
    it (trials: one row per run; folds: one row per (run, expected fold)), for tests of the
    analysis that do not depend on MLflow metric names.

    Extra row keys: ``arm`` (default: the method), ``final`` (default: mean of the fold values
    of ``metric`` for a COMPLETED row; required for a STOPPED_EARLY row: its last value),
    ``epochs_run``, any further column (e.g. ``variant``) via ``columns``. Like the study runner,
    only COMPLETED rows keep their fold values.
    """
    trows, frows = [], []
    for i, row in enumerate(rows):
        status = row.get("status", "COMPLETED")
        run_id = row.get("run_id", f"run{i:04d}")
        params = {**DEFAULT_PARAMS, "coordination": row["method"], "seed": row["seed"],
                  **row.get("params", {})}
        values = {f: (v if isinstance(v, Mapping) else {metric: v})
                  for f, v in row.get("folds", {}).items()}
        primary = [v.get(metric, math.nan) for v in values.values()]
        final = row.get("final")
        if final is None and status == "COMPLETED" and primary \
                and all(not math.isnan(float(v)) for v in primary):
            final = sum(primary) / len(primary)
        base = {"run_id": run_id, "trial_id": row.get("trial_id", f"trial_{i:03d}"),
                "task": task, "metric": metric, "method": row["method"],
                "arm": row.get("arm", row["method"]), "seed": int(row["seed"]),
                "status": status, **row.get("columns", {})}
        trows.append({**base, "mlflow_status": "FINISHED", "error": row.get("error"),
                      "node_id": "node-0", "final": math.nan if final is None else float(final),
                      "final_source": None if final is None else f"final_{metric}",
                      "epochs_run": float(row.get("epochs_run", params.get("epochs", 4))),
                      "start_time": pd.Timestamp("2026-01-01") + pd.Timedelta(seconds=i),
                      "attempt": int(row.get("attempt", 1)), "superseded": False,
                      "folds": list(range(n_folds)),
                      **{f"params.{k}": v for k, v in params.items()}})
        for fold in range(n_folds):
            named = values.get(fold, {}) if status == "COMPLETED" else {}
            frows.append({**base, "fold": fold,
                          **{m: float(v) for m, v in named.items()},
                          **{f"params.{k}": v for k, v in params.items()}})
    trials = pd.DataFrame(trows)
    # retries share a trial id: only the latest attempt speaks for the trial
    trials["superseded"] = trials["attempt"] < trials.groupby("trial_id")["attempt"].transform(
        "max")
    folds = pd.DataFrame(frows)
    for col in [c for c in folds.columns if c.startswith("params.")]:
        if folds[col].map(lambda v: isinstance(v, float)).all():
            folds[col] = folds[col].astype(float)
            trials[col] = trials[col].astype(float)
    return Study(name=name, tracking_uri="sqlite:///:memory:", experiment_id="0",
                 parent_run_id=None, parent_tags=dict(parent_tags or {}), trials=trials,
                 folds=folds, metric_keys={r: set() for r in trials["run_id"]})
