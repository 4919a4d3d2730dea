"""The search the study runner builds is Optuna's seeded TPE, run by Ray Tune, and it says when
it is a random search (num_samples at or below the sampler's start-up trials)."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import ray
import yaml
from mlflow import MlflowClient
from ray import tune

from study.record import Tags
from study.search import STARTUP_TRIALS, announce_search, make_search, search_note
from study.space import load_study, parse_study
from tests.analysis_fixtures import fresh_store

PLANTED = {"alpha": 0.73, "lam": 0.21}


def _value(config: dict) -> float:
    return 1.0 - sum((config[k] - PLANTED[k]) ** 2 for k in PLANTED)


def _objective(config: dict) -> None:
    tune.report({"val_auc": _value(config)})


def _space(tmp: Path, sampler: str, seed: int) -> Path:
    path = tmp / f"{sampler}{seed}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "planted", "task": "diagnosis", "sampler": sampler, "sampler_seed": seed,
        "max_concurrent": 4, "search": {"alpha": {"type": "float", "low": 0.0, "high": 1.0},
                                        "lam": {"type": "float", "low": 0.0, "high": 1.0}}}))
    return path


def _run(space: Path, n: int, storage: Path) -> list[dict]:
    cfg = load_study(space)
    search_alg, param_space, _ = make_search(cfg)
    trainable = tune.with_resources(_objective, {"cpu": 0.5})
    grid = tune.Tuner(trainable, param_space=param_space, tune_config=tune.TuneConfig(
        metric="val_auc", mode="max", num_samples=n, search_alg=search_alg),
        run_config=tune.RunConfig(storage_path=str(storage), verbose=0)).fit()
    assert grid.num_errors == 0 and len(grid) == n
    ordered = sorted(grid, key=lambda r: r.metrics["timestamp"])
    return [{**r.config, "value": r.metrics["val_auc"]} for r in ordered]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    # Ray workers cannot import this test module: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _ask(space: Path, n: int) -> list[dict]:
    """The first ``n`` configurations of the search the runner builds, driven as Ray Tune
    drives a searcher (search properties, then suggest / on_trial_complete per trial) in waves
    of max_concurrent trials, each wave proposed before any of its results, as in a Tuner run.
    (It leaves out the Tuner run itself: the slow test below and every study.)"""
    cfg = load_study(space)
    search_alg, param_space, _ = make_search(cfg)
    search_alg.set_search_properties("val_auc", "max", param_space)
    proposed: list[dict] = []
    for start in range(0, n, cfg.max_concurrent):
        wave = {f"t{i}": search_alg.suggest(f"t{i}")
                for i in range(start, min(n, start + cfg.max_concurrent))}
        for trial_id, config in wave.items():
            search_alg.on_trial_complete(trial_id, {"val_auc": _value(config)})
        proposed += wave.values()
    return proposed


def test_seeded_tpe_proposes_the_same_first_configurations(tmp_path: Path) -> None:
    a = _ask(_space(tmp_path, "tpe", 7), 4)
    b = _ask(_space(tmp_path, "tpe", 7), 4)
    c = _ask(_space(tmp_path, "tpe", 8), 4)
    key = lambda rows: sorted((r["alpha"], r["lam"]) for r in rows)  # noqa: E731
    assert len(a) == 4 and all(0.0 <= r["alpha"] <= 1.0 and 0.0 <= r["lam"] <= 1.0 for r in a)
    assert key(a) == key(b)
    assert key(a) != key(c)


@pytest.mark.slow
def test_tpe_beats_random_search_on_a_planted_optimum(local_ray, tmp_path: Path) -> None:
    """TPE run by Ray Tune against the same space searched at random (three seeds). The random
    arms need no Tuner: a random sampler draws the same values whatever the results (`_ask`)."""
    n = 30
    tpe = max(r["value"] for r in _run(_space(tmp_path, "tpe", 0), n, tmp_path / "tpe"))
    randoms = [max(map(_value, _ask(_space(tmp_path, "random", s), n))) for s in range(3)]
    median = statistics.median(randoms)
    print(f"best after {n} trials: TPE {tpe:.5f}, random median {median:.5f} ({randoms})")
    assert tpe > median


def _cfg(tmp_path: Path, **raw: object):
    return parse_study({"name": "n", "task": "diagnosis",
                        "search": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                        **raw}, "s.yaml", tmp_path)


def test_the_search_says_when_it_is_random(tmp_path: Path) -> None:
    """TPE draws its first 10 trials at random (CMA-ES its first 1): at or below that, the
    study is a random search and the note says so; above it, or for samplers that say what
    they are (random, grid), there is no note."""
    assert STARTUP_TRIALS["tpe"] == 10
    note = search_note(_cfg(tmp_path, num_samples=8))
    assert note is not None and note.startswith("the search is random: num_samples 8 ")
    assert "sampler tpe's 10 start-up trials" in note
    assert search_note(_cfg(tmp_path, num_samples=10)) is not None
    assert search_note(_cfg(tmp_path, num_samples=11)) is None
    assert search_note(_cfg(tmp_path, num_samples=4, sampler="random")) is None
    assert search_note(_cfg(tmp_path, sampler="grid",
                            search={"lr": {"type": "categorical", "values": [1e-3]}})) is None
    assert "sampler cmaes's 1" in search_note(_cfg(tmp_path, num_samples=1, sampler="cmaes"))
    assert search_note(_cfg(tmp_path, num_samples=2, sampler="cmaes")) is None
    nested = search_note(_cfg(tmp_path, num_samples=8, evaluation="nested", folds=3))
    assert "num_samples 8 in each outer fold" in nested


def test_the_sampler_gets_the_start_up_trials_the_note_rests_on(tmp_path: Path) -> None:
    search = make_search(_cfg(tmp_path, num_samples=8))[0]
    assert search.searcher._sampler._n_startup_trials == STARTUP_TRIALS["tpe"]


def test_announce_search_prints_the_note_and_tags_the_parent(tmp_path: Path, capsys) -> None:
    client = MlflowClient(fresh_store(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    parent = client.create_run(client.create_experiment("n")).info.run_id
    note = announce_search(client, parent, _cfg(tmp_path, num_samples=8))
    printed = capsys.readouterr().out.splitlines()  # the note, wrapped at 119 columns
    assert " ".join(line.strip() for line in printed) == f"note: {note}"
    assert len(printed) > 1 and max(map(len, printed)) <= 119
    assert client.get_run(parent).data.tags[Tags.SEARCH_NOTE] == note
    other = client.create_run(client.get_experiment_by_name("n").experiment_id).info.run_id
    assert announce_search(client, other, _cfg(tmp_path, num_samples=12)) is None
    assert capsys.readouterr().out == ""
    assert Tags.SEARCH_NOTE not in client.get_run(other).data.tags
