"""Train and evaluate KS-Fusion on one cross-validation fold.

The unit of work is `FoldTrainer.fit_epoch()`, so a study trial can advance all its folds in
lock-step and report the fold mean after every epoch (what ASHA needs to compare like with
like). `train_fold` is the plain loop around it; `python -m ksmodel.train` is its CLI.

Selection rule: with `patience > 0` a fold stops after `patience` epochs without improvement
and its result is its best epoch; with `patience = 0` it runs all epochs and its result is the
last epoch. Either way `FoldTrainer.result` is what gets reported as the fold's final metrics.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ksmodel.cohort import Bags, Cohort, load_bags, load_cohort
from ksmodel.config import TASKS, ModelConfig, TrainConfig, parse_overrides, split_params
from ksmodel.coordination import make_coordinator, subspace_confidence
from ksmodel.losses import (
    class_weights,
    classification_loss,
    consistency_total,
    discretise,
    survival_bin_edges,
    survival_nll,
    survival_risk,
)
from ksmodel.metrics import classification_metrics, concordance
from ksmodel.model import KSFusion
from ksmodel.splits import ExpressionScaler, check_folds, fold_case_ids, make_splits

TELEMETRY_KEYS = ("cos_mean", "conflict_rate", "projected_t", "projected_m", "proj_norm")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the trial is marked failed."""


@dataclass
class FoldData:
    """Everything one fold needs, as tensors indexed by position in the cohort's case order."""

    fold: int
    task: str
    case_ids: np.ndarray  # [n] all cases, cohort order
    train_idx: Tensor  # positions of training cases
    val_idx: Tensor
    bags: Tensor | None  # [n, T, D] (shared across folds; None for genomics-only)
    genes_t: Tensor  # [n, n_t], normalised with training-fold statistics
    genes_m: Tensor
    targets: dict[str, Tensor]  # label | (bin, time, event), for all n cases
    class_weights: Tensor | None = None
    bin_edges: np.ndarray | None = None


def prepare_fold(cohort: Cohort, bags: Tensor | None, splits: pd.DataFrame, fold: int,
                 task: str, *, log1p: bool = True) -> FoldData:
    """Normalise expression and derive task targets using the training part of `fold` only."""
    case_ids = cohort.cases.index.to_numpy()
    position = pd.Series(np.arange(len(case_ids)), index=case_ids)
    train_ids, val_ids = fold_case_ids(splits, fold)
    train_idx = torch.as_tensor(position.loc[train_ids].to_numpy(), dtype=torch.long)
    val_idx = torch.as_tensor(position.loc[val_ids].to_numpy(), dtype=torch.long)

    genes = cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]
    scaler = ExpressionScaler.fit(cohort.expression.loc[train_ids, genes], log1p=log1p)
    expr = torch.as_tensor(scaler.transform(cohort.expression[genes]))
    n_t = len(cohort.gene_sets["tumour"])

    raw = cohort.targets(task)
    data = FoldData(fold=fold, task=task, case_ids=case_ids, train_idx=train_idx,
                    val_idx=val_idx, bags=bags, genes_t=expr[:, :n_t], genes_m=expr[:, n_t:],
                    targets={})
    tr = train_idx.numpy()
    if task == "survival":
        edges = survival_bin_edges(raw["time"][tr], raw["event"][tr], n_bins=TASKS[task])
        data.bin_edges = edges
        data.targets = {"bin": discretise(torch.as_tensor(raw["time"]), edges),
                        "time": torch.as_tensor(raw["time"], dtype=torch.float32),
                        "event": torch.as_tensor(raw["event"], dtype=torch.float32)}
    else:
        label = torch.as_tensor(raw["label"], dtype=torch.long)
        data.targets = {"label": label}
        data.class_weights = class_weights(label[train_idx], TASKS[task])
    return data


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    metrics: dict[str, float]
    telemetry: dict[str, float]
    seconds: float


@dataclass
class FoldTrainer:
    """One fold's model, optimiser and selection state; advanced one epoch at a time."""

    data: FoldData
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    epoch: int = 0
    done: bool = False
    best: EpochResult | None = None
    history: list[EpochResult] = field(default_factory=list)
    _best_predictions: pd.DataFrame | None = None
    _stale: int = 0

    def __post_init__(self) -> None:
        cfg = self.train_cfg
        torch.manual_seed(cfg.seed * 1000 + self.data.fold)
        self._gen = torch.Generator().manual_seed(cfg.seed * 1000 + self.data.fold)
        self.model = KSFusion(self.model_cfg).to(self.device)
        self._forward = torch.compile(self.model) if cfg.compile else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay)
        n_train = len(self.data.train_idx)
        steps = cfg.epochs * max(1, math.ceil(n_train / cfg.batch_size))
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=steps)
        rule = cfg.coordination if self.model_cfg.decompose else "uniform"
        self.coordinator = make_coordinator(rule, tau_cos=cfg.tau_cos, tau_rho=cfg.tau_rho)
        self._amp = self.device.type == "cuda" and cfg.amp
        d = self.data
        to = {"device": self.device}
        self._bags = d.bags.to(**to) if d.bags is not None else None
        self._genes_t, self._genes_m = d.genes_t.to(**to), d.genes_m.to(**to)
        self._targets = {k: v.to(**to) for k, v in d.targets.items()}
        self._weights = d.class_weights.to(**to) if d.class_weights is not None else None

    # --- one step -------------------------------------------------------------------------
    def _batch(self, idx: Tensor) -> tuple[Tensor | None, Tensor, Tensor, dict[str, Tensor]]:
        idx = idx.to(self.device)
        bags = self._bags[idx] if self._bags is not None else None
        return bags, self._genes_t[idx], self._genes_m[idx], {
            k: v[idx] for k, v in self._targets.items()}

    def _task_loss(self, logits: Tensor, tgt: dict[str, Tensor]) -> Tensor:
        if self.data.task == "survival":
            return survival_nll(logits.float(), tgt["bin"], tgt["event"])
        return classification_loss(logits.float(), tgt["label"], self._weights)

    def _step(self, idx: Tensor) -> tuple[float, dict[str, float] | None]:
        bags, g_t, g_m, tgt = self._batch(idx)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._amp):
            out = self._forward(bags, g_t, g_m)
        loss = self._task_loss(out.logits, tgt)
        if self.train_cfg.lam > 0:
            loss = loss + self.train_cfg.lam * consistency_total(out, self.train_cfg.alpha)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"fold {self.data.fold}, epoch {self.epoch + 1}: training loss is {loss.item()} "
                "(lower lr, or check the inputs)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        telemetry = None
        if out.logits_t is not None:  # two subspace streams: coordinate their gradients
            conf_t = conf_m = None
            if self.coordinator.needs_confidence:
                conf_t = subspace_confidence(self.data.task, out.logits_t.detach().float(), tgt)
                conf_m = subspace_confidence(self.data.task, out.logits_m.detach().float(), tgt)
            telemetry = self.coordinator.apply_(self.model.classifier, conf_t, conf_m)
        self.opt.step()
        self.sched.step()
        return loss.item(), telemetry

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
        for idx in batches:
            loss, t = self._step(idx)
            losses.append(loss)
            if t is not None:
                tele.append(t)
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
        key = self.train_cfg.metric
        patience = self.train_cfg.patience
        improved = self.best is None or result.metrics[key] > self.best.metrics[key]
        if patience == 0 or improved:
            self.best, self._best_predictions, self._stale = result, predictions, 0
        else:
            self._stale += 1
        self.done = self.epoch >= self.train_cfg.epochs or (0 < patience <= self._stale)

    @torch.no_grad()
    def evaluate(self, batch_size: int = 64) -> tuple[dict[str, float], pd.DataFrame]:
        """Validation metrics and the per-case prediction table at the current weights."""
        self.model.eval()
        outs = []
        for idx in torch.split(self.data.val_idx, batch_size):
            bags, g_t, g_m, _ = self._batch(idx)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self._amp):
                outs.append(self._forward(bags, g_t, g_m).logits.float())
        logits = torch.cat(outs).cpu()
        val = self.data.val_idx
        table = pd.DataFrame({"fold": self.data.fold, "case_id": self.data.case_ids[val.numpy()]})
        if self.data.task == "survival":
            risk = survival_risk(logits).numpy()
            time_, event = (self.data.targets[k][val].numpy() for k in ("time", "event"))
            table["time"], table["event"], table["risk"] = time_, event.astype(int), risk
            return {"cindex": concordance(time_, event, risk)}, table
        prob = torch.softmax(logits, dim=1).numpy()
        label = self.data.targets["label"][val].numpy()
        table["label"] = label
        for c in range(prob.shape[1]):
            table[f"prob_{c}"] = prob[:, c]
        return classification_metrics(label, prob), table

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
    def save(self, path: str | Path) -> None:
        torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                    "sched": self.sched.state_dict(), "epoch": self.epoch}, path)

    def load(self, path: str | Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.sched.load_state_dict(state["sched"])
        self.epoch = int(state["epoch"])


def build_model_config(cohort: Cohort, task: str, **overrides: Any) -> ModelConfig:
    """Model config with the data-dependent sizes taken from the cohort and task."""
    sizes = {"n_tumour_genes": len(cohort.gene_sets["tumour"]),
             "n_tme_genes": len(cohort.gene_sets["tme"]), "n_outputs": TASKS[task]}
    if cohort.feature_dim is not None:
        sizes["feature_dim"] = cohort.feature_dim
    return ModelConfig(**{**overrides, **sizes})


def fold_bags(cohort: Cohort, model_cfg: ModelConfig, seed: int = 0) -> Bags | None:
    """The cohort's bags on the model's token grid, or None when the model ignores histology."""
    if model_cfg.modality == "genomics":
        return None
    if cohort.feature_dim is None:
        raise ValueError(f"cohort {cohort.root} has no feature files; only modality=genomics can "
                         f"run on it (asked for modality={model_cfg.modality})")
    return load_bags(cohort, model_cfg.grid, seed=seed)


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


def _progress(fold: int, total: int) -> Callable[[EpochResult], None]:
    def show(r: EpochResult) -> None:
        filled = int(20 * r.epoch / total)
        metrics = "  ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
        print(f"fold {fold} [{'#' * filled}{'.' * (20 - filled)}] epoch {r.epoch}/{total}  "
              f"loss {r.train_loss:.4f}  {metrics}  ({r.seconds:.1f} s)", flush=True)
    return show


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ksmodel.train",
        description="Train and evaluate KS-Fusion on one cross-validation fold of a cohort.",
        epilog="Example: python -m ksmodel.train --cohort synthetic --task diagnosis --fold 0 "
               "--epochs 15 --set coordination=pcgrad --metrics-json m.json")
    parser.add_argument("--cohort", default="synthetic",
                        help="cohort folder (DESIGN §4 layout), or 'synthetic' to generate the "
                             "default synthetic cohort once into --work (default: synthetic)")
    parser.add_argument("--task", default="diagnosis", choices=sorted(TASKS))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--folds", type=int, default=5, help="number of folds k (default 5)")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--splits", type=Path, help="load folds from this split file instead")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="any ModelConfig/TrainConfig field, repeatable "
                        "(e.g. --set alpha=0.3 --set coordination=uniform --set grid=[8,8])")
    parser.add_argument("--work", type=Path, default=Path("studies/_train"),
                        help="folder for the generated synthetic cohort and checkpoints")
    parser.add_argument("--checkpoint", type=Path, help="save the final model state here")
    parser.add_argument("--metrics-json", type=Path, help="write the final metrics as JSON")
    args = parser.parse_args(argv)
    try:
        return _run_cli(args)
    except (ValueError, FileExistsError) as exc:  # CohortError, ConfigError: bad input
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run_cli(args: argparse.Namespace) -> int:
    from ksmodel.synthetic import ensure_synthetic

    params = {**parse_overrides(args.overrides), "task": args.task, "epochs": args.epochs,
              "seed": args.seed}
    model_kw, train_kw = split_params(params)
    train_cfg = TrainConfig(**train_kw)
    root = ensure_synthetic(args.work / "cohort") if args.cohort == "synthetic" else args.cohort
    cohort = load_cohort(root, tasks=[args.task], require_features=False)
    model_cfg = build_model_config(cohort, args.task, **model_kw)
    if args.splits is not None:
        from ksmodel.splits import load_splits
        splits = load_splits(args.splits, cohort)
    else:
        splits = make_splits(cohort, args.task, k=args.folds, seed=args.split_seed)
    check_folds(cohort, splits, args.task)
    bags = fold_bags(cohort, model_cfg, seed=args.split_seed)
    data = prepare_fold(cohort, bags.tensor if bags is not None else None, splits, args.fold,
                        args.task, log1p=train_cfg.log1p)
    device = resolve_device(train_cfg.device)
    print(f"cohort {root}: {len(cohort.cases)} cases, fold {args.fold}: "
          f"{len(data.train_idx)} train / {len(data.val_idx)} val, device {device}", flush=True)
    trainer = FoldTrainer(data, model_cfg, train_cfg, device)
    result = train_fold(trainer, _progress(args.fold, train_cfg.epochs))
    line = "  ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
    print(f"final fold {args.fold} (epoch {trainer.result.epoch}): {line}  "
          f"[{result.epochs_run} epochs, {result.seconds:.1f} s]")
    if args.checkpoint is not None:
        trainer.save(args.checkpoint)
    if args.metrics_json is not None:
        args.metrics_json.parent.mkdir(parents=True, exist_ok=True)
        args.metrics_json.write_text(json.dumps(
            {**result.metrics, "epochs_run": result.epochs_run, "wall_seconds": result.seconds,
             "fold": args.fold, "task": args.task}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
