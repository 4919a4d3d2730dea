"""Patient-level cross-validation folds and fold-wise expression normalisation.

Folds are made once per study from a seed and saved, so every trial and every method sees the
same folds -- the precondition for paired comparisons. Folds are over cases (patients), never
slides, so no patient is in both the training and the validation part. Folds are stratified on
the task's strata (``Task.strata``: the class, or the event indicator for survival).

Repeated cross-validation (``repeats`` r > 1): r independent k-fold partitions, repeat i made
from ``repeat_seed(seed, i)`` (repeat 0 from ``seed`` itself, so r = 1 is the plain k-fold). A
fold has one *global* id, ``repeat * k + fold``, everywhere (split file, ``fold_<g>/...``
metrics, prediction tables). The split table then has a ``repeat`` column and every case once
per repeat; the training part of global fold g is the cases of g's repeat that are not in g.
A table without ``repeat`` is one repetition (the files written before repeats existed).

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


REPEAT = "repeat"


def repeat_seed(seed: int, repeat: int) -> int:
    """The split seed of repetition ``repeat``: ``seed`` itself for repeat 0, else a seed derived
    from (seed, repeat) by NumPy's SeedSequence (independent partitions, reproducible)."""
    if repeat == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(repeat)]).generate_state(1)[0])


def make_splits(cohort: Cohort, task: str, k: int = 5, seed: int = 0,
                repeats: int = 1) -> pd.DataFrame:
    """Stratified k-fold assignment in cohort order (sorted case_id): DataFrame[case_id, fold];
    with ``repeats`` r > 1, r partitions one after the other, DataFrame[case_id, fold, repeat]
    with global fold ids ``repeat * k + fold`` (module docstring)."""
    if not isinstance(k, int) or k < 2:
        raise CohortError(f"k must be an integer >= 2 folds, got {shown(k)}")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise CohortError(f"repeats must be an integer >= 1, got {shown(repeats)}")
    if repeats > 1:
        parts = [make_splits(cohort, task, k, repeat_seed(seed, r)).assign(
                     fold=lambda f, r=r: f["fold"] + r * k, repeat=r) for r in range(repeats)]
        return pd.concat(parts, ignore_index=True)
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
    """Write case_id, fold (and repeat, when there is one) as .parquet or .csv (by suffix);
    returns the path."""
    path = Path(path)
    if list(splits.columns[:2]) != ["case_id", "fold"]:
        raise CohortError(f"splits must have columns case_id, fold; got {list(splits.columns)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["case_id", "fold"] + ([REPEAT] if REPEAT in splits.columns else [])
    out = splits[columns].reset_index(drop=True)
    if path.suffix == ".parquet":
        out.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        out.to_csv(path, index=False)
    else:
        raise CohortError(f"{path}: splits file must end in .parquet or .csv")
    return path


def _align(splits: pd.DataFrame, cohort: Cohort, source: str) -> pd.DataFrame:
    """Validate case ids both ways and fold numbers; return splits in cohort order (repeat by
    repeat when there are several)."""
    for column in ("case_id", "fold"):
        if column not in splits.columns:
            raise CohortError(f"{source}: missing column {column}; a splits file has columns "
                              f"case_id, fold (and repeat, for repeated cross-validation)")
    if REPEAT in splits.columns:
        return _align_repeats(splits, cohort, source)
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


def _align_repeats(splits: pd.DataFrame, cohort: Cohort, source: str) -> pd.DataFrame:
    """A repeated split table: every repeat 0..r-1 a complete partition of the cohort into k
    folds numbered repeat * k .. repeat * k + k - 1 (the same k in every repeat)."""
    repeat = pd.to_numeric(splits[REPEAT], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(repeat) | (repeat != np.round(repeat)) | (repeat < 0)
    if bad.any():
        rows = np.flatnonzero(bad) + 1
        raise CohortError(f"{source}: repeat must be an integer >= 0; bad in data row(s) "
                          f"{_few(rows)}")
    repeat = repeat.astype(np.int64)
    r = int(repeat.max()) + 1
    if sorted(set(repeat.tolist())) != list(range(r)):
        raise CohortError(f"{source}: repeats must be numbered 0..r-1; found "
                          f"{sorted(set(repeat.tolist()))}")
    parts, k = [], 0
    for i in range(r):
        part, where = splits[repeat == i].drop(columns=REPEAT), f"{source} (repeat {i})"
        if i > 0:
            got = sorted(set(pd.to_numeric(part["fold"], errors="coerce").tolist()))
            if got != list(range(i * k, (i + 1) * k)):
                raise CohortError(f"{where}: folds {_few(got)}; repeat {i} must hold global "
                                  f"folds {i * k}..{(i + 1) * k - 1} (repeat * k + fold, k = "
                                  f"{k} as in repeat 0)")
            part = part.assign(fold=pd.to_numeric(part["fold"]) - i * k)
        aligned = _align(part, cohort, where)
        k = k or int(aligned["fold"].max()) + 1
        parts.append(aligned.assign(fold=aligned["fold"] + i * k, repeat=i))
    return pd.concat(parts, ignore_index=True)


def n_repeats(splits: pd.DataFrame) -> int:
    """How many repetitions a split table holds (1 without a ``repeat`` column)."""
    return int(splits[REPEAT].max()) + 1 if REPEAT in splits.columns else 1


def folds_per_repeat(splits: pd.DataFrame) -> int:
    """k: the folds of one repetition (global ids run over repeats x k)."""
    return splits["fold"].nunique() // n_repeats(splits)


def _repeat_rows(splits: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The rows of the repetition that global fold ``fold`` belongs to."""
    if REPEAT not in splits.columns:
        return splits
    repeat = splits.loc[splits["fold"] == fold, REPEAT]
    return splits[splits[REPEAT] == int(repeat.iloc[0])] if len(repeat) else splits


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
    strata = pd.Series(_strata(cohort, task), index=cohort.case_ids)
    for f in sorted(int(g) for g in splits["fold"].unique()):
        train, val = fold_case_ids(splits, f)
        t.check_fold(f, strata.loc[train].to_numpy(), strata.loc[val].to_numpy(),
                     strata.to_numpy())


def fold_case_ids(splits: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(training case ids, validation case ids) of one (global) fold: the training part is the
    rest of the fold's own repetition."""
    folds = splits["fold"].to_numpy()
    if fold not in set(folds.tolist()):
        raise CohortError(f"fold {fold} not in the splits (folds {sorted(set(folds.tolist()))})")
    rows = _repeat_rows(splits, fold)
    val = rows["fold"].to_numpy() == fold
    ids = rows["case_id"].astype(str).to_numpy()
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
           "n_repeats", "folds_per_repeat", "repeat_seed", "REPEAT", "ExpressionScaler",
           "STD_FLOOR"]
