"""The study command once its folder is locked: check the folder, cohort and folds, set up the
MLflow store and parent run, fit the baselines, start Ray and run the trials (a Ray Tune
`Tuner`, or one per outer fold with nested evaluation), then finish (summary.csv,
best_config.yaml, the answer).

`python -m study.run` (study/run.py) parses and checks the command and the study file with
nothing heavy imported, so `--help`, a mistyped key and a finished `--resume` answer at once;
it imports this module - the training stack: Ray, MLflow, torch - only to run a study.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import ray
from ray import tune

from ksmodel.config import ModelConfig
from ksmodel.data import RunData, cache_dir, load_run_data, resolve_cohort
from ksmodel.errors import CohortError
from ksmodel.splits import save_splits
from study.arguments import print_error
from study.baseline_runs import check_covariates, run_baselines
from study.fanout import trial_resources
from study.fault_watch import FaultWatch
from study.finish import finish_guarded, load_results, mlflow_hint
from study.folder import StudyError, prepare_folder, read_state, write_state
from study.kept_checkpoints import put_back
from study.local_ray import StopSignal, start_ray
from study.nested import prepare_inner_splits, run_nested
from study.parent import record_study
from study.progress import StudyProgress
from study.quiet import ray_init_kwargs
from study.ray_state import StateBackup, check_state, restored_trials
from study.record import Artifacts, Tags
from study.results import COMPLETED
from study.search import announce_search, make_search, make_tuner
from study.space import SpaceError, StudyConfig, dump_study, load_study
from study.spec import TrialContext
from study.store import (
    ARTIFACT_DIR,
    default_tracking_uri,
    ensure_experiment,
    ensure_store,
    sqlite_path,
)
from study.tracking import close_open_runs, mlflow_client, start_parent_run
from study.trial import run_trial
from study.trial_callback import TrialStatusCallback
from study.variants import VARIANT_KEY, modalities


def _modalities(cfg: StudyConfig) -> set[str]:
    for p in cfg.search:
        if p.name == "modality":
            return set(p.values)
    return modalities(cfg.fixed, cfg.variants, ModelConfig.modality)


def load_data(cfg: StudyConfig, out: Path, resume: bool) -> RunData:
    """Cohort, the study's folds (made once, reused on resume) and the bags on the token grid."""
    if any(p.name == "grid" for p in cfg.search):
        raise SpaceError(f"{cfg.source}: key 'search.grid': the token grid is laid out once per "
                         "study; fix it in 'fixed' instead")
    root = resolve_cohort(cfg.cohort, cfg.synthetic)
    split_file = out / Artifacts.SPLITS
    grid = tuple(cfg.fixed.get("grid", ModelConfig.grid))
    print(f"cohort {root}\n  validating, then reading the bags onto a {grid[0]}x{grid[1]} "
          "grid ...", flush=True)  # the folder on a line of its own: lines stay < 120 columns
    data = load_run_data(root, cfg.task, modalities=_modalities(cfg), grid=grid,
                         folds=cfg.folds, split_seed=cfg.split_seed, repeats=cfg.repeats,
                         splits_file=split_file if resume and split_file.is_file() else None)
    if not split_file.is_file():
        save_splits(data.splits, split_file)
    return data


def parent_tags(cfg: StudyConfig, out: Path) -> dict[str, str]:
    return {Tags.STUDY: cfg.name, Tags.TASK: cfg.task, Tags.METRIC: cfg.metric,
            Tags.MODE: cfg.mode, Tags.SAMPLER: cfg.sampler, Tags.OUT: str(out),
            Tags.SEARCHED: ",".join(cfg.searched),
            **({Tags.REFERENCE: cfg.reference} if cfg.reference else {})}


def locked_main(cfg: StudyConfig, out: Path, args: argparse.Namespace, stop: StopSignal,
                overridden: bool) -> int:
    """The study, its folder locked: check the folder, cohort and folds, then run it
    (``stop``: the SIGTERM handler, checked between the set-up's steps)."""
    existed = out.exists()
    before = set(out.iterdir()) if existed and out.is_dir() else set()
    try:
        prepare_folder(out, args.resume, args.overwrite)
        if args.resume:
            saved = read_state(out)
            cfg = load_study(out / Artifacts.CONFIG) if (out / Artifacts.CONFIG).is_file() else cfg
            if overridden:
                print(f"--resume continues with the saved {out / Artifacts.CONFIG}; the "
                      "command-line overrides are not applied", file=sys.stderr)
            note = _check_ray_state(cfg, out, saved)  # a torn state: put back, or refused
            if note:
                print(note, flush=True)
            if saved.get("trials_done") and not args.retry_failed:
                return _finish_only(cfg, out, saved)
        else:
            saved = {}
            dump_study(cfg, out / Artifacts.CONFIG)
        data = load_data(cfg, out, args.resume)
        check_covariates(cfg, data)
        prepare_inner_splits(cfg, data, out, args.resume)
    except (StudyError, SpaceError, CohortError, ValueError, FileExistsError) as exc:
        print_error(exc)
        if not args.resume:  # a refused start leaves the folder as it found it
            _remove_new(out, before, existed)
        return 2
    stop.check()
    return run_study(cfg, out, data, args, saved, stop)


def _remove_new(out: Path, before: set[Path], existed: bool) -> None:
    """Remove what a refused start wrote (config.yaml, split files): everything in ``out`` that
    was not there before, and ``out`` itself if this command created it."""
    if not out.is_dir():
        return
    for path in set(out.iterdir()) - before:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if not existed:
        with contextlib.suppress(OSError):  # not empty: something else wrote there meanwhile
            out.rmdir()


def _check_ray_state(cfg: StudyConfig, out: Path, saved: dict[str, Any]) -> str | None:
    """Before a resume: Ray's saved state of the study reads whole (study/ray_state.py) and
    every checkpoint it restarts a trial from exists (study/kept_checkpoints.py)."""
    storage = saved.get("storage")
    if not storage or "://" in storage:
        return None
    folder = Path(storage) / cfg.name
    notes = [check_state(folder, out)]
    try:
        back = put_back(folder) if folder.is_dir() else []
    except OSError as exc:
        raise StudyError(f"{folder}: could not put back the checkpoints Ray's saved state "
                         f"restarts trials from ({exc}); free the disk or fix the folder's "
                         "permissions and run --resume again") from exc
    if back:
        notes.append(f"note: put back {len(back)} checkpoint(s) that Ray's saved state "
                     f"restarts trials from but Ray had already replaced ({', '.join(back)})")
    return "\n".join(n for n in notes if n) or None


def _finish_only(cfg: StudyConfig, out: Path, saved: dict[str, Any]) -> int:
    """Every trial ended in an earlier run but its final step did not complete: finish from
    the saved Ray results and the MLflow store, without starting Ray."""
    print(f"{cfg.name}: every trial ended in an earlier run; finishing the study", flush=True)
    client = mlflow_client(saved["tracking_uri"])
    grid = load_results(f"{saved['storage'].rstrip('/')}/{cfg.name}", cfg)
    return finish_guarded(grid, cfg, out, client, saved["experiment_id"],
                          saved["parent_run_id"], None)


def run_study(cfg: StudyConfig, out: Path, data: RunData, args: argparse.Namespace,
              saved: dict[str, Any], stop: StopSignal) -> int:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # resume loses at most ~1 s of state
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        saved.get("tracking_uri") or default_tracking_uri(out)
    artifact_root = out / ARTIFACT_DIR if sqlite_path(tracking_uri) is not None else None
    storage = args.storage or saved.get("storage") or str(out / "ray")
    faults = FaultWatch(out, storage, tracking_uri, artifact_root)
    refused = faults.reserve()  # room to close the study's records if the disk fills
    if refused is not None:
        return refused
    ensure_store(tracking_uri, cfg.name, artifact_root, cache_dir())  # built aside, then renamed
    client = mlflow_client(tracking_uri)
    experiment_id = saved.get("experiment_id") or ensure_experiment(client, cfg.name,
                                                                    artifact_root)
    state = dict(name=cfg.name, experiment_id=experiment_id, tracking_uri=tracking_uri,
                 storage=storage, cohort=str(data.cohort.root), trials_done=False,
                 finished=False)
    parent = saved.get("parent_run_id") or start_parent_run(
        client, experiment_id, cfg.name, parent_tags(cfg, out),
        [out / Artifacts.CONFIG, out / Artifacts.SPLITS],  # recorded the moment it exists:
        on_created=lambda run_id: write_state(out, parent_run_id=run_id, **state))  # a stop
    write_state(out, parent_run_id=parent, **state)  # closes it (_interrupted_early)
    record_study(client, parent, cfg, data)
    announce_search(client, parent, cfg)  # a search below its sampler's start-up trials is random

    print(mlflow_hint(tracking_uri, experiment_id, ", as the trials run"), flush=True)
    stop.check()
    run_baselines(client, experiment_id, parent, cfg, data)
    stop.check()
    start_ray(args.address, args.num_cpus, stop,
              **ray_init_kwargs(args.progress))  # Ray's chatter off (study/quiet.py)
    stop.check()
    bags = data.bags.numpy() if data.bags is not None else None
    ctx = TrialContext(task=cfg.task, epochs=cfg.epochs, folds=data.folds,
                       seeds=cfg.seeds, fixed=dict(cfg.fixed), cohort=data.cohort,
                       splits=data.splits, bags=bags, tracking_uri=tracking_uri,
                       experiment_id=experiment_id, parent_run_id=parent,
                       cpus=cfg.resources["cpu"], gpus=cfg.resources["gpu"],
                       tags={Tags.STUDY: cfg.name}, variants=cfg.variants,
                       # nested searches keep no mid-trial checkpoints (their Tuners keep all)
                       checkpoint_every=cfg.checkpoint_every if cfg.evaluation == "cv" else 0,
                       fold_parallel=cfg.fold_parallel)
    # Ray's new output engine prints its trial table and an experiment header even at
    # verbose=0; the old one is silent at verbose=0, and StudyProgress prints the progress
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if cfg.sampler != "grid" and args.progress != "verbose":
        # its "A new study created in memory" line says nothing to a user
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    stop.check()  # the last step before Tune takes the signals over
    if cfg.evaluation == "nested":
        return run_nested(cfg, out, ctx, args, client, parent, storage)
    n_folds = len(data.folds) * (len(cfg.seeds) or 1)  # fanned out: one bundle per fold
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_resources(
        cfg.fold_parallel, cfg.resources["cpu"], cfg.resources["gpu"], n_folds))
    search_alg, param_space, num_samples = make_search(cfg)
    status = TrialStatusCallback(tracking_uri, experiment_id, cfg.metric, roots=faults.roots,
                                 store=faults.store)
    backup = StateBackup(expect_restored=restored_trials(faults.experiment(cfg.name))
                         if args.resume else 0)
    shown = ([VARIANT_KEY, "seed"] if cfg.variants else []) + cfg.searched
    expected = num_samples if search_alg is not None else cfg.grid_size()  # config.yaml's
    progress = StudyProgress(cfg.metric, expected, cfg.epochs, shown, mode=cfg.mode,
                             concurrency=cfg.max_concurrent, level=args.progress,
                             scheduler=cfg.scheduler.type)
    run_config = tune.RunConfig(
        name=cfg.name, storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        # mid-trial checkpoints (study/checkpoint.py): the latest few per trial; PBT's donors
        # must keep theirs until the trials that copy them have started
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=8 if cfg.scheduler.type == "pbt" else 2),
        # Ray's own table is replaced by StudyProgress (lines < 120 columns, early stops named)
        callbacks=[status, progress, backup], verbose=0,
        # a trial ends with the report that completes it: PBT, which acts on reports at its
        # perturbation epochs, must not send a finished trial back to an earlier checkpoint
        stop={COMPLETED: True} if cfg.scheduler.type == "pbt" else None)
    start = time.time()
    tuner = make_tuner(trainable, cfg, (search_alg, param_space, num_samples), run_config,
                       resume=args.resume, retry_failed=args.retry_failed)
    try:
        grid = tuner.fit()
    except (KeyboardInterrupt, SystemExit):  # a second signal: stop at once
        ray.shutdown()  # no trial of ours writes any more
        return _interrupted(client, experiment_id, parent, None)
    except Exception as exc:  # a fault on the study's files, or a resume Ray could not restore
        stop = faults.stopped_by(exc, status.fault)
        if stop is None:
            raise
        return faults.stop(stop, client, experiment_id, parent, status.unfinished)
    if status.fault is not None:  # seen as Tune was ending anyway
        return faults.stop(status.fault, client, experiment_id, parent, status.unfinished)
    if status.interrupted:  # Ctrl-C or SIGTERM: Tune stopped and saved its state
        return _interrupted(client, experiment_id, parent, status.unfinished)
    if len(grid) < expected:  # never a smaller study than config.yaml asks for
        return faults.stop(StudyError(
            f"{out / Artifacts.CONFIG}: the study asks for {expected} trials but Ray "
            f"{'restored and ' if args.resume else ''}ran {len(grid)}"), client, experiment_id,
            parent, expected - len(grid))
    write_state(out, trials_done=True)
    return finish_guarded(grid, cfg, out, client, experiment_id, parent,
                          time.time() - start)


def interrupted_early(out: Path) -> int:
    """Stopped while the study was being set up (cohort, store, baselines, Ray start): close
    what it opened and say how to continue."""
    state = read_state(out)
    if state.get("parent_run_id"):
        return _interrupted(mlflow_client(state["tracking_uri"]), state["experiment_id"],
                            state["parent_run_id"], None)
    print("interrupted before the study started; run the same command again", file=sys.stderr)
    return 130


def _interrupted(client: Any, experiment_id: str, parent: str, unfinished: int | None) -> int:
    """Leave every run closed (the study stays resumable) and say how to continue."""
    try:
        close_open_runs(client, experiment_id, parent, "KILLED")
    except Exception as exc:  # noqa: BLE001 - --resume closes them as well
        print(f"warning: could not close the study's open MLflow runs: {exc}", file=sys.stderr)
    what = f"{unfinished} trial(s) did not finish" if unfinished else "the study was stopped"
    print(f"interrupted: {what}; run the same command with --resume to continue",
          file=sys.stderr)
    return 130


__all__ = ["interrupted_early", "load_data", "locked_main", "parent_tags", "run_study"]
