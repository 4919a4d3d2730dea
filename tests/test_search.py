"""The search the study runner builds is Optuna's seeded TPE, run by Ray Tune."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import ray
import yaml
from ray import tune

from study.search import make_search
from study.space import load_study

PLANTED = {"alpha": 0.73, "lam": 0.21}


def _objective(config: dict) -> None:
    tune.report({"val_auc": 1.0 - (config["alpha"] - PLANTED["alpha"]) ** 2
                 - (config["lam"] - PLANTED["lam"]) ** 2})


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


def test_seeded_tpe_proposes_the_same_first_configurations(local_ray, tmp_path: Path) -> None:
    a = _run(_space(tmp_path, "tpe", 7), 4, tmp_path / "a")
    b = _run(_space(tmp_path, "tpe", 7), 4, tmp_path / "b")
    c = _run(_space(tmp_path, "tpe", 8), 4, tmp_path / "c")
    key = lambda rows: sorted((r["alpha"], r["lam"]) for r in rows)  # noqa: E731
    assert key(a) == key(b)
    assert key(a) != key(c)


@pytest.mark.slow
def test_tpe_beats_random_search_on_a_planted_optimum(local_ray, tmp_path: Path) -> None:
    n = 30
    tpe = max(r["value"] for r in _run(_space(tmp_path, "tpe", 0), n, tmp_path / "tpe"))
    randoms = [max(r["value"] for r in _run(_space(tmp_path, "random", s), n, tmp_path / f"r{s}"))
               for s in range(3)]
    median = statistics.median(randoms)
    print(f"best after {n} trials: TPE {tpe:.5f}, random median {median:.5f} ({randoms})")
    assert tpe > median
