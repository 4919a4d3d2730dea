"""analysis/: a real MLflow SQLite store filled with known numbers, then compare/summary on it.

Every statistic in comparison.csv is recomputed here directly with numpy/scipy/lifelines from the
numbers that were logged (not from the analysis tables).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from lifelines.statistics import logrank_test
from mlflow import MlflowClient
from scipy import stats as sps

from analysis import compare, summary
from analysis.load import AnalysisError, load_study, parse_param_column
from analysis.stats import holm, wilcoxon_test

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from tests.analysis_fixtures import log_study
except ModuleNotFoundError:
    from analysis_fixtures import log_study

SEEDS, FOLDS = (0, 1, 2), (0, 1, 2, 3, 4)
METHODS = ("uniform", "pcgrad", "cgcoord")
FAILED_ERROR = "RuntimeError: NaN loss at epoch 3"


def _ablation_numbers() -> dict[str, np.ndarray]:
    """method -> [seed, fold] AUC. cgcoord is ~0.02 above uniform, pcgrad ~0.005."""
    rng = np.random.default_rng(42)
    base = 0.70 + 0.05 * rng.random((3, 5))
    shift = {"uniform": 0.0, "pcgrad": 0.005, "cgcoord": 0.02}
    return {m: np.round(base + shift[m] + 0.01 * rng.standard_normal((3, 5)), 4) for m in METHODS}


ABL = _ablation_numbers()
# The faults planted in the ablation study:
#   pcgrad seed 2 failed (no fold metrics); uniform seed 1 fold 3 was never logged;
#   a failed first attempt of cgcoord seed 1 sits next to its completed retry (same trial id).
MISSING_UNIFORM = (1, 3)


def _ablation_table() -> list[dict]:
    rows = []
    for m in METHODS:
        for s in SEEDS:
            if m == "pcgrad" and s == 2:
                rows.append({"method": m, "seed": s, "status": "FAILED", "error": FAILED_ERROR})
                continue
            retry = {}
            if m == "cgcoord" and s == 1:
                rows.append({"method": m, "seed": s, "status": "FAILED", "trial_id": "cg1",
                             "attempt": 1, "error": "Traceback ...\nOSError: node lost"})
                retry = {"trial_id": "cg1", "attempt": 2}
            folds = {f: float(ABL[m][s, f]) for f in FOLDS}
            if m == "uniform" and s == MISSING_UNIFORM[0]:
                folds[MISSING_UNIFORM[1]] = float("nan")
            level = {"uniform": 0.35, "pcgrad": 0.30, "cgcoord": 0.2}[m]
            rows.append({"method": m, "seed": s, "folds": folds, **retry, "history": {
                "val_auc": [0.6, 0.65, 0.7, float(np.mean(ABL[m][s]))],
                "coord/conflict_rate": [level + 0.02 * s + 0.05 * e for e in range(4)],
                "coord/cos_mean": [0.1 - level / 2 - 0.01 * e for e in range(4)]}})
    return rows


def _survival_predictions(seed: int, strength: float) -> pd.DataFrame:
    rng = np.random.default_rng(100 + seed)
    n = 60
    time = rng.exponential(700.0, n).round(1) + 1.0
    event = (rng.random(n) < 0.65).astype(int)
    risk = -strength * np.log(time) + rng.standard_normal(n)
    return pd.DataFrame({"fold": np.repeat([0, 1, 2], 20), "case_id": [f"C{i:03d}" for i in
                                                                       range(n)],
                         "seed": seed, "time": time, "event": event, "risk": risk})


SURV_PRED = {(m, s): _survival_predictions(s, 1.5 if m == "cgcoord" else 0.3)
             for m in ("uniform", "cgcoord") for s in (0, 1)}


def _survival_table() -> list[dict]:
    rng = np.random.default_rng(7)
    return [{"method": m, "seed": s, "predictions": SURV_PRED[(m, s)],
             "folds": {f: float(0.6 + 0.1 * rng.random()) for f in range(3)}}
            for m in ("uniform", "cgcoord") for s in (0, 1)]


def _search_table() -> tuple[list[dict], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n = 16
    alpha = rng.random(n)
    lam = 10 ** rng.uniform(-3, 0, n)
    lr = 10 ** rng.uniform(-4, -2, n)
    final = 0.8 - 0.3 * (alpha - 0.6) ** 2 + 0.002 * rng.standard_normal(n)
    rows = []
    offsets = np.array([-0.02, -0.01, 0.0, 0.01, 0.02])
    folds = final[:, None] + offsets
    for i in range(n):
        # trial 5 was stopped early: no fold metrics, its value is its last val_auc
        rows.append({"method": "cgcoord", "seed": 0,
                     "status": "STOPPED_EARLY" if i == 5 else "COMPLETED",
                     "params": {"alpha": float(alpha[i]), "lam": float(lam[i]),
                                "lr": float(lr[i])},
                     "history": {"val_auc": [0.6, float(folds[i].mean())]},
                     "folds": {f: float(folds[i, f]) for f in FOLDS}})
    return rows, alpha, folds.mean(axis=1)


SEARCH_ROWS, SEARCH_ALPHA, SEARCH_FINAL = _search_table()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    parents = {
        "ablation": log_study(uri, "ablation", _ablation_table(), task="grade", metric="auc",
                              searched="coordination,seed"),
        "surv": log_study(uri, "surv", _survival_table(), task="survival", metric="cindex",
                          n_folds=3),
        "search": log_study(uri, "search", SEARCH_ROWS, task="grade", metric="auc",
                            searched="alpha,lam,lr"),
        "broken": log_study(uri, "broken", [
            {"method": "cgcoord", "seed": 0, "folds": {f: 0.7 for f in FOLDS}},
            {"method": "cgcoord", "seed": 1, "status": "FAILED", "error": "CUDA out of memory"},
            {"method": "cgcoord", "seed": 2, "status": "FAILED", "error": "CUDA out of memory"},
        ]),
    }
    return {"uri": uri, "root": root, "parents": parents}


def _quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def ablation_report(store):
    out = store["root"] / "reports" / "ablation"
    rc = compare.main(["--experiment", "ablation", "--tracking-uri", store["uri"],
                       "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def reports(store):
    return {name: compare.run_compare(name, store["uri"], store["root"] / "reports" / name,
                                      n_boot=2000, progress=_quiet)
            for name in ("surv", "search", "broken")}


# --- pure statistics ----------------------------------------------------------------------

def test_holm_matches_hand_computation_and_keeps_nan():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = holm([0.2, np.nan, 0.6])
    assert np.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.4, 0.6])
    assert holm([0.9, 0.8])[0] == 1.0  # capped at 1


def test_wilcoxon_degenerate_cases_give_nan_and_note():
    assert np.isnan(wilcoxon_test(np.zeros(5))[1])
    assert "zero" in wilcoxon_test(np.zeros(5))[2]
    assert np.isnan(wilcoxon_test(np.array([0.0, 0.1]))[1])
    assert np.isnan(wilcoxon_test(np.array([]))[1])
    _, p, note = wilcoxon_test(np.array([0.1, 0.2, -0.05]))
    assert p == pytest.approx(sps.wilcoxon([0.1, 0.2, -0.05]).pvalue) and "attainable" in note


def test_parse_params_types():
    assert parse_param_column(pd.Series(["True", "False"])).tolist() == [True, False]
    assert parse_param_column(pd.Series(["3", "10"])).dtype == "Int64"
    assert parse_param_column(pd.Series(["1e-05", "0.5"])).tolist() == [1e-5, 0.5]
    assert parse_param_column(pd.Series(["both", "genomics"])).tolist() == ["both", "genomics"]


# --- loading ------------------------------------------------------------------------------

def test_load_tidies_runs_per_fold(store):
    s = load_study("ablation", store["uri"])
    assert s.parent_run_id == store["parents"]["ablation"]
    assert len(s.trials) == 10 and set(s.trials["status"]) == {"COMPLETED", "FAILED"}
    retried = s.trials[s.trials["trial_id"] == "cg1"].set_index("attempt")
    assert retried.loc[1, "superseded"] and not retried.loc[2, "superseded"]
    f = s.folds
    # 10 runs × 5 expected folds; failed runs keep their folds with NaN values
    assert len(f) == 50
    row = f[(f["arm"] == "cgcoord") & (f["seed"] == 2) & (f["fold"] == 4)
            & (f["status"] == "COMPLETED")]
    assert row["auc"].item() == pytest.approx(ABL["cgcoord"][2, 4])
    assert f.loc[(f["arm"] == "pcgrad") & (f["seed"] == 2), "auc"].isna().all()
    assert f["params.alpha"].dtype == float and f["params.teacher"].dtype == "boolean"


def test_missing_experiment_and_uri_errors_are_clear(store, monkeypatch):
    with pytest.raises(AnalysisError, match="no MLflow experiment named 'nope'.*ablation"):
        load_study("nope", store["uri"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(AnalysisError, match="tracking-uri"):
        load_study("ablation")
    assert compare.main(["--experiment", "nope", "--tracking-uri", store["uri"],
                         "--no-log"]) == 2


# --- comparison.csv against direct computation --------------------------------------------

def _direct(baseline: str) -> np.ndarray:
    """cgcoord − baseline on the keys both have, in (seed, fold) order, from the raw numbers."""
    diffs = []
    for s in SEEDS:
        for f in FOLDS:
            if baseline == "pcgrad" and s == 2:
                continue
            if baseline == "uniform" and (s, f) == MISSING_UNIFORM:
                continue
            diffs.append(ABL["cgcoord"][s, f] - ABL[baseline][s, f])
    return np.array(diffs)


def test_comparison_csv_matches_scipy_on_the_logged_numbers(ablation_report):
    comp = pd.read_csv(ablation_report / "comparison.csv").set_index("baseline")
    assert set(comp.index) == {"uniform", "pcgrad"} and (comp["method"] == "cgcoord").all()
    p_direct = {}
    for base in ("uniform", "pcgrad"):
        d = _direct(base)
        row = comp.loc[base]
        assert row["n_pairs"] == len(d) == (14 if base == "uniform" else 10)
        assert row["n_missing_pairs"] == (1 if base == "uniform" else 5)
        assert row["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert row["mean_method"] - row["mean_baseline"] == pytest.approx(d.mean(), abs=1e-12)
        assert row["win_rate"] == pytest.approx((d > 0).mean())
        assert (row["n_wins"], row["n_ties"], row["n_losses"]) == (
            (d > 0).sum(), (d == 0).sum(), (d < 0).sum())
        assert row["median_diff"] == pytest.approx(np.median(d), abs=1e-12)
        assert row["sd_diff"] == pytest.approx(d.std(ddof=1), abs=1e-12)
        p_direct[base] = sps.wilcoxon(d).pvalue
        assert row["wilcoxon_p"] == pytest.approx(p_direct[base], rel=1e-9)
        # bootstrap: contains the mean difference and equals a direct recomputation
        assert row["ci_low"] < d.mean() < row["ci_high"]
        rng = np.random.default_rng(0)
        means = d[rng.integers(0, len(d), size=(10_000, len(d)))].mean(axis=1)
        assert [row["ci_low"], row["ci_high"]] == pytest.approx(
            list(np.quantile(means, [0.025, 0.975])), abs=1e-12)
    ps = sorted(p_direct.items(), key=lambda kv: kv[1])
    h_first = min(1.0, 2 * ps[0][1])
    h_second = min(1.0, max(h_first, ps[1][1]))
    assert comp.loc[ps[0][0], "holm_p"] == pytest.approx(h_first, rel=1e-9)
    assert comp.loc[ps[1][0], "holm_p"] == pytest.approx(h_second, rel=1e-9)


def test_methods_csv_matches_numpy(ablation_report):
    m = pd.read_csv(ablation_report / "methods.csv").set_index("arm")
    vals = ABL["uniform"].copy()
    vals[MISSING_UNIFORM] = np.nan
    v = vals[np.isfinite(vals)]
    assert m.loc["uniform", "n_values"] == 14
    assert m.loc["uniform", "mean"] == pytest.approx(v.mean())
    assert m.loc["uniform", "sd"] == pytest.approx(v.std(ddof=1))
    assert m.loc["uniform", "median"] == pytest.approx(np.median(v))
    assert m.loc["pcgrad", "failed"] == 1 and m.loc["pcgrad", "n_values"] == 10
    # the retried trial counts once, by its completed retry
    assert m.loc["cgcoord", "trials"] == 3 and m.loc["cgcoord", "failed"] == 0
    assert m.loc["cgcoord", "n_values"] == 15


def test_report_lists_missing_and_failed_and_is_logged(store, ablation_report):
    report = (ablation_report / "report.md").read_text()
    assert "## Missing / failed" in report and FAILED_ERROR in report
    assert "OSError: node lost" in report
    assert "Earlier attempts of trials that were retried" in report
    miss = pd.read_csv(ablation_report / "missing.csv")
    pc = miss[miss["arm"] == "pcgrad"]
    assert sorted(pc["fold"]) == list(FOLDS) and (pc["seed"] == 2).all()
    assert pc["reason"].str.contains("run failed").all()
    un = miss[miss["arm"] == "uniform"]
    assert un[["seed", "fold"]].values.tolist() == [list(MISSING_UNIFORM)]
    assert "not logged" in un["reason"].item()
    assert len(miss) == 6  # nothing else is missing
    # parts that do not apply are skipped and said so
    assert "sensitivity curves skipped" in report and "Kaplan–Meier skipped" in report
    # seed / seeds vary but are not hyper-parameters: only 'coordination' is left for fANOVA
    assert "parameter importance skipped" in report
    for name in ("grade_per_fold_auc.png", "grade_telemetry.png", "grade_history.png"):
        assert (ablation_report / name).stat().st_size > 10_000
        assert f"]({name})" in report
    client = MlflowClient(tracking_uri=store["uri"])
    logged = {f.path for f in client.list_artifacts(store["parents"]["ablation"], "report")}
    assert {"report/report.md", "report/comparison.csv", "report/methods.csv",
            "report/grade_per_fold_auc.png", "report/grade_telemetry.png"} <= logged


def test_telemetry_and_per_fold_figures_plot_the_logged_numbers(store, tmp_path):
    r = compare.run_compare("ablation", store["uri"], tmp_path, n_boot=200, log_to_mlflow=False,
                            baselines=["pcgrad"], progress=_quiet)
    assert list(r.comparison["baseline"]) == ["pcgrad"]
    tele = r.figures["grade_telemetry"].data
    cr = tele[(tele["key"] == "coord/conflict_rate") & (tele["arm"] == "uniform")
              & (tele["step"] == 1)]
    # uniform runs: seeds 0, 1, 2 -> 0.35 + 0.02 * seed at epoch 1
    assert cr["mean"].item() == pytest.approx(np.mean([0.35, 0.37, 0.39]))
    assert cr["n"].item() == 3
    wide = r.figures["grade_per_fold"].data.set_index(["seed", "fold"])
    assert wide.loc[(2, 4), "cgcoord"] == pytest.approx(ABL["cgcoord"][2, 4])
    assert np.isnan(wide.loc[MISSING_UNIFORM, "uniform"])


# --- survival -----------------------------------------------------------------------------

def test_km_logrank_p_equals_lifelines_on_same_groups(store, reports):
    r = reports["surv"]
    km = r.figures["survival_km"]
    assert km.path.exists() and km.path.stat().st_size > 10_000
    for arm in ("uniform", "cgcoord"):
        pred = SURV_PRED[(arm, 0)]  # ablation grid: the lowest seed's run is used
        med = pred.groupby("fold")["risk"].transform("median")
        high, low = pred[pred["risk"] > med], pred[pred["risk"] <= med]
        expected = logrank_test(high["time"], low["time"], high["event"], low["event"])
        assert km.stats[arm]["logrank_p"] == pytest.approx(expected.p_value, rel=1e-12)
        assert km.stats[arm]["n_high"] == len(high) == 30
    assert km.stats["cgcoord"]["logrank_p"] < 0.01  # planted strong separation
    report = (r.out_dir / "report.md").read_text()
    assert "log-rank" in report and "survival_kaplan_meier.png" in report
    comp = r.comparison
    assert list(comp["metric"]) == ["cindex"] and comp["n_pairs"].item() == 6


# --- search study: sensitivity, history, importance ---------------------------------------

def test_search_study_sensitivity_history_importance(reports):
    r = reports["search"]
    assert r.comparison.empty
    assert any("only one method" in s for s in r.skipped)
    sens = r.figures["grade_sensitivity"].data
    assert set(sens["param"]) == {"alpha", "lam"}  # tau_* constant, lr not a sensitivity param
    a = sens[sens["param"] == "alpha"]
    assert a["n"].sum() == 16
    first = a.sort_values("x_low").iloc[0]
    lo, hi = first["x_low"], first["x_high"]
    in_bin = (SEARCH_ALPHA - lo >= 0) & (hi - SEARCH_ALPHA >= 0)
    assert first["mean"] == pytest.approx(SEARCH_FINAL[in_bin].mean())
    hist = r.figures["grade_history"].data
    np.testing.assert_allclose(hist["value"], SEARCH_FINAL)
    np.testing.assert_allclose(hist["best_so_far"], np.maximum.accumulate(SEARCH_FINAL))
    assert r.study.trials.set_index("status").loc["STOPPED_EARLY", "final_source"] == "last val_auc"
    imp = r.figures["grade_importance"].data.set_index("param")["importance"]
    assert set(imp.index) == {"alpha", "lam", "lr"}
    assert imp.idxmax() == "alpha" and imp.sum() == pytest.approx(1.0)


def test_all_failed_study_still_reports(reports):
    r = reports["broken"]
    report = (r.out_dir / "report.md").read_text()
    # listed in the failed-trials table and in the missing-results table (one line per run)
    assert report.count("CUDA out of memory") == 4
    assert "No paired comparison could be made" in report
    assert len(pd.read_csv(r.out_dir / "missing.csv")) == 10  # seeds 1, 2 × 5 folds


# --- summary / CLI ------------------------------------------------------------------------

def test_summary_prints_per_method_table(store, capsys):
    assert summary.main(["--experiment", "ablation", "--tracking-uri", store["uri"]]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("grade") and " pcgrad " in ln)
    assert line.split()[2:6] == ["3", "2", "0", "1"]  # trials, done, stopped, failed
    finals = ABL["cgcoord"].mean(axis=1)
    assert f"{finals.mean():.4f} ± {finals.std(ddof=1):.4f}" in out
    assert "Best trial" in out and "coordination=cgcoord" in out


def test_cli_help_explains(capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--tracking-uri" in out and "Wilcoxon" in out and "--baseline" in out
