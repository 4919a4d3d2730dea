"""Shared fixtures: one small synthetic cohort per test session (written once, < 1 s)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ksmodel.synthetic import generate

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
