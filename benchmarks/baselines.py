"""What each baseline costs and scores on the study's folds: every baseline of a task kind fit on
5 folds of a cohort, its fit time summed over folds (what ``fit_seconds`` logs) and its mean
validation metric.

Cohorts: the synthetic default (400 patients, its tables only: baselines read no histology) and,
with ``--mcat``, the imported MCAT-layout test table (tests/mcat_fixture.py: 60 cases, 40 genes,
published folds). The baselines fit on the study's driver before any trial starts, so their sum
is a study's start-up delay.

    python benchmarks/baselines.py [--mcat] [--only coxnet_genes,rf_clinical_genes] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ksmodel.baselines import BASELINES, run_baseline, table_expression  # noqa: E402
from ksmodel.cohort import load_cohort  # noqa: E402
from ksmodel.config import SyntheticConfig  # noqa: E402
from ksmodel.splits import load_splits, make_splits  # noqa: E402
from ksmodel.synthetic import generate  # noqa: E402

TASK = {"survival": "survival", "classification": "diagnosis"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mcat", action="store_true",
                        help="the imported MCAT-layout test table instead of the synthetic default")
    parser.add_argument("--only", default="", help="comma-separated baseline names")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BASELINES)
    with tempfile.TemporaryDirectory() as tmp:
        if args.mcat:
            from tests.mcat_fixture import COVARIATES, write_mcat_cohort

            root, covariates, log1p = write_mcat_cohort(Path(tmp)), COVARIATES, False
        else:
            default = SyntheticConfig()
            root = generate(Path(tmp) / "c", patients=default.patients, patches=(2, 3), dim=2,
                            seed=default.seed, quiet=True)
            covariates, log1p = ["age", "is_female", "idh_mutant"], True
        cohort = load_cohort(root, require_features=False)
        table, _ = table_expression(cohort)
        rows = []
        print(f"cohort {'mcat' if args.mcat else 'synthetic default'}: {len(cohort.cases)} "
              f"cases, {table.shape[1]} table genes; load average "
              f"{os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)", flush=True)
        for name in names:
            kind = BASELINES[name].kind
            task = TASK[kind]
            splits = (load_splits(root / "splits.parquet", cohort) if args.mcat
                      else make_splits(cohort, task, k=5, seed=0))
            start = time.perf_counter()
            results = run_baseline(name, cohort, splits, task, covariates, log1p=log1p,
                                   table=table)
            wall = time.perf_counter() - start
            metric = "cindex" if kind == "survival" else "auc"
            row = {"baseline": name, "metric": metric,
                   "value": float(np.mean([r.metrics[metric] for r in results])),
                   "fit_seconds": float(sum(r.fit_seconds for r in results)), "wall": wall,
                   "load": os.getloadavg()[0], "tuning": results[0].tuning}
            rows.append(row)
            print(f"{name:25s} {metric} {row['value']:.4f}  fit {row['fit_seconds']:7.2f} s  "
                  f"(load {row['load']:.1f})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
