"""What a study prints, checked without running one: the counts in its summary and progress
lines, the hint commands, the progress lines of a nested study's searches, the MLflow view it
saves, and the causes of noise it removes."""

from __future__ import annotations

import io
import json
import logging
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from study.finish import counts_text, next_steps, shell_lines, trial_table
from study.nested import estimate_lines
from study.progress import WIDTH, StudyProgress
from study.space import load_study
from tests.study_helpers import SMOKE

NESTED_SMOKE = SMOKE.parent / "nested_smoke.yaml"


def _summary(**counts: int) -> pd.DataFrame:
    status = [s for s, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"trial_id": [f"t{i}" for i in range(len(status))],
                         "status": status, "param.lr": 0.001, "val_auc": 0.7,
                         "epochs": 4, "error": ""})


# --- counts: no "0 stopped early by ASHA" without ASHA -----------------------------------

def test_summary_counts_name_the_stopper_only_where_it_stops_trials() -> None:
    asha, plain = load_study(SMOKE), load_study(SMOKE, {"scheduler": "none"})
    assert counts_text(_summary(COMPLETED=2), asha) == \
        "2 completed, 0 stopped early by ASHA, 0 failed"
    assert counts_text(_summary(COMPLETED=2, FAILED=1), plain) == "2 completed, 1 failed"
    assert "stopped" not in counts_text(_summary(COMPLETED=4), plain)
    assert counts_text(_summary(COMPLETED=1, NOT_RUN=2), plain) == \
        "1 completed, 0 failed, 2 not run"


class _Trial(SimpleNamespace):
    pass


def _progress(scheduler: str, **kw: object) -> tuple[StudyProgress, io.StringIO]:
    out = io.StringIO()
    clock = iter(range(0, 10_000, 3))
    p = StudyProgress("auc", 2, 3, ["lr"], scheduler=scheduler, out=out,
                      now=lambda: float(next(clock)), **kw)
    return p, out


def _run_one(p: StudyProgress, trial_id: str, completes: bool) -> None:
    t = _Trial(trial_id=trial_id, config={"lr": 0.01}, last_result={})
    p.on_trial_start(0, [], t)
    for epoch in (1, 2, 3):
        t.last_result = {"training_iteration": epoch, "val_auc": 0.6 + epoch / 100,
                         "completed": completes and epoch == 3}
        p.on_trial_result(0, [], t, t.last_result)
    p.on_trial_complete(0, [], t)


def test_progress_lines_leave_out_stops_where_nothing_stops() -> None:
    plain, out = _progress("none")
    _run_one(plain, "a", completes=True)
    plain.on_experiment_end([])
    text = out.getvalue()
    assert " stop " not in text and "stopped" not in text, text
    assert "all trials ended in" in text and "1 completed, 0 failed" in text

    asha, out = _progress("asha")
    _run_one(asha, "a", completes=False)
    asha.on_experiment_end([])
    text = out.getvalue()
    assert "stopped early by ASHA at epoch 3/3" in text and "stop 0 " in text
    assert "1 stopped early, 0 failed" in text


def test_nested_search_progress_is_labelled_and_shares_one_clock() -> None:
    """Each outer fold's search prints the cv lines, labelled "outer k", with one clock from
    the first search and the trials of the searches to come in the time estimate."""
    seconds: list[float] = []
    first, out = _progress("none", prefix="outer 0 ", started_at=0.0, later=2,
                           epoch_seconds=seconds)
    _run_one(first, "a", completes=True)
    first.on_experiment_end([])
    lines = out.getvalue().splitlines()
    assert all(line.startswith("[") and "] outer 0 " in line for line in lines), lines
    assert lines[-1].split("] ", 1)[1].startswith("outer 0 search ended in ")
    assert seconds, "the measured seconds per trial-epoch are shared"
    # 1 trial still waiting in this search + 2 of later searches, 3 epochs each
    assert first.eta() == pytest.approx(3 * 3 * np.mean(seconds))
    second, out = _progress("none", prefix="outer 1 ", started_at=-600.0,
                            epoch_seconds=seconds)
    _run_one(second, "b", completes=True)
    assert out.getvalue().startswith("[10:")  # the clock goes on from the first search


# --- the hints: commands fit the terminal and run when pasted ------------------------------

def test_hint_commands_fit_120_columns_and_keep_options_with_their_values() -> None:
    uri = "sqlite:///" + "/very/long/study/folder" * 3 + "/mlflow.db"
    text = next_steps(uri, "3", "smoke", "0" * 32)
    assert max(map(len, text.splitlines())) <= 120, text
    lines = shell_lines(["/venv/bin/mlflow", "ui", ("--backend-store-uri", uri),
                         ("--host", "127.0.0.1"), ("--port", "5000")])
    assert all(line.endswith(" \\") for line in lines[:-1]) and len(lines) > 1
    joined = " ".join(line.removesuffix(" \\").strip() for line in lines)
    assert joined == f"/venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    assert "--port 5000" in lines[-1]  # an option and its value stay on one line
    assert "workflowType=machine_learning" in text and "viewStateShareKey=trials" in text
    assert "http://mlflow:5000/#/experiments/3/runs?" in next_steps("http://mlflow:5000", "3", "s")


def test_trial_table_fits_the_terminal_best_first() -> None:
    rows = pd.DataFrame({"trial_id": [f"t{i:02d}" for i in range(30)], "status": "COMPLETED",
                         "param.lr": np.geomspace(1e-6, 1e-2, 30), "val_auc": np.linspace(0, 1, 30),
                         "epochs": 4, "error": "", "mlflow_run_id": "x", "node_id": "y"})
    text = trial_table(rows, "val_auc")
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH
    assert lines[1].strip().startswith("t29")
    assert "error" not in lines[0] and "param." not in lines[0]
    assert lines[-1] == "… and 10 more trials in summary.csv"


# --- nested: "optimistic" only when it is ----------------------------------------------------

def test_nested_estimate_calls_best_of_search_optimistic_only_when_higher() -> None:
    below = estimate_lines("auc", 0.815, 0.812, {"logreg_pca": 0.8876, "cox": None})
    assert "optimistic" not in below[1] and "0.0030 below the nested estimate" in below[1]
    assert below[2] == ("baseline logreg_pca auc 0.8876 on the same outer folds: nested "
                        "estimate -0.0726") and len(below) == 3
    above = estimate_lines("auc", 0.70, 0.75, {})
    assert above[1].endswith("optimistic by 0.0500")
    assert all(len(line) <= 120 for line in below + above)


# --- the MLflow view ------------------------------------------------------------------------

def test_trials_view_shows_status_metric_and_searched_params_of_trials_only() -> None:
    from study.view import VIEW_TAG, trials_url, view_tag_value

    envelope = json.loads(view_tag_value(load_study(SMOKE), now_ms=5))
    assert VIEW_TAG == "mlflow.sharedViewState.trials"
    assert envelope["name"] == "trials" and envelope["createdAt"] == 5
    state = json.loads(envelope["state"])  # the UI's saved-view format: state is a string
    cols = ["tags.`ks.status`", "metrics.`val_auc`", "params.`lr`", "params.`alpha`"]
    assert state["selectedColumns"] == cols and state["columnOrder"][-4:] == cols
    assert set(cols) <= set(state["columnWidths"])
    assert state["searchFilter"] == "tags.`ks.role` = 'trial'"
    assert state["orderByKey"] == "metrics.`val_auc`" and state["orderByAsc"] is False
    nested = json.loads(json.loads(view_tag_value(load_study(NESTED_SMOKE)))["state"])
    assert nested["selectedColumns"][-1] == "tags.`ks.outer_fold`"
    assert trials_url("http://h:1/", "7") == ("http://h:1/#/experiments/7/runs?"
                                              "workflowType=machine_learning&"
                                              "viewStateShareKey=trials")


# --- causes of noise ------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["diagnosis", "grade", "survival"])
def test_fold_targets_copy_read_only_targets(task: str) -> None:
    """A cohort sent through Ray's object store has read-only arrays; the fold's target
    tensors are copies (no "NumPy array is not writable" warning, no tensor aliasing
    read-only memory)."""
    from ksmodel.tasks import get_task

    t = get_task(task)
    n = 24
    targets = {"label": (np.arange(n) % t.n_outputs).astype(np.int64),
               "time": np.linspace(1.0, 900.0, n), "event": (np.arange(n) % 2).astype(np.int64)}
    for array in targets.values():
        array.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fold = t.fold_targets(targets, np.arange(n // 2))
    for name, tensor in fold.tensors.items():
        source = targets.get(name)
        if source is not None:
            assert not np.shares_memory(tensor.numpy(), source), name


def test_quiet_setup_leaves_warnings_and_verbose_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's and MLflow's INFO lines are switched off (WARNING still prints), in the driver and
    in a trial's process when the driver asked for it; --verbose changes nothing."""
    import os

    import study.quiet as quiet

    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items()
                                        if k not in quiet.ENV})
    loggers = [logging.getLogger(n) for n in (*quiet.QUIET_LOGGERS, quiet.AUTH_LOGGER)]
    levels = [lg.level for lg in loggers]
    monkeypatch.setattr("sys.unraisablehook", "untouched")
    try:
        for lg in loggers:
            lg.setLevel(logging.NOTSET)
        quiet.quiet_driver("verbose")
        quiet.quiet_worker()
        assert not set(quiet.ENV) & set(os.environ) and quiet.ray_init_kwargs("verbose") == {}
        assert logging.getLogger("ray.train").level == logging.NOTSET
        import sys
        assert sys.unraisablehook == "untouched"
        quiet.quiet_driver("normal")
        assert os.environ[quiet.QUIET_ENV] == "1"
        assert quiet.ray_init_kwargs("normal") == {"logging_level": logging.WARNING}
        assert logging.getLogger(quiet.AUTH_LOGGER).level == logging.ERROR
        logging.getLogger("ray.train").setLevel(logging.NOTSET)
        quiet.quiet_worker()  # a trial's process with the driver's environment
        assert logging.getLogger("ray.train").getEffectiveLevel() == logging.WARNING
        assert sys.unraisablehook is quiet._drop_exit_during_shutdown
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)

    reported = []
    monkeypatch.setattr("sys.__unraisablehook__", reported.append)
    quiet._drop_exit_during_shutdown(SimpleNamespace(exc_value=SystemExit(1)))
    quiet._drop_exit_during_shutdown(SimpleNamespace(exc_value=ValueError("real")))
    assert [type(u.exc_value) for u in reported] == [ValueError]


def test_only_rays_own_staging_race_is_kept_off_the_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A .ci/run's clean study printed Ray's "Saving experiment state ... failed" with a
    FileNotFoundError on Ray's own temporary file; that one is dropped, any other copy failure
    (a vanished ordinary file, even under a folder named like it, or a permission) is kept."""
    from study.quiet import AUTH_LOGGER, ENV, QUIET_LOGGERS, STATE_LOGGER, quiet_driver

    for key, value in ENV.items():  # what quiet_driver sets is put back after the test
        monkeypatch.setenv(key, os.environ.get(key, value))
    levels = {name: logging.getLogger(name).level for name in (*QUIET_LOGGERS, AUTH_LOGGER)}
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(STATE_LOGGER)
    logger.addHandler(handler)
    before = list(logger.filters)
    try:
        quiet_driver("normal")
        staging = "/tmp/ray/session_x/artifacts/smoke/driver_artifacts"
        for exc in (FileNotFoundError(f"[Errno 2] Failed to open local file '{staging}/.fa1c-"
                                      "tmp-searcher-state-2026-12-04.pkl'. Detail: [errno 2]"),
                    FileNotFoundError("[Errno 2] Failed to open local file '/data/my-tmp-runs/"
                                      "experiment_state-1.json'"),
                    PermissionError(f"[Errno 13] '{staging}/.fa1c-tmp-searcher-state.pkl'")):
            try:
                raise exc
            except OSError:
                logger.error("Saving experiment state to storage failed: ", exc_info=True)
    finally:
        logger.removeHandler(handler)
        logger.filters[:] = before
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    printed = stream.getvalue()
    assert printed.count("Saving experiment state") == 2
    assert "my-tmp-runs" in printed and "PermissionError" in printed
    assert "Detail: [errno 2]" not in printed
