"""The study folder: one study per folder, its state file, and what happens to an old one.

``--out DIR`` holds everything a study writes. ``study.json`` (the state file) marks a folder as
holding a study and records how to find its MLflow experiment, parent run and Ray results again,
so ``--resume`` continues it; ``--overwrite`` moves an old study aside (never deletes it).

Every command that writes a study folder holds its lock first (study/lock.py), so these rules
are applied by one process at a time. The state file also records how far the study got:
``trials_done`` once Ray's search has ended with every trial finished, ``finished`` once the
summary, best configuration and parent run are written - a ``--resume`` then has nothing to do.
It is replaced atomically, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

STATE_FILE = "study.json"


class StudyError(RuntimeError):
    """The study cannot start (folder conflict, cohort incompatible with the study)."""


def prepare_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to mix two studies in one folder; never delete a finished one."""
    state = out / STATE_FILE
    if resume:
        if not state.is_file():
            raise StudyError(f"--resume: {out} holds no study to resume ({STATE_FILE} missing); "
                             "drop --resume to start one")
        return
    if state.is_file():
        if not overwrite:
            raise StudyError(f"{out} already holds a study; use --resume to continue it, "
                             "--overwrite to start afresh (the old one is kept aside), or --out")
        aside = out.with_name(f"{out.name}.{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(out), str(aside))
        print(f"previous study moved to {aside}")
    out.mkdir(parents=True, exist_ok=True)


def read_state(out: Path) -> dict[str, Any]:
    """The study's state file, {} when there is none (or it cannot be read)."""
    try:
        state = json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(out: Path, **updates: Any) -> dict[str, Any]:
    """Update the state file atomically (written beside it, then renamed over it)."""
    state = {**read_state(out), **updates}
    tmp = out / f".{STATE_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, out / STATE_FILE)
    return state


__all__ = ["STATE_FILE", "StudyError", "prepare_folder", "read_state", "write_state"]
