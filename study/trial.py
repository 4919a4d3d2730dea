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
from typing import Any

import ray
import torch
from mlflow.entities import Metric
from ray import tune

from study import checkpoint
from study.configuration_run import complete, epoch_values, open_run, run_params, run_tags
from study.fanout import FoldStep, make_folds
from study.quiet import quiet_worker
from study.record import Params, Status, Tags, val_metric
from study.results import (
    COMPLETED,
    ENTERED_AT,
    EPOCH,
    LOGGED_AT,
    NODE,
    READY_AT,
    REPLAYED,
    REPORTED_AT,
    RUN_ID,
    SETUP_SECONDS,
    TRAIN_SECONDS,
)
from study.spec import RunSpec, TrialContext
from study.tracking import TrialLogger, close_completed, log_batched, mlflow_client, trial_runs


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

    spec = ctx.spec(config)  # the configuration, typed and validated once
    node_id = ray.get_runtime_context().get_node_id()
    resume = checkpoint.latest()
    resumed = {Tags.RESUMED_AT: resume.epoch, Tags.CHECKPOINT_OF: resume.trial_id} \
        if resume is not None else {}
    logger = open_run(spec, ctx, trial_id, run_params(spec, **{Params.FOLDS: len(spec.folds)}),
                      run_tags(spec, ctx, node_id, **resumed), earlier=earlier)
    try:
        if resume is not None:  # the new run's history starts with the checkpoint's epochs
            print(f"trial {trial_id}: continuing from the checkpoint of trial "
                  f"{resume.trial_id} after epoch {resume.epoch}", flush=True)
            log_batched(logger.client, logger.run_id, metrics=[
                Metric(k, float(v), int(e["stamp"]), int(e["epoch"]))
                for e in resume.epochs for k, v in e["values"].items()])
        _train(config, spec, ctx, logger, node_id, entered, resume)
    except Exception as exc:
        logger.fail(exc)
        raise
    except BaseException:  # stopped by the scheduler: SystemExit raised inside tune.report
        logger.stopped()  # write what is queued; the driver tags and closes the run
        raise


def _train(config: dict[str, Any], spec: RunSpec, ctx: TrialContext, logger: TrialLogger,
           node_id: str, entered: float, resume: checkpoint.TrialState | None) -> None:
    setup_start = time.perf_counter()
    torch.set_num_threads(max(1, int(ctx.cpus)))
    folds = make_folds(ctx, spec)
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
            complete(logger, folds.finals(), train_seconds)
            tune.report({key: logged[-1]["values"][key], EPOCH: resume.epoch, COMPLETED: True,
                         RUN_ID: logger.run_id, NODE: node_id, REPORTED_AT: time.time()})
            return
    start = time.perf_counter()
    timing = {SETUP_SECONDS: start - setup_start, TRAIN_SECONDS: train_seconds,
              ENTERED_AT: entered, READY_AT: time.time()}
    for epoch in range(first, ctx.epochs + 1):
        epoch_start = time.perf_counter()
        steps: list[FoldStep] = folds.step()
        timing[TRAIN_SECONDS] += time.perf_counter() - epoch_start
        values = epoch_values(steps, metric)
        stamp = logger.log_epoch(epoch, values)
        logged.append({"epoch": epoch, "stamp": stamp, "values": values})
        finished = all(s.done for s in steps)
        if finished:  # log completion before the last report: the scheduler may stop us there
            complete(logger, folds.finals(), train_seconds + time.perf_counter() - start)
        report = {**values, **timing, EPOCH: epoch, COMPLETED: finished, LOGGED_AT: stamp,
                  RUN_ID: logger.run_id, NODE: node_id, REPORTED_AT: time.time()}
        if checkpoint.due(epoch, ctx.checkpoint_every, finished):
            state = checkpoint.TrialState(epoch, trial_id, dict(config), folds.states(), logged,
                                          timing[TRAIN_SECONDS])
            with checkpoint.written(state) as saved:
                tune.report(report, checkpoint=saved)
        else:
            tune.report(report)
        if finished:
            return
