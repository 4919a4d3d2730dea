"""Train and evaluate KS-Fusion on one cross-validation fold.

The unit of work is ``FoldTrainer.fit_epoch()`` (batches of ``ksmodel.step.train_step``), so a
study trial can advance all its folds in lock-step and report the fold mean after every epoch
(what ASHA needs to compare like with like). ``train_fold`` is the plain loop around it;
``python -m ksmodel.train`` is its CLI. ``get_state``/``set_state`` carry a fold across
processes and restarts (the layout: ``ksmodel.fold_state``).

Selection rule: with ``patience > 0`` a fold stops after ``patience`` epochs without improvement
and its result is its best epoch; with ``patience = 0`` it runs all epochs and its result is the
last epoch. Either way ``FoldTrainer.result`` is what gets reported as the fold's final metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ksmodel.cohort import Cohort
from ksmodel.config import ModelConfig, TrainConfig, check_target
from ksmodel.coordination.coordinator import Coordinator
from ksmodel.errors import ConfigError
from ksmodel.fold_state import (
    STATE_VERSION,
    EpochResult,
    epoch_state,
    frame_from_state,
    frame_state,
)
from ksmodel.model import KSFusion
from ksmodel.splits import ExpressionScaler, fold_case_ids
from ksmodel.step import HEADS, Batch, NonFiniteLossError, Objective, train_step
from ksmodel.tasks import FoldTargets, Task, get_task
from ksmodel.telemetry import TELEMETRY_KEYS


@dataclass
class FoldData:
    """Everything one fold needs, as tensors indexed by position in the cohort's case order."""

    fold: int
    task: Task
    case_ids: np.ndarray  # [n] all cases, cohort order
    train_idx: Tensor  # positions of training cases
    val_idx: Tensor
    bags: Tensor | None  # [n, T, D] (shared across folds; None for genomics-only)
    genes_t: Tensor  # [n, n_t], normalised with training-fold statistics
    genes_m: Tensor
    targets: FoldTargets  # for all n cases, statistics from the training part


def prepare_fold(cohort: Cohort, bags: Tensor | None, splits: pd.DataFrame, fold: int,
                 task: str | Task, *, log1p: bool = True) -> FoldData:
    """Normalise expression and derive task targets using the training part of ``fold`` only."""
    task = get_task(task)
    case_ids = cohort.cases.index.to_numpy()
    position = pd.Series(np.arange(len(case_ids)), index=case_ids)
    train_ids, val_ids = fold_case_ids(splits, fold)
    train_idx = torch.as_tensor(position.loc[train_ids].to_numpy(), dtype=torch.long)
    val_idx = torch.as_tensor(position.loc[val_ids].to_numpy(), dtype=torch.long)

    genes = cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]
    scaler = ExpressionScaler.fit(cohort.expression.loc[train_ids, genes], log1p=log1p)
    expr = torch.as_tensor(scaler.transform(cohort.expression[genes]))
    n_t = len(cohort.gene_sets["tumour"])
    targets = task.fold_targets(cohort.targets(task.name), train_idx.numpy())
    return FoldData(fold=fold, task=task, case_ids=case_ids, train_idx=train_idx,
                    val_idx=val_idx, bags=bags, genes_t=expr[:, :n_t], genes_m=expr[:, n_t:],
                    targets=targets)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


@dataclass
class FoldTrainer:
    """One fold's model, optimiser and selection state; advanced one epoch at a time."""

    data: FoldData
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    head: str = "logits"  # what the task loss reads (HEADS): a stream alone for probes
    epoch: int = 0
    done: bool = False
    best: EpochResult | None = None
    history: list[EpochResult] = field(default_factory=list)
    _best_predictions: pd.DataFrame | None = None
    _stale: int = 0

    def __post_init__(self) -> None:
        cfg = self.train_cfg
        if self.head not in HEADS or (self.head != "logits" and not self.model_cfg.decompose):
            raise ConfigError(f"head must be one of {', '.join(HEADS)} (a stream's own logits "
                              f"need decompose: true), got {self.head!r}")
        torch.manual_seed(cfg.seed * 1000 + self.data.fold)
        self._gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.data.fold)
        self.model = KSFusion(self.model_cfg).to(self.device)
        # the fold's own torch RNG stream (dropout, noise in coordination): folds trained side by
        # side, in other processes, or resumed from a checkpoint draw exactly the same numbers
        self._rng = torch.get_rng_state()
        self._cuda_rng = (torch.cuda.get_rng_state(self.device)
                          if self.device.type == "cuda" else None)
        self._forward = torch.compile(self.model) if cfg.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        n_train = len(self.data.train_idx)
        steps = cfg.epochs * max(1, math.ceil(n_train / cfg.batch_size))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=steps)
        check_target(self.model_cfg, cfg)
        rule = cfg.coordination if self.model_cfg.decompose else "uniform"
        self.coordinator = Coordinator(rule, cfg.coord_params if rule == cfg.coordination else {},
                                       target=cfg.coord_target)
        self._amp = self.device.type == "cuda" and cfg.amp
        d = self.data
        self._bags = d.bags.to(self.device) if d.bags is not None else None
        self._genes_t, self._genes_m = d.genes_t.to(self.device), d.genes_m.to(self.device)
        self._targets = {k: v.to(self.device) for k, v in d.targets.tensors.items()}
        self._objective = Objective(d.task, FoldTargets(
            self._targets, _to(d.targets.class_weights, self.device), d.targets.bin_edges),
            lam=cfg.lam, alpha=cfg.alpha, head=self.head)

    def _batch(self, idx: Tensor) -> Batch:
        idx = idx.to(self.device)
        bags = self._bags[idx] if self._bags is not None else None
        return Batch(bags, self._genes_t[idx], self._genes_m[idx],
                     {k: v[idx] for k, v in self._targets.items()})

    # --- epochs ---------------------------------------------------------------------------
    def fit_epoch(self) -> EpochResult:
        """Train one epoch, evaluate on the validation part and update the selection state."""
        if self.done:
            raise RuntimeError(f"fold {self.data.fold} has finished; check .done first")
        start = time.perf_counter()
        self.model.train()
        order = self.data.train_idx[torch.randperm(len(self.data.train_idx), generator=self._gen)]
        batches = list(torch.split(order, self.train_cfg.batch_size))
        if len(batches) > 1 and len(batches[-1]) == 1:  # consistency needs B >= 2
            batches[-2] = torch.cat(batches[-2:])
            batches.pop()
        losses, tele = [], []
        cuda = [self.device] if self._cuda_rng is not None else []
        with torch.random.fork_rng(devices=cuda, device_type="cuda"):
            torch.set_rng_state(self._rng)
            if self._cuda_rng is not None:
                torch.cuda.set_rng_state(self._cuda_rng, self.device)
            for idx in batches:
                try:
                    step = train_step(self._forward, self._batch(idx), self._objective, self.opt,
                                      self.coordinator, amp=self._amp)
                except NonFiniteLossError as exc:
                    raise NonFiniteLossError(f"fold {self.data.fold}, epoch {self.epoch + 1}: "
                                             f"{exc}") from None
                self.sched.step()
                losses.append(step.loss)
                if step.telemetry is not None:
                    tele.append(step.telemetry)
            self._rng = torch.get_rng_state()
            if self._cuda_rng is not None:
                self._cuda_rng = torch.cuda.get_rng_state(self.device)
        self.epoch += 1
        metrics, predictions = self.evaluate()
        telemetry = ({k: float(np.mean([t[k] for t in tele])) for k in TELEMETRY_KEYS}
                     if tele else {})
        result = EpochResult(self.epoch, float(np.mean(losses)), metrics, telemetry,
                             time.perf_counter() - start)
        self.history.append(result)
        self._select(result, predictions)
        return result

    def _select(self, result: EpochResult, predictions: pd.DataFrame) -> None:
        key = self.data.task.metric
        patience = self.train_cfg.patience
        improved = self.best is None or result.metrics[key] > self.best.metrics[key]
        if patience == 0 or improved:
            self.best, self._best_predictions, self._stale = result, predictions, 0
        else:
            self._stale += 1
        self.done = self.epoch >= self.train_cfg.epochs or (0 < patience <= self._stale)

    @torch.no_grad()
    def evaluate(self, batch_size: int = 64,
                 head: str = "logits") -> tuple[dict[str, float], pd.DataFrame]:
        """Validation metrics and the per-case prediction table at the current weights, of the
        fused logits or (``head``) one stream's own logits."""
        self.model.eval()
        outs = []
        for idx in torch.split(self.data.val_idx, batch_size):
            b = self._batch(idx)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self._amp):
                outs.append(getattr(self._forward(b.bags, b.genes_t, b.genes_m), head).float())
        logits = torch.cat(outs).cpu()
        val = self.data.val_idx
        targets = {k: v[val].numpy() for k, v in self.data.targets.tensors.items()}
        metrics, columns = self.data.task.evaluate(logits, targets)
        table = pd.DataFrame({"fold": self.data.fold, "case_id": self.data.case_ids[val.numpy()],
                              **columns})
        return metrics, table

    @property
    def result(self) -> EpochResult:
        if self.best is None:
            raise RuntimeError("no epoch has been trained yet")
        return self.best

    def predictions(self) -> pd.DataFrame:
        """Validation predictions at the selected epoch."""
        if self._best_predictions is None:
            raise RuntimeError("no epoch has been trained yet")
        return self._best_predictions

    # --- checkpoints ----------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Everything needed to continue this fold exactly where it is: weights, optimiser, LR
        schedule, both RNG streams (torch, batch order) and the selection state (history, best
        epoch and its predictions, patience counter).

        Plain data only (tensors, numbers, strings, lists, dicts), so ``torch.save`` writes it
        and ``torch.load(..., weights_only=True)`` reads it back. The tensors are the live
        ones: save or send the state before training on."""
        return {
            "version": STATE_VERSION, "fold": self.data.fold, "seed": self.train_cfg.seed,
            "epoch": self.epoch, "done": self.done,
            "model": self.model.state_dict(), "opt": self.opt.state_dict(),
            "sched": self.sched.state_dict(),
            "rng": {"torch": self._rng.clone(), "batch_order": self._gen.get_state(),
                    **({"cuda": self._cuda_rng.clone()} if self._cuda_rng is not None else {})},
            "selection": {"best_epoch": self.best.epoch if self.best is not None else 0,
                          "stale": self._stale,
                          "history": [epoch_state(r) for r in self.history],
                          "best_predictions": frame_state(self._best_predictions)},
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue from ``get_state()`` of a trainer of the same fold and model: the next
        ``fit_epoch`` trains exactly the epoch the saved trainer would have trained (its RNG
        streams come with the state)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"fold state version {state.get('version')!r}, expected "
                             f"{STATE_VERSION} (a checkpoint from another version of ksmodel)")
        if state["fold"] != self.data.fold:  # other validation cases: its selection is moot
            raise ValueError(f"the state of fold {state['fold']} cannot continue fold "
                             f"{self.data.fold}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        rng = state["rng"]
        self._rng = rng["torch"].clone()
        self._gen.set_state(rng["batch_order"])
        if self._cuda_rng is not None and "cuda" in rng:
            self._cuda_rng = rng["cuda"].clone()
        self.epoch, self.done = int(state["epoch"]), bool(state["done"])
        sel = state["selection"]
        self.history = [EpochResult(**r) for r in sel["history"]]
        best = int(sel["best_epoch"])
        self.best = self.history[best - 1] if best else None
        self._best_predictions = frame_from_state(sel["best_predictions"])
        self._stale = int(sel["stale"])

    def save(self, path: str | Path) -> None:
        torch.save(self.get_state(), path)

    def load(self, path: str | Path) -> None:
        self.set_state(torch.load(path, map_location=self.device, weights_only=True))


def _to(t: Tensor | None, device: torch.device) -> Tensor | None:
    return None if t is None else t.to(device)


def build_model_config(cohort: Cohort, task: str | Task, **overrides: Any) -> ModelConfig:
    """Model config with the data-dependent sizes taken from the cohort and task."""
    sizes = {"n_tumour_genes": len(cohort.gene_sets["tumour"]),
             "n_tme_genes": len(cohort.gene_sets["tme"]), "n_outputs": get_task(task).n_outputs}
    if cohort.feature_dim is not None:
        sizes["feature_dim"] = cohort.feature_dim
    return ModelConfig(**{**overrides, **sizes})


@dataclass
class FoldResult:
    fold: int
    metrics: dict[str, float]
    epochs_run: int
    seconds: float
    predictions: pd.DataFrame
    history: list[EpochResult]


def train_fold(trainer: FoldTrainer,
               on_epoch_end: Callable[[EpochResult], None] | None = None) -> FoldResult:
    """Run a trainer to completion, calling `on_epoch_end` after every epoch."""
    start = time.perf_counter()
    while not trainer.done:
        result = trainer.fit_epoch()
        if on_epoch_end is not None:
            on_epoch_end(result)
    return FoldResult(trainer.data.fold, trainer.result.metrics, trainer.epoch,
                      time.perf_counter() - start, trainer.predictions(), trainer.history)
