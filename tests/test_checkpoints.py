"""Mid-trial checkpoints: a fold's full state round-trips, and a study killed mid-trial resumes
from its last checkpoint with the final metrics of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from ksmodel.train import FoldTrainer, train_fold
from tests.test_train import _trainer

# dropout on (AlphaDropout draws from torch's RNG) and OGM-GE's noise: both RNG streams matter
RANDOM = dict(model={"dropout": 0.25}, coordination="ogm_ge", lam=0.1, batch_size=8)


def _history(trainer: FoldTrainer) -> list[tuple]:
    return [(r.epoch, r.train_loss, r.metrics, r.telemetry) for r in trainer.history]


def _params(trainer: FoldTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize("patience", [0, 2])
def test_fold_state_continues_exactly(small_cohort: Path, tmp_path: Path, patience: int) -> None:
    whole = _trainer(small_cohort, seed=5, epochs=5, patience=patience, **RANDOM)
    train_fold(whole)

    first = _trainer(small_cohort, seed=5, epochs=5, patience=patience, **RANDOM)
    for _ in range(2):
        first.fit_epoch()
    first.save(tmp_path / "fold.pt")
    state = torch.load(tmp_path / "fold.pt", weights_only=True)  # plain data only
    assert state["epoch"] == 2 and len(state["selection"]["history"]) == 2
    torch.manual_seed(1234)  # whatever the process's global RNG holds meanwhile
    resumed = _trainer(small_cohort, seed=5, epochs=5, patience=patience, **RANDOM)
    resumed.load(tmp_path / "fold.pt")
    assert resumed.epoch == 2
    train_fold(resumed)

    assert _history(resumed) == _history(whole)
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
    alone = _trainer(small_cohort, seed=2, fold=1, epochs=3, **RANDOM)
    train_fold(alone)
    a = _trainer(small_cohort, seed=2, fold=0, epochs=3, **RANDOM)
    b = _trainer(small_cohort, seed=2, fold=1, epochs=3, **RANDOM)
    while not b.done:
        a.fit_epoch()
        b.fit_epoch()
    assert _history(b) == _history(alone)
