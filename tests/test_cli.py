"""The command lines as a new user meets them: help texts, refused arguments and refused starts.

Where the process is the point (what a command imports, its exit status and stderr as a shell
sees them) a check runs the real command in a subprocess; a refused command's error line and the
help texts are checked on `main` in this process (the same parser and checks, without 5-15 s of
imports per command).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from study.progress import WIDTH, duration, fit, short
from study.record import EXPLAINED
from tests.study_helpers import ROOT, SMOKE, study_env, study_main

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


SECTION_CITE = re.compile(r"(README|docs/[\w-]+\.md), ['\"]([^'\"]+)['\"]")


def _headings(path: Path) -> set[str]:
    return {line.lstrip("#").strip() for line in path.read_text().splitlines()
            if line.startswith("#")}


def test_help_cites_only_sections_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    """Every "(README, 'Section')" or "docs/x.md, 'Section'" in --help names a heading that is
    there (the help once sent users to a README section that did not exist)."""
    from study.run import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    cited = SECTION_CITE.findall(text)
    assert cited, "the help cites no section at all"
    for where, title in cited:
        path = ROOT / ("README.md" if where == "README" else where)
        assert title in _headings(path), f"--help cites {where}, '{title}': no such heading"


# --- refused arguments ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["foo", "=1", "foo=1", "lr=[1"])
def test_bad_set_exits_2_with_one_error_line(bad: str, tmp_path: Path) -> None:
    out = tmp_path / "study"
    line = _one_error_line(_study("--space", str(SMOKE), "--out", str(out), "--set", bad))
    assert "--set" in line
    assert not out.exists()


@pytest.fixture
def in_process(capsys: pytest.CaptureFixture[str]) -> Any:
    """`study.run.main` in this process (a refused command imports nothing heavy): its one
    error line. The environment and log levels it sets for a study are put back."""
    return lambda *args: _one_error_line(study_main(capsys, *args))


@pytest.mark.parametrize(("args", "says"), [
    (["--set", "lamda=0.2"], ["--set lamda: unknown key; did you mean lam?",
                              "parameter names: alpha, amp,", " lam, ", " lr, "]),
    (["--set", "scheduler.grace=2"], ["--set scheduler.grace: unknown scheduler key 'grace'; "
                                      "did you mean scheduler.grace_period?"]),
    (["--set", "fixed.alpah=0.3"], ["did you mean fixed.alpha?"]),
    (["--set", "num_sample=2"], ["did you mean num_samples?"]),
    (["--set", "lr=-1"], ["error: --set lr=-1: ", "must be > 0, got -1", "a command-line value"]),
    (["--epochs", "0"], ["error: --epochs 0: key 'epochs'", "a command-line value"]),
])
def test_set_mistakes_suggest_names_and_blame_the_command_line(
        args: list[str], says: list[str], tmp_path: Path, in_process: Any) -> None:
    """A mistyped --set key gets the nearest valid names (and the list); a bad value given on
    the command line is the command line's mistake, not the study file's."""
    line = in_process("--space", str(SMOKE), "--out", str(tmp_path / "s"), *args)
    for words in says:
        assert words in line, (words, line)
    if "lr=-1" not in args and "--epochs" not in args:
        assert "smoke.yaml" not in line  # the file is not to blame


def test_mistyped_study_file_gets_did_you_mean(tmp_path: Path, in_process: Any) -> None:
    line = _one_error_line(_study("--space", "search_spaces/smoek.yaml"))  # as typed
    assert "no such study file; did you mean search_spaces/smoke.yaml?" in line
    assert "nested_smoke" in line  # the example studies are listed
    line = in_process("--space", str(tmp_path / "alpah.yaml"))
    assert "did you mean" in line and "search_spaces/alpha.yaml" in line


def test_argument_mistakes_are_found_before_any_heavy_import() -> None:
    """Each argument mistake is answered with nothing heavy imported (torch, Ray, MLflow,
    pandas, scikit-learn, lifelines take 3-15 s together on a loaded 2-core machine)."""
    code = ("import sys, study.run\n"
            "heavy = ('torch', 'ray', 'mlflow', 'pandas', 'sklearn', 'lifelines', 'optuna')\n"
            "for args in (['--set', 'lamda=0.2'], ['--set', 'lr=-1'], ['--set', 'foo'],\n"
            "             ['--set', 'scheduler.grace=2'], ['--cohort', 'x', '--set', 'lamda=1'],\n"
            "             ['--epochs', '0']):\n"
            "    code = study.run.main(['--space', 'search_spaces/smoke.yaml',\n"
            "                           '--out', sys.argv[1], *args])\n"
            "    assert code == 2, (args, code)\n"
            "study.run.main(['--space', 'search_spaces/smoek.yaml'])\n"
            "print('heavy', sorted(m for m in heavy if m in sys.modules))\n")
    proc = _run("-c", code, "/tmp/never-created")
    assert proc.returncode == 0, proc.stderr
    assert "heavy []" in proc.stdout, proc.stdout
    assert proc.stderr.count("error: ") == 7, proc.stderr


def test_once_is_one_trial_of_the_defaults() -> None:
    """--once: the study's fixed parameters, the searched ones at their defaults, every fold,
    no early stopping, as study <name>-once (a variants study: its reference variant)."""
    from ksmodel.config import TrainConfig
    from study.arguments import once
    from study.resume import study_folder
    from study.run import parse_args
    from study.space import load_study

    smoke = load_study(SMOKE)
    cfg, line = once(smoke)
    assert (cfg.name, cfg.sampler, cfg.scheduler.type, cfg.search) == ("smoke-once", "grid",
                                                                      "none", ())
    assert cfg.grid_size() == 1 and cfg.folds == smoke.folds and cfg.epochs == smoke.epochs
    assert cfg.fixed == smoke.fixed and cfg.seeds == smoke.seeds
    assert f"lr={TrainConfig.lr}" in line and f"alpha={TrainConfig.alpha}" in line
    named, _ = once(smoke, "mine")
    assert named.name == "mine"
    grid, line = once(load_study(ABLATION))  # searches coordination and seed
    assert grid.grid_size() == 1 and grid.seeds == (0,) and "coordination=cgcoord" in line
    paper = load_study(ROOT / "search_spaces" / "paper_ablations.yaml")
    one, line = once(paper)
    assert one.grid_size() == 1 and one.seeds == paper.seeds and not one.variants
    assert one.fixed == {**paper.fixed, **paper.variants[paper.reference]}
    assert paper.reference in line
    args = parse_args(["--space", str(SMOKE), "--once", "--resume"])
    assert study_folder(args) == (Path("studies") / "smoke-once").resolve()


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

def test_refused_start_leaves_no_new_folder(tmp_path: Path, in_process: Any) -> None:
    empty = tmp_path / "not-a-cohort"
    empty.mkdir()
    out = tmp_path / "study"
    line = in_process("--space", str(SMOKE), "--out", str(out), "--cohort", str(empty))
    assert "clinical" in line
    assert not out.exists()  # no config.yaml, no split file, no folder


def test_refused_start_keeps_what_was_there(tmp_path: Path, in_process: Any) -> None:
    empty = tmp_path / "not-a-cohort"
    empty.mkdir()
    out = tmp_path / "study"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    in_process("--space", str(SMOKE), "--out", str(out), "--cohort", str(empty))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"


# --- ksmodel.train --help ---------------------------------------------------------------------

def test_train_help_explains_task_fold_epochs_split_seed(
        capsys: pytest.CaptureFixture[str]) -> None:
    from ksmodel.train import main

    with pytest.raises(SystemExit) as done:  # what `python -m ksmodel.train --help` prints
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
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
