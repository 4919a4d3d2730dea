"""The command lines as a new user meets them: help texts, refused arguments and refused starts.

Every check runs the real command in a subprocess (what a user types), except the help-keys
registry comparison, which reads the same registries the study-file parser uses.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from study.progress import WIDTH, duration, fit, short
from study.record import EXPLAINED
from tests.study_helpers import ROOT, SMOKE, study_env

ABLATION = ROOT / "search_spaces" / "ablation.yaml"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=study_env(), timeout=timeout)


def _study(*args: str) -> subprocess.CompletedProcess:
    return _run("-m", "study.run", *args)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# --- study.run --help -------------------------------------------------------------------------

def test_help_lists_every_key_set_accepts() -> None:
    from ksmodel.config import parameter_keys
    from study.run import set_keys
    from study.space import _TOP_KEYS, DATA_KEYS

    proc = _study("--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    listed = {k for keys in set_keys().values() for k in keys}
    # every study key and every parameter a trial accepts is listed, nothing else
    assert listed >= _TOP_KEYS | (parameter_keys() - DATA_KEYS - _TOP_KEYS)
    assert not listed & DATA_KEYS - _TOP_KEYS  # sizes the cohort decides are not offered
    words = set(re.findall(r"[\w.<>]+", text.split("Keys --set", 1)[1]))
    assert listed <= words, listed - words
    for group in set_keys():
        assert f"  {group}: " in text
    assert "scheduler.grace_period" in text and "--quiet" in text and "--verbose" in text
    assert max(map(len, text.splitlines())) < 120


def test_help_imports_no_training_stack() -> None:
    """`--help`, key listing included, answers without torch, Ray, MLflow, pandas or Optuna
    (together they cost 3-7 s to import on a loaded 2-core machine)."""
    code = ("import sys\n"
            "import study.run\n"
            "heavy = ('torch', 'ray', 'mlflow', 'pandas', 'optuna')\n"
            "print('module', sorted(m for m in heavy if m in sys.modules))\n"
            "try:\n"
            "    study.run.parse_args(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('help', sorted(m for m in heavy if m in sys.modules))\n")
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "module []" in proc.stdout and "help []" in proc.stdout, proc.stdout


# --- refused arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["foo", "=1", "foo=1", "lr=[1"])
def test_bad_set_exits_2_with_one_error_line(bad: str, tmp_path: Path) -> None:
    out = tmp_path / "study"
    line = _one_error_line(_study("--space", str(SMOKE), "--out", str(out), "--set", bad))
    assert "--set" in line
    assert not out.exists()


def test_seeds_error_says_how_to_change_the_seeds(tmp_path: Path) -> None:
    out = tmp_path / "study"
    line = _one_error_line(_study("--space", str(ABLATION), "--out", str(out),
                                  "--set", "seeds=[0, 1]"))
    assert "search.seed" in line and "values: [0, 1]" in line and "seeds: [0, 1, 2]" in line
    assert "docs/study-files.md" in line
    # ... and the way it names works
    from study.space import load_study

    cfg = load_study(ABLATION, {"search.seed": {"type": "categorical", "values": [0, 1]}})
    assert cfg.grid_size() == 6


# --- refused starts leave nothing behind ---------------------------------------------------

def test_refused_start_leaves_no_new_folder(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-cohort"
    empty.mkdir()
    out = tmp_path / "study"
    line = _one_error_line(_study("--space", str(SMOKE), "--out", str(out),
                                  "--cohort", str(empty)))
    assert "clinical" in line
    assert not out.exists()  # no config.yaml, no split file, no folder


def test_refused_start_keeps_what_was_there(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-cohort"
    empty.mkdir()
    out = tmp_path / "study"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _one_error_line(_study("--space", str(SMOKE), "--out", str(out), "--cohort", str(empty)))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


# --- ksmodel.train --help ---------------------------------------------------------------------

def test_train_help_explains_task_fold_epochs_split_seed() -> None:
    proc = _run("-m", "ksmodel.train", "--help")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    for option, words in {"--task": "what to predict", "--fold": "validation part",
                          "--epochs": "training epochs", "--split-seed": "fold assignment"}.items():
        assert option in text and words in text, option


# --- repository facts a new user relies on ----------------------------------------------------

def test_cohorts_folder_is_git_ignored() -> None:
    proc = subprocess.run(["git", "check-ignore", "-q", "cohorts/tcga/expression.parquet"],
                          cwd=ROOT, capture_output=True)
    assert proc.returncode == 0, "cohorts/ (README's import target) is not git-ignored"


def _readme_metric_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## What you see in MLflow", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (.+?) \|$", section, flags=re.M)
    return dict(rows)


def metric_table() -> str:
    """README's metric table, generated from study/record.py's EXPLAINED."""
    lines = ["| metric | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {words.replace('|', chr(92) + '|')} |"
              for name, words in EXPLAINED.items()]
    return "\n".join(lines)


def test_readme_explains_every_metric_as_the_record_does() -> None:
    shown = _readme_metric_table()
    expected = {name: words.replace("|", "\\|") for name, words in EXPLAINED.items()}
    assert shown == expected, ("README's 'What you see in MLflow' table is out of date; "
                               "paste this:\n" + metric_table())


# --- progress formatting ----------------------------------------------------------------------

def test_progress_formatting_is_short() -> None:
    assert short(0.123456) == "0.123" and short(2.5e-05) == "2.5e-05" and short(True) == "True"
    assert short([8, 8]) == "[8,8]" and short("cgcoord") == "cgcoord"
    assert duration(45) == "45s" and duration(250) == "4m10s" and duration(3900) == "1h05m"
    long = "x" * 300
    assert len(fit(long)) == WIDTH and fit("short") == "short"
