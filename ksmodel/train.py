"""``python -m ksmodel.train``: train and evaluate KS-Fusion on one fold of a cohort.

The trainer itself lives in ``ksmodel.trainer`` and its step in ``ksmodel.step``; their names
are re-exported here so ``from ksmodel.train import FoldTrainer`` (study/, older scripts) keeps
working.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ksmodel.config import ModelConfig, SyntheticConfig, TrainConfig, parse_overrides, split_params
from ksmodel.errors import CohortError, ConfigError
from ksmodel.fold_state import STATE_VERSION, EpochResult
from ksmodel.step import Batch, NonFiniteLossError, Objective, StepResult, train_step
from ksmodel.tasks import DEFAULT_TASK, TASKS
from ksmodel.trainer import (
    FoldData,
    FoldResult,
    FoldTrainer,
    build_model_config,
    prepare_fold,
    resolve_device,
    train_fold,
)

__all__ = ["STATE_VERSION", "Batch", "EpochResult", "FoldData", "FoldResult", "FoldTrainer",
           "NonFiniteLossError", "Objective", "StepResult", "build_model_config", "build_parser",
           "main", "prepare_fold", "resolve_device", "train_fold", "train_step"]



def _progress(fold: int, total: int) -> Callable[[EpochResult], None]:
    def show(r: EpochResult) -> None:
        filled = int(20 * r.epoch / total)
        metrics = "  ".join(f"{k} {v:.3f}" for k, v in r.metrics.items())
        print(f"fold {fold} [{'#' * filled}{'.' * (20 - filled)}] epoch {r.epoch}/{total}  "
              f"loss {r.train_loss:.4f}  {metrics}  ({r.seconds:.1f} s)", flush=True)
    return show


def build_parser() -> argparse.ArgumentParser:
    tasks = "; ".join(f"{t.name}: {t.description} (selected on {t.metric})"
                      for t in TASKS.values())
    parser = argparse.ArgumentParser(
        prog="python -m ksmodel.train",
        description="Train and evaluate KS-Fusion on one cross-validation fold of a cohort: "
                    "train on the other folds, report the validation metrics of this one.",
        epilog=f"Example: python -m ksmodel.train --task {DEFAULT_TASK} --fold 0 --epochs 15 "
               "--set coordination=pcgrad --metrics-json m.json\n"
               "Cohort format: docs/cohort-format.md. Parameter keys: docs/study-files.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cohort", default="synthetic",
                        help="cohort folder (docs/cohort-format.md), or 'synthetic' for the "
                             "project's default synthetic cohort (generated once and cached, the "
                             "same one `cohort: synthetic` studies use; default)")
    parser.add_argument("--task", default=DEFAULT_TASK, choices=list(TASKS),
                        help=f"what to predict - {tasks} (default: {DEFAULT_TASK})")
    parser.add_argument("--fold", type=int, default=0,
                        help="which fold is the validation part, 0..k-1 (default 0)")
    parser.add_argument("--folds", type=int, default=5,
                        help="number of folds k when the folds are made here (default 5); "
                             "ignored when the cohort ships splits.parquet or --splits is given")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the stratified patient-level fold assignment and of the "
                             "patch subsampling onto the token grid (default 0)")
    parser.add_argument("--splits", type=Path,
                        help="use the folds of this split file (case_id, fold) instead")
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs,
                        help=f"training epochs; the last epoch is reported unless --set "
                             f"patience=N stops early (default {TrainConfig.epochs})")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed: model initialisation and batch order (default 0)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="any model/training/coordination parameter, "
                        "repeatable (e.g. --set alpha=0.3 --set coordination=uniform "
                        "--set grid=[8,8])")
    parser.add_argument("--checkpoint", type=Path, help="save the final model state here")
    parser.add_argument("--metrics-json", type=Path, help="write the final metrics as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run_cli(args)
    except (CohortError, ConfigError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run_cli(args: argparse.Namespace) -> int:
    from ksmodel.data import load_run_data, resolve_cohort

    params = {**parse_overrides(args.overrides), "task": args.task, "epochs": args.epochs,
              "seed": args.seed}
    model_kw, train_kw = split_params(params)
    train_cfg = TrainConfig(**train_kw)
    base = ModelConfig(**model_kw)
    root = resolve_cohort(args.cohort, SyntheticConfig())
    data = load_run_data(root, args.task, modalities=[base.modality], grid=base.grid,
                         folds=args.folds, split_seed=args.split_seed, splits_file=args.splits)
    model_cfg = build_model_config(data.cohort, args.task, **model_kw)
    fold = prepare_fold(data.cohort, data.bags, data.splits, args.fold, args.task,
                        log1p=train_cfg.log1p)
    device = resolve_device(train_cfg.device)
    print(f"cohort {root}: {len(data.cohort.cases)} cases; folds: {data.splits_source}; fold "
          f"{args.fold}: {len(fold.train_idx)} train / {len(fold.val_idx)} val; device {device}",
          flush=True)
    trainer = FoldTrainer(fold, model_cfg, train_cfg, device)
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
