"""One study per folder: an OS advisory lock held for the whole life of a study command.

The lock file sits *beside* the study folder (``<parent>/.<name>.lock``), not inside it, so it
exists before anything of the study is written and ``--overwrite`` can move the folder aside
while still holding it. The lock is the kernel's (``flock``): it is released when the holding
process ends, however it ends (a SIGKILLed driver included), so a lock is never "stuck". The
file also records who holds it (pid, host, start time, command) so a refused command can name
the holder; a clean release empties it, so a non-empty file found unlocked is the trace of a
holder that died, and taking it over is said out loud.

The descriptor is opened close-on-exec: Ray's processes (raylet, GCS, workers) are started by
exec and never hold it, so a dead driver's lock is free even while its Ray workers linger.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from study.folder import StudyError


class StudyBusyError(StudyError):
    """Another live process holds the study folder's lock."""


def lock_path(out: Path) -> Path:
    """``<parent>/.<folder name>.lock``: beside the folder, so it outlives moving it aside."""
    return out.parent / f".{out.name}.lock"


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    started: str
    command: str

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def alive(self) -> bool | None:
        """Whether the process still exists (None: it ran on another host, so unknown)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _parse(text: str) -> Holder | None:
    try:
        raw = json.loads(text)
        return Holder(int(raw["pid"]), str(raw["host"]), str(raw["started"]),
                      str(raw.get("command", "")))
    except (ValueError, KeyError, TypeError):
        return None


def read_holder(path: Path) -> Holder | None:
    """Who the lock file says holds (or last held without releasing) the lock."""
    try:
        return _parse(path.read_text())
    except OSError:
        return None


class StudyLock:
    """The held lock of one study folder; `release()` (or leaving the `with` block) frees it.

    `taken_over` is the previous holder when it died without releasing (a stale lock)."""

    def __init__(self, out: Path, fd: int, taken_over: Holder | None) -> None:
        self.out, self.path, self._fd, self.taken_over = out, lock_path(out), fd, taken_over

    @classmethod
    def acquire(cls, out: Path, wait_for_holder_s: float = 2.0) -> StudyLock:
        """Take the lock or raise `StudyBusyError` naming the live holder. Never blocks on a
        running study: a second start, --resume or --overwrite is refused at once."""
        out = Path(out)
        path = lock_path(out)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StudyError(f"{out}: cannot create the study's lock file {path}: "
                             f"{exc.strerror}; use an --out in a writable folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StudyError(f"{out}: cannot lock {path} ({exc.strerror}); the study folder "
                                 "must be on a file system with file locks") from None
            raise StudyBusyError(_busy_message(out, path, wait_for_holder_s)) from None
        previous = _parse(os.pread(fd, 65536, 0).decode(errors="replace") or "")
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "command": " ".join(sys.argv)[:2000]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return cls(out, fd, previous)

    def release(self) -> None:
        """Empty the file (a clean end leaves no holder behind), then unlock."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def __enter__(self) -> StudyLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _busy_message(out: Path, path: Path, wait_s: float) -> str:
    # the holder writes its record just after locking: give a starting holder a moment
    deadline = time.monotonic() + wait_s
    holder = read_holder(path)
    while holder is None and time.monotonic() < deadline:
        time.sleep(0.05)
        holder = read_holder(path)
    who = holder.describe() if holder else "a process that is still starting"
    return (f"{out} is in use by a running study ({who}); a second start, --resume or "
            f"--overwrite must wait until it ends (or stop it first); the lock is {path}")


def stale_note(lock: StudyLock) -> str | None:
    """What to tell the user when the lock was taken over from a holder that died."""
    old = lock.taken_over
    if old is None:
        return None
    state = {False: "that process is gone", None: "it ran on another host and no longer holds "
             "it", True: "that pid is alive but no longer holds the lock"}[old.alive()]
    return (f"note: took over the stale lock of {lock.out} left by {old.describe()} "
            f"({state})")


__all__ = ["StudyLock", "StudyBusyError", "Holder", "lock_path", "read_holder", "stale_note"]
