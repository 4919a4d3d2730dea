"""Patient-level cross-validation folds and fold-wise expression normalisation.

Folds are made once per study from a seed and saved, so every trial and every method sees the
same folds -- the precondition for paired comparisons. Folds are over cases (patients), never
slides, so no patient is in both the training and the validation part. Folds are stratified on
the task's strata (``Task.strata``: the class, or the event indicator for survival).

``ExpressionScaler`` is fit on the training rows only (optional log1p, then z-score); the
validation rows are transformed with the training statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from ksmodel.cohort import Cohort
from ksmodel.errors import CohortError, shown
from ksmodel.errors import few as _few
from ksmodel.tasks import get_task

STD_FLOOR = 1e-6
"""Genes whose training std is below this are treated as std 1 (centred only), not divided by ~0."""


def _strata(cohort: Cohort, task: str) -> np.ndarray:
    return get_task(task).strata(cohort.targets(task))


def make_splits(cohort: Cohort, task: str, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Stratified k-fold assignment: DataFrame[case_id, fold] in cohort order (sorted case_id)."""
    if not isinstance(k, int) or k < 2:
        raise CohortError(f"k must be an integer >= 2 folds, got {shown(k)}")
    strata = _strata(cohort, task)
    what = get_task(task).strata_name
    values, counts = np.unique(strata, return_counts=True)
    small = [f"{what} {v}: {c} case(s)" for v, c in zip(values, counts, strict=True) if c < k]
    if small:
        raise CohortError(f"{cohort.root}: cannot stratify {k} folds for task {task}: "
                          f"{_few(small)} (< {k}); use fewer folds or more cases")
    fold = np.empty(len(strata), dtype=np.int64)
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for f, (_, val) in enumerate(skf.split(np.zeros(len(strata)), strata)):
        fold[val] = f
    return pd.DataFrame({"case_id": cohort.case_ids, "fold": fold})


def save_splits(splits: pd.DataFrame, path: str | Path) -> Path:
    """Write case_id, fold as .parquet or .csv (by suffix); returns the path."""
    path = Path(path)
    if list(splits.columns[:2]) != ["case_id", "fold"]:
        raise CohortError(f"splits must have columns case_id, fold; got {list(splits.columns)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    out = splits[["case_id", "fold"]].reset_index(drop=True)
    if path.suffix == ".parquet":
        out.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        out.to_csv(path, index=False)
    else:
        raise CohortError(f"{path}: splits file must end in .parquet or .csv")
    return path


def _align(splits: pd.DataFrame, cohort: Cohort, source: str) -> pd.DataFrame:
    """Validate case ids both ways and fold numbers; return splits in cohort order."""
    for column in ("case_id", "fold"):
        if column not in splits.columns:
            raise CohortError(f"{source}: missing column {column}; a splits file has columns "
                              f"case_id, fold")
    ids = splits["case_id"].astype("string").str.strip()
    if ids.isna().any() or (ids == "").any():
        rows = np.flatnonzero((ids.isna() | (ids == "")).to_numpy()) + 1
        raise CohortError(f"{source}: case_id missing in data row(s) {_few(rows)}")
    ids = ids.astype(str)
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise CohortError(f"{source}: case_id {_few(sorted(set(ids[dup])))} appears more than "
                          f"once; each case belongs to exactly one fold")
    fold = pd.to_numeric(splits["fold"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(fold) | (fold != np.round(fold)) | (fold < 0)
    if bad.any():
        culprits = [f"{c} ({shown(v)})" for c, v in zip(ids[bad], splits["fold"].to_numpy()[bad],
                                                   strict=True)]
        raise CohortError(f"{source}: fold must be an integer >= 0; bad for case(s) "
                          f"{_few(culprits)}")
    k = int(fold.max()) + 1
    empty = sorted(set(range(k)) - set(fold.astype(int)))
    if k < 2 or empty:
        raise CohortError(f"{source}: folds must be numbered 0..k-1 (k >= 2) with no empty fold; "
                          f"found folds {sorted(set(fold.astype(int).tolist()))}")
    known = pd.Index(cohort.case_ids)
    unknown = pd.Index(ids).difference(known)
    if len(unknown):
        raise CohortError(f"{source}: {len(unknown)} case_id(s) not in the cohort {cohort.root}: "
                          f"{_few(unknown)}; the splits belong to another cohort -- remake them")
    absent = known.difference(pd.Index(ids))
    if len(absent):
        raise CohortError(f"{source}: {len(absent)} cohort case(s) have no fold: {_few(absent)}; "
                          f"remake the splits for this cohort")
    by_id = pd.Series(fold.astype(np.int64), index=pd.Index(ids))
    return pd.DataFrame({"case_id": cohort.case_ids,
                         "fold": by_id.loc[cohort.case_ids].to_numpy(dtype=np.int64)})


def load_splits(path: str | Path, cohort: Cohort) -> pd.DataFrame:
    """Read a saved splits file and check it against the cohort (both ways)."""
    path = Path(path)
    if not path.is_file():
        raise CohortError(f"{path}: splits file not found; make it with make_splits/save_splits")
    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(
            path, dtype={"case_id": str})
    except Exception as exc:
        raise CohortError(f"{path}: cannot be read ({type(exc).__name__}: {exc}); remake the "
                          f"splits") from exc
    return _align(df, cohort, str(path))


def check_folds(cohort: Cohort, splits: pd.DataFrame, task: str) -> None:
    """Raise CohortError when a fold cannot be trained/evaluated for ``task`` (the task's rule,
    ``Task.check_fold``: e.g. survival needs events in both parts, classification every class in
    every training part; a class missing from a validation part only warns)."""
    splits = _align(splits, cohort, "splits")
    t = get_task(task)
    strata = _strata(cohort, task)
    fold = splits["fold"].to_numpy()
    for f in range(int(fold.max()) + 1):
        val = fold == f
        t.check_fold(f, strata[~val], strata[val], strata)


def fold_case_ids(splits: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(training case ids, validation case ids) of one fold."""
    folds = splits["fold"].to_numpy()
    if fold not in set(folds.tolist()):
        raise CohortError(f"fold {fold} not in the splits (folds {sorted(set(folds.tolist()))})")
    val = folds == fold
    ids = splits["case_id"].astype(str).to_numpy()
    return ids[~val].tolist(), ids[val].tolist()


@dataclass(frozen=True, eq=False)
class ExpressionScaler:
    """log1p (optional) then z-score, with statistics from the rows given to ``fit`` only."""

    genes: list[str]
    mean: np.ndarray
    std: np.ndarray
    log1p: bool

    @classmethod
    def fit(cls, expr: pd.DataFrame, log1p: bool = True) -> ExpressionScaler:
        if len(expr) == 0:
            raise CohortError("ExpressionScaler.fit: no rows (empty training part)")
        x = cls._prepare(expr.to_numpy(dtype=np.float64), list(expr.columns), log1p)
        std = x.std(axis=0)
        std = np.where(std < STD_FLOOR, 1.0, std)
        return cls(genes=[str(g) for g in expr.columns], mean=x.mean(axis=0), std=std,
                   log1p=log1p)

    @staticmethod
    def _prepare(x: np.ndarray, genes: list[str], log1p: bool) -> np.ndarray:
        if not log1p:
            return x
        low = np.nonzero((x <= -1).any(axis=0))[0]
        if len(low):
            raise CohortError(f"expression values <= -1 in gene(s) {_few(genes[i] for i in low)} "
                              f"cannot be log1p-transformed; the data look already logged -- set "
                              f"log1p=False")
        return np.log1p(x)

    def transform(self, expr: pd.DataFrame) -> np.ndarray:
        """Scaled float32 matrix [rows, genes] in ``self.genes`` order."""
        missing = [g for g in self.genes if g not in expr.columns]
        if missing:
            raise CohortError(f"ExpressionScaler.transform: gene(s) {_few(missing)} missing from "
                              f"the table; transform needs every gene the scaler was fit on")
        x = self._prepare(expr[self.genes].to_numpy(dtype=np.float64), self.genes, self.log1p)
        return ((x - self.mean) / self.std).astype(np.float32)


__all__ = ["make_splits", "save_splits", "load_splits", "check_folds", "fold_case_ids",
           "ExpressionScaler", "STD_FLOOR"]
