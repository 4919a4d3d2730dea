"""Patient-level folds, their files and fold-wise normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ksmodel.cohort import Cohort, CohortError, load_cohort
from ksmodel.splits import (
    ExpressionScaler,
    check_folds,
    fold_case_ids,
    load_splits,
    make_splits,
    save_splits,
)


@pytest.fixture(scope="module")
def cohort(small_cohort: Path) -> Cohort:
    return load_cohort(small_cohort)


@pytest.mark.parametrize("task", ["diagnosis", "grade", "survival"])
def test_folds_are_patient_level_and_stratified(cohort: Cohort, task: str) -> None:
    splits = make_splits(cohort, task, k=5, seed=0)
    assert list(splits.columns) == ["case_id", "fold"]
    assert splits["case_id"].tolist() == cohort.case_ids
    assert sorted(set(splits["fold"])) == [0, 1, 2, 3, 4]
    targets = cohort.targets(task)
    strata = targets["event"] if task == "survival" else targets["label"]
    for fold in range(5):
        train, val = fold_case_ids(splits, fold)
        assert not set(train) & set(val)
        assert sorted(train + val) == cohort.case_ids
        in_val = np.isin(cohort.case_ids, val)
        for value in np.unique(strata):
            expected = (strata == value).sum() / 5
            assert abs((strata[in_val] == value).sum() - expected) <= 1
    check_folds(cohort, splits, task)


def test_same_seed_same_folds(cohort: Cohort) -> None:
    a = make_splits(cohort, "diagnosis", seed=3)
    pd.testing.assert_frame_equal(a, make_splits(cohort, "diagnosis", seed=3))
    assert not a.equals(make_splits(cohort, "diagnosis", seed=4))


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_save_load_roundtrip(cohort: Cohort, tmp_path: Path, suffix: str) -> None:
    splits = make_splits(cohort, "survival", k=3, seed=1)
    path = save_splits(splits, tmp_path / "study" / f"splits{suffix}")
    loaded = load_splits(path, cohort)
    pd.testing.assert_frame_equal(loaded, splits)
    assert loaded["fold"].dtype == np.int64


def test_load_splits_rejects_mismatches(cohort: Cohort, tmp_path: Path) -> None:
    splits = make_splits(cohort, "diagnosis")
    path = tmp_path / "s.csv"
    save_splits(pd.concat([splits, pd.DataFrame({"case_id": ["GHOST-1"], "fold": [0]})]), path)
    with pytest.raises(CohortError, match="GHOST-1"):
        load_splits(path, cohort)
    save_splits(splits.iloc[1:], path)
    with pytest.raises(CohortError, match=cohort.case_ids[0]):
        load_splits(path, cohort)
    bad = splits.copy()
    bad["fold"] = bad["fold"].astype(object)
    bad.loc[2, "fold"] = "x"
    save_splits(bad, path)
    with pytest.raises(CohortError, match=f"{cohort.case_ids[2]}.*'x'"):
        load_splits(path, cohort)
    with pytest.raises(CohortError, match="not found"):
        load_splits(tmp_path / "none.parquet", cohort)


def test_survival_fold_without_events_is_rejected(cohort: Cohort) -> None:
    event = cohort.targets("survival")["event"]
    fold = np.where(event == 1, np.arange(len(event)) % 2, 2)  # fold 2: censored cases only
    splits = pd.DataFrame({"case_id": cohort.case_ids, "fold": fold})
    with pytest.raises(CohortError, match="fold 2.*no events"):
        check_folds(cohort, splits, "survival")


def test_class_missing_from_training_is_rejected(cohort: Cohort) -> None:
    label = cohort.targets("diagnosis")["label"]
    fold = np.where(label == 1, 0, 1 + np.arange(len(label)) % 2)
    splits = pd.DataFrame({"case_id": cohort.case_ids, "fold": fold})
    with pytest.raises(CohortError, match=r"fold 0: diagnosis class\(es\) 1 missing from the "
                                          r"training"):
        check_folds(cohort, splits, "diagnosis")


def test_too_few_cases_for_k(cohort: Cohort) -> None:
    with pytest.raises(CohortError, match="diagnosis class 1"):
        make_splits(cohort, "diagnosis", k=int(np.bincount(
            cohort.targets("diagnosis")["label"]).min()) + 1)


def test_scaler_uses_training_rows_only(cohort: Cohort) -> None:
    splits = make_splits(cohort, "diagnosis")
    train, val = fold_case_ids(splits, 0)
    expr = cohort.expression
    scaler = ExpressionScaler.fit(expr.loc[train], log1p=True)
    changed = expr.copy()
    changed.loc[val] = changed.loc[val] * 50 + 3  # validation rows change ...
    again = ExpressionScaler.fit(changed.loc[train], log1p=True)
    np.testing.assert_array_equal(scaler.mean, again.mean)  # ... statistics do not
    np.testing.assert_array_equal(scaler.std, again.std)
    z = scaler.transform(expr.loc[train])
    assert z.dtype == np.float32 and z.shape == (len(train), expr.shape[1])
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-3)
    np.testing.assert_allclose(scaler.mean, np.log1p(expr.loc[train].to_numpy()).mean(axis=0))
    full = ExpressionScaler.fit(expr, log1p=True)  # using all rows would give other statistics
    assert not np.allclose(full.mean, scaler.mean)


def test_scaler_edge_cases() -> None:
    expr = pd.DataFrame({"a": [1.0, 1.0, 1.0], "b": [0.0, 2.0, 4.0]})
    scaler = ExpressionScaler.fit(expr, log1p=False)
    z = scaler.transform(pd.DataFrame({"b": [2.0], "a": [3.0]}))  # columns by name
    np.testing.assert_allclose(z, [[2.0, 0.0]])  # constant gene: centred, not divided by ~0
    assert np.isfinite(z).all()
    with pytest.raises(CohortError, match="log1p=False"):
        ExpressionScaler.fit(pd.DataFrame({"g": [-2.0, 1.0]}), log1p=True)
    with pytest.raises(CohortError, match=r"gene\(s\) a missing"):
        scaler.transform(pd.DataFrame({"b": [1.0]}))
