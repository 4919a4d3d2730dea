"""The study file's sampler and scheduler as Ray Tune objects: Optuna through ``OptunaSearch``
(seeded) or Ray's grid, and ASHA over epochs (``training_iteration``). A variants study is a
grid over variant x seed (x grid-searched values)."""

from __future__ import annotations

from typing import Any

from study.record import val_metric
from study.space import StudyConfig
from study.variants import VARIANT_KEY


def make_search(cfg: StudyConfig) -> tuple[Any, dict[str, Any], int]:
    """(search_alg, param_space, num_samples) for the Tuner."""
    from ray import tune

    if cfg.sampler == "grid":
        space = {p.name: tune.grid_search(p.grid_values()) for p in cfg.search}
        if cfg.variants:  # each trial: one variant at one seed, paired with the reference
            space = {VARIANT_KEY: tune.grid_search(list(cfg.variants)),
                     "seed": tune.grid_search(list(cfg.seeds)), **space}
        return None, space, 1
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    seed = cfg.sampler_seed
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "cmaes": lambda: optuna.samplers.CmaEsSampler(seed=seed)}[cfg.sampler]()
    search = OptunaSearch(space=cfg.optuna_space(), metric=val_metric(cfg.metric),
                          mode=cfg.mode, sampler=sampler)
    return ConcurrencyLimiter(search, max_concurrent=cfg.max_concurrent), {}, cfg.num_samples


def make_scheduler(cfg: StudyConfig) -> Any:
    if cfg.scheduler.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs,
                         grace_period=min(cfg.scheduler.grace_period, cfg.epochs),
                         reduction_factor=cfg.scheduler.reduction_factor)


__all__ = ["make_search", "make_scheduler"]
