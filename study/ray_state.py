"""Ray Tune's saved state of a study: an intact copy kept beside it, and a check before resuming.

Ray writes its experiment state (the trials, the searcher) into a staging folder and copies it
into the study's storage folder while the trials run on. A disk that fills during that copy
leaves a truncated file; Ray, unable to read it on ``--resume``, silently starts the experiment
again with what its searcher remembers - a smaller study that exits 0. So:

- `StateBackup` (a Tune callback on the driver) keeps a copy of the last state Ray completed:
  between Ray's saves it reads the staging folder (written by the driver's own thread, so never
  half-written at that moment) and replaces ``<experiment>/.ks-state-backup.tar`` atomically.
  A backup that cannot be written because the disk is full is a fault (study/faults.py): the
  study stops at once instead of running on without a resumable state.
- `check_state` reads every state file before a resume: when one is torn, the files are moved
  aside (``<experiment>.torn-<time>/``) and the intact copy is put back; without an intact copy
  the resume is refused with a line saying how to recover.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from study.faults import Fault, StudyFault, error_text, find_fault
from study.folder import StudyError
from study.kept_checkpoints import STATE_GLOB, keep, newest_state, prune

BACKUP = ".ks-state-backup.tar"
TUNER_FILE = "tuner.pkl"


def state_files(folder: Path) -> list[Path]:
    """The files Ray restores an experiment from: its top-level ``.json`` and ``.pkl`` files."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".json", ".pkl"))


def _check_bytes(name: str, data: bytes) -> str | None:
    """Why ``data`` (a state file's content) is unreadable, or None when it reads whole."""
    try:
        if name.endswith(".json") and not data.startswith(b"\x80"):
            json.loads(data)
        else:  # a pickle (some of Ray's ".json" files are): every opcode walked, none run
            for _ in pickletools.genops(io.BytesIO(data)):
                pass
    except Exception as exc:  # noqa: BLE001 - any parse error means unreadable
        return error_text(exc, 200) or type(exc).__name__
    if name.startswith("experiment_state-") and not data.strip():
        return "empty file"
    return None


def torn_files(folder: Path) -> list[tuple[Path, str]]:
    """(file, why) for every state file of ``folder`` that cannot be read whole."""
    torn = []
    for path in state_files(folder):
        try:
            why = _check_bytes(path.name, path.read_bytes())
        except OSError as exc:
            why = error_text(exc, 200)
        if why is not None:
            torn.append((path, why))
    return torn


def _read_backup(path: Path) -> dict[str, bytes] | None:
    """The backup's files when the backup is intact and holds an experiment state, else None."""
    try:
        with tarfile.open(path) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (OSError, tarfile.TarError):
        return None
    if any("/" in name or _check_bytes(name, data) for name, data in files.items()):
        return None
    if not any(name.startswith("experiment_state-") for name in files):
        return None
    return files


def check_state(folder: Path, out: Path) -> str | None:
    """Before a resume: None when Ray's saved state in ``folder`` reads whole (or there is none,
    so Ray starts afresh); a note after putting back the intact copy in place of torn files;
    `StudyError` (one line: which file, why, how to recover) when there is no intact copy."""
    if not folder.is_dir():
        return None
    torn = torn_files(folder)
    if not torn:
        return None
    path, why = torn[0]
    backup = _read_backup(folder / BACKUP)
    if backup is None:
        raise StudyError(
            f"{path}: Ray's saved state of this study is unreadable ({why}), and there is no "
            f"intact copy ({folder / BACKUP}) to put back, so --resume cannot tell which trials "
            "ran and would start a smaller study. The trials that finished are kept in MLflow. "
            f"To run the study again from the start, use --overwrite (it keeps {out} aside); "
            "see docs/errors.md")
    aside = folder.with_name(f"{folder.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.mkdir()
    for p in state_files(folder):
        if p.name in backup or p in dict(torn):
            shutil.move(str(p), aside / p.name)
    for name, data in backup.items():
        _write_atomic(folder / name, data)
    stamp = time.strftime("%H:%M:%S", time.localtime((folder / BACKUP).stat().st_mtime))
    return (f"note: Ray's saved state {path.name} was unreadable ({why}); put back the intact "
            f"copy saved at {stamp} (the torn files are in {aside}). Trials started after it "
            "are run again from their last checkpoint")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


class StateBackup(tune.Callback):
    """Keep ``.ks-state-backup.tar``: the last experiment state Ray saved, copied whole.

    ``min_interval_s`` bounds how often it is rewritten (Ray saves about every second); a
    backup also waits ``COST_FACTOR`` times as long as the last one took (copy, checks and the
    kept checkpoints' pruning), so a study of hundreds of trials, whose state is tens of MB,
    spends at most ~1/COST_FACTOR of the driver's time on it instead of stalling Tune's loop.
    An older backup is still a correct one to resume from: trials started after it rerun from
    their last checkpoint, which the kept copies hold.

    ``expect_restored``: on a resume, the trials Ray's checked state holds; when Ray starts
    with fewer (it could not restore its state and starts the experiment again), the study
    stops before any trial runs instead of becoming a smaller one."""

    COST_FACTOR = 20.0

    def __init__(self, min_interval_s: float = 1.0, expect_restored: int = 0) -> None:
        self.min_interval_s = min_interval_s
        self.expect_restored = expect_restored
        self._saved: tuple[str, int] | None = None
        self._last = 0.0
        self._cost = 0.0  # seconds the last backup took
        self._tuner: bytes | None = None
        self._checked = False
        self._keep_error: StudyFault | None = None

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self._checked:
            return
        self._checked = True
        if len(trials) < self.expect_restored:
            raise StudyError(
                f"Ray restored {len(trials)} of the {self.expect_restored} trials in its saved "
                "state of this study (see Ray's message above) and would run a smaller study")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self._keep_error is not None:
            exc, self._keep_error = self._keep_error, None
            raise exc
        if self.due(time.monotonic()):
            self._backup(trials)

    def due(self, now: float) -> bool:
        """Whether a backup may run at ``now`` (monotonic seconds)."""
        return now - self._last >= max(self.min_interval_s, self.COST_FACTOR * self._cost)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any,
                      **info: Any) -> None:
        """Keep a linked copy of each new checkpoint (study/kept_checkpoints.py). Ray swallows
        a callback's error here, so a copy that cannot be made stops the study at the next
        step, as a fault on the study's files."""
        if checkpoint.filesystem.type_name != "local":
            return  # a URI: Ray's own upload
        path = Path(checkpoint.path)
        try:
            keep(path, path.parents[1])
        except OSError as exc:
            self._keep_error = _fault(exc, path.parents[1], path)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """After Ray's last save (a stop with Ctrl-C or SIGTERM included): copy exactly it.
        A copy that cannot be written now is said, not raised (Ray is ending anyway)."""
        try:
            self._backup(trials)
        except StudyFault as exc:
            print(f"warning: no intact copy of Ray's last state: {exc}", flush=True)

    def _backup(self, trials: list) -> None:
        if not trials:
            return
        try:
            storage = trials[0].storage
            if storage.storage_filesystem.type_name != "local":
                return  # a URI: Ray's own upload; nothing of ours to keep beside it
            staging = Path(storage.experiment_driver_staging_path)
            folder = Path(storage.experiment_fs_path)
            newest = max(staging.glob(STATE_GLOB), default=None)
        except (AttributeError, OSError):
            return  # another Ray layout: no backup (a torn state is then refused on resume)
        if newest is None:
            return
        mark = (newest.name, newest.stat().st_mtime_ns)
        if mark == self._saved:
            return
        self._last = time.monotonic()
        try:
            state = self._write(staging, folder)
        except OSError as exc:
            raise _fault(exc, folder, folder / BACKUP) from exc
        self._saved = mark
        if state is not None:
            _prune_kept(folder, state)
        self._cost = time.monotonic() - self._last

    def _write(self, staging: Path, folder: Path) -> bytes | None:
        """Write the backup; the experiment state it holds (None when nothing was written)."""
        files = {p.name: p.read_bytes() for p in state_files(staging)}
        if any(_check_bytes(name, data) for name, data in files.items()):
            return None  # not a complete save (never expected): keep the previous copy
        if self._tuner is None and (folder / TUNER_FILE).is_file():
            data = (folder / TUNER_FILE).read_bytes()
            self._tuner = data if _check_bytes(TUNER_FILE, data) is None else b""
        if self._tuner:
            files[TUNER_FILE] = self._tuner
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(data), int(time.time())
                tar.addfile(info, io.BytesIO(data))
        _write_atomic(folder / BACKUP, buf.getvalue())
        return files[max(n for n in files if n.startswith("experiment_state-"))]


def _fault(exc: OSError, root: Path, where: Path) -> StudyFault:
    """A failed write of the study's own Ray files as the fault that stops the study."""
    return StudyFault(find_fault(exc, [root]) or Fault(error_text(exc), str(where)))


def _prune_kept(folder: Path, backed_up: bytes) -> None:
    """Drop the kept checkpoints that neither the backup just written nor the state in the
    study folder names any more. The folder's state may be mid-copy (Ray writes it in a
    background thread): then nothing is dropped this time."""
    persisted = newest_state(folder)
    if persisted is None:
        return
    try:
        prune(folder, [backed_up, persisted.read_bytes()])
    except (OSError, json.JSONDecodeError):  # a half-copied state is no JSON yet
        return


def restored_trials(folder: Path) -> int:
    """How many trials Ray's (checked) saved state in ``folder`` holds: what a resume must find
    restored before it schedules anything new."""
    newest = newest_state(folder)
    if newest is None:
        return 0
    return len(json.loads(newest.read_bytes()).get("trial_data", []))


__all__ = ["BACKUP", "StateBackup", "check_state", "restored_trials", "state_files",
           "torn_files"]
