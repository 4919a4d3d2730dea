"""Shared fixtures: one small synthetic cohort per test session (written once, < 1 s), and one
synthetic-cohort cache per session, shared by every study the tests start (as on a real machine)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from ksmodel.data import CACHE_ENV
from ksmodel.synthetic import generate
from tests.servers import mlflow_on_postgres, postgres_server  # noqa: F401 - real-server fixtures


@pytest.fixture(scope="session", autouse=True)
def synthetic_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Point the synthetic-cohort cache at a session folder (subprocess studies inherit it)."""
    path = tmp_path_factory.mktemp("ks-cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(path)
    yield path
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous

@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> None:
    """Train the tests' tiny models on one intra-op thread. At dim 32 a second thread buys
    nothing and its waits cost: 3 epochs of a test model took 0.5 CPU-s on one thread and
    4 CPU-s on two (measured on the 2-core machine under load). A test of the threaded
    paths (streams side by side, threaded kernels) asks for ``machine_threads``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


MACHINE_THREADS = torch.get_num_threads()
"""torch's intra-op threads in a plain process on this machine (before `one_torch_thread`)."""


@pytest.fixture
def machine_threads() -> int:
    """torch at the machine's default thread count for one test (the threaded paths run)."""
    torch.set_num_threads(MACHINE_THREADS)
    yield MACHINE_THREADS
    torch.set_num_threads(1)


SMALL_COHORT = dict(patients=60, patches=(24, 80), dim=32, seed=7)
"""Parameters of ``small_cohort``: every diagnosis class has >= 5 cases (5-fold stratification)."""


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a small synthetic cohort (60 patients, 24-80 patches, D=32). Do not modify it:
    copy it first (``cohort_copy``) when a test needs to break something."""
    return generate(tmp_path_factory.mktemp("small_cohort") / "cohort", quiet=True,
                    **SMALL_COHORT)


@pytest.fixture
def cohort_copy(small_cohort: Path, tmp_path: Path) -> Path:
    """A private, writable copy of ``small_cohort``."""
    return Path(shutil.copytree(small_cohort, tmp_path / "cohort"))
