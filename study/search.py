"""The study file's sampler and scheduler as Ray Tune objects: Optuna through ``OptunaSearch``
(seeded) or Ray's grid, and ASHA or PBT over epochs (``training_iteration``). A variants study
is a grid over variant x seed (x grid-searched values). PBT draws its population with Ray's own
(seeded) random sampling or grid, as Ray refuses search algorithms under PBT, and perturbs the
searched values of running trials (study/checkpoint.py says which may change).

The search says what it is: Optuna's TPE (and CMA-ES) draw their first ``n_startup_trials``
configurations at random and only then model the results, so a study whose ``num_samples`` is at
or below that number runs a random search whatever its sampler is called; ``search_note`` says
so, in the terminal at study start and on the parent run (``ks.search_note``)."""

from __future__ import annotations

from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from study.quiet import say
from study.record import Tags, val_metric
from study.results import ITERATION
from study.space import ParamSpec, StudyConfig
from study.tracking import retry
from study.variants import VARIANT_KEY

STARTUP_TRIALS = {"tpe": 10, "cmaes": 1}
"""Trials an Optuna sampler draws at random before it models the results (``n_startup_trials``,
Optuna's defaults, passed explicitly so the note below rests on what the sampler was given)."""


def search_note(cfg: StudyConfig) -> str | None:
    """A line saying the search is random when ``num_samples`` is at or below the sampler's
    start-up trials (None otherwise, and for grid, PBT and random samplers, which say it
    themselves)."""
    startup = STARTUP_TRIALS.get(cfg.sampler)
    if startup is None or cfg.scheduler.type == "pbt" or cfg.num_samples > startup:
        return None
    where = " in each outer fold" if cfg.evaluation == "nested" else ""
    return (f"the search is random: num_samples {cfg.num_samples}{where} is at or below "
            f"sampler {cfg.sampler}'s {startup} start-up trials, which Optuna draws at random "
            f"before it models any result; raise num_samples above {startup} for a "
            f"{cfg.sampler} search")


def announce_search(client: Any, parent: str, cfg: StudyConfig) -> str | None:
    """Print ``search_note`` (one line, at study start) and tag the parent run with it."""
    note = search_note(cfg)
    if note is not None:
        say(f"note: {note}")
        retry(lambda: client.set_tag(parent, Tags.SEARCH_NOTE, note))
    return note


def make_search(cfg: StudyConfig) -> tuple[Any, dict[str, Any], int]:
    """(search_alg, param_space, num_samples) for the Tuner."""
    if cfg.sampler == "grid":
        space = {p.name: tune.grid_search(p.grid_values()) for p in cfg.search}
        if cfg.variants:  # each trial: one variant at one seed, paired with the reference
            space = {VARIANT_KEY: tune.grid_search(list(cfg.variants)),
                     "seed": tune.grid_search(list(cfg.seeds)), **space}
        return None, space, 1
    if cfg.scheduler.type == "pbt":  # sampler random (grid returned above)
        space = {p.name: _ray_domain(p) for p in cfg.search}
        return (BasicVariantGenerator(max_concurrent=cfg.max_concurrent,
                                      random_state=cfg.sampler_seed), space, cfg.num_samples)

    seed = cfg.sampler_seed
    sampler = {"tpe": lambda: optuna.samplers.TPESampler(
                   seed=seed, n_startup_trials=STARTUP_TRIALS["tpe"]),
               "random": lambda: optuna.samplers.RandomSampler(seed=seed),
               "cmaes": lambda: optuna.samplers.CmaEsSampler(
                   seed=seed, n_startup_trials=STARTUP_TRIALS["cmaes"])}[cfg.sampler]()
    search = OptunaSearch(space=cfg.optuna_space(), metric=val_metric(cfg.metric),
                          mode=cfg.mode, sampler=sampler)
    return ConcurrencyLimiter(search, max_concurrent=cfg.max_concurrent), {}, cfg.num_samples


def _ray_domain(p: ParamSpec) -> Any:
    """A searched parameter as a Ray Tune sampling domain (PBT's population and its
    resampling)."""
    if p.type == "float":
        return tune.uniform(p.low, p.high)
    if p.type == "loguniform":
        return tune.loguniform(p.low, p.high)
    if p.type == "int":
        return tune.randint(int(p.low), int(p.high) + 1)
    return tune.choice(list(p.values))


class ClipToSearch:
    """PBT's explore step multiplies values by 0.8 or 1.2 without looking at their range: keep
    every perturbed value inside its searched range (alpha = 1.2 x 0.9 is no configuration)."""

    def __init__(self, bounds: dict[str, tuple[float, float]]) -> None:
        self.bounds = bounds

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        for name, (low, high) in self.bounds.items():
            if name in config:
                config[name] = type(config[name])(min(max(config[name], low), high))
        return config


def make_scheduler(cfg: StudyConfig) -> Any:
    if cfg.scheduler.type == "none":
        return None
    if cfg.scheduler.type == "pbt":
        s = cfg.scheduler
        mutations = {p.name: list(p.values) if p.type == "categorical" else _ray_domain(p)
                     for p in cfg.search}
        return PopulationBasedTraining(
            time_attr=ITERATION, perturbation_interval=s.perturbation_interval,
            hyperparam_mutations=mutations, quantile_fraction=s.quantile_fraction,
            resample_probability=s.resample_probability,
            custom_explore_fn=ClipToSearch({p.name: (p.low, p.high) for p in cfg.search
                                            if p.type != "categorical"}))
    return ASHAScheduler(time_attr=ITERATION, max_t=cfg.epochs,
                         grace_period=min(cfg.scheduler.grace_period, cfg.epochs),
                         reduction_factor=cfg.scheduler.reduction_factor)


def make_tuner(trainable: Any, cfg: StudyConfig, search: tuple[Any, dict[str, Any], int],
               run_config: Any, *, resume: bool, retry_failed: bool) -> Any:
    """The study's Tuner: restored from ``run_config``'s folder on ``--resume`` (failed trials
    retried with ``--retry-failed``), else new with ``search`` (``make_search``'s result)."""
    search_alg, param_space, num_samples = search
    path = f"{run_config.storage_path.rstrip('/')}/{run_config.name}"
    if resume and tune.Tuner.can_restore(path):
        print(f"resuming {path}", flush=True)
        return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=retry_failed, restart_errored=retry_failed,
                                  param_space=param_space)
    return tune.Tuner(
        trainable, param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=val_metric(cfg.metric), mode=cfg.mode, num_samples=num_samples,
            search_alg=search_alg, scheduler=make_scheduler(cfg),
            # one Ray worker runs trial after trial (no process start per trial)
            reuse_actors=True,
            # Optuna's proposals are already limited by its ConcurrencyLimiter
            max_concurrent_trials=cfg.max_concurrent if search_alg is None else None),
        run_config=run_config)


__all__ = ["STARTUP_TRIALS", "ClipToSearch", "announce_search", "make_search", "make_scheduler",
           "make_tuner", "search_note"]
