"""Benchmarks stay runnable; the GPU check skips cleanly where there is no CUDA."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU it runs the real check")
def test_gpu_check_skips_without_cuda(monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The script's main in this process, as `python benchmarks/gpu_check.py` runs it (no
    subprocess: its torch import alone took 3-12 s)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" /
                                                  "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(sys, "argv", ["gpu_check.py"])
    assert gpu_check.main() == 0
    assert "skipped" in capsys.readouterr().out


def test_only_the_step_module_runs_backward() -> None:
    """Benchmarks, trainer and study time or run ``ksmodel.step``, never a copy of its forward /
    backward; and no benchmark reaches into tests/ through sys.path."""
    calls = []
    for folder in ("benchmarks", "ksmodel", "study"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text()
            calls += [f"{path.relative_to(ROOT)}: {line.strip()}"
                      for line in text.splitlines()
                      if re.search(r"[\w)\]]\.backward\(\)", line.split("#")[0])
                      and "``" not in line]
            if folder == "benchmarks":
                assert not re.search(r"sys\.path\.\w+\([^)]*tests", text), path
    assert calls == ["ksmodel/step.py: loss.backward()"]
