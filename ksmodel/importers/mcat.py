"""Import a TCGA table + published 5-fold splits in the MCAT layout into a KS-Study cohort.

MCAT, PORPOISE, MOTCat and CMTA share one table layout: one row per slide with ``case_id,
slide_id, age, site, survival_months, censorship (1 = censored), is_female, oncotree_code,
train``, then gene columns suffixed ``_rnaseq`` (z-scored expression), ``_cnv`` and ``_mut``;
and split files ``splits_0.csv ... splits_{k-1}.csv`` with columns ``,train,val`` of case ids
(padded with empty cells when the columns differ in length). This module writes the cohort
layout of docs/cohort-format.md::

    clinical.parquet    one row per slide: case_id, slide_id, diagnosis, grade, survival_days,
                        event, + age, site, is_female, oncotree_code, idh_mutant, survival_months,
                        slide_file (the table's slide_id, with its extension)
    expression.parquet  one row per case: the _rnaseq columns, suffix removed
    splits.parquet      case_id, fold -- fold k = the val list of splits_k.csv (published folds)
    features/           <slide_id>.h5 linked (or copied) from --features, for slides that have one
    gene_sets.csv       only with --gene-sets (else run `python -m ksmodel.genesets`)
    cohort.json         provenance, label rules, approximations, dropped rows

Decisions (recorded in cohort.json too):

* survival_days = survival_months * 30.44 (mean Gregorian month); event = 1 - censorship.
* slide_id drops a whole-slide-image extension (.svs, .tif, ...): CLAM-style extractors name
  feature files ``<slide name>.h5`` without it, which is what ``features/<slide_id>.h5`` needs.
* grade = histological WHO grade from the oncotree code (GBM 4; AASTR, AOAST, AODG 3; ASTR,
  OAST, ODG 2). Any other code is an error listing the codes; ``--drop-unknown-codes`` drops
  those rows instead (recorded), so the labels stay complete integers as the format requires.
* diagnosis = approximate WHO-2021 class from IDH1_mut (IDH2_mut too, if present) + histology
  (+ ATRX/TP53 mutation as the WHO-2021 surrogate against 1p/19q codeletion, when present):
  0 glioblastoma IDH-wt (no IDH mutation, any histology); 1 astrocytoma IDH-mut grade 4 (IDH-mut,
  GBM histology); 2 astrocytoma IDH-mut grade 2-3 (IDH-mut, astrocytic histology, or any
  lower-grade IDH-mut glioma with an ATRX or TP53 mutation); 3 oligodendroglioma IDH-mut (IDH-mut,
  oligodendroglial or mixed histology, no ATRX/TP53 mutation). The table has no 1p/19q status, so
  class 3 is an approximation -- see ``APPROXIMATIONS``.
* folds: the published val lists; a table case in no val list is dropped (it was never
  validated on in the published protocol); a split case id not in the table is an error.
* expression is already z-scored: cohort.json records ``"log1p": false``; set ``log1p: false``
  in the study. Genes with any missing value are dropped (recorded).
* a column name that appears twice in the header is an error naming it when the importer reads
  that column (ids, survival, oncotree code, extras, mutation calls, ``_rnaseq``); a repeated
  column it does not import (e.g. ``_cnv``) is only noted.
* everything is read and checked before the first output file is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ksmodel.cohort import clean_ids
from ksmodel.errors import CohortError, data_rows, shown
from ksmodel.errors import few as _few
from ksmodel.tasks import LABEL_COLUMNS

DAYS_PER_MONTH = 30.44
"""Mean Gregorian month (365.25 / 12 = 30.4375, rounded as is customary)."""

REQUIRED = ("case_id", "slide_id", "survival_months", "censorship", "oncotree_code")
KEPT_EXTRAS = ("age", "site", "is_female", "oncotree_code")
SUFFIX_RNA, SUFFIX_CNV, SUFFIX_MUT = "_rnaseq", "_cnv", "_mut"
OUTPUTS = ("clinical.parquet", "expression.parquet", "splits.parquet", "cohort.json", "features")
SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif", ".czi")

GRADE_BY_CODE = {"GBM": 4, "AASTR": 3, "AOAST": 3, "AODG": 3, "ASTR": 2, "OAST": 2, "ODG": 2}
HISTOLOGY = {"GBM": "glioblastoma", "ASTR": "astrocytic", "AASTR": "astrocytic",
             "ODG": "oligodendroglial", "AODG": "oligodendroglial",
             "OAST": "mixed", "AOAST": "mixed"}
DIAGNOSIS_CLASSES = {
    0: "glioblastoma, IDH-wildtype",
    1: "astrocytoma, IDH-mutant, grade 4",
    2: "astrocytoma, IDH-mutant, grade 2-3",
    3: "oligodendroglioma, IDH-mutant (1p/19q not available: approximated)",
}
IDH_COLUMNS = ("IDH1_mut", "IDH2_mut")  # the first is required
ASTRO_SURROGATES = ("ATRX_mut", "TP53_mut")
DIAGNOSIS_RULES = [
    "IDH status = IDH1_mut (or IDH2_mut when that column exists) > 0",
    "no IDH mutation -> 0 (glioblastoma, IDH-wildtype), whatever the histology",
    "IDH-mutant + oncotree GBM -> 1 (astrocytoma, IDH-mutant, grade 4)",
    "IDH-mutant + ASTR/AASTR -> 2 (astrocytoma, IDH-mutant, grade 2-3)",
    "IDH-mutant + ODG/AODG/OAST/AOAST + ATRX_mut or TP53_mut -> 2 (astrocytoma; ATRX/TP53 "
    "mutation stands in for 'not 1p/19q-codeleted', as ATRX loss does in WHO 2021)",
    "IDH-mutant + ODG/AODG/OAST/AOAST without ATRX/TP53 mutation -> 3 (oligodendroglioma, "
    "approximated: 1p/19q codeletion is not in the table)",
]
GRADE_RULE = ("grade = histological WHO grade of the oncotree code: GBM -> 4; AASTR, AOAST, "
              "AODG -> 3; ASTR, OAST, ODG -> 2")
APPROXIMATIONS = [
    "1p/19q not in table: oligodendroglioma (diagnosis 3) is approximated from histology "
    "(ODG, AODG and the mixed OAST, AOAST) + IDH mutation, with ATRX/TP53 mutation (when those "
    "columns exist) moving a case to astrocytoma",
    "IDH status comes from the table's mutation calls (IDH1_mut, IDH2_mut if present); "
    "cases without a call are treated as IDH-wildtype",
    "IDH-wildtype lower-grade histology is counted as glioblastoma, IDH-wildtype (WHO 2021 needs "
    "TERT/EGFR/+7-10 evidence, which is not checked)",
    "grade is the histological grade of the TCGA-era diagnosis, not re-graded under WHO 2021 "
    "(e.g. CDKN2A/B homozygous deletion is not used)",
    f"survival_days = survival_months * {DAYS_PER_MONTH}",
]


@dataclass
class ImportReport:
    """What an import wrote and dropped; also saved as cohort.json."""

    out: Path
    n_cases: int
    n_slides: int
    n_genes: int
    n_folds: int
    slides_with_features: int
    metadata: dict[str, Any] = field(repr=False)
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Reading


def read_table(path: Path) -> pd.DataFrame:
    """The MCAT table (csv or csv.zip), ids as strings; case_id derived from an unnamed index.

    PORPOISE-era tables have no case_id column but an unnamed first column holding the TCGA
    sample barcode; MCAT's own loader then uses its first 12 characters (the patient barcode),
    and so do we.
    """
    if not path.is_file():
        raise CohortError(f"{path}: table not found; pass the MCAT-style csv or csv.zip with "
                          f"--table")
    repeated = _check_header(path)
    try:
        df = pd.read_csv(path, low_memory=False,
                         dtype={"case_id": str, "slide_id": str, "oncotree_code": str,
                                "site": str})
    except Exception as exc:  # pandas raises many types for a bad/ambiguous archive
        raise _read_error(path, exc) from exc
    unnamed = [c for c in df.columns if str(c).startswith("Unnamed: ")]
    if "case_id" not in df.columns and unnamed and unnamed[0] == df.columns[0]:
        df.insert(0, "case_id", df[unnamed[0]].astype(str).str.strip().str[:12])
        df.attrs["case_id_from_index"] = True
    df = df.drop(columns=unnamed)
    df.attrs["repeated_columns_not_imported"] = repeated
    return df


def _read_error(path: Path, exc: Exception) -> CohortError:
    return CohortError(f"{path}: cannot be read as csv ({type(exc).__name__}: {exc}); pass the "
                       f"csv itself or a zip holding exactly one csv")


def _imported(name: str) -> bool:
    """Whether the importer reads this table column (as opposed to passing over it)."""
    read = {*REQUIRED, *KEPT_EXTRAS, *(c.lower() for c in IDH_COLUMNS + ASTRO_SURROGATES)}
    return name in read or name.lower() in read or name.endswith(SUFFIX_RNA)


def _check_header(path: Path) -> list[str]:
    """Column names used twice: an error naming them when the importer reads them.

    pandas would silently rename the second copy (``TP53_rnaseq`` -> ``TP53_rnaseq.1``), which
    then matches no rule and is dropped, so the header line is read on its own, as plain text
    cells, before the table. Repeated columns that are not imported (e.g. ``_cnv``) are
    returned for a note instead.
    """
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types for a bad/ambiguous archive
        raise _read_error(path, exc) from exc
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(header.iloc[0] if len(header) else [], start=1):
        if name:  # empty cells are unnamed (index) columns, dropped anyway
            positions.setdefault(str(name), []).append(i)
    repeated = {n: p for n, p in positions.items() if len(p) > 1}
    used = {n: p for n, p in repeated.items() if _imported(n)}
    if used:
        listing = _few(f"{n} (columns {', '.join(map(str, p))})" for n, p in used.items())
        raise CohortError(f"{path}: column(s) appearing more than once in the header: {listing}; "
                          f"each column must appear once -- remove or rename the repeats")
    return sorted(repeated)


def _strip_extension(slide: str) -> str:
    lower = slide.lower()
    for ext in SLIDE_EXTENSIONS:
        if lower.endswith(ext):
            return slide[: -len(ext)]
    return slide


def _column(df: pd.DataFrame, name: str) -> str | None:
    """The table's spelling of ``name`` (exact, else case-insensitive), or None."""
    if name in df.columns:
        return name
    matches = [c for c in df.columns if str(c).lower() == name.lower()]
    return matches[0] if matches else None


def read_splits(folder: Path, case_ids: pd.Index) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Published folds: DataFrame[case_id, fold] from the val lists of splits_<k>.csv.

    Checks: files numbered 0..k-1, columns train and val, every listed id in the table, no id
    twice in a list, in train and val of one file, or in two val lists.
    """
    if not folder.is_dir():
        raise CohortError(f"{folder}: splits folder not found; pass the folder holding "
                          f"splits_0.csv ... splits_4.csv with --splits")
    files = {}
    for path in folder.iterdir():
        m = re.fullmatch(r"splits_(\d+)\.csv", path.name)
        if m:
            files[int(m.group(1))] = path
    if not files:
        raise CohortError(f"{folder}: no splits_<k>.csv files; the published 5-fold splits are "
                          f"splits_0.csv ... splits_4.csv (columns ,train,val)")
    if sorted(files) != list(range(len(files))) or len(files) < 2:
        raise CohortError(f"{folder}: split files must be splits_0.csv ... splits_<k-1>.csv with "
                          f"k >= 2; found {_few(files[k].name for k in sorted(files))}")
    known = set(case_ids)
    fold_of: dict[str, int] = {}
    trains: dict[int, set[str]] = {}
    for k in sorted(files):
        path = files[k]
        try:
            df = pd.read_csv(path, dtype=str)
        except Exception as exc:
            raise CohortError(f"{path}: cannot be read as csv ({type(exc).__name__}: {exc})") \
                from exc
        for column in ("train", "val"):
            if column not in df.columns:
                raise CohortError(f"{path}: missing column '{column}' (columns: "
                                  f"{_few(df.columns)}); split files have columns ,train,val")
        lists = {c: df[c].dropna().str.strip() for c in ("train", "val")}
        for column, ids in lists.items():
            ids = ids[ids != ""]
            lists[column] = ids
            dup = ids[ids.duplicated()]
            if len(dup):
                raise CohortError(f"{path}: case id {dup.iloc[0]} is listed twice in column "
                                  f"'{column}'; each case appears once per list")
            unknown = [c for c in ids if c not in known]
            if unknown:
                raise CohortError(f"{path}: case id {unknown[0]} (column '{column}') is not in the "
                                  f"table" + (f"; {len(unknown)} such ids: {_few(unknown)}"
                                              if len(unknown) > 1 else "")
                                  + " -- use the split files published with this table")
        both = sorted(set(lists["train"]) & set(lists["val"]))
        if both:
            raise CohortError(f"{path}: case id {both[0]} is in both train and val"
                              + (f" ({len(both)} such ids)" if len(both) > 1 else ""))
        for case in lists["val"]:
            if case in fold_of:
                raise CohortError(f"case id {case} is in the val list of two split files: "
                                  f"{files[fold_of[case]].name} and {path.name}; published "
                                  f"folds must not overlap")
            fold_of[case] = k
        trains[k] = set(lists["train"])
    mismatched = {}
    all_val = set(fold_of)
    for k, train in trains.items():
        expected = all_val - {c for c, f in fold_of.items() if f == k}
        if train != expected:
            mismatched[files[k].name] = {"train_not_in_other_folds": sorted(train - expected),
                                         "other_folds_not_in_train": sorted(expected - train)}
    splits = pd.DataFrame({"case_id": list(fold_of), "fold": list(fold_of.values())})
    splits = splits.sort_values("case_id", kind="stable").reset_index(drop=True)
    meta = {"files": [files[k].name for k in sorted(files)], "k": len(files),
            "rule": "fold k = the cases in the val column of splits_k.csv",
            "train_lists_differ_from_other_folds": mismatched}
    return splits, meta


# --------------------------------------------------------------------------------------------
# Labels


def derive_labels(codes: pd.Series, idh: pd.Series, astro_mut: pd.Series | None) -> pd.DataFrame:
    """grade and diagnosis per row from oncotree code, IDH and ATRX/TP53 mutation (module doc).

    ``codes`` must hold known codes only (GRADE_BY_CODE); ``idh`` and ``astro_mut`` are booleans.
    """
    grade = codes.map(GRADE_BY_CODE).astype(np.int64)
    histology = codes.map(HISTOLOGY)
    astro = astro_mut if astro_mut is not None else pd.Series(False, index=codes.index)
    diagnosis = np.select(
        [~idh, histology == "glioblastoma", histology == "astrocytic", astro],
        [0, 1, 2, 2], default=3)
    return pd.DataFrame({"grade": grade, "diagnosis": diagnosis.astype(np.int64)},
                        index=codes.index)


def _mutated(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = df[column].notna() & values.isna()
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise CohortError(f"{path}: column {column} must be numeric mutation calls (0/1); "
                          f"{data_rows(bad.to_numpy())}, e.g. {shown(df[column].iloc[first])}")
    return values.fillna(0) > 0


# --------------------------------------------------------------------------------------------
# Import


def _expression(rows: pd.DataFrame, rna: list[str],
                table: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """One row per case (sorted) from the *_rnaseq columns; genes with missing values dropped."""
    genes = [c[: -len(SUFFIX_RNA)] for c in rna]  # distinct: read_table rejects repeated names
    values = rows[rna].copy()
    text = [c for c in rna if not pd.api.types.is_numeric_dtype(values[c])]
    not_numeric = []
    for c in text:  # numeric columns (all of a clean table) need no conversion
        converted = pd.to_numeric(values[c], errors="coerce")
        if (converted.isna() & values[c].notna()).any():
            not_numeric.append(c)
        values[c] = converted
    if not_numeric:
        raise CohortError(f"{table}: non-numeric values in column(s) {_few(not_numeric)}; write "
                          f"numbers only")
    values.columns = genes
    values.index = pd.Index(rows["case_id"].to_numpy(), name="case_id")
    first = values[~values.index.duplicated(keep="first")].sort_index()
    notes = []
    same = np.isclose(values.to_numpy(dtype=np.float64),
                      first.loc[values.index].to_numpy(dtype=np.float64), equal_nan=True)
    differing = sorted(set(values.index[~same.all(axis=1)]))
    if differing:
        notes.append(f"{len(differing)} case(s) have different expression on different slide "
                     f"rows; the first row of each case is kept: {_few(differing)}")
    has_nan = first.isna().any(axis=0)
    nan_genes = [str(g) for g in first.columns[has_nan.to_numpy()]]
    if nan_genes:
        notes.append(f"dropped {len(nan_genes)} gene(s) with missing expression values: "
                     f"{_few(nan_genes)}")
        first = first.drop(columns=nan_genes)
    if first.shape[1] == 0:
        raise CohortError(f"{table}: every *{SUFFIX_RNA} column has missing values; nothing left")
    return first, nan_genes, notes


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find_feature(folder: Path, slide: str) -> Path | None:
    for candidate in (folder / f"{slide}.h5", folder / "h5_files" / f"{slide}.h5"):
        if candidate.is_file():
            return candidate
    return None


@dataclass
class _Labels:
    """Per-slide clinical table (all table cases) and the mutation columns behind diagnosis."""

    clinical: pd.DataFrame
    idh_columns: list[str]
    astro_columns: list[str]


def _check_output_folder(out: Path, force: bool) -> None:
    """Never write into a folder holding something else unless asked to (--force)."""
    if out.exists() and any(out.iterdir()) and not force:
        raise CohortError(f"{out}: the output folder exists and is not empty; choose a new folder "
                          f"or pass --force to overwrite the cohort files in it")


def _check_columns(df: pd.DataFrame, table: Path) -> tuple[str, list[str]]:
    """The columns every import needs: (the table's IDH1 column, the *_rnaseq columns)."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CohortError(f"{table}: missing column(s) {', '.join(missing)}; an MCAT-style table "
                          f"has columns {', '.join(REQUIRED)}, ... and <gene>_rnaseq columns")
    idh_col = _column(df, IDH_COLUMNS[0])
    if idh_col is None:
        raise CohortError(f"{table}: missing column {IDH_COLUMNS[0]} (IDH1 mutation calls); it is "
                          f"needed to derive the WHO-2021 diagnosis label")
    rna = [c for c in df.columns if str(c).endswith(SUFFIX_RNA)]
    if not rna:
        raise CohortError(f"{table}: no *{SUFFIX_RNA} columns; the expression matrix is read from "
                          f"the <gene>{SUFFIX_RNA} columns")
    return idh_col, rna


def _clean_slide_ids(df: pd.DataFrame, table: Path) -> None:
    """Non-empty case/slide ids; slide_id without its image extension, each slide once."""
    df["case_id"] = clean_ids(df["case_id"], "case_id", table)
    df["slide_file"] = clean_ids(df["slide_id"], "slide_id", table)
    df["slide_id"] = df["slide_file"].map(_strip_extension)
    dup = df["slide_id"].duplicated(keep=False)
    if dup.any():
        raise CohortError(f"{table}: duplicate slide {df.loc[dup, 'slide_file'].iloc[0]} "
                          f"({data_rows(dup.to_numpy())}); each slide must appear once -- remove "
                          f"the repeats")


def _known_codes(df: pd.DataFrame, table: Path, drop_unknown: bool,
                 notes: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Rows whose oncotree code has a grade rule (others: error, or dropped with a note)."""
    codes = df["oncotree_code"].astype("string").str.strip().str.upper()
    unknown = codes.isna() | ~codes.isin(list(GRADE_BY_CODE))
    dropped: dict[str, int] = {}
    if unknown.any():
        counts = codes[unknown].fillna("<empty>").value_counts()
        listing = ", ".join(f"{c} ({n} rows)" for c, n in counts.items())
        if not drop_unknown:
            raise CohortError(f"{table}: oncotree code(s) with no glioma grade rule: {listing}; "
                              f"known codes: {', '.join(GRADE_BY_CODE)}. Pass "
                              f"--drop-unknown-codes to drop those rows")
        dropped = {str(c): int(n) for c, n in counts.items()}
        notes.append(f"dropped {int(unknown.sum())} row(s) with unknown oncotree code(s): "
                     f"{listing}")
        df, codes = df.loc[~unknown].copy(), codes[~unknown]
    df["oncotree_code"] = codes.astype(str)
    return df, dropped


def _survival(df: pd.DataFrame, table: Path) -> tuple[pd.Series, pd.Series]:
    """(survival_months >= 0, censorship in {0, 1}) as numbers."""
    months = pd.to_numeric(df["survival_months"], errors="coerce")
    bad = months.isna() | (months < 0)
    if bad.any():
        raise CohortError(f"{table}: survival_months must be a number >= 0; bad for case(s) "
                          f"{_few(df.loc[bad, 'case_id'].unique())}")
    cens = pd.to_numeric(df["censorship"], errors="coerce")
    bad = ~cens.isin((0, 1))
    if bad.any():
        raise CohortError(f"{table}: censorship must be 0 (death observed) or 1 (censored); bad "
                          f"for case(s) {_few(df.loc[bad, 'case_id'].unique())}")
    return months, cens


def _labels(df: pd.DataFrame, idh_col: str, table: Path, notes: list[str]) -> _Labels:
    """Per-slide clinical table: labels from codes, IDH and ATRX/TP53 calls, survival, extras.

    The slides of one case must agree on every label column.
    """
    months, cens = _survival(df, table)
    idh = _mutated(df, idh_col, table)
    idh_used = [idh_col]
    idh2 = _column(df, IDH_COLUMNS[1])
    if idh2 is not None:
        idh = idh | _mutated(df, idh2, table)
        idh_used.append(idh2)
    astro_cols = [c for c in (_column(df, n) for n in ASTRO_SURROGATES) if c is not None]
    astro = None
    for col in astro_cols:
        m = _mutated(df, col, table)
        astro = m if astro is None else astro | m
    if not astro_cols:
        notes.append("no ATRX_mut/TP53_mut column: oligodendroglial and mixed IDH-mutant "
                     "histologies are all labelled oligodendroglioma (3)")

    labels = derive_labels(df["oncotree_code"], idh, astro)
    clinical = pd.DataFrame({
        "case_id": df["case_id"], "slide_id": df["slide_id"],
        "diagnosis": labels["diagnosis"], "grade": labels["grade"],
        "survival_days": months.to_numpy(dtype=np.float64) * DAYS_PER_MONTH,
        "event": (1 - cens).astype(np.int64),
    })
    for col in KEPT_EXTRAS:
        if col in df.columns:
            clinical[col] = df[col]
    clinical["idh_mutant"] = idh.astype(np.int64)
    clinical["survival_months"] = months
    clinical["slide_file"] = df["slide_file"]
    for col in LABEL_COLUMNS:  # every column a task reads its label from
        n_values = clinical.groupby("case_id")[col].nunique()
        if (n_values > 1).any():
            case = n_values.index[n_values.to_numpy() > 1][0]
            raise CohortError(f"{table}: the slides of case {case} disagree on {col} (from "
                              f"survival_months/censorship/oncotree_code/mutation calls); a "
                              f"patient's rows must share these values")
    return _Labels(clinical, idh_used, astro_cols)


def _published_folds(splits_dir: Path, table_cases: pd.Index, clinical: pd.DataFrame,
                     notes: list[str]) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame,
                                                list[str]]:
    """(splits, split metadata, clinical without cases in no val list, those dropped cases)."""
    split_df, split_meta = read_splits(splits_dir, table_cases)
    split_df = split_df[split_df["case_id"].isin(clinical["case_id"])].reset_index(drop=True)
    not_in_folds = sorted(set(clinical["case_id"]) - set(split_df["case_id"]))
    if not_in_folds:
        notes.append(f"dropped {len(not_in_folds)} case(s) that are in no val list of the split "
                     f"files: {_few(not_in_folds)}")
        clinical = clinical[~clinical["case_id"].isin(not_in_folds)]
    if split_meta["train_lists_differ_from_other_folds"]:
        notes.append("some split files' train lists differ from the union of the other folds' val "
                     "lists; the folds keep the val lists (details in cohort.json)")
    clinical = clinical.sort_values(["case_id", "slide_id"], kind="stable").reset_index(drop=True)
    return split_df, split_meta, clinical, not_in_folds


def _check_inputs(features: Path | None, gene_sets: Path | None) -> None:
    """The optional --features folder and --gene-sets file, before anything is written."""
    if features is not None and not features.is_dir():
        raise CohortError(f"{features}: features folder not found; pass the folder holding "
                          f"<slide_id>.h5 (or h5_files/<slide_id>.h5) with --features")
    if gene_sets is not None:
        if not gene_sets.is_file():
            raise CohortError(f"{gene_sets}: gene-set file not found (--gene-sets)")
        if gene_sets.suffix.lower() not in (".csv", ".gmt"):
            raise CohortError(f"{gene_sets}: a gene-set file is a .csv (gene, subspace) or a "
                              f".gmt")


def _clear_outputs(out: Path) -> None:
    """Remove a previous import's files (--force) so they never mix with this one's."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in OUTPUTS:
        path = out / stale
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


def _link_features(features: Path | None, slides: pd.Series, out: Path, copy: bool,
                   notes: list[str]) -> dict[str, Any]:
    """Link (or copy) each slide's <slide_id>.h5 into out/features; slides without one noted."""
    if features is None:
        return {"dir": None, "mode": None, "linked": 0, "slides_without_features": []}
    feat_out = out / "features"
    feat_out.mkdir()
    linked, absent = 0, []
    for slide in slides:
        found = _find_feature(features, slide)
        if found is None:
            absent.append(slide)
            continue
        target = feat_out / f"{slide}.h5"
        if copy:
            shutil.copy2(found, target)
        else:
            os.symlink(found.resolve(), target)
        linked += 1
    if absent:
        notes.append(f"{len(absent)} of {len(slides)} slide(s) have no feature file in "
                     f"{features}: {_few(absent)} (genomics-only runs still work)")
    return {"dir": str(features.resolve()), "mode": "copy" if copy else "symlink",
            "linked": linked, "slides_without_features": absent}


def _copy_gene_sets(gene_sets: Path | None, out: Path) -> dict[str, Any]:
    """Put the user's gene-set file into the cohort, or record how to make one."""
    if gene_sets is None:
        return {"file": None, "hint": (
            f"python -m ksmodel.genesets --cohort {out} --out {out / 'gene_sets.csv'}  "
            "(or write gene_sets.csv yourself: columns gene, subspace in {tumour, tme})")}
    name = "gene_sets.csv" if gene_sets.suffix.lower() == ".csv" else gene_sets.name
    shutil.copy2(gene_sets, out / name)
    return {"file": name, "source": str(gene_sets.resolve())}


def _metadata(table: Path, splits_dir: Path, df: pd.DataFrame, clinical: pd.DataFrame,
              labels: _Labels, per_case: pd.DataFrame, nan_genes: list[str],
              split_meta: dict[str, Any], not_in_folds: list[str], dropped_codes: dict[str, int],
              feature_meta: dict[str, Any], gene_meta: dict[str, Any],
              notes: list[str]) -> dict[str, Any]:
    """cohort.json: provenance, counts, label rules, approximations and everything dropped."""
    cases = clinical.drop_duplicates("case_id")
    return {
        "format": "ks-study cohort (docs/cohort-format.md)",
        "format_version": 1,
        "importer": "ksmodel.importers.mcat",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {"table": str(table.resolve()), "table_sha256": _sha256(table),
                   "splits": str(splits_dir.resolve()),
                   "case_id": ("first 12 characters of the table's unnamed index column"
                               if df.attrs.get("case_id_from_index") else "case_id column"),
                   "layout": "MCAT/PORPOISE/MOTCat/CMTA TCGA table"},
        "counts": {"cases": int(clinical["case_id"].nunique()), "slides": len(clinical),
                   "genes": int(per_case.shape[1]), "folds": split_meta["k"],
                   "diagnosis": {int(k): int(v) for k, v in
                                 cases["diagnosis"].value_counts().sort_index().items()},
                   "grade": {int(k): int(v) for k, v in
                             cases["grade"].value_counts().sort_index().items()},
                   "events": int(cases["event"].sum())},
        "expression": {"values": f"the table's *{SUFFIX_RNA} columns (already z-scored)",
                       "log1p": False,
                       "note": "already normalised: set log1p: false in the study (fixed)",
                       "dropped_genes_with_missing_values": nan_genes,
                       "not_imported": {"cnv_columns": sum(str(c).endswith(SUFFIX_CNV)
                                                          for c in df.columns),
                                        "mut_columns": sum(str(c).endswith(SUFFIX_MUT)
                                                           for c in df.columns)}},
        "survival": {"survival_days": f"survival_months * {DAYS_PER_MONTH}",
                     "days_per_month": DAYS_PER_MONTH, "event": "1 - censorship"},
        "labels": {"grade": {"rule": GRADE_RULE, "by_oncotree_code": GRADE_BY_CODE},
                   "diagnosis": {"classes": DIAGNOSIS_CLASSES, "rules": DIAGNOSIS_RULES,
                                 "idh_columns": labels.idh_columns,
                                 "astrocytoma_surrogates": labels.astro_columns}},
        "approximations": APPROXIMATIONS,
        "slide_id": f"the table's slide_id without a slide-image extension "
                    f"({', '.join(SLIDE_EXTENSIONS)}); the original is in slide_file",
        "splits": {**split_meta, "file": "splits.parquet",
                   "dropped_cases_in_no_val_list": not_in_folds},
        "dropped_rows_unknown_oncotree_code": dropped_codes,
        "features": feature_meta,
        "gene_sets": gene_meta,
        "notes": notes,
    }


def import_mcat(table: str | Path, splits: str | Path, out: str | Path, *,
                features: str | Path | None = None, gene_sets: str | Path | None = None,
                drop_unknown_codes: bool = False, copy_features: bool = False,
                force: bool = False) -> ImportReport:
    """Convert an MCAT-style table + splits folder into a cohort folder (see module doc).

    Everything is read and checked before the first file is written, so a bad input leaves
    the output folder as it was.
    """
    table, splits_dir, out = Path(table), Path(splits), Path(out)
    features = None if features is None else Path(features)
    gene_sets = None if gene_sets is None else Path(gene_sets)
    notes: list[str] = []
    _check_output_folder(out, force)

    df = read_table(table)
    repeated = df.attrs["repeated_columns_not_imported"]
    if repeated:
        notes.append(f"{len(repeated)} column name(s) appear more than once in the header and "
                     f"are not imported: {_few(repeated)}")
    idh_col, rna = _check_columns(df, table)
    _clean_slide_ids(df, table)
    table_cases = pd.Index(df["case_id"].unique())  # before any row is dropped
    df, dropped_codes = _known_codes(df, table, drop_unknown_codes, notes)
    labels = _labels(df, idh_col, table, notes)
    split_df, split_meta, clinical, not_in_folds = _published_folds(
        splits_dir, table_cases, labels.clinical, notes)
    per_case, nan_genes, expr_notes = _expression(df[df["case_id"].isin(clinical["case_id"])],
                                                  rna, table)
    notes.extend(expr_notes)
    _check_inputs(features, gene_sets)

    _clear_outputs(out)
    feature_meta = _link_features(features, clinical["slide_id"], out, copy_features, notes)
    gene_meta = _copy_gene_sets(gene_sets, out)
    clinical.to_parquet(out / "clinical.parquet", index=False)
    per_case.reset_index().to_parquet(out / "expression.parquet", index=False)
    split_df.to_parquet(out / "splits.parquet", index=False)
    metadata = _metadata(table, splits_dir, df, clinical, labels, per_case, nan_genes,
                         split_meta, not_in_folds, dropped_codes, feature_meta, gene_meta, notes)
    (out / "cohort.json").write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return ImportReport(out=out, n_cases=metadata["counts"]["cases"], n_slides=len(clinical),
                        n_genes=int(per_case.shape[1]), n_folds=split_meta["k"],
                        slides_with_features=int(feature_meta["linked"]), metadata=metadata,
                        warnings=notes)


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ksmodel.importers.mcat",
        description="Import a TCGA table and published splits in the MCAT/PORPOISE/MOTCat/CMTA "
                    "layout into a KS-Study cohort folder.",
        epilog="Example: python -m ksmodel.importers.mcat --table tcga_gbmlgg_all_clean.csv.zip "
               "--splits splits/5foldcv/tcga_gbmlgg --out cohorts/tcga_gbmlgg "
               "--features features/tcga_gbmlgg")
    parser.add_argument("--table", required=True, type=Path, help="the table (.csv or .csv.zip)")
    parser.add_argument("--splits", required=True, type=Path,
                        help="folder with splits_0.csv ... splits_<k-1>.csv (columns ,train,val)")
    parser.add_argument("--out", required=True, type=Path, help="cohort folder to write")
    parser.add_argument("--features", type=Path,
                        help="folder with <slide_id>.h5 patch features (CLAM layout: also "
                             "h5_files/<slide_id>.h5); slides without a file are allowed")
    parser.add_argument("--copy-features", action="store_true",
                        help="copy feature files instead of symlinking them")
    parser.add_argument("--gene-sets", type=Path,
                        help="your gene-set file (.csv gene,subspace or .gmt) to put in the cohort")
    parser.add_argument("--drop-unknown-codes", action="store_true",
                        help="drop rows whose oncotree code has no grade rule instead of failing")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing non-empty --out folder")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("ignore")
            report = import_mcat(args.table, args.splits, args.out, features=args.features,
                                 gene_sets=args.gene_sets,
                                 drop_unknown_codes=args.drop_unknown_codes,
                                 copy_features=args.copy_features, force=args.force)
    except CohortError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = report.metadata["counts"]
    print(f"wrote {report.out}: {report.n_cases} cases, {report.n_slides} slides, "
          f"{report.n_genes} genes, {report.n_folds} published folds, "
          f"{report.slides_with_features} slides with features")
    print(f"  diagnosis classes {counts['diagnosis']}, grades {counts['grade']}, "
          f"events {counts['events']}/{report.n_cases}")
    for note in report.warnings:
        print(f"  note: {note}")
    print("  approximation: 1p/19q is not in the table -- oligodendroglioma is approximated "
          "(cohort.json, 'approximations')")
    print("  expression is already z-scored: use log1p: false in the study")
    if report.metadata["gene_sets"]["file"] is None:
        print(f"  next: {report.metadata['gene_sets']['hint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
