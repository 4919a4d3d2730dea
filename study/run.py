"""`python -m study.run --space FILE`: a cross-validated hyper-parameter or ablation study.

Order of work: validate the study file, the cohort and the folds (all before Ray starts), set
up the study folder and the MLflow parent run (with the study's params), fit the baselines on the
study's folds, then hand the trials to a Ray Tune `Tuner` (Optuna through `OptunaSearch`, or a
grid; ASHA for early stopping) and finally write `summary.csv` and `best_config.yaml`. With
`evaluation: nested` the search runs once per outer fold instead (study/nested.py). The exit
status is non-zero when no trial completed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ksmodel.config import ConfigError, ModelConfig, parse_overrides
from ksmodel.data import SYNTHETIC, RunData, load_run_data, resolve_cohort
from ksmodel.errors import CohortError
from ksmodel.splits import save_splits
from study.finish import finish_study
from study.folder import STATE_FILE, StudyError, prepare_folder
from study.nested import prepare_inner_splits
from study.record import Artifacts, Tags, val_metric
from study.search import make_scheduler, make_search
from study.space import SpaceError, StudyConfig, dump_study, load_study
from study.variants import modalities as variant_modalities


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m study.run",
        description="Run a cross-validated KS-Fusion study: Ray Tune schedules the trials "
                    "(locally, or on a Ray cluster with --address), Optuna proposes the "
                    "configurations, ASHA stops bad ones early, MLflow records every trial, "
                    "fold and epoch.",
        epilog="Examples:\n"
               "  python -m study.run --space search_spaces/alpha.yaml\n"
               "  python -m study.run --space search_spaces/smoke.yaml --num-samples 4\n"
               "  python -m study.run --space search_spaces/ablation.yaml --address auto \\\n"
               "      --storage /shared/ray --tracking-uri http://mlflow-host:5000\n"
               "Afterwards: mlflow ui --backend-store-uri sqlite:///studies/<name>/mlflow.db\n"
               "            python -m analysis.compare --experiment <name> "
               "--tracking-uri sqlite:///studies/<name>/mlflow.db",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, type=Path, help="study YAML (see search_spaces/)")
    p.add_argument("--out", type=Path, help="study folder (default studies/<name>)")
    p.add_argument("--name", help="study / MLflow experiment name (default: name: in the YAML)")
    p.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT "
                                     "(default: start Ray locally)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument("--storage", help="shared path or URI for Ray results (default <out>/ray; "
                                     "required to be shared storage on a multi-node cluster)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          "else sqlite:///<out>/mlflow.db)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted study in --out without redoing finished trials")
    p.add_argument("--retry-failed", action="store_true",
                   help="with --resume: run failed trials again as well")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a folder that holds a study (the old folder is kept, "
                        "renamed with a timestamp)")
    p.add_argument("--num-samples", type=int, help="override num_samples")
    p.add_argument("--epochs", type=int, help="override epochs")
    p.add_argument("--cohort", help="override cohort: a folder, or 'synthetic'")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any study key (num_samples=4, scheduler.grace_period=1) or "
                        "fix a model/training parameter (lam=0.2); repeatable")
    return p.parse_args(argv)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out = parse_overrides(args.overrides)
    for key in ("num_samples", "epochs", "cohort", "name"):
        value = getattr(args, key)
        if value is not None:
            out[key] = str(Path(value).resolve()) if key == "cohort" and value != SYNTHETIC \
                else value
    return out


def _modalities(cfg: StudyConfig) -> set[str]:
    for p in cfg.search:
        if p.name == "modality":
            return set(p.values)
    return variant_modalities(cfg.fixed, cfg.variants, ModelConfig.modality)


def load_data(cfg: StudyConfig, out: Path, resume: bool) -> RunData:
    """Cohort, the study's folds (made once, reused on resume) and the bags on the token grid."""
    if any(p.name == "grid" for p in cfg.search):
        raise SpaceError(f"{cfg.source}: key 'search.grid': the token grid is laid out once per "
                         "study; fix it in 'fixed' instead")
    root = resolve_cohort(cfg.cohort, cfg.synthetic)
    split_file = out / Artifacts.SPLITS
    grid = tuple(cfg.fixed.get("grid", ModelConfig.grid))
    print(f"cohort {root}: validating, then reading the bags onto a {grid[0]}x{grid[1]} grid "
          "...", flush=True)
    data = load_run_data(root, cfg.task, modalities=_modalities(cfg), grid=grid,
                         folds=cfg.folds, split_seed=cfg.split_seed,
                         splits_file=split_file if resume and split_file.is_file() else None)
    if not split_file.is_file():
        save_splits(data.splits, split_file)
    return data


def parent_tags(cfg: StudyConfig, out: Path) -> dict[str, str]:
    return {Tags.STUDY: cfg.name, Tags.TASK: cfg.task, Tags.METRIC: cfg.metric,
            Tags.MODE: cfg.mode, Tags.SAMPLER: cfg.sampler, Tags.OUT: str(out),
            Tags.SEARCHED: ",".join(cfg.searched),
            **({Tags.REFERENCE: cfg.reference} if cfg.reference else {})}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_study(args.space, _overrides(args))
    except (SpaceError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = (args.out or Path("studies") / cfg.name).resolve()
    try:
        prepare_folder(out, args.resume, args.overwrite)
        if args.resume:
            saved = json.loads((out / STATE_FILE).read_text())
            cfg = load_study(out / "config.yaml") if (out / "config.yaml").is_file() else cfg
            if _overrides(args):
                print(f"--resume continues with the saved {out / 'config.yaml'}; the command-line "
                      "overrides are not applied", file=sys.stderr)
        else:
            saved = {}
            dump_study(cfg, out / "config.yaml")
        data = load_data(cfg, out, args.resume)
        from study.baseline_runs import check_covariates  # lifelines: not for --help

        check_covariates(cfg, data)
        prepare_inner_splits(cfg, data, out, args.resume)
    except (StudyError, SpaceError, CohortError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_study(cfg, out, data, args, saved)


def run_study(cfg: StudyConfig, out: Path, data: RunData, args: argparse.Namespace,
              saved: dict[str, Any]) -> int:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # resume loses at most ~1 s of state
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    import ray
    from mlflow.tracking import MlflowClient
    from ray import tune

    from study.baseline_runs import run_baselines
    from study.parent import record_study
    from study.tracking import (
        TrialStatusCallback,
        default_tracking_uri,
        ensure_experiment,
        start_parent_run,
    )
    from study.trial import TrialContext, run_trial

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        default_tracking_uri(out)
    client = MlflowClient(tracking_uri)
    experiment_id = saved.get("experiment_id") or ensure_experiment(
        client, cfg.name, out / "mlartifacts" if tracking_uri.startswith("sqlite") else None)
    parent = saved.get("parent_run_id") or start_parent_run(
        client, experiment_id, cfg.name, parent_tags(cfg, out),
        [out / Artifacts.CONFIG, out / Artifacts.SPLITS])
    record_study(client, parent, cfg, data)
    storage = args.storage or saved.get("storage") or str(out / "ray")
    (out / STATE_FILE).write_text(json.dumps(
        {"name": cfg.name, "experiment_id": experiment_id, "parent_run_id": parent,
         "tracking_uri": tracking_uri, "storage": storage, "cohort": str(data.cohort.root)},
        indent=2))

    run_baselines(client, experiment_id, parent, cfg, data)
    if args.address:
        ray.init(address=args.address, log_to_driver=True)
    else:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=True)
    bags = data.bags.numpy() if data.bags is not None else None
    ctx = TrialContext(task=cfg.task, metric=cfg.metric, epochs=cfg.epochs, folds=data.folds,
                       seeds=cfg.seeds, fixed=dict(cfg.fixed), cohort=data.cohort,
                       splits=data.splits, bags=bags, tracking_uri=tracking_uri,
                       experiment_id=experiment_id, parent_run_id=parent,
                       cpus=cfg.resources["cpu"], tags={Tags.STUDY: cfg.name},
                       variants=cfg.variants)
    if cfg.evaluation == "nested":
        from study.nested import run_nested

        return run_nested(cfg, out, ctx, args, client, parent, storage)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    {"cpu": cfg.resources["cpu"], "gpu": cfg.resources["gpu"]})
    search_alg, param_space, num_samples = make_search(cfg)
    run_config = tune.RunConfig(
        name=cfg.name, storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        callbacks=[TrialStatusCallback(tracking_uri, experiment_id)], verbose=1)
    path = f"{storage.rstrip('/')}/{cfg.name}"
    start = time.time()
    if args.resume and tune.Tuner.can_restore(path):
        print(f"resuming {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=args.retry_failed,
                                   restart_errored=args.retry_failed, param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=val_metric(cfg.metric), mode=cfg.mode, num_samples=num_samples,
                search_alg=search_alg, scheduler=make_scheduler(cfg),
                # Optuna's proposals are already limited by its ConcurrencyLimiter
                max_concurrent_trials=cfg.max_concurrent if search_alg is None else None),
            run_config=run_config)
    grid = tuner.fit()
    return finish_study(grid, cfg, out, client, parent, time.time() - start)


if __name__ == "__main__":
    sys.exit(main())
