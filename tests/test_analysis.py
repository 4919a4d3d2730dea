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

from analysis import analyse, compare, figures, fmt, stats, summary
from analysis.load import AnalysisError, load_study, parse_param_column
from analysis.stats import holm, wilcoxon_test

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from tests.analysis_fixtures import log_study, make_study
except ModuleNotFoundError:
    from analysis_fixtures import log_study, make_study

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
    # below 6 non-zero pairs it cannot reach p < 0.05: not run, and said so
    _, p, note = wilcoxon_test(np.array([0.1, 0.2, -0.05, 0.1, 0.3]))
    assert np.isnan(p) and "2/2^5 = 0.0625" in note and "never reach p < 0.05" in note
    d = np.array([0.1, 0.2, -0.05, 0.1, 0.3, 0.15])
    _, p, note = wilcoxon_test(d)
    assert p == pytest.approx(sps.wilcoxon(d).pvalue) and note == ""


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
    assert "sensitivity figure skipped" in report and "Kaplan–Meier skipped" in report
    assert "coordination not drawn there: each method ran with one value of it" in report
    # seed / seeds vary but are not hyper-parameters: only 'coordination' is left for fANOVA
    assert "parameter importance skipped" in report
    # one figure per question: each telemetry key has its own
    for name in ("grade_per_fold_auc.png", "grade_telemetry_conflict_rate.png",
                 "grade_telemetry_cos_mean.png", "grade_cd_auc.png"):
        assert (ablation_report / name).stat().st_size > 10_000
        assert f"]({name})" in report
    # a grid (one trial per method and seed): no optimisation history
    assert not (ablation_report / "grade_history.png").exists()
    assert "optimisation history not drawn: a grid study" in report
    client = MlflowClient(tracking_uri=store["uri"])
    logged = {f.path for f in client.list_artifacts(store["parents"]["ablation"], "report")}
    assert {"report/report.md", "report/report.html", "report/comparison.csv",
            "report/methods.csv", "report/friedman.csv", "report/grade_per_fold_auc.png",
            "report/grade_telemetry_conflict_rate.png"} <= logged


def test_telemetry_and_per_fold_figures_plot_the_logged_numbers(store, tmp_path):
    r = compare.run_compare("ablation", store["uri"], tmp_path, n_boot=200, log_to_mlflow=False,
                            baselines=["pcgrad"], progress=_quiet)
    assert list(r.comparison["baseline"]) == ["pcgrad"]
    tele = r.figures["grade_telemetry_conflict_rate"].data
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
    # one figure, one panel per searched parameter (ks.searched: alpha, lam, lr)
    assert [k for k in r.figures if "_sensitivity" in k] == ["grade_sensitivity"]
    sens = r.figures["grade_sensitivity"]
    assert sens.stats["panels"] == ["alpha", "lam", "lr"]
    assert len([ax for ax in sens.figure.axes if ax.get_visible()]) == 3
    a = sens.data[sens.data["param"] == "alpha"]
    assert a["n"].sum() == 15  # trial 5 was stopped early: drawn hollow, not binned
    stopped = sens.stats["stopped"]
    assert stopped.loc[stopped["param"] == "alpha", "x"].tolist() == pytest.approx(
        [SEARCH_ALPHA[5]])
    # 5 folds: no bootstrap band anywhere, and the legend does not promise one
    assert not sens.stats["band"] and sens.data["band_low"].isna().all()
    assert "no band: 5 folds" in sens.stats["legend"][0]
    completed = np.arange(16) != 5
    first = a.sort_values("x_low").iloc[0]
    lo, hi = first["x_low"], first["x_high"]
    in_bin = (SEARCH_ALPHA - lo >= 0) & (hi - SEARCH_ALPHA >= 0) & completed
    assert first["mean"] == pytest.approx(SEARCH_FINAL[in_bin].mean())
    hist = r.figures["grade_history"].data
    np.testing.assert_allclose(hist["value"], SEARCH_FINAL)
    # the best-so-far line follows completed trials only
    best = pd.Series(np.where(completed, SEARCH_FINAL, np.nan)).cummax().ffill()
    np.testing.assert_allclose(hist["best_so_far"], best)
    assert r.study.trials.set_index("status").loc["STOPPED_EARLY", "final_source"] == "last val_auc"
    # the best configuration is the best completed trial, with its logged per-fold values
    b = r.best["grade"]
    i = int(np.argmax(np.where(completed, SEARCH_FINAL, -np.inf)))
    assert b.kind == "trial" and b.value == pytest.approx(SEARCH_FINAL[i])
    np.testing.assert_allclose(b.per_fold.sort_values("fold")["auc"],
                               [SEARCH_ROWS[i]["folds"][f] for f in FOLDS])
    assert b.searched == ["alpha", "lam", "lr"]
    assert b.params["alpha"] == pytest.approx(SEARCH_ALPHA[i])
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


# --- budgets are never mixed --------------------------------------------------------------

def _budget_rows() -> list[dict]:
    """Flat in alpha at the full budget (AUC ~0.80); six trials ASHA stopped after 2 epochs, all
    at alpha = 0.6, with their (low) last values: mixing them in draws a dip at 0.6."""
    rng = np.random.default_rng(5)
    rows = []
    for a in (0.2, 0.4, 0.6, 0.8):
        for _ in range(3):
            base = 0.80 + 0.004 * rng.standard_normal()
            rows.append({"method": "cgcoord", "seed": 0,
                         "params": {"alpha": a, "lam": float(10 ** rng.uniform(-3, 0))},
                         "folds": {f: base + 0.01 * (f - 2) + 0.003 * rng.standard_normal()
                                   for f in FOLDS}})
    for j in range(6):
        rows.append({"method": "cgcoord", "seed": 0, "status": "STOPPED_EARLY",
                     "final": 0.62 + 0.01 * j, "epochs_run": 2,
                     "params": {"alpha": 0.6, "lam": float(10 ** rng.uniform(-3, 0))}})
    return rows


def test_stopped_trials_never_mix_with_completed_ones(tmp_path):
    rows = _budget_rows()
    study = make_study(rows, parent_tags={"ks.sampler": "tpe"})
    done = [r for r in rows if r.get("status", "COMPLETED") == "COMPLETED"]
    final = {id(r): np.mean([r["folds"][f] for f in FOLDS]) for r in done}
    at = {a: [final[id(r)] for r in done if r["params"]["alpha"] == a]
          for a in (0.2, 0.4, 0.6, 0.8)}
    # the trap is real: mixing the stopped trials in would make a dip of ~0.1 at alpha = 0.6
    mixed_06 = np.mean(at[0.6] + [r["final"] for r in rows if r.get("status") == "STOPPED_EARLY"])
    assert np.mean(at[0.4]) - mixed_06 > 0.05

    fig = figures.sensitivity(study.trials, study.folds, "auc", "grade", "alpha",
                              tmp_path / "sens.png")
    d = fig.data.set_index("x_low")
    assert list(d["n"]) == [3, 3, 3, 3]
    for a, values in at.items():
        assert d.loc[a, "mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert d["mean"].max() - d["mean"].min() < 0.02  # no dip
    stopped = fig.stats["stopped"]
    assert len(stopped) == 6 and (stopped["x"] == 0.6).all()
    legend = " ".join(fig.stats["legend"])
    assert "6 stopped early by ASHA after ≤ 2 epochs (last value; not in the mean)" in legend
    assert "bootstrap" not in legend and "no band: 5 folds" in legend  # 5 folds: no band

    table = summary.summary_table(study).iloc[0]
    completed = np.array([final[id(r)] for r in done])
    assert (table["completed"], table["stopped"]) == (12, 6)
    assert table["mean"] == pytest.approx(completed.mean())
    assert table["sd"] == pytest.approx(completed.std(ddof=1))
    assert table["best"] == pytest.approx(completed.max())
    assert summary.best_trial(study)["status"] == "COMPLETED"
    m = stats.describe_methods(study.folds, study.trials, "auc", "grade").iloc[0]
    assert (m["n_values"], m["stopped_early"]) == (60, 6)
    assert m["mean"] == pytest.approx(np.mean([r["folds"][f] for r in done for f in FOLDS]))
    assert len(figures.rebuild_study(study.trials, "grade").trials) == 12  # fANOVA input

    r = compare.analyse(study, tmp_path / "report", n_boot=200, log_to_mlflow=False,
                        progress=_quiet)
    text = (r.out_dir / "report.md").read_text()
    assert "6 trial(s) were stopped early by the scheduler (ASHA)" in text
    assert "left out of the method summaries" in text
    assert len(r.figures["grade_importance"].data)  # drawn, from the 12 completed trials


def test_sensitivity_band_is_the_documented_fold_bootstrap(tmp_path):
    """A band from 6 folds is the documented fold bootstrap; from 5 folds none is drawn."""
    rows = _budget_rows()
    rng = np.random.default_rng(8)
    six = [{**r, "folds": {**r["folds"], 5: r["folds"][4] + 0.003 * rng.standard_normal()}}
           if r.get("status") is None else r for r in rows]
    study = make_study(six, n_folds=6)
    fig = figures.sensitivity(study.trials, study.folds, "auc", "grade", "alpha",
                              tmp_path / "s.png", n_boot=500, seed=3)
    assert fig.stats["band"] and figures.legend_problems(fig.figure) == []
    row = fig.data.set_index("x_low").loc[0.2]
    v = np.array([[r["folds"][f] for f in range(6)] for r in six
                  if r.get("status") is None and r["params"]["alpha"] == 0.2])
    idx = np.random.default_rng(3).integers(0, 6, size=(500, 6))
    stat = v[:, idx].mean(axis=2).mean(axis=0)
    assert [row["band_low"], row["band_high"]] == pytest.approx(
        list(np.quantile(stat, [0.025, 0.975])), abs=1e-12)
    assert row["band_low"] < row["mean"] < row["band_high"]
    # the same trials over 5 folds: points and means only, no band, no interval
    five = make_study(rows)
    fig = figures.sensitivity(five.trials, five.folds, "auc", "grade", "alpha",
                              tmp_path / "five.png", n_boot=500, seed=3)
    assert not fig.stats["band"] and fig.data["band_low"].isna().all()
    assert fig.stats["n_folds"] == 5 and figures.legend_problems(fig.figure) == []
    # without per-fold values there is no band, and the legend says so
    bare = make_study([{**r, "folds": {}, "final": 0.8} for r in rows
                       if r.get("status") is None])
    fig = figures.sensitivity(bare.trials, bare.folds, "auc", "grade", "alpha",
                              tmp_path / "bare.png")
    assert fig.data["band_low"].isna().all() and not fig.stats["band"]
    legend = " ".join(fig.stats["legend"])
    assert "no band" in legend and "bootstrap" not in legend


# --- the report a reviewer reads ----------------------------------------------------------

def test_effects_printed_with_the_digits_they_need():
    assert fmt.effect(1e-5, -5e-6, 2.5e-5) == "+0.000010 (95% CI -0.000005 to +0.000025)"
    assert fmt.effect(0.0213, 0.0048, 0.0371) == "+0.021 (95% CI +0.005 to +0.037)"
    assert fmt.effect(0.3, 0.1, 0.5) == "+0.30 (95% CI +0.10 to +0.50)"
    assert fmt.effect(0.0, 0.0, 0.0) == "0 (every paired difference is exactly zero)"
    assert fmt.effect(-0.02, np.nan, np.nan) == "-0.020"
    assert fmt.pvalue(0.0004) == "<0.001" and fmt.p_eq(0.0123) == "= 0.0123"


def test_selection_rule_named_from_patience():
    def trials(patience):
        rows = [{"method": "uniform", "seed": s, "folds": {0: 0.7},
                 "params": {} if p is None else {"patience": p}}
                for s, p in enumerate(patience)]
        return make_study(rows, n_folds=1).trials

    assert compare.selection_rule(trials([0, 0])) == "last epoch"
    assert compare.selection_rule(trials([5, 5])) == "best epoch, early stopping with patience 5"
    assert compare.selection_rule(trials([0, 5])) == (
        "last epoch (1 trials); best epoch, early stopping with patience 5 (1 trials)")
    assert compare.selection_rule(trials([None])).startswith("not recorded")


def test_history_only_for_searches():
    grid_tag = make_study(SEARCH_ROWS, parent_tags={"ks.sampler": "grid"})
    assert not compare.is_search(grid_tag, "grade")
    assert compare.is_search(make_study(SEARCH_ROWS), "grade")  # several trials per seed
    assert compare.is_search(make_study(_ablation_table(), parent_tags={"ks.sampler": "tpe"}),
                             "grade")
    assert not compare.is_search(make_study(_ablation_table()), "grade")


TINY = {m: np.round(0.7 + 0.01 * np.arange(15).reshape(3, 5), 6) for m in ("uniform",)}


def _tiny_rows(patience: int = 0) -> list[dict]:
    """cgcoord = uniform + 1e-5 * (1 + small): an effect far below 0.001."""
    rng = np.random.default_rng(11)
    rows = []
    for s in SEEDS:
        for m, shift in (("uniform", 0.0), ("cgcoord", 1.0)):
            rows.append({"method": m, "seed": s, "params": {"patience": patience},
                         "history": {"val_auc": [0.6, 0.65, 0.7, 0.72]},
                         "folds": {f: float(TINY["uniform"][s, f]
                                            + shift * 1e-5 * (1 + 0.5 * rng.random()))
                                   for f in FOLDS}})
    return rows


STUDY_PARAMS = {"study.epochs": 30, "study.folds": 5, "study.seeds": "0,1,2",
                "study.coord_target": "shared_trunk", "cohort.n_cases": 320,
                "cohort.genes_tumour": 59, "cohort.genes_tme": 48, "cohort.genes_table": 1544,
                "study.space_file": "search_spaces/ablation.yaml"}


def test_report_a_reviewer_can_trust(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = log_study(uri, "tiny", _tiny_rows(), parent_params=STUDY_PARAMS,
                       parent_tags={"ks.sampler": "grid"})
    r = compare.run_compare("tiny", uri, tmp_path / "rep", n_boot=2000, progress=_quiet)
    md = (r.out_dir / "report.md").read_text()
    row = r.comparison.iloc[0]
    assert 0 < row["mean_diff"] < 1e-4
    # the effect as the CI width needs it, never rounded away
    assert "+0.000 (" not in md and "+0.000 to" not in md
    shown = fmt.effect(row["mean_diff"], row["cred_low"], row["cred_high"],
                       level="95% credible interval")
    assert shown in md and shown.startswith("+0.0000")
    assert fmt.interval(row["ci_low"], row["ci_high"]) in md  # the bootstrap, over 15 pairs
    # what the parent recorded, in order, and what it did not
    # the answer first, the configuration last
    headings = [ln for ln in md.splitlines() if ln.startswith("## ")]
    assert headings[0] == "## Conclusion" and headings[-2:] == ["## Study configuration",
                                                                 "## Files"]
    study = md[md.index("## Study configuration"):md.index("## Files")]
    assert "| epochs per trial | 30 | `study.epochs` |" in study
    assert "| coordination target | shared_trunk | `study.coord_target` |" in study
    assert "| genes reaching the model | 107 of 1544 (6.9%) | (derived) |" in study
    assert "| evaluation | not recorded | `study.evaluation` |" in study
    assert "| space file | search_spaces/ablation.yaml | `study.space_file` |" in study
    assert study.index("epochs per trial") < study.index("folds") < study.index("seeds")
    assert "| sampler | grid | `ks.sampler` |" in study
    # selection rule from patience = 0; best configuration with per-fold values; optimism
    assert "| selection rule (grade) | last epoch |" in study
    assert "best-epoch" not in md and "best epoch" not in md
    assert "Best-of-search is optimistically biased" in md
    best = md[md.index("## Best configuration"):md.index("## Per-method results")]
    assert "method **cgcoord**" in best and "each fold's value is taken at the last epoch" in best
    expected = {(row["seed"], f): v for row in _tiny_rows() if row["method"] == "cgcoord"
                for f, v in row["folds"].items()}
    pf = r.best["grade"].per_fold
    assert {(int(a), int(b)): v for a, b, v in zip(pf["seed"], pf["fold"], pf["auc"],
                                                   strict=True)} == pytest.approx(expected)
    assert f"| 2 | 4 | {expected[(2, 4)]:.4f} |" in best
    assert not (r.out_dir / "grade_history.png").exists()  # a grid
    # the same report as self-contained HTML, logged beside report.md
    html = (r.out_dir / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<h2>") == md.count("\n## ") and "<table>" in html
    n_images = md.count("](")
    assert n_images >= 2 and html.count('src="data:image/png;base64,') == n_images
    assert html.count("src=") == n_images  # nothing outside the file
    assert "+0.0000" in html and "optimistically biased" in html
    logged = {f.path for f in MlflowClient(tracking_uri=uri).list_artifacts(parent, "report")}
    assert {"report/report.html", "report/report.md", "report/best_per_fold.csv"} <= logged


def test_nested_hook_is_shown_when_the_study_ran_nested(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "nested", _tiny_rows(patience=5), parent_tags={"ks.evaluation": "nested"})
    r = compare.run_compare("nested", uri, tmp_path / "a", n_boot=200, log_to_mlflow=False,
                            progress=_quiet)
    md = (r.out_dir / "report.md").read_text()
    assert "cannot read its nested estimate yet" in md
    assert "best epoch, early stopping with patience 5" in md
    monkeypatch.setattr(analyse, "nested_estimate", lambda study, task, metric: pd.DataFrame(
        {"outer_fold": [0, 1], "value": [0.61234, 0.65432]}))
    r = compare.run_compare("nested", uri, tmp_path / "b", n_boot=200, log_to_mlflow=False,
                            progress=_quiet)
    md = (r.out_dir / "report.md").read_text()
    assert "**Nested estimate (unbiased)**" in md and "| 1 | 0.6543 |" in md
    assert "Best-of-search is optimistically biased" in md


# --- issue 23: every searched parameter, bounded axes, the study's direction ----------------

#: A search over rules' own parameters (cagrad_c, ogm_*), lr, a flag and a category; AUC near 1.
PANEL_SEARCH = {"lr": "loguniform [1e-05, 0.01]", "cagrad_c": "float [0.1, 0.9]",
                "ogm_alpha": "float [0.1, 1.0]", "ogm_noise": "float [0.0, 1.0]",
                "teacher": "categorical [True, False]",
                "coord_target": "categorical [classifier_rows, shared_trunk]"}


def _panel_rows() -> list[dict]:
    rng = np.random.default_rng(23)
    rows = []
    for i in range(8):
        final = 0.985 + 0.012 * rng.random()  # near the top of the AUC range
        rows.append({"method": "cgcoord", "seed": 0, "trial_id": f"p{i}",
                     "status": "STOPPED_EARLY" if i == 7 else "COMPLETED",
                     "final": 0.9 if i == 7 else None, "epochs_run": 1 if i == 7 else 4,
                     "params": {"lr": float(10 ** rng.uniform(-5, -2)),
                                "cagrad_c": float(rng.uniform(0.1, 0.9)),
                                "ogm_alpha": float(rng.uniform(0.1, 1.0)),
                                "ogm_noise": float(rng.uniform(0.0, 1.0)),
                                "teacher": bool(i % 2), "coord_target": ("classifier_rows",
                                                                         "shared_trunk")[i % 2]},
                     "history": {"val_auc": [0.9, final]},
                     "folds": {f: min(1.0, final + 0.002 * (f - 2)) for f in FOLDS}})
    return rows


def _panel_study(**tags: str):
    study = make_study(_panel_rows(), parent_tags={"ks.sampler": "tpe", **tags})
    study.parent_params = {f"study.search.{k}": v for k, v in PANEL_SEARCH.items()}
    return study


def test_sensitivity_has_one_panel_per_searched_parameter(tmp_path):
    """Issue 23: every searched parameter (read from the study's study.search.* params), numeric
    or categorical, one panel each; no band from 5 folds; AUC axes within [0, 1]."""
    from analysis.report_sections import sensitivity_text
    from analysis.task_figures import _sensitivity

    study = _panel_study()
    r = analyse.Analysis(out_dir=tmp_path, study=study)
    _sensitivity(r, study, "grade", "auc", study.trials, 0, _quiet)
    fig = r.figures["grade_sensitivity"]
    assert fig.stats["panels"] == sorted(PANEL_SEARCH)
    assert len([ax for ax in fig.figure.axes if ax.get_visible()]) == len(PANEL_SEARCH)
    # every panel holds the 7 completed trials (binned) and the stopped trial (hollow)
    data = fig.data.groupby("param")["n"].sum()
    assert (data == 7).all() and set(data.index) == set(PANEL_SEARCH)
    assert set(fig.data.loc[fig.data["param"] == "teacher", "level"]) == {"True", "False"}
    assert len(fig.stats["stopped"]) == len(PANEL_SEARCH) and fig.stats["n_stopped"] == 1
    assert not fig.stats["band"] and figures.legend_problems(fig.figure) == []
    lo, hi = fig.stats["ylim"]
    assert lo >= 0 and hi <= 1  # matplotlib's margin took it above 1
    assert sensitivity_text(fig).startswith(
        "One panel per searched parameter (6: cagrad_c, coord_target, lr, ogm_alpha, "
        "ogm_noise, teacher)")
    assert "no band: a bootstrap over 5 folds" in sensitivity_text(fig)
    # every figure of a metric keeps AUC within its range
    hist = figures.history(study.trials, "auc", "grade", tmp_path / "h.png")
    pf = figures.per_fold(study.folds, "auc", "grade", ["cgcoord"], tmp_path / "p.png")
    curves = pd.DataFrame({"run_id": np.repeat(["a", "b"], 3), "arm": "cgcoord",
                           "key": "val_auc", "step": [1, 2, 3] * 2,
                           "value": [0.97, 0.99, 1.0, 0.95, 0.98, 1.0]})
    learning = figures.epoch_curves(curves, [("val_auc", "AUC")], "grade", "t",
                                    tmp_path / "c.png", bounded=True)  # validation curves
    assert learning.stats["bands"] == 1
    for what in (hist, pf, learning):
        lo, hi = what.figure.axes[0].get_ylim()
        assert lo >= 0 and hi <= 1 and figures.legend_problems(what.figure) == []


def test_a_search_with_one_completed_trial_is_still_best_of_search(tmp_path):
    """Three trials stopped by ASHA, one completed (the smoke study): the model's rows are a
    search's best trial (optimistic), not 'every completed trial of a grid'."""
    from analysis import evaluation as ev

    trial = {"columns": {"role": "trial"}}
    rows = [{**r, **trial, "status": "STOPPED_EARLY", "final": 0.5} for r in SEARCH_ROWS[:3]]
    rows.append({**SEARCH_ROWS[3], **trial})
    rows.append({"method": "logreg_pca", "seed": 0,
                 "folds": {f: 0.7 for f in FOLDS}, "columns": {"role": "baseline"}})
    study = ev.ensure_roles(make_study(rows, parent_tags={"ks.sampler": "tpe"}))
    assert ev.searched_arms(study, "grade", "auc") == ["cgcoord"]
    _, what = ev.model_rows(study, "grade", "auc")
    assert what.startswith("the best completed trial of the search")
    grid = ev.ensure_roles(make_study(rows, parent_tags={"ks.sampler": "grid"}))
    assert ev.model_rows(grid, "grade", "auc")[1] == ev.GRID_ROWS


def test_best_follows_the_studys_direction(tmp_path):
    """ks.mode = min: the best trial, the best method and the history's best-so-far line are
    the lowest values (they were the highest whatever the mode)."""
    study = make_study(SEARCH_ROWS, parent_tags={"ks.sampler": "tpe", "ks.mode": "min"})
    completed = np.arange(16) != 5
    lowest = int(np.argmin(np.where(completed, SEARCH_FINAL, np.inf)))
    assert study.mode == "min"
    assert summary.best_trial(study, "grade")["final"] == pytest.approx(SEARCH_FINAL[lowest])
    b = analyse.best_configuration(study, "grade", "auc")
    assert b.value == pytest.approx(SEARCH_FINAL[lowest])
    hist = figures.history(study.trials, "auc", "grade", tmp_path / "h.png", mode="min").data
    best = pd.Series(np.where(completed, SEARCH_FINAL, np.nan)).cummin().ffill()
    np.testing.assert_allclose(hist["best_so_far"], best)
    grid = make_study(_ablation_table(), parent_tags={"ks.sampler": "grid", "ks.mode": "min"})
    means = {m: np.nanmean(ABL[m][[0, 1]]) for m in METHODS}  # pcgrad seed 2 failed
    assert analyse.best_configuration(grid, "grade", "auc").label == "uniform" \
        == min(means, key=means.get)
    assert make_study(SEARCH_ROWS).mode == "max"  # no tag: maximised


def test_study_end_picks_the_best_trial_in_the_studys_direction():
    """study/finish.py: best_config.yaml's trial and the terminal table's order follow the
    study's mode (idxmax whatever the mode before)."""
    from study.finish import best_row, trial_table

    rows = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": "COMPLETED",
                         "param.lr": [1e-3, 1e-4, 1e-2], "val_loss": [0.3, 0.1, 0.5],
                         "epochs": 4, "error": "", "mlflow_run_id": "x", "node_id": "y"})
    assert best_row(rows, "val_loss", "min")["trial_id"] == "b"
    assert best_row(rows, "val_loss", "max")["trial_id"] == "c"
    first = trial_table(rows, "val_loss", mode="min").splitlines()[1]
    assert first.strip().startswith("b")
    assert trial_table(rows, "val_loss").splitlines()[1].strip().startswith("c")
