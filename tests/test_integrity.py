"""Study folder integrity: one study per folder (the lock), a store no early reader can break, no
epoch lost when a trial stops, a final step that fails cleanly and is finished by --resume."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from study.lock import StudyBusyError, StudyLock, lock_path, read_holder, stale_note
from study.reconcile import reconcile_reported
from study.record import Roles, Status, Tags
from study.results import EPOCH, LOGGED_AT, RUN_ID
from tests.analysis_fixtures import fresh_store
from tests.study_helpers import (
    ROOT,
    SMOKE,
    T,
    error_lines,
    hold_lock,
    lock_is_free,
    run_study,
    runs,
    start_study,
    study_env,
    study_main,
    write_space,
)

TERMINAL = {"FINISHED", "FAILED", "KILLED"}



# ---------------------------------------------------------------------------- the lock


def test_lock_refuses_a_second_holder_and_names_it(tmp_path: Path) -> None:
    out = tmp_path / "study"
    holder = hold_lock(out)
    try:
        with pytest.raises(StudyBusyError, match=f"pid {holder.pid} on "):
            StudyLock.acquire(out)
        assert not out.exists()  # refusing wrote nothing into the folder
        assert lock_path(out).parent == tmp_path and lock_path(out).name == ".study.lock"
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_holder_is_taken_over(tmp_path: Path) -> None:
    out = tmp_path / "study"
    holder = hold_lock(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert read_holder(lock_path(out)).pid == holder.pid  # its record is left behind
    with StudyLock.acquire(out) as lock:
        assert lock.taken_over is not None and lock.taken_over.pid == holder.pid
        note = stale_note(lock)
        assert f"pid {holder.pid}" in note and "that process is gone" in note
        assert read_holder(lock_path(out)).pid == os.getpid()
    assert lock_path(out).read_text() == ""  # a clean release leaves no holder behind
    with StudyLock.acquire(out) as lock:
        assert lock.taken_over is None and stale_note(lock) is None


CHILD_KEEPS_RUNNING = """
import subprocess, sys, time
from pathlib import Path
from study.lock import StudyLock
lock = StudyLock.acquire(Path(sys.argv[1]))
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


def test_processes_started_by_the_holder_do_not_keep_its_lock(tmp_path: Path) -> None:
    """Ray's processes are started the same way (fork + exec): a SIGKILLed driver's lock is
    free while they live on."""
    out = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", CHILD_KEEPS_RUNNING, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, env=study_env())
    child = int(holder.stdout.readline())
    try:
        assert not lock_is_free(out)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # still alive
        assert lock_is_free(out)
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("state,commands", [
    ({"name": "smoke"}, [(), ("--overwrite",), ("--resume",)]),
    ({"name": "smoke", "finished": True}, [("--resume",)])], ids=["unfinished", "finished"])
def test_commands_on_a_locked_folder_are_refused_naming_the_holder(
        tmp_path: Path, state: dict, commands: list[tuple[str, ...]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """The holder is another process; the refused commands run `study.run.main` here."""
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.json").write_text(json.dumps(state))
    holder = hold_lock(out)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        for args in commands:
            proc = study_main(capsys, "--space", str(SMOKE), "--out", str(out),
                              "--num-cpus", "2", *args)
            assert proc.returncode == 2, (args, proc.stderr)
            errors = error_lines(proc.stderr)
            assert len(errors) == 1 and f"pid {holder.pid} on " in errors[0], proc.stderr
            assert "Traceback" not in proc.stderr
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing moved or written
    assert sorted(p.name for p in out.iterdir()) == ["study.json"]


# ---------------------------------------------------------------------------- the store

BUILD_STORES = """
import sys
from pathlib import Path
from study.store import ensure_store
for line in sys.stdin:  # one store per line the test writes, as soon as it is asked for
    ensure_store(f"sqlite:///{line.strip()}", "exp", Path(sys.argv[1]))
    print("built", flush=True)
"""


def _read_store(db: Path) -> tuple[bool, str | None]:
    """Open the store as MLflow readers do (a fresh store object: schema check, migrations if
    tables are missing) and read it raw; (experiment 'exp' visible, error)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as con:
            tables = {r[0] for r in con.execute("select name from sqlite_master")}
            assert {"experiments", "runs", "metrics", "alembic_version"} <= tables, tables
    except Exception as exc:  # noqa: BLE001 - recorded and asserted on
        return False, f"{type(exc).__name__}: {exc}"
    return _read_store_named(db, "exp")


def test_store_appears_complete_to_a_reader_polling_for_it(tmp_path: Path) -> None:
    """Three builds, each watched from the instant it is asked for; one builder process makes
    them in turn (its imports once, not three times)."""
    proc = subprocess.Popen([sys.executable, "-c", BUILD_STORES, str(tmp_path / "art")],
                            cwd=ROOT, env=study_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        for attempt in range(3):
            db = tmp_path / f"s{attempt}" / "mlflow.db"
            db.parent.mkdir()
            proc.stdin.write(f"{db}\n")
            proc.stdin.flush()
            while not db.exists():
                assert proc.poll() is None or db.exists(), "the build ended without a store"
                time.sleep(0.001)
            found, error = _read_store(db)  # the very first look
            assert error is None and found, error
            assert proc.stdout.readline().strip() == "built"
            assert not list(db.parent.glob(".mlflow.db.*"))  # no build leftovers
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()


def test_a_store_from_the_schema_template_is_a_freshly_migrated_one(tmp_path: Path) -> None:
    """A study's new store is a copy of the schema migrated once per MLflow version into the
    cache (`schema_template`): it holds what a store MLflow has just migrated holds."""
    from study.store import ensure_store, schema_template

    def contents(db: Path) -> tuple[list, set, list]:
        client = MlflowClient(f"sqlite:///{db}")
        experiments = sorted((e.experiment_id, e.name, e.artifact_location)
                             for e in client.search_experiments())
        with sqlite3.connect(db) as con:
            # MLflow's own migrations write a table's constraints in an order that varies with
            # the interpreter's hash seed (seen: runs_lifecycle_stage before or after the status
            # CHECK), so a CREATE statement is compared as its set of definition lines
            schema = {(kind, name, table, frozenset(line.strip().rstrip(",")
                                                    for line in (sql or "").splitlines()))
                      for kind, name, table, sql in con.execute(
                          "select type, name, tbl_name, sql from sqlite_master")}
            version = con.execute("select version_num from alembic_version").fetchall()
        con.close()
        return experiments, schema, version

    fresh, copied = tmp_path / "fresh" / "mlflow.db", tmp_path / "copied" / "mlflow.db"
    cache = tmp_path / "cache"
    ensure_store(f"sqlite:///{fresh}", "exp", tmp_path / "art")  # MLflow's own migrations
    ensure_store(f"sqlite:///{copied}", "exp", tmp_path / "art", cache)
    template = schema_template(cache)
    made = template.stat().st_mtime_ns
    assert schema_template(cache) == template and template.stat().st_mtime_ns == made  # once
    (exp_f, schema_f, version_f), (exp_c, schema_c, version_c) = contents(fresh), contents(copied)
    assert [e[1] for e in exp_c] == ["Default", "exp"] and exp_c == exp_f
    assert version_c == version_f
    assert schema_c == schema_f, (sorted(schema_c - schema_f), sorted(schema_f - schema_c))


# ---------------------------------------------------------------------------- reconciliation


def test_reconcile_fills_lost_epochs_once(tmp_path: Path) -> None:
    from mlflow.entities import Metric

    client = MlflowClient(fresh_store(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    exp = client.create_experiment("r", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(exp).info.run_id
    stamps = {1: 1000, 2: 2000, 3: 3000}
    reported = [{EPOCH: e, RUN_ID: run_id, LOGGED_AT: stamps[e], "val_auc": 0.5 + e / 10,
                 "train_loss": 1.0 / e, "fold_0/val_auc": 0.4 + e / 10, "coord/cos_mean": 0.1,
                 "setup_seconds": 1.0, "node_id": "n"} for e in (1, 2, 3)]
    # the trial's own log of epoch 1 made it; epochs 2 and 3 were lost
    client.log_batch(run_id, metrics=[Metric(k, reported[0][k], 1000, 1) for k in
                                      ("val_auc", "train_loss", "fold_0/val_auc",
                                       "coord/cos_mean")])
    assert reconcile_reported(client, reported, "auc") == {run_id: [2, 3]}
    # a late write by the trial of the same epoch, and a second reconciliation, add nothing
    client.log_batch(run_id, metrics=[Metric("val_auc", reported[2]["val_auc"], 3000, 3)])
    assert reconcile_reported(client, reported, "auc") == {}
    for key in ("val_auc", "train_loss", "fold_0/val_auc", "coord/cos_mean"):
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in history] == [(r[EPOCH], r[key]) for r in reported]
    assert client.get_metric_history(run_id, "setup_seconds") == []  # not an epoch metric
    assert "epochs 2,3" in client.get_run(run_id).data.tags[Tags.RECONCILED]


SIGTERMED_TRIAL = """
import os, signal, sys, time
from pathlib import Path
from study.store import ensure_store
from study.store import ensure_experiment
from study.tracking import TrialLogger, mlflow_client
uri = sys.argv[1]
ensure_store(uri, "e", Path(sys.argv[2]))
exp = ensure_experiment(mlflow_client(uri), "e", None)
logger = TrialLogger(uri, exp, "parent", "t1", {"lr": 0.1}, {})
print(logger.run_id, flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # what a Ray worker does on SIGTERM
for epoch in range(1, 31):
    logger.log_epoch(epoch, {f"m{i}": epoch + i for i in range(40)})
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(60)
"""


def test_sigterm_of_a_trial_process_writes_every_queued_epoch(tmp_path: Path) -> None:
    uri = fresh_store(f"sqlite:///{tmp_path / 'mlflow.db'}")  # the schema is not the point
    proc = subprocess.run([sys.executable, "-c", SIGTERMED_TRIAL, uri, str(tmp_path / "a")],
                          cwd=ROOT, env=study_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    run_id = proc.stdout.split()[0]
    client = MlflowClient(uri)
    for key in ("m0", "m39"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == \
            list(range(1, 31))


# ---------------------------------------------------------------------------- end to end


def _tiny_space(tmp_path: Path, **changes: object) -> Path:
    return write_space(tmp_path / "space.yaml", **{"scheduler": {"type": "none"},
                                                   "num_samples": 2, "epochs": 2, **changes})


def _wait_for_study_json(proc: subprocess.Popen, out: Path, poll: float) -> None:
    """Until the started study has written its state file (its parent run exists from then)."""
    deadline = time.time() + 300
    while not (out / "study.json").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        time.sleep(poll)


def _assert_one_intact_study(out: Path, trials: int) -> pd.DataFrame:
    parents, children = runs(out, "smoke")
    assert len(parents) == 1
    assert len(children) == trials and children[T.TRIAL_ID].is_unique
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    assert set(children["status"]) | set(parents["status"]) <= TERMINAL
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(summary["mlflow_run_id"]) == sorted(children["run_id"])
    return children


@pytest.mark.slow
@pytest.mark.parametrize("first,second", [("plain", "plain"), ("plain", "cohort"),
                                          ("cohort", "plain")])
def test_two_studies_started_together_into_one_folder(tmp_path: Path, small_cohort: Path,
                                                      first: str, second: str) -> None:
    space = _tiny_space(tmp_path)
    out = tmp_path / "study"
    extra = {"plain": (), "cohort": ("--cohort", str(small_cohort))}
    procs = [start_study(out, *extra[first], space=space),
             start_study(out, *extra[second], space=space)]
    results = [p.communicate(timeout=600) + (p.returncode,) for p in procs]
    codes = sorted(r[2] for r in results)
    assert codes == [0, 2], [r[1][-2000:] for r in results]
    winner = next(p for p, r in zip(procs, results, strict=True) if r[2] == 0)
    loser_err = next(r[1] for r in results if r[2] == 2)
    errors = error_lines(loser_err)
    assert len(errors) == 1 and f"pid {winner.pid} on " in errors[0], loser_err
    assert "Traceback" not in loser_err
    _assert_one_intact_study(out, 2)
    kind = first if winner is procs[0] else second
    cohort = json.loads((out / "study.json").read_text())["cohort"]
    assert (Path(cohort) == small_cohort) == (kind == "cohort")
    assert not list(tmp_path.glob("study.*"))  # nothing was moved aside
    assert lock_is_free(out) and lock_path(out).read_text() == ""


@pytest.mark.slow
def test_running_study_refuses_overwrite_and_resume(tmp_path: Path) -> None:
    space = write_space(tmp_path / "space.yaml", num_samples=4, epochs=4)
    out = tmp_path / "study"
    proc = start_study(out, space=space)
    _wait_for_study_json(proc, out, poll=0.2)
    for args in (("--overwrite",), ("--resume",)):
        refused = run_study(out, *args, space=space, timeout=120)
        assert refused.returncode == 2
        errors = error_lines(refused.stderr)
        assert len(errors) == 1 and f"pid {proc.pid} on " in errors[0], refused.stderr
    assert proc.poll() is None, "the study ended before both commands were refused"
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    _assert_one_intact_study(out, 4)
    assert not list(tmp_path.glob("study.*"))
    # once it has ended, --overwrite starts afresh and keeps the finished study aside
    again = run_study(out, "--overwrite", "--num-samples", "1", "--epochs", "1", space=space)
    assert again.returncode == 0, again.stderr[-3000:]
    (aside,) = tmp_path.glob("study.*")
    assert len(pd.read_csv(aside / "summary.csv")) == 4
    _assert_one_intact_study(aside, 4)
    # this process's MLflow keeps a connection to the moved file under the old URI, so the new
    # store is read with sqlite3 directly
    with sqlite3.connect(out / "mlflow.db") as db:
        roles = dict(db.execute("select value, count(*) from tags where key = ? group by value",
                                (Tags.ROLE,)).fetchall())
    assert roles[Roles.STUDY] == 1 and roles[Roles.TRIAL] == 1, roles
    assert len(pd.read_csv(out / "summary.csv")) == 1
    assert lock_is_free(out) and lock_path(out).read_text() == ""


@pytest.mark.slow
def test_reader_polling_the_store_from_its_first_instant(tmp_path: Path) -> None:
    space = _tiny_space(tmp_path, num_samples=1)
    for attempt in range(3):
        out = tmp_path / f"study{attempt}"
        db = out / "mlflow.db"
        proc = start_study(out, space=space)
        looks: list[tuple[bool, str | None]] = []

        def poll(db: Path = db, proc: subprocess.Popen = proc,
                 looks: list = looks) -> None:
            while not db.exists() and proc.poll() is None:
                time.sleep(0.001)
            end = time.time() + 15
            while db.exists() and time.time() < end and proc.poll() is None:
                looks.append(_read_store_named(db, "smoke"))

        reader = threading.Thread(target=poll, daemon=True)
        reader.start()
        _, err = proc.communicate(timeout=600)
        reader.join(timeout=120)  # it once hung a slow pass for 25 min: fail and say where
        assert not reader.is_alive(), "a store read never returned:\n" + _stack(reader)
        assert proc.returncode == 0, err[-3000:]
        assert looks, "the reader never saw the store"
        assert looks[0] == (True, None), looks[0]  # complete, with the experiment, at first sight
        assert not [e for _, e in looks if e and ("alembic" in e or "no such table" in e)]
        _assert_one_intact_study(out, 1)


def _stack(thread: threading.Thread) -> str:
    frame = sys._current_frames().get(thread.ident)
    return "".join(traceback.format_stack(frame)) if frame else "(no frame)"


def _read_store_named(db: Path, name: str) -> tuple[bool, str | None]:
    """(experiment ``name`` visible, error) through a fresh MLflow store object (its cached
    engine is dropped afterwards, so the next read opens the file anew)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{db}"
    try:
        return MlflowClient(uri).get_experiment_by_name(name) is not None, None
    except Exception as exc:  # noqa: BLE001 - recorded and asserted on
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()


@pytest.mark.slow
def test_aggressive_asha_loses_no_epoch(tmp_path: Path) -> None:
    """Many short trials, most stopped by ASHA inside `tune.report`: every epoch any trial
    reported to Ray is in its MLflow run exactly once, with the reported value."""
    space = write_space(tmp_path / "space.yaml", num_samples=16, epochs=4, sampler="random",
                        scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 4})
    out = tmp_path / "study"
    proc = run_study(out, space=space, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, children = runs(out, "smoke")
    assert len(children) == 16
    assert (children[T.STATUS] == "STOPPED_EARLY").sum() >= 8  # ASHA did stop most of them
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    keys = ["val_auc", "train_loss", "fold_0/val_auc", "fold_1/val_auc", "coord/cos_mean"]
    for result in (out / "ray" / "smoke").glob("*/result.json"):
        reported = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        assert reported, result
        run_id = reported[-1][RUN_ID]
        for key in keys:
            history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            assert [(m.step, m.value) for m in history] == \
                [(r[EPOCH], r[key]) for r in reported], (run_id, key)
        run = client.get_run(run_id)
        assert run.info.status in TERMINAL
        assert run.data.tags[Tags.STATUS] in Status.USABLE


def _parent_artifact_dir(out: Path) -> Path:
    from urllib.parse import urlparse

    state = json.loads((out / "study.json").read_text())
    run = MlflowClient(state["tracking_uri"]).get_run(state["parent_run_id"])
    return Path(urlparse(run.info.artifact_uri).path)


@pytest.mark.slow
def test_final_step_failure_closes_every_run_and_resume_finishes(tmp_path: Path) -> None:
    space = _tiny_space(tmp_path, num_samples=2)
    out = tmp_path / "study"
    proc = start_study(out, space=space)
    _wait_for_study_json(proc, out, poll=0.1)
    # the parent run's artifact folder becomes a file: writing into it fails, even as root
    artifacts = _parent_artifact_dir(out)
    assert (artifacts / "config.yaml").is_file()
    artifacts.rename(artifacts.with_name("kept"))
    artifacts.write_text("not a folder")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err[-3000:]
    errors = error_lines(err)
    assert len(errors) == 1 and "--resume" in errors[0], err[-3000:]
    assert "Traceback" not in err
    parents, children = runs(out, "smoke")
    assert set(parents["status"]) == {"FAILED"} and set(children["status"]) <= TERMINAL
    assert (children[T.STATUS] == "COMPLETED").all()
    assert not json.loads((out / "study.json").read_text())["finished"]

    artifacts.unlink()
    artifacts.with_name("kept").rename(artifacts)
    resumed = run_study(out, "--resume", space=space, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "every trial ended in an earlier run" in resumed.stdout
    assert "resuming" not in resumed.stdout  # Ray was not restarted
    parents, after = runs(out, "smoke")
    assert set(parents["status"]) == {"FINISHED"}
    assert sorted(after["run_id"]) == sorted(children["run_id"])  # nothing trained again
    parent_id = parents["run_id"].iloc[0]
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    assert len(client.get_metric_history(parent_id, "best_auc")) == 1
    assert Tags.ERROR not in client.get_run(parent_id).data.tags
    assert {"summary.csv", "best_config.yaml"} <= {a.path for a in
                                                   client.list_artifacts(parent_id)}
    assert (out / "best_config.yaml").is_file()
    assert json.loads((out / "study.json").read_text())["finished"]


@pytest.mark.slow
def test_stopped_driver_leaves_every_run_closed_and_resumes(tmp_path: Path) -> None:
    """SIGTERM (as a batch system sends it) takes Ctrl-C's way: Tune's graceful stop."""
    space = write_space(tmp_path / "space.yaml", scheduler={"type": "none"}, num_samples=4,
                        epochs=6)
    out = tmp_path / "study"
    proc = start_study(out, space=space)
    client = None
    deadline = time.time() + 300
    while True:  # stop it while trials are running
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:]
        if (out / "study.json").is_file():
            client = client or MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
            state = json.loads((out / "study.json").read_text())
            running = client.search_runs(
                [state["experiment_id"]],
                f"attributes.status = 'RUNNING' and tags.`{Tags.ROLE}` = '{Roles.TRIAL}'")
            if running:  # a trial is training (the parent and baselines open earlier)
                break
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted:" in err and "--resume" in err
    parents, children = runs(out, "smoke")
    assert set(parents["status"]) | set(children["status"]) <= TERMINAL
    assert lock_is_free(out) and lock_path(out).read_text() == ""  # released, not stale
    resumed = run_study(out, "--resume", space=space, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, after = runs(out, "smoke")
    final = after.sort_values("start_time").groupby(T.TRIAL_ID).last()
    assert len(final) == 4 and (final[T.STATUS] == "COMPLETED").all()
    assert set(after["status"]) <= TERMINAL


def test_a_stop_signal_dropped_inside_a_gc_callback_is_raised_at_the_next_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI run's SIGTERM landed in SQLAlchemy's weakref callback, where Python drops the
    KeyboardInterrupt, and the study ran to the end with exit 0: the handler remembers it."""
    from study.local_ray import StopSignal

    stop = StopSignal()
    stop.check()  # no signal: nothing

    class Collected:
        def __del__(self) -> None:  # a GC callback: what it raises is printed and dropped
            stop(signal.SIGTERM, None)

    dropped = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    Collected()
    assert dropped == [KeyboardInterrupt]  # dropped, as in the CI run
    with pytest.raises(KeyboardInterrupt):
        stop.check()


@pytest.mark.slow
def test_sigterm_while_the_study_is_set_up_closes_what_it_opened(tmp_path: Path) -> None:
    """A stop before the trials start (store, baselines, Ray starting) also takes Ctrl-C's way:
    exit 130 with one line saying how to continue, no traceback, every run closed."""
    space = _tiny_space(tmp_path)
    out = tmp_path / "study"
    proc = start_study(out, space=space)
    _wait_for_study_json(proc, out, poll=0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "interrupted" in err, err[-3000:]
    parents, children = runs(out, "smoke")
    assert len(parents) == 1
    assert set(parents["status"]) | set(children["status"]) <= TERMINAL
    assert lock_is_free(out)
