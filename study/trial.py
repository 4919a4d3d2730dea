"""The Ray Tune trainable: one configuration, cross-validated over all folds (and seeds).

The folds advance together, one epoch at a time - in the trial's process (lock-step) or one Ray
actor per fold (``fold_parallel: tasks``, study/fanout.py) - and the trial reports the mean
validation metric across folds after every epoch, so ASHA and PBT compare trials at equal
training budgets on equal data. Every ``checkpoint_every`` epochs the report carries a checkpoint
of every fold (study/checkpoint.py); a trial restored from one trains on from the epoch after it.
Everything a trial needs (cohort tables, bags already on the token grid, the study's split
file) arrives once through Ray's object store (`tune.with_parameters`), so no trial re-reads
the h5 files and every trial sees identical folds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
from mlflow.entities import Metric
from ray import tune

from ksmodel.cohort import Cohort
from ksmodel.config import TrainConfig, split_params, to_dict
from ksmodel.coordination.coordinator import TELEMETRY_KEYS
from ksmodel.train import build_model_config
from study import checkpoint
from study.fanout import FoldFinal, FoldStep, make_folds
from study.quiet import quiet_worker
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
from study.tracking import TrialLogger, close_completed, log_batched, mlflow_client, trial_runs
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
    gpus: float = 0.0
    tags: dict[str, str] = field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides
    checkpoint_every: int = 1  # epochs between checkpoints; 0: none
    fold_parallel: str = "lockstep"  # lockstep | tasks (study/fanout.py)


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
    quiet_worker()  # Ray's INFO lines off in this process, as the driver asked (study/quiet.py)
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
    resume = checkpoint.latest()
    resumed = {Tags.RESUMED_AT: resume.epoch, Tags.CHECKPOINT_OF: resume.trial_id} \
        if resume is not None else {}
    logger = TrialLogger(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_id,
                         logged, {Tags.METHOD: method_name(params), Tags.TASK: ctx.task,
                                  Tags.METRIC: ctx.metric, Tags.NODE_ID: node_id,
                                  Tags.FOLDS: ",".join(map(str, ctx.folds)),
                                  Tags.SEED: seeds[0] if len(seeds) == 1 else "mean",
                                  **({Tags.VARIANT: variant} if variant else {}), **ctx.tags,
                                  **resumed},
                         earlier=earlier)
    try:
        if resume is not None:  # the new run's history starts with the checkpoint's epochs
            print(f"trial {trial_id}: continuing from the checkpoint of trial "
                  f"{resume.trial_id} after epoch {resume.epoch}", flush=True)
            log_batched(logger.client, logger.run_id, metrics=[
                Metric(k, float(v), int(e["stamp"]), int(e["epoch"]))
                for e in resume.epochs for k, v in e["values"].items()])
        _train(config, params, seeds, ctx, logger, node_id, entered, resume)
    except Exception as exc:
        logger.fail(exc)
        raise
    except BaseException:  # stopped by the scheduler: SystemExit raised inside tune.report
        logger.stopped()  # write what is queued; the driver tags and closes the run
        raise


def _train(config: dict[str, Any], params: dict[str, Any], seeds: list[int], ctx: TrialContext,
           logger: TrialLogger, node_id: str, entered: float,
           resume: checkpoint.TrialState | None) -> None:
    setup_start = time.perf_counter()
    torch.set_num_threads(max(1, int(ctx.cpus)))
    model_kw, train_kw = split_params({k: v for k, v in params.items() if k != "seed"})
    model_cfg = build_model_config(ctx.cohort, ctx.task, **model_kw)
    folds = make_folds(ctx, model_cfg, train_kw, seeds)
    try:
        _epochs(config, folds, ctx, logger, node_id, entered, resume, setup_start)
    finally:
        folds.close()


def _epochs(config: dict[str, Any], folds: Any, ctx: TrialContext, logger: TrialLogger,
            node_id: str, entered: float, resume: checkpoint.TrialState | None,
            setup_start: float) -> None:
    """Advance every fold one epoch at a time; log, checkpoint and report each epoch."""
    metric, key = ctx.metric, val_metric(ctx.metric)
    trial_id = tune.get_context().get_trial_id()
    logged: list[dict[str, Any]] = []  # every epoch's values, for the checkpoints
    first, train_seconds = 1, 0.0
    if resume is not None:
        steps = folds.restore(resume.folds)
        first, logged, train_seconds = resume.epoch + 1, list(resume.epochs), \
            resume.train_seconds
        if all(s.done for s in steps):  # every fold had finished (patience) at the checkpoint
            _complete(folds.finals(), logger, train_seconds)
            tune.report({key: logged[-1]["values"][key], EPOCH: resume.epoch, COMPLETED: True,
                         RUN_ID: logger.run_id, NODE: node_id, REPORTED_AT: time.time()})
            return
    start = time.perf_counter()
    timing = {"setup_seconds": start - setup_start, "train_seconds": train_seconds,
              ENTERED_AT: entered, READY_AT: time.time()}
    for epoch in range(first, ctx.epochs + 1):
        epoch_start = time.perf_counter()
        steps: list[FoldStep] = folds.step()
        timing["train_seconds"] += time.perf_counter() - epoch_start
        trained = [s.trained for s in steps if s.trained is not None]
        per_fold = _by_fold(steps, [s.current.metrics[metric] for s in steps])
        values = {key: float(np.mean([s.current.metrics[metric] for s in steps])),
                  TRAIN_LOSS: float(np.mean([r.train_loss for r in trained])),
                  **{fold_metric(f, key): v for f, v in per_fold.items()}}
        tele = [r.telemetry for r in trained if r.telemetry]
        values.update({telemetry_metric(k): float(np.mean([t[k] for t in tele]))
                       for k in TELEMETRY_KEYS if tele})
        stamp = logger.log_epoch(epoch, values)
        logged.append({"epoch": epoch, "stamp": stamp, "values": values})
        finished = all(s.done for s in steps)
        if finished:  # log completion before the last report: the scheduler may stop us there
            _complete(folds.finals(), logger, train_seconds + time.perf_counter() - start)
        report = {**values, **timing, EPOCH: epoch, COMPLETED: finished, LOGGED_AT: stamp,
                  RUN_ID: logger.run_id, NODE: node_id, REPORTED_AT: time.time()}
        if checkpoint.due(epoch, ctx.checkpoint_every, finished):
            state = checkpoint.TrialState(epoch, trial_id, dict(config), folds.states(), logged,
                                          timing["train_seconds"])
            with checkpoint.written(state) as saved:
                tune.report(report, checkpoint=saved)
        else:
            tune.report(report)
        if finished:
            return


def _complete(finals: list[FoldFinal], logger: TrialLogger, seconds: float) -> None:
    """Final per-fold metrics (each fold at its selected epoch) and predictions to MLflow."""
    final: dict[str, float] = {}
    for name in finals[0].result.metrics:
        key = final_metric(name)
        final[key] = float(np.mean([f.result.metrics[name] for f in finals]))
        for fold, v in _by_fold(finals, [f.result.metrics[name] for f in finals]).items():
            final[fold_metric(fold, key)] = v
    final[EPOCHS_RUN] = float(max(f.epoch for f in finals))
    predictions = pd.concat([f.predictions.assign(seed=f.seed) for f in finals],
                            ignore_index=True)
    logger.complete(final, predictions, {Tags.WALL_SECONDS: round(seconds, 2)})


def _by_fold(folds: list[FoldStep] | list[FoldFinal], values: list[float]) -> dict[int, float]:
    """Per-fold values, averaged over seeds when a trial trains several."""
    frame = pd.DataFrame({"fold": [f.fold for f in folds], "v": values})
    return frame.groupby("fold")["v"].mean().to_dict()
