"""MCAT-layout importer: a small TCGA-like table and published splits written in that layout."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ksmodel.cohort import CohortError, load_cohort
from ksmodel.config import TrainConfig
from ksmodel.importers.mcat import DAYS_PER_MONTH, derive_labels, import_mcat, main
from ksmodel.splits import check_folds, load_splits

# Real symbols: tumour-side (IDH1, EGFR, ...), TME-side (PTPRC, COL1A2, ...; KDR is on both sides
# in the signatures; FYB is the old symbol of ESTIMATE's FYB1), and two genes in neither.
GENES = ["IDH1", "EGFR", "PTEN", "GFAP", "OLIG2", "SOX2", "MGMT", "CDKN2A", "TP53", "ATRX",
         "PTPRC", "CD74", "LCK", "CCL5", "COL1A2", "COL3A1", "DCN", "LUM", "KDR", "FYB",
         "ACTB", "GAPDH"]

# case -> (oncotree code, IDH1_mut, ATRX_mut, TP53_mut, slides, expected diagnosis, grade)
CASES = {
    "TCGA-AA-0001": ("GBM", 0, 0, 1, 1, 0, 4),
    "TCGA-AA-0002": ("GBM", 1, 1, 1, 2, 1, 4),
    "TCGA-AA-0003": ("ASTR", 1, 1, 1, 1, 2, 2),
    "TCGA-AA-0004": ("AASTR", 1, 0, 0, 3, 2, 3),
    "TCGA-AA-0005": ("ODG", 1, 0, 0, 1, 3, 2),
    "TCGA-AA-0006": ("AODG", 1, 0, 0, 2, 3, 3),
    "TCGA-AA-0007": ("OAST", 1, 0, 0, 1, 3, 2),
    "TCGA-AA-0008": ("AOAST", 1, 1, 0, 1, 2, 3),
    "TCGA-AA-0009": ("ASTR", 0, 0, 0, 2, 0, 2),
    "TCGA-AA-0010": ("ODG", 1, 0, 1, 1, 2, 2),
    "TCGA-AA-0011": ("AOAST", 1, 0, 0, 1, 3, 3),
    "TCGA-AA-0012": ("GBM", 0, 0, 0, 2, 0, 4),
    "TCGA-AA-0013": ("OAST", 0, 1, 1, 1, 0, 2),
    "TCGA-AA-0014": ("AASTR", 0, 0, 0, 1, 0, 3),
    "TCGA-AA-0015": ("GBM", 1, 0, 0, 1, 1, 4),
}
FOLDS = {case: i % 5 for i, case in enumerate(CASES)}  # 3 cases per fold


def slide_name(case: str, j: int) -> str:
    return f"{case}-01Z-00-DX{j + 1}.{zlib.crc32(f'{case}{j}'.encode()):08X}.svs"


def write_mcat_table(root: Path, *, zipped: bool = False, seed: int = 0,
                     case_id_column: bool = True) -> tuple[Path, Path, pd.DataFrame]:
    """The MCAT layout: unnamed index, metadata columns, <gene>_cnv, <gene>_mut, <gene>_rnaseq;
    splits_k.csv with ,train,val (val shorter -> padded). Returns (table, splits dir, table df)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (case, (code, idh, atrx, tp53, n_slides, _, _)) in enumerate(CASES.items()):
        expr = np.round(rng.normal(size=len(GENES)), 4)  # same z-scores on every slide row
        months = round(float(rng.uniform(1, 120)), 2)
        for j in range(n_slides):
            row = {"case_id": case, "slide_id": slide_name(case, j), "age": 30 + i,
                   "site": "AA", "survival_months": months, "censorship": i % 3 == 0,
                   "is_female": i % 2, "oncotree_code": code, "train": 1.0,
                   "EGFR_cnv": int(rng.integers(-2, 3)), "CDKN2A_cnv": 0,
                   "IDH1_mut": idh, "ATRX_mut": atrx, "TP53_mut": tp53}
            row.update({f"{g}_rnaseq": v for g, v in zip(GENES, expr, strict=True)})
            rows.append(row)
    df = pd.DataFrame(rows)
    df["censorship"] = df["censorship"].astype(int)
    root.mkdir(parents=True, exist_ok=True)
    written = df.copy()
    if not case_id_column:  # PORPOISE-era: the unnamed index holds the sample barcode
        written.index = (written["case_id"] + "-01").to_numpy()
        written = written.drop(columns="case_id")
    table = root / ("table.csv.zip" if zipped else "table.csv")
    written.to_csv(table, index=True)
    splits = root / "splits"
    splits.mkdir(exist_ok=True)
    for k in range(5):
        val = [c for c, f in FOLDS.items() if f == k]
        train = [c for c, f in FOLDS.items() if f != k]
        pd.DataFrame({"train": pd.Series(train), "val": pd.Series(val)}).to_csv(
            splits / f"splits_{k}.csv")
    return table, splits, df


def write_gene_sets(cohort: Path) -> None:
    pd.DataFrame({"gene": ["IDH1", "EGFR", "GFAP", "PTPRC", "COL1A2", "KDR"],
                  "subspace": ["tumour"] * 3 + ["tme"] * 3}).to_csv(cohort / "gene_sets.csv",
                                                                   index=False)


@pytest.fixture
def imported(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    table, splits, df = write_mcat_table(tmp_path / "src")
    out = tmp_path / "cohort"
    import_mcat(table, splits, out)
    return out, df


def test_clinical_table_is_per_slide_with_converted_survival(imported):
    out, df = imported
    clinical = pd.read_parquet(out / "clinical.parquet")
    assert list(clinical.columns[:6]) == ["case_id", "slide_id", "diagnosis", "grade",
                                          "survival_days", "event"]
    assert {"age", "site", "is_female", "oncotree_code", "idh_mutant"} <= set(clinical.columns)
    assert len(clinical) == len(df) == sum(c[4] for c in CASES.values())
    assert clinical.groupby("case_id").size()["TCGA-AA-0004"] == 3  # several slides kept
    assert not clinical["slide_id"].str.endswith(".svs").any()
    assert clinical["slide_file"].str.endswith(".svs").all()
    src = df.drop_duplicates("case_id").set_index("case_id")
    per_case = clinical.drop_duplicates("case_id").set_index("case_id")
    np.testing.assert_allclose(per_case["survival_days"],
                               src.loc[per_case.index, "survival_months"] * 30.44)
    assert DAYS_PER_MONTH == 30.44
    np.testing.assert_array_equal(per_case["event"], 1 - src.loc[per_case.index, "censorship"])
    assert set(per_case["event"]) == {0, 1}


def test_labels_follow_oncotree_code_and_idh(imported):
    out, _ = imported
    per_case = pd.read_parquet(out / "clinical.parquet").drop_duplicates("case_id")
    got = {r.case_id: (r.diagnosis, r.grade) for r in per_case.itertuples()}
    want = {case: (v[5], v[6]) for case, v in CASES.items()}
    assert got == want


@pytest.mark.parametrize(("code", "idh", "astro", "diagnosis", "grade"), [
    ("GBM", False, False, 0, 4), ("GBM", True, False, 1, 4), ("GBM", True, True, 1, 4),
    ("AASTR", True, False, 2, 3), ("ASTR", True, False, 2, 2), ("ASTR", False, True, 0, 2),
    ("ODG", True, False, 3, 2), ("ODG", True, True, 2, 2), ("AODG", True, False, 3, 3),
    ("OAST", True, False, 3, 2), ("OAST", True, True, 2, 2), ("AOAST", True, False, 3, 3),
    ("AOAST", False, False, 0, 3),
])
def test_derive_labels_per_code(code, idh, astro, diagnosis, grade):
    out = derive_labels(pd.Series([code]), pd.Series([idh]), pd.Series([astro]))
    assert (out["diagnosis"].iloc[0], out["grade"].iloc[0]) == (diagnosis, grade)


def test_without_atrx_tp53_columns_mixed_histology_is_oligodendroglioma():
    out = derive_labels(pd.Series(["OAST", "AASTR"]), pd.Series([True, True]), None)
    assert out["diagnosis"].tolist() == [3, 2]


def test_expression_one_row_per_case_without_suffix(imported):
    out, df = imported
    expr = pd.read_parquet(out / "expression.parquet")
    assert list(expr.columns) == ["case_id", *GENES]  # no _cnv / _mut columns
    assert expr["case_id"].tolist() == sorted(CASES)
    src = df.drop_duplicates("case_id").set_index("case_id")
    np.testing.assert_allclose(expr.set_index("case_id").to_numpy(),
                               src.loc[sorted(CASES), [f"{g}_rnaseq" for g in GENES]].to_numpy())


def test_published_folds_are_preserved(imported):
    out, _ = imported
    splits = pd.read_parquet(out / "splits.parquet")
    assert list(splits.columns) == ["case_id", "fold"]
    assert dict(zip(splits["case_id"], splits["fold"], strict=True)) == FOLDS


def test_cohort_json_records_provenance_and_approximations(imported):
    out, _ = imported
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["expression"]["log1p"] is False
    assert any("1p/19q not in table" in a for a in meta["approximations"])
    assert meta["survival"]["days_per_month"] == 30.44
    assert meta["counts"]["cases"] == len(CASES) and meta["counts"]["folds"] == 5
    assert meta["labels"]["diagnosis"]["idh_columns"] == ["IDH1_mut"]
    assert meta["gene_sets"]["file"] is None and "ksmodel.genesets" in meta["gene_sets"]["hint"]
    assert len(meta["source"]["table_sha256"]) == 64


def test_imported_cohort_loads_and_splits_validate(imported):
    out, df = imported
    write_gene_sets(out)
    cohort = load_cohort(out, tasks=["survival"], require_features=False)
    assert cohort.feature_dim is None
    assert cohort.case_ids == sorted(CASES)
    assert cohort.cases.loc["TCGA-AA-0004", "slide_ids"] == sorted(
        slide_name("TCGA-AA-0004", j)[:-4] for j in range(3))
    months = df.drop_duplicates("case_id").set_index("case_id").loc[cohort.case_ids,
                                                                    "survival_months"]
    np.testing.assert_allclose(cohort.targets("survival")["time"], months * 30.44)
    splits = load_splits(out / "splits.parquet", cohort)
    check_folds(cohort, splits, "survival")
    full = load_cohort(out, require_features=False)  # diagnosis and grade labels validate too
    assert full.targets("grade")["label"].max() == 2


def test_reads_zipped_table_and_case_id_from_unnamed_index(tmp_path):
    table, splits, _ = write_mcat_table(tmp_path / "src", zipped=True, case_id_column=False)
    report = import_mcat(table, splits, tmp_path / "cohort")
    assert report.n_cases == len(CASES)
    clinical = pd.read_parquet(tmp_path / "cohort" / "clinical.parquet")
    assert set(clinical["case_id"]) == set(CASES)
    assert "unnamed index" in report.metadata["source"]["case_id"]


def test_features_linked_when_present_and_missing_ones_recorded(tmp_path):
    table, splits, df = write_mcat_table(tmp_path / "src")
    feats = tmp_path / "feats"
    (feats / "h5_files").mkdir(parents=True)
    slides = [s[:-4] for s in df["slide_id"]]
    for i, slide in enumerate(slides[:6]):  # CLAM layout for some, flat for others
        folder = feats / "h5_files" if i % 2 else feats
        with h5py.File(folder / f"{slide}.h5", "w") as f:
            f["features"] = np.ones((4, 8), dtype=np.float32)
    out = tmp_path / "cohort"
    with pytest.warns(UserWarning, match="15 of 21 slide"):
        report = import_mcat(table, splits, out, features=feats)
    assert report.slides_with_features == 6
    assert sorted(p.name for p in (out / "features").iterdir()) == sorted(
        f"{s}.h5" for s in slides[:6])
    assert (out / "features" / f"{slides[0]}.h5").is_symlink()
    meta = json.loads((out / "cohort.json").read_text())
    assert sorted(meta["features"]["slides_without_features"]) == sorted(slides[6:])
    write_gene_sets(out)
    assert load_cohort(out, tasks=["survival"], require_features=False).feature_dim == 8
    with pytest.raises(CohortError, match="feature file"):
        load_cohort(out, tasks=["survival"], require_features=True)


def test_missing_column_names_column_and_file(tmp_path):
    table, splits, df = write_mcat_table(tmp_path / "src")
    df.drop(columns="survival_months").to_csv(table)
    with pytest.raises(CohortError, match=r"table\.csv: missing column\(s\) survival_months"):
        import_mcat(table, splits, tmp_path / "cohort")
    df.drop(columns="IDH1_mut").to_csv(table)
    with pytest.raises(CohortError, match="missing column IDH1_mut"):
        import_mcat(table, splits, tmp_path / "cohort")


def test_split_case_not_in_table_names_file_and_case(tmp_path):
    table, splits, _ = write_mcat_table(tmp_path / "src")
    bad = pd.read_csv(splits / "splits_2.csv", index_col=0)
    bad.loc[0, "val"] = "TCGA-ZZ-9999"
    bad.to_csv(splits / "splits_2.csv")
    with pytest.raises(CohortError, match=r"splits_2\.csv: case id TCGA-ZZ-9999 .*not in the"):
        import_mcat(table, splits, tmp_path / "cohort")


def test_case_in_two_val_folds_is_an_error(tmp_path):
    table, splits, _ = write_mcat_table(tmp_path / "src")
    case = next(c for c, f in FOLDS.items() if f == 0)
    other = pd.read_csv(splits / "splits_1.csv", index_col=0)
    other.loc[len(other), "val"] = case
    other["train"] = other["train"].where(other["train"] != case)
    other.to_csv(splits / "splits_1.csv")
    with pytest.raises(CohortError, match=f"{case} is in the val list of two split files"):
        import_mcat(table, splits, tmp_path / "cohort")


def test_duplicate_slide_is_an_error(tmp_path):
    table, splits, df = write_mcat_table(tmp_path / "src")
    pd.concat([df, df.iloc[[3]]], ignore_index=True).to_csv(table)
    with pytest.raises(CohortError, match="duplicate slide"):
        import_mcat(table, splits, tmp_path / "cohort")


def test_unknown_oncotree_code_error_or_dropped(tmp_path):
    table, splits, df = write_mcat_table(tmp_path / "src")
    df.loc[df["case_id"] == "TCGA-AA-0003", "oncotree_code"] = "PAAD"
    df.to_csv(table)
    with pytest.raises(CohortError, match=r"PAAD \(1 rows\).*--drop-unknown-codes"):
        import_mcat(table, splits, tmp_path / "cohort")
    with pytest.warns(UserWarning, match="unknown oncotree"):
        report = import_mcat(table, splits, tmp_path / "cohort", drop_unknown_codes=True)
    assert report.n_cases == len(CASES) - 1
    assert report.metadata["dropped_rows_unknown_oncotree_code"] == {"PAAD": 1}
    assert "TCGA-AA-0003" not in set(pd.read_parquet(tmp_path / "cohort" / "splits.parquet")
                                     ["case_id"])


def test_case_in_no_val_list_is_dropped_and_recorded(tmp_path):
    table, splits, _ = write_mcat_table(tmp_path / "src")
    for k in range(5):
        s = pd.read_csv(splits / f"splits_{k}.csv", index_col=0)
        s = s.replace("TCGA-AA-0015", np.nan)
        s.to_csv(splits / f"splits_{k}.csv")
    with pytest.warns(UserWarning, match="no val list"):
        report = import_mcat(table, splits, tmp_path / "cohort")
    assert report.metadata["splits"]["dropped_cases_in_no_val_list"] == ["TCGA-AA-0015"]
    assert "TCGA-AA-0015" not in set(pd.read_parquet(tmp_path / "cohort" / "expression.parquet")
                                     ["case_id"])


def test_refuses_non_empty_output_without_force(imported, tmp_path):
    out, _ = imported
    table, splits = tmp_path / "src" / "table.csv", tmp_path / "src" / "splits"
    with pytest.raises(CohortError, match="--force"):
        import_mcat(table, splits, out)
    assert import_mcat(table, splits, out, force=True).n_cases == len(CASES)


def test_cli(tmp_path, capsys):
    table, splits, df = write_mcat_table(tmp_path / "src")
    out = tmp_path / "cohort"
    assert main(["--table", str(table), "--splits", str(splits), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{len(CASES)} cases, {len(df)} slides, {len(GENES)} genes, 5 published folds" in printed
    assert "python -m ksmodel.genesets" in printed and "1p/19q" in printed
    df.drop(columns="censorship").to_csv(table)
    assert main(["--table", str(table), "--splits", str(splits), "--out",
                 str(tmp_path / "c2")]) == 2
    assert "missing column(s) censorship" in capsys.readouterr().err


def test_real_cohort_study_file_uses_the_published_folds(imported, tmp_path):
    """search_spaces/tcga_gbmlgg_survival.yaml + an imported cohort pass the runner's checks."""
    from study.launch import load_data
    from study.space import load_study

    out, _ = imported
    write_gene_sets(out)
    space = Path(__file__).resolve().parents[1] / "search_spaces" / "tcga_gbmlgg_survival.yaml"
    cfg = load_study(space, {"cohort": str(out)})
    assert (cfg.task, cfg.metric, cfg.cohort) == ("survival", "cindex", str(out))
    assert cfg.fixed["modality"] == "genomics" and cfg.fixed["log1p"] is False
    data = load_data(cfg, tmp_path / "study", resume=False)
    splits = data.splits
    assert data.bags is None  # genomics-only: no feature files needed
    assert dict(zip(splits["case_id"], splits["fold"], strict=True)) == FOLDS
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "study" / "splits.parquet"), splits)


def test_gene_with_missing_values_dropped_and_text_values_rejected(tmp_path):
    table, splits, df = write_mcat_table(tmp_path / "src")
    df.loc[0, "LUM_rnaseq"] = np.nan  # TCGA-AA-0001's only slide
    df.loc[2, "DCN_rnaseq"] += 1.0  # second slide of TCGA-AA-0002 disagrees: first row kept
    df.to_csv(table)
    with pytest.warns(UserWarning) as caught:
        report = import_mcat(table, splits, tmp_path / "cohort")
    messages = " | ".join(str(w.message) for w in caught)
    assert "dropped 1 gene(s) with missing expression values: LUM" in messages
    assert "first row of each case is kept: TCGA-AA-0002" in messages
    expr = pd.read_parquet(tmp_path / "cohort" / "expression.parquet").set_index("case_id")
    assert expr.loc["TCGA-AA-0002", "DCN"] == pytest.approx(df.loc[1, "DCN_rnaseq"])
    assert report.metadata["expression"]["dropped_genes_with_missing_values"] == ["LUM"]
    assert "LUM" not in pd.read_parquet(tmp_path / "cohort" / "expression.parquet").columns
    df["LUM_rnaseq"] = df["LUM_rnaseq"].astype(object)
    df.loc[0, "LUM_rnaseq"] = "high"
    df.to_csv(table)
    with pytest.raises(CohortError, match="non-numeric values in column.*LUM_rnaseq"):
        import_mcat(table, splits, tmp_path / "c2")


@pytest.mark.parametrize("zipped", [False, True], ids=["csv", "csv.zip"])
def test_duplicated_column_is_an_error_naming_it(tmp_path, zipped):
    """pandas would rename the second TP53_rnaseq to TP53_rnaseq.1 and the import drop it."""
    table, splits, df = write_mcat_table(tmp_path / "src", zipped=zipped)
    twice = pd.concat([df, df[["TP53_rnaseq"]] + 1.0], axis=1)
    assert list(twice.columns).count("TP53_rnaseq") == 2
    twice.to_csv(table)
    with pytest.raises(CohortError) as err:
        import_mcat(table, splits, tmp_path / "cohort")
    message = str(err.value)
    assert str(table) in message and "TP53_rnaseq" in message
    assert "TP53_rnaseq.1" not in message and "more than once" in message
    assert not (tmp_path / "cohort").exists()  # nothing written
    assert main(["--table", str(table), "--splits", str(splits), "--out",
                 str(tmp_path / "c2")]) == 2


def test_duplicated_required_column_is_an_error(tmp_path):
    table, splits, df = write_mcat_table(tmp_path / "src")
    pd.concat([df, df[["survival_months"]]], axis=1).to_csv(table)
    with pytest.raises(CohortError, match=r"survival_months \(columns \d+, \d+\)"):
        import_mcat(table, splits, tmp_path / "cohort")


def test_duplicated_column_that_is_not_imported_is_only_noted(tmp_path):
    table, splits, df = write_mcat_table(tmp_path / "src")
    pd.concat([df, df[["EGFR_cnv"]]], axis=1).to_csv(table)
    with pytest.warns(UserWarning, match="more than once in the header and are not imported: "
                                         "EGFR_cnv"):
        report = import_mcat(table, splits, tmp_path / "cohort")
    assert report.n_genes == len(GENES)


def test_bad_gene_set_file_is_reported_before_anything_is_written(tmp_path):
    table, splits, _ = write_mcat_table(tmp_path / "src")
    out = tmp_path / "cohort"
    with pytest.raises(CohortError, match="gene-set file not found"):
        import_mcat(table, splits, out, gene_sets=tmp_path / "missing.csv")
    assert not out.exists()


def test_idh_task_runs_end_to_end_on_an_imported_cohort(imported):
    """The importer fills idh_mutant from the mutation calls; the idh task trains on it."""
    from ksmodel.data import load_run_data
    from ksmodel.train import FoldTrainer, build_model_config, prepare_fold, train_fold

    out, df = imported
    write_gene_sets(out)
    data = load_run_data(out, "idh", modalities=["genomics"])
    assert data.bags is None and "published" in data.splits_source
    want = df.groupby("case_id")["IDH1_mut"].first().gt(0).astype(int)
    np.testing.assert_array_equal(data.cohort.targets("idh")["label"],
                                  want.loc[data.cohort.case_ids].to_numpy())
    model_cfg = build_model_config(data.cohort, "idh", modality="genomics", dim=16,
                                   gene_hidden=16)
    assert model_cfg.n_outputs == 2
    fold = prepare_fold(data.cohort, None, data.splits, 0, "idh", log1p=False)
    result = train_fold(FoldTrainer(fold, model_cfg, TrainConfig(task="idh", epochs=2, lam=0.0)))
    assert set(result.metrics) == {"auc", "accuracy", "balanced_accuracy", "f1"}
    assert {"label", "prob_0", "prob_1"} <= set(result.predictions.columns)
    assert set(result.predictions["label"]) <= {0, 1}
