"""MLflow I/O of a study: one experiment, a parent run, one child run per trial (the names are
study/record.py's).

Trials log their own child run (from whichever node they run on) so metrics and artifacts are
written where they are produced; the driver's `TrialStatusCallback` (study/trial_callback.py)
only closes runs that a trial could not close itself (stopped by ASHA, killed with its node,
interrupted). Epoch logs go through one background thread as one `log_batch` per epoch, so
training never waits on MLflow.

No epoch is lost on the way out: the logger drains and checks its queue when the trial
completes, fails, is stopped by the scheduler (which ends the trial inside ``tune.report``) or its
process exits (SIGTERM included); a batch that failed in the background is written again before
the trial ends. What a hard kill still loses, the driver refills from Ray's results
(study/reconcile.py), so every reported epoch ends up in MLflow exactly once.

Retries: a retried trial (Ray's FailureConfig, or `--resume`) finds the earlier run with the same
trial id, marks it KILLED if it was left RUNNING, and links the new run to it (`ks.retry_of`).
A trial whose run already COMPLETED is not trained again (see `completed_run`).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from study.curves import curves_png
from study.faults import error_text, find_fault
from study.record import Artifacts, Roles, Status, Tags, parse_fold_metric, run_name
from study.store import sqlite_path

T = TypeVar("T")


def retry(fn: Callable[[], T], attempts: int = 5) -> T:
    """Run an MLflow call, retrying transient store errors (SQLite locks, server hiccups)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any store error is retried, then re-raised
            if i == attempts - 1 or "RESOURCE_ALREADY_EXISTS" in str(exc) or \
                    find_fault(exc) is not None:  # a full disk, a read-only store: no retry
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


_CLIENTS: dict[str, MlflowClient] = {}
_CLIENTS_LOCK = threading.Lock()


def mlflow_client(tracking_uri: str) -> MlflowClient:
    """One client per tracking URI and process. Creating one opens the store and checks its
    schema (tens of ms); a Ray worker reused for many trials pays that once."""
    with _CLIENTS_LOCK:
        if tracking_uri not in _CLIENTS:
            _CLIENTS[tracking_uri] = MlflowClient(tracking_uri)
        return _CLIENTS[tracking_uri]


def start_parent_run(client: MlflowClient, experiment_id: str, name: str,
                     tags: dict[str, str], artifacts: list[Path],
                     on_created: Callable[[str], None] | None = None) -> str:
    """The study's parent run: the trials' runs point at it through `mlflow.parentRunId`.
    ``on_created`` gets its id the moment it exists (so a stop just after can close it)."""
    run = retry(lambda: client.create_run(experiment_id, run_name=run_name(Roles.STUDY, name),
                                          tags={Tags.ROLE: Roles.STUDY, **tags}))
    if on_created is not None:
        on_created(run.info.run_id)
    for path in artifacts:
        retry(lambda p=path: client.log_artifact(run.info.run_id, str(p)))
    return run.info.run_id


def _params(params: dict[str, Any]) -> list[Param]:
    return [Param(k, str(list(v) if isinstance(v, tuple) else v)[:6000])
            for k, v in sorted(params.items())]


def now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(values: dict[str, float], step: int, stamp: int | None = None) -> list[Metric]:
    stamp = now_ms() if stamp is None else stamp
    return [Metric(k, float(v), stamp, step) for k, v in values.items()]


def as_tags(tags: dict[str, Any]) -> list[RunTag]:
    return [RunTag(k, str(v)) for k, v in tags.items()]


def log_batched(client: MlflowClient, run_id: str, *, metrics: list[Metric] = (),
                params: list[Param] = (), tags: list[RunTag] = ()) -> None:
    """`log_batch` within MLflow's per-call limits (1000 metrics, 100 params, 100 tags)."""
    metrics, params, tags = list(metrics), list(params), list(tags)
    while metrics or params or tags:
        m, metrics = metrics[:1000], metrics[1000:]
        p, params = params[:100], params[100:]
        t, tags = tags[:100], tags[100:]
        retry(lambda m=m, p=p, t=t: client.log_batch(run_id, metrics=m, params=p, tags=t))


def trial_runs(client: MlflowClient, experiment_id: str, trial_id: str) -> list[Any]:
    return retry(lambda: client.search_runs(
        [experiment_id], filter_string=f"tags.`{Tags.TRIAL_ID}` = '{trial_id}'",
        order_by=["attributes.start_time ASC"]))


def completed_run(client: MlflowClient, experiment_id: str, trial_id: str) -> Any | None:
    """The trial's COMPLETED run, if an earlier attempt already finished it."""
    for run in trial_runs(client, experiment_id, trial_id):
        if run.data.tags.get(Tags.STATUS) == Status.COMPLETED:
            return run
    return None


def close_completed(client: MlflowClient, run: Any) -> None:
    """A COMPLETED run whose process died before closing it is finished, not lost."""
    if run.info.status == "RUNNING":
        retry(lambda: client.set_terminated(run.info.run_id, "FINISHED"))


class LoggingError(RuntimeError):
    """Epoch metrics that could not be written to MLflow, even when tried again."""


_LIVE: set[TrialLogger] = set()
_LIVE_LOCK = threading.Lock()


def _drain_live_loggers() -> None:
    """At process exit (a SIGTERMed Ray worker exits through here): write what is queued."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for logger in live:
        with contextlib.suppress(Exception):
            logger.drain()


atexit.register(_drain_live_loggers)


class TrialLogger:
    """A trial's child run. Created inside the trial process, on the node that runs it."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str,
                 params: dict[str, Any], tags: dict[str, Any],
                 earlier: list[Any] | None = None) -> None:
        self.client = mlflow_client(tracking_uri)
        self.curves: dict[str, dict[int, float]] = {}  # val metric name -> {epoch: value}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._pending: list[tuple[Future, list[Metric]]] = []
        self._closed = False
        if earlier is None:
            earlier = trial_runs(self.client, experiment_id, trial_id)
        for run in earlier:
            if run.info.status == "RUNNING":
                retry(lambda r=run: self.client.set_tag(r.info.run_id, Tags.STATUS,
                                                        Status.INTERRUPTED))
                retry(lambda r=run: self.client.set_terminated(r.info.run_id, "KILLED"))
        all_tags = {Tags.ROLE: Roles.TRIAL, Tags.TRIAL_ID: trial_id, Tags.PARENT: parent_run_id,
                    Tags.ATTEMPT: len(earlier) + 1, Tags.STATUS: Status.RUNNING, **tags}
        if earlier:
            all_tags[Tags.RETRY_OF] = earlier[-1].info.run_id
        run = retry(lambda: self.client.create_run(
            experiment_id, run_name=run_name(Roles.TRIAL, trial_id),
            tags={k: str(v) for k, v in all_tags.items()}))
        self.run_id = run.info.run_id
        self.roots = _study_roots(tracking_uri, run.info.artifact_uri)
        self.store = str(sqlite_path(tracking_uri)) if sqlite_path(tracking_uri) else None
        log_batched(self.client, self.run_id, params=_params(params))
        with _LIVE_LOCK:
            _LIVE.add(self)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> int:
        """Queue one epoch's metrics, written by the background thread as one batch. Returns
        the MLflow timestamp given to them: the trial reports it to Ray, so the driver can
        refill a lost batch with identical rows (see study/reconcile.py)."""
        stamp = now_ms()
        for name, value in metrics.items():
            fold = parse_fold_metric(name)
            if (fold[1] if fold else name).startswith("val_"):
                self.curves.setdefault(name, {})[epoch] = float(value)
        batch = _metrics(metrics, epoch, stamp)
        self._pending.append((self._pool.submit(log_batched, self.client, self.run_id,
                                                metrics=batch), batch))
        return stamp

    def drain(self, timeout: float | None = None) -> None:
        """Wait for the queued batches and check each: a batch that failed in the background
        is written again here; `LoggingError` if it still cannot be."""
        pending, self._pending = self._pending, []
        lost, cause = 0, None
        for future, batch in pending:
            try:
                future.result(timeout=timeout)
                continue
            except Exception:  # noqa: BLE001 - retried synchronously below
                pass
            try:
                log_batched(self.client, self.run_id, metrics=batch)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                lost, cause = lost + 1, exc
        if lost:  # the store's own error is the cause (a full disk is a fault, study/faults.py)
            raise LoggingError(f"{lost} epoch batch(es) of run {self.run_id} could not be "
                               f"written to MLflow: {error_text(cause)}") from cause

    def _close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False)
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def complete(self, final: dict[str, float], predictions: pd.DataFrame,
                 tags: dict[str, Any]) -> None:
        """Predictions first, then final metrics and the COMPLETED tag in one batch: a run
        tagged COMPLETED always has everything (a crash before `set_terminated` is closed on
        resume by `close_completed`)."""
        self.drain()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Artifacts.PREDICTIONS
            predictions.to_parquet(path, index=False)
            retry(lambda: self.client.log_artifact(self.run_id, str(path)))
            csv = Path(tmp) / Artifacts.PREDICTIONS_CSV  # what the MLflow UI can preview
            predictions.to_csv(csv, index=False, float_format="%.6g")
            retry(lambda: self.client.log_artifact(self.run_id, str(csv)))
        self.log_curves()
        log_batched(self.client, self.run_id, metrics=_metrics(final, 0),
                    tags=as_tags({**tags, Tags.STATUS: Status.COMPLETED}))
        retry(lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        self._close()

    def stopped(self) -> None:
        """The scheduler stopped the trial (inside `tune.report`) or its process is ending:
        write what is queued. The driver tags and closes the run (it knows why it stopped)."""
        if self._closed:
            return
        with contextlib.suppress(Exception):  # the driver refills what is still missing
            self.drain(timeout=30)
        self._close()  # the driver draws the stopped trial's curves (TrialStatusCallback)

    def log_curves(self) -> None:
        """The trial's per-fold validation curves as a small PNG artifact (`curves_png`)."""
        if not self.curves:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = curves_png(self.curves, Path(tmp) / Artifacts.CURVES)
            retry(lambda: self.client.log_artifact(self.run_id, str(path)))

    def fail(self, exc: BaseException) -> None:
        """Record why the trial ended: FAILED with its error, or INTERRUPTED when the error is a
        fault on the study's own files (study/faults.py: the study stops, --resume reruns it).

        Never raises: the caller re-raises ``exc``, which must stay the error Ray reports. Each
        step is tried on its own - queued epochs, the tags (status and cause, one batch), the
        traceback artifact, the run's end - and one that cannot be written is named on stderr;
        the driver closes a run left open (TrialStatusCallback)."""
        fault = find_fault(exc, self.roots + _trial_dir_roots(), self.store)
        if fault is not None:
            status, end, cause = Status.INTERRUPTED, "KILLED", fault.describe()
        else:
            status, end, cause = Status.FAILED, "FAILED", error_text(exc, 5000)
        text = "".join(traceback.format_exception(exc))
        steps = [("the queued epochs", lambda: self.drain(timeout=30)),
                 ("the status tags", lambda: log_batched(self.client, self.run_id, tags=as_tags(
                     {Tags.STATUS: status, Tags.ERROR: cause[:5000]}))),
                 (Artifacts.ERROR, lambda: retry(lambda: self.client.log_text(
                     self.run_id, text, Artifacts.ERROR), attempts=2)),
                 ("the run's end", lambda: retry(lambda: self.client.set_terminated(
                     self.run_id, end)))]
        for what, step in steps:
            try:
                step()
            except Exception as write_error:  # noqa: BLE001 - never masks `exc`
                print(f"warning: run {self.run_id}: could not write {what} to MLflow "
                      f"({error_text(write_error)}); the trial's error: {error_text(exc)}",
                      file=sys.stderr, flush=True)
        self._close()


def _study_roots(tracking_uri: str, artifact_uri: str | None) -> list[Path]:
    """The study's folders a trial writes to: the SQLite store's folder and the experiment's
    artifact folder (a permission error there is a fault, study/faults.py)."""
    roots = []
    db = sqlite_path(tracking_uri)
    if db is not None:
        roots.append(db.parent)
    if artifact_uri and artifact_uri.startswith("file://"):
        roots.append(Path(artifact_uri.removeprefix("file://")).parents[1])
    return roots


def _trial_dir_roots() -> list[Path]:
    """The study's Ray results folder, seen from inside a trial (none outside one)."""
    from ray import tune  # only a trial's logger asks: the driver's MLflow I/O needs no Ray

    try:
        with warnings.catch_warnings():  # outside a trial Ray warns and returns None
            warnings.simplefilter("ignore")
            trial_dir = tune.get_context().get_trial_dir()
    except Exception:  # noqa: BLE001 - not in a Ray trial, or a remote storage URI
        return []
    return [Path(trial_dir).parent] if trial_dir else []


def close_open_children(client: MlflowClient, experiment_id: str, parent_run_id: str,
                        error: str | None = None) -> int:
    """Close the study's trial runs left RUNNING by a process that died (a killed driver's
    trials that Ray had not yet recorded are never retried): INTERRUPTED (MLflow KILLED, with
    ``error`` as the cause when one is known), or FINISHED when the run had COMPLETED. Returns
    how many were closed."""
    children = retry(lambda: client.search_runs(
        [experiment_id], filter_string=f"tags.`{Tags.PARENT}` = '{parent_run_id}' "
                                       "and attributes.status = 'RUNNING'"))
    for run in children:
        if run.data.tags.get(Tags.STATUS) == Status.COMPLETED:
            close_completed(client, run)
            continue
        log_batched(client, run.info.run_id, tags=as_tags(
            {Tags.STATUS: Status.INTERRUPTED, **({Tags.ERROR: error[:5000]} if error else {})}))
        retry(lambda r=run: client.set_terminated(r.info.run_id, "KILLED"))
    return len(children)


def close_open_runs(client: MlflowClient, experiment_id: str, parent_run_id: str,
                    parent_status: str, error: str | None = None,
                    children_error: str | None = None) -> int:
    """Leave no run RUNNING: the open trial runs (`close_open_children`, ``children_error``
    their cause), then the parent with `parent_status` (and the error). Returns how many trial
    runs were closed."""
    closed = close_open_children(client, experiment_id, parent_run_id, children_error)
    if error:
        log_batched(client, parent_run_id, tags=as_tags({Tags.ERROR: error[:5000]}))
    retry(lambda: client.set_terminated(parent_run_id, parent_status))
    return closed


def log_frame(client: MlflowClient, run_id: str, frame: pd.DataFrame, name: str) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    retry(lambda: client.log_text(run_id, buf.getvalue(), name))


__all__ = ["TrialLogger", "LoggingError", "completed_run", "close_completed", "close_open_children",
           "close_open_runs",
           "start_parent_run", "log_batched", "log_frame", "mlflow_client", "now_ms", "retry"]
