"""Faults that must not lose a study, and inputs that must be refused before compute.

Fast tests: bad inputs (a key twice, non-finite numbers, feature files with NaN/inf values,
``--retry-failed`` without ``--resume``, plain numbers in messages) and the pieces of the fault
path (error classification, the trial's failure path, Ray's saved state).
Slow tests (``-m slow``): real studies on a full disk (a small tmpfs), a read-only artifact
store, a torn Ray experiment state, a stop during ``ray.init``, and the listening sockets of a
local study.
"""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from ksmodel.cohort import load_bags, load_cohort
from ksmodel.errors import CohortError
from study.run import main
from study.space import SpaceError, load_study
from tests.study_helpers import SMOKE, error_lines

# ---------------------------------------------------------------------------- study files


def _smoke_with(tmp_path: Path, old: str, new: str) -> Path:
    text = SMOKE.read_text()
    assert old in text
    path = tmp_path / "space.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


def test_a_key_given_twice_names_both_lines(tmp_path: Path) -> None:
    space = _smoke_with(tmp_path, "epochs: 4\n", "epochs: 4\n# a comment\nepochs: 2\n")
    lines = SMOKE.read_text().splitlines()
    first = lines.index("epochs: 4") + 1
    with pytest.raises(SpaceError, match=rf"key 'epochs' is given twice \(lines {first} and "
                                         rf"{first + 2}\)"):
        load_study(space)
    nested = _smoke_with(tmp_path, "  lam: 0.1\n", "  lam: 0.1\n  lam: 0.2\n")
    with pytest.raises(SpaceError, match=r"key 'lam' is given twice"):
        load_study(nested)


@pytest.mark.parametrize("old,new,key,shown", [
    ("  lam: 0.1\n", "  lam: .inf\n", "fixed.lam", ".inf"),
    ("high: 1.0e-2}", "high: .nan}", "search.lr.high", ".nan"),
    ("seeds: [0]", "seeds: [0, -.inf]", "seeds[1]", "-.inf")])
def test_non_finite_numbers_in_a_study_file_are_refused(tmp_path: Path, old: str, new: str,
                                                         key: str, shown: str) -> None:
    with pytest.raises(SpaceError, match=re.escape(f"key '{key}': {shown} is not a finite")):
        load_study(_smoke_with(tmp_path, old, new))


def test_non_finite_set_values_are_refused_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    for item in ("lam=.inf", "lr=.nan", "search.alpha={type: float, low: 0, high: .inf}"):
        assert main(["--space", str(SMOKE), "--out", str(out), "--set", item]) == 2
        errors = error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and "is not a finite number" in errors[0], errors
        assert errors[0].startswith("error: --set: key '")
    assert not out.exists()


def test_retry_failed_without_resume_is_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "study"
    assert main(["--space", str(SMOKE), "--out", str(out), "--retry-failed"]) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "--retry-failed" in errors[0] and "--resume" in errors[0]
    assert not out.exists() and not (tmp_path / ".study.lock").exists()


# ---------------------------------------------------------------------------- cohorts


def _rewrite_features(path: Path, fn) -> None:  # noqa: ANN001 - a small array edit
    with h5py.File(path, "r") as f:
        x = f["features"][()]
        coords = f["coords"][()] if "coords" in f else None
    x = fn(x.astype(np.float32))
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=x)
        if coords is not None:
            f.create_dataset("coords", data=coords)


def test_feature_files_with_non_finite_values_are_named_with_their_count(
        cohort_copy: Path) -> None:
    folder = cohort_copy / "features"
    all_nan = folder / "SYN-0002-01.h5"
    _rewrite_features(all_nan, lambda x: np.full_like(x, np.nan))
    one_inf = folder / "SYN-0005-01.h5"
    _rewrite_features(one_inf, lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3,
                                                  np.inf, x))
    with h5py.File(all_nan) as f:
        size = f["features"].size
    with h5py.File(one_inf) as f:
        size_inf = f["features"].size
    cohort = load_cohort(cohort_copy)  # headers are fine: the values are read with the bags
    with pytest.raises(CohortError) as err:
        load_bags(cohort, (4, 4))
    message = str(err.value)
    assert message.startswith("2 feature file(s) hold NaN or infinite values")
    assert f"{all_nan} ({size} of {size} values)" in message
    assert f"{one_inf} (1 of {size_inf} values)" in message


def test_missing_feature_files_are_listed_in_command_line_terms(cohort_copy: Path) -> None:
    cohort = load_cohort(cohort_copy)
    (cohort_copy / "features" / "SYN-0003-01.h5").unlink()
    (cohort_copy / "features" / "SYN-0009-01.h5").unlink()
    with pytest.raises(CohortError) as err:
        load_bags(cohort, (4, 4))
    message = str(err.value)
    assert "2 feature file(s) missing: SYN-0003-01.h5, SYN-0009-01.h5" in message
    assert "modality: genomics" in message and "require_features" not in message


def test_label_messages_print_plain_numbers(cohort_copy: Path) -> None:
    clinical = pd.read_parquet(cohort_copy / "clinical.parquet")
    clinical.loc[clinical["case_id"] == "SYN-0004", "diagnosis"] = 7
    clinical.to_parquet(cohort_copy / "clinical.parquet", index=False)
    with pytest.raises(CohortError) as err:
        load_cohort(cohort_copy, tasks=["diagnosis"])
    assert "SYN-0004 (7)" in str(err.value) and "np." not in str(err.value)
