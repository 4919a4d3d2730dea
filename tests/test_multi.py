"""analysis/multi.py: Friedman test, post-hoc mean ranks, critical difference, effect on the update.

Every number is recomputed here from the planted values with scipy directly (blocks built from
the raw arrays, not from the module's matrix).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import compare, figures, multi

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from tests.analysis_fixtures import log_study, make_study
except ModuleNotFoundError:
    from analysis_fixtures import log_study, make_study

SEEDS, FOLDS = (0, 1, 2), (0, 1, 2, 3, 4)
METHODS = ("uniform", "pcgrad", "cgcoord", "mgda", "upgrad")
SHIFT = {"uniform": 0.0, "pcgrad": 0.004, "cgcoord": 0.01, "mgda": 0.03, "upgrad": 0.012}


def _values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    base = 0.70 + 0.05 * rng.random((3, 5))
    return {m: base + SHIFT[m] + 0.008 * rng.standard_normal((3, 5)) for m in METHODS}


VALUES = _values()
REL_CHANGE = {"uniform": 0.0, "pcgrad": 0.05, "cgcoord": 0.03, "mgda": 0.4, "upgrad": 0.2}


def _rows(drop: tuple[str, int, int] | None = None, failed: tuple[str, int] | None = None):
    rows = []
    for m in METHODS:
        for s in SEEDS:
            if failed == (m, s):
                rows.append({"method": m, "seed": s, "status": "FAILED", "error": "boom"})
                continue
            folds = {f: float(VALUES[m][s, f]) for f in FOLDS}
            if drop and drop[:2] == (m, s):
                folds[drop[2]] = math.nan
            rows.append({"method": m, "seed": s, "folds": folds, "history": {
                "coord/rel_change": [REL_CHANGE[m] * (1 + 0.1 * e + 0.05 * s)
                                     for e in range(3)],
                "coord/layer_cos": [0.2 - 0.01 * e for e in range(3)],
                "val_auc": [0.6, 0.65, float(VALUES[m][s].mean())]}})
    return rows


def _blocks(keep=lambda s, f: True) -> np.ndarray:
    """blocks x methods from the raw values, in (seed, fold) order."""
    return np.array([[VALUES[m][s, f] for m in METHODS] for s in SEEDS for f in FOLDS
                     if keep(s, f)])


def test_friedman_and_ranks_equal_scipy_on_the_same_blocks():
    fr = multi.friedman(make_study(_rows()).folds, "auc", "grade")
    x = _blocks()
    res = sps.friedmanchisquare(*x.T)
    assert fr.n_blocks == 15 and fr.n_dropped == 0
    assert fr.statistic == pytest.approx(res.statistic, rel=1e-12)
    assert fr.p == pytest.approx(res.pvalue, rel=1e-12)
    # mean ranks, 1 = best (highest AUC)
    ranks = sps.rankdata(-x, axis=1).mean(axis=0)
    assert fr.mean_ranks.to_dict() == pytest.approx(dict(zip(METHODS, ranks, strict=True)))
    assert list(fr.mean_ranks.index) == [METHODS[i] for i in np.argsort(ranks, kind="stable")]
    assert fr.mean_ranks.index[0] == "mgda"  # the planted best
    # Nemenyi: p = P(studentized range(k, inf) > |R_i - R_j| / sqrt(k(k+1)/(6N)) * sqrt(2))
    k, n = len(METHODS), len(x)
    for i, a in enumerate(METHODS):
        for j, b in enumerate(METHODS):
            if i < j:
                q = abs(ranks[i] - ranks[j]) / math.sqrt(k * (k + 1) / (6 * n))
                expected = sps.studentized_range.sf(q * math.sqrt(2), k, np.inf)
                assert fr.posthoc.loc[a, b] == pytest.approx(expected, rel=1e-6)
    # CD (Demsar 2006): q_0.05 for k = 5 is 2.728 (his Table 5)
    assert fr.cd == pytest.approx(2.728 * math.sqrt(k * (k + 1) / (6 * n)), rel=1e-3)
    # the diagram's bars and the CD agree: p >= alpha exactly when |R_i - R_j| < CD
    for a in METHODS:
        for b in METHODS:
            if a != b:
                close = abs(fr.mean_ranks[a] - fr.mean_ranks[b]) < fr.cd
                assert close == (fr.posthoc.loc[a, b] >= fr.alpha)
    tab = fr.table().set_index("arm")
    assert tab.loc["mgda", "mean"] == pytest.approx(VALUES["mgda"].mean())
    assert "uniform" in tab.loc["mgda", "differs_from"]


def test_incomplete_blocks_are_dropped_and_counted():
    # one fold of pcgrad not logged, and every fold of upgrad seed 2 lost to a failed run
    study = make_study(_rows(drop=("pcgrad", 1, 3), failed=("upgrad", 2)))
    fr = multi.friedman(study.folds, "auc", "grade")
    keep = lambda s, f: (s, f) != (1, 3) and s != 2  # noqa: E731
    x = _blocks(keep)
    assert (fr.n_blocks, fr.n_dropped) == (len(x), 6) == (9, 6)
    assert set(zip(fr.dropped["seed"], fr.dropped["fold"], strict=True)) == (
        {(1, 3)} | {(2, f) for f in FOLDS})
    assert fr.dropped.set_index(["seed", "fold"]).loc[(1, 3), "missing"] == "pcgrad"
    assert fr.statistic == pytest.approx(sps.friedmanchisquare(*x.T).statistic, rel=1e-12)
    assert fr.p == pytest.approx(sps.friedmanchisquare(*x.T).pvalue, rel=1e-12)


def test_two_methods_or_a_search_are_not_ranked():
    two = make_study([r for r in _rows() if r["method"] in ("uniform", "cgcoord")])
    assert multi.friedman(two.folds, "auc", "grade") is None
    # a method with several runs per (seed, fold) (a search) is left out, and said so
    extra = [{"method": "pcgrad", "seed": 0, "trial_id": "again",
              "folds": {f: 0.5 for f in FOLDS}}]
    fr = multi.friedman(make_study(_rows() + extra).folds, "auc", "grade")
    assert fr.excluded == ["pcgrad"] and "pcgrad" not in fr.arms and len(fr.arms) == 4
    # every method tied in every block: no test, a note
    tied = [{**r, "folds": {f: 0.7 for f in FOLDS}} for r in _rows()]
    fr = multi.friedman(make_study(tied).folds, "auc", "grade")
    assert np.isnan(fr.p) and "ties" in fr.note


def test_critical_difference_formula():
    # Demsar (2006) Table 5: q_0.05 = 1.960, 2.343, 2.569 for k = 2, 3, 4
    for k, q in ((2, 1.960), (3, 2.343), (4, 2.569)):
        assert multi.critical_difference(k, 10) == pytest.approx(
            q * math.sqrt(k * (k + 1) / 60), rel=1e-3)


def test_update_effect_is_mean_of_per_run_means():
    hist = pd.DataFrame([
        {"run_id": f"{m}{s}", "arm": m, "method": m, "task": "grade", "key": key,
         "step": e + 1, "value": v}
        for m in ("uniform", "mgda") for s in SEEDS for key, values in
        _rows()[METHODS.index(m) * 3 + s]["history"].items() for e, v in enumerate(values)])
    eff = multi.update_effect(hist).set_index(["arm", "key"])
    per_run = [np.mean([REL_CHANGE["mgda"] * (1 + 0.1 * e + 0.05 * s) for e in range(3)])
               for s in SEEDS]
    row = eff.loc[("mgda", "coord/rel_change")]
    assert row["n_runs"] == 3
    assert row["mean"] == pytest.approx(np.mean(per_run))
    assert row["sd"] == pytest.approx(np.std(per_run, ddof=1))
    assert eff.loc[("uniform", "coord/rel_change"), "mean"] == 0.0
    assert set(eff.index.get_level_values("key")) == {"coord/rel_change", "coord/layer_cos"}


def test_cd_diagram_draws_the_ranks(tmp_path):
    fr = multi.friedman(make_study(_rows()).folds, "auc", "grade")
    res = figures.cd_diagram(fr, tmp_path / "cd.png")
    assert res.path.stat().st_size > 10_000
    assert res.data.set_index("arm")["mean_rank"].to_dict() == pytest.approx(
        fr.mean_ranks.to_dict())
    assert res.stats["cd"] == fr.cd


def test_report_ranks_all_methods_and_explains_the_update(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "methods", _rows(drop=("pcgrad", 1, 3)), parent_tags={"ks.sampler": "grid"})
    r = compare.run_compare("methods", uri, tmp_path / "rep", n_boot=200, log_to_mlflow=False,
                            progress=lambda _m: None)
    md = (r.out_dir / "report.md").read_text()
    assert "## All methods together: Friedman test and mean ranks" in md
    assert "14 complete (seed, fold) blocks used, 1 dropped (seed 1 fold 3: no pcgrad)" in md
    x = _blocks(lambda s, f: (s, f) != (1, 3))
    res = sps.friedmanchisquare(*x.T)
    assert f"Friedman χ² = {res.statistic:.3g} (4 df)" in md
    assert (r.out_dir / "grade_cd_auc.png").stat().st_size > 10_000
    assert "](grade_cd_auc.png)" in md
    fried = pd.read_csv(r.out_dir / "friedman.csv").set_index("arm")
    assert fried["friedman_p"].iloc[0] == pytest.approx(res.pvalue, rel=1e-9)
    assert fried["n_dropped_blocks"].iloc[0] == 1
    eff = pd.read_csv(r.out_dir / "update_effect.csv").set_index(["arm", "key"])
    per_run = [np.mean([0.4 * (1 + 0.1 * e + 0.05 * s) for e in range(3)]) for s in SEEDS]
    assert eff.loc[("mgda", "coord/rel_change"), "mean"] == pytest.approx(np.mean(per_run))
    assert "## Effect on the update" in md
    assert f"{np.mean(per_run):.4f} ± {np.std(per_run, ddof=1):.4f}" in md
    # one telemetry figure per key, methods drawn with distinct markers
    assert (r.out_dir / "grade_telemetry_rel_change.png").is_file()
    assert (r.out_dir / "grade_telemetry_layer_cos.png").is_file()
