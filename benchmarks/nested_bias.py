"""How optimistic is best-of-search? The same search scored both ways, over several fold seeds.

For each split seed, one small synthetic study (``search_spaces/nested_smoke.yaml``'s model and
cohort, a wider search) runs twice through ``python -m study.run``:

* ``evaluation: cv`` - the search and the score share the k folds; the parent run's ``best_<m>``
  is what a plain search reports (best-of-search);
* ``evaluation: nested`` - the same search on inner folds of each outer training part, the
  choice refit and scored once on the outer fold; parent ``nested_<m>`` (the unbiased
  estimate) and ``inner_<m>`` (the chosen trials' own inner scores, best-of-search inside).

Selection on noisy validation scores makes best-of-search biased upwards, so in expectation
nested <= best-of-search; one draw can go either way, which is why several seeds are run and the
mean difference is reported, not asserted per seed.

    python benchmarks/nested_bias.py [--seeds 0 1 2] [--trials 6] [--out DIR] [--json out.json]

Cost per seed: cv = trials x folds fold-trainings; nested = folds x trials x inner_folds + folds
refits (README, "Evaluation modes").
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

import pandas as pd
import yaml
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.record import Roles, Tags, best_metric, inner_metric, nested_metric  # noqa: E402
from study.store import default_tracking_uri  # noqa: E402

METRIC = "auc"


def study_file(path: Path, name: str, evaluation: str, seed: int, trials: int, folds: int,
               inner_folds: int, epochs: int) -> Path:
    raw = yaml.safe_load((ROOT / "search_spaces" / "nested_smoke.yaml").read_text())
    raw.update(name=name, evaluation=evaluation, split_seed=seed, num_samples=trials,
               folds=folds, epochs=epochs, scheduler={"type": "none"}, baselines=[],
               covariates=[])
    raw["search"] = {"lr": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-3},
                     "alpha": {"type": "float", "low": 0.0, "high": 1.0}}
    if evaluation == "nested":
        raw["inner_folds"] = inner_folds
    else:
        raw.pop("inner_folds", None)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(space: Path, out: Path, cpus: int, timeout: float) -> float:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_ADDRESS="local")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(space), "--out",
                           str(out), "--num-cpus", str(cpus)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{space.name}: study.run exited {proc.returncode}")
    return time.perf_counter() - start


def parent_metrics(out: Path, name: str) -> dict[str, float]:
    client = MlflowClient(default_tracking_uri(out))
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id],
                              filter_string=f"tags.`{Tags.ROLE}` = '{Roles.STUDY}'")
    return dict(runs[0].data.metrics)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="split seeds")
    p.add_argument("--trials", type=int, default=6, help="num_samples of the search")
    p.add_argument("--folds", type=int, default=3, help="(outer) folds")
    p.add_argument("--inner-folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--out", type=Path, help="keep the studies here (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write the table as JSON")
    p.add_argument("--timeout", type=float, default=3600, help="per study, seconds")
    args = p.parse_args(argv)
    base = args.out or Path(tempfile.mkdtemp(prefix="nested-bias-"))
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        row: dict[str, float | int] = {"split_seed": seed}
        for evaluation in ("cv", "nested"):
            name = f"bias_{evaluation}_{seed}"
            space = study_file(base / f"{name}.yaml", name, evaluation, seed, args.trials,
                               args.folds, args.inner_folds, args.epochs)
            seconds = run(space, base / name, args.cpus, args.timeout)
            metrics = parent_metrics(base / name, name)
            row[f"{evaluation}_seconds"] = round(seconds)
            if evaluation == "cv":
                row["cv_best_of_search"] = metrics[best_metric(METRIC)]
            else:
                row["nested_inner_best"] = metrics[inner_metric(METRIC)]
                row["nested_estimate"] = metrics[nested_metric(METRIC)]
            print(f"seed {seed} {evaluation}: {seconds:.0f} s", flush=True)
        row["optimism"] = row["cv_best_of_search"] - row["nested_estimate"]
        rows.append(row)
        print(pd.DataFrame([row]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    mean = table.drop(columns="split_seed").mean().to_dict()
    sd = table["optimism"].std(ddof=1) if len(table) > 1 else float("nan")
    print(f"\n{METRIC}, {args.trials} trials, {args.folds} (outer) folds, {args.inner_folds} "
          f"inner folds, {args.epochs} epochs; studies in {base}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"mean over {len(table)} seeds: best-of-search (cv) {mean['cv_best_of_search']:.4f}, "
          f"nested estimate {mean['nested_estimate']:.4f}, best-of-search - nested "
          f"{mean['optimism']:+.4f} (sd {sd:.4f}); nested lower on "
          f"{int((table['optimism'] > 0).sum())} of {len(table)} seeds")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "mean": mean}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
