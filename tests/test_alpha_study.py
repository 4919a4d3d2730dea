"""README's first command, end to end: the alpha study on the embedded defaults."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.space import load_study
from tests.study_helpers import ROOT, T, run_study, runs

ALPHA = ROOT / "search_spaces" / "alpha.yaml"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_alpha_study_end_to_end(tmp_path: Path) -> None:
    cfg = load_study(ALPHA)
    out = tmp_path / "alpha"
    start = time.perf_counter()
    proc = run_study(out, space=ALPHA, timeout=15 * 60)
    wall = time.perf_counter() - start
    print(f"alpha.yaml: {cfg.num_samples} trials x {cfg.folds} folds in {wall:.0f} s")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert wall < 15 * 60
    parents, children = runs(out, "alpha")
    assert len(parents) == 1 and len(children) == cfg.num_samples
    assert children["params.alpha"].astype(float).between(0, 1).all()
    assert (children["tags.mlflow.parentRunId"] == parents["run_id"].iloc[0]).all()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    for run_id in children["run_id"]:
        history = client.get_metric_history(run_id, "val_auc")
        assert len(history) >= cfg.scheduler.grace_period
        assert all(0.0 <= m.value <= 1.0 for m in history)
    completed = children[children[T.STATUS] == "COMPLETED"]
    assert len(completed) >= 1
    assert completed["metrics.final_auc"].max() >= 0.85  # the planted signal is found
