"""A configuration becomes one typed `RunSpec` once per trial: the training configs are built
once per training seed, and the folds, the epoch values and the final record read the spec."""

from __future__ import annotations

from pathlib import Path

import pytest

from ksmodel.config import ConfigError, TrainConfig
from ksmodel.data import RunData, load_run_data
from ksmodel.tasks import get_task
from study.configuration_run import epoch_values, final_values, run_params, run_tags
from study.fanout import make_folds
from study.record import EPOCHS_RUN, Params, Tags, final_metric, fold_metric, val_metric
from study.spec import SINGLE, TrialContext

SMALL = dict(grid=[4, 4], dim=16, gene_hidden=16, gene_blocks=1, heads=2, head_dim=8,
             offset_groups=2, downsample=2, offset_kernel=3, rpb_hidden=8, rpb_depth=1)


@pytest.fixture(scope="module")
def data(small_cohort: Path) -> RunData:
    return load_run_data(small_cohort, "diagnosis", modalities=["genomics"], grid=(4, 4),
                         folds=2)


def _ctx(data: RunData, seeds: tuple[int, ...] = (0,), **fixed: object) -> TrialContext:
    return TrialContext(task="diagnosis", epochs=1, folds=data.folds, seeds=seeds,
                        fixed={**SMALL, "modality": "genomics", "batch_size": 64, **fixed},
                        cohort=data.cohort, splits=data.splits, bags=None, tracking_uri="",
                        experiment_id="", parent_run_id="spec-test", tags={Tags.STUDY: "s"})


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """Every TrainConfig validated from now on (construction and `dataclasses.replace` both
    run ``__post_init__``)."""
    seen: list[TrainConfig] = []
    original = TrainConfig.__post_init__

    def counting(self: TrainConfig) -> None:
        original(self)
        seen.append(self)

    monkeypatch.setattr(TrainConfig, "__post_init__", counting)
    return seen


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_a_trial_builds_one_training_config_per_seed(data: RunData, built: list,
                                                     seeds: tuple[int, ...]) -> None:
    """The trial's whole route - spec, folds, one epoch, the epoch's values, the final record -
    validates the training config once per seed (main before the spec: 2 + seeds x folds)."""
    ctx = _ctx(data, seeds, lr=1e-3)
    spec = ctx.spec({"alpha": 0.3, "coordination": "pcgrad"})
    folds = make_folds(ctx, spec)
    steps = folds.step()
    values = epoch_values(steps, spec.metric)
    final = final_values(folds.finals())
    folds.close()
    params, tags = run_params(spec, **{Params.FOLDS: 2}), run_tags(spec, ctx, "node")
    assert len(built) == len(seeds)
    assert [t.seed for t in built] == list(seeds) and spec.seeds == seeds
    assert all(t.alpha == 0.3 and t.lr == 1e-3 for t in built)
    # what the run records comes from the spec
    assert params["alpha"] == 0.3 and params[Params.SEEDS] == ",".join(map(str, seeds))
    assert "seed" not in params  # seeds come from the study's list, not a parameter
    assert tags[Tags.METHOD] == "pcgrad" and tags[Tags.TASK] == "diagnosis"
    assert tags[Tags.METRIC] == get_task("diagnosis").metric == spec.metric
    assert tags[Tags.SEED] == (0 if len(seeds) == 1 else "mean") and tags[Tags.STUDY] == "s"
    assert tags[Tags.FOLDS] == ",".join(map(str, data.folds))
    key = val_metric(spec.metric)
    assert set(values) >= {key, *(fold_metric(f, key) for f in data.folds)}
    assert final[EPOCHS_RUN] == 1.0 and final_metric(spec.metric) in final


def test_the_refit_trains_without_patience_and_records_the_chosen_value(
        data: RunData, built: list) -> None:
    spec = _ctx(data, (0, 1)).spec({"patience": 3, "decompose": False}, folds=(1,),
                                   train_overrides={"patience": 0})
    assert len(built) == 2 and all(t.patience == 0 for t in spec.trains)
    assert spec.params["patience"] == 3 and spec.folds == (1,)
    assert spec.method == SINGLE


def test_a_seed_parameter_replaces_the_seeds_list(data: RunData) -> None:
    spec = _ctx(data, (0, 1, 2)).spec({"seed": 7})
    assert spec.seeds == (7,) and spec.params["seed"] == 7 and spec.seed_label == 7


def test_a_variant_is_expanded_once(data: RunData) -> None:
    ctx = _ctx(data)
    ctx.variants = {"plain": {"coordination": "uniform"}, "ref": {}}
    spec = ctx.spec({"variant": "plain", "seed": 0})
    assert spec.variant == "plain" and spec.train.coordination == "uniform"


def test_a_bad_value_fails_when_the_spec_is_built(data: RunData) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        _ctx(data).spec({"alpha": 2.0})
