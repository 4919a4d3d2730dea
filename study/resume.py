"""``--resume`` of a study that already finished: answered from the study folder alone.

It neither starts Ray nor opens MLflow nor imports the training stack, and logs nothing: it
takes the folder's lock (a study still running is refused as for any other command), reads
the state file and the summary, says so and exits 0. A finished study with failed trials and
``--retry-failed`` is not finished for that command, and goes the full way.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

from study.folder import read_state
from study.lock import StudyLock, stale_note
from study.record import Artifacts, Status


def study_folder(args: argparse.Namespace) -> Path | None:
    """``--out``, else ``studies/<name>`` with the name from --name, --set name=..., or the
    study file; None when the name cannot be read cheaply (the full path then decides)."""
    if args.out is not None:
        return args.out.resolve()
    name = args.name
    for item in args.overrides:
        key, _, value = item.partition("=")
        if key.strip() == "name":
            name = value.strip()
    if name is None:
        try:
            raw = yaml.safe_load(Path(args.space).read_text())
        except (OSError, yaml.YAMLError):
            return None
        name = raw.get("name") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name:
        return None
    if getattr(args, "once", False) and args.name is None:  # --once runs as <name>-once
        name = f"{name}-once"
    return (Path("studies") / name).resolve()


def _summary(out: Path) -> list[dict[str, str]]:
    try:
        with (out / Artifacts.SUMMARY).open(newline="") as f:
            return list(csv.DictReader(f))
    except OSError:
        return []


def finished_noop(args: argparse.Namespace) -> int | None:
    """0 after saying the study is finished; None when the command has work to do."""
    out = study_folder(args)
    if out is None or not read_state(out).get("finished"):
        return None
    with StudyLock.acquire(out) as lock:  # StudyBusyError: a run of it is still going
        note = stale_note(lock)
        if note:
            print(note, flush=True)
        state = read_state(out)
        rows = _summary(out)
        failed = sum(r.get("status") == Status.FAILED for r in rows)
        if not state.get("finished") or (args.retry_failed and failed):
            return None
        done = sum(r.get("status") == Status.COMPLETED for r in rows)
        print(f"{state.get('name', out.name)}: already finished in {out} ({len(rows)} trials, "
              f"{done} completed, {failed} failed); nothing to do."
              + (" Add --retry-failed to run the failed trials again." if failed else ""))
        print(f"summary: {out / Artifacts.SUMMARY}; best configuration: "
              f"{out / Artifacts.BEST_CONFIG}")
        return 0 if done else 1  # as the run itself: non-zero when no trial completed


__all__ = ["finished_noop", "study_folder"]
