"""The report and the terminal answer first (issues 21 and 23): verdicts 5 folds can reach, the
model next to its best baseline, repeats, and the report's defects, each checked on a real
MLflow store filled with known numbers."""

from __future__ import annotations

import baycomp
import numpy as np
import pandas as pd
import pytest

from analysis import analyse, figures
from analysis.answer import WIDTH, terminal_lines
from analysis.load import load_study
from study.record import Roles, Tags

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from tests.analysis_fixtures import log_study, make_study
except ModuleNotFoundError:
    from analysis_fixtures import log_study, make_study

FOLDS = range(5)
MODEL = np.array([0.86, 0.84, 0.88, 0.83, 0.87])
PCA = np.array([0.74, 0.75, 0.76, 0.71, 0.77])  # the model wins 5 of 5 by ~0.11
CLIN = MODEL + np.array([0.004, -0.006, 0.002, 0.005, -0.003])  # practically the same
STUDY_PARAMS = {"study.folds": 5, "study.num_samples": 4, "study.epochs": 2,
                "study.search.lr": "loguniform [0.0001, 0.01]",
                "study.search.cagrad_c": "float [0.1, 0.9]"}


def _quiet(_m: str) -> None:
    pass


def _search_rows() -> list[dict]:
    """A search of 4 trials (lr, cagrad_c searched): one completed best trial, two more
    completed, one stopped early by ASHA after 1 epoch; two baselines (seed 'any')."""
    rows = []
    for i, (lr, c) in enumerate(((1e-3, 0.5), (1e-4, 0.2), (1e-2, 0.8), (3e-3, 0.4))):
        shift = (0.0, -0.05, -0.08, 0.0)[i]
        row = {"method": "cgcoord", "seed": 0, "trial_id": f"t{i}",
               "params": {"lr": lr, "cagrad_c": c, "coord_target": "classifier_rows"},
               "folds": {f: float(MODEL[f] + shift) for f in FOLDS},
               "history": {"val_auc": [0.7, float(MODEL.mean() + shift)],
                           "coord/conflict_rate": [0.4, 0.45]}}
        if i == 3:
            row.update(status="STOPPED_EARLY", history={"val_auc": [0.6]},
                       tags={Tags.STOPPED_AT: "1"})
        rows.append(row)
    for name, values, tuning in (("logreg_pca", PCA, "C by inner 3-fold CV"),
                                 ("logreg_clinical", CLIN, "none (default C)")):
        rows.append({"method": name, "seed": "any", "trial_id": f"baseline-{name}",
                     "folds": {f: float(values[f]) for f in FOLDS},
                     "history": {"fit_seconds": [1.25]},
                     "tags": {Tags.ROLE: Roles.BASELINE, "ks.baseline_inputs": f"{name} inputs",
                              "ks.baseline_tuning": tuning}})
    return rows


@pytest.fixture(scope="module")
def search_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("answers")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parent = log_study(uri, "alpha", _search_rows(), searched="lr,cagrad_c",
                       parent_params=STUDY_PARAMS,
                       parent_tags={Tags.SAMPLER: "tpe", "ks.search_note": "random search"})
    r = analyse.run_compare("alpha", uri, root / "report", n_boot=200, log_to_mlflow=False,
                            progress=_quiet)
    return {"uri": uri, "root": root, "parent": parent, "report": r,
            "md": (root / "report" / "report.md").read_text()}


def test_conclusion_leads_with_verdicts_and_the_best_baseline(search_store):
    md, r = search_store["md"], search_store["report"]
    headings = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert headings[0] == "## Conclusion" and headings[-2] == "## Study configuration"
    conclusion = md[md.index("## Conclusion"):md.index("\n## ", md.index("## Conclusion") + 3)]
    # the best trial wins 5 of 5 folds by ~0.11: Wilcoxon cannot say it (p ≥ 0.0625); we can
    row = r.comparison.set_index("baseline").loc["logreg_pca"]
    assert row["verdict"] == "better" and np.isnan(row["wilcoxon_p"])
    assert "**cgcoord is better than logreg_pca**" in conclusion
    assert "P(equivalent within ±0.01)" in conclusion and "one run of 5 folds" in conclusion
    # the estimate next to the best baseline (logreg_clinical: the highest baseline mean)
    first = conclusion.splitlines()[2]
    assert first.startswith("- grade: best-of-search trial t0: auc 0.856")
    assert "best of 2 baselines: logreg_clinical 0.856" in first
    assert "Other baselines: logreg_pca 0.746 (better)" in first
    probs = baycomp.two_on_single(MODEL, PCA, rope=0.01, runs=1)
    assert (row["p_better"], row["p_equivalent"], row["p_worse"]) == pytest.approx(probs,
                                                                                   abs=1e-6)


def test_terminal_lines_set_the_best_trial_against_each_baseline(search_store):
    lines = terminal_lines(search_store["uri"], "alpha", search_store["parent"])
    assert lines and all(len(ln) <= WIDTH for ln in lines)
    text = "\n".join(lines)
    assert "ROPE ±0.01" in text
    pca = next(ln for ln in lines if "vs logreg_pca" in ln)
    assert "best trial (cgcoord) 0.856 vs logreg_pca 0.746: +0.1100 → better (P > 0.999/" in pca
    clin = next(ln for ln in lines if "vs logreg_clinical" in ln)
    assert "→ undecided" in clin or "→ equivalent" in clin
    # a store that does not exist: one line, no store created
    missing = search_store["root"] / "nope" / "mlflow.db"
    out = terminal_lines(f"sqlite:///{missing}", "alpha")
    assert len(out) >= 1 and "does not exist" in " ".join(out) and not missing.exists()


def test_baselines_section_lists_inputs_tuning_and_cost(search_store):
    md = search_store["md"]
    section = md[md.index("## Baselines"):md.index("## Best configuration")]
    assert "| logreg_pca | COMPLETED | logreg_pca inputs | C by inner 3-fold CV | 1.2 |" in section
    assert "Search: random search" in section


def test_configuration_reads_what_the_runs_recorded(search_store):
    """Issue 23: coordination target 'not recorded' although every trial logs it; trials planned
    'not recorded' for a sampled study; counts that included the baselines; '–' epochs for
    trials ASHA stopped after 1 epoch."""
    md = search_store["md"]
    config = md[md.index("## Study configuration"):]
    assert "| coordination target | classifier_rows | trial param `coord_target`" in config
    assert "| trials planned | 4 | `study.num_samples` |" in config
    assert "Runs: 4 trials (3 completed, 1 stopped early); 2 baseline runs (2 completed)" in md
    stopped = md[md.index("stopped early by the scheduler (ASHA): they did"):]
    assert "| grade | cgcoord | t3 |" in stopped
    line = next(ln for ln in stopped.splitlines() if ln.startswith("| grade | cgcoord | t3 |"))
    assert line.split("|")[5].strip() == "1"  # epochs_run, from ks.stopped_at_epoch


def test_sensitivity_for_every_searched_parameter_and_basis_note(search_store):
    r, md = search_store["report"], search_store["md"]
    # one figure, a panel per name of the parent's study.search.*: cagrad_c and lr (the old
    # fixed list had neither)
    assert r.figures["grade_sensitivity"].stats["panels"] == ["cagrad_c", "lr"]
    assert "One panel per searched parameter (2: cagrad_c, lr)" in md
    tele = md[md.index("## Telemetry: gradient-conflict rate"):]
    assert "Basis-dependent: on classifier_rows the sign" in tele.split("\n## ")[0]


def test_no_legend_entry_without_its_artist(search_store, tmp_path):
    """Every figure of the report: each legend entry's artist is drawn and holds data."""
    r = search_store["report"]
    assert r.figures
    for key, fig in r.figures.items():
        assert fig.figure is not None, key
        assert figures.legend_problems(fig.figure) == [], key
    # one run per method: no ± 1 SD band drawn, so none in the legend
    hist = pd.DataFrame({"run_id": ["a"] * 3 + ["b"] * 3, "arm": ["x"] * 3 + ["y"] * 3,
                         "key": "val_auc", "step": [1, 2, 3] * 2,
                         "value": [0.6, 0.7, 0.8, 0.5, 0.6, 0.7]})
    single = figures.epoch_curves(hist, [("val_auc", "AUC")], "grade", "t", tmp_path / "c.png")
    labels = [lab for lab, _ in single.figure.ks_legend]
    assert single.stats["bands"] == 0 and not any("SD" in lab for lab in labels)
    two = figures.epoch_curves(hist.assign(arm="x"), [("val_auc", "AUC")], "grade", "t",
                               tmp_path / "d.png")
    assert two.stats["bands"] == 1 and figures.legend_problems(two.figure) == []


def test_per_fold_figure_has_no_interval_from_few_values(tmp_path):
    rows = [{"method": m, "seed": 0, "folds": {0: v, 1: v + 0.3}} for m, v in
            (("a", 0.7), ("b", 0.65))]
    study = make_study(rows, n_folds=2)
    fig = figures.per_fold(study.folds, "auc", "grade", ["a", "b"], tmp_path / "p.png")
    assert fig.stats["intervals"] == 0  # n = 2: a t-interval would span 0.03 to beyond 1
    lo, hi = fig.stats["ylim"]
    assert lo >= 0 and hi <= 1
    assert figures.legend_problems(fig.figure) == []
    labels = [lab for lab, _ in fig.figure.ks_legend]
    assert "mean" in labels and not any("t-interval" in lab for lab in labels)


def test_repeats_are_the_runs_of_the_correlated_test(tmp_path):
    """study.repeats = 2 of study.folds = 5: global fold ids 0..9, one seed; the test uses
    k = 5 and runs = 2 (not 10 independent folds)."""
    rng = np.random.default_rng(4)
    a = 0.8 + 0.02 * rng.standard_normal(10)
    b = a - 0.015 + 0.01 * rng.standard_normal(10)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "rep", [{"method": "cgcoord", "seed": 0, "folds": dict(enumerate(a))},
                           {"method": "uniform", "seed": 0, "folds": dict(enumerate(b))}],
              n_folds=10, parent_params={"study.folds": 5, "study.repeats": 2},
              parent_tags={Tags.SAMPLER: "grid"})
    r = analyse.run_compare("rep", uri, tmp_path / "r", n_boot=200, log_to_mlflow=False,
                            progress=_quiet)
    row = r.comparison.iloc[0]
    assert (row["folds"], row["runs"], row["n_pairs"]) == (5, 2, 10)
    assert row["design"] == "runs = 2 repeats of the 5 folds"
    probs = baycomp.two_on_single(a, b, rope=0.01, runs=2)
    assert (row["p_better"], row["p_equivalent"], row["p_worse"]) == pytest.approx(probs,
                                                                                   abs=1e-6)
    # the ROPE: --rope, else the study's own, else the metric's default
    assert row["rope"] == 0.01
    r2 = analyse.run_compare("rep", uri, tmp_path / "r2", n_boot=200, log_to_mlflow=False,
                             rope=0.05, progress=_quiet)
    assert r2.comparison.iloc[0]["rope"] == 0.05
    md = (tmp_path / "r2" / "report.md").read_text()
    assert "k = 5 folds per repeat, 2 repeats, ROPE ±0.05 (k from `study.folds`; ROPE: --rope)" \
        in md


def _nested_rows(inner_above: bool) -> list[dict]:
    """3 outer folds; each outer run predicts its own 20 patients (survival)."""
    rows = []
    for k in range(3):
        for i, v in enumerate((0.60, 0.65)):
            rows.append({"method": "cgcoord", "seed": 0, "trial_id": f"in{k}{i}",
                         "folds": {0: v, 1: v}, "params": {"alpha": i / 2 + 0.1 * k},
                         "tags": {Tags.OUTER_FOLD: str(k), Tags.FOLDS: "0,1"}})
        rng = np.random.default_rng(k)
        pred = pd.DataFrame({"fold": k, "case_id": [f"c{k}{j}" for j in range(20)], "seed": 0,
                             "time": rng.exponential(500, 20) + 1, "event": rng.random(20) < .6,
                             "risk": rng.standard_normal(20)}).astype({"event": int})
        rows.append({"method": "cgcoord", "seed": 0, "trial_id": f"outer-{k}",
                     "folds": {k: (0.55 if inner_above else 0.70) + 0.01 * k},
                     "params": {"alpha": 0.5, "refit_epochs": 2}, "predictions": pred,
                     "tags": {Tags.ROLE: Roles.OUTER, Tags.OUTER_FOLD: str(k),
                              Tags.FOLDS: str(k), Tags.CHOSEN_TRIAL: f"in{k}1"}})
    return rows


@pytest.mark.parametrize("inner_above", [True, False])
def test_nested_report_words_and_figures(tmp_path, inner_above):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "nest", _nested_rows(inner_above), n_folds=3, searched="alpha",
              task="survival", metric="cindex",
              parent_tags={Tags.EVALUATION: "nested", Tags.SAMPLER: "tpe"})
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    study = load_study("nest", uri)
    for run in study.trials[study.trials["role"] == Roles.OUTER].itertuples():
        client.log_metric(run.run_id, "inner_cindex", 0.65)
    r = analyse.run_compare("nest", uri, tmp_path / "rep", n_boot=200, log_to_mlflow=False,
                            progress=_quiet)
    md = (tmp_path / "rep" / "report.md").read_text()
    if inner_above:  # inner 0.65 > nested 0.56: optimistic, by how much
        assert "The inner scores are optimistic here, by +0.0900" in md
    else:  # inner 0.65 < nested 0.71: not called optimistic; the difference is stated
        assert "optimistic here" not in md
        assert "The inner scores are 0.0600 below the nested estimate here" in md
    # the best trial says which outer fold's search it belongs to
    b = r.best["survival"]
    assert b.outer_fold is not None
    assert f"from the inner search of outer fold {b.outer_fold}" in md
    # Kaplan–Meier from the outer-fold runs: all 60 outer patients, not one inner trial's
    km = r.figures["survival_km"].stats["nested (outer folds)"]
    assert km["n_high"] + km["n_low"] == 60


def test_telemetry_panels_are_keys_of_the_record():
    """The analysis draws telemetry under the names study/record.py explains to users."""
    from analysis.task_figures import BASIS_DEPENDENT, TELEMETRY_PANELS
    from study.record import EXPLAINED, telemetry_metric

    for suffix in (*TELEMETRY_PANELS, *BASIS_DEPENDENT):
        assert telemetry_metric(suffix) in EXPLAINED, suffix
