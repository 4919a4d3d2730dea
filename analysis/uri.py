"""Where a study's MLflow store is, checked before anything heavy is imported (standard library
only): the tracking URI (``--tracking-uri`` or ``MLFLOW_TRACKING_URI``), a ``sqlite:///`` file
that must exist (opening a missing one would create an empty store), and, for such a file, the
names of its experiments for a quick "did you mean".
"""

from __future__ import annotations

import difflib
import os
import sqlite3
from pathlib import Path
from urllib.parse import unquote, urlparse


class AnalysisError(RuntimeError):
    """The study cannot be read or analysed; the message says what was looked for and where."""


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative or absolute), else None (a server,
    an in-memory database, ...)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = unquote(urlparse(uri).path)
    # sqlite:///rel/path -> path "/rel/path" (relative); sqlite:////abs/path -> "//abs/path"
    rel = path[1:] if path.startswith("/") else path
    if not rel or rel == ":memory:":
        return None
    return Path(rel)


def resolve_tracking_uri(uri: str | None) -> str:
    """``uri`` if given, else ``MLFLOW_TRACKING_URI``; never MLflow's silent cwd default. A
    ``sqlite:///`` file that does not exist is an error: opening it would create an empty store
    (and then report "no experiment" about a store nobody meant)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise AnalysisError(
            "no MLflow tracking URI: pass --tracking-uri (for a local study "
            "'sqlite:///studies/<name>/mlflow.db') or set MLFLOW_TRACKING_URI")
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        where = "" if db.is_absolute() else f" (relative to the current folder {Path.cwd()})"
        raise AnalysisError(
            f"tracking URI '{uri}': the file {db}{where} does not exist, so there is no MLflow "
            f"store to read (nothing was created). A study's store is <study folder>/mlflow.db: "
            f"give its path, e.g. sqlite:///studies/<name>/mlflow.db from the folder that holds "
            f"studies/, or an absolute sqlite:////abs/path/mlflow.db")
    return uri


def sqlite_experiments(db: Path) -> list[str] | None:
    """Active experiment names of an MLflow SQLite store, read-only; None when the file is not
    such a store (the caller then asks MLflow itself)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT name FROM experiments WHERE lifecycle_stage = 'active'")
            return sorted(r[0] for r in rows)
        finally:
            con.close()
    except sqlite3.Error:
        return None


def check_experiment(uri: str, experiment: str) -> None:
    """For a SQLite store: an unknown experiment is an error with "did you mean", told without
    starting MLflow (seconds). Other stores are checked when they are read."""
    db = sqlite_path(uri)
    names = sqlite_experiments(db) if db is not None else None
    if names is None or experiment in names:
        return
    raise AnalysisError(missing_experiment(experiment, uri, names))


def missing_experiment(experiment: str, uri: str, names: list[str]) -> str:
    listing = ", ".join(names) if names else "none"
    close = difflib.get_close_matches(experiment, names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (f"no MLflow experiment named '{experiment}' at tracking URI '{uri}' (experiments "
            f"there: {listing}).{hint} Check --experiment (the study name) and --tracking-uri.")


__all__ = ["AnalysisError", "resolve_tracking_uri", "sqlite_path", "check_experiment",
           "missing_experiment", "sqlite_experiments"]
