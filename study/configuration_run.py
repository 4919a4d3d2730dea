"""Run and log one configuration (a `RunSpec`): its folds, its run's params and tags, the values
of each epoch, the final per-fold metrics and predictions.

A trial (study/trial.py) and the nested refit (study/nested.py) both go through here, so a
trial run and an outer run hold the same record (study/record.py) built the same way; they
differ only in what drives the epochs (Ray Tune's reports and checkpoints; a fixed number of
epochs on the outer training part). The folds themselves train in this process or in one Ray
actor each (study/fanout.py), from the spec's configs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ksmodel.telemetry import TELEMETRY_KEYS
from study.fanout import FoldFinal, FoldStep
from study.record import (
    EPOCHS_RUN,
    TRAIN_LOSS,
    Params,
    Tags,
    final_metric,
    fold_metric,
    telemetry_metric,
    val_metric,
)
from study.spec import RunSpec, TrialContext
from study.tracking import TrialLogger


def run_params(spec: RunSpec, **extra: Any) -> dict[str, Any]:
    """The run's params: every effective parameter, the seeds it averages, and ``extra``."""
    return {**spec.params, Params.SEEDS: ",".join(map(str, spec.seeds)), **extra}


def run_tags(spec: RunSpec, ctx: TrialContext, node_id: str, **extra: Any) -> dict[str, Any]:
    """The run's tags: method, task, metric, node, folds, seed (and variant), the study's tags
    (``ctx.tags``), then ``extra``."""
    return {Tags.METHOD: spec.method, Tags.TASK: spec.task.name, Tags.METRIC: spec.metric,
            Tags.NODE_ID: node_id, Tags.FOLDS: ",".join(map(str, spec.folds)),
            Tags.SEED: spec.seed_label,
            **({Tags.VARIANT: spec.variant} if spec.variant else {}), **ctx.tags, **extra}


def open_run(spec: RunSpec, ctx: TrialContext, trial_id: str, params: Mapping[str, Any],
             tags: Mapping[str, Any], earlier: list[Any] | None = None) -> TrialLogger:
    """The run's MLflow child run, created on the node that trains it."""
    return TrialLogger(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, trial_id,
                       dict(params), dict(tags), earlier=earlier)


def by_fold(folds: Sequence[FoldStep] | Sequence[FoldFinal],
            values: list[float]) -> dict[int, float]:
    """Per-fold values, averaged over seeds when a run trains several."""
    frame = pd.DataFrame({"fold": [f.fold for f in folds], "v": values})
    return frame.groupby("fold")["v"].mean().to_dict()


def epoch_values(steps: Sequence[FoldStep], metric: str) -> dict[str, float]:
    """One epoch's logged values: the validation metric (fold mean and per fold), the training
    loss, and the coordination telemetry, each averaged over the folds that trained."""
    key = val_metric(metric)
    trained = [s.trained for s in steps if s.trained is not None]
    current = [s.current.metrics[metric] for s in steps]
    values = {key: float(np.mean(current)),
              TRAIN_LOSS: float(np.mean([r.train_loss for r in trained])),
              **{fold_metric(f, key): v for f, v in by_fold(steps, current).items()}}
    tele = [r.telemetry for r in trained if r.telemetry]
    values.update({telemetry_metric(k): float(np.mean([t[k] for t in tele]))
                   for k in TELEMETRY_KEYS if tele})
    return values


def final_values(finals: Sequence[FoldFinal]) -> dict[str, float]:
    """Final metrics: each fold at its selected epoch, fold mean and per fold; epochs run."""
    final: dict[str, float] = {}
    for name in finals[0].result.metrics:
        key = final_metric(name)
        values = [f.result.metrics[name] for f in finals]
        final[key] = float(np.mean(values))
        for fold, v in by_fold(finals, values).items():
            final[fold_metric(fold, key)] = v
    final[EPOCHS_RUN] = float(max(f.epoch for f in finals))
    return final


def complete(logger: TrialLogger, finals: Sequence[FoldFinal], seconds: float,
             extra: Mapping[str, float] | None = None) -> dict[str, float]:
    """Log the final metrics (with ``extra``), every (seed, fold)'s predictions and the wall
    time, and close the run COMPLETED; the final metrics logged."""
    final = {**final_values(finals), **(extra or {})}
    predictions = pd.concat([f.predictions.assign(seed=f.seed) for f in finals],
                            ignore_index=True)
    logger.complete(final, predictions, {Tags.WALL_SECONDS: round(seconds, 2)})
    return final


__all__ = ["by_fold", "complete", "epoch_values", "final_values", "open_run", "run_params",
           "run_tags"]
