"""Cohort -> folds -> bags: the data every training run starts from (the trainer CLI and every
study). One pipeline, so both train on the same cohort, folds and token grid for the same inputs.

Order: resolve the cohort (a folder, or the cached synthetic default), validate it for the task,
take the folds (a given split file, else the folds published with the cohort, else stratified
folds made from ``split_seed``, ``repeats`` times over), check every fold can be trained, then
read the bags onto the model's token grid once - only when some model of the run reads histology.
A cohort that publishes its folds is evaluated on exactly those, so it refuses ``repeats`` > 1
(its repeat dimension is the model's training seeds).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ksmodel.cohort import Cohort, load_bags, load_cohort
from ksmodel.config import SyntheticConfig
from ksmodel.errors import CohortError
from ksmodel.splits import check_folds, folds_per_repeat, load_splits, make_splits, n_repeats

SYNTHETIC = "synthetic"
CACHE_ENV = "KS_STUDY_CACHE"


@dataclass(frozen=True, eq=False)
class RunData:
    """A validated cohort, the folds every model of the run sees, and the bags on the grid."""

    cohort: Cohort
    splits: pd.DataFrame  # case_id, fold[, repeat] (cohort order, repeat by repeat)
    splits_source: str  # where the folds came from, for logs and reports
    bags: torch.Tensor | None  # [n_cases, H*W, D] in cohort order; None without histology

    @property
    def folds(self) -> list[int]:
        """Every global fold id (``repeat * k + fold``), in order."""
        return sorted(int(f) for f in self.splits["fold"].unique())

    @property
    def repeats(self) -> int:
        """r: how many k-fold partitions the folds come from."""
        return n_repeats(self.splits)

    @property
    def k(self) -> int:
        """Folds per repetition."""
        return folds_per_repeat(self.splits)


def cache_dir() -> Path:
    """Where generated synthetic cohorts are kept ($KS_STUDY_CACHE, else ~/.cache/ks-study)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ks-study"
    return Path(root)


def resolve_cohort(source: str | Path, synthetic: SyntheticConfig | None = None) -> Path:
    """The cohort folder: ``source`` itself, or for ``"synthetic"`` the cached synthetic cohort
    of these parameters (generated once per parameter set, shared by every run)."""
    if str(source) != SYNTHETIC:
        return Path(source)
    from ksmodel.synthetic import ensure_synthetic

    params = synthetic or SyntheticConfig()
    return ensure_synthetic(cache_dir() / "synthetic" / params.key(), params)


def needs_histology(modalities: Iterable[str]) -> bool:
    """Whether any of the run's models reads the patch features."""
    return set(modalities) != {"genomics"}


def load_run_data(root: str | Path, task: str, *, modalities: Iterable[str] = ("both",),
                  grid: tuple[int, int] = (16, 16), folds: int = 5, split_seed: int = 0,
                  splits_file: str | Path | None = None, repeats: int = 1) -> RunData:
    """Validate the cohort and folds for ``task`` and read the bags if a model needs them.

    Bad input raises ``CohortError`` naming the file and row/case/gene before compute is spent.
    """
    root = Path(root)
    cohort = load_cohort(root, tasks=[task], require_features=False)
    histology = needs_histology(modalities)
    published = root / "splits.parquet"
    if splits_file is not None:
        splits, source = load_splits(splits_file, cohort), str(splits_file)
    elif published.is_file():
        if repeats > 1:
            raise CohortError(f"{published}: the cohort publishes its own folds, so repeats: "
                              f"{repeats} cannot make other ones; keep repeats: 1 and use the "
                              "model's training seeds as the repeat dimension (e.g. seeds: [0, 1, "
                              "2]; docs/study-files.md, 'Repeated cross-validation')")
        splits, source = load_splits(published, cohort), f"published with the cohort ({published})"
    else:
        splits = make_splits(cohort, task, k=folds, seed=split_seed, repeats=repeats)
        source = f"stratified {folds}-fold split, seed {split_seed}" + (
            f", {repeats} repeats (split seeds derived from {split_seed})" if repeats > 1 else "")
    check_folds(cohort, splits, task)
    bags = load_bags(cohort, grid, seed=split_seed).tensor if histology else None  # needs features
    return RunData(cohort, splits, source, bags)


__all__ = ["RunData", "SYNTHETIC", "cache_dir", "resolve_cohort", "needs_histology",
           "load_run_data"]
