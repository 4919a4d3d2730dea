"""Helpers for tests that run real studies (real Ray, real MLflow SQLite store)."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from study.record import Roles, Tags

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "search_spaces" / "smoke.yaml"


class T:
    """Column names of the record's tags in a ``mlflow.search_runs`` frame."""

    ROLE, STATUS, TRIAL_ID, METHOD = (f"tags.{t}" for t in (Tags.ROLE, Tags.STATUS, Tags.TRIAL_ID,
                                                             Tags.METHOD))
    STOPPED_AT, FOLDS, NODE_ID, ERROR = (f"tags.{t}" for t in (Tags.STOPPED_AT, Tags.FOLDS,
                                                                Tags.NODE_ID, Tags.ERROR))
    RETRY_OF, ATTEMPT, SEED = (f"tags.{t}" for t in (Tags.RETRY_OF, Tags.ATTEMPT, Tags.SEED))


def study_env(**extra: str) -> dict[str, str]:
    """The environment a study subprocess gets: this one, minus any exported MLflow store
    (mlflow.set_tracking_uri in the test process exports MLFLOW_TRACKING_URI)."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**base, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1", **extra}


def run_study(out: Path, *args: str, space: Path = SMOKE, timeout: float = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m study.run` as a user runs it, in a subprocess."""
    cmd = [sys.executable, "-m", "study.run", "--space", str(space), "--out", str(out),
           "--num-cpus", "2", *args]
    if any(a.startswith("--address") for a in args):
        cmd.remove("--num-cpus")
        cmd.remove("2")
    full_env = study_env(**(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=full_env)
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-6000:], sep="\n---stderr---\n")
    return proc


def study_main(capsys, *args: str) -> subprocess.CompletedProcess:
    """`study.run.main(args)` in this process, for a command that is refused before any study
    starts (where a subprocess would only add 5-15 s of imports): its exit code, stdout and
    stderr as `run_study` returns them. The environment variables and log levels `main` sets
    for a study are put back; ``capsys`` is pytest's fixture (what `main` printed)."""
    import logging

    from study.quiet import AUTH_LOGGER, QUIET_LOGGERS
    from study.run import main

    environ = dict(os.environ)
    loggers = [logging.getLogger(n) for n in (*QUIET_LOGGERS, AUTH_LOGGER)]
    levels = [lg.level for lg in loggers]
    capsys.readouterr()
    try:
        code = main(list(args))
    finally:
        os.environ.clear()
        os.environ.update(environ)
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(["study.run", *args], code, out.out, out.err)


def write_space(path: Path, base: Path = SMOKE, **changes: object) -> Path:
    """A copy of a study file with top-level keys changed (None deletes a key)."""
    raw = yaml.safe_load(base.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def runs(out: Path, name: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(parent runs, child runs) of a study, read back through mlflow.search_runs."""
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    frame = mlflow.search_runs(experiment_names=[name], max_results=10_000)
    parents = frame[frame[T.ROLE] == Roles.STUDY]
    children = frame[frame[T.ROLE] == Roles.TRIAL]
    return parents, children


def start_study(out: Path, *args: str, space: Path = SMOKE,
                env: dict[str, str] | None = None) -> subprocess.Popen:
    """`python -m study.run` started in the background (its own session, so the test can kill
    the driver and the local Ray it started together)."""
    cmd = [sys.executable, "-m", "study.run", "--space", str(space), "--out", str(out),
           "--num-cpus", "2", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=study_env(**(env or {})))


HOLD_LOCK = """
import sys, time
from pathlib import Path
from study.lock import StudyLock
lock = StudyLock.acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_lock(out: Path, seconds: float = 120) -> subprocess.Popen:
    """Another process holding the study folder's lock (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env=study_env())
    assert proc.stdout.readline().strip() == "held"
    return proc


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def lock_is_free(out: Path) -> bool:
    """Probe a study folder's lock without taking it over (its record is left as it is)."""
    from study.lock import lock_path

    with open(lock_path(out), "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


RAY_RAW = re.compile(r"^(\x1b\[\d+m)?\((?:\w+ )?pid=\d+\)(\x1b\[0m)? \[mutex\.cc : \d+\] RAW: ")
"""A diagnostic Ray's C++ runtime (abseil) sometimes writes from a worker; Python cannot turn
it off."""


def unexpected_stderr(stderr: str) -> list[str]:
    """A study's stderr lines, but for `RAY_RAW` ones: what a clean run must not print."""
    return [line for line in stderr.splitlines() if line.strip() and not RAY_RAW.match(line)]
