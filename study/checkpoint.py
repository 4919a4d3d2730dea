"""Mid-trial checkpoints: a trial's every fold, saved through Ray Tune every N epochs.

A checkpoint is one file, ``trial_state.pt``, written with ``torch.save`` and read with
``weights_only=True`` (plain data only): every (seed, fold)'s ``FoldTrainer.get_state()``
(weights, optimiser, LR schedule, RNG streams, selection state), the epoch it was taken after,
the values logged for every epoch so far (with their MLflow timestamps) and the training time.
The trial hands it to ``tune.report(..., checkpoint=...)``; Ray copies it into the trial's folder
under the study's storage, keeps the last few and gives the latest back through
``tune.get_checkpoint()`` when the trial starts again: after ``--resume`` of a killed study, a
retry after a failure, or when PBT makes the trial continue from another trial's weights.

A trial that starts from a checkpoint trains from the epoch after it (not from epoch 1). Its
new MLflow run (attempt n + 1) first receives the checkpoint's epoch values with their original
timestamps, so its history is complete - epochs 1..N, each once - and tagged with the epoch it
resumed at and the trial whose checkpoint it continued (itself, or a PBT donor).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

from ksmodel.trainer import FoldTrainer

STATE_FILE = "trial_state.pt"
VERSION = 1

PBT_MUTABLE = ("lr", "weight_decay", "alpha", "lam")
"""Parameters PBT may change in a running trial: optimiser and loss weights. Anything that
shapes the model or the data (dims, heads, grid, modality, decompose, ...) cannot change under
trained weights, and the coordination rule or schedule length would make the trial's history
a mix of two methods."""


@dataclass
class TrialState:
    """A trial's checkpoint, as read back."""

    epoch: int  # the last completed epoch
    trial_id: str  # the trial that saved it (another trial's under PBT)
    config: dict[str, Any]  # that trial's configuration
    folds: list[dict[str, Any]]  # FoldTrainer.get_state() per (seed, fold), trial order
    epochs: list[dict[str, Any]]  # {"epoch", "stamp", "values"} for epochs 1..epoch
    train_seconds: float


def due(epoch: int, every: int, finished: bool) -> bool:
    """Whether the trial saves a checkpoint after ``epoch`` (never after its last one: a
    finished trial is replayed from MLflow, not resumed)."""
    return every > 0 and not finished and epoch % every == 0


@contextmanager
def written(state: TrialState) -> Iterator[Any]:
    """A ``tune.Checkpoint`` of ``state`` in a temporary folder, for ``tune.report`` (which
    copies it into the study's storage before it returns)."""
    payload = {"version": VERSION, "epoch": state.epoch, "trial_id": state.trial_id,
               "config": json.dumps(state.config, default=_plain), "folds": state.folds,
               "epochs": state.epochs, "train_seconds": state.train_seconds}
    with tempfile.TemporaryDirectory(prefix="ks-checkpoint-") as tmp:
        torch.save(payload, Path(tmp) / STATE_FILE)
        yield tune.Checkpoint.from_directory(tmp)


def latest() -> TrialState | None:
    """The checkpoint Ray restored this trial from, if any."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        payload = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    if payload.get("version") != VERSION:
        raise ValueError(f"trial checkpoint version {payload.get('version')!r}, expected "
                         f"{VERSION}")
    return TrialState(epoch=int(payload["epoch"]), trial_id=str(payload["trial_id"]),
                      config=json.loads(payload["config"]), folds=payload["folds"],
                      epochs=payload["epochs"], train_seconds=float(payload["train_seconds"]))


def adopt_hyperparameters(trainer: FoldTrainer) -> None:
    """After ``set_state`` from a trial with other PBT-mutable values: train on with this
    trainer's own lr and weight decay (alpha and lam live in its objective, built from its own
    config). The cosine schedule keeps its position; its curve is rescaled to the new lr."""
    cfg = trainer.train_cfg
    state = trainer.sched.state_dict()  # the schedule's own record, through its public API
    old = state["base_lrs"][0]
    if old != cfg.lr:
        state["base_lrs"] = [cfg.lr for _ in state["base_lrs"]]
        state["_last_lr"] = [lr * cfg.lr / old for lr in state["_last_lr"]]
        trainer.sched.load_state_dict(state)
    for group in trainer.opt.param_groups:
        if old != cfg.lr:
            group["lr"] = group["lr"] * cfg.lr / old
            group["initial_lr"] = cfg.lr
        group["weight_decay"] = cfg.weight_decay


def _plain(value: Any) -> Any:
    """numpy scalars (Ray's samplers) as Python numbers for JSON."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


__all__ = ["PBT_MUTABLE", "STATE_FILE", "TrialState", "adopt_hyperparameters", "due", "latest",
           "written"]
