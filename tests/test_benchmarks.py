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


def _worker_result(tree: str, rnd: int, steps: list[float], mm: list[float],
                   flop: float | None) -> dict:
    return {"tree": tree, "round": rnd, "config": "paper", "batch": 2, "oracle": False,
            "flop": flop, "peak_rss_gb": 1.0, "loadavg": [1.0, 1.5], "matmul_gflops": mm[0],
            "rules": {"cgcoord": {"step_all_s": steps, "mm_gflops_all": mm}}}


def test_step_comparison_reports_medians_ratio_and_matmul_share(capsys) -> None:
    """The side-by-side table: median step over all rounds per tree, the ratio to the first
    tree with the range of the per-round ratios, % of the matmul rate measured before each
    step (FLOPs counted once per tree, in round 0)."""
    from benchmarks.step import print_comparison

    base, new = Path("/x/base"), Path("/x/new")
    results = [_worker_result(str(base), 0, [4.0, 4.0, 4.0], [100.0] * 3, 100e9),
               _worker_result(str(new), 0, [2.0, 2.0, 2.0], [100.0] * 3, 100e9),
               _worker_result(str(new), 1, [3.0, 3.0, 3.0], [50.0] * 3, None),
               _worker_result(str(base), 1, [4.0, 4.0, 4.0], [50.0] * 3, None)]
    print_comparison(results, [base, new])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()
            if line.startswith(("base", "new"))}
    assert float(rows["base"][4]) == 4.0 and float(rows["new"][4]) == 2.5  # medians
    # new: 100 GFLOP in 2 s at 100 GF/s -> 50 %, in 3 s at 50 GF/s -> 66.7 %: median 58.3
    assert float(rows["new"][9]) == pytest.approx(58.3, abs=0.05)
    assert float(rows["base"][9]) == pytest.approx(37.5, abs=0.05)
    assert rows["new"][11] == "0.625x" and rows["new"][12] == "(0.50-0.75)"
