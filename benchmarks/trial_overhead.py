"""Per-trial platform cost of a study made of many tiny trials (the n = 8 / 32 / 64 curve).

Each point is a real study (`python -m study.run`, local Ray, SQLite MLflow) of n trials that
train almost nothing (2 epochs, 2 folds, the smoke model on 80 synthetic patients), so nearly all
of a trial's time is the platform's: starting or reusing a Ray worker, shipping the study's data,
MLflow run creation and logging, Ray's reporting and bookkeeping.

Figures per study:
  wall_s              the whole command, from start to exit
  per_trial_wall_s    wall_s / n
  per_trial_worker_s  the worker time a trial costs: (wall_s - fixed) x concurrency / n, where
                      `fixed` (Ray start, cohort, finish) is the intercept of the wall-vs-n line
  train_s             the trial's own training (all epochs x folds), measured inside the trial
  overhead_s          per_trial_worker_s - train_s: what the platform spends per trial
and, when the trials report them (this tree's study.trial does), where a trial's own time goes:
  in_trial_s          from entering the trial function to its last report
  setup_s             entering the trial to its first epoch (MLflow run, folds, models)
  between_trials_s    on one worker, from a trial's last report to the next trial's start
                      (Ray's turnaround: stop, reset or a new worker, the next start)
  workers             distinct worker processes that ran the trials
The slope of wall_s over n is the marginal wall time of one more trial.

    python benchmarks/trial_overhead.py [--n 8 32 64] [--tree PATH ...] [--repeat R]
                                        [--json out.json]

``--tree PATH`` runs another checkout's code (e.g. ``git worktree add /tmp/old <commit>``) with
this Python; several trees are measured side by side, interleaved point by point, so a busy
machine slows them alike. On a shared machine repeat the curve (``--repeat``) and report ranges.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from study.results import ENTERED_AT, READY_AT, REPORTED_AT, TRAIN_SECONDS

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = 2


def study_file(path: Path, trials: int) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw.update(name="trial_overhead", num_samples=trials, epochs=2, folds=2,
               scheduler={"type": "none"}, sampler="random", max_concurrent=CONCURRENCY)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def ray_results(storage: Path) -> pd.DataFrame:
    """The last result each trial reported to Ray (training time and our timestamps)."""
    rows = []
    for result in storage.glob("*/result.json"):
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        if lines:
            rows.append(lines[-1])
    return pd.DataFrame(rows)


def run_point(tree: Path, n: int, tmp: Path) -> dict[str, float]:
    space = study_file(tmp / f"space_{n}.yaml", n)
    out = tmp / f"study_{n}"
    # RAY_ADDRESS=local: a local Ray of its own even where another Ray cluster runs (older trees
    # would otherwise join it)
    env = {**os.environ, "PYTHONPATH": str(tree), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_ADDRESS": "local"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(space), "--out",
                           str(out), "--num-cpus", str(CONCURRENCY)], cwd=tree, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"study failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    results = ray_results(out / "ray" / "trial_overhead")
    point = {"n": n, "wall_s": wall, "trials": len(results),
             "train_s": float(results[TRAIN_SECONDS].mean())}
    if ENTERED_AT in results:  # in-trial timestamps (trials of this tree report them)
        point["in_trial_s"] = float((results[REPORTED_AT] - results[ENTERED_AT]).mean())
        point["setup_s"] = float((results[READY_AT] - results[ENTERED_AT]).mean())
        # between two trials on one worker: the last report of one to the start of the next
        ordered = results.sort_values(["pid", ENTERED_AT])
        gaps = ordered[ENTERED_AT] - ordered.groupby("pid")[REPORTED_AT].shift()
        point["between_trials_s"] = float(gaps.mean())
        point["workers"] = int(results["pid"].nunique())
    return point


def summarise(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """Per-trial figures, with the fixed cost and the slope of wall time over n per tree."""
    fits = {}
    frames = []
    for tree, part in table.groupby("tree", sort=False):
        mean = part.groupby("n")["wall_s"].mean()
        slope, fixed = (np.polyfit(mean.index, mean.values, 1) if len(mean) > 1
                        else (float("nan"), 0.0))
        part = part.assign(per_trial_wall_s=part["wall_s"] / part["n"],
                           per_trial_worker_s=(part["wall_s"] - fixed) * CONCURRENCY
                           / part["n"])
        part["overhead_s"] = part["per_trial_worker_s"] - part["train_s"]
        fits[tree] = (float(fixed), float(slope))
        frames.append(part)
    return pd.concat(frames, ignore_index=True), fits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--tree", type=Path, action="append",
                        help="checkout whose study.run to measure (repeatable; default: this one)")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    points = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            for n in args.n:
                for i, tree in enumerate(trees):
                    sub = Path(tmp) / f"r{rep}_t{i}"
                    sub.mkdir(exist_ok=True)
                    point = {"tree": str(tree), "repeat": rep, **run_point(tree, n, sub)}
                    points.append(point)
                    print(json.dumps(point), flush=True)
    table, fits = summarise(pd.DataFrame(points))
    with pd.option_context("display.width", 200, "display.precision", 3,
                           "display.max_columns", 20):
        print(table.drop(columns="tree").assign(tree=table["tree"].map(lambda t: Path(t).name))
              .to_string(index=False))
    for tree, (fixed, slope) in fits.items():
        print(f"{tree}: fixed cost {fixed:.1f} s, marginal wall per trial {slope:.3f} s "
              f"(x{CONCURRENCY} workers = {slope * CONCURRENCY:.3f} worker-s per trial)")
    if args.json:
        args.json.write_text(json.dumps({"fits": fits, "points": table.to_dict("records")},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
