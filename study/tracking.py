"""The MLflow layout of a study: one experiment, a parent run, one child run per trial.

Trials log their own child run (from whichever node they run on) so metrics and artifacts are
written where they are produced; the driver's `TrialStatusCallback` only closes runs that a
trial could not close itself (stopped by ASHA, killed with its node, interrupted). Epoch logs go
through one background thread as one `log_batch` per epoch, so training never waits on MLflow.

Retries: a retried trial (Ray's FailureConfig, or `--resume`) finds the earlier run with the same
trial id, marks it KILLED if it was left RUNNING, and links the new run to it (`ks.retry_of`).
A trial whose run already COMPLETED is not trained again (see `completed_run`).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from study.record import Artifacts, Roles, Status, Tags, run_name

T = TypeVar("T")


def retry(fn: Callable[[], T], attempts: int = 5) -> T:
    """Run an MLflow call, retrying transient store errors (SQLite locks, server hiccups)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - any store error is retried, then re-raised
            if i == attempts - 1 or "RESOURCE_ALREADY_EXISTS" in str(exc):
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


def default_tracking_uri(out: Path) -> str:
    return f"sqlite:///{(out / 'mlflow.db').resolve()}"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """Get or create the study's experiment once, on the driver (parallel creation races)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - lost a race with another driver: read it back
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_parent_run(client: MlflowClient, experiment_id: str, name: str,
                     tags: dict[str, str], artifacts: list[Path]) -> str:
    """The study's parent run: the trials' runs point at it through `mlflow.parentRunId`."""
    run = retry(lambda: client.create_run(experiment_id, run_name=run_name(Roles.STUDY, name),
                                          tags={Tags.ROLE: Roles.STUDY, **tags}))
    for path in artifacts:
        retry(lambda p=path: client.log_artifact(run.info.run_id, str(p)))
    return run.info.run_id


def _params(params: dict[str, Any]) -> list[Param]:
    return [Param(k, str(list(v) if isinstance(v, tuple) else v)[:6000])
            for k, v in sorted(params.items())]


def _metrics(values: dict[str, float], step: int) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def _tags(tags: dict[str, Any]) -> list[RunTag]:
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


class TrialLogger:
    """A trial's child run. Created inside the trial process, on the node that runs it."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, trial_id: str,
                 params: dict[str, Any], tags: dict[str, Any]) -> None:
        self.client = MlflowClient(tracking_uri)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-log")
        self._pending: list[Future] = []
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
        log_batched(self.client, self.run_id, params=_params(params))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        """Queue one epoch's metrics; written by the background thread as one batch."""
        batch = _metrics(metrics, epoch)
        self._pending.append(self._pool.submit(log_batched, self.client, self.run_id,
                                               metrics=batch))

    def _drain(self) -> None:
        for fut in self._pending:
            fut.result()
        self._pending.clear()

    def complete(self, final: dict[str, float], predictions: pd.DataFrame,
                 tags: dict[str, Any]) -> None:
        """Predictions first, then final metrics and the COMPLETED tag in one batch: a run
        tagged COMPLETED always has everything (a crash before `set_terminated` is closed on
        resume by `close_completed`)."""
        self._drain()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Artifacts.PREDICTIONS
            predictions.to_parquet(path, index=False)
            retry(lambda: self.client.log_artifact(self.run_id, str(path)))
        log_batched(self.client, self.run_id, metrics=_metrics(final, 0),
                    tags=_tags({**tags, Tags.STATUS: Status.COMPLETED}))
        retry(lambda: self.client.set_terminated(self.run_id, "FINISHED"))
        self._pool.shutdown()

    def fail(self, exc: BaseException) -> None:
        with contextlib.suppress(Exception):  # the original error matters more
            self._drain()
        text = "".join(traceback.format_exception(exc))
        log_batched(self.client, self.run_id, tags=_tags(
            {Tags.STATUS: Status.FAILED, Tags.ERROR: f"{type(exc).__name__}: {exc}"[:5000]}))
        retry(lambda: self.client.log_text(self.run_id, text, Artifacts.ERROR))
        retry(lambda: self.client.set_terminated(self.run_id, "FAILED"))
        self._pool.shutdown()


class TrialStatusCallback(tune.Callback):
    """Driver side: close the child runs that their trial could not close itself."""

    def __init__(self, tracking_uri: str, experiment_id: str) -> None:
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id

    def _open_run(self, trial: Any) -> Any | None:
        runs = trial_runs(MlflowClient(self.tracking_uri), self.experiment_id, trial.trial_id)
        return runs[-1] if runs and runs[-1].info.status == "RUNNING" else None

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._open_run(trial)
        if run is None:
            return
        client = MlflowClient(self.tracking_uri)
        done = trial.last_result.get("training_iteration", 0)
        log_batched(client, run.info.run_id, tags=_tags(
            {Tags.STATUS: Status.STOPPED_EARLY, Tags.STOPPED_AT: done}))
        retry(lambda: client.set_terminated(run.info.run_id, "FINISHED"))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run = self._open_run(trial)
        if run is None:
            return
        client = MlflowClient(self.tracking_uri)
        error = trial.error_filename if hasattr(trial, "error_filename") else None
        message = "trial process died (node lost or killed)"
        if error and Path(error).is_file():
            message = Path(error).read_text()[-5000:]
        log_batched(client, run.info.run_id, tags=_tags({Tags.STATUS: Status.FAILED,
                                                          Tags.ERROR: message}))
        retry(lambda: client.set_terminated(run.info.run_id, "FAILED"))


def log_frame(client: MlflowClient, run_id: str, frame: pd.DataFrame, name: str) -> None:
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    retry(lambda: client.log_text(run_id, buf.getvalue(), name))


__all__ = ["TrialLogger", "TrialStatusCallback", "ensure_experiment", "default_tracking_uri",
           "completed_run", "close_completed", "start_parent_run", "log_batched", "log_frame",
           "retry"]
