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
import dataclasses
import signal
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ksmodel.config import MODEL_KEYS, TRAIN_KEYS, ConfigError, coordination_keys, parse_overrides
from study.arguments import (
    ArgumentMistake,
    attribute,
    check_set_keys,
    check_space,
    once,
    print_error,
)
from study.faults import Reserve
from study.folder import StudyError
from study.local_ray import StopSignal, prefer_loopback
from study.lock import StudyLock, stale_note
from study.quiet import quiet_driver
from study.resume import finished_noop
from study.space import _NESTED, _TOP_KEYS, TRIAL_KEYS, SpaceError, load_study
from study.store import DB_NAME

SET_HELP_GROUPS = ("study keys", "study keys, dotted", "model parameters",
                   "training parameters", "coordination parameters")


def set_keys() -> dict[str, list[str]]:
    """Every key ``--set`` accepts, grouped, read from the registries the study-file parser
    checks against (study/space.py, ksmodel/config.py), so the help cannot drift from them."""
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


_OPTIONS = {"num_samples": "--num-samples", "epochs": "--epochs", "cohort": "--cohort",
            "name": "--name"}
"""Study keys that have an option of their own (overrides, like --set)."""


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """--set and the options above as study-file overrides, every key checked (a mistyped
    one is an `ArgumentMistake` naming the closest keys); no training-stack import."""
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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    quiet_driver(args.progress)  # before MLflow or Ray is imported
    if args.retry_failed and not args.resume:  # it would silently start a new study
        print_error("--retry-failed runs the failed trials of an interrupted or finished study "
               "again, so it needs --resume (and that study's --out); drop it to start a study")
        return 2
    if not args.address:  # before anything imports ray: a local Ray on 127.0.0.1 only
        prefer_loopback()
    if args.resume:
        try:
            code = finished_noop(args)  # a finished study: nothing to do, nothing started
        except StudyError as exc:
            print_error(exc)
            return 2
        if code is not None:
            return code
    try:  # argument mistakes first, before anything heavy is imported
        check_space(args.space)
        overrides = _overrides(args)
        cfg = load_study(args.space, overrides)
        if args.once:
            cfg, what = once(cfg, args.name)
            print(what, flush=True)
    except ArgumentMistake as exc:
        print_error(exc)
        return 2
    except (SpaceError, ConfigError) as exc:
        print_error(attribute(str(exc), str(args.space), _typed(args)))
        return 2
    out = (args.out or Path("studies") / cfg.name).resolve()
    try:
        lock = StudyLock.acquire(out)  # before anything is written; held to the end
    except StudyError as exc:
        print_error(exc)
        return 2
    with lock:
        note = stale_note(lock)
        if note:
            print(note, flush=True)
        stop = StopSignal()
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            # the training stack (Ray, MLflow, torch: seconds to import) only now, to run it
            from study.launch import locked_main

            return locked_main(cfg, out, args, stop, overridden=bool(overrides))
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before Tune took over the signals
            from study.launch import interrupted_early

            return interrupted_early(out)
        finally:  # before the lock is released: no worker of this study outlives it
            signal.signal(signal.SIGTERM, previous)
            ray = sys.modules.get("ray")
            if ray is not None and ray.is_initialized():
                ray.shutdown()
            Reserve(out).release()  # kept only while a study command runs


if __name__ == "__main__":
    sys.exit(main())
