"""Fold fan-out speed-up: one trial's training time in lock-step against one Ray actor per fold.

Runs the same one-trial study (`python -m study.run`, local Ray with --num-cpus) three ways:
lock-step with 1 CPU (1 torch thread), lock-step with all the trial's CPUs as torch threads, and
``fold_parallel: tasks`` with 1 CPU per fold; reports each trial's first epoch (it includes the
folds' set-up: fanned out, starting one Ray worker process per fold), the median of its other
epochs (Ray's ``time_this_iter_s``: all folds one epoch, the steady state), its wall time as Ray
saw it, and whether the three gave the same final metric. The figures are only as quiet as the
machine: other processes on the same cores inflate every number (the load average is printed).

    python benchmarks/fold_fanout.py [--folds 2] [--epochs 8] [--patients 320] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from study.results import TIME_TOTAL

ROOT = Path(__file__).resolve().parents[1]
MODES = {"lockstep_1cpu": ("lockstep", 1), "lockstep_allcpu": ("lockstep", None),
         "tasks_1cpu_per_fold": ("tasks", 1)}


def study_file(path: Path, mode: str, cpu: int, args: argparse.Namespace) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw.update(name="fanout", epochs=args.epochs, folds=args.folds, sampler="grid",
               scheduler={"type": "none"}, max_concurrent=1, fold_parallel=mode,
               resources={"cpu": cpu, "gpu": 0}, checkpoint_every=0,
               synthetic={**raw["synthetic"], "patients": args.patients})
    raw["search"] = {"lr": {"type": "categorical", "values": [1.0e-3]}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(name: str, mode: str, cpu: int, args: argparse.Namespace, tmp: Path) -> dict:
    space = study_file(tmp / f"{name}.yaml", mode, cpu, args)
    out = tmp / name
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(space), "--out",
                           str(out), "--num-cpus", str(args.cpus)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    (result,) = (out / "ray" / "fanout").glob("run_trial_*/result.json")
    rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
    epochs = [r["time_this_iter_s"] for r in rows]
    return {"mode": name, "first_epoch_s": epochs[0], "epoch_s": statistics.median(epochs[1:]),
            "trial_wall_s": rows[-1][TIME_TOTAL], "study_wall_s": time.time() - start,
            "val_auc": rows[-1]["val_auc"], "load_avg_1m": os.getloadavg()[0]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--patients", type=int, default=320)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (mode, cpu) in MODES.items():
            cpu = cpu or max(1, args.cpus // (args.folds if mode == "tasks" else 1))
            if mode == "tasks" and cpu * args.folds > args.cpus:
                sys.exit(f"--cpus {args.cpus} cannot hold {args.folds} folds at {cpu} CPU each")
            rows.append(run(name, mode, cpu, args, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["epoch_s"]
    for r in rows:
        print(f"{r['mode']:>22}: {r['epoch_s']:.2f} s/epoch after the first "
              f"(x{base / r['epoch_s']:.2f} vs lockstep_1cpu), first epoch "
              f"{r['first_epoch_s']:.1f} s, trial wall "
              f"{r['trial_wall_s']:.1f} s, study wall {r['study_wall_s']:.1f} s, val_auc "
              f"{r['val_auc']:.6f}, load avg {r['load_avg_1m']:.1f} on {os.cpu_count()} cores")
    same = len({r["val_auc"] for r in rows[::2]}) == 1
    print(f"lockstep_1cpu and tasks_1cpu_per_fold give the same val_auc: {same}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
