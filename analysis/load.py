"""Read a finished study from MLflow into tidy tables (README: "Does CG-Coord help on my cohort?").

Only MLflow's public API is used (``mlflow.search_runs``, ``MlflowClient.get_metric_history``,
``mlflow.artifacts.download_artifacts``), so the store can be the study's SQLite file or a shared
tracking server. The layout read here is the one ``study/`` writes (see ``study/tracking.py``): one
parent run tagged ``ks.role=study`` and one child run per trial.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# tqdm's "Downloading artifacts" bars are noise in a report run; MLflow reads this when it loads
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import mlflow  # noqa: E402 - after the environment it reads
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from analysis.uri import (  # noqa: E402,F401 - AnalysisError is raised from here too
    AnalysisError,
    missing_experiment,
    resolve_tracking_uri,
)
from study.record import (  # noqa: E402
    EPOCHS_RUN,
    SEEDLESS,
    Artifacts,
    Roles,
    Status,
    Tags,
    final_metric,
    parse_fold_metric,
    val_metric,
)

#: ``mlflow.search_runs`` names a run's params ``params.<name>`` (and tags ``tags.<name>``).
PARAM_PREFIX = "params."


def param_column(name: str) -> str:
    """``params.alpha`` for ``alpha``: the column of a param in the tables read here."""
    return f"{PARAM_PREFIX}{name}"


def param_name(column: str) -> str:
    """``alpha`` for ``params.alpha`` (a column that is not a param is returned as it is)."""
    return column.removeprefix(PARAM_PREFIX)


def is_param_column(column: str) -> bool:
    return column.startswith(PARAM_PREFIX)


#: Ablation switches (docs/study-files.md, model parameters) and their default values; a
#: non-default value becomes part of the arm label so that e.g. ``cgcoord teacher=False`` is
#: compared with ``cgcoord``.
ABLATION_DEFAULTS: dict[str, object] = {"teacher": True, "modality": "both", "consistency": True}

_INT = re.compile(r"^[+-]?\d+$")
_MLFLOW_TO_KS = {"FINISHED": "COMPLETED", "FAILED": "FAILED", "KILLED": "FAILED",
                 "RUNNING": "RUNNING", "SCHEDULED": "RUNNING"}


@contextmanager
def _tracking(uri: str) -> Iterator[None]:
    """Point the fluent ``mlflow`` API at ``uri`` for the duration, then restore it."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


@dataclass
class Study:
    """One study read back from MLflow.

    ``trials``: one row per trial run (run_id, trial_id, task, metric, method, arm, seed, status,
    mlflow_status, error, node_id, final, final_source, epochs_run, start_time, attempt,
    superseded, folds, ``params.<name>``...). A retried trial has one run per attempt; earlier
    attempts have ``superseded=True``. In a variants study (tag ``ks.variant``) also ``variant``
    and ``setting`` (grid-searched values), and ``arm`` is the variant (with its setting).
    ``folds``: one row per (run, fold) with the per-fold metric values (one column per metric
    name, e.g. auc/accuracy/... or cindex) plus run_id, trial_id, task, metric, method, arm, seed,
    status and the parsed ``params.<name>`` columns; failed runs keep their expected folds (tag
    ``ks.folds``) with NaN values.
    ``metric_keys``: run_id -> the metric keys that run logged (to know which histories exist).

    Both tables also say what each run is: ``role`` (trial, baseline, or outer for the refit runs
    of nested evaluation) and ``outer_fold`` (nested evaluation's inner trials and outer runs).
    A run logged once for every seed (``ks.seed`` = any: a deterministic baseline) has seed -1 in
    ``trials`` and ``seedless`` True; in ``folds`` its rows are repeated for every seed of the
    task's other runs, so it pairs with each of them on (seed, fold).
    """

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str | None
    parent_tags: dict[str, str]
    trials: pd.DataFrame
    folds: pd.DataFrame
    metric_keys: dict[str, set[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the parent run's params (``study.*``, ``cohort.*``: study/parent.py), strings as logged
    parent_params: dict[str, str] = field(default_factory=dict)

    @property
    def fold_metric_names(self) -> list[str]:
        """Final metric names logged per fold (``fold_<k>/final_<name>``): auc, f1, cindex..."""
        return sorted({name for keys in self.metric_keys.values() for k in keys
                       if (name := _final_fold_name(k)) is not None})

    @property
    def tasks(self) -> list[str]:
        return sorted(self.trials["task"].dropna().unique())

    def metric_for(self, task: str) -> str:
        """The task's selection metric (tag ``ks.metric``), e.g. auc or cindex."""
        values = self.trials.loc[self.trials["task"] == task, "metric"].dropna().unique()
        if len(values):
            return str(values[0])
        return self.parent_tags.get(Tags.METRIC, "auc")

    @property
    def mode(self) -> str:
        """The study's metric direction (parent tag ``ks.mode``): ``max`` unless it says
        ``min``; every 'best' of the analysis is chosen in this direction."""
        return "min" if self.parent_tags.get(Tags.MODE, "").strip().lower() == "min" else "max"

    @property
    def searched(self) -> list[str]:
        """Names of the searched params (parent tag ``ks.searched``), empty when unknown."""
        raw = self.parent_tags.get(Tags.SEARCHED, "")
        return [p.strip() for p in raw.split(",") if p.strip()]

    @property
    def param_columns(self) -> list[str]:
        return [c for c in self.trials.columns if is_param_column(c)]


def _final_fold_name(metric_key: str) -> str | None:
    """``auc`` for ``fold_3/final_auc``; None for any other metric name."""
    parsed = parse_fold_metric(metric_key)
    if parsed is None or not parsed[1].startswith(final_metric("")):
        return None
    return parsed[1][len(final_metric("")):]


def parse_param_column(values: pd.Series) -> pd.Series:
    """MLflow stores params as strings; give each column back one sensible type.

    All "True"/"False" -> bool, all integers -> Int64, all numbers -> float, else strings.
    "None" and empty strings count as missing.
    """
    s = values.where(~values.isin(["None", ""]), None)
    present = s.dropna().astype(str)
    if present.empty:
        return s
    if present.isin(["True", "False"]).all():
        return s.map({"True": True, "False": False}).astype("boolean")
    numeric = pd.to_numeric(present, errors="coerce")
    if numeric.notna().all():
        # Python's float() round-trips repr() exactly; pandas' fast parser may not.
        exact = s.map(lambda v: None if v is None else float(v))
        if present.str.match(_INT).all():
            return exact.astype("Int64")
        return exact.astype(float)
    return s


def _arm_label(method: str, row: pd.Series) -> str:
    extras = []
    for key, default in ABLATION_DEFAULTS.items():
        value = row.get(key)
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            continue
        if value != default:
            extras.append(f"{key}={value}")
    return " ".join([method, *extras])


def _variant_columns(trials: pd.DataFrame, variant: pd.Series, params: pd.DataFrame,
                     searched: list[str]) -> None:
    """A variants study (tag ``ks.variant``): columns ``variant`` (the name) and ``setting``
    (the grid-searched values the variant ran with, "" without a search), and ``arm`` = the
    variant, with its setting when there is one. Other studies get neither column."""
    if not variant.notna().any():
        return
    cols = [param_column(p) for p in searched if param_column(p) in params]
    setting = [" ".join(f"{param_name(c)}={row[c]}" for c in cols)
               for _, row in params[cols].iterrows()] if cols else [""] * len(trials)
    trials["variant"] = variant
    trials["setting"] = setting
    trials["arm"] = [arm if not isinstance(v, str) else f"{v} {s}" if s else v
                     for v, s, arm in zip(trials["variant"], setting, trials["arm"], strict=True)]


def _tidy_trials(runs: pd.DataFrame, searched: list[str] | None = None) -> pd.DataFrame:
    def tag(name: str) -> pd.Series:
        col = f"tags.{name}"
        return runs[col] if col in runs else pd.Series([None] * len(runs), index=runs.index)

    params = pd.DataFrame({c: parse_param_column(runs[c]) for c in runs.columns
                           if is_param_column(c)}, index=runs.index)
    trials = pd.DataFrame({"run_id": runs["run_id"]}, index=runs.index)
    trials["trial_id"] = tag(Tags.TRIAL_ID).fillna(runs["run_id"].str[:8])
    trials["task"] = tag(Tags.TASK).fillna("unknown")
    trials["metric"] = tag(Tags.METRIC)
    method = tag(Tags.METHOD)
    if param_column("coordination") in params:
        method = method.fillna(params[param_column("coordination")].astype("string"))
    trials["method"] = method.fillna("unknown").astype(str)
    mlflow_status = runs["status"].astype(str)
    trials["status"] = tag(Tags.STATUS).fillna(mlflow_status.map(_MLFLOW_TO_KS)).fillna(
        Status.RUNNING)
    trials["mlflow_status"] = mlflow_status
    trials["error"] = tag(Tags.ERROR)
    trials["node_id"] = tag(Tags.NODE_ID)
    trials["role"] = tag(Tags.ROLE).fillna(Roles.TRIAL)
    trials["outer_fold"] = pd.to_numeric(tag(Tags.OUTER_FOLD), errors="coerce").astype("Int64")
    # seed: the searched/fixed param, else tag ks.seed; -1 when a trial averaged several seeds
    # and for a seedless run (paired with every seed in ``folds``)
    seedless = tag(Tags.SEED) == SEEDLESS
    seed = params.get(param_column("seed"), pd.Series([pd.NA] * len(runs), index=runs.index))
    seed = pd.to_numeric(seed, errors="coerce").fillna(pd.to_numeric(tag(Tags.SEED),
                                                                       errors="coerce"))
    trials["seed"] = seed.where(~seedless).fillna(-1).astype(int)
    trials["seedless"] = seedless.to_numpy(dtype=bool)
    # final: final_<metric>; a trial stopped early by the scheduler never logs it, so it gets
    # its last val_<metric> (the value the scheduler and Optuna judged it on).
    final = pd.Series(np.nan, index=runs.index, dtype=float)
    source = pd.Series(None, index=runs.index, dtype=object)
    for m in trials["metric"].dropna().unique():
        sel = trials["metric"] == m
        done, last_val = f"metrics.{final_metric(m)}", f"metrics.{val_metric(m)}"
        if done in runs:
            final[sel] = runs.loc[sel, done].astype(float)
            source[sel & final.notna()] = final_metric(m)
        if last_val in runs:
            last = sel & final.isna() & (trials["status"] == Status.STOPPED_EARLY)
            final[last] = runs.loc[last, last_val].astype(float)
            source[last & final.notna()] = f"last {val_metric(m)}"
    trials["final"] = final
    trials["final_source"] = source
    # a trial the scheduler stopped logs no epochs_run; its tag says at which epoch it stopped
    epochs = runs.get(f"metrics.{EPOCHS_RUN}", pd.Series(np.nan, index=runs.index))
    trials["epochs_run"] = epochs.astype(float).fillna(
        pd.to_numeric(tag(Tags.STOPPED_AT), errors="coerce"))
    trials["start_time"] = runs["start_time"]
    # Retries of one trial share ks.trial_id; only the latest attempt speaks for the trial.
    attempt = pd.to_numeric(tag(Tags.ATTEMPT), errors="coerce")
    order = runs.groupby(trials["trial_id"])["start_time"].rank(method="first")
    trials["attempt"] = attempt.fillna(order).astype(int)
    latest = trials.groupby("trial_id")["attempt"].transform("max")
    trials["superseded"] = trials["attempt"] < latest
    trials["folds"] = [sorted(int(f) for f in str(v).split(",") if f.strip().isdigit())
                       if isinstance(v, str) else [] for v in tag(Tags.FOLDS)]
    # Ablation switches: consistency off == lam exactly 0.
    switches = pd.DataFrame(index=runs.index)
    for key in ("teacher", "modality"):
        if param_column(key) in params:
            switches[key] = params[param_column(key)]
    if param_column("lam") in params:
        lam = pd.to_numeric(params[param_column("lam")], errors="coerce")
        switches["consistency"] = lam.map(lambda v: None if pd.isna(v) else bool(v != 0))
    trials["arm"] = [_arm_label(m, switches.loc[i]) for i, m in trials["method"].items()]
    _variant_columns(trials, tag(Tags.VARIANT), params, searched or [])
    trials = pd.concat([trials, params], axis=1)
    return trials.sort_values(["task", "arm", "seed", "start_time"]).reset_index(drop=True)


def _tidy_folds(runs: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    cols = {c: (parse_fold_metric(c[len("metrics."):]), _final_fold_name(c[len("metrics."):]))
            for c in runs.columns if c.startswith("metrics.")}
    cols = {c: (parsed[0], name) for c, (parsed, name) in cols.items() if name is not None}
    base_cols = ["run_id", "trial_id", "task", "metric", "method", "arm", "seed", "status",
                 "role", "outer_fold", *[c for c in ("variant", "setting") if c in trials]]
    if cols:
        long = runs[["run_id", *cols]].melt(id_vars="run_id", var_name="col", value_name="value")
        long = long.dropna(subset=["value"])
        long["fold"] = long["col"].map(lambda c: cols[c][0])
        long["name"] = long["col"].map(lambda c: cols[c][1])
        wide = long.pivot_table(index=["run_id", "fold"], columns="name", values="value",
                                aggfunc="first")
        wide.columns.name = None
    else:
        wide = pd.DataFrame(index=pd.MultiIndex.from_tuples([], names=["run_id", "fold"]))
    expected = pd.MultiIndex.from_tuples(
        [(r, f) for r, fs in zip(trials["run_id"], trials["folds"], strict=True) for f in fs],
        names=["run_id", "fold"])
    index = wide.index.union(expected) if len(expected) else wide.index
    folds = wide.reindex(index).reset_index()
    keep = base_cols + [c for c in trials.columns if is_param_column(c)]
    folds = folds.merge(trials[keep], on="run_id", how="left")
    front = base_cols + ["fold"]
    rest = [c for c in folds.columns if c not in front]
    folds = _broadcast_seedless(folds[front + rest], trials)
    return folds.sort_values(["task", "arm", "seed", "fold"]).reset_index(drop=True)


def _broadcast_seedless(folds: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Rows of seedless runs (a deterministic baseline, logged once) repeated for every seed of
    the task's other runs, so that (seed, fold) pairing works whatever seeds the model ran."""
    seedless_runs = set(trials.loc[trials["seedless"], "run_id"])
    if not seedless_runs:
        return folds
    is_seedless = folds["run_id"].isin(seedless_runs)
    parts = [folds[~is_seedless]]
    for task, rows in folds[is_seedless].groupby("task", sort=False):
        others = folds[~is_seedless & (folds["task"] == task)]
        seeds = sorted(others["seed"].unique()) or [-1]
        parts += [rows.assign(seed=s) for s in seeds]
    return pd.concat(parts, ignore_index=True)


def load_study(experiment: str, tracking_uri: str | None = None, *,
               parent_run_id: str | None = None) -> Study:
    """Read the study named ``experiment`` (= MLflow experiment name) into tidy tables.

    The parent is the run tagged ``ks.role=study`` (the most recent one if there are several, or
    ``parent_run_id``); trials are its children (tag ``mlflow.parentRunId``).
    """
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise AnalysisError(missing_experiment(experiment, uri, names))
    with _tracking(uri):
        runs = mlflow.search_runs(experiment_ids=[exp.experiment_id], max_results=100000)
    if runs.empty:
        raise AnalysisError(f"experiment '{experiment}' at '{uri}' has no runs")
    role = runs.get(f"tags.{Tags.ROLE}", pd.Series([None] * len(runs), index=runs.index))
    parent_col = runs.get(f"tags.{Tags.PARENT}",
                          pd.Series([None] * len(runs), index=runs.index))
    notes: list[str] = []
    parents = runs[role == Roles.STUDY].sort_values("start_time", ascending=False)
    if parent_run_id is not None:
        if parent_run_id not in set(runs["run_id"]):
            raise AnalysisError(f"run '{parent_run_id}' is not in experiment '{experiment}' at "
                                f"'{uri}'")
        parent = runs[runs["run_id"] == parent_run_id].iloc[0]
    elif len(parents):
        parent = parents.iloc[0]
        if len(parents) > 1:
            others = ", ".join(parents["run_id"].iloc[1:])
            notes.append(f"{len(parents)} study (parent) runs found; analysed the most recent, "
                         f"{parent['run_id']} (others: {others}; pass --parent-run-id to choose)")
    else:
        parent = None
    parent_params: dict[str, str] = {}
    if parent is not None:
        children = runs[parent_col == parent["run_id"]]
        parent_tags = {c[len("tags."):]: v for c, v in parent.items()
                       if c.startswith("tags.") and isinstance(v, str)}
        parent_params = {param_name(c): str(v) for c, v in parent.items()
                         if is_param_column(c) and isinstance(v, str)}
        parent_id: str | None = str(parent["run_id"])
    else:
        children = runs[role == Roles.TRIAL]
        parent_tags, parent_id = {}, None
        notes.append("no parent run tagged ks.role=study; analysed the runs tagged ks.role=trial "
                     "and did not log the report to MLflow")
    if children.empty:
        where = f"child runs of parent {parent_id}" if parent_id else "runs tagged ks.role=trial"
        raise AnalysisError(f"experiment '{experiment}' at '{uri}' has no trial runs ({where})")
    children = children.dropna(axis=1, how="all").reset_index(drop=True)
    searched = [p.strip() for p in parent_tags.get(Tags.SEARCHED, "").split(",") if p.strip()]
    trials = _tidy_trials(children, searched)
    if ((trials["seed"] == -1) & ~trials["seedless"]).any():
        notes.append("some trials have no single seed (fold values averaged over seeds, or no "
                     "seed logged); they are listed and paired under seed -1")
    folds = _tidy_folds(children, trials)
    metric_cols = [c for c in children.columns if c.startswith("metrics.")]
    present = children[metric_cols].notna().to_numpy(dtype=bool).reshape(len(children), -1)
    keys = np.array([c[len("metrics."):] for c in metric_cols], dtype=object)
    metric_keys = {rid: set(keys[row]) for rid, row in zip(children["run_id"], present,
                                                           strict=True)}
    return Study(name=experiment, tracking_uri=uri, experiment_id=exp.experiment_id,
                 parent_run_id=parent_id, parent_tags=parent_tags, trials=trials, folds=folds,
                 metric_keys=metric_keys, notes=notes, parent_params=parent_params)


def metric_histories(study: Study, keys: Iterable[str],
                     run_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Per-epoch values of ``keys`` (columns run_id, arm, method, task, key, step, value)."""
    client = MlflowClient(tracking_uri=study.tracking_uri)
    wanted = set(run_ids) if run_ids is not None else None
    info = study.trials.set_index("run_id")[["arm", "method", "task"]]
    frames = []
    for run_id, logged in study.metric_keys.items():
        if wanted is not None and run_id not in wanted:
            continue
        for key in keys:
            if key not in logged:
                continue
            hist = client.get_metric_history(run_id, key)
            if not hist:
                continue
            frames.append(pd.DataFrame({"run_id": run_id, "key": key,
                                        "step": [m.step for m in hist],
                                        "value": [m.value for m in hist]}))
    if not frames:
        return pd.DataFrame(columns=["run_id", "arm", "method", "task", "key", "step", "value"])
    out = pd.concat(frames, ignore_index=True)
    out = out.join(info, on="run_id")
    return out[["run_id", "arm", "method", "task", "key", "step", "value"]]


def has_artifact(study: Study, run_id: str, path: str) -> bool:
    client = MlflowClient(tracking_uri=study.tracking_uri)
    return any(f.path == path for f in client.list_artifacts(run_id))


def load_predictions(study: Study, run_id: str) -> pd.DataFrame | None:
    """The run's ``predictions.parquet`` artifact, or None when the run did not log one."""
    if not has_artifact(study, run_id, Artifacts.PREDICTIONS):
        return None
    with tempfile.TemporaryDirectory(prefix="ks-pred-") as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=Artifacts.PREDICTIONS, dst_path=tmp,
            tracking_uri=study.tracking_uri)
        return pd.read_parquet(Path(local))
