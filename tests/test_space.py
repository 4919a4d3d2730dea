"""Study files: every shipped one validates; bad ones fail before Ray starts, naming file + key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study.space import SpaceError, dump_study, load_study

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_shipped_spaces_validate(path: Path) -> None:
    cfg = load_study(path, {"cohort": "synthetic"})
    assert cfg.name and cfg.metric in ("auc", "cindex")
    if cfg.sampler == "grid":
        assert cfg.grid_size() >= 2
    else:
        assert set(cfg.optuna_space()) == set(cfg.searched)


def test_ablation_is_a_method_by_seed_grid() -> None:
    cfg = load_study(ROOT / "search_spaces" / "ablation.yaml")
    assert cfg.grid_size() == 9
    assert {p.name for p in cfg.search} == {"coordination", "seed"}
    assert cfg.seeds == ()  # the seed comes from the grid


def test_overrides_fix_parameters_and_study_keys(tmp_path: Path) -> None:
    cfg = load_study(ROOT / "search_spaces" / "consistency.yaml",
                     {"num_samples": 3, "alpha": 0.2, "scheduler.grace_period": 1})
    assert cfg.num_samples == 3 and cfg.scheduler.grace_period == 1
    assert cfg.fixed["alpha"] == 0.2 and "alpha" not in cfg.searched


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
def test_saved_config_loads_back_unchanged(path: Path, tmp_path: Path) -> None:
    """--resume re-reads the study folder's config.yaml; it must validate to the same study."""
    cfg = load_study(path, {"cohort": "synthetic"})
    saved = tmp_path / "config.yaml"
    dump_study(cfg, saved)
    assert dataclasses.replace(load_study(saved), source=cfg.source) == cfg


BASE = {"name": "t", "task": "diagnosis", "search": {"alpha": {"type": "float", "low": 0,
                                                               "high": 1}}}

BAD = {
    "unknown top-level key": ({"trails": 3}, "trails"),
    "unknown task": ({"task": "grading"}, "task"),
    "inverted bounds": ({"search": {"alpha": {"type": "float", "low": 0.9, "high": 0.1}}},
                        "search.alpha"),
    "empty bounds": ({"search": {"lr": {"type": "loguniform", "low": 0.01, "high": 0.01}}},
                     "search.lr"),
    "loguniform from zero": ({"search": {"lr": {"type": "loguniform", "low": 0, "high": 1}}},
                             "search.lr.low"),
    "unknown sampler": ({"sampler": "bayes"}, "sampler"),
    "unknown scheduler": ({"scheduler": {"type": "hyperband"}}, "scheduler.type"),
    "unknown parameter": ({"search": {"gamma": {"type": "float", "low": 0, "high": 1}}},
                          "search.gamma"),
    "wrong type": ({"folds": "five"}, "folds"),
    "boolean for a number": ({"folds": True}, "folds"),
    "value the model rejects": ({"search": {"alpha": {"type": "float", "low": 0, "high": 2}}},
                                "search.alpha"),
    "unknown fixed parameter": ({"fixed": {"heads_count": 4}}, "fixed.heads_count"),
    "categorical without values": ({"search": {"coordination": {"type": "categorical"}}},
                                   "search.coordination.values"),
    "unknown coordination rule": ({"fixed": {"coordination": "gradnorm"}}, "fixed"),
    "grid over floats": ({"sampler": "grid"}, "search.alpha"),
    "unknown resource": ({"resources": {"tpu": 1}}, "resources.tpu"),
    "same param fixed and searched": ({"fixed": {"alpha": 0.5}}, "search.alpha"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_files_name_file_and_key(tmp_path: Path, case: str) -> None:
    patch, key = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, **patch}))
    with pytest.raises(SpaceError) as err:
        load_study(path)
    assert str(path) in str(err.value)
    assert f"'{key}'" in str(err.value), str(err.value)
    assert "<class" not in str(err.value)


def test_cli_rejects_bad_file_before_ray_starts(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**BASE, "sampler": "bayes"}))
    proc = subprocess.run([sys.executable, "-m", "study.run", "--space", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "'sampler'" in proc.stderr and str(path) in proc.stderr
    assert "ray" not in proc.stdout.lower()  # nothing was started
    assert not (tmp_path / "out").exists()


def test_study_file_docs_cover_every_key_and_parameter() -> None:
    """docs/study-files.md documents every key the checker accepts (new ones need a row)."""
    from ksmodel.config import MODALITIES, SyntheticConfig
    from ksmodel.coordination import RULES
    from ksmodel.tasks import TASKS
    from study.space import (
        _TOP_KEYS,
        PARAM_TYPES,
        SAMPLERS,
        SCHEDULERS,
        TRIAL_KEYS,
        SchedulerSpec,
    )

    text = (ROOT / "docs" / "study-files.md").read_text()
    names = {*_TOP_KEYS, *TRIAL_KEYS, *PARAM_TYPES, *SAMPLERS, *SCHEDULERS, *TASKS,
             *RULES, *MODALITIES,
             *(f.name for f in dataclasses.fields(SchedulerSpec)),
             *(f.name for f in dataclasses.fields(SyntheticConfig))}
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"not documented in docs/study-files.md: {missing}"
