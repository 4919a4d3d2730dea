"""The embedded MLflow store (``<study folder>/mlflow.db``), made so no reader sees it half-made.

MLflow creates a SQLite store by running its schema migrations on first open. A second process
that opens the file meanwhile (``mlflow ui``, a notebook, a monitoring script, another study)
sees a partial schema and starts migrating too; the two migrations collide and the study dies.
So the store is built under another name in the same folder - schema, the study's experiment -
its connections closed, and only then renamed to ``mlflow.db`` (an atomic rename on one file
system): from the instant ``mlflow.db`` exists it is complete. The study's folder lock is held
meanwhile, so no second study builds one at the same time. The study's experiment is made here
too (once, on the driver: parallel creation races).

The migrations cost 1-2 s per new store on an idle 2-core machine, paid again by every study. So
the schema is migrated once per MLflow version into a template in the cache folder
(``schema_template``) and each new store starts as a copy of it: the same tables, the same
alembic version, no experiment yet - MLflow adds its Default experiment on first open, as it does
for a store it has just migrated.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"  # the embedded store's artifacts, beside it in the study folder
SQLITE = "sqlite:///"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a ``sqlite:///`` tracking URI, else None (a server or another database)."""
    if not tracking_uri.startswith(SQLITE):
        return None
    return Path(tracking_uri[len(SQLITE):])


def default_tracking_uri(out: Path) -> str:
    """The embedded store of a study folder (``--tracking-uri`` absent)."""
    return f"{SQLITE}{(out / DB_NAME).resolve()}"


def ensure_experiment(client: Any, name: str, artifact_root: Path | None) -> str:
    """Get or create the study's experiment once, on the driver (parallel creation races)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = artifact_root.resolve().as_uri() if artifact_root is not None else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - lost a race with another driver: read it back
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _close_engine(uri: str) -> None:
    """Close MLflow's cached SQLAlchemy engine for ``uri`` (no connection outlives the build)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore  # ~1 s; only here

    engine = SqlAlchemyStore._engine_map.pop(uri, None)
    if engine is not None:
        engine.dispose()


def _building(db: Path) -> Path:
    """A name beside ``db`` to build it under (this process's own), clearing killed builds'."""
    for leftover in db.parent.glob(f".{db.name}.*.building*"):
        leftover.unlink(missing_ok=True)
    return db.with_name(f".{db.name}.{os.getpid()}.building")


def schema_template(cache: Path) -> Path:
    """An empty store with this MLflow's schema under ``cache`` (migrated on first use, then
    kept: one file per MLflow version, built aside and renamed into place like a store)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    template = cache / "mlflow-schema" / f"mlflow-{mlflow.__version__}.db"
    if template.exists():
        return template
    template.parent.mkdir(parents=True, exist_ok=True)
    tmp = _building(template)
    tmp_uri = f"{SQLITE}{tmp}"
    try:
        MlflowClient(tmp_uri).search_experiments()  # what a first open does: the migrations
    finally:
        _close_engine(tmp_uri)
    with sqlite3.connect(tmp) as con:  # the Default experiment is made by each store's first open
        con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    con.close()
    os.replace(tmp, template)
    return template


def ensure_store(tracking_uri: str, experiment: str, artifact_root: Path | None,
                 cache: Path | None = None) -> None:
    """Create a missing SQLite store atomically, with the study's experiment already in it; from
    the schema template under ``cache`` when given.

    An existing store is left alone (MLflow opens it as usual); servers and other databases are
    not ours to create."""
    db = sqlite_path(tracking_uri)
    if db is None or db.exists():
        return
    from mlflow.tracking import MlflowClient  # ~1 s: only building a store needs it here

    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = _building(db)
    if cache is not None:
        try:
            shutil.copyfile(schema_template(cache), tmp)
        except OSError:  # no writable cache folder: MLflow migrates the new store on first open
            tmp.unlink(missing_ok=True)
    tmp_uri = f"{SQLITE}{tmp}"
    try:
        ensure_experiment(MlflowClient(tmp_uri), experiment, artifact_root)
    finally:
        _close_engine(tmp_uri)
    os.replace(tmp, db)


__all__ = ["ARTIFACT_DIR", "DB_NAME", "default_tracking_uri", "ensure_experiment", "ensure_store",
           "schema_template", "sqlite_path"]
