"""One configuration of a study as one typed object, built and validated once: `RunSpec`.

A configuration arrives as flat parameters - the study's fixed values, a variant's overrides,
the sampler's proposal - keyed by their study-file names. `TrialContext.spec` turns them, once
per trial (or nested refit), into a `RunSpec`: the `Task`, the model config (sizes from the
cohort and task), one training config per training seed, the folds it is evaluated on, and what
MLflow records of it (every effective parameter, the method label). Everything downstream reads
the spec: the trial (study/trial.py), the fold actors it fans out to (study/fanout.py, which
receive the spec's configs pickled, never re-built), the nested refit (study/nested.py) and the
run's record (study/configuration_run.py). Nothing re-splits the flat dict or re-validates.

`TrialContext` is the plain data every trial of a study shares (shipped once through Ray's
object store).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ksmodel.cohort import Cohort
from ksmodel.config import ModelConfig, TrainConfig, split_params, to_dict
from ksmodel.tasks import Task, get_task
from ksmodel.trainer import build_model_config
from study.variants import expand as expand_variant

SINGLE = "single"
"""Method label (tag ``ks.method``) of a model without decomposition: one stream, nothing to
coordinate."""


@dataclass(frozen=True)
class RunSpec:
    """What one run trains and records: built by `TrialContext.spec`, read everywhere else."""

    task: Task
    model: ModelConfig
    trains: tuple[TrainConfig, ...]  # one per training seed, equal otherwise
    folds: tuple[int, ...]  # the folds it is evaluated on
    params: Mapping[str, Any]  # every effective parameter by its study-file name (MLflow)
    variant: str | None = None  # the named variant of a variants study

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(t.seed for t in self.trains)

    @property
    def train(self) -> TrainConfig:
        """The training config of the first seed (what every seed shares: device, log1p...)."""
        return self.trains[0]

    @property
    def metric(self) -> str:
        return self.task.metric

    @property
    def method(self) -> str:
        """The label analysis groups by: the coordination rule, or `SINGLE` without
        decomposition."""
        return SINGLE if not self.model.decompose else self.train.coordination

    @property
    def seed_label(self) -> int | str:
        """Tag ``ks.seed``: the training seed, or 'mean' when the run averages several."""
        return self.seeds[0] if len(self.seeds) == 1 else "mean"


@dataclass
class TrialContext:
    """Plain data shared by every trial of a study (shipped once through the object store)."""

    task: Task
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

    def __post_init__(self) -> None:
        self.task = get_task(self.task)  # a task name is accepted and resolved here, once

    @property
    def metric(self) -> str:
        return self.task.metric

    def spec(self, config: Mapping[str, Any], *, folds: tuple[int, ...] | None = None,
             train_overrides: Mapping[str, Any] | None = None) -> RunSpec:
        """The `RunSpec` of one configuration (a trial's ``config``: searched values, a variant
        name, a seed), on ``folds`` (default: the study's). ``train_overrides`` change what is
        trained but not what is recorded (the nested refit trains with ``patience: 0``, its run
        records the chosen configuration's value)."""
        overrides, variant = expand_variant(config, self.variants)
        flat = {**self.fixed, **overrides, "task": self.task.name, "epochs": self.epochs}
        seeded = "seed" in flat
        seeds = (flat.pop("seed"),) if seeded else tuple(self.seeds)
        model_kw, train_kw = split_params(flat)
        model = build_model_config(self.cohort, self.task, **model_kw)
        trained = {**train_kw, **(train_overrides or {})}
        trains = tuple(TrainConfig(**trained, seed=s) for s in seeds)
        params = {**to_dict(model), **to_dict(trains[0])}
        for key in train_overrides or {}:
            params[key] = train_kw.get(key, getattr(TrainConfig, key))
        if not seeded:
            params.pop("seed")
        return RunSpec(self.task, model, trains, tuple(self.folds if folds is None else folds),
                       params, variant)


__all__ = ["SINGLE", "RunSpec", "TrialContext"]
