"""Faults a real cluster throws at a study: a killed driver, failing trials, a lost node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from tests.study_helpers import (
    ROOT,
    SMOKE,
    T,
    lock_is_free,
    run_study,
    runs,
    study_env,
    write_space,
)

TERMINAL = {"FINISHED", "FAILED", "KILLED"}


def _store_counts(out: Path) -> tuple[int, int]:
    """(completed, running) child runs in the study's MLflow store, 0s while it is not there.

    study.json is written once the driver has created the store; opening the SQLite file any
    earlier would race the driver's schema migration."""
    if not (out / "study.json").is_file():
        return 0, 0
    try:
        _, children = runs(out, "smoke")
    except Exception:  # noqa: BLE001 - the store is being created
        return 0, 0
    if children.empty:
        return 0, 0
    return (int((children[T.STATUS] == "COMPLETED").sum()),
            int((children["status"] == "RUNNING").sum()))


def _oldest_running_s(out: Path) -> float:
    """Seconds since the oldest still-running trial run started (0 when none)."""
    try:
        _, children = runs(out, "smoke")
    except Exception:  # noqa: BLE001 - the store is being created
        return 0.0
    running = children[children["status"] == "RUNNING"] if not children.empty else children
    if running.empty:
        return 0.0
    return (pd.Timestamp.now(tz="UTC") - running["start_time"].min()).total_seconds()


def _ray_alive(group: int) -> bool:
    """Whether any process of the killed driver's session (its local Ray) still runs."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_resume_after_sigkill(tmp_path: Path) -> None:
    # trials of several seconds (workers are reused, so a trial costs little beyond training)
    space = write_space(tmp_path / "space.yaml", scheduler={"type": "none"}, num_samples=6,
                        epochs=16)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "study.run", "--space", str(space), "--out", str(out),
           "--num-cpus", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True,
                            env=study_env())
    deadline = time.time() + 300
    while time.time() < deadline:
        done, running = _store_counts(out)
        # a running trial old enough to be in Ray's saved state (saved every second), so the
        # resume retries it
        if done >= 2 and running >= 1 and _oldest_running_s(out) >= 2:
            break
        assert proc.poll() is None, "the study ended before it could be interrupted"
        time.sleep(0.5)
    else:
        pytest.fail("no two trials completed within 300 s")
    os.kill(proc.pid, signal.SIGKILL)  # the driver alone first: its lock dies with it, even
    proc.wait()                         # while the Ray processes it started live on
    assert _ray_alive(proc.pid)
    assert lock_is_free(out)
    os.killpg(proc.pid, signal.SIGKILL)  # then the local Ray it started
    _, before = runs(out, "smoke")
    finished = before[before[T.STATUS] == "COMPLETED"].set_index("run_id")
    assert len(finished) >= 2

    resumed = run_study(out, "--resume", space=space, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"took over the stale lock of {out} left by pid {proc.pid}" in resumed.stdout
    _, after = runs(out, "smoke")
    completed = after[after[T.STATUS] == "COMPLETED"]
    assert len(completed) == 6  # exactly the requested number, no duplicates
    assert completed[T.TRIAL_ID].is_unique
    assert set(after["status"]) <= TERMINAL, after["status"].tolist()
    # the trials finished before the kill were not re-run: same runs, same numbers
    kept = after.set_index("run_id").loc[finished.index]
    assert (kept[T.STATUS] == "COMPLETED").all()
    assert kept["metrics.final_auc"].tolist() == finished["metrics.final_auc"].tolist()
    assert kept["start_time"].tolist() == finished["start_time"].tolist()
    per_trial = after.groupby(T.TRIAL_ID).size()
    assert (per_trial[finished[T.TRIAL_ID]] == 1).all()  # no second attempt
    # interrupted attempts are closed, and each retry links the attempt it replaces (a trial
    # started within the last second before the kill may be missing from Ray's saved state:
    # its attempt is closed too, and the search proposes another configuration instead)
    killed = after[after["status"] == "KILLED"]
    assert (killed[T.STATUS] == "INTERRUPTED").all()
    retry_of = set(after[T.RETRY_OF].dropna()) if T.RETRY_OF in after else set()
    assert retry_of and retry_of <= set(killed["run_id"])
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["status"] == "COMPLETED").sum() == 6


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="uses device=cuda as a failing config")
def test_failing_and_nan_trials_do_not_stop_the_study(tmp_path: Path) -> None:
    # a 2 x 2 grid: device=cuda raises on a CPU machine; lam=1e39 overflows the loss to inf
    fixed = {k: v for k, v in yaml.safe_load(SMOKE.read_text())["fixed"].items() if k != "lam"}
    space = write_space(
        tmp_path / "space.yaml", sampler="grid", scheduler={"type": "none"}, epochs=2,
        max_failures=1, fixed=fixed,
        search={"device": {"type": "categorical", "values": ["cpu", "cuda"]},
                "lam": {"type": "categorical", "values": [0.1, 1.0e39]}})
    out = tmp_path / "study"
    proc = run_study(out, space=space, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # one trial completed
    summary = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert sorted(summary["status"]) == ["COMPLETED", "FAILED", "FAILED", "FAILED"]
    shown = " ".join(summary["error"])  # the trials' own errors, as a user reads them
    assert "NonFiniteLossError" in shown and "CUDA" in shown, shown
    assert "\x1b[" not in shown and "ray::" not in shown, shown
    _, children = runs(out, "smoke")
    assert set(children["status"]) <= TERMINAL
    final = children.sort_values("start_time").groupby(T.TRIAL_ID).last()
    assert sorted(final[T.STATUS]) == ["COMPLETED", "FAILED", "FAILED", "FAILED"]
    failed = final[final[T.STATUS] == "FAILED"]
    assert (failed["status"] == "FAILED").all()
    errors = " ".join(failed[T.ERROR])
    assert "NonFiniteLossError" in errors and "CUDA" in errors
    # each failing trial was retried once (max_failures: 1), and the retry links its attempt
    assert (children.groupby(T.TRIAL_ID).size()[failed.index] == 2).all()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run_id = failed["run_id"].iloc[0]
    assert "error.txt" in {a.path for a in client.list_artifacts(run_id)}


@pytest.mark.cluster
def test_lost_worker_node_trials_retried_elsewhere(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        keep = cluster.add_node(num_cpus=1)
        doomed = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        space = write_space(tmp_path / "space.yaml", scheduler={"type": "none"}, num_samples=4,
                            epochs=8, max_failures=2)
        out = tmp_path / "study"
        cmd = [sys.executable, "-m", "study.run", "--space", str(space), "--out", str(out),
               "--address", cluster.address]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=study_env())
        deadline = time.time() + 300
        while time.time() < deadline:
            _, running = _store_counts(out)
            if running >= 2:  # both nodes busy
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("trials never ran on both nodes")
        cluster.remove_node(doomed)
        stdout, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-3000:]
        summary = pd.read_csv(out / "summary.csv")
        assert (summary["status"] == "COMPLETED").sum() == 4
        _, children = runs(out, "smoke")
        assert set(children["status"]) <= TERMINAL
        final = children.sort_values("start_time").groupby(T.TRIAL_ID).last()
        assert (final[T.STATUS] == "COMPLETED").all()
        assert (final[T.NODE_ID] == keep.node_id).any()
        # the trial that lost its node left a closed run and was retried on the kept node
        assert (children["status"] != "FINISHED").any()
    finally:
        cluster.shutdown()
