"""The Ray Tune trainable: one configuration, cross-validated over all folds (and seeds).

The folds are trained in lock-step and the trial reports the mean validation metric across
folds after every epoch, so ASHA compares trials at equal training budgets on equal data.
Everything a trial needs (cohort tables, bags already on the token grid, the study's split
file) arrives once through Ray's object store (`tune.with_parameters`), so no trial re-reads
the h5 files and every trial sees identical folds.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from ray import tune

from ksmodel.cohort import Cohort
from ksmodel.config import TrainConfig, split_params, to_dict
from ksmodel.coordination.coordinator import TELEMETRY_KEYS
from ksmodel.train import FoldTrainer, build_model_config, prepare_fold, resolve_device
from study.reconcile import EPOCH, LOGGED_AT, REPLAYED, RUN_ID
from study.record import (
    EPOCHS_RUN,
    TRAIN_LOSS,
    Params,
    Status,
    Tags,
    final_metric,
    fold_metric,
    telemetry_metric,
    val_metric,
)
from study.tracking import TrialLogger, close_completed, mlflow_client, trial_runs
from study.variants import expand as expand_variant

# Keys of the results a trial reports to Ray Tune (read back by the driver's summary and its
# reconciliation, study/reconcile.py, which owns EPOCH, RUN_ID, REPLAYED and LOGGED_AT).
COMPLETED, NODE = "completed", "node_id"
ENTERED_AT, READY_AT, REPORTED_AT = "trial_entered_at", "trial_ready_at", "reported_at"


@dataclass
class TrialContext:
    """Plain data shared by every trial of a study (shipped once through the object store)."""

    task: str
    metric: str
    epochs: int
    folds: list[int]
    seeds: tuple[int, ...]
    fixed: dict[str, Any]
    cohort: Cohort
    splits: pd.DataFrame
    bags: np.ndarray | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    cpus: float = 1.0
    tags: dict[str, str] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides


def method_name(params: dict[str, Any]) -> str:
    """The label analysis groups by: the coordination rule, or 'single' without decomposition."""
    if not params.get("decompose", True):
        return "single"
    return str(params.get("coordination", TrainConfig.coordination))


def trial_params(params: dict[str, Any], cohort: Cohort) -> dict[str, Any]:
    """Every parameter the trial trains with, defaults included, by its study-file name (what
    MLflow records so a run can be reproduced from MLflow alone)."""
    model_kw, train_kw = split_params({k: v for k, v in params.items() if k != "seed"})
    model = build_model_config(cohort, params["task"], **model_kw)
    train = TrainConfig(**train_kw)
    out = {**to_dict(model), **to_dict(train)}
    if "seed" in params:
        out["seed"] = params["seed"]
    else:
        out.pop("seed")
    return out


def _replay(run: Any, client: Any, metric: str) -> None:
    """Report a trial that an earlier attempt already finished, without training it again."""
    history = sorted(client.get_metric_history(run.info.run_id, val_metric(metric)),
                     key=lambda m: m.step)
    for m in history:
        tune.report({val_metric(metric): m.value, EPOCH: m.step, RUN_ID: run.info.run_id,
                     COMPLETED: m.step == history[-1].step, REPLAYED: True})


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """Train `config` on every (seed, fold), report fold means per epoch, log to MLflow."""
    entered = time.time()
    trial_id = tune.get_context().get_trial_id()
    client = mlflow_client(ctx.tracking_uri)
    earlier = trial_runs(client, ctx.experiment_id, trial_id)
    done = next((r for r in earlier if r.data.tags.get(Tags.STATUS) == Status.COMPLETED), None)
    if done is not None:
        close_completed(client, done)
        _replay(done, client, ctx.metric)
        return

    overrides, variant = expand_variant(config, ctx.variants)
    params = {**ctx.fixed, **overrides, "task": ctx.task, "epochs": ctx.epochs}
    seeds = [params["seed"]] if "seed" in params else list(ctx.seeds)
    node_id = ray.get_runtime_context().get_node_id()
    logged = {**trial_params(params, ctx.cohort), Params.SEEDS: ",".join(map(str, seeds)),
              Params.FOLDS: len(ctx.folds)}
    logger = TrialLogger(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_id,
                         logged, {Tags.METHOD: method_name(params), Tags.TASK: ctx.task,
                                  Tags.METRIC: ctx.metric, Tags.NODE_ID: node_id,
                                  Tags.FOLDS: ",".join(map(str, ctx.folds)),
                                  Tags.SEED: seeds[0] if len(seeds) == 1 else "mean",
                                  **({Tags.VARIANT: variant} if variant else {}), **ctx.tags},
                         earlier=earlier)
    try:
        _train(params, seeds, ctx, logger, node_id, entered)
    except Exception as exc:
        logger.fail(exc)
        raise
    except BaseException:  # stopped by the scheduler: SystemExit raised inside tune.report
        logger.stopped()  # write what is queued; the driver tags and closes the run
        raise


def _train(params: dict[str, Any], seeds: list[int], ctx: TrialContext, logger: TrialLogger,
           node_id: str, entered: float) -> None:
    setup_start = time.perf_counter()
    torch.set_num_threads(max(1, int(ctx.cpus)))
    model_kw, train_kw = split_params({k: v for k, v in params.items() if k != "seed"})
    base_model = build_model_config(ctx.cohort, ctx.task, **model_kw)
    base_train = TrainConfig(**train_kw)
    device = resolve_device(base_train.device)
    bags = _shared_tensor(ctx.bags).to(device) if ctx.bags is not None else None
    folds = {f: prepare_fold(ctx.cohort, bags, ctx.splits, f, ctx.task, log1p=base_train.log1p)
             for f in ctx.folds}
    trainers = [FoldTrainer(folds[f], base_model, TrainConfig(**{**train_kw, "seed": s}), device)
                for s in seeds for f in ctx.folds]
    metric = ctx.metric
    start = time.perf_counter()
    timing = {"setup_seconds": start - setup_start, "train_seconds": 0.0,
              ENTERED_AT: entered, READY_AT: time.time()}
    for epoch in range(1, ctx.epochs + 1):
        epoch_start = time.perf_counter()
        results = [t.fit_epoch() for t in trainers if not t.done]
        timing["train_seconds"] += time.perf_counter() - epoch_start
        current = [t.result if t.done else t.history[-1] for t in trainers]
        per_fold = _by_fold(trainers, [c.metrics[metric] for c in current])
        key = val_metric(metric)
        values = {key: float(np.mean([c.metrics[metric] for c in current])),
                  TRAIN_LOSS: float(np.mean([r.train_loss for r in results])),
                  **{fold_metric(f, key): v for f, v in per_fold.items()}}
        tele = [r.telemetry for r in results if r.telemetry]
        values.update({telemetry_metric(k): float(np.mean([t[k] for t in tele]))
                       for k in TELEMETRY_KEYS if tele})
        stamp = logger.log_epoch(epoch, values)
        finished = all(t.done for t in trainers)
        if finished:  # log completion before the last report: the scheduler may stop us there
            _complete(trainers, logger, time.perf_counter() - start)
        tune.report({**values, **timing, EPOCH: epoch, COMPLETED: finished, LOGGED_AT: stamp,
                     RUN_ID: logger.run_id, NODE: node_id, REPORTED_AT: time.time()})
        if finished:
            return


def _complete(trainers: list[FoldTrainer], logger: TrialLogger, seconds: float) -> None:
    """Final per-fold metrics (each fold at its selected epoch) and predictions to MLflow."""
    final: dict[str, float] = {}
    for name in trainers[0].result.metrics:
        key = final_metric(name)
        final[key] = float(np.mean([t.result.metrics[name] for t in trainers]))
        for f, v in _by_fold(trainers, [t.result.metrics[name] for t in trainers]).items():
            final[fold_metric(f, key)] = v
    final[EPOCHS_RUN] = float(max(t.epoch for t in trainers))
    predictions = pd.concat([t.predictions().assign(seed=t.train_cfg.seed) for t in trainers],
                            ignore_index=True)
    logger.complete(final, predictions, {Tags.WALL_SECONDS: round(seconds, 2)})


def _shared_tensor(array: np.ndarray) -> torch.Tensor:
    """View the object store's read-only bag array without copying (nothing writes to it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _by_fold(trainers: list[FoldTrainer], values: list[float]) -> dict[int, float]:
    """Per-fold values, averaged over seeds when a trial trains several."""
    frame = pd.DataFrame({"fold": [t.data.fold for t in trainers], "v": values})
    return frame.groupby("fold")["v"].mean().to_dict()
