"""Nested evaluation: inner folds that never hold an outer fold's rows (on the saved splits and on
what the inner trials train on), the study keys, the refit rule, the nested estimate in the
report, and (slow) a whole nested study through `python -m study.run`."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from analysis import compare
from analysis.load import Study, load_predictions
from analysis.load import load_study as load_mlflow_study
from ksmodel.data import RunData, load_run_data
from ksmodel.errors import CohortError
from ksmodel.splits import fold_case_ids
from ksmodel.train import prepare_fold
from study.folder import StudyError
from study.nested import (
    Choice,
    check_inner_splits,
    inner_for,
    make_inner_splits,
    outer_sampler_seed,
    prepare_inner_splits,
    refit_plan,
)
from study.record import Roles, Tags, fold_metric, inner_metric, val_metric
from study.space import SpaceError, load_study, parse_study
from tests.analysis_fixtures import log_study
from tests.study_helpers import ROOT, T, run_study, unexpected_stderr, write_space

NESTED_SMOKE = ROOT / "search_spaces" / "nested_smoke.yaml"
TASK = "diagnosis"


@pytest.fixture(scope="module")
def data(small_cohort: Path) -> RunData:
    return load_run_data(small_cohort, TASK, modalities=["genomics"], folds=3, split_seed=0)


@pytest.fixture(scope="module")
def inner(data: RunData) -> pd.DataFrame:
    return make_inner_splits(data.cohort, TASK, data.splits, k=2, split_seed=0)


def test_inner_splits_cover_each_outer_training_part_and_no_outer_row(data, inner) -> None:
    assert list(inner.columns) == ["outer_fold", "case_id", "fold"]
    for k in data.folds:
        train_ids, val_ids = fold_case_ids(data.splits, k)
        sel = inner_for(inner, k)
        assert not set(sel["case_id"]) & set(val_ids)  # the outer fold is in no inner fold
        assert sorted(sel["case_id"]) == sorted(train_ids)  # its training part, each case once
        assert sorted(sel["fold"].unique()) == [0, 1]
        labels = data.cohort.targets(TASK)["label"]
        pos = pd.Series(np.arange(len(data.cohort.case_ids)), index=data.cohort.case_ids)
        for j in (0, 1):  # stratified: every class in every inner fold
            ids = sel.loc[sel["fold"] == j, "case_id"]
            assert set(labels[pos.loc[ids].to_numpy()]) == set(labels)
    check_inner_splits(data.cohort, TASK, data.splits, inner, "inner")
    # seeded: the same seed gives the same split, another one another split
    again = make_inner_splits(data.cohort, TASK, data.splits, k=2, split_seed=0)
    pd.testing.assert_frame_equal(again, inner)
    other = make_inner_splits(data.cohort, TASK, data.splits, k=2, split_seed=1)
    assert not other["fold"].equals(inner["fold"])


def test_a_tampered_inner_split_is_refused(data, inner) -> None:
    _, val_ids = fold_case_ids(data.splits, 0)
    leaked = pd.concat([inner, pd.DataFrame({"outer_fold": [0], "case_id": [val_ids[0]],
                                             "fold": [0]})], ignore_index=True)
    with pytest.raises(StudyError, match="outer fold 0's own case"):
        check_inner_splits(data.cohort, TASK, data.splits, leaked, "inner_splits.parquet")
    dropped = inner.drop(index=inner.index[(inner["outer_fold"] == 1)][:1])
    with pytest.raises(StudyError, match="exactly once"):
        check_inner_splits(data.cohort, TASK, data.splits, dropped, "inner_splits.parquet")
    with pytest.raises(CohortError, match="outer fold .* inner folds"):
        make_inner_splits(data.cohort, TASK, data.splits, k=40, split_seed=0)


def test_inner_trials_train_only_on_the_outer_training_part(data, inner) -> None:
    """What an inner trial trains on (``prepare_fold`` on the inner split, as run_trial does):
    training and validation rows inside the outer training part, and nothing computed from the
    outer fold - changing the outer fold's expression and labels changes no inner tensor."""
    cohort = data.cohort
    ids = np.asarray(cohort.case_ids)
    for k in data.folds:
        train_ids, val_ids = fold_case_ids(data.splits, k)
        splits_k = inner_for(inner, k)
        # the outer fold's rows scrambled: expression x 50 + 7, every label shifted
        expr = cohort.expression.copy()
        expr.loc[val_ids] = expr.loc[val_ids] * 50 + 7
        cases = cohort.cases.copy()
        cases.loc[val_ids, "diagnosis"] = (cases.loc[val_ids, "diagnosis"] + 1) % 4
        scrambled = dataclasses.replace(cohort, expression=expr, cases=cases)
        seen: set[str] = set()
        for j in sorted(splits_k["fold"].unique()):
            fold = prepare_fold(cohort, None, splits_k, j, TASK)
            train = set(ids[fold.train_idx.numpy()])
            val = set(ids[fold.val_idx.numpy()])
            assert train | val <= set(train_ids) and not (train | val) & set(val_ids)
            assert not train & val
            seen |= val
            other = prepare_fold(scrambled, None, splits_k, j, TASK)
            used = np.concatenate([fold.train_idx.numpy(), fold.val_idx.numpy()])
            assert np.array_equal(fold.genes_t[used].numpy(), other.genes_t[used].numpy())
            assert np.array_equal(fold.genes_m[used].numpy(), other.genes_m[used].numpy())
            for key, t in fold.targets.tensors.items():
                assert np.array_equal(t[used].numpy(), other.targets.tensors[key][used].numpy())
            if fold.targets.class_weights is not None:
                assert np.array_equal(fold.targets.class_weights.numpy(),
                                      other.targets.class_weights.numpy())
        assert seen == set(train_ids)  # the inner validation parts tile the training part


def test_inner_splits_are_saved_once_and_read_back_on_resume(data, tmp_path) -> None:
    cfg = parse_study({"name": "n", "task": TASK, "evaluation": "nested", "inner_folds": 2,
                       "folds": 3, "sampler": "grid"}, "s.yaml", tmp_path)
    made = prepare_inner_splits(cfg, data, tmp_path, resume=False)
    saved = pd.read_parquet(tmp_path / "inner_splits.parquet")
    pd.testing.assert_frame_equal(saved, made)
    # resume reads the saved file (even if another seed would now split differently)
    other = dataclasses.replace(cfg, split_seed=5)
    pd.testing.assert_frame_equal(prepare_inner_splits(other, data, tmp_path, resume=True), made)
    assert prepare_inner_splits(dataclasses.replace(cfg, evaluation="cv"), data, tmp_path,
                                resume=False) is None


@pytest.mark.parametrize(("raw", "key"), [
    ({"evaluation": "holdout"}, "'evaluation'"),
    ({"inner_folds": 3}, "'inner_folds': is only used with evaluation: nested"),
    ({"evaluation": "nested", "inner_folds": 1}, "'inner_folds': needs at least 2"),
    ({"evaluation": "nested", "inner_folds": 2.5}, "'inner_folds': expected int"),
    ({"outer_sampler_seeds": "same"}, "'outer_sampler_seeds': is only used with evaluation: "
                                      "nested"),
    ({"evaluation": "nested", "outer_sampler_seeds": "fold"}, "'outer_sampler_seeds': must be "
                                                              "one of per_fold, same"),
])
def test_bad_evaluation_keys_name_the_key(raw, key, tmp_path) -> None:
    with pytest.raises(SpaceError, match=key):
        parse_study({"name": "n", "task": TASK, "sampler": "grid", **raw}, "s.yaml", tmp_path)


def test_nested_keys_round_trip(tmp_path) -> None:
    cfg = load_study(NESTED_SMOKE)
    assert (cfg.evaluation, cfg.inner_folds, cfg.folds) == ("nested", 2, 3)
    from study.space import dump_study

    dump_study(cfg, tmp_path / "config.yaml")
    assert load_study(tmp_path / "config.yaml") == dataclasses.replace(
        cfg, source=str(tmp_path / "config.yaml"))
    cv = parse_study({"name": "n", "task": TASK, "sampler": "grid"}, "s.yaml", tmp_path)
    assert cv.evaluation == "cv" and "inner_folds" not in cv.to_yaml_dict()


def _first_proposals(cfg, outer_fold: int, n: int) -> list[dict]:
    """The first ``n`` configurations outer fold ``outer_fold``'s search proposes (its sampler,
    seeded as study/nested.py seeds it), asked in-process."""
    from study.search import make_search

    search = make_search(dataclasses.replace(
        cfg, sampler_seed=outer_sampler_seed(cfg, outer_fold)))[0].searcher
    return [search.suggest(f"t{i}") for i in range(n)]


def test_each_outer_fold_draws_its_own_configurations(tmp_path) -> None:
    """With fewer samples than TPE's start-up trials every proposal is random: seeded alike,
    all outer folds would try the same configurations. Each outer fold's seed comes from
    (sampler_seed, outer fold), unless the study asks for ``outer_sampler_seeds: same``."""
    raw = {"name": "n", "task": TASK, "evaluation": "nested", "folds": 3, "num_samples": 3,
           "sampler_seed": 4, "search": {"lr": {"type": "loguniform", "low": 1e-5,
                                                "high": 1e-2}}}
    cfg = parse_study(raw, "s.yaml", tmp_path)
    assert cfg.outer_sampler_seeds == "per_fold"
    seeds = [outer_sampler_seed(cfg, k) for k in range(3)]
    assert len(set(seeds)) == 3 and seeds == [outer_sampler_seed(cfg, k) for k in range(3)]
    assert _first_proposals(cfg, 0, 3) != _first_proposals(cfg, 1, 3)
    assert _first_proposals(cfg, 0, 3) == _first_proposals(cfg, 0, 3)  # reproducible
    same = parse_study({**raw, "outer_sampler_seeds": "same"}, "s.yaml", tmp_path)
    assert {outer_sampler_seed(same, k) for k in range(3)} == {4}
    assert _first_proposals(same, 0, 3) == _first_proposals(same, 1, 3)
    assert same.to_yaml_dict()["outer_sampler_seeds"] == "same"


def test_refit_plan_never_looks_at_the_outer_fold(tmp_path) -> None:
    """Patience 0: the study's epochs. Patience > 0: the median epoch early stopping selected
    on the chosen trial's inner folds (first maximum of each inner fold's curve)."""
    cfg = parse_study({"name": "n", "task": TASK, "sampler": "grid", "epochs": 8,
                       "fixed": {"patience": 2}}, "s.yaml", tmp_path)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("n", artifact_location=(tmp_path / "a").as_uri())
    run = client.create_run(exp).info.run_id
    curves = {0: [0.5, 0.7, 0.6, 0.6], 1: [0.5, 0.6, 0.6, 0.8, 0.7, 0.7], 2: [0.9, 0.8, 0.8]}
    for j, curve in curves.items():
        client.log_batch(run, metrics=[Metric(fold_metric(j, val_metric("auc")), v, 0, e)
                                       for e, v in enumerate(curve, 1)])
    choice = Choice(0, "t1", run, {}, 0.7, 3)
    epochs, rule = refit_plan(client, choice, cfg, [0, 1, 2])
    assert epochs == 2 and "patience 2" in rule and "2, 4, 1" in rule
    no_patience = dataclasses.replace(cfg, fixed={})
    assert refit_plan(client, choice, no_patience, [0, 1, 2])[0] == 8
    searched = Choice(0, "t1", run, {"patience": 0}, 0.7, 3)
    assert refit_plan(client, searched, cfg, [0, 1, 2])[0] == 8


def _nested_rows() -> list[dict]:
    """Inner trials (two per outer fold, inner folds 0-1) and one outer run per outer fold."""
    rows = []
    for k in range(3):
        for i, v in enumerate((0.70, 0.80)):
            rows.append({"method": "cgcoord", "seed": 0, "trial_id": f"in{k}{i}",
                         "folds": {0: v + 0.01 * k, 1: v + 0.01 * k}, "params": {"alpha": i},
                         "tags": {Tags.OUTER_FOLD: str(k), Tags.FOLDS: "0,1"}})
        rows.append({"method": "cgcoord", "seed": 0, "trial_id": f"outer-{k}",
                     "folds": {k: 0.60 + 0.05 * k}, "params": {"alpha": 1, "refit_epochs": 4},
                     "tags": {Tags.ROLE: Roles.OUTER, Tags.OUTER_FOLD: str(k),
                              Tags.FOLDS: str(k), Tags.CHOSEN_TRIAL: f"in{k}1"}})
    return rows


def test_report_shows_the_nested_estimate_beside_best_of_search(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "nest", _nested_rows(), n_folds=3, searched="alpha",
              parent_tags={Tags.EVALUATION: "nested", Tags.SAMPLER: "tpe"},
              parent_params={"study.evaluation": "nested", "study.inner_folds": 2})
    client = MlflowClient(uri)
    study = load_mlflow_study("nest", uri)
    for run in study.trials[study.trials["role"] == Roles.OUTER].itertuples():
        client.log_metric(run.run_id, inner_metric("auc"), 0.80 + 0.01 * int(run.outer_fold))
    r = compare.run_compare("nest", uri, tmp_path / "report", n_boot=200, log_to_mlflow=False,
                            progress=lambda _: None)
    table = compare.nested_estimate(load_mlflow_study("nest", uri), "grade", "auc")
    assert list(table["outer_fold"]) == [0, 1, 2]
    np.testing.assert_allclose(table["value"], [0.60, 0.65, 0.70])
    np.testing.assert_allclose(table["best-of-search"], [0.80, 0.81, 0.82])
    assert list(table["chosen trial"]) == ["in01", "in11", "in21"]
    md = (r.out_dir / "report.md").read_text()
    assert "**Nested estimate (unbiased)**" in md
    assert "| 2 | in21 | cgcoord | 0.8200 | 0.7000 |" in md
    assert "Nested estimate: auc 0.6500 ± 0.0500" in md and "best-of-search: 0.8100" in md
    # the best-of-search number comes from the inner trials only (the best, 0.82), never from
    # an outer run; the per-method table and pairs use the outer runs only
    assert "### grade: auc 0.8200" in md
    methods = r.methods.set_index("arm")
    assert methods.loc["cgcoord", "n_values"] == 3
    assert methods.loc["cgcoord", "mean"] == pytest.approx(0.65)
    # the per-fold figure draws the outer folds' values (not an inner trial's), and the best
    # inner trial says which outer fold's search chose it
    per_fold = r.figures["grade_per_fold"].data
    np.testing.assert_allclose(per_fold.sort_values("fold")["cgcoord"], [0.60, 0.65, 0.70])
    assert "from the inner search of outer fold 2" in md
    # inner 0.81 above nested 0.65: optimistic, by the difference
    assert "The inner scores are optimistic here, by +0.1600" in md


def test_inner_metric_is_called_optimistic_only_above_the_nested_estimate() -> None:
    """study/record.py's words for inner_<m> (the README's table and the MLflow view) follow the
    numbers: optimism is named only for an inner score above nested_<m>."""
    from study.record import EXPLAINED

    words = EXPLAINED["inner_<m>"]
    for sentence in re.split(r"[;.] ", words):
        if "optimis" in sentence:
            assert "Above nested_<m>" in sentence or "below it" in sentence, sentence
    assert "below it: no optimism showed" in words


def check_nested_terminal(stdout: str, stderr: str, out: Path) -> None:
    """What a nested study prints (issue 23): the cv study's progress lines for every outer
    fold's search (labelled "outer k"), no table of Ray's, no line wider than 120 columns, and
    at the end the MLflow command, the URL of the trials side by side and the report
    command."""
    # as printed for README's study folder (`studies/<name>`): a path cannot wrap, and pytest's
    # own (under xdist, .../popen-gw0/<test name>0/...) is longer than a user's
    lines = stdout.replace(str(out.resolve()), f"studies/{out.name}").splitlines()
    assert max(map(len, lines)) <= 120, max(lines, key=len)
    for ray_text in ("╭", "│", "Trial status", "Configuration for experiment", "TERMINATED",
                     "Current best trial", "View detailed results", "A new study created"):
        assert ray_text not in stdout + stderr, ray_text
    assert unexpected_stderr(stderr) == [], stderr[-2000:]
    progress = [line for line in lines if re.match(r"^\[\d\d:\d\d\] outer \d ", line)]
    for k in range(3):
        mine = [line for line in progress if f"] outer {k} trial " in line]
        assert sum(" started " in line for line in mine) == 3, mine
        assert sum("completed 3 epochs" in line for line in mine) == 3, mine
        assert any(f"] outer {k} search ended in " in line for line in progress)
    # the study's own lines and the progress lines only: nothing else between them
    own = ("cohort ", "synthetic cohort", "MLflow", "  ", "then open", "baselines on",
           "baseline ", "outer fold ", "nested_smoke: nested evaluation", " outer_fold ",
           "nested estimate", "best-of-search", "Report", "the best trial", "note: ",
           "Verdict (")
    other = [line for line in lines if line.strip() and not PROGRESS.match(line)
             and not line.startswith(own) and not re.match(r"^\s+\d ", line)]
    assert not other, other
    uri = f"sqlite:///{out / 'mlflow.db'}"
    tail = re.sub(r" \\\n\s+", " ", stdout).splitlines()[-6:]
    assert tail[0] == "MLflow: start the UI with" and uri in tail[1]
    assert tail[2].startswith("then open the trials side by side")
    assert tail[3].strip().startswith("http://127.0.0.1:5000/#/experiments/")
    assert "?workflowType=machine_learning&viewStateShareKey=trials" in tail[3]
    assert tail[4].startswith("Report")
    assert tail[5].strip().endswith(f"-m analysis.compare --experiment nested_smoke "
                                    f"--tracking-uri {uri}")


PROGRESS = re.compile(r"^\[\d\d:\d\d\] ")


@pytest.mark.slow
def test_nested_study_end_to_end(tmp_path: Path) -> None:
    """A whole nested study: saved inner splits disjoint from their outer folds, inner trials
    that only ever saw their outer training part, one refit per outer fold scored on exactly its
    outer fold, baselines on the outer folds, the nested estimate in the report; --resume
    redoes nothing."""
    out = tmp_path / "nested"
    proc = run_study(out, space=NESTED_SMOKE, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nested estimate auc" in proc.stdout
    check_nested_terminal(proc.stdout, proc.stderr, out)
    outer = pd.read_parquet(out / "splits.parquet")
    inner = pd.read_parquet(out / "inner_splits.parquet")
    for k in sorted(outer["fold"].unique()):
        val = set(outer.loc[outer["fold"] == k, "case_id"])
        assert not val & set(inner.loc[inner["outer_fold"] == k, "case_id"])

    uri = f"sqlite:///{out / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["nested_smoke"], max_results=1000)
    parent = runs[runs[T.ROLE] == Roles.STUDY].iloc[0]
    assert parent[f"tags.{Tags.EVALUATION}"] == "nested"
    assert parent["params.study.evaluation"] == "nested" and parent["params.study.inner_folds"] \
        == "2"
    trials = runs[runs[T.ROLE] == Roles.TRIAL]
    outers = runs[runs[T.ROLE] == Roles.OUTER]
    baselines = runs[runs[T.ROLE] == Roles.BASELINE]
    assert len(trials) == 3 * 3 and len(outers) == 3
    assert set(baselines[T.METHOD]) == {"logreg_clinical", "logreg_pca"}
    assert np.isfinite(parent["metrics.nested_auc"]) and np.isfinite(parent["metrics.inner_auc"])
    client = MlflowClient(uri)
    reader = Study("nested_smoke", uri, "", None, {}, pd.DataFrame(), pd.DataFrame())
    for k in sorted(outer["fold"].unique()):
        val = set(outer.loc[outer["fold"] == k, "case_id"])
        train = set(outer.loc[outer["fold"] != k, "case_id"])
        mine = trials[trials[f"tags.{Tags.OUTER_FOLD}"] == str(k)]
        assert len(mine) == 3
        for run_id in mine["run_id"]:  # what each inner trial validated (and so trained) on
            pred = load_predictions(reader, run_id)
            assert set(pred["case_id"]) == train and not set(pred["case_id"]) & val
        run = outers[outers[f"tags.{Tags.OUTER_FOLD}"] == str(k)].iloc[0]
        assert run[f"tags.{Tags.CHOSEN_TRIAL}"] in set(mine[T.TRIAL_ID])
        assert set(load_predictions(reader, run["run_id"])["case_id"]) == val
        assert np.isfinite(run[f"metrics.fold_{k}/final_auc"])
        assert run["params.refit_epochs"] == "3"
        chosen = client.get_run(mine.loc[mine[T.TRIAL_ID] == run[f"tags.{Tags.CHOSEN_TRIAL}"],
                                         "run_id"].iloc[0])
        assert run[f"metrics.{inner_metric('auc')}"] == pytest.approx(
            chosen.data.metrics["final_auc"])
    nested = pd.read_csv(out / "nested.csv")
    assert parent["metrics.nested_auc"] == pytest.approx(nested["auc"].mean())

    r = compare.run_compare("nested_smoke", uri, tmp_path / "report", n_boot=500,
                            progress=lambda _: None)
    md = (r.out_dir / "report.md").read_text()
    assert "**Nested estimate (unbiased)**" in md
    assert set(r.comparison["baseline"]) == {"logreg_clinical", "logreg_pca"}
    assert (r.comparison["n_pairs"] == 3).all()
    assert "outer folds of nested evaluation" in md

    again = run_study(out, "--resume", space=NESTED_SMOKE, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = mlflow.search_runs(experiment_names=["nested_smoke"], max_results=1000)
    for role in (Roles.TRIAL, Roles.OUTER, Roles.BASELINE):
        assert (after[T.ROLE] == role).sum() == (runs[T.ROLE] == role).sum(), role


@pytest.mark.slow
def test_nested_search_below_the_start_up_trials_says_so_and_differs_per_outer_fold(
        tmp_path: Path) -> None:
    """2 outer folds x 2 trials (TPE starts modelling after 10): the terminal and the parent
    run say the search is random; the outer folds' samplers have their own seeds (recorded on
    the outer runs and the inner trials) and tried different configurations."""
    space = write_space(tmp_path / "tiny.yaml", base=NESTED_SMOKE, name="nested_tiny", folds=2,
                        num_samples=2, epochs=1, baselines=[],
                        synthetic={"patients": 60, "patches": 16, "dim": 16, "seed": 0})
    out = tmp_path / "nested"
    proc = run_study(out, space=space, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.splitlines()
    at = [i for i, line in enumerate(printed) if line.startswith("note: the search is random")]
    assert len(at) == 1, proc.stdout
    note = [printed[at[0]]]  # wrapped at 119 columns: its continuation lines are indented
    note += itertools.takewhile(lambda line: line.startswith("  "), printed[at[0] + 1:])
    notes = [" ".join(line.strip() for line in note)]
    assert "num_samples 2 in each outer fold" in notes[0]
    mlflow.set_tracking_uri(f"sqlite:///{out / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["nested_tiny"], max_results=100)
    parent = runs[runs[T.ROLE] == Roles.STUDY].iloc[0]
    assert parent[f"tags.{Tags.SEARCH_NOTE}"] == notes[0].removeprefix("note: ")
    outers = runs[runs[T.ROLE] == Roles.OUTER].set_index(f"tags.{Tags.OUTER_FOLD}")
    trials = runs[runs[T.ROLE] == Roles.TRIAL]
    assert outers.loc["0", "params.sampler_seed"] != outers.loc["1", "params.sampler_seed"]
    tried = {}
    for k in ("0", "1"):
        mine = trials[trials[f"tags.{Tags.OUTER_FOLD}"] == k]
        assert len(mine) == 2
        assert (mine[f"tags.{Tags.SAMPLER_SEED}"] == outers.loc[k, "params.sampler_seed"]).all()
        tried[k] = set(zip(mine["params.lr"], mine["params.alpha"], strict=True))
    assert not tried["0"] & tried["1"]
