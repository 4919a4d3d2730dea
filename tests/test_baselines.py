"""Baselines on the model's folds: same metrics as a hand-made fit, no validation leakage, the
model's prediction-table layout, covariate errors/encoding, and the planted signal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from lifelines.utils import concordance_index
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

import ksmodel.baselines as bl
from ksmodel.baselines import (
    BASELINES,
    CovariateEncoder,
    ExpressionPCA,
    baselines_for,
    fit_fold,
    run_baseline,
)
from ksmodel.cohort import Cohort, load_cohort
from ksmodel.config import ConfigError, TrainConfig
from ksmodel.splits import fold_case_ids, make_splits
from ksmodel.synthetic import generate
from ksmodel.train import FoldTrainer, build_model_config, prepare_fold

TASK_OF = {"survival": "survival", "classification": "diagnosis"}
COVARIATES = ["age", "idh_mutant"]


@pytest.fixture(scope="module")
def cohort(small_cohort: Path) -> Cohort:
    return load_cohort(small_cohort)


def _splits(cohort: Cohort, task: str) -> pd.DataFrame:
    return make_splits(cohort, task, k=3, seed=0)


def _genes(cohort: Cohort) -> list[str]:
    return cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]


def test_registry() -> None:
    assert baselines_for("survival") == ["cox_clinical", "cox_pca"]
    assert baselines_for("classification") == ["logreg_clinical", "logreg_pca"]
    assert {n for n, b in BASELINES.items() if b.needs_covariates} == {"cox_clinical",
                                                                      "logreg_clinical"}
    assert all(b.name == n and b.description for n, b in BASELINES.items())
    with pytest.raises(ConfigError, match="regression"):
        baselines_for("regression")


def test_cox_clinical_equals_a_direct_lifelines_fit(cohort: Cohort) -> None:
    splits = _splits(cohort, "survival")
    train, val = fold_case_ids(splits, 1)
    res = fit_fold("cox_clinical", cohort, splits, 1, "survival", COVARIATES)

    cases = cohort.cases
    age = cases["age"].astype(float)
    mean, sd = age.loc[train].mean(), age.loc[train].std(ddof=0)
    x = pd.DataFrame({"age": (age - mean) / sd, "idh_mutant": cases["idh_mutant"].astype(float)})
    df = x.loc[train].assign(t=cases.loc[train, "survival_days"], e=cases.loc[train, "event"])
    cph = CoxPHFitter().fit(df, "t", "e")
    risk = cph.predict_partial_hazard(x.loc[val]).to_numpy()
    t, e = cases.loc[val, "survival_days"].to_numpy(), cases.loc[val, "event"].to_numpy()
    assert res.metrics == {"cindex": concordance_index(t, -risk, e)}
    assert res.metrics["cindex"] > 0.5
    np.testing.assert_allclose(res.predictions["risk"], risk, rtol=1e-9)
    assert res.predictions["case_id"].tolist() == val
    assert res.features == ("age", "idh_mutant") and res.params["penalizer"] == 0.0


def test_logreg_pca_equals_a_direct_sklearn_fit(cohort: Cohort) -> None:
    splits = _splits(cohort, "diagnosis")
    train, val = fold_case_ids(splits, 0)
    res = fit_fold("logreg_pca", cohort, splits, 0, "diagnosis", n_components=5, seed=3)

    x = np.log1p(cohort.expression[_genes(cohort)].to_numpy(np.float64))
    tr, va = (cohort.cases.index.get_indexer(ids) for ids in (train, val))
    z = (x - x[tr].mean(0)) / x[tr].std(0)
    pca = PCA(5, svd_solver="full").fit(z[tr])
    scaler = StandardScaler().fit(pca.transform(z[tr]))
    y = cohort.cases["diagnosis"].to_numpy()
    model = LogisticRegression(class_weight="balanced", max_iter=10_000).fit(
        scaler.transform(pca.transform(z[tr])), y[tr])
    prob = model.predict_proba(scaler.transform(pca.transform(z[va])))
    assert set(y[va]) == {0, 1, 2, 3}  # so sklearn's macro OvR AUC is defined
    auc = roc_auc_score(y[va], prob, multi_class="ovr", average="macro")
    assert res.metrics["auc"] == pytest.approx(auc, abs=1e-12)
    assert res.metrics["accuracy"] == pytest.approx(np.mean(prob.argmax(1) == y[va]), abs=1e-12)
    np.testing.assert_allclose(res.predictions[[f"prob_{c}" for c in range(4)]], prob,
                               atol=1e-8)
    assert res.features == tuple(f"PC{i}" for i in range(1, 6))
    assert res.params["n_components_used"] == 5


@pytest.mark.parametrize("task", ["diagnosis", "survival"])
def test_prediction_table_has_the_models_layout(cohort: Cohort, task: str) -> None:
    """Same columns, case order and dtypes kind as FoldTrainer.evaluate on the same fold."""
    splits = _splits(cohort, task)
    model_cfg = build_model_config(cohort, task, modality="genomics", dim=8, gene_hidden=8,
                                   heads=2, head_dim=4, offset_groups=2)
    trainer = FoldTrainer(prepare_fold(cohort, None, splits, 2, task), model_cfg,
                          TrainConfig(task=task, epochs=1))
    metrics, table = trainer.evaluate()
    for name in baselines_for("survival" if task == "survival" else "classification"):
        res = fit_fold(name, cohort, splits, 2, task, COVARIATES)
        assert list(res.predictions.columns) == list(table.columns), name
        assert res.predictions["case_id"].tolist() == table["case_id"].tolist()
        assert set(res.metrics) == set(metrics)
        for column in table.columns:
            assert res.predictions[column].dtype.kind == table[column].dtype.kind or (
                {res.predictions[column].dtype.kind, table[column].dtype.kind} == {"f"}), column
        assert (res.predictions["fold"] == 2).all()
        if task == "diagnosis":
            prob = res.predictions[[f"prob_{c}" for c in range(4)]].to_numpy()
            np.testing.assert_allclose(prob.sum(1), 1.0)
            assert (res.predictions["label"] == table["label"]).all()


def _perturbed(cohort: Cohort, ids: list[str]) -> Cohort:
    """Expression, covariates and labels of ``ids`` changed beyond recognition."""
    cases, expr = cohort.cases.copy(), cohort.expression.copy()
    expr.loc[ids] = expr.loc[ids].to_numpy()[::-1] * 50.0 + 7.0
    cases.loc[ids, "age"] = 90 - cases.loc[ids, "age"] + 18
    cases.loc[ids, "idh_mutant"] = 1 - cases.loc[ids, "idh_mutant"]
    cases.loc[ids, "diagnosis"] = (cases.loc[ids, "diagnosis"] + 1) % 4
    cases.loc[ids, "survival_days"] = cases.loc[ids, "survival_days"].to_numpy()[::-1] * 3.0
    cases.loc[ids, "event"] = 1
    return dataclasses.replace(cohort, cases=cases, expression=expr)


@pytest.mark.parametrize("name", list(BASELINES))
def test_no_validation_row_enters_a_fit(cohort: Cohort, name: str) -> None:
    """Change everything about half the validation cases: the other half's predictions do not
    move (the fit saw no validation row); the same change to training cases does move them."""
    kind = BASELINES[name].kind
    task = TASK_OF[kind]
    splits = _splits(cohort, task)
    train, val = fold_case_ids(splits, 0)
    kept, changed = val[::2], val[1::2]
    out = "risk" if kind == "survival" else ["prob_0", "prob_1", "prob_2", "prob_3"]

    def predictions(c: Cohort) -> np.ndarray:
        res = fit_fold(name, c, splits, 0, task, COVARIATES)
        return res.predictions.set_index("case_id").loc[kept, out].to_numpy()

    base = predictions(cohort)
    np.testing.assert_array_equal(predictions(_perturbed(cohort, changed)), base)
    assert not np.allclose(predictions(_perturbed(cohort, train[::3])), base)


def test_fitted_statistics_come_from_the_given_rows_only(cohort: Cohort) -> None:
    splits = _splits(cohort, "survival")
    train, _ = fold_case_ids(splits, 0)
    genes = _genes(cohort)
    pcs = ExpressionPCA.fit(cohort.expression.loc[train, genes], n_components=4)
    x = np.log1p(cohort.expression.loc[train, genes].to_numpy(np.float64))
    np.testing.assert_allclose(pcs.scaler.mean, x.mean(0))
    np.testing.assert_allclose(pcs.pca.mean_, 0.0, atol=1e-6)  # centred on the training rows
    enc = CovariateEncoder.fit(cohort.cases.loc[train], ["age", "is_female"])
    assert enc.center["age"] == pytest.approx(cohort.cases.loc[train, "age"].mean())
    assert enc.kinds == {"age": "numeric", "is_female": "binary"}
    # k is capped by the training rows
    assert ExpressionPCA.fit(cohort.expression.loc[train[:6], genes], 10).features == tuple(
        f"PC{i}" for i in range(1, 6))


def test_covariate_errors_name_the_column_before_any_fit(cohort: Cohort,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def no_fit(*args: object, **kwargs: object) -> None:
        raise AssertionError("a fold was fit before the covariates were checked")

    monkeypatch.setattr(bl, "_fit_fold", no_fit)
    splits = _splits(cohort, "survival")
    with pytest.raises(ConfigError, match=r"'agee' is not in the clinical table.*available "
                                          r"clinical columns: .*\bage\b") as info:
        run_baseline("cox_clinical", cohort, splits, "survival", ["age", "agee"])
    assert "idh_mutant" in str(info.value)
    empty = dataclasses.replace(cohort, cases=cohort.cases.assign(kps=np.nan))
    with pytest.raises(ConfigError, match="'kps' has no value"):
        run_baseline("cox_clinical", empty, splits, "survival", ["age", "kps"])
    with pytest.raises(ConfigError, match="event is the label of task survival"):
        run_baseline("cox_clinical", cohort, splits, "survival", ["age", "event"])
    with pytest.raises(ConfigError, match="needs clinical covariates"):
        fit_fold("logreg_clinical", cohort, _splits(cohort, "diagnosis"), 0, "diagnosis")
    with pytest.raises(ConfigError, match="listed more than once"):
        run_baseline("cox_clinical", cohort, splits, "survival", ["age", "age"])
    with pytest.raises(ConfigError, match="must be a list"):
        run_baseline("cox_clinical", cohort, splits, "survival", "age")
    with pytest.raises(ConfigError, match="survival baseline but task diagnosis"):
        run_baseline("cox_pca", cohort, splits, "diagnosis")
    with pytest.raises(ConfigError, match="unknown baseline 'cox'"):
        run_baseline("cox", cohort, splits, "survival")


def test_covariate_encoding() -> None:
    train = pd.DataFrame({
        "age": [30.0, np.nan, 40.0, 80.0],
        "site": ["b", "a", None, "b"],
        "smoker": pd.array([True, False, pd.NA, True], dtype="boolean"),
        "centre": [1, 1, 1, 1],
    })
    enc = CovariateEncoder.fit(train, ["age", "site", "smoker", "centre"])
    assert enc.covariates == ("age", "site", "smoker")
    assert enc.notes == ("covariate centre: constant (1.0) in the training part; dropped",)
    assert enc.fill == {"age": 40.0, "site": "b", "smoker": 1.0}  # median, modes
    assert enc.features == ("age", "site=b", "smoker")
    filled = np.array([30.0, 40.0, 40.0, 80.0])
    assert enc.center["age"] == filled.mean() and enc.scale["age"] == filled.std()
    val = pd.DataFrame({"age": [np.nan, 90.0], "site": ["c", "a"],
                        "smoker": pd.array([pd.NA, False], dtype="boolean"), "centre": [2, 2]})
    z = (np.array([40.0, 90.0]) - filled.mean()) / filled.std()  # NaN -> training median
    expected = [[z[0], 1.0, 1.0], [z[1], 0.0, 0.0]]  # c unseen -> mode b; NA smoker -> 1
    np.testing.assert_allclose(enc.transform(val), expected)
    assert enc.unseen(val) == ["covariate site: categor(ies) c not in the training part; "
                               "treated as missing (b)"]


def _centre_constant_in_training(cohort: Cohort, splits: pd.DataFrame) -> Cohort:
    train, _ = fold_case_ids(splits, 0)
    cases = cohort.cases.assign(centre="A")
    cases.loc[~cases.index.isin(train), "centre"] = "B"  # one centre in fold 0's training part
    return dataclasses.replace(cohort, cases=cases)


def test_constant_covariate_in_a_fold_does_not_crash(cohort: Cohort) -> None:
    splits = _splits(cohort, "survival")
    res = fit_fold("cox_clinical", _centre_constant_in_training(cohort, splits), splits, 0,
                   "survival", ["age", "centre"])
    assert res.features == ("age",)
    assert res.notes == ("covariate centre: constant (A) in the training part; dropped",)
    assert res.metrics["cindex"] == fit_fold("cox_clinical", cohort, splits, 0, "survival",
                                             ["age"]).metrics["cindex"]
    splits = _splits(cohort, "diagnosis")
    only = fit_fold("logreg_clinical", _centre_constant_in_training(cohort, splits), splits, 0,
                    "diagnosis", ["centre"])
    assert only.features == () and only.metrics["auc"] == 0.5  # constant prediction, noted
    assert any("constant prediction" in n for n in only.notes)


@pytest.fixture(scope="module")
def default_tables(tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    """The default cohort's tables (400 patients, seed 0); tiny bags keep it fast."""
    path = generate(tmp_path_factory.mktemp("default") / "c", patients=400, patches=(2, 3),
                    dim=2, seed=0, quiet=True)
    return load_cohort(path)


@pytest.mark.parametrize(("name", "task", "covariates", "low"), [
    ("cox_clinical", "survival", ["age", "idh_mutant"], 0.65),
    ("cox_pca", "survival", [], 0.70),
    ("logreg_clinical", "diagnosis", ["age", "idh_mutant"], 0.80),
    ("logreg_pca", "diagnosis", [], 0.90),
])
def test_known_answer_on_the_synthetic_cohort(default_tables: Cohort, name: str, task: str,
                                              covariates: list[str], low: float) -> None:
    """IDH status and age carry the diagnosis' prognosis; the tumour genes carry the diagnosis.
    Measured (5 folds, seed 0): cox_clinical 0.733, cox_pca 0.785, logreg_clinical 0.869,
    logreg_pca 0.967."""
    splits = make_splits(default_tables, task, k=5, seed=0)
    results = run_baseline(name, default_tables, splits, task, covariates)
    metric = "cindex" if task == "survival" else "auc"
    values = [r.metrics[metric] for r in results]
    assert [r.fold for r in results] == [0, 1, 2, 3, 4]
    assert np.mean(values) > low and min(values) > 0.6, values
    table = pd.concat([r.predictions for r in results])
    assert sorted(table["case_id"]) == default_tables.case_ids  # every case scored once
