"""Mid-trial checkpoints: a fold's full state round-trips, and a study killed mid-trial resumes
from its last checkpoint with the final metrics of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from ksmodel.train import FoldTrainer, train_fold
from study.kept_checkpoints import KEPT, named_checkpoints, newest_state
from study.record import Tags
from study.results import RUN_ID
from tests.study_helpers import ROOT, T, run_study, runs, study_env, write_space
from tests.test_train import _trainer

RESUMED, CHECKPOINT_OF = f"tags.{Tags.RESUMED_AT}", f"tags.{Tags.CHECKPOINT_OF}"

# dropout on (AlphaDropout draws from torch's RNG) and OGM-GE's noise: both RNG streams matter
RANDOM = dict(model={"dropout": 0.25}, coordination="ogm_ge", lam=0.1, batch_size=8)


def _fold_history(trainer: FoldTrainer) -> list[tuple]:
    return [(r.epoch, r.train_loss, r.metrics, r.telemetry) for r in trainer.history]


def _params(trainer: FoldTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("patience", [0, 2])
def test_fold_state_continues_exactly(small_cohort: Path, tmp_path: Path, patience: int) -> None:
    whole = _trainer(small_cohort, seed=5, epochs=4, patience=patience, **RANDOM)
    train_fold(whole)

    first = _trainer(small_cohort, seed=5, epochs=4, patience=patience, **RANDOM)
    for _ in range(2):
        first.fit_epoch()
    first.save(tmp_path / "fold.pt")
    state = torch.load(tmp_path / "fold.pt", weights_only=True)  # plain data only
    assert state["epoch"] == 2 and len(state["selection"]["history"]) == 2
    torch.manual_seed(1234)  # whatever the process's global RNG holds meanwhile
    resumed = _trainer(small_cohort, seed=5, epochs=4, patience=patience, **RANDOM)
    resumed.load(tmp_path / "fold.pt")
    assert resumed.epoch == 2
    train_fold(resumed)

    assert _fold_history(resumed) == _fold_history(whole)
    assert resumed.result.epoch == whole.result.epoch
    assert resumed.result.metrics == whole.result.metrics
    pd.testing.assert_frame_equal(resumed.predictions(), whole.predictions())
    for k, v in _params(whole).items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    assert resumed.opt.param_groups[0]["lr"] == whole.opt.param_groups[0]["lr"]


def test_fold_state_is_refused_by_another_fold(small_cohort: Path) -> None:
    state = _trainer(small_cohort, seed=1).get_state()
    with pytest.raises(ValueError, match="fold 0 cannot continue fold 1"):
        _trainer(small_cohort, seed=1, fold=1).set_state(state)


def test_folds_side_by_side_train_as_alone(small_cohort: Path) -> None:
    """Each fold draws from its own RNG stream: lock-step, fan-out and resume agree."""
    alone = _trainer(small_cohort, seed=2, fold=1, epochs=2, **RANDOM)
    train_fold(alone)
    a = _trainer(small_cohort, seed=2, fold=0, epochs=2, **RANDOM)
    b = _trainer(small_cohort, seed=2, fold=1, epochs=2, **RANDOM)
    while not b.done:
        a.fit_epoch()
        b.fit_epoch()
    assert _fold_history(b) == _fold_history(alone)


# --- a study killed mid-trial ------------------------------------------------------------------

LRS = [3.0e-4, 1.0e-3, 2.0e-3]  # a grid: both studies train exactly these three trials
EPOCHS = 16


def _grid_space(path: Path, **changes: object) -> Path:
    return write_space(path, sampler="grid", scheduler={"type": "none"}, epochs=EPOCHS,
                       search={"lr": {"type": "categorical", "values": LRS}}, max_concurrent=2,
                       checkpoint_every=1, **changes)


def _history(client: MlflowClient, run_id: str, key: str = "val_auc") -> list[tuple]:
    return sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key))


def _ray_rows(out: Path, trial_id: str) -> list[dict]:
    (result,) = (out / "ray" / "smoke").glob(f"run_trial_{trial_id}_*/result.json")
    return [json.loads(line) for line in result.read_text().splitlines() if line.strip()]


def _epochs_logged(out: Path) -> list[int]:
    """Epochs logged so far by each running trial run (empty until the store exists)."""
    if not (out / "study.json").is_file():
        return []
    try:
        _, children = runs(out, "smoke")
    except Exception:  # noqa: BLE001 - the store is being created
        return []
    if children.empty:
        return []
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    running = children[(children["status"] == "RUNNING") & (children[T.STATUS] == "RUNNING")]
    return [len(_history(client, r)) for r in running["run_id"]]


@pytest.mark.slow
def test_killed_study_resumes_mid_trial_with_identical_results(tmp_path: Path) -> None:
    space = _grid_space(tmp_path / "space.yaml")
    reference = tmp_path / "reference"
    proc = run_study(reference, space=space, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "study"
    log = (tmp_path / "killed.log").open("w")
    killed = subprocess.Popen(
        [sys.executable, "-m", "study.run", "--space", str(space), "--out", str(out),
         "--num-cpus", "2"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, env=study_env())
    deadline = time.time() + 600
    while time.time() < deadline:  # two trials some epochs in, far from their end
        epochs = _epochs_logged(out)
        if sum(3 <= e <= EPOCHS - 6 for e in epochs) >= 2:
            break
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.3)
    else:
        pytest.fail("two trials never got 3 epochs in")
    time.sleep(1.5)  # Ray saves the experiment's state (with the latest checkpoints) every ~1 s
    os.killpg(killed.pid, signal.SIGKILL)  # the driver and the local Ray it started
    killed.wait()
    killed_at = int(time.time() * 1000)
    _, before = runs(out, "smoke")
    # trials caught mid-way (a trial that had logged its completion is replayed, not resumed)
    interrupted = set(before.loc[(before["status"] == "RUNNING") &
                                 (before[T.STATUS] == "RUNNING"), T.TRIAL_ID])
    assert len(interrupted) >= 2
    # Ray deletes a trial's older checkpoints as new ones arrive but saves the state naming
    # the one to restart from only every second: a kill in between left a state naming a
    # deleted checkpoint (a CI run resumed to 2 of 3 trials). Make that happen here.
    experiment = out / "ray" / "smoke"
    named = named_checkpoints(newest_state(experiment).read_bytes())
    gone = next(f"{t}/{c}" for t, c in sorted(named)
                if any(f"_{i}_" in t for i in interrupted))
    shutil.rmtree(experiment / gone)

    resumed = run_study(out, "--resume", space=space, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "put back 1 checkpoint(s)" in resumed.stdout and gone in resumed.stdout

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    ref_client = MlflowClient(f"sqlite:///{reference / 'mlflow.db'}")
    _, ref_runs = runs(reference, "smoke")
    _, after = runs(out, "smoke")
    assert RESUMED not in ref_runs or ref_runs[RESUMED].isna().all()  # reused workers: no leak
    done = after[after[T.STATUS] == "COMPLETED"].set_index("params.lr")
    ref_done = ref_runs[ref_runs[T.STATUS] == "COMPLETED"].set_index("params.lr")
    assert len(done) == len(ref_done) == len(LRS)
    continued = 0
    for lr, run in done.iterrows():
        ref = ref_done.loc[lr]
        # the same trial, to the last bit: every final metric, per fold too, and the history
        finals = [c for c in ref.index if c.startswith("metrics.") and "final_" in c]
        assert len(finals) >= 3
        assert run[finals].tolist() == ref[finals].tolist(), lr
        assert [h[:2] for h in _history(client, run["run_id"])] == \
            [h[:2] for h in _history(ref_client, ref["run_id"])]
        trial = run[T.TRIAL_ID]
        if trial not in interrupted:
            assert pd.isna(run.get(RESUMED)), "a trial that was not interrupted resumed"
            continue
        # it went on from its checkpoint: epoch k+1 was the first one trained after the resume
        k = int(run[RESUMED])
        assert 1 <= k < EPOCHS and run[CHECKPOINT_OF] == trial
        assert f"trial {trial}: continuing from the checkpoint of trial {trial} after epoch {k}" \
            in resumed.stdout
        trained = [r["epoch"] for r in _ray_rows(out, trial) if r.get(RUN_ID) == run["run_id"]]
        assert trained == list(range(k + 1, EPOCHS + 1))
        # its MLflow history is whole, each epoch once: 1..k carried over from the checkpoint
        # (logged before the kill), k+1.. trained after it
        history = _history(client, run["run_id"])
        assert [h[0] for h in history] == list(range(1, EPOCHS + 1))
        assert all(h[2] < killed_at for h in history[:k])
        assert all(h[2] > killed_at for h in history[k:])
        assert int(run["metrics.epochs_run"]) == EPOCHS
        continued += 1
    assert continued >= 1  # a trial Ray had not yet saved the latest state of starts afresh
    for trial, name in named_checkpoints(newest_state(experiment).read_bytes()):
        assert {p.name for p in (experiment / KEPT / trial).iterdir()} == {name}  # pruned
    assert set(after["status"]) <= {"FINISHED", "KILLED"}


# --- PBT ----------------------------------------------------------------------------------------

PBT = ROOT / "search_spaces" / "pbt.yaml"


@pytest.mark.parametrize(("patch", "key"), [
    ({"sampler": "tpe"}, "sampler"),
    ({"search": {"dim": {"type": "categorical", "values": [16, 32]}}}, "search.dim"),
    ({"search": {"coordination": {"type": "categorical", "values": ["uniform", "pcgrad"]}}},
     "search.coordination"),
    ({"checkpoint_every": 0}, "checkpoint_every"),
    ({"checkpoint_every": 3}, "checkpoint_every"),
    ({"scheduler": {"type": "pbt", "perturbation_interval": 8}}, "scheduler.perturbation_interval"),
    ({"scheduler": {"type": "pbt", "grace_period": 1}}, "scheduler.grace_period"),
    ({"scheduler": {"type": "pbt", "quantile_fraction": 0.9}}, "scheduler.quantile_fraction"),
    ({"scheduler": {"type": "asha", "perturbation_interval": 2}},
     "scheduler.perturbation_interval"),
    ({"checkpoint_every": -1}, "checkpoint_every"),
])
def test_bad_pbt_and_checkpoint_keys_name_the_key(tmp_path: Path, patch: dict, key: str) -> None:
    from study.space import SpaceError, load_study

    path = write_space(tmp_path / "bad.yaml", base=PBT, **patch)
    with pytest.raises(SpaceError, match=f"'{key}'") as err:
        load_study(path)
    assert str(path) in str(err.value)


def test_pbt_keeps_perturbed_values_in_their_searched_ranges() -> None:
    import random

    from ray.tune.schedulers.pbt import _explore

    from study.search import make_scheduler
    from study.space import load_study

    pbt = make_scheduler(load_study(PBT))
    random.seed(0)
    seen = set()
    for _ in range(300):  # from the top of each range, x1.2 would leave it
        new, _ = _explore({"lr": 9.0e-3, "alpha": 0.95, "lam": 0.45},
                          pbt._hyperparam_mutations, 0.25, (1.2, 0.8), pbt._custom_explore_fn)
        assert 1.0e-5 <= new["lr"] <= 1.0e-2 and 0 <= new["alpha"] <= 1
        assert 0 <= new["lam"] <= 0.5
        seen.add(new["alpha"])
    assert 1.0 in seen  # clipped, not only resampled


@pytest.mark.slow
def test_pbt_study_continues_trials_from_other_trials_checkpoints(tmp_path: Path) -> None:
    # 12 epochs, half the population copies the other half: many chances for a copy even when
    # the trials start seconds apart on a busy machine
    space = write_space(tmp_path / "pbt.yaml", base=PBT, epochs=12, scheduler={
        "type": "pbt", "perturbation_interval": 2, "quantile_fraction": 0.5})
    out = tmp_path / "pbt"
    proc = run_study(out, space=space, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    _, children = runs(out, "pbt")
    assert set(children["status"]) <= {"FINISHED", "KILLED"}
    done = children[children[T.STATUS] == "COMPLETED"]
    assert len(done) == 4 and done[T.TRIAL_ID].is_unique
    assert CHECKPOINT_OF in children, "PBT never continued a trial from a checkpoint"
    # some attempt continued another trial's checkpoint (a later copy may replace it)
    copied = children[CHECKPOINT_OF].notna() & (children[CHECKPOINT_OF] != children[T.TRIAL_ID])
    assert copied.sum() >= 1, "PBT never continued a trial from another's checkpoint"
    assert (children.loc[copied, RESUMED].astype(int) % 2 == 0).all()  # perturbation epochs
    for _, run in done[done[CHECKPOINT_OF].notna()].iterrows():  # a continued run is whole
        assert [h[0] for h in _history(client, run["run_id"])] == list(range(1, 13))
    for trial in done[T.TRIAL_ID]:  # no finished trial was sent back by PBT and replayed
        (result,) = (out / "ray" / "pbt").glob(f"run_trial_{trial}_*/result.json")
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        assert not any(r.get("replayed") for r in rows)
        assert sum(bool(r.get("completed")) for r in rows) == 1
