"""Known answers: the report's verdict on worlds whose truth is planted (README, "Synthetic
scenarios" and "How far to trust a verdict"). A replicate is what benchmarks/calibration.py runs:
a cohort of the scenario, the folds a study makes, the library trainer on every fold, the
correlated t-test verdict on the per-fold scores."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.verdict import BETTER, EQUIVALENT, UNDECIDED, WORSE
from benchmarks.calibration import replicate, verdicts

K, ROPE = 5, 0.01


@pytest.mark.slow
def test_arms_that_differ_only_by_seed_never_read_better_or_worse(tmp_path: Path) -> None:
    """null: the same configuration trained with seeds 0 and 1 on the same 5 folds, for three
    data seeds - the truth is no difference, so the verdict is never "better"/"worse"."""
    for seed in (1, 2, 3):
        rep = replicate("null", seed, folds=K, repeats=1, workdir=tmp_path,
                        cohort={"patients": 200}, epochs=4)
        (v,) = verdicts(rep, "null", K, ROPE)
        assert v["word"] in (EQUIVALENT, UNDECIDED), v
        assert v["word"] not in (BETTER, WORSE)
        assert v["ci"][0] <= 0.0 <= v["ci"][1], v  # the interval holds the true difference


@pytest.mark.slow
def test_a_model_that_reads_the_slide_beats_expression_alone(tmp_path: Path) -> None:
    """histology_needed: the full model against genomics_only on the same 5 folds - the planted
    effect (grade-4 morphology only the slide shows) reads "better"; and it is never read the
    wrong way round against logreg_pca."""
    rep = replicate("histology_needed", 1, folds=K, repeats=1, workdir=tmp_path)
    found = {(v["a"], v["b"]): v for v in verdicts(rep, "histology_needed", K, ROPE)}
    genomics, pca = found["full", "genomics_only"], found["full", "logreg_pca"]
    assert genomics["word"] == BETTER and genomics["mean_diff"] > 2 * ROPE, genomics
    assert pca["word"] != WORSE and pca["mean_diff"] > 0, pca


def test_a_stream_trained_alone_leaves_the_other_untouched(small_cohort: Path) -> None:
    """The starvation probe's reference (ksmodel.train ``head``): the task loss on the TME
    stream's own logits trains that stream and leaves the tumour stream's gene encoder as it was
    initialised; each stream's logits can be scored on the validation part."""
    import torch

    from ksmodel.config import ConfigError, TrainConfig
    from ksmodel.data import load_run_data
    from ksmodel.train import FoldTrainer, build_model_config, prepare_fold

    data = load_run_data(small_cohort, "diagnosis", grid=(4, 4), folds=3)
    model = build_model_config(data.cohort, "diagnosis", grid=(4, 4), dim=16, gene_hidden=16,
                               heads=2, head_dim=8, offset_groups=2, downsample=2,
                               offset_kernel=2)
    fold = prepare_fold(data.cohort, data.bags, data.splits, 0, "diagnosis")
    cfg = TrainConfig(task="diagnosis", epochs=1, lam=0.0, coordination="uniform")
    trainer = FoldTrainer(fold, model, cfg, head="logits_m")
    before = {k: v.clone() for k, v in trainer.model.streams.state_dict().items()}
    trainer.fit_epoch()
    after = trainer.model.streams.state_dict()
    tumour = [k for k in before if k.startswith("tumour.gene_encoder")]
    tme = [k for k in before if k.startswith("tme.gene_encoder")]
    assert tumour and all(torch.equal(before[k], after[k]) for k in tumour)
    assert any(not torch.equal(before[k], after[k]) for k in tme)
    for head in ("logits", "logits_t", "logits_m"):
        assert 0.0 <= trainer.evaluate(head=head)[0]["auc"] <= 1.0
    with pytest.raises(ConfigError, match="head must be one of"):
        FoldTrainer(fold, model, cfg, head="out_m")
