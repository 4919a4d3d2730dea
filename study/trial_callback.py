"""The Ray Tune driver callback of a study: close the trial runs a trial could not close itself,
refill epochs whose MLflow batch was lost (study/reconcile.py), and stop the study on a fault
of its own files (study/faults.py). It runs in the driver; the trials log themselves through
study/tracking.py."""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray import cloudpickle, tune
from ray.exceptions import RayActorError

from study.curves import curves_png
from study.faults import Fault, StudyFault, error_text, find_fault, text_fault
from study.reconcile import epoch_metric_names, reconcile_reported
from study.record import Artifacts, Status, Tags, parse_fold_metric
from study.results import EPOCH, ITERATION, LOGGED_AT, REPLAYED, RUN_ID
from study.tracking import as_tags, log_batched, mlflow_client, retry, trial_runs


def trial_error(trial: Any) -> BaseException | str | None:
    """What a trial raised, as Ray kept it: the exception (pickled beside the trial's results)
    or, when it could not be pickled, the text of its last failure."""

    path = getattr(trial, "pickled_error_file", None)
    if path and Path(path).is_file():
        try:
            with open(path, "rb") as f:
                return cloudpickle.load(f)
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        with contextlib.suppress(OSError):
            return Path(path).read_text(errors="replace").rsplit("Failure # ", 1)[-1][-20000:]
    return None


def _died(exc: BaseException | str | None) -> bool:

    return isinstance(exc, RayActorError) or exc is None


class TrialStatusCallback(tune.Callback):
    """Driver side: close the child runs that their trial could not close itself, and refill
    any epoch a trial reported to Ray but whose MLflow batch was lost (study/reconcile.py).

    The refill waits `settle_s` after the trial ended (a stopped trial is still writing its
    last batch when Ray calls back) and runs for every remaining trial when the experiment
    ends (its workers are gone by then).

    A trial's error is read from what Ray kept of it. A fault on the study's own files
    (``roots``: its folders; ``store``: the SQLite file) - in a trial's error or in one of this
    callback's own writes - stops the study: `fault` is set and `StudyFault` ends Ray Tune at
    once, so the state it saved the moment before (the faulted trials still running) is what
    --resume continues. Any other failure of a write here is a warning: the study's finish
    closes what is left open."""

    def __init__(self, tracking_uri: str, experiment_id: str, metric: str,
                 settle_s: float = 5.0, roots: tuple[Path, ...] = (),
                 store: str | None = None) -> None:
        self.tracking_uri, self.experiment_id, self.metric = tracking_uri, experiment_id, metric
        self.settle_s = settle_s
        self.roots, self.store = roots, store
        self.reported: dict[str, list[dict[str, Any]]] = {}
        self._ended: list[tuple[float, str]] = []
        self.filled: dict[str, list[int]] = {}
        self.interrupted = False  # a stop signal ended the experiment before its end
        self.unfinished = 0  # trials not ended at the last step
        self.fault: Fault | None = None  # the fault that stopped the study
        self._previous_sigterm: Any = None

    def setup(self, **info: Any) -> None:
        """Route SIGTERM, like Ctrl-C, to Tune's graceful stop (it saves the experiment state
        for --resume) and remember that the experiment was interrupted. Tune installs its
        Ctrl-C handler just before calling this; a second signal stops at once."""
        if threading.current_thread() is not threading.main_thread():
            return
        tune_handler = signal.getsignal(signal.SIGINT)

        def stop(signum: int, frame: Any) -> None:
            if self.interrupted or not callable(tune_handler):
                raise KeyboardInterrupt
            self.interrupted = True
            tune_handler(signal.SIGINT, frame)

        signal.signal(signal.SIGINT, stop)
        self._previous_sigterm = signal.signal(signal.SIGTERM, stop)

    @property
    def client(self) -> MlflowClient:
        return mlflow_client(self.tracking_uri)

    def _stop(self, fault: Fault) -> None:
        if self.fault is None:
            self.fault = fault
        raise StudyFault(self.fault)

    def _write(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run one MLflow call of this callback: a fault stops the study, anything else is a
        warning (None returned)."""
        try:
            return fn()
        except StudyFault:
            raise
        except Exception as exc:  # noqa: BLE001 - classified: a fault, or a warning
            fault = find_fault(exc, self.roots, self.store)
            if fault is not None:
                self._stop(fault)
            print(f"warning: could not write {what} to MLflow: {error_text(exc)}", flush=True)
            return None

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        keep = {RUN_ID, EPOCH, LOGGED_AT, REPLAYED, *epoch_metric_names(result, self.metric)}
        self.reported.setdefault(trial.trial_id, []).append(
            {k: v for k, v in result.items() if k in keep})

    def _latest_run(self, trial: Any, by_result: bool) -> Any | None:
        run_id = (trial.last_result or {}).get(RUN_ID) if by_result else None
        if run_id:
            return retry(lambda: self.client.get_run(run_id))
        runs = trial_runs(self.client, self.experiment_id, trial.trial_id)
        return runs[-1] if runs else None

    def _open_run(self, trial: Any, by_result: bool) -> Any | None:
        run = self._latest_run(trial, by_result)
        return run if run is not None and run.info.status == "RUNNING" else None

    def _reconcile(self, trial_id: str) -> None:
        rows = self.reported.pop(trial_id, [])
        filled = self._write(f"trial {trial_id}'s missing epochs",
                             lambda: reconcile_reported(self.client, rows, self.metric))
        self.filled.update(filled or {})

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.unfinished = sum(t.status not in ("TERMINATED", "ERROR") for t in trials)
        now = time.monotonic()
        while self._ended and self._ended[0][0] <= now:
            self._reconcile(self._ended.pop(0)[1])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.append((time.monotonic() + self.settle_s, trial.trial_id))
        run = self._write("a stopped trial's status",
                          lambda: self._open_run(trial, by_result=True))
        if run is None:
            return
        done = trial.last_result.get(ITERATION, 0)
        self._log_curves(run.info.run_id, self.reported.get(trial.trial_id, []))
        self._write(f"run {run.info.run_id}'s status", lambda: (
            log_batched(self.client, run.info.run_id, tags=as_tags(
                {Tags.STATUS: Status.STOPPED_EARLY, Tags.STOPPED_AT: done})),
            retry(lambda: self.client.set_terminated(run.info.run_id, "FINISHED"))))

    def _log_curves(self, run_id: str, rows: list[dict[str, Any]]) -> None:
        """A trial stopped by the scheduler gets its validation-curve PNG from here, from the
        epochs it reported to Ray: its own process may be ended before it can draw one."""
        curves: dict[str, dict[int, float]] = {}
        for row in rows:
            for name, value in row.items():
                fold = parse_fold_metric(name)
                if row.get(EPOCH) is not None and (fold[1] if fold else name).startswith("val_"):
                    curves.setdefault(name, {})[int(row[EPOCH])] = float(value)
        if not curves:
            return

        def log() -> None:
            with tempfile.TemporaryDirectory() as tmp:
                path = curves_png(curves, Path(tmp) / Artifacts.CURVES)
                retry(lambda: self.client.log_artifact(run_id, str(path)), attempts=2)

        self._write(f"run {run_id}'s validation-curve image", log)

    def _ended_by_error(self, trial: Any) -> None:
        """A trial's attempt ended with an error (retried or not): a fault stops the study;
        a failure is recorded in its run when the trial could not do so itself."""
        exc = trial_error(trial)
        fault = (find_fault(exc, self.roots, self.store) if isinstance(exc, BaseException)
                 else text_fault(exc or "", self.roots, self.store))
        if fault is not None:  # the trial's own record may say FAILED: the cause was ours
            run = self._write("a trial's status", lambda: self._latest_run(trial, False))
            if run is not None and run.data.tags.get(Tags.STATUS) in (Status.RUNNING,
                                                                      Status.FAILED):
                self._write(f"run {run.info.run_id}'s status", lambda: (
                    log_batched(self.client, run.info.run_id, tags=as_tags(
                        {Tags.STATUS: Status.INTERRUPTED, Tags.ERROR: fault.describe()})),
                    retry(lambda: self.client.set_terminated(run.info.run_id, "KILLED"))))
            self._stop(fault)
        run = self._write("a trial's status", lambda: self._open_run(trial, by_result=False))
        if run is None:
            return
        message = error_text(exc, 5000)
        if _died(exc):
            message = "trial process died (node lost or killed)" + (f": {message}" if message
                                                                      else "")
        self._write(f"run {run.info.run_id}'s status", lambda: (
            log_batched(self.client, run.info.run_id, tags=as_tags(
                {Tags.STATUS: Status.FAILED, Tags.ERROR: message})),
            retry(lambda: self.client.set_terminated(run.info.run_id, "FAILED"))))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended.append((time.monotonic() + self.settle_s, trial.trial_id))
        self._ended_by_error(trial)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """Ray retries the trial (max_failures): unless a fault ended it - then nothing is
        retried, the study stops - the retry's own run closes this attempt's."""
        exc = trial_error(trial)
        fault = (find_fault(exc, self.roots, self.store) if isinstance(exc, BaseException)
                 else text_fault(exc or "", self.roots, self.store))
        if fault is not None:
            self._ended_by_error(trial)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Workers are stopped: refill every trial not yet checked."""
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
        for trial_id in [t for _, t in self._ended] + list(self.reported):
            self._reconcile(trial_id)
        self._ended.clear()


__all__ = ["TrialStatusCallback", "trial_error"]
