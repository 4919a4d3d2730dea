"""Fold fan-out (`fold_parallel: tasks`): one Ray actor per fold trains what lock-step trains,
and a trial that fans out reserves its folds' CPUs up front (no deadlock on a small machine)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from study.fanout import trial_resources
from study.space import SpaceError, load_study
from tests.study_helpers import SMOKE, T, run_study, runs, write_space


def test_fanned_out_trial_reserves_one_bundle_per_fold() -> None:
    assert trial_resources("lockstep", 1.0, 0.0, 4) == {"cpu": 1.0, "gpu": 0.0}
    pgf = trial_resources("tasks", 2.0, 0.25, 3)
    assert pgf.head_bundle_is_empty  # the trial process itself only waits on its folds
    assert pgf.bundles == [{"CPU": 2.0, "GPU": 0.25}] * 3
    assert pgf.required_resources == {"CPU": 6.0, "GPU": 0.75}


@pytest.mark.parametrize(("patch", "key"), [
    ({"fold_parallel": "threads"}, "fold_parallel"),
    ({"fold_parallel": "tasks", "evaluation": "nested"}, "fold_parallel"),
])
def test_bad_fold_parallel_names_the_key(tmp_path: Path, patch: dict, key: str) -> None:
    path = write_space(tmp_path / "bad.yaml", **patch)
    with pytest.raises(SpaceError, match=f"'{key}'"):
        load_study(path)


def test_fold_parallel_is_saved_and_read_back(tmp_path: Path) -> None:
    cfg = load_study(write_space(tmp_path / "s.yaml", fold_parallel="tasks"))
    assert cfg.fold_parallel == "tasks" and cfg.to_yaml_dict()["fold_parallel"] == "tasks"


def _final(out: Path) -> dict[str, list[float]]:
    _, children = runs(out, "smoke")
    done = children[children[T.STATUS] == "COMPLETED"].set_index("params.lr").sort_index()
    cols = sorted(c for c in done.columns if c.startswith("metrics.") and "final_" in c)
    return {lr: row[cols].tolist() for lr, row in done.iterrows()}


@pytest.mark.slow
def test_fan_out_equals_lock_step(tmp_path: Path) -> None:
    # two trials x two folds, 1 CPU per fold on a 2-CPU Ray: fanned out, a trial needs both
    # CPUs, so the two trials must take turns (each reserves its folds' bundles)
    fixed = {**yaml.safe_load(SMOKE.read_text())["fixed"], "dropout": 0.25}
    common = dict(sampler="grid", scheduler={"type": "none"}, epochs=3, max_concurrent=2,
                  fixed=fixed, search={"lr": {"type": "categorical", "values": [3e-4, 2e-3]}})
    lock = write_space(tmp_path / "lock.yaml", **common)
    fan = write_space(tmp_path / "fan.yaml", fold_parallel="tasks", **common)
    a = run_study(tmp_path / "lock", space=lock, timeout=600)
    assert a.returncode == 0, a.stderr[-3000:]
    b = run_study(tmp_path / "fan", space=fan, timeout=600)
    assert b.returncode == 0, b.stderr[-3000:]
    lock_final, fan_final = _final(tmp_path / "lock"), _final(tmp_path / "fan")
    assert len(lock_final) == 2
    assert fan_final == lock_final  # bit-identical: each fold draws from its own RNG streams


@pytest.mark.slow
def test_fanned_out_folds_continue_a_lock_step_checkpoint(small_cohort: Path) -> None:
    """States cross processes: folds checkpointed in lock-step, restored into fold actors, end
    exactly where lock-step ends."""
    import ray

    from ksmodel.data import load_run_data
    from study.fanout import FannedOutFolds, LocalFolds
    from study.spec import TrialContext
    from tests.test_train import SMALL

    data = load_run_data(small_cohort, "diagnosis", grid=SMALL["grid"], folds=2)
    ctx = TrialContext(task="diagnosis", epochs=4, folds=data.folds, seeds=(0,),
                       fixed={**SMALL, "dropout": 0.25, "lam": 0.1, "batch_size": 8},
                       cohort=data.cohort, splits=data.splits,
                       bags=data.bags.numpy(), tracking_uri="", experiment_id="",
                       parent_run_id="fanout-test", fold_parallel="tasks")
    spec = ctx.spec({"seed": 3})
    torch.set_num_threads(1)
    whole = LocalFolds(ctx, spec)
    for _ in range(4):
        expected = whole.step()
    half = LocalFolds(ctx, spec)
    half.step(), half.step()
    states = half.states()
    ray.init(num_cpus=2, include_dashboard=False, address="local")
    try:
        fanned = FannedOutFolds(ctx, spec)
        restored = fanned.restore(states)
        assert [s.epoch for s in restored] == [2, 2]
        fanned.step()
        got = fanned.step()
        finals = fanned.finals()
        fanned.close()
    finally:
        ray.shutdown()
    def key(steps: list) -> list[tuple]:
        return [(s.fold, s.epoch, s.current.train_loss, s.current.metrics, s.current.telemetry)
                for s in steps]

    assert key(got) == key(expected)
    for a, b in zip(finals, whole.finals(), strict=True):
        pd.testing.assert_frame_equal(a.predictions, b.predictions)
