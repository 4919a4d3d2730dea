"""Repeated cross-validation: r split seeds x k folds with global fold ids repeat * k + fold, the
same folds for every arm and baseline, the study keys `repeats` and `rope`, and the refusals
(published folds, nested evaluation). Slow: a smoke study with repeats: 2 through
`python -m study.run`."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from ksmodel.baselines import run_baseline
from ksmodel.cohort import Cohort, CohortError, load_cohort
from ksmodel.data import load_run_data
from ksmodel.splits import (
    check_folds,
    fold_case_ids,
    folds_per_repeat,
    load_splits,
    make_splits,
    n_repeats,
    repeat_seed,
    save_splits,
)
from study.baseline_runs import log_baseline
from study.parent import study_params
from study.record import Roles, Status, Tags
from study.space import SpaceError, parse_study
from tests.analysis_fixtures import log_study
from tests.study_helpers import T, run_study, write_space

K, R = 5, 3


@pytest.fixture(scope="module")
def cohort(small_cohort: Path) -> Cohort:
    return load_cohort(small_cohort)


@pytest.fixture(scope="module")
def repeated(cohort: Cohort) -> pd.DataFrame:
    return make_splits(cohort, "diagnosis", k=K, seed=0, repeats=R)


def test_repeats_are_r_partitions_with_global_fold_ids(cohort, repeated) -> None:
    assert list(repeated.columns) == ["case_id", "fold", "repeat"]
    assert sorted(set(repeated["fold"])) == list(range(R * K))
    assert n_repeats(repeated) == R and folds_per_repeat(repeated) == K
    for r in range(R):
        part = repeated[repeated["repeat"] == r]
        assert part["case_id"].tolist() == cohort.case_ids  # every case once per repeat
        assert sorted(set(part["fold"])) == list(range(r * K, (r + 1) * K))
    # repeat 0 is the plain k-fold of split_seed; the others are different partitions
    single = make_splits(cohort, "diagnosis", k=K, seed=0)
    np.testing.assert_array_equal(repeated[repeated["repeat"] == 0]["fold"], single["fold"])
    assert list(single.columns) == ["case_id", "fold"]  # no repeat column for r = 1
    f0, f1 = (repeated[repeated["repeat"] == r]["fold"].to_numpy() % K for r in (0, 1))
    assert (f0 != f1).mean() > 0.5
    assert repeat_seed(0, 0) == 0 and len({repeat_seed(0, r) for r in range(R)}) == R
    pd.testing.assert_frame_equal(repeated, make_splits(cohort, "diagnosis", k=K, seed=0,
                                                        repeats=R))


def test_no_patient_in_the_training_and_validation_part_of_a_global_fold(cohort,
                                                                         repeated) -> None:
    label = pd.Series(cohort.targets("diagnosis")["label"], index=cohort.case_ids)
    for g in range(R * K):
        train, val = fold_case_ids(repeated, g)
        assert not set(train) & set(val)
        assert sorted(train + val) == cohort.case_ids  # the rest of g's own repeat
        same = repeated[(repeated["repeat"] == g // K) & (repeated["fold"] != g)]
        assert sorted(train) == sorted(same["case_id"])
        # stratified within its repeat: each class's validation count is within 1 of its share
        counts = label.loc[val].value_counts()
        for c, n in label.value_counts().items():
            assert abs(counts.get(c, 0) - n / K) <= 1
    check_folds(cohort, repeated, "diagnosis")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_repeated_split_file_round_trips(cohort, repeated, tmp_path, suffix) -> None:
    path = save_splits(repeated, tmp_path / f"splits{suffix}")
    pd.testing.assert_frame_equal(load_splits(path, cohort), repeated)


def test_a_split_file_without_repeats_loads_as_before(cohort, tmp_path) -> None:
    legacy = make_splits(cohort, "diagnosis", k=K, seed=0)
    legacy.to_parquet(tmp_path / "old.parquet", index=False)  # as files were written before
    loaded = load_splits(tmp_path / "old.parquet", cohort)
    pd.testing.assert_frame_equal(loaded, legacy)
    assert n_repeats(loaded) == 1 and folds_per_repeat(loaded) == K


def test_bad_repeated_split_files_name_the_repeat(cohort, repeated, tmp_path) -> None:
    path = tmp_path / "s.csv"
    local = repeated.assign(fold=repeated["fold"] % K)  # per-repeat ids, not global ones
    save_splits(local, path)
    with pytest.raises(CohortError, match=r"repeat 1\): folds 0.*global folds 5..9"):
        load_splits(path, cohort)
    save_splits(repeated.drop(index=repeated.index[len(cohort.case_ids) + 5]), path)  # repeat 1
    with pytest.raises(CohortError, match=r"repeat 1\): 1 cohort case\(s\) have no fold"):
        load_splits(path, cohort)
    skipped = repeated[repeated["repeat"] != 1]
    save_splits(skipped, path)
    with pytest.raises(CohortError, match=r"repeats must be numbered 0..r-1; found \[0, 2\]"):
        load_splits(path, cohort)


def test_run_data_makes_repeats_and_refuses_them_on_published_folds(small_cohort,
                                                                    tmp_path) -> None:
    data = load_run_data(small_cohort, "diagnosis", modalities=["genomics"], folds=K,
                         repeats=2)
    assert data.folds == list(range(2 * K)) and data.k == K and data.repeats == 2
    assert "2 repeats" in data.splits_source
    published = Path(shutil.copytree(small_cohort, tmp_path / "cohort"))
    save_splits(make_splits(load_cohort(published), "diagnosis", k=K), published /
                "splits.parquet")
    assert load_run_data(published, "diagnosis", modalities=["genomics"]).repeats == 1
    with pytest.raises(CohortError, match=r"publishes its own folds.*repeats: 2.*seeds"):
        load_run_data(published, "diagnosis", modalities=["genomics"], repeats=2)


def test_baselines_run_on_every_global_fold(small_cohort, tmp_path) -> None:
    """A baseline iterates over the study's folds: with repeats, all r x k global folds, each
    fitted on the rest of its own repeat and logged as fold_<g>/... in its run."""
    data = load_run_data(small_cohort, "diagnosis", modalities=["genomics"], folds=3, repeats=2)
    results = run_baseline("logreg_pca", data.cohort, data.splits, "diagnosis")
    assert [r.fold for r in results] == list(range(6))
    for r in results:
        assert sorted(r.predictions["case_id"]) == sorted(fold_case_ids(data.splits, r.fold)[1])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = log_study(uri, "rep", [{"method": "uniform", "seed": 0,
                                     "folds": {f: 0.8 for f in range(6)}}],
                       task="diagnosis", n_folds=6)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("rep").experiment_id
    cfg = parse_study({"name": "rep", "task": "diagnosis", "sampler": "grid", "folds": 3,
                       "repeats": 2}, str(tmp_path / "s.yaml"), tmp_path)
    assert log_baseline(client, exp, parent, cfg, data, "logreg_pca") == Status.COMPLETED
    run = next(r for r in client.search_runs([exp])
               if r.data.tags.get(Tags.ROLE) == Roles.BASELINE)
    assert run.data.tags[Tags.FOLDS] == "0,1,2,3,4,5"
    assert [run.data.metrics[f"fold_{g}/final_auc"] for g in range(6)] == pytest.approx(
        [r.metrics["auc"] for r in results])
    params = study_params(cfg, data)  # the parent's: k and r, as the analysis reads them
    assert params["study.folds"] == "3" and params["study.repeats"] == "2"
    assert "study.rope" not in params


def test_study_keys_repeats_and_rope(tmp_path) -> None:
    def cfg(**raw: object):
        return parse_study({"name": "r", "task": "diagnosis", "sampler": "grid", **raw},
                           str(tmp_path / "s.yaml"), tmp_path)

    assert cfg().repeats == 1 and cfg().rope is None
    c = cfg(repeats=3, rope=0.02)
    assert (c.repeats, c.rope) == (3, 0.02)
    assert c.to_yaml_dict()["repeats"] == 3 and c.to_yaml_dict()["rope"] == 0.02
    assert "rope" not in cfg().to_yaml_dict()
    for raw, message in (({"repeats": 0}, "'repeats': must be >= 1"),
                         ({"repeats": 2.0}, "'repeats': expected int"),
                         ({"rope": 0}, r"'rope': must be in \(0, 1\)"),
                         ({"rope": "small"}, "'rope': expected float"),
                         ({"repeats": 2, "evaluation": "nested"},
                          "'repeats': nested evaluation runs one search per outer fold"),
                         ({"synthetic": {"scenario": "nul"}},
                          "'synthetic'.*scenario.*histology_needed, null, imbalance")):
        with pytest.raises(SpaceError, match=message):
            cfg(**raw)
    assert cfg(synthetic={"scenario": "null"}).synthetic.scenario == "null"
    assert cfg(synthetic={"scenario": None}).synthetic.scenario == "null"  # YAML's bare null


@pytest.mark.slow
def test_a_study_with_repeats_trains_every_arm_on_every_global_fold(tmp_path) -> None:
    """smoke.yaml (2 folds) with repeats: 2: the study's split file holds both partitions, every
    trial and the baseline report the 4 global folds on the same cases, and the parent records
    k = 2, r = 2."""
    space = write_space(tmp_path / "rep.yaml", name="rep", repeats=2, num_samples=2,
                        scheduler="none", epochs=2)
    out = tmp_path / "study"
    assert run_study(out, space=space).returncode == 0
    splits = pd.read_parquet(out / "splits.parquet")
    assert list(splits.columns) == ["case_id", "fold", "repeat"]
    assert sorted(set(splits["fold"])) == [0, 1, 2, 3]
    assert (splits.groupby("repeat")["case_id"].nunique() == splits["case_id"].nunique()).all()
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["rep"])
    parent = runs[runs["tags.mlflow.parentRunId"].isna()].iloc[0]
    assert parent["params.study.folds"] == "2" and parent["params.study.repeats"] == "2"
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert set(children[T.ROLE]) == {Roles.TRIAL, Roles.BASELINE}
    assert (children[T.FOLDS] == "0,1,2,3").all()  # every arm on the same global folds
    client = MlflowClient()
    cases = None
    for run_id in children["run_id"]:
        for g in range(4):
            assert f"metrics.fold_{g}/final_auc" in children.columns
            assert np.isfinite(children.set_index("run_id").loc[run_id,
                                                                 f"metrics.fold_{g}/final_auc"])
        path = client.download_artifacts(run_id, "predictions.parquet", str(tmp_path / run_id))
        pred = pd.read_parquet(path)
        these = sorted(zip(pred["fold"], pred["case_id"], strict=True))
        cases = cases or these
        assert these == cases  # identical (global fold, case) pairs for every arm
    want = sorted(zip(splits["fold"], splits["case_id"], strict=True))
    assert cases == want
