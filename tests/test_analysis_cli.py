"""The analysis CLIs answer at once: --help and argument mistakes before any heavy import, a
store that does not exist is an error (never created), "did you mean" for experiment names, and
the help cites only README sections that exist."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis import compare, summary

try:  # tests/ as a package or as a plain folder on sys.path (pytest's default)
    from tests.analysis_fixtures import log_study
except ModuleNotFoundError:
    from analysis_fixtures import log_study

ROOT = Path(__file__).resolve().parents[1]


def test_help_imports_nothing_heavy():
    code = ("import sys; import analysis.compare, analysis.summary; "
            "print([m for m in ('mlflow', 'pandas', 'matplotlib', 'scipy', 'numpy') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_help_cites_only_sections_that_exist(capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--rope" in text and "correlated t-test" in text and "undecided" in text
    cited = re.findall(r'"([^"]+)"', text[text.index("README sections:"):])
    assert set(cited) == set(compare.README_SECTIONS)
    readme = (ROOT / "README.md").read_text()
    titles = {ln.lstrip("#").strip() for ln in readme.splitlines() if ln.startswith("#")}
    for title in cited:
        assert title in titles, title


def test_missing_sqlite_store_is_an_error_and_never_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "studies" / "smoke" / "mlflow.db"
    for main in (compare.main, summary.main):
        rc = main(["--experiment", "smoke", "--tracking-uri", "sqlite:///studies/smoke/mlflow.db"])
        err = capsys.readouterr().err
        assert rc == 2 and "does not exist" in err and str(tmp_path) in err
        assert not db.exists() and not db.parent.exists()


def test_experiment_name_mistake_gets_did_you_mean(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "smoke", [{"method": "uniform", "seed": 0, "folds": {0: 0.7, 1: 0.8}}],
              n_folds=2)
    rc = compare.main(["--experiment", "smoek", "--tracking-uri", uri, "--no-log"])
    err = capsys.readouterr().err
    assert rc == 2 and "Did you mean 'smoke'?" in err and "experiments there: Default, smoke" in err


def test_mistakes_are_answered_within_two_seconds(tmp_path):
    cases = [["--experiment"],  # argparse: missing value
             ["--experiment", "x", "--rope", "-1"],  # a bad ROPE
             ["--experiment", "x", "--tracking-uri", f"sqlite:///{tmp_path / 'no.db'}"]]
    for args in cases:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "analysis.compare", *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        took = time.perf_counter() - start
        assert out.returncode == 2 and out.stderr.strip(), args
        assert took < 2.0, (args, took)
