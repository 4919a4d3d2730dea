"""Baselines as runs of the study (role baseline, the record's metrics and predictions layout),
paired with the model on (seed, fold) in the analysis; the study keys `baselines:` and
`covariates:`; the study's params on the parent run; every trial param logged, defaults included.
Slow: a survival and a classification study through `python -m study.run` with their baselines
in MLflow and in the report's paired table."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from analysis import compare
from analysis.load import load_predictions
from analysis.load import load_study as load_mlflow_study
from ksmodel.baselines import run_baseline, table_expression
from ksmodel.config import ModelConfig, TrainConfig
from ksmodel.data import RunData, load_run_data
from study.baseline_runs import check_covariates, log_baseline, run_baselines
from study.parent import study_params, study_tags
from study.record import FIT_SECONDS, SEEDLESS, Roles, Status, Tags
from study.space import SpaceError, parse_study
from study.spec import TrialContext
from tests.analysis_fixtures import log_study
from tests.study_helpers import SMOKE, T, run_study, study_main, write_space

TASK = "diagnosis"


@pytest.fixture(scope="module")
def data(small_cohort: Path) -> RunData:
    return load_run_data(small_cohort, TASK, modalities=["genomics"], folds=3, split_seed=0)


def _cfg(tmp_path: Path, **raw: object):
    return parse_study({"name": "b", "task": TASK, "sampler": "grid", "folds": 3, **raw},
                       str(tmp_path / "s.yaml"), tmp_path)


CLS = ("logreg_clinical", "logreg_pca", "logregcv_table", "logregcv_genes",
       "logregcv_clinical_genes", "rf_clinical_genes")
SURV = ("cox_clinical", "cox_pca", "coxnet_table", "coxnet_genes", "coxnet_clinical_genes",
        "rsf_clinical_genes")


def test_baselines_default_to_the_task_kind_and_need_their_covariates(tmp_path) -> None:
    # no covariates: no baseline that reads clinical columns
    assert _cfg(tmp_path).baselines == ("logreg_pca", "logregcv_table", "logregcv_genes")
    assert _cfg(tmp_path, covariates=["age"]).baselines == CLS
    surv = parse_study({"name": "s", "task": "survival", "sampler": "grid",
                        "covariates": ["age", "is_female"]}, "s.yaml", tmp_path)
    assert surv.baselines == SURV
    assert surv.covariates == ("age", "is_female")
    assert _cfg(tmp_path, baselines=[]).baselines == ()
    assert surv.to_yaml_dict()["baselines"] == list(SURV)


@pytest.mark.parametrize(("raw", "message"), [
    ({"baselines": ["cox_pca"]}, "'baselines': cox_pca is a survival baseline but task "
                                 "diagnosis is classification"),
    ({"baselines": ["lasso"]}, "'baselines': unknown baseline 'lasso'"),
    ({"baselines": ["logreg_clinical"]}, "'covariates': baseline logreg_clinical needs"),
    ({"baselines": "logreg_pca"}, "'baselines': expected a list"),
    ({"covariates": "age"}, "'covariates': expected a list"),
    ({"covariates": ["age", "age"]}, "'covariates': age listed more than once"),
])
def test_bad_baseline_keys_name_the_key(raw, message, tmp_path) -> None:
    with pytest.raises(SpaceError, match=message):
        _cfg(tmp_path, **raw)


def test_covariates_are_checked_against_the_cohort(data, tmp_path) -> None:
    check_covariates(_cfg(tmp_path, covariates=["age", "is_female"]), data)
    with pytest.raises(ValueError, match="column 'smoker' is not in the clinical table"):
        check_covariates(_cfg(tmp_path, covariates=["age", "smoker"]), data)
    with pytest.raises(ValueError, match="diagnosis is the label of task diagnosis"):
        check_covariates(_cfg(tmp_path, covariates=["diagnosis"]), data)


def test_cli_refuses_an_unknown_covariate_before_ray_starts(tmp_path, capsys) -> None:
    import ray

    space = write_space(tmp_path / "s.yaml", covariates=["age", "smoker"])
    proc = study_main(capsys, "--space", str(space), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2 and not ray.is_initialized()
    assert "column 'smoker' is not in the clinical table" in proc.stderr
    assert str(space) in proc.stderr and "Traceback" not in proc.stderr
    assert "ray" not in proc.stdout.lower()  # nothing was started


def test_baselines_do_not_depend_on_the_seed(data) -> None:
    """Why a baseline is logged once per study (ks.seed = any) and paired with every seed."""
    for name in ("logreg_clinical", "logreg_pca"):
        a = run_baseline(name, data.cohort, data.splits, TASK, ["age", "is_female"], seed=0)
        b = run_baseline(name, data.cohort, data.splits, TASK, ["age", "is_female"], seed=7)
        for x, y in zip(a, b, strict=True):
            assert x.metrics == y.metrics
            pd.testing.assert_frame_equal(x.predictions, y.predictions)


def test_baseline_runs_are_paired_with_every_seed_of_the_model(data, tmp_path) -> None:
    """Baselines logged as runs of a study whose model ran seeds 0 and 1: the record's names,
    a trial's prediction layout, and the report's paired table on 2 seeds x 3 folds."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rng = np.random.default_rng(0)
    rows = [{"method": m, "seed": s, "folds": {f: float(rng.uniform(0.6, 0.9)) for f in range(3)}}
            for m in ("cgcoord", "uniform") for s in (0, 1)]
    parent = log_study(uri, "paired", rows, task=TASK, n_folds=3,
                       parent_tags={Tags.SAMPLER: "grid"})
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("paired").experiment_id
    cfg = _cfg(tmp_path, name="paired", covariates=["age", "is_female"], seeds=[0, 1],
               baselines=["logreg_clinical", "logreg_pca"])
    for name in cfg.baselines:
        assert log_baseline(client, exp, parent, cfg, data, name) == Status.COMPLETED
    study = load_mlflow_study("paired", uri)
    base = study.trials[study.trials["role"] == Roles.BASELINE]
    assert set(base["method"]) == {"logreg_clinical", "logreg_pca"}
    assert base["seedless"].all() and (base["status"] == Status.COMPLETED).all()
    run = client.get_run(base["run_id"].iloc[0])
    assert run.data.tags[Tags.SEED] == SEEDLESS and run.data.tags[Tags.FOLDS] == "0,1,2"
    assert {"final_auc", "fold_0/final_auc", "fold_2/final_f1"} <= set(run.data.metrics)
    expected = {r.fold: r.metrics["auc"]
                for r in run_baseline(run.data.tags[Tags.METHOD], data.cohort, data.splits,
                                      TASK, ["age", "is_female"])}
    assert {k: run.data.metrics[f"fold_{k}/final_auc"] for k in range(3)} == pytest.approx(
        expected)
    pred = load_predictions(study, run.info.run_id)
    assert list(pred.columns) == ["fold", "case_id", "label", "prob_0", "prob_1", "prob_2",
                                  "prob_3", "seed"]
    assert sorted(pred["case_id"]) == sorted(data.cohort.case_ids)  # each case once, validated
    # every seed of the model is paired with the (seed-independent) baseline
    rows_b = study.folds[study.folds["role"] == Roles.BASELINE]
    assert sorted(set(zip(rows_b["seed"], rows_b["fold"], strict=True))) == [
        (s, f) for s in (0, 1) for f in range(3)]
    r = compare.run_compare("paired", uri, tmp_path / "report", n_boot=200,
                            log_to_mlflow=False, progress=lambda _: None)
    comp = r.comparison.set_index("baseline")
    assert set(comp.index) == {"uniform", "logreg_clinical", "logreg_pca"}
    assert (comp["n_pairs"] == 6).all()
    md = (r.out_dir / "report.md").read_text()
    assert "**cgcoord vs logreg_pca**" in md and "| logreg_clinical |" in md


def test_a_tuned_baseline_run_says_its_inputs_tuning_and_cost(data, tmp_path) -> None:
    """What the report lists per baseline: its inputs and tuning in words (tags), its cost
    (fit_seconds, summed over folds) and the setting each fold chose (a param when equal on
    every fold, else fold_<k>/<setting>)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("tuned")
    parent = client.create_run(exp).info.run_id
    cfg = _cfg(tmp_path, name="tuned", baselines=["logregcv_table", "logreg_pca"])
    assert run_baselines(client, exp, parent, cfg, data) == {
        "logregcv_table": Status.COMPLETED, "logreg_pca": Status.COMPLETED}
    runs = {r.data.tags[Tags.METHOD]: r for r in client.search_runs([exp])
            if r.data.tags.get(Tags.ROLE) == Roles.BASELINE}
    genes = len(table_expression(data.cohort)[0].columns)
    tuned = runs["logregcv_table"]
    assert tuned.data.tags[Tags.BASELINE_INPUTS] == f"all {genes} expression genes of the table"
    assert tuned.data.tags[Tags.BASELINE_TUNING].startswith(
        "L2 penalty C by 5-fold inner CV (macro AUC) on the training part, grid 0.0001..100")
    m = tuned.data.metrics
    per_fold = [m[f"fold_{k}/{FIT_SECONDS}"] for k in data.folds]
    assert m[FIT_SECONDS] == pytest.approx(sum(per_fold), abs=0.01) and min(per_fold) > 0
    chosen = [m.get(f"fold_{k}/C") for k in data.folds]
    assert all(c is not None for c in chosen) or "C" in tuned.data.params
    fixed = runs["logreg_pca"].data.tags
    assert fixed[Tags.BASELINE_TUNING] == "not tuned: C fixed at 1, 10 components"
    assert fixed[Tags.BASELINE_INPUTS].startswith("the first 10 principal components of the ")


def test_parent_params_record_the_study_and_the_cohort(data, tmp_path) -> None:
    cfg = _cfg(tmp_path, covariates=["age"], seeds=[0, 1], epochs=7,
               fixed={"lam": 0.2}, search={"coordination": {"type": "categorical",
                                                            "values": ["cgcoord", "uniform"]}})
    params = study_params(cfg, data)
    for key, value in {"study.name": "b", "study.task": TASK, "study.metric": "auc",
                       "study.folds": "3", "study.seeds": "0,1", "study.epochs": "7",
                       "study.evaluation": "cv", "study.sampler": "grid",
                       "study.trials": "2", "study.scheduler.type": "asha",
                       "study.fixed.lam": "0.2", "study.covariates": "age",
                       "study.baselines": ",".join(CLS),
                       "study.search.coordination": "categorical cgcoord,uniform",
                       "cohort.n_cases": str(len(data.cohort.case_ids)),
                       "cohort.genes_tumour": str(len(data.cohort.gene_sets["tumour"])),
                       "cohort.genes_tme": str(len(data.cohort.gene_sets["tme"])),
                       "cohort.path": str(data.cohort.root)}.items():
        assert params[key] == value, key
    assert "study.num_samples" not in params  # a grid runs every combination
    table = pd.read_parquet(Path(data.cohort.root) / "expression.parquet") \
        if (Path(data.cohort.root) / "expression.parquet").is_file() \
        else pd.read_csv(Path(data.cohort.root) / "expression.csv")
    assert params["cohort.genes_table"] == str(len(table.columns) - 1)
    assert "study.inner_folds" not in params
    assert study_tags(cfg) == {Tags.EVALUATION: "cv"}


def test_trial_params_hold_every_default(data) -> None:
    ctx = TrialContext(task=TASK, epochs=3, folds=data.folds, seeds=(0,), fixed={},
                       cohort=data.cohort, splits=data.splits, bags=None, tracking_uri="",
                       experiment_id="", parent_run_id="")
    params = ctx.spec({"alpha": 0.3}).params
    assert params["alpha"] == 0.3
    assert params["lr"] == TrainConfig.lr and params["weight_decay"] == TrainConfig.weight_decay
    assert params["dropout"] == ModelConfig.dropout and params["tau_cos"] == 0.0
    assert params["patience"] == 0 and params["log1p"] is True


# --- slow: real studies ----------------------------------------------------------------------

def _study(tmp_path: Path, name: str, **changes: object) -> tuple[Path, pd.DataFrame]:
    space = write_space(tmp_path / f"{name}.yaml", name=name, **changes)
    out = tmp_path / name
    proc = run_study(out, space=space, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    return out, mlflow.search_runs(experiment_names=[name], max_results=1000)


def _check_record(out: Path, name: str, runs: pd.DataFrame, baselines: set[str],
                  tmp_path: Path) -> compare.Report:
    parent = runs[runs[T.ROLE] == Roles.STUDY].iloc[0]
    trials = runs[runs[T.ROLE] == Roles.TRIAL]
    base = runs[runs[T.ROLE] == Roles.BASELINE]
    assert set(base[T.METHOD]) == baselines and (base[T.STATUS] == Status.COMPLETED).all()
    assert (base["tags.mlflow.parentRunId"] == parent["run_id"]).all()
    # every effective trial parameter, defaults included (none of these is in the study file)
    raw = yaml.safe_load((out / "config.yaml").read_text())
    defaults = {"lr": TrainConfig.lr, "weight_decay": TrainConfig.weight_decay,
                "dropout": ModelConfig.dropout, "tau_cos": 0.0, "patience": 0, "log1p": True}
    for key, value in defaults.items():
        if key in raw["fixed"] or key in raw["search"]:
            continue
        rows = trials  # tau_cos is CG-Coord's own hyper-parameter: only its trials have it
        if key == "tau_cos":
            rows = trials[trials["params.coordination"] == "cgcoord"]
            assert len(rows)
        assert (rows[f"params.{key}"] == str(value)).all(), key
    # the study on its parent run
    assert parent[f"tags.{Tags.EVALUATION}"] == "cv"
    for key in ("study.name", "study.task", "study.metric", "study.folds", "study.seeds",
                "study.epochs", "study.evaluation", "study.sampler",
                "study.trials" if parent["params.study.sampler"] == "grid" else "study.num_samples",
                "study.scheduler.type", "cohort.n_cases", "cohort.genes_tumour",
                "cohort.genes_tme", "cohort.genes_table", "cohort.path"):
        assert pd.notna(parent.get(f"params.{key}")), key
    assert parent["params.study.name"] == name
    r = compare.run_compare(name, f"sqlite:///{out / 'mlflow.db'}", tmp_path / f"{name}-report",
                            n_boot=500, progress=lambda _: None)
    assert set(r.comparison["baseline"]) >= baselines
    md = (r.out_dir / "report.md").read_text()
    paired = md[md.index("## Paired comparison"):]
    for b in baselines:
        assert f"| {b} |" in paired and f"vs {b}**" in md
    logged = {f.path for f in MlflowClient(f"sqlite:///{out / 'mlflow.db'}").list_artifacts(
        parent["run_id"], "report")}
    assert "report/report.md" in logged
    return r


@pytest.mark.slow
def test_survival_study_logs_and_pairs_its_baselines(tmp_path) -> None:
    """A grid (one trial per method): every survival baseline on the same folds, each paired
    with every trial method on (seed, fold)."""
    fixed = {k: v for k, v in yaml.safe_load(SMOKE.read_text())["fixed"].items()
             if k != "coordination"}
    out, runs = _study(tmp_path, "surv", task="survival", covariates=["age", "is_female"],
                       sampler="grid", num_samples=None, scheduler="none", epochs=2, fixed=fixed,
                       search={"coordination": {"type": "categorical",
                                                "values": ["cgcoord", "uniform"]}})
    trials = runs[runs[T.ROLE] == Roles.TRIAL]
    assert (trials["params.lr"] == str(TrainConfig.lr)).all()  # a default, logged
    r = _check_record(out, "surv", runs, set(SURV), tmp_path)
    comp = r.comparison[r.comparison["method"] == "cgcoord"].set_index("baseline")
    assert (comp["n_pairs"] == 2).all() and np.isfinite(comp["mean_baseline"]).all()
    assert "every completed trial" in (r.out_dir / "report.md").read_text()


@pytest.mark.slow
def test_classification_search_pairs_its_best_trial_with_the_baselines(tmp_path) -> None:
    """A search: the best trial stands for the model, and the report says it is optimistic."""
    out, runs = _study(tmp_path, "cls", covariates=["age", "is_female"], num_samples=3,
                       scheduler="none", epochs=2)
    r = _check_record(out, "cls", runs, set(CLS), tmp_path)
    assert set(r.comparison["baseline"]) == set(CLS)
    md = (r.out_dir / "report.md").read_text()
    assert "best-of-search trial's" in md and "`evaluation: nested`" in md
