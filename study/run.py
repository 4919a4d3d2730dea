"""`python -m study.run --space FILE`: a cross-validated hyper-parameter or ablation study.

Order of work: validate the study file, take the study folder's lock (before anything is
written: one study per folder), validate the cohort and the folds (all before Ray starts), set
up the study folder and the MLflow parent run (with the study's params), fit the baselines on the
study's folds, then hand the trials to a Ray Tune `Tuner` (Optuna through `OptunaSearch`, or a
grid; ASHA for early stopping) and finally write `summary.csv` and `best_config.yaml`. With
`evaluation: nested` the search runs once per outer fold instead (study/nested.py). The exit
status is non-zero when no trial completed.
The folder, lock and resume rules are in docs/errors.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.folder import StudyError, prepare_folder, read_state, write_state
from study.lock import StudyLock, stale_note
from study.record import Artifacts, Tags
from study.store import ARTIFACT_DIR, DB_NAME, sqlite_path

if TYPE_CHECKING:  # the training stack is imported once the command needs it, so that
    # `--help` and a `--resume` of a finished study answer at once (study/resume.py)
    from ksmodel.data import RunData
    from study.space import StudyConfig


SET_HELP_GROUPS = ("study keys", "study keys, dotted", "model parameters",
                   "training parameters", "coordination parameters")


def set_keys() -> dict[str, list[str]]:
    """Every key ``--set`` accepts, grouped, read from the registries the study-file parser
    checks against (study/space.py, ksmodel/config.py), so the help cannot drift from them."""
    import dataclasses

    from ksmodel.config import MODEL_KEYS, TRAIN_KEYS, coordination_keys
    from study.space import _NESTED, _TOP_KEYS, TRIAL_KEYS

    top = sorted(_TOP_KEYS)
    dotted = [f"{section}.{f.name}" for section, spec in sorted(_NESTED.items())
              for f in dataclasses.fields(spec)] + ["resources.cpu", "resources.gpu",
                                                    "fixed.<param>", "search.<param>"]
    params = TRIAL_KEYS - _TOP_KEYS  # a top-level key (epochs) wins over a parameter name
    coord = coordination_keys()
    return dict(zip(SET_HELP_GROUPS, (
        top, dotted, sorted(params & MODEL_KEYS - coord),
        sorted(params & TRAIN_KEYS - coord), sorted(params & coord)), strict=True))


def set_keys_help(width: int = 96) -> str:
    """The --help section listing `set_keys`, wrapped."""
    import textwrap

    lines = ["Keys --set KEY=VALUE accepts (VALUE is YAML: 0.1, true, [8,8], "
             "{type: float, low: 0, high: 1}):"]
    for group, keys in set_keys().items():
        lines += textwrap.wrap(", ".join(keys), width=width, initial_indent=f"  {group}: ",
                               subsequent_indent="      ", break_on_hyphens=False)
    lines += ["  A parameter name fixes that parameter for every trial (and takes it out of "
              "search:);", "  meanings and ranges: docs/study-files.md."]
    return "\n".join(lines)


class _HelpWithKeys(argparse.Action):
    """-h/--help: the usual help plus the --set keys (read from the registries only when
    asked, so a plain command does not pay for them twice)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.epilog = f"{parser.epilog}\n\n{set_keys_help()}"
        parser.print_help()
        parser.exit()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m study.run", add_help=False,
        description="Run a cross-validated KS-Fusion study: Ray Tune schedules the trials "
                    "(locally, or on a\nRay cluster with --address), Optuna proposes the "
                    "configurations, ASHA stops bad ones\nearly, MLflow records every trial, "
                    "fold and epoch. Progress: one line per trial start and\nend, one status "
                    "line per epoch (README, 'While it runs').",
        epilog="Examples:\n"
               "  python -m study.run --space search_spaces/smoke.yaml   # a first look, 1-2 min\n"
               "  python -m study.run --space search_spaces/alpha.yaml\n"
               "  python -m study.run --space search_spaces/alpha.yaml --once   # its defaults, "
               "one trial\n"
               "  python -m study.run --space search_spaces/alpha.yaml --set num_samples=12 "
               "--set lam=0.2\n"
               "  python -m study.run --space search_spaces/ablation.yaml --address auto \\\n"
               "      --storage /shared/ray --tracking-uri http://mlflow-host:5000\n"
               "At the end the study prints the MLflow UI command, the URL of its trials side "
               "by side (status,\nmetric, searched parameters; README, 'What you see in "
               "MLflow') and the report command:\n"
               "  python -m analysis.compare --experiment <name> --tracking-uri "
               f"sqlite:///studies/<name>/{DB_NAME}",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-h", "--help", action=_HelpWithKeys,
                   help="show this help, with every key --set accepts, and exit")
    p.add_argument("--space", required=True, type=Path, help="study YAML (see search_spaces/)")
    p.add_argument("--out", type=Path, help="study folder (default studies/<name>)")
    p.add_argument("--name", help="study / MLflow experiment name (default: name: in the YAML)")
    p.add_argument("--address", help="join a running Ray cluster: 'auto' or HOST:PORT "
                                     "(default: start Ray locally)")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument("--storage", help="shared path or URI for Ray results (default <out>/ray; "
                                     "required to be shared storage on a multi-node cluster)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                          f"else sqlite:///<out>/{DB_NAME})")
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
    p.add_argument("--once", action="store_true",
                   help="run the study's default configuration once: one trial of its fixed "
                        "parameters with the searched ones at their defaults, every fold, no "
                        "early stopping, as study <name>-once (README, 'The two commands')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any study key (num_samples=4, scheduler.grace_period=1) or "
                        "fix a model/training parameter (lam=0.2); repeatable; the keys are "
                        "listed below")
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--quiet", "-q", dest="progress", action="store_const", const="quiet",
                       default="normal", help="no progress lines, only the final summary")
    shown.add_argument("--verbose", "-v", dest="progress", action="store_const",
                       const="verbose", help="progress lines plus each epoch's per-fold values "
                                             "and training loss")
    return p.parse_args(argv)


def _error(exc: BaseException | str) -> None:
    """One ``error:`` line (a YAML parser's multi-line message included), no traceback."""
    print("error: " + " ".join(str(exc).split()), file=sys.stderr)


_OPTIONS = {"num_samples": "--num-samples", "epochs": "--epochs", "cohort": "--cohort",
            "name": "--name"}
"""Study keys that have an option of their own (overrides, like --set)."""


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set and the options above as study-file overrides, every key checked (a mistyped
    one is an `ArgumentMistake` naming the closest keys); no training-stack import."""
    from ksmodel.config import parse_overrides
    from study.arguments import check_set_keys

    out = parse_overrides(args.overrides)
    check_set_keys(out)
    for key in _OPTIONS:
        value = getattr(args, key)
        if value is not None:
            # a cohort folder given here is relative to where the command runs
            out[key] = str(Path(value).resolve()) if key == "cohort" and value != "synthetic" \
                else value
    return out


def _typed(args: argparse.Namespace) -> dict[str, str]:
    """Each override key as the user typed it (``--set lr=-1``, ``--epochs 0``), so an error
    about it names the command line rather than the study file."""
    typed = {}
    for item in args.overrides:
        key, _, _ = item.partition("=")
        typed[key.strip()] = f"--set {item}"
    for key, option in _OPTIONS.items():
        if getattr(args, key) is not None:
            typed[key] = f"{option} {getattr(args, key)}"
    return typed


def _modalities(cfg: StudyConfig) -> set[str]:
    from ksmodel.config import ModelConfig
    from study.variants import modalities

    for p in cfg.search:
        if p.name == "modality":
            return set(p.values)
    return modalities(cfg.fixed, cfg.variants, ModelConfig.modality)


def load_data(cfg: StudyConfig, out: Path, resume: bool) -> RunData:
    """Cohort, the study's folds (made once, reused on resume) and the bags on the token grid."""
    from ksmodel.config import ModelConfig
    from ksmodel.data import load_run_data, resolve_cohort
    from ksmodel.splits import save_splits
    from study.space import SpaceError

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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from study.quiet import quiet_driver

    quiet_driver(args.progress)  # before MLflow or Ray is imported
    if args.retry_failed and not args.resume:  # it would silently start a new study
        _error("--retry-failed runs the failed trials of an interrupted or finished study "
               "again, so it needs --resume (and that study's --out); drop it to start a study")
        return 2
    if not args.address:  # before anything imports ray: a local Ray on 127.0.0.1 only
        from study.local_ray import prefer_loopback

        prefer_loopback()
    if args.resume:
        from study.resume import finished_noop

        try:
            code = finished_noop(args)  # a finished study: nothing to do, nothing started
        except StudyError as exc:
            _error(exc)
            return 2
        if code is not None:
            return code
    from ksmodel.config import ConfigError
    from study.arguments import ArgumentMistake, attribute, check_space, once
    from study.space import SpaceError, load_study

    try:  # argument mistakes first, before anything heavy is imported
        check_space(args.space)
        overrides = _overrides(args)
        cfg = load_study(args.space, overrides)
        if args.once:
            cfg, what = once(cfg, args.name)
            print(what, flush=True)
    except ArgumentMistake as exc:
        _error(exc)
        return 2
    except (SpaceError, ConfigError) as exc:
        _error(attribute(str(exc), str(args.space), _typed(args)))
        return 2
    out = (args.out or Path("studies") / cfg.name).resolve()
    try:
        lock = StudyLock.acquire(out)  # before anything is written; held to the end
    except StudyError as exc:
        _error(exc)
        return 2
    with lock:
        note = stale_note(lock)
        if note:
            print(note, flush=True)
        previous = signal.signal(signal.SIGTERM, _stop_like_ctrl_c)
        try:
            return _locked_main(cfg, out, args)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before Tune took over the signals
            return _interrupted_early(out)
        finally:  # before the lock is released: no worker of this study outlives it
            signal.signal(signal.SIGTERM, previous)
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                ray.shutdown()
            from study.faults import Reserve

            Reserve(out).release()  # kept only while a study command runs


def _locked_main(cfg: StudyConfig, out: Path, args: argparse.Namespace) -> int:
    from ksmodel.errors import CohortError
    from study.space import SpaceError, dump_study, load_study

    existed = out.exists()
    before = set(out.iterdir()) if existed and out.is_dir() else set()
    try:
        prepare_folder(out, args.resume, args.overwrite)
        if args.resume:
            saved = read_state(out)
            cfg = load_study(out / Artifacts.CONFIG) if (out / Artifacts.CONFIG).is_file() else cfg
            if _overrides(args):
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
        from study.baseline_runs import check_covariates  # lifelines: not for --help
        from study.nested import prepare_inner_splits

        check_covariates(cfg, data)
        prepare_inner_splits(cfg, data, out, args.resume)
    except (StudyError, SpaceError, CohortError, ValueError, FileExistsError) as exc:
        _error(exc)
        if not args.resume:  # a refused start leaves the folder as it found it
            _remove_new(out, before, existed)
        return 2
    return run_study(cfg, out, data, args, saved)


def _remove_new(out: Path, before: set[Path], existed: bool) -> None:
    """Remove what a refused start wrote (config.yaml, split files): everything in ``out`` that
    was not there before, and ``out`` itself if this command created it."""
    import shutil

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
    """Before a resume: Ray's saved state of the study reads whole (study/ray_state.py)."""
    storage = saved.get("storage")
    if not storage or "://" in storage:
        return None
    from study.ray_state import check_state

    return check_state(Path(storage) / cfg.name, out)


def _finish_only(cfg: StudyConfig, out: Path, saved: dict[str, Any]) -> int:
    """Every trial ended in an earlier run but its final step did not complete: finish from
    the saved Ray results and the MLflow store, without starting Ray."""
    from study.finish import finish_guarded, load_results
    from study.tracking import mlflow_client

    print(f"{cfg.name}: every trial ended in an earlier run; finishing the study", flush=True)
    client = mlflow_client(saved["tracking_uri"])
    grid = load_results(f"{saved['storage'].rstrip('/')}/{cfg.name}", cfg)
    return finish_guarded(grid, cfg, out, client, saved["experiment_id"],
                          saved["parent_run_id"], None)


def run_study(cfg: StudyConfig, out: Path, data: RunData, args: argparse.Namespace,
              saved: dict[str, Any]) -> int:
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # resume loses at most ~1 s of state
    import ray
    from ray import tune

    from study.baseline_runs import run_baselines
    from study.fault_watch import FaultWatch
    from study.finish import finish_guarded, mlflow_hint
    from study.parent import record_study
    from study.progress import StudyProgress
    from study.quiet import ray_init_kwargs
    from study.ray_state import StateBackup, restored_trials
    from study.results import COMPLETED
    from study.search import announce_search, make_search, make_tuner
    from study.spec import TrialContext
    from study.store import default_tracking_uri, ensure_experiment, ensure_store
    from study.tracking import mlflow_client, start_parent_run
    from study.trial import run_trial
    from study.trial_callback import TrialStatusCallback
    from study.variants import VARIANT_KEY

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        saved.get("tracking_uri") or default_tracking_uri(out)
    artifact_root = out / ARTIFACT_DIR if sqlite_path(tracking_uri) is not None else None
    storage = args.storage or saved.get("storage") or str(out / "ray")
    faults = FaultWatch(out, storage, tracking_uri, artifact_root)
    refused = faults.reserve()  # room to close the study's records if the disk fills
    if refused is not None:
        return refused
    ensure_store(tracking_uri, cfg.name, artifact_root)  # built aside, renamed into place
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
    run_baselines(client, experiment_id, parent, cfg, data)
    from study.local_ray import start_ray

    start_ray(args.address, args.num_cpus, _stop_like_ctrl_c,
              **ray_init_kwargs(args.progress))  # Ray's chatter off (study/quiet.py)
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
        import optuna  # its "A new study created in memory" line says nothing to a user

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if cfg.evaluation == "nested":
        from study.nested import run_nested

        return run_nested(cfg, out, ctx, args, client, parent, storage)
    from study.fanout import trial_resources

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


def _stop_like_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM (a batch system's stop) before the trials start: Ctrl-C's way out. Once Tune
    runs, its graceful stop takes the signal over (TrialStatusCallback)."""
    raise KeyboardInterrupt


def _interrupted_early(out: Path) -> int:
    """Stopped while the study was being set up (cohort, store, baselines, Ray start): close
    what it opened and say how to continue."""
    state = read_state(out)
    if state.get("parent_run_id"):
        from study.tracking import mlflow_client

        return _interrupted(mlflow_client(state["tracking_uri"]), state["experiment_id"],
                            state["parent_run_id"], None)
    print("interrupted before the study started; run the same command again", file=sys.stderr)
    return 130


def _interrupted(client: Any, experiment_id: str, parent: str, unfinished: int | None) -> int:
    """Leave every run closed (the study stays resumable) and say how to continue."""
    from study.tracking import close_open_runs

    try:
        close_open_runs(client, experiment_id, parent, "KILLED")
    except Exception as exc:  # noqa: BLE001 - --resume closes them as well
        print(f"warning: could not close the study's open MLflow runs: {exc}", file=sys.stderr)
    what = f"{unfinished} trial(s) did not finish" if unfinished else "the study was stopped"
    print(f"interrupted: {what}; run the same command with --resume to continue",
          file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
