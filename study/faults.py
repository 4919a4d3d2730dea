"""Faults on the study's own files, told apart from trials that fail.

A trial whose training raises (a NaN loss, a bad combination of parameters) has failed: it is
marked FAILED and the study goes on. An error writing the study's own files - the MLflow store,
its artifacts, Ray's results and checkpoints, the summary - is not the trial's fault and would
hit every trial alike: a full disk, a read-only file system, files made unwritable. Such a
*fault* stops the study: every run is closed with the cause, one ``error:`` line names the path
and the cause, and ``--resume`` continues once the fault is fixed (docs/errors.md).

`find_fault` recognises a fault in an exception (through Ray's wrappers and the chain of
causes) or in the text of one; `error_text` gives the one line a user should read from any
error (no Ray wrapper, no colour codes).

The driver's side - which folders are the study's own, and how a study stops at a fault - is
study/fault_watch.py. The study folder keeps a small reserve file while a study command runs
(`Reserve`): when the disk fills, it is given back so the study can still close its MLflow runs
and record how far it got.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
READ_ONLY = {errno.EROFS: "read-only file system"}
DENIED = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted"}
"""Errors on a path inside the study's folders: faults only there (elsewhere they are the
trial's own, e.g. an unreadable input of one configuration)."""

SQLITE = {"database or disk is full": "no space left on device",
          "attempt to write a readonly database": "the database is read-only",
          "unable to open database file": "the database file cannot be opened",
          "disk i/o error": "disk I/O error"}
"""SQLite's messages for a store it cannot write (raised by MLflow as text)."""

_TEXT = [(re.compile(r"\[errno (\d+)\]", re.IGNORECASE), None),
         (re.compile(r"no space left on device", re.IGNORECASE), errno.ENOSPC),
         (re.compile(r"read-only file system", re.IGNORECASE), errno.EROFS),
         (re.compile(r"disk quota exceeded", re.IGNORECASE), errno.EDQUOT)]
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_QUOTED_PATH = re.compile(r"['\"](/[^'\"]+)['\"]")


@dataclass(frozen=True)
class Fault:
    """A study file that could not be written: where (when known) and why."""

    cause: str  # "no space left on device", "operation not permitted", ...
    path: str | None = None
    error: str = ""  # the original error, one line

    def describe(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}{self.cause} ({self.error})" if self.error else f"{where}{self.cause}"


class StudyFault(RuntimeError):
    """Raised on the driver to stop the study at a fault (Ray Tune ends at once; its state
    saved the moment before stays resumable)."""

    def __init__(self, fault: Fault) -> None:
        super().__init__(fault.describe())
        self.fault = fault


def causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, the errors it wraps (Ray's ``cause``) and its chain of causes."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]


def error_text(exc: BaseException | str | None, limit: int = 300) -> str:
    """The one line a user should read from an error: the innermost error a trial raised
    (not Ray's ``ray::ImplicitFunc.train()`` wrapper), without colour codes."""
    if exc is None:
        return ""
    if not isinstance(exc, str):
        for e in causes(exc):
            if not type(e).__module__.startswith("ray."):  # Ray's wrappers and TuneError
                return _first_line(f"{type(e).__name__}: {e}", limit)
        exc = str(exc)  # only Ray's text survived (an error that could not be pickled)
    return _first_line(_last_error_line(exc), limit)


def _first_line(text: str, limit: int) -> str:
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:limit]


def _last_error_line(text: str) -> str:
    """From a traceback's text, the line that names the error (``OSError: [Errno 28] ...``)."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*:", line)]
    return errors[-1] if errors else (lines[-1] if lines else "")


def _inside(path: str | None, roots: Iterable[Path]) -> bool:
    if not path:
        return False
    p = Path(path).absolute()
    return any(p == r or r in p.parents for r in roots)


def _errno_fault(code: int | None, path: str | None, error: str,
                 roots: Sequence[Path]) -> Fault | None:
    if code in FULL:
        return Fault(FULL[code], path, error)
    if code in READ_ONLY:
        return Fault(READ_ONLY[code], path, error)
    if code in DENIED and _inside(path, roots):
        return Fault(f"{DENIED[code]} (the file or folder is not writable)", path, error)
    return None


def find_fault(exc: BaseException | None, roots: Sequence[Path | str] = (),
               store: str | None = None) -> Fault | None:
    """The fault on the study's files that ``exc`` reports, if any. ``roots``: the study's
    folders (a permission error counts there only); ``store``: the MLflow store's file, named
    for SQLite's errors (they carry no path)."""
    if exc is None:
        return None
    roots = [Path(r).absolute() for r in roots]
    for e in causes(exc):
        if isinstance(e, StudyFault):
            return e.fault
        if isinstance(e, OSError) and e.errno is not None:
            path = e.filename or _path_in(str(e))
            fault = _errno_fault(e.errno, path, error_text(e), roots)
            if fault is not None:
                return fault
    return text_fault("\n".join(str(e) for e in causes(exc)), roots, store)


def text_fault(text: str, roots: Sequence[Path | str] = (),
               store: str | None = None) -> Fault | None:
    """`find_fault` for an error known only as text (Ray's error file of a trial)."""
    roots = [Path(r).absolute() for r in roots]
    low = text.lower()
    for needle, cause in SQLITE.items():
        if needle in low:
            return Fault(cause, store, f"sqlite3.OperationalError: {needle}")
    line = _last_error_line(text)
    for pattern, code in _TEXT:
        m = pattern.search(text)
        if m is None:
            continue
        code = int(m.group(1)) if code is None else code
        fault = _errno_fault(code, _path_in(text), line, roots)
        if fault is not None:
            return fault
    return None


def _path_in(text: str) -> str | None:
    m = _QUOTED_PATH.search(text)
    return m.group(1) if m else None


class Reserve:
    """A few MB kept in the study folder while a study command runs, given back when the disk
    fills so the study can still close its runs and write its state (SQLite needs room for
    its journal even to change one row)."""

    NAME = ".reserve"
    SIZE = 1 << 20

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / self.NAME

    def ensure(self) -> None:
        """Create the reserve; `OSError` (no space) when the folder's disk cannot hold it."""
        if self.path.is_file() and self.path.stat().st_size >= self.SIZE:
            return
        tmp = self.path.with_name(f"{self.NAME}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                try:
                    os.posix_fallocate(f.fileno(), 0, self.SIZE)
                except OSError as exc:
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    f.write(b"\0" * self.SIZE)  # a file system without fallocate
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def release(self) -> bool:
        """Give the space back; whether there was a reserve to give."""
        try:
            self.path.unlink()
        except OSError:
            return False
        return True


def free_space(path: Path) -> str:
    """'12.3 MB free of 3.0 GB' for the file system holding ``path`` (or its parent)."""
    for p in (path, *path.parents):
        if p.exists():
            usage = shutil.disk_usage(p)
            return f"{_size(usage.free)} free of {_size(usage.total)}"
    return "free space unknown"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


__all__ = ["Fault", "Reserve", "StudyFault", "causes", "error_text", "find_fault",
           "free_space", "text_fault"]
