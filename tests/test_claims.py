"""analysis/claims.py: one row per variant against the reference, with the verdict the statistics
allow. Numbers are recomputed here from the planted values with numpy / scipy."""

from __future__ import annotations

import baycomp
import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import claims, compare
from analysis.verdict import correlated_verdict

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from tests.analysis_fixtures import log_study, make_study
except ModuleNotFoundError:
    from analysis_fixtures import log_study, make_study

SEEDS, FOLDS = (0, 1, 2), (0, 1, 2, 3, 4)
#: variant -> planted shift against the reference 'full' (reference − variant = -shift)
PLANTED = {"full": 0.0, "histology_only": -0.08,  # must lose clearly: claim supported
           "no_teacher": 0.0,                     # no planted effect: not supported
           "genomics_only": +0.03,                # better than the reference: contradicted
           "my_tweak": -0.002}                    # generic wording, tiny effect


def _values() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(21)
    base = 0.72 + 0.05 * rng.random((3, 5))
    return {v: base + s + 0.01 * rng.standard_normal((3, 5)) for v, s in PLANTED.items()}


VALUES = _values()


def _rows(variants=PLANTED, method_as_variant: bool = True) -> list[dict]:
    return [{"method": v if method_as_variant else "cgcoord", "seed": s,
             "folds": {f: float(VALUES[v][s, f]) for f in FOLDS},
             "tags": {"ks.variant": v}, "columns": {"variant": v}}
            for v in variants for s in SEEDS]


def _diff(variant: str) -> np.ndarray:
    return (VALUES["full"] - VALUES[variant]).ravel()  # (seed, fold) order


def test_claims_table_matches_scipy_and_gives_verdicts():
    study = make_study(_rows())
    c = claims.claims_table(study.folds, "auc", "grade", "full", n_boot=2000)
    t = c.table.set_index("variant")
    assert set(t.index) == set(PLANTED) - {"full"}
    p = {}
    for v in t.index:
        d = _diff(v)
        row = t.loc[v]
        assert row["n_pairs"] == 15 and row["mean_diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert row["win_rate"] == pytest.approx((d > 0).mean())
        p[v] = sps.wilcoxon(d).pvalue  # 15 non-zero pairs: Wilcoxon can reach significance
        assert row["wilcoxon_p"] == pytest.approx(p[v], rel=1e-9)
        assert row["ci_low"] < d.mean() < row["ci_high"]
        # the correlated t-test of reference vs variant: 5 folds x 3 seeds, ROPE 0.01
        ref = VALUES["full"].ravel()
        probs = baycomp.two_on_single(ref, VALUES[v].ravel(), rope=0.01, runs=3)
        assert (row["p_better"], row["p_equivalent"], row["p_worse"]) == pytest.approx(
            probs, abs=1e-6)
        assert row["rope"] == 0.01 and row["folds"] == 5 and row["runs"] == 3
        assert "3 seeds" in row["design"]
    # Holm across the four rows, by hand
    order = sorted(p, key=p.get)
    running = 0.0
    for i, v in enumerate(order):
        running = max(running, min(1.0, (4 - i) * p[v]))
        assert t.loc[v, "holm_p"] == pytest.approx(running, rel=1e-9)
    assert t.loc["histology_only", "verdict"] == "supported"  # −0.08: far outside ±0.01
    assert t.loc["genomics_only", "verdict"] == "contradicted"  # +0.03 the other way
    assert t.loc["no_teacher", "verdict"] in ("undecided", "equivalent within ±0.01")
    assert t.loc["histology_only", "claim"] == "adding genomics raises AUC"
    assert t.loc["genomics_only", "claim"] == "adding histology raises AUC"
    assert t.loc["no_teacher", "claim"] == "the multi-modal teacher raises AUC"
    assert t.loc["my_tweak", "claim"] == "full raises AUC over my_tweak"


def test_claim_wording_for_every_known_variant():
    assert claims.claim_text("no_decomposition", "cindex", "full") == (
        "gene decomposition (tumour/TME) raises the C-index")
    assert claims.claim_text("no_consistency", "auc", "full") == (
        "the gene-guided consistency loss raises AUC")
    assert claims.claim_text("no_coordination", "auc", "full") == (
        "gradient coordination raises AUC")
    ref = np.array([0.80, 0.82, 0.79, 0.81, 0.83])
    word = {w: claims.claim_verdict(correlated_verdict(ref, ref - s, folds=5, rope=0.01))
            for w, s in (("win", 0.1), ("loss", -0.1), ("tie", 0.0))}
    assert word == {"win": "supported", "loss": "contradicted",
                    "tie": "equivalent within ±0.01"}
    mixed = correlated_verdict(ref, ref - np.array([0.02, -0.03, 0.025, -0.015, 0.03]),
                               folds=5, rope=0.01)
    assert claims.claim_verdict(mixed) == "undecided"


def test_five_folds_reach_a_verdict_wilcoxon_cannot():
    """Issue 21: one seed, 5 folds, the reference wins every fold by ≫ ROPE - Wilcoxon's floor is
    2/2^5 = 0.0625, so it is not run; the correlated test says "supported"."""
    few = [{"method": v, "seed": 0, "folds": {f: float(VALUES[v][0, f]) for f in FOLDS}}
           for v in ("full", "histology_only")]
    study = make_study(few)
    row = claims.claims_table(study.folds, "auc", "grade", "full", n_boot=200).table.iloc[0]
    assert row["n_pairs"] == 5 and np.isnan(row["wilcoxon_p"])
    assert "never reach p < 0.05" in row["note"]
    assert np.isnan(row["ci_low"])  # no bootstrap interval from 5 pairs
    assert row["verdict"] == "supported" and row["p_better"] > 0.95
    assert "one run of 5 folds" in row["design"]


def test_reference_and_variant_problems_are_notes():
    study = make_study(_rows())
    c = claims.claims_table(study.folds, "auc", "grade", "nope")
    assert c.table.empty and "reference 'nope' is not among the variants" in c.notes[0]
    # variants recorded in their own column (tag ks.variant), every run the same method
    study = make_study(_rows(method_as_variant=False))
    assert set(study.folds["arm"]) == {"cgcoord"}
    t = claims.claims_table(study.folds, "auc", "grade", "full", by="variant",
                            n_boot=200).table
    assert len(t) == 4
    assert t.set_index("variant").loc["histology_only", "mean_diff"] == pytest.approx(
        _diff("histology_only").mean())


def test_report_shows_the_claims_table(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "paper_ablations", _rows(), parent_tags={"ks.sampler": "grid"})
    r = compare.run_compare("paper_ablations", uri, tmp_path / "rep", reference="full",
                            n_boot=2000, log_to_mlflow=False, progress=lambda _m: None)
    md = (r.out_dir / "report.md").read_text()
    assert "## Claims" in md and "reference variant **full**" in md
    csv = pd.read_csv(r.out_dir / "claims.csv").set_index("variant")
    assert csv.loc["histology_only", "verdict"] == "supported"
    line = next(ln for ln in md.splitlines() if ln.startswith("| adding genomics raises AUC"))
    assert "**supported**" in line and "| histology_only | 15 |" in line and "±0.01" in line
    conclusion = md[md.index("## Conclusion"):md.index("## Claims")]
    assert "“adding histology raises AUC”: **contradicted** (**full** vs **genomics_only**" \
        in conclusion
    assert "P(full better)" in conclusion and "P(equivalent within ±0.01)" in conclusion
    # without a reference (argument or ks.reference tag) there is no claims table
    r = compare.run_compare("paper_ablations", uri, tmp_path / "rep2", n_boot=200,
                            log_to_mlflow=False, progress=lambda _m: None)
    assert "## Claims" not in (r.out_dir / "report.md").read_text()
    # the study's own ks.reference tag is enough
    log_study(uri, "tagged", _rows(), parent_tags={"ks.reference": "full"})
    r = compare.run_compare("tagged", uri, tmp_path / "rep3", n_boot=200, log_to_mlflow=False,
                            progress=lambda _m: None)
    assert r.reference == "full" and len(r.claims) == 4
