"""The one-fold trainer: determinism, selection, checkpoints, ablation switches, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ksmodel import trainer as trainer_module
from ksmodel.cohort import load_bags, load_cohort
from ksmodel.config import TrainConfig
from ksmodel.splits import make_splits
from ksmodel.step import NonFiniteLossError
from ksmodel.train import main as train_cli
from ksmodel.trainer import FoldTrainer, build_model_config, prepare_fold, train_fold

SMALL = dict(grid=(6, 6), dim=32, gene_hidden=64, heads=2, head_dim=16, offset_groups=2,
             downsample=2, offset_kernel=3)


def _trainer(cohort_path: Path, task: str = "diagnosis", fold: int = 0, model: dict | None = None,
             **train: object) -> FoldTrainer:
    cohort = load_cohort(cohort_path, tasks=[task])
    model_cfg = build_model_config(cohort, task, **{**SMALL, **(model or {})})
    bags = None if model_cfg.modality == "genomics" else load_bags(cohort, model_cfg.grid).tensor
    splits = make_splits(cohort, task, k=3, seed=0)
    data = prepare_fold(cohort, bags, splits, fold, task)
    return FoldTrainer(data, model_cfg, TrainConfig(task=task, **{"epochs": 2, **train}))


def test_training_is_deterministic_on_cpu(small_cohort: Path, machine_threads: int) -> None:
    """At the machine's thread count: the streams side by side are deterministic too."""
    a = train_fold(_trainer(small_cohort, seed=3))
    b = train_fold(_trainer(small_cohort, seed=3))
    torch.set_num_threads(1)  # the control (another seed, another model) needs no threads
    c = train_fold(_trainer(small_cohort, seed=4))
    assert a.metrics == b.metrics
    assert a.predictions.equals(b.predictions)
    assert not np.allclose(a.predictions["prob_0"], c.predictions["prob_0"])


def test_predictions_cover_the_validation_fold(small_cohort: Path) -> None:
    trainer = _trainer(small_cohort)
    seen = []
    result = train_fold(trainer, on_epoch_end=seen.append)
    assert [r.epoch for r in seen] == [1, 2]
    pred = result.predictions
    val = set(trainer.data.case_ids[trainer.data.val_idx.numpy()])
    assert set(pred["case_id"]) == val and len(pred) == len(val)
    assert np.allclose(pred[[f"prob_{c}" for c in range(4)]].sum(axis=1), 1.0, atol=1e-5)
    assert set(result.metrics) == {"auc", "accuracy", "balanced_accuracy", "f1"}


def test_survival_predictions_and_cindex(small_cohort: Path) -> None:
    result = train_fold(_trainer(small_cohort, task="survival"))
    assert set(result.metrics) == {"cindex"}
    assert {"time", "event", "risk"} <= set(result.predictions.columns)
    assert 0.0 <= result.metrics["cindex"] <= 1.0


def test_early_stopping_keeps_the_best_epoch(small_cohort: Path) -> None:
    trainer = _trainer(small_cohort, epochs=30, patience=1, lr=5e-2)
    train_fold(trainer)
    aucs = [r.metrics["auc"] for r in trainer.history]
    assert trainer.epoch < 30  # stopped early
    assert trainer.result.metrics["auc"] == max(aucs)
    assert trainer.result.epoch == int(np.argmax(aucs)) + 1


def test_checkpoint_round_trip_with_weights_only(small_cohort: Path, tmp_path: Path) -> None:
    trainer = _trainer(small_cohort)
    trainer.fit_epoch()
    trainer.save(tmp_path / "ckpt.pt")
    other = _trainer(small_cohort, seed=99)
    other.load(tmp_path / "ckpt.pt")
    assert other.epoch == 1
    for a, b in zip(trainer.model.state_dict().values(), other.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert trainer.evaluate()[0] == other.evaluate()[0]


def test_non_finite_loss_is_an_error(small_cohort: Path) -> None:
    with pytest.raises(NonFiniteLossError, match="fold 0"):
        _trainer(small_cohort, lam=1e39).fit_epoch()


@pytest.mark.parametrize("switch", [{"decompose": False}, {"teacher": False},
                                    {"modality": "genomics"}, {"modality": "histology"}])
def test_ablation_switches_train(small_cohort: Path, switch: dict) -> None:
    trainer = _trainer(small_cohort, model=switch, epochs=1)
    result = train_fold(trainer)
    assert 0.0 <= result.metrics["auc"] <= 1.0
    # two subspace streams (and so coordination telemetry) unless decomposition is off
    assert bool(trainer.history[0].telemetry) == switch.get("decompose", True)


def test_trainer_and_cli_run_the_one_training_step(small_cohort: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every batch of the fold trainer (and so of the CLI) goes through ``ksmodel.step``."""
    seen = []

    def counted(*args, **kwargs):
        seen.append(args[1].genes_t.shape[0])
        return real(*args, **kwargs)

    real = trainer_module.train_step
    monkeypatch.setattr(trainer_module, "train_step", counted)
    trainer = _trainer(small_cohort, batch_size=16)
    trainer.fit_epoch()
    assert sum(seen) == len(trainer.data.train_idx) and len(seen) >= 2
    seen.clear()
    out = tmp_path / "m.json"
    overrides = [a for k, v in SMALL.items() for a in ("--set", f"{k}={_yaml(v)}")]
    assert train_cli(["--cohort", str(small_cohort), "--folds", "3", "--epochs", "1",
                      "--metrics-json", str(out), *overrides]) == 0
    assert seen and json.loads(out.read_text())["epochs_run"] == 1


def test_cli_reports_bad_cohort_without_traceback(small_cohort: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`ksmodel.train`'s main in this process (a traceback here would fail the test)."""
    import shutil

    bad = tmp_path / "cohort"
    shutil.copytree(small_cohort, bad)
    (bad / "gene_sets.csv").write_text("gene,subspace\nNOT_A_GENE,tumour\nTME_001,tme\n")
    capsys.readouterr()
    assert train_cli(["--cohort", str(bad)]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error:") and "NOT_A_GENE" in stderr
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("task,metric,floor", [("diagnosis", "auc", 0.85),
                                               ("survival", "cindex", 0.65)])
def test_cli_reaches_the_planted_signal(tmp_path: Path, task: str, metric: str,
                                        floor: float) -> None:
    out = tmp_path / "metrics.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ksmodel.train", "--cohort", "synthetic", "--task", task,
         "--fold", "0", "--epochs", "6", "--set", "batch_size=32", "--metrics-json", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 6/6" in proc.stdout and "final fold 0" in proc.stdout
    metrics = json.loads(out.read_text())
    print(f"{task}: {metric}={metrics[metric]:.3f} in {metrics['wall_seconds']:.0f} s")
    assert metrics[metric] >= floor
    assert metrics["wall_seconds"] < 300


def test_config_accepts_exactly_the_registered_coordination_rules() -> None:
    from ksmodel.config import ConfigError
    from ksmodel.coordination import RULES

    for name in RULES:
        assert TrainConfig(coordination=name).coordination == name
    with pytest.raises(ConfigError, match="coordination"):
        TrainConfig(coordination="not_a_rule")


def _yaml(value: object) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)
