"""An MCAT-layout table with planted signal, imported as a cohort: what the baselines are checked
on besides the synthetic default. tests/test_importers.py's table (15 cases, 3 per published
fold) checks the importer's rules; it is too small for a baseline's inner cross-validation (a
diagnosis class has 2 cases), so this one has 60 cases in the same layout and 5 published folds
in which every class and both event states appear.

Signal: genes G000-G002 carry the diagnosis (class means), G003-G004 the hazard; G000-G009 are
the tumour set, G010-G019 the TME set, G020-G039 are in no set (only the ``_table`` baselines
read them). Values are z-scores, as in the real tables (study option ``log1p: false``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ksmodel.importers.mcat import import_mcat
from tests.test_importers import slide_name

N_GENES, N_SET = 40, 20
# diagnosis -> (oncotree code, IDH1_mut, ATRX_mut, TP53_mut) the importer maps to it
RECIPES = {0: ("GBM", 0, 0, 1), 1: ("GBM", 1, 1, 1), 2: ("ASTR", 1, 1, 1), 3: ("ODG", 1, 0, 0)}
COVARIATES = ["age", "is_female"]


def write_mcat_cohort(root: Path, n_cases: int = 60, seed: int = 0) -> Path:
    """Write the table (one row per slide; some cases have two slides) and ``splits_k.csv``
    under ``root / "src"``, import them into ``root / "cohort"`` with a gene-set file; returns
    the cohort folder."""
    rng = np.random.default_rng(seed)
    genes = [f"G{j:03d}" for j in range(N_GENES)]
    cls = np.arange(n_cases) % 4
    expr = rng.normal(size=(n_cases, N_GENES))
    expr[:, :3] += np.eye(4)[cls][:, :3] * 2.0 - np.eye(4)[cls][:, 3:4] * 1.0
    hazard = 0.9 * expr[:, 3] - 0.7 * expr[:, 4] - 0.6 * (cls > 0)
    months = rng.exponential(30.0 * np.exp(-hazard)) + 1.0
    censored = rng.uniform(size=n_cases) < 0.3
    age = rng.integers(25, 80, n_cases)  # clinical covariates independent of the labels
    female = rng.integers(0, 2, n_cases)
    rows = []
    cases = [f"TCGA-BB-{i + 1:04d}" for i in range(n_cases)]
    for i, case in enumerate(cases):
        code, idh, atrx, tp53 = RECIPES[int(cls[i])]
        for j in range(1 + (i % 7 == 0)):
            row = {"case_id": case, "slide_id": slide_name(case, j), "age": int(age[i]),
                   "site": "BB", "survival_months": round(float(months[i]), 2),
                   "censorship": int(censored[i]), "is_female": int(female[i]),
                   "oncotree_code": code,
                   "train": 1.0, "IDH1_mut": idh, "ATRX_mut": atrx, "TP53_mut": tp53,
                   "EGFR_cnv": 0}
            row.update({f"{g}_rnaseq": round(float(v), 4)
                        for g, v in zip(genes, expr[i], strict=True)})
            rows.append(row)
    src = root / "src"
    (src / "splits").mkdir(parents=True, exist_ok=True)
    table = src / "table.csv"
    pd.DataFrame(rows).to_csv(table, index=True)
    fold = np.arange(n_cases) % 5  # with 4 classes cycling: every class in every fold
    for k in range(5):
        val = [c for c, f in zip(cases, fold, strict=True) if f == k]
        train = [c for c, f in zip(cases, fold, strict=True) if f != k]
        pd.DataFrame({"train": pd.Series(train), "val": pd.Series(val)}).to_csv(
            src / "splits" / f"splits_{k}.csv")
    cohort = root / "cohort"
    import_mcat(table, src / "splits", cohort)
    pd.DataFrame({"gene": genes[:N_SET],
                  "subspace": ["tumour"] * (N_SET // 2) + ["tme"] * (N_SET // 2)}).to_csv(
        cohort / "gene_sets.csv", index=False)
    return cohort
