"""End-to-end studies through `python -m study.run` on real Ray and a real MLflow store."""

from __future__ import annotations

import json
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.study_helpers import (
    SMOKE,
    T,
    hold_lock,
    run_study,
    runs,
    study_main,
    unexpected_stderr,
    write_space,
)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke") / "study"
    proc = run_study(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out.parent / "stdout.txt").write_text(proc.stdout)  # what the user saw (progress tests)
    (out.parent / "stderr.txt").write_text(proc.stderr)
    return out


def test_smoke_study_writes_everything(smoke: Path) -> None:
    for name in ("config.yaml", "splits.parquet", "summary.csv", "best_config.yaml", "mlflow.db",
                 "study.json"):
        assert (smoke / name).is_file(), name
    # the synthetic cohort is generated once per parameter set into the shared cache, not
    # copied into each study folder; the study records which one it used
    from ksmodel.data import cache_dir
    from study.space import load_study

    key = load_study(SMOKE).synthetic.key()
    state = json.loads((smoke / "study.json").read_text())
    assert Path(state["cohort"]) == cache_dir() / "synthetic" / key
    assert (Path(state["cohort"]) / "clinical.parquet").is_file()
    assert not (smoke / "cohort").exists()
    summary = pd.read_csv(smoke / "summary.csv")
    assert len(summary) == 4
    assert set(summary["status"]) <= {"COMPLETED", "STOPPED_EARLY"}
    best = yaml.safe_load((smoke / "best_config.yaml").read_text())
    assert best["auc"] == pytest.approx(summary["val_auc"].max())
    assert {"lr", "alpha", "lam", "coordination"} <= set(best["params"])


def test_smoke_study_mlflow_layout(smoke: Path) -> None:
    parents, children = runs(smoke, "smoke")
    assert len(parents) == 1 and len(children) == 4
    parent_id = parents["run_id"].iloc[0]
    assert (children["tags.mlflow.parentRunId"] == parent_id).all()
    assert set(children["status"]) == {"FINISHED"}
    assert children["params.alpha"].notna().all() and children["params.lr"].notna().all()
    assert (children[T.METHOD] == "cgcoord").all()
    client = MlflowClient(f"sqlite:///{smoke / 'mlflow.db'}")
    for _, row in children.iterrows():
        history = client.get_metric_history(row["run_id"], "val_auc")
        stopped = row[T.STATUS] == "STOPPED_EARLY"
        assert len(history) == (int(row[T.STOPPED_AT]) if stopped else 4)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
            range(1, len(history) + 1))
        assert len(client.get_metric_history(row["run_id"], "coord/conflict_rate")) == len(history)
        # final per-fold metrics exist exactly for the trials that ran to completion
        assert pd.notna(row["metrics.fold_1/final_auc"]) == (not stopped)
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"config.yaml", "splits.parquet", "summary.csv", "best_config.yaml"} <= artifacts


def test_asha_stops_bad_trials_early(smoke: Path) -> None:
    _, children = runs(smoke, "smoke")
    status = children[T.STATUS]
    assert (status == "STOPPED_EARLY").sum() >= 1, status.tolist()
    assert (status == "COMPLETED").sum() >= 1
    stopped = children[status == "STOPPED_EARLY"]
    completed = children[status == "COMPLETED"]
    # the trials ASHA kept are not worse than the ones it stopped at the rung they shared
    assert completed["metrics.val_auc"].max() >= stopped["metrics.val_auc"].max()


def test_every_trial_saw_identical_folds(smoke: Path) -> None:
    splits = pd.read_parquet(smoke / "splits.parquet").set_index("case_id")["fold"]
    assert splits.nunique() == 2
    _, children = runs(smoke, "smoke")
    assert children[T.FOLDS].nunique() == 1
    mlflow.set_tracking_uri(f"sqlite:///{smoke / 'mlflow.db'}")
    completed = children[children[T.STATUS] == "COMPLETED"]
    assert len(completed) >= 1
    for run_id in completed["run_id"]:
        path = mlflow.artifacts.download_artifacts(run_id=run_id,
                                                   artifact_path="predictions.parquet")
        pred = pd.read_parquet(path)
        assert sorted(pred["case_id"]) == sorted(splits.index)  # every case validated once
        assert (pred.set_index("case_id")["fold"] == splits.loc[pred["case_id"]].values).all()


def test_every_checkpoint_the_saved_state_names_exists_and_is_kept(
        smoke: Path, tmp_path: Path) -> None:
    """The saved state names a checkpoint per trial; each exists with a linked kept copy, older
    copies are pruned, and one Ray deleted is put back from its copy before a resume."""
    from study.kept_checkpoints import KEPT, named_checkpoints, newest_state, put_back

    experiment = smoke / "ray" / "smoke"
    named = named_checkpoints(newest_state(experiment).read_bytes())
    assert len(named) == 4  # every trial checkpointed after epoch 1 at least
    for trial, name in named:
        saved, kept = experiment / trial / name, experiment / KEPT / trial / name
        assert saved.is_dir() and kept.is_dir()
        assert {p.name for p in (experiment / KEPT / trial).iterdir()} == {name}  # pruned
        for f in saved.iterdir():  # a hard link: the same file, no second copy on disk
            assert (kept / f.name).stat().st_ino == f.stat().st_ino

    from study import kept_checkpoints

    kept_checkpoints._DECODED.clear()  # decoded once per distinct trial entry, then remembered
    state = newest_state(experiment).read_bytes()
    assert named_checkpoints(state) == named and len(kept_checkpoints._DECODED) == 4
    assert named_checkpoints(state) == named and len(kept_checkpoints._DECODED) == 4

    copy = tmp_path / "smoke"
    shutil.copytree(experiment, copy)  # the study's own folder stays as it is
    trial, name = sorted(named)[0]
    shutil.rmtree(copy / trial / name)  # what Ray does when a newer checkpoint arrives
    assert put_back(copy) == [f"{trial}/{name}"]
    assert sorted(p.name for p in (copy / trial / name).iterdir()) == \
        sorted(p.name for p in (experiment / trial / name).iterdir())
    assert put_back(copy) == []


def test_existing_study_folder_is_not_overwritten(
        smoke: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (smoke / "summary.csv").read_bytes()
    proc = study_main(capsys, "--space", str(SMOKE), "--out", str(smoke), "--num-cpus", "2")
    assert proc.returncode == 2
    assert "--resume" in proc.stderr and str(smoke) in proc.stderr
    assert (smoke / "summary.csv").read_bytes() == before


def _record(out: Path) -> dict:
    """Everything a --resume could touch: runs, their metrics and artifacts, the folder."""
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    parents, children = runs(out, "smoke")
    record = {"runs": sorted(zip(pd.concat([parents, children])["run_id"],
                                 pd.concat([parents, children])["status"],
                                 pd.concat([parents, children])["end_time"].astype(str),
                                 strict=True))}
    parent = parents["run_id"].iloc[0]
    record["best"] = [(m.step, m.value, m.timestamp)
                      for m in client.get_metric_history(parent, "best_auc")]
    record["artifacts"] = sorted((a.path, a.file_size) for a in client.list_artifacts(parent))
    record["files"] = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    return record


def test_resume_of_a_finished_study_is_a_fast_noop(smoke: Path) -> None:
    before = _record(smoke)
    start = time.perf_counter()
    proc = run_study(smoke, "--resume", timeout=60)
    took = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "already finished" in proc.stdout and "nothing to do" in proc.stdout
    assert "Ray" not in proc.stdout + proc.stderr
    assert took < 3.0, took  # no Ray start, no training stack imported
    assert _record(smoke) == before  # nothing logged, written or moved


def test_stale_lock_of_a_killed_command_is_taken_over(smoke: Path) -> None:
    holder = hold_lock(smoke)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    proc = run_study(smoke, "--resume", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert f"took over the stale lock of {smoke} left by pid {holder.pid}" in proc.stdout


@pytest.mark.cluster
def test_multi_node_cluster_study(tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        space = write_space(tmp_path / "space.yaml", scheduler={"type": "none"}, num_samples=4)
        out = tmp_path / "study"
        proc = run_study(out, "--address", cluster.address, space=space, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        parents, children = runs(out, "smoke")
        assert len(parents) == 1 and len(children) == 4
        assert (children[T.STATUS] == "COMPLETED").all()
        nodes = set(children[T.NODE_ID])
        assert len(nodes) >= 2, nodes
        assert nodes <= {w.node_id for w in workers}  # the head has no CPU for trials
    finally:
        cluster.shutdown()


def test_mismatched_synthetic_cohort_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A cached synthetic cohort whose files no longer match its key is reported, not used."""
    from ksmodel.config import SyntheticConfig
    from ksmodel.data import CACHE_ENV
    from ksmodel.synthetic import ensure_synthetic
    from study.space import load_study

    cache = tmp_path / "cache"
    wanted = load_study(SMOKE).synthetic
    other = SyntheticConfig(patients=40, patches=20, dim=8, seed=1)
    ensure_synthetic(cache / "synthetic" / wanted.key(), other, quiet=True)
    monkeypatch.setenv(CACHE_ENV, str(cache))
    proc = study_main(capsys, "--space", str(SMOKE), "--out", str(tmp_path / "study"),
                      "--num-cpus", "2")
    assert proc.returncode == 2  # smoke.yaml asks for 80 patients, dim 32
    assert "other parameters" in proc.stderr and "patients" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- what a researcher sees (issue 15): progress lines, the end-of-run hint, trial artifacts ---

PROGRESS_LINE = re.compile(r"^\[\d\d:\d\d\] ")


def test_smoke_progress_lines_replace_rays_table(smoke: Path) -> None:
    stdout = (smoke.parent / "stdout.txt").read_text()
    lines = [line for line in stdout.splitlines() if PROGRESS_LINE.match(line)]
    assert lines and max(len(line) for line in lines) < 120
    starts = [line for line in lines if " started " in line]
    assert len(starts) == 4 and all("alpha=" in line and "lr=" in line for line in starts)
    summary = pd.read_csv(smoke / "summary.csv")
    stopped = [line for line in lines if "stopped early by ASHA at epoch" in line]
    completed = [line for line in lines if re.search(r"completed 4 epochs\s+val_auc 0\.\d{3}",
                                                     line)]
    assert len(stopped) == (summary["status"] == "STOPPED_EARLY").sum()
    assert len(completed) == (summary["status"] == "COMPLETED").sum()
    status = [line for line in lines if re.search(r"trial \d/4 epoch \d/4 val_auc", line)]
    assert len(status) == summary["epochs"].sum()  # one status line per reported epoch
    assert all(re.search(r"of 4 \| best 0\.\d{3} \(trial \d\) \| left ", line)
               for line in status)
    # Ray's own table and experiment header are gone; early stops are not "TERMINATED"
    for ray_text in ("TERMINATED", "Trial status", "Configuration for experiment",
                     "A new study created"):
        assert ray_text not in stdout, ray_text


def _unwrapped(text: str) -> str:
    """Shell commands printed over several lines (`` \\`` continuations) as one line each."""
    return re.sub(r" \\\n\s+", " ", text)


def test_smoke_summary_ends_with_the_best_trial_then_the_hints(smoke: Path) -> None:
    """The summary: counts, the table, the best trial (the answer lines follow it), then the
    hints: the MLflow UI command, the URL of the trials side by side, the best trial's page
    and the report command, last."""
    from study.view import run_url, trials_url

    stdout = (smoke.parent / "stdout.txt").read_text()
    summary = pd.read_csv(smoke / "summary.csv")
    done = summary[summary["status"] == "COMPLETED"]
    best = done.loc[done["val_auc"].idxmax()]
    experiment = MlflowClient(f"sqlite:///{smoke / 'mlflow.db'}").get_experiment_by_name("smoke")
    base, venv = "http://127.0.0.1:5000", Path(sys.executable).parent
    end = stdout[stdout.rindex("\nsmoke: 4 trials in "):]
    counts = end.splitlines()[1]
    stopped = int((summary["status"] == "STOPPED_EARLY").sum())
    assert counts.endswith(f": {len(done)} completed, {stopped} stopped early by ASHA, 0 failed")
    lines = _unwrapped(end).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("best: trial"))
    assert lines[at].startswith(f"best: trial {best['trial_id']}, val_auc {best['val_auc']:.4f}"
                                f" after 4 epochs, lr=")
    verdict = lines[at + 2:]  # after the best configuration's file: the verdict, then hints
    assert verdict[0].startswith("Verdict (diagnosis, auc; Bayesian correlated t-test"), verdict
    hints = lines[lines.index("MLflow: start the UI with"):]
    assert all(line.startswith(("Verdict", "  ")) for line in lines[at + 2:lines.index(hints[0])])
    assert hints == [
        "MLflow: start the UI with",
        f"  {venv / 'mlflow'} ui --backend-store-uri sqlite:///{smoke / 'mlflow.db'} "
        "--host 127.0.0.1 --port 5000",
        "then open the trials side by side (status, metric, searched parameters):",
        f"  {trials_url(base, experiment.experiment_id)}",
        "the best trial's page (params, metrics, validation curves, predictions):",
        f"  {run_url(base, experiment.experiment_id, best['mlflow_run_id'])}",
        "Report (tables, paired statistics, figures):",
        f"  {venv / 'python'} -m analysis.compare --experiment smoke --tracking-uri "
        f"sqlite:///{smoke / 'mlflow.db'}"], "\n".join(hints)
    assert all("?workflowType=machine_learning" in line for line in hints if "http" in line)
    assert max(map(len, stdout.splitlines())) <= 120


def test_smoke_terminal_has_none_of_ray_or_mlflow_chatter(smoke: Path) -> None:
    """Ray's token-authentication notice, its INFO lines, the trials' "Checkpoint successfully
    created" lines, the exit of a stopped trial and MLflow's store set-up stay off the
    terminal (--verbose keeps them); nothing goes to stderr in a clean run (but a diagnostic
    Ray's C++ runtime may write, `RAY_RAW`)."""
    stderr = (smoke.parent / "stderr.txt").read_text()
    stdout = (smoke.parent / "stdout.txt").read_text()
    for noise in ("Token authentication", "Checkpoint successfully created",
                  "repeated", "Started a local Ray instance", "Wrote the latest version",
                  "Creating initial MLflow database", "Exception ignored", "not writable",
                  "snapshotting"):
        assert noise not in stderr + stdout, noise
    assert unexpected_stderr(stderr) == [], stderr[-2000:]


def test_smoke_trials_carry_previewable_artifacts(smoke: Path, tmp_path: Path) -> None:
    _, children = runs(smoke, "smoke")
    client = MlflowClient(f"sqlite:///{smoke / 'mlflow.db'}")
    for _, row in children.iterrows():
        names = {a.path for a in client.list_artifacts(row["run_id"])}
        assert "val_curves.png" in names, (row[T.STATUS], names)  # stopped early ones too
        png = Path(client.download_artifacts(row["run_id"], "val_curves.png", str(tmp_path)))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        if row[T.STATUS] != "COMPLETED":
            continue
        assert {"predictions.csv", "predictions.parquet"} <= names
        csv = pd.read_csv(client.download_artifacts(row["run_id"], "predictions.csv",
                                                     str(tmp_path)))
        parquet = pd.read_parquet(client.download_artifacts(row["run_id"],
                                                            "predictions.parquet",
                                                            str(tmp_path)))
        assert list(csv.columns) == list(parquet.columns) and len(csv) == len(parquet)
        assert (csv["case_id"].astype(str) == parquet["case_id"].astype(str)).all()


def test_per_fold_axis_stays_within_a_bounded_metric(tmp_path: Path) -> None:
    """Two folds give a 95% t-interval wider than AUC's range; the axis is not stretched
    past 1 to draw it (the smoke report's per-fold plot reached 1.2)."""
    from analysis.figures import per_fold

    folds = pd.DataFrame({"task": "diagnosis", "arm": ["a", "a", "b", "b"], "seed": 0,
                          "fold": [0, 1, 0, 1], "status": "COMPLETED",
                          "auc": [0.91, 0.86, 0.74, 0.66]})
    fig = per_fold(folds, "auc", "diagnosis", ["a", "b"], tmp_path / "per_fold.png")
    low, high = fig.stats["ylim"]
    assert 0.0 <= low < 0.66 and 0.91 < high <= 1.0
    assert fig.path.is_file()


def test_state_backup_benchmark_times_a_grown_state(smoke: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/state_backup.py stays runnable on a real study's experiment folder: it
    times a backup of the state grown to N distinct trial entries, decoded afresh and
    remembered."""
    from benchmarks import state_backup
    from study import kept_checkpoints

    kept_checkpoints._DECODED.clear()
    assert state_backup.main(["--experiment", str(smoke / "ray" / "smoke"), "--trials", "12",
                              "--repeats", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == "12" and float(row[2]) > 0 and float(row[3]) > 0
    assert len(kept_checkpoints._DECODED) >= 12  # every grown entry decoded on its own
