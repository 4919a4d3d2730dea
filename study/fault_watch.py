"""The driver's watch over faults on the study's own files (study/faults.py tells a fault from a
failing trial): which folders are the study's, its disk reserve, and how a study stops at a
fault - Ray shut down, the reserve given back, every MLflow run closed with the cause, one
``error:`` line naming the path and how to continue, exit status 1."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import ray

from study.faults import FULL, Fault, Reserve, causes, error_text, find_fault, free_space
from study.folder import StudyError, write_state
from study.store import sqlite_path
from study.tracking import close_open_runs


class FaultWatch:
    """The driver's side: which folders are the study's own (where a permission error is a
    fault), its reserve, and how a study stops at a fault - Ray shut down (no trial writes any
    more), the reserve given back, every MLflow run closed with the cause, one ``error:`` line
    naming the path and saying how to continue, exit status 1."""

    def __init__(self, out: Path, storage: str, tracking_uri: str,
                 artifact_root: Path | None) -> None:
        self.out = Path(out)
        self.storage = None if "://" in storage else Path(storage)
        db = sqlite_path(tracking_uri)
        self.store = str(db) if db is not None else None
        roots = [self.out, artifact_root, self.storage, db.parent if db is not None else None]
        self.roots = tuple(dict.fromkeys(Path(r).absolute() for r in roots if r is not None))
        self._reserve = Reserve(self.out)

    def experiment(self, name: str) -> Path:
        """Ray's results folder of the study (a path that does not exist for a URI)."""
        return self.storage / name if self.storage is not None else Path("/nonexistent")

    def reserve(self) -> int | None:
        """Make the reserve; when the disk cannot hold even that, say so (exit status 1)."""
        try:
            self._reserve.ensure()
        except OSError as exc:
            fault = find_fault(exc, self.roots) or Fault(error_text(exc), str(self.out))
            _say(f"{fault.path or self.out}: {fault.cause} ({fault.error}); the study did not "
                 f"start. {_hint(fault)}, then run the same command again (see docs/errors.md)")
            return 1
        return None

    def stopped_by(self, exc: BaseException, seen: Fault | None) -> Fault | Exception | None:
        """Why Ray Tune ended with ``exc``: a fault (already seen by the trials' callback, or
        in ``exc``), a resume Ray could not restore (a `StudyError`), or None (a bug: raise)."""
        if seen is not None:
            return seen
        fault = find_fault(exc, self.roots, self.store)
        if fault is not None:
            return fault
        return next((e for e in causes(exc) if isinstance(e, StudyError)), None)

    def stop(self, why: Fault | Exception, client: object, experiment_id: str, parent: str,
             unfinished: int) -> int:
        if ray.is_initialized():
            ray.shutdown()
        self._reserve.release()
        cause = why.describe() if isinstance(why, Fault) else str(why)
        try:
            close_open_runs(client, experiment_id, parent, "FAILED",
                            error=f"the study stopped: {cause}",
                            children_error=f"the study stopped: {cause}")
            closed = "every MLflow run is closed (interrupted trials as INTERRUPTED)"
        except Exception as exc:  # noqa: BLE001 - said, not raised: the cause matters more
            closed = (f"its MLflow runs could not be closed ({error_text(exc)}); --resume "
                      "closes them")
        with contextlib.suppress(OSError):
            write_state(self.out, trials_done=False)
        left = f"{unfinished} trial(s) unfinished" if unfinished else "trials unfinished"
        if isinstance(why, Fault):
            _say(f"{why.path or self.out}: {why.cause} ({why.error}); the study stopped with "
                 f"{left} and {closed}. {_hint(why)}, then run the same command with --resume "
                 "to continue (see docs/errors.md)")
        else:
            _say(f"{why}; the study stopped and {closed}. Its finished trials are kept; "
                 "--overwrite starts it afresh (the folder is kept aside; see docs/errors.md)")
        return 1


def _hint(fault: Fault) -> str:
    if fault.cause in FULL.values() or "no space" in fault.cause:
        where = Path(fault.path) if fault.path else Path.cwd()
        return f"Free space there ({free_space(where)})"
    return "Make it writable again"


def _say(text: str) -> None:
    print("error: " + " ".join(text.split()), file=sys.stderr, flush=True)


__all__ = ["FaultWatch"]
