"""Real servers for tests and benchmarks: a PostgreSQL server and an MLflow tracking server.

No mocks: `postgres` runs Debian's PostgreSQL server binaries (initdb/pg_ctl) in a temporary
data directory on 127.0.0.1 and a free port; `mlflow_server` runs `mlflow server` from this
virtual environment over HTTP. PostgreSQL refuses to run as root, so as root both its commands
run as the unprivileged `postgres` system user (`runuser`), which owns the data directory.

Fixtures: `postgres_server` (session scope: the `postgresql+psycopg2://` URI of a database, for
MLflow) and `mlflow_on_postgres` (per test: a fresh database and a tracking server on it). The
context managers are importable on their own (benchmarks/mlflow_load.py uses them).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_USER = "postgres"
"""System user that runs the server when we are root (Debian's postgresql package creates it)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it is taken meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_pg_bindir() -> Path | None:
    """The folder holding the PostgreSQL *server* binaries, or None.

    $KS_PG_BINDIR wins; then `pg_config --bindir` (if it holds initdb: libpq-dev's pg_config
    points at the client folder on some machines), Debian's /usr/lib/postgresql/<ver>/bin
    (newest first), finally `initdb` on PATH (Debian only links it there by hand)."""
    candidates: list[Path] = []
    if os.environ.get("KS_PG_BINDIR"):
        candidates.append(Path(os.environ["KS_PG_BINDIR"]))
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                      key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit()
                      else 0, reverse=True)
    candidates += [Path(p) for p in versions]
    if shutil.which("initdb"):
        candidates.append(Path(os.path.realpath(shutil.which("initdb"))).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run its commands as the `postgres` user then."""
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", PG_USER, "--", *cmd]


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(_as_pg_user(cmd), cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def psycopg2_dsn(uri: str) -> str:
    """The libpq form of a SQLAlchemy URI (`postgresql+psycopg2://` -> `postgresql://`)."""
    return "postgresql://" + uri.split("://", 1)[1]


def create_database(server_uri: str, name: str | None = None) -> str:
    """A new empty database on the server of `server_uri` (one per MLflow server keeps tests
    independent); returns its URI."""
    import psycopg2

    name = name or f"mlflow_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(psycopg2_dsn(server_uri))
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return server_uri.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def postgres(database: str = "mlflow", fsync: bool = False) -> Iterator[str]:
    """Start a throw-away PostgreSQL server; yield the SQLAlchemy URI of a fresh `database` on
    it: `postgresql+psycopg2://postgres@127.0.0.1:<port>/<database>`. The driver is named
    because SQLAlchemy 2.1 maps a bare `postgresql://` to psycopg 3, not psycopg2
    (`psycopg2_dsn` gives the form psycopg2.connect takes).

    The data directory lives in a new folder directly under the system temp dir (pytest's own
    temp folders are private to root, so the `postgres` user could not enter them). Trust
    authentication is safe here only because the server listens on 127.0.0.1 alone.
    `fsync=False` (tests) trades crash safety for speed; the load benchmark turns it on."""
    bindir = find_pg_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found: install "
                                "Debian's postgresql package or set KS_PG_BINDIR")
    root = Path(tempfile.mkdtemp(prefix="ks-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, PG_USER, PG_USER)
    user = PG_USER if os.geteuid() == 0 else (os.environ.get("USER") or "postgres")
    data, log = root / "data", root / "postgres.log"
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust",
              "--encoding=UTF8", *([] if fsync else ["--no-sync"])], root, "initdb")
        for _attempt in range(3):  # the free port may be taken before the server binds it
            port = free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} "
                    f"-c max_connections=200 -c fsync={'on' if fsync else 'off'}")
            proc = subprocess.run(
                _as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o",
                             opts, "-w", "-t", "60", "start"]),
                cwd=root, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                started = True
                break
        if not started:
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout[-1000:]}{proc.stderr[-1000:]}"
                               f"\n{_log_tail(log)}")
        server = f"postgresql+psycopg2://{user}@127.0.0.1:{port}/postgres"
        yield create_database(server, database)
    finally:
        if started:
            subprocess.run(_as_pg_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                                        "-w", "stop"]), cwd=root, capture_output=True,
                           timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _log_tail(path: Path, lines: int = 60) -> str:
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def server_log(artifact_dir: Path) -> Path:
    """Where `mlflow_server` writes the server's output: next to its artifact folder."""
    return Path(artifact_dir).parent / f"mlflow-server-{Path(artifact_dir).name}.log"


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifact_dir: Path, workers: int = 2,
                  timeout: float = 180) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1:<free port> over `backend_uri`, artifacts proxied to
    `artifact_dir`; yields its URL once /health answers. Its log (`server_log(artifact_dir)`)
    is printed when it fails to start, when it dies, and when the code inside the `with`
    raises."""
    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    log = server_log(artifact_dir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    # MLflow 3 servers also start background job consumers (GenAI evaluation, trace rollups):
    # a handful of extra processes that studies never use, and too many for a 2-core machine
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifact_dir),
           "--workers", str(workers)]
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({proc.returncode}) before it was "
                                   f"healthy:\n{_log_tail(log)}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    break
            if time.time() > deadline:
                raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n"
                                   f"{_log_tail(log)}")
            time.sleep(0.5)
        try:
            yield url
        except BaseException:
            print(f"--- mlflow server log ({log}) ---\n{_log_tail(log)}", file=sys.stderr)
            raise
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server died during use ({proc.returncode}):\n"
                               f"{_log_tail(log)}")
    finally:
        if proc.poll() is None:
            # the server's workers share its session: stop them all, then make sure
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):  # stray workers of an exited server
            os.killpg(proc.pid, 9)


@dataclass
class TrackingServer:
    """An MLflow server on its own PostgreSQL database (`db_uri` for direct SQL checks)."""

    url: str
    db_uri: str
    artifact_dir: Path


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One PostgreSQL server per test session: the URI of its `mlflow` database. Tests that
    need a database of their own make one with `create_database(postgres_server)`."""
    if find_pg_bindir() is None:
        reason = ("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's "
                  "postgresql package (.ci/run does) or set KS_PG_BINDIR")
        if os.environ.get("KS_REQUIRE_POSTGRES") == "1":  # CI: a missing server is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    with postgres() as uri:
        yield uri


@pytest.fixture
def mlflow_on_postgres(postgres_server: str, tmp_path: Path) -> Iterator[TrackingServer]:
    """An MLflow tracking server over HTTP whose backend store is a fresh PostgreSQL database.

    The server's log tail is printed at teardown: pytest shows it with a failing test."""
    db_uri = create_database(postgres_server)
    artifacts = tmp_path / "mlflow-artifacts"
    with mlflow_server(db_uri, artifacts) as url:
        yield TrackingServer(url, db_uri, artifacts)
    print(f"--- mlflow server log ({server_log(artifacts)}) ---\n"
          f"{_log_tail(server_log(artifacts))}")
