"""Where a trial's folds train: side by side in the trial's own process (lock-step, the
default) or fanned out, one Ray actor per (seed, fold) (``fold_parallel: tasks``).

Either way the trial advances every unfinished fold by one epoch, gathers the epoch results and
reports their mean, so ASHA and PBT see the same numbers. An actor (not a task per epoch) keeps
its fold's model, optimiser and RNG streams between epochs; only epoch results, states for
checkpoints and the final predictions cross process boundaries. Each fold draws from its own
RNG streams (``FoldTrainer``), so with the same seeds and the same threads per fold the two
modes train bit-identical models on CPU.

Resources: a fanned-out trial asks Ray for a placement group of one bundle per fold (the
study's ``resources`` each) and an empty head bundle for the trial process itself, which only
waits on its actors. Reserving the folds' resources with the trial is what keeps a small
machine from deadlocking: trials that held all CPUs while waiting for CPUs for their folds.
The actors are created inside the trial and land in its bundles (Tune's placement groups
capture child actors).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from ray import tune

from ksmodel.config import ModelConfig, TrainConfig
from ksmodel.trainer import EpochResult, FoldData, FoldTrainer, prepare_fold, resolve_device
from study.checkpoint import adopt_hyperparameters
from study.spec import RunSpec, TrialContext

MODES = ("lockstep", "tasks")


@dataclass
class FoldStep:
    """One fold after a step of the trial."""

    seed: int
    fold: int
    done: bool
    epoch: int
    trained: EpochResult | None  # the epoch this step trained; None: the fold had finished
    current: EpochResult  # the selected result once done, else the last epoch


@dataclass
class FoldFinal:
    seed: int
    fold: int
    epoch: int  # epochs trained
    result: EpochResult  # the selected epoch
    predictions: pd.DataFrame  # validation predictions at the selected epoch


def _step(trainer: FoldTrainer) -> FoldStep:
    trained = None if trainer.done else trainer.fit_epoch()
    current = trainer.result if trainer.done else trainer.history[-1]
    return FoldStep(trainer.train_cfg.seed, trainer.data.fold, trainer.done, trainer.epoch,
                    trained, current)


def _final(trainer: FoldTrainer) -> FoldFinal:
    return FoldFinal(trainer.train_cfg.seed, trainer.data.fold, trainer.epoch, trainer.result,
                     trainer.predictions())


def _restore(trainer: FoldTrainer, state: dict[str, Any]) -> None:
    trainer.set_state(state)
    adopt_hyperparameters(trainer)


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """View the object store's read-only bag array without copying (nothing writes to it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _fold_data(ctx: TrialContext, fold: int, device: torch.device, log1p: bool) -> FoldData:
    bags = shared_tensor(ctx.bags).to(device) if ctx.bags is not None else None
    return prepare_fold(ctx.cohort, bags, ctx.splits, fold, ctx.task, log1p=log1p)


class LocalFolds:
    """Every (seed, fold) of ``spec`` in this process, advanced one after the other
    (lock-step)."""

    def __init__(self, ctx: TrialContext, spec: RunSpec) -> None:
        device = resolve_device(spec.train.device)
        bags = shared_tensor(ctx.bags).to(device) if ctx.bags is not None else None
        folds = {f: prepare_fold(ctx.cohort, bags, ctx.splits, f, spec.task,
                                 log1p=spec.train.log1p) for f in spec.folds}
        self.trainers = [FoldTrainer(folds[f], spec.model, train, device)
                         for train in spec.trains for f in spec.folds]

    def step(self) -> list[FoldStep]:
        return [_step(t) for t in self.trainers]

    def states(self) -> list[dict[str, Any]]:
        return [t.get_state() for t in self.trainers]

    def restore(self, states: list[dict[str, Any]]) -> list[FoldStep]:
        for trainer, state in zip(self.trainers, states, strict=True):
            _restore(trainer, state)
        return [FoldStep(t.train_cfg.seed, t.data.fold, t.done, t.epoch, None,
                         t.result if t.done else t.history[-1]) for t in self.trainers]

    def finals(self) -> list[FoldFinal]:
        return [_final(t) for t in self.trainers]

    def close(self) -> None:
        self.trainers = []


class _FoldWorker:
    """One (seed, fold) of a fanned-out trial (a Ray actor; see ``FannedOutFolds``)."""

    def __init__(self, ctx: TrialContext, model_cfg: ModelConfig, train_cfg: TrainConfig,
                 fold: int, threads: int) -> None:
        torch.set_num_threads(threads)
        device = resolve_device(train_cfg.device)
        self.trainer = FoldTrainer(_fold_data(ctx, fold, device, train_cfg.log1p), model_cfg,
                                   train_cfg, device)

    def step(self) -> FoldStep:
        return _step(self.trainer)

    def state(self) -> dict[str, Any]:
        return self.trainer.get_state()

    def restore(self, state: dict[str, Any]) -> FoldStep:
        _restore(self.trainer, state)
        t = self.trainer
        return FoldStep(t.train_cfg.seed, t.data.fold, t.done, t.epoch, None,
                        t.result if t.done else t.history[-1])

    def final(self) -> FoldFinal:
        return _final(self.trainer)


_SHARED: dict[str, Any] = {}  # study (parent run id) -> the context in the object store


def _context_ref(ctx: TrialContext) -> ray.ObjectRef:
    """The trial context in the object store, put once per worker process and study (a reused
    Ray worker runs many trials): the actors read the cohort and bags from there, zero-copy."""
    key = ctx.parent_run_id
    if key not in _SHARED:
        _SHARED.clear()
        _SHARED[key] = ray.put(ctx)
    return _SHARED[key]


class FannedOutFolds:
    """Every (seed, fold) of ``spec`` in its own Ray actor, all stepped at once. The actors
    receive the spec's configs as they are (pickled, not re-built)."""

    def __init__(self, ctx: TrialContext, spec: RunSpec) -> None:
        worker = ray.remote(_FoldWorker).options(num_cpus=ctx.cpus, num_gpus=ctx.gpus,
                                                 max_restarts=0)
        ref = _context_ref(ctx)
        threads = max(1, int(ctx.cpus))
        self.actors = [worker.remote(ref, spec.model, train, f, threads)
                       for train in spec.trains for f in spec.folds]

    def step(self) -> list[FoldStep]:
        return ray.get([a.step.remote() for a in self.actors])

    def states(self) -> list[dict[str, Any]]:
        return ray.get([a.state.remote() for a in self.actors])

    def restore(self, states: list[dict[str, Any]]) -> list[FoldStep]:
        return ray.get([a.restore.remote(s) for a, s in zip(self.actors, states, strict=True)])

    def finals(self) -> list[FoldFinal]:
        return ray.get([a.final.remote() for a in self.actors])

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def make_folds(ctx: TrialContext, spec: RunSpec) -> LocalFolds | FannedOutFolds:
    """Where ``spec``'s folds train: the study's ``fold_parallel`` decides."""
    return (FannedOutFolds if ctx.fold_parallel == "tasks" else LocalFolds)(ctx, spec)


def trial_resources(fold_parallel: str, cpu: float, gpu: float, n_folds: int) -> Any:
    """What Ray reserves for one trial: ``{cpu, gpu}`` in lock-step; fanned out, an empty head
    bundle (the trial process only waits) and one ``{CPU: cpu, GPU: gpu}`` bundle per fold
    (every seed's folds: ``n_folds`` = seeds x folds)."""
    if fold_parallel != "tasks":
        return {"cpu": cpu, "gpu": gpu}
    bundle = {"CPU": cpu, **({"GPU": gpu} if gpu else {})}
    return tune.PlacementGroupFactory([{}] + [dict(bundle) for _ in range(n_folds)])


__all__ = ["MODES", "FannedOutFolds", "FoldFinal", "FoldStep", "LocalFolds", "make_folds",
           "shared_tensor", "trial_resources"]
