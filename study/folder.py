"""The study folder: one study per folder, its state file, and what happens to an old one.

``--out DIR`` holds everything a study writes. ``study.json`` (the state file) marks a folder as
holding a study and records how to find its MLflow experiment, parent run and Ray results again,
so ``--resume`` continues it; ``--overwrite`` moves an old study aside (never deletes it).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

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


__all__ = ["STATE_FILE", "StudyError", "prepare_folder"]
