"""Gene-set builder: public signatures (pirlygenes) matched to real and synthetic cohorts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

from ksmodel.cohort import CohortError, load_cohort
from ksmodel.genesets import (
    INSTALL_HINT,
    SOURCES,
    build_gene_sets,
    cohort_genes,
    main,
    signature_coverage,
)
from ksmodel.importers.mcat import import_mcat
from tests.test_importers import GENES, write_mcat_table  # tests/ is a package

needs_pirlygenes = pytest.mark.skipif(importlib.util.find_spec("pirlygenes") is None,
                                      reason=f"optional extra not installed: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def mcat_cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("genesets")
    table, splits, _ = write_mcat_table(root / "src")
    import_mcat(table, splits, root / "cohort")
    return root / "cohort"


@pytest.fixture(scope="module")
def synthetic_cohort(tmp_path_factory) -> Path:
    from ksmodel.synthetic import generate

    return generate(tmp_path_factory.mktemp("syn") / "cohort", patients=12, patches=4, dim=4,
                    quiet=True)


@needs_pirlygenes
def test_real_gene_names_split_into_tumour_and_tme(mcat_cohort, capsys):
    genes = cohort_genes(mcat_cohort)
    assert genes == GENES
    sets, coverage = build_gene_sets(genes)
    got = dict(zip(sets["gene"], sets["subspace"], strict=True))
    for gene in ("IDH1", "EGFR", "PTEN", "GFAP", "OLIG2", "SOX2", "MGMT", "CDKN2A", "TP53",
                 "ATRX"):
        assert got[gene] == "tumour", gene
    for gene in ("PTPRC", "CD74", "LCK", "CCL5", "COL1A2", "COL3A1", "DCN", "LUM"):
        assert got[gene] == "tme", gene
    assert got["KDR"] == "tme"  # GBM drug target and ESTIMATE stromal gene: tme wins
    assert got["FYB"] == "tme"  # old symbol of ESTIMATE's FYB1, matched through Ensembl
    assert "ACTB" not in got and "GAPDH" not in got
    assert sets["subspace"].tolist() == sorted(sets["subspace"], key=["tumour", "tme"].index)
    cov = coverage.set_index("source")
    assert list(cov.index) == [s.name for s in SOURCES]
    assert cov.loc["estimate_immune", "signature_genes"] == 141
    assert cov.loc["estimate_immune", "in_cohort"] == 5  # PTPRC, CD74, LCK, CCL5, FYB
    assert cov.loc["estimate_immune", "via_ensembl"] == 1
    assert cov.loc["estimate_stromal", "in_cohort"] == 5  # COL1A2, COL3A1, DCN, LUM, KDR
    key = cov.loc["glioma_key_genes"]
    assert key["assigned"] == key["in_cohort"] - 1  # KDR went to tme
    assert (cov["coverage"] == cov["in_cohort"] / cov["signature_genes"]).all()


@needs_pirlygenes
def test_matching_ignores_case_and_is_deterministic():
    a, _ = build_gene_sets(["egfr", "PTPRC", "Gfap", "DCN"])
    b, _ = build_gene_sets(["DCN", "Gfap", "PTPRC", "egfr"])
    pd.testing.assert_frame_equal(a, b)
    assert a.to_dict("list") == {"gene": ["Gfap", "egfr", "DCN", "PTPRC"],
                                 "subspace": ["tumour", "tumour", "tme", "tme"]}


@needs_pirlygenes
def test_synthetic_gene_names_have_zero_coverage(synthetic_cohort):
    genes = cohort_genes(synthetic_cohort)
    assert genes and all(g.startswith(("TUM_", "TME_", "BG_")) for g in genes)
    coverage = signature_coverage(genes)
    assert (coverage["in_cohort"] == 0).all() and (coverage["signature_genes"] > 0).all()
    with pytest.raises(CohortError, match=r"tumour and tme set\(s\) would be empty.*0 matched"
                                          r".*gene_sets\.csv") as err:
        build_gene_sets(genes)
    assert "estimate_immune" in str(err.value)  # the coverage table is part of the message


@needs_pirlygenes
def test_one_empty_side_is_an_error():
    with pytest.raises(CohortError, match=r"the tme set\(s\) would be empty.*2 matched"):
        build_gene_sets(["EGFR", "IDH1", "TUM_001"])


@needs_pirlygenes
def test_cli_prints_coverage_and_writes_loadable_gene_sets(mcat_cohort, capsys):
    out = mcat_cohort / "gene_sets.csv"
    assert main(["--cohort", str(mcat_cohort)]) == 0
    printed = capsys.readouterr().out
    assert "estimate_immune" in printed and "glioma_drivers_markers" in printed
    assert "in both, assigned to tme: KDR" in printed
    sets = pd.read_csv(out)
    assert list(sets.columns) == ["gene", "subspace"]
    cohort = load_cohort(mcat_cohort, tasks=["survival"], require_features=False)
    assert cohort.gene_sets["tme"] == sorted(cohort.gene_sets["tme"])
    assert set(cohort.expression.columns) == set(sets["gene"])
    assert main(["--cohort", str(mcat_cohort)]) == 2  # never overwrites a gene-set file silently
    assert "--force" in capsys.readouterr().err


@needs_pirlygenes
def test_cli_on_synthetic_cohort_explains_zero_coverage(synthetic_cohort, tmp_path, capsys):
    assert main(["--cohort", str(synthetic_cohort), "--out", str(tmp_path / "gs.csv")]) == 2
    err = capsys.readouterr().err
    assert "would be empty" in err and "436 genes (BG_001" in err and "0 matched" in err
    assert not (tmp_path / "gs.csv").exists()


def test_missing_pirlygenes_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pirlygenes", None)  # makes `import pirlygenes` fail
    with pytest.raises(ImportError, match=r"pip install 'ks-study\[genesets\]'"):
        build_gene_sets(["EGFR"])


def test_cohort_without_expression_table(tmp_path):
    with pytest.raises(CohortError, match="no expression.parquet or expression.csv"):
        cohort_genes(tmp_path)
