"""A genomics-only survival study on an imported MCAT-layout cohort, with no code changes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ksmodel.importers.mcat import import_mcat
from tests.study_helpers import ROOT, run_study, runs, study_env
from tests.test_importers import write_gene_sets, write_mcat_table

SPACE = ROOT / "search_spaces" / "tcga_gbmlgg_survival.yaml"


@pytest.mark.slow
def test_genomics_survival_study_on_imported_cohort(tmp_path: Path) -> None:
    table, splits, _ = write_mcat_table(tmp_path / "src")
    cohort = tmp_path / "cohort"
    import_mcat(table, splits, cohort)
    write_gene_sets(cohort)
    out = tmp_path / "study"
    proc = run_study(out, "--cohort", str(cohort), "--num-samples", "2", "--epochs", "2",
                     space=SPACE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the published folds were used as they are
    published = pd.read_parquet(cohort / "splits.parquet").sort_values("case_id")
    used = pd.read_parquet(out / "splits.parquet").sort_values("case_id")
    assert published.reset_index(drop=True).equals(used.reset_index(drop=True))
    _, children = runs(out, "tcga_gbmlgg_survival")
    assert len(children) == 2
    assert (children["params.modality"] == "genomics").all()
    assert children["metrics.val_cindex"].between(0, 1).all()
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis.compare", "--experiment",
                           "tcga_gbmlgg_survival", "--tracking-uri",
                           f"sqlite:///{out / 'mlflow.db'}", "--out", str(report)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=study_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (report / "report.md").is_file()
