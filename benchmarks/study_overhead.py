"""Platform overhead of a study: what a trial spends outside training its folds.

Runs a real study (`python -m study.run`, local Ray, SQLite MLflow) whose trials last >= 30 s,
then splits every completed trial's wall time (its MLflow run, from creation to close) into
training (the epochs of all folds, measured inside the trial) and everything else: fold
set-up, MLflow logging that the trial waited on, Ray reporting. The study-level figure adds Ray
scheduling: total study wall time against the trials' own time at the study's concurrency.

    python benchmarks/study_overhead.py [--trials 4] [--epochs 6] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
import yaml

from study.record import Roles, Status, Tags
from study.results import RUN_ID, SETUP_SECONDS, TRAIN_SECONDS
from study.store import default_tracking_uri

ROOT = Path(__file__).resolve().parents[1]


def study_file(path: Path, trials: int, epochs: int) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw.update(name="overhead", num_samples=trials, epochs=epochs, folds=3,
               scheduler={"type": "none"}, max_concurrent=2,
               synthetic={"patients": 400, "patches": 250, "dim": 384, "seed": 0,
                          "conflict": 0.3})
    raw["fixed"] = {"lam": 0.1, "coordination": "cgcoord", "batch_size": 32}
    raw["search"] = {"alpha": {"type": "float", "low": 0.0, "high": 1.0}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def trial_table(out: Path) -> pd.DataFrame:
    mlflow.set_tracking_uri(default_tracking_uri(out))
    runs = mlflow.search_runs(experiment_names=["overhead"])
    runs = runs[(runs[f"tags.{Tags.ROLE}"] == Roles.TRIAL)
                & (runs[f"tags.{Tags.STATUS}"] == Status.COMPLETED)]
    ray_results = []
    for result in (out / "ray" / "overhead").glob("*/result.json"):
        last = [json.loads(line) for line in result.read_text().splitlines() if line.strip()][-1]
        ray_results.append({k: last[k] for k in (RUN_ID, TRAIN_SECONDS, SETUP_SECONDS)})
    timing = pd.DataFrame(ray_results)
    table = runs.merge(timing, left_on="run_id", right_on=RUN_ID)
    table["wall_seconds"] = (table["end_time"] - table["start_time"]).dt.total_seconds()
    table["overhead_seconds"] = table["wall_seconds"] - table[TRAIN_SECONDS]
    table["overhead_share"] = table["overhead_seconds"] / table["wall_seconds"]
    return table[[f"tags.{Tags.TRIAL_ID}", "wall_seconds", TRAIN_SECONDS, SETUP_SECONDS,
                  "overhead_seconds", "overhead_share"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        space = study_file(tmp / "overhead.yaml", args.trials, args.epochs)
        out = tmp / "study"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(space),
                               "--out", str(out), "--num-cpus", "2"], cwd=ROOT,
                              capture_output=True, text=True)
        study_wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
            return 1
        table = trial_table(out)
        files = sum(1 for _ in (out / "cohort" / "features").glob("*.h5"))
    concurrency = 2
    ideal = table["wall_seconds"].sum() / concurrency
    report = {
        "trials": len(table), "mean_trial_seconds": table["wall_seconds"].mean(),
        "mean_overhead_share": table["overhead_share"].mean(),
        "max_overhead_share": table["overhead_share"].max(),
        "study_wall_seconds": study_wall,
        "study_overhead_share": 1 - table[TRAIN_SECONDS].sum() / concurrency / study_wall,
        "scheduling_and_startup_seconds": study_wall - ideal,
        "feature_files": files,
        "bag_reads_per_study": files, "bag_reads_per_trial": 0,
    }
    with pd.option_context("display.width", 140, "display.precision", 3):
        print(table.to_string(index=False))
    print("\n".join(f"{k:>32}: {v:.3f}" if isinstance(v, float) else f"{k:>32}: {v}"
                    for k, v in report.items()))
    print("bags are read once per study by the driver and shared with every trial through "
          "Ray's object store (zero-copy), so trials read no h5 file")
    if args.json:
        args.json.write_text(json.dumps({"per_trial": table.to_dict("records"), **report},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
