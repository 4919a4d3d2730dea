"""Search-space YAML -> one validated, typed `StudyConfig` -> Optuna distributions / Ray grid.

A study file names the task, the folds and seeds every trial is evaluated on, the fixed model
and training parameters, the searched ones, the sampler and scheduler and the resources; or,
for an ablation table, named variants (overrides of the fixed parameters) and the reference
variant they are compared with (see ``study/variants.py``).
Everything is checked here, once, before Ray starts: an unknown key, a wrong type, an empty
or inverted range, or a parameter value the model would reject is a `SpaceError` naming the
file and the key. Paths in the file are relative to the file.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ksmodel.config import (
    ConfigError,
    ModelConfig,
    SyntheticConfig,
    TrainConfig,
    parameter_keys,
    split_params,
    to_dict,
)
from ksmodel.tasks import TASKS
from study.record import EVALUATIONS
from study.variants import SEARCH_DEFAULTS, STUDY_WIDE

if TYPE_CHECKING:
    import optuna

SAMPLERS = ("tpe", "random", "grid", "cmaes")
SCHEDULERS = ("asha", "pbt", "none")
FOLD_PARALLEL = ("lockstep", "tasks")
PBT_KEYS = ("perturbation_interval", "quantile_fraction", "resample_probability")
ASHA_KEYS = ("grace_period", "reduction_factor")
PARAM_TYPES = ("float", "loguniform", "int", "categorical")
DEFAULT_INNER_FOLDS = 3
OUTER_SAMPLER_SEEDS = ("per_fold", "same")  # nested: each outer fold's sampler seed (README)
DATA_KEYS = frozenset({"feature_dim", "n_tumour_genes", "n_tme_genes", "n_outputs", "task"})
TRIAL_KEYS = parameter_keys() - DATA_KEYS
"""Parameters a study may fix or search (data-derived sizes and the task are set elsewhere)."""


class SpaceError(ValueError):
    """A study file is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple[Any, ...] = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        import optuna  # here, not at import: `study.run --help` reads this module's keys

        if self.type == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high)
        if self.type == "loguniform":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=True)
        if self.type == "int":
            return optuna.distributions.IntDistribution(self.low, self.high)
        return optuna.distributions.CategoricalDistribution(self.values)

    def grid_values(self) -> list[Any]:
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1))
        raise ValueError(f"{self.name}: a {self.type} parameter has no grid")

    def extremes(self) -> list[Any]:
        """Values that must all be acceptable to the model (checked at load time)."""
        return list(self.values) if self.type == "categorical" else [self.low, self.high]


@dataclass(frozen=True)
class SchedulerSpec:
    type: str = "asha"
    grace_period: int = 2  # asha
    reduction_factor: int = 2  # asha
    perturbation_interval: int = 2  # pbt: epochs between exploit/explore steps
    quantile_fraction: float = 0.25  # pbt: bottom fraction that copies the top fraction
    resample_probability: float = 0.25  # pbt: chance a value is drawn afresh, not perturbed


@dataclass(frozen=True)
class StudyConfig:
    name: str
    task: str
    cohort: str  # 'synthetic' or an absolute path
    metric: str = ""
    mode: str = "max"
    folds: int = 5
    repeats: int = 1  # repeated cross-validation: r partitions (split seeds from split_seed)
    rope: float | None = None  # region of practical equivalence of the verdicts (None: default)
    split_seed: int = 0
    seeds: tuple[int, ...] = (0,)
    epochs: int = 10
    fixed: dict[str, Any] = field(default_factory=dict)
    search: tuple[ParamSpec, ...] = ()
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> overrides
    reference: str = ""  # the variant the others are compared with
    sampler: str = "tpe"
    sampler_seed: int = 0
    scheduler: SchedulerSpec = SchedulerSpec()
    num_samples: int = 8
    max_concurrent: int = 2
    max_failures: int = 1
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1.0, "gpu": 0.0})
    synthetic: SyntheticConfig = SyntheticConfig()
    evaluation: str = "cv"  # cv | nested (README, "Evaluation modes")
    inner_folds: int = DEFAULT_INNER_FOLDS  # nested: folds of each outer training part
    outer_sampler_seeds: str = "per_fold"  # nested: seed each outer fold's sampler apart | same
    baselines: tuple[str, ...] = ()  # reference models run on the study's folds
    checkpoint_every: int = 1  # epochs between mid-trial checkpoints; 0: none
    fold_parallel: str = "lockstep"  # lockstep | tasks (one Ray actor per fold)
    covariates: tuple[str, ...] = ()  # clinical columns of the clinical baselines
    source: str = ""  # the YAML file this came from

    @property
    def searched(self) -> list[str]:
        return [p.name for p in self.search]

    def optuna_space(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {p.name: p.distribution() for p in self.search}

    def grid_size(self) -> int:
        """Trials of a grid study: the searched values' product (x variants x seeds)."""
        size = len(self.variants) * len(self.seeds) if self.variants else 1
        for p in self.search:
            size *= len(p.grid_values())
        return size

    def to_yaml_dict(self) -> dict[str, Any]:
        """The effective config, in the file format (so it can be re-run as is)."""
        out = dataclasses.asdict(self)
        out.pop("source")
        out["seeds"] = list(self.seeds)
        if not self.seeds:  # seed is a fixed/searched parameter: a seeds list would be refused
            out.pop("seeds")
        out["search"] = {
            p.name: ({"type": p.type, "values": list(p.values)} if p.type == "categorical"
                     else {"type": p.type, "low": p.low, "high": p.high})
            for p in self.search}
        out["fixed"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.fixed.items()}
        if self.variants:
            out["variants"] = {name: {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in ov.items()}
                               for name, ov in self.variants.items()}
        else:
            out.pop("variants")
            out.pop("reference")
        if self.cohort != "synthetic":
            out.pop("synthetic")
        else:
            out["synthetic"] = to_dict(self.synthetic)
        out["baselines"], out["covariates"] = list(self.baselines), list(self.covariates)
        if self.evaluation != "nested":  # the keys are refused without nested evaluation
            out.pop("inner_folds")
            out.pop("outer_sampler_seeds")
        if self.rope is None:  # the analysis' default applies
            out.pop("rope")
        mine = ASHA_KEYS if self.scheduler.type == "pbt" else PBT_KEYS  # refused there
        out["scheduler"] = {k: v for k, v in out["scheduler"].items() if k not in mine}
        return out


_TOP_KEYS = {f.name for f in dataclasses.fields(StudyConfig)} - {"source"}
_NESTED = {"scheduler": SchedulerSpec, "synthetic": SyntheticConfig}
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_INT_KEYS = ("folds", "repeats", "split_seed", "epochs", "num_samples", "max_concurrent",
             "max_failures", "sampler_seed", "checkpoint_every")


def _err(where: str, key: str, msg: str) -> SpaceError:
    return SpaceError(f"{where}: key '{key}': {msg}")


def _typed(where: str, key: str, value: Any, kind: type | tuple[type, ...]) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    names = " or ".join(k.__name__ for k in kinds)
    if isinstance(value, bool) and bool not in kinds:
        raise _err(where, key, f"expected {names}, got a boolean")
    if not isinstance(value, kinds):
        raise _err(where, key, f"expected {names}, got {type(value).__name__} {value!r}")
    return value


def _param(where: str, name: str, spec: Any) -> ParamSpec:
    key = f"search.{name}"
    if name not in TRIAL_KEYS:
        raise _err(where, key, f"unknown parameter; searchable: {', '.join(sorted(TRIAL_KEYS))}")
    if not isinstance(spec, dict):
        raise _err(where, key, "expected a mapping like {type: float, low: 0, high: 1}")
    unknown = set(spec) - {"type", "low", "high", "values"}
    if unknown:
        raise _err(where, f"{key}.{sorted(unknown)[0]}",
                   "unknown key (use type, low, high, values)")
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise _err(where, f"{key}.type", f"must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    if kind == "categorical":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise _err(where, f"{key}.values", "a categorical parameter needs a non-empty list")
        if "low" in spec or "high" in spec:
            raise _err(where, key, "categorical takes values, not low/high")
        return ParamSpec(name, kind, values=tuple(values))
    for bound in ("low", "high"):
        if bound not in spec:
            raise _err(where, f"{key}.{bound}", f"a {kind} parameter needs low and high")
    num = int if kind == "int" else float
    low = _typed(where, f"{key}.low", spec["low"], num)
    high = _typed(where, f"{key}.high", spec["high"], num)
    if not low < high:
        raise _err(where, key, f"empty or inverted range: low={low} must be < high={high}")
    if kind == "loguniform" and low <= 0:
        raise _err(where, f"{key}.low", f"loguniform needs low > 0, got {low}")
    return ParamSpec(name, kind, low=low, high=high)


def _check_values(where: str, task: str, params: dict[str, Any], key: str) -> None:
    """Build the model/training configs once so out-of-range values fail here, not in a trial."""
    try:
        model_kw, train_kw = split_params(params)
        ModelConfig(**model_kw)
        TrainConfig(task=task, **train_kw)
    except (ConfigError, TypeError) as exc:
        raise _err(where, key, str(exc)) from None


def _check_top_level(raw: Any, where: str) -> None:
    """A mapping of known keys that names the study and its task."""
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _err(where, sorted(unknown)[0],
                   f"unknown key; allowed: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("name", "task"):
        if key not in raw:
            raise _err(where, key, "required")


def _parse_identity(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """name (usable as a folder and experiment name), task, and the task's metric and mode."""
    name = _typed(where, "name", raw["name"], str)
    if not name or any(c in name for c in "/\\ "):
        raise _err(where, "name", "must be a non-empty name without slashes or spaces")
    task = raw["task"]
    if task not in TASKS:
        raise _err(where, "task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    metric = raw.get("metric", TASKS[task].metric)
    if metric != TASKS[task].metric:
        raise _err(where, "metric", f"task {task} is selected on {TASKS[task].metric!r}, "
                                    f"got {metric!r}")
    mode = raw.get("mode", "max")
    if mode != "max":
        raise _err(where, "mode", f"{metric} is maximised; mode must be max")
    return {"name": name, "task": task, "metric": metric, "mode": mode}


def _parse_counts(raw: dict[str, Any], where: str) -> dict[str, int]:
    """Integer keys and their lower bounds (folds >= 2; epochs, trials, concurrency >= 1)."""
    kw = {key: _typed(where, key, raw[key], int) for key in _INT_KEYS if key in raw}
    if kw.get("folds", 5) < 2:
        raise _err(where, "folds", "needs at least 2 folds")
    if kw.get("repeats", 1) < 1:
        raise _err(where, "repeats", "must be >= 1 (1: plain k-fold cross-validation)")
    for key in ("epochs", "num_samples", "max_concurrent"):
        if kw.get(key, 1) < 1:
            raise _err(where, key, "must be >= 1")
    if kw.get("max_failures", 0) < 0:
        raise _err(where, "max_failures", "must be >= 0")
    if kw.get("checkpoint_every", 0) < 0:
        raise _err(where, "checkpoint_every", "must be >= 0 (0: no mid-trial checkpoints)")
    return kw


def _parse_seeds(raw: dict[str, Any], where: str) -> dict[str, tuple[int, ...]]:
    """The training seeds every trial runs (absent: the default)."""
    if "seeds" not in raw:
        return {}
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise _err(where, "seeds", f"expected a non-empty list of integers, got {seeds!r}")
    return {"seeds": tuple(seeds)}


def _parse_rope(raw: dict[str, Any], where: str) -> dict[str, float]:
    """rope: half-width of the region of practical equivalence, in metric units (absent: the
    analysis' default for the metric)."""
    if raw.get("rope") is None:
        return {}
    rope = _typed(where, "rope", raw["rope"], float)
    if not 0 < rope < 1:
        raise _err(where, "rope", f"must be in (0, 1) (a difference in AUC / C-index that "
                                  f"counts as no difference, e.g. 0.01), got {rope}")
    return {"rope": rope}


def _parse_cohort(raw: dict[str, Any], where: str, base_dir: Path) -> str:
    """'synthetic', or a folder resolved against the study file's folder."""
    cohort = _typed(where, "cohort", raw.get("cohort", "synthetic"), str)
    return cohort if cohort == "synthetic" else str((base_dir / cohort).resolve())


def _parse_sampler(raw: dict[str, Any], where: str) -> str:
    sampler = raw.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        raise _err(where, "sampler", f"must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return sampler


def _parse_nested(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """scheduler and synthetic: mappings of known sub-keys typed like their defaults
    (``scheduler: asha`` is short for ``scheduler: {type: asha}``)."""
    kw: dict[str, Any] = {}
    for key, spec_cls in _NESTED.items():
        if key not in raw:
            continue
        value = raw[key]
        if key == "scheduler" and isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict):
            raise _err(where, key, "expected a mapping")
        allowed = {f.name: f for f in dataclasses.fields(spec_cls)}
        typed = {}
        for sub, v in value.items():
            if sub not in allowed:
                raise _err(where, f"{key}.{sub}", f"unknown key; allowed: {', '.join(allowed)}")
            want = type(getattr(spec_cls(), sub))
            if (key, sub, v) == ("synthetic", "scenario", None):  # YAML reads `null` as None
                v = "null"
            # tuples (synthetic.patches: N or [min, max]) are checked by the config itself
            typed[sub] = v if want is tuple else _typed(where, f"{key}.{sub}", v, want)
        try:
            kw[key] = spec_cls(**typed)
        except ConfigError as exc:
            raise _err(where, key, str(exc)) from None
    return kw


def _check_scheduler(sched: SchedulerSpec, where: str, raw: dict[str, Any]) -> None:
    if sched.type not in SCHEDULERS:
        raise _err(where, "scheduler.type", f"must be one of {', '.join(SCHEDULERS)}, "
                                            f"got {sched.type!r}")
    if sched.grace_period < 1 or sched.reduction_factor < 2:
        raise _err(where, "scheduler", "grace_period must be >= 1 and reduction_factor >= 2")
    given = raw.get("scheduler") if isinstance(raw.get("scheduler"), dict) else {}
    if sched.type != "pbt":
        for key in PBT_KEYS:
            if key in given:
                raise _err(where, f"scheduler.{key}", "is a key of scheduler type pbt")
        return
    for key in ASHA_KEYS:
        if key in given:
            raise _err(where, f"scheduler.{key}", "is a key of scheduler type asha")
    if sched.perturbation_interval < 1:
        raise _err(where, "scheduler.perturbation_interval", "must be >= 1 (epochs)")
    if not 0 < sched.quantile_fraction <= 0.5:
        raise _err(where, "scheduler.quantile_fraction", "must be in (0, 0.5]")
    if not 0 <= sched.resample_probability <= 1:
        raise _err(where, "scheduler.resample_probability", "must be in [0, 1]")


def _parse_runtime(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """fold_parallel: where a trial's folds train (lock-step in the trial, or one Ray actor
    per fold)."""
    mode = raw.get("fold_parallel", "lockstep")
    if mode not in FOLD_PARALLEL:
        raise _err(where, "fold_parallel", f"must be one of {', '.join(FOLD_PARALLEL)}, "
                                           f"got {mode!r}")
    return {"fold_parallel": mode}


def _check_pbt(where: str, kw: dict[str, Any]) -> None:
    """PBT changes searched values inside running trials, continuing from checkpoints: only
    the optimiser and loss weights may change, checkpoints must fall on its perturbation
    epochs, and its population comes from Ray's own sampling (random or grid)."""
    from study.checkpoint import PBT_MUTABLE

    sched = kw["scheduler"]
    if kw["sampler"] not in ("random", "grid"):
        raise _err(where, "sampler", "scheduler pbt takes its population from Ray's sampling: "
                                     "use sampler: random (or grid); an Optuna sampler cannot "
                                     "follow trials whose values PBT changes")
    if not kw["search"]:
        raise _err(where, "search", "scheduler pbt needs searched parameters to perturb "
                                    f"(any of {', '.join(PBT_MUTABLE)})")
    for p in kw["search"]:
        if p.name not in PBT_MUTABLE:
            raise _err(where, f"search.{p.name}", f"PBT changes searched values under trained "
                                                  f"weights; only {', '.join(PBT_MUTABLE)} may "
                                                  "change (fix the others)")
    every = kw.get("checkpoint_every", 1)
    if every < 1 or sched.perturbation_interval % every:
        raise _err(where, "checkpoint_every", f"scheduler pbt continues trials from the "
                                              f"checkpoints of others every "
                                              f"{sched.perturbation_interval} epochs: "
                                              "checkpoint_every must divide "
                                              "scheduler.perturbation_interval")
    if sched.perturbation_interval >= kw.get("epochs", 10):
        raise _err(where, "scheduler.perturbation_interval", "must be < epochs (or PBT never "
                                                              "perturbs)")
    if kw["evaluation"] == "nested":
        raise _err(where, "scheduler", "scheduler pbt is for cv evaluation (nested evaluation "
                                       "refits the chosen configuration from scratch)")


def _parse_resources(raw: dict[str, Any], where: str) -> dict[str, float]:
    """Per-trial cpu (> 0) and gpu (>= 0; a fraction shares one GPU, above 1 whole GPUs)."""
    resources = raw.get("resources", {})
    if not isinstance(resources, dict):
        raise _err(where, "resources", "expected a mapping like {cpu: 1, gpu: 0.25}")
    for key in resources:
        if key not in ("cpu", "gpu"):
            raise _err(where, f"resources.{key}", "unknown resource; use cpu and gpu")
    res = {k: _typed(where, f"resources.{k}", resources.get(k, d), float)
           for k, d in (("cpu", 1.0), ("gpu", 0.0))}
    if res["cpu"] <= 0 or res["gpu"] < 0:
        raise _err(where, "resources", f"cpu must be > 0 and gpu >= 0, got {res}")
    if res["gpu"] > 1 and res["gpu"] != int(res["gpu"]):
        raise _err(where, "resources.gpu",
                   "fractions are for sharing one GPU: use <= 1 or a whole number")
    return res


def _parse_params(raw: dict[str, Any], where: str) -> tuple[dict[str, Any],
                                                            tuple[ParamSpec, ...]]:
    """fixed (parameter: value) and search (parameter: spec): known names, each in one place."""
    fixed = raw.get("fixed", {}) or {}
    if not isinstance(fixed, dict):
        raise _err(where, "fixed", "expected a mapping of parameter: value")
    for name in fixed:
        if name not in TRIAL_KEYS:
            raise _err(where, f"fixed.{name}", f"unknown parameter; allowed: "
                                               f"{', '.join(sorted(TRIAL_KEYS))}")
    search = raw.get("search", {}) or {}
    if not isinstance(search, dict):
        raise _err(where, "search", "expected a mapping of parameter: {type, ...}")
    params = tuple(_param(where, name, spec) for name, spec in search.items())
    for p in params:
        if p.name in fixed:
            raise _err(where, f"search.{p.name}", "is also in fixed; keep it in one place")
    return dict(fixed), params


def _seed_is_a_parameter(raw: dict[str, Any], where: str, fixed: dict[str, Any],
                         params: tuple[ParamSpec, ...]) -> bool:
    """A fixed or searched ``seed`` replaces the seeds list (which must then be absent)."""
    if "seed" not in fixed and not any(p.name == "seed" for p in params):
        return False
    if "seeds" in raw:
        # --- researcher's view (issue 15): say how to change the seeds
        where_seed = "search" if any(p.name == "seed" for p in params) else "fixed"
        how = ("change its values there, e.g. --set 'search.seed={type: categorical, values: "
               "[0, 1]}'" if where_seed == "search" else "change it there, e.g. --set seed=1")
        raise _err(where, "seeds", f"this study sets seed in {where_seed} (each seed is a trial "
                                   f"of its own), so a seeds list is refused. To change the "
                                   f"seeds, {how}; or drop seed from {where_seed} and give "
                                   "seeds: [0, 1, 2] (each trial then averages over them). "
                                   "See docs/study-files.md, 'Seeds'")
        # ---
    return True


def _check_param_values(where: str, task: str, fixed: dict[str, Any],
                        params: tuple[ParamSpec, ...]) -> None:
    """The model accepts the fixed values, and each searched range at both ends."""
    _check_values(where, task, dict(fixed), "fixed")
    for p in params:
        for value in p.extremes():
            _check_values(where, task, {**fixed, p.name: value}, f"search.{p.name}")


def _check_sampler_compat(where: str, sampler: str, params: tuple[ParamSpec, ...]) -> None:
    """grid enumerates categorical/int values; Optuna samplers need something to search."""
    if sampler == "grid":
        for p in params:
            if p.type not in ("categorical", "int"):
                raise _err(where, f"search.{p.name}", "sampler grid takes categorical or int "
                                                      "parameters only")
    elif not params:
        raise _err(where, "search", f"sampler {sampler} needs at least one searched parameter "
                                    "(or use sampler: grid)")
    if sampler == "cmaes" and any(p.type == "categorical" for p in params):
        raise _err(where, "sampler", "cmaes cannot sample categorical parameters; use tpe")


def _parse_evaluation(raw: dict[str, Any], where: str, task: str) -> dict[str, Any]:
    """evaluation (cv | nested) with its inner_folds, the baselines run on the study's folds and
    the clinical covariates they use (checked against the cohort's columns once it is read).
    Without ``baselines``: every baseline of the task's kind that has its inputs (the clinical
    ones need ``covariates``)."""
    evaluation = raw.get("evaluation", "cv")
    if evaluation not in EVALUATIONS:
        raise _err(where, "evaluation", f"must be one of {', '.join(EVALUATIONS)}, "
                                        f"got {evaluation!r}")
    kw: dict[str, Any] = {"evaluation": evaluation}
    if "inner_folds" in raw:
        if evaluation != "nested":
            raise _err(where, "inner_folds", "is only used with evaluation: nested")
        kw["inner_folds"] = _typed(where, "inner_folds", raw["inner_folds"], int)
        if kw["inner_folds"] < 2:
            raise _err(where, "inner_folds", "needs at least 2 inner folds")
    if "outer_sampler_seeds" in raw:
        if evaluation != "nested":
            raise _err(where, "outer_sampler_seeds", "is only used with evaluation: nested")
        if raw["outer_sampler_seeds"] not in OUTER_SAMPLER_SEEDS:
            raise _err(where, "outer_sampler_seeds", f"must be one of "
                                                     f"{', '.join(OUTER_SAMPLER_SEEDS)}, got "
                                                     f"{raw['outer_sampler_seeds']!r}")
        kw["outer_sampler_seeds"] = raw["outer_sampler_seeds"]
    covariates = raw.get("covariates", []) or []
    if not isinstance(covariates, list) or not all(isinstance(c, str) and c.strip()
                                                   for c in covariates):
        raise _err(where, "covariates", f"expected a list of clinical column names, "
                                        f"got {covariates!r}")
    dup = sorted({c for c in covariates if covariates.count(c) > 1})
    if dup:
        raise _err(where, "covariates", f"{', '.join(dup)} listed more than once")
    kw["covariates"] = tuple(covariates)
    from ksmodel.baselines import BASELINES, baselines_for  # lifelines/sklearn: not for --help

    kind = TASKS[task].kind
    if "baselines" not in raw:
        kw["baselines"] = tuple(b for b in baselines_for(kind)
                                if covariates or not BASELINES[b].needs_covariates)
        return kw
    names = raw["baselines"] or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _err(where, "baselines", f"expected a list of baseline names, got {names!r}")
    for name in names:
        if name not in BASELINES:
            raise _err(where, "baselines", f"unknown baseline {name!r}; choose from "
                                           f"{', '.join(BASELINES)}")
        if BASELINES[name].kind != kind:
            raise _err(where, "baselines", f"{name} is a {BASELINES[name].kind} baseline but "
                                           f"task {task} is {kind}; use "
                                           f"{', '.join(baselines_for(kind))}")
        if BASELINES[name].needs_covariates and not covariates:
            raise _err(where, "covariates", f"baseline {name} needs clinical covariates, e.g. "
                                            f"covariates: [age, is_female]")
    if len(set(names)) < len(names):
        raise _err(where, "baselines", "a baseline is listed more than once")
    kw["baselines"] = tuple(names)
    return kw


def _effective(task: str, params: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    model_kw, train_kw = split_params(params)
    return ModelConfig(**model_kw), TrainConfig(task=task, **train_kw)


def _parse_variant(where: str, task: str, name: Any, overrides: Any, fixed: dict[str, Any],
                   params: tuple[ParamSpec, ...]) -> dict[str, Any]:
    """One variant's overrides: known, variant-level parameters the model accepts on top of
    ``fixed`` (and with every searched value)."""
    key = f"variants.{name}"
    if not isinstance(name, str) or not _VARIANT_NAME.match(name):
        raise _err(where, key, "a variant name is letters, digits, '_', '-' or '.' (it labels "
                               "the variant in MLflow and in the report)")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise _err(where, key, "expected a mapping of parameter: value ({} for none, as the "
                               "reference usually is)")
    searched = {p.name for p in params}
    for param, value in overrides.items():
        pkey = f"{key}.{param}"
        if param in STUDY_WIDE:
            raise _err(where, pkey, f"a variant cannot set it: {STUDY_WIDE[param]}")
        if param not in TRIAL_KEYS:
            raise _err(where, pkey, f"unknown parameter; allowed: {', '.join(sorted(TRIAL_KEYS))}")
        if param in searched:
            raise _err(where, pkey, "is searched; the searched values are crossed with every "
                                    "variant, so a variant cannot also set it")
        _check_values(where, task, {**fixed, param: value}, pkey)
    _check_values(where, task, {**fixed, **overrides}, key)
    for p in params:
        for value in p.extremes():
            _check_values(where, task, {**fixed, **overrides, p.name: value}, key)
    return dict(overrides)


def _parse_variants(raw: dict[str, Any], where: str, task: str, fixed: dict[str, Any],
                    params: tuple[ParamSpec, ...]) -> dict[str, Any]:
    """variants (name -> overrides of ``fixed``) and the reference variant; distinct variants
    (two that train the same model would make a claim out of nothing)."""
    if "variants" not in raw:
        if "reference" in raw:
            raise _err(where, "reference", "names the reference variant, but the file has no "
                                           "'variants' mapping")
        return {}
    raw_variants = raw["variants"]
    if not isinstance(raw_variants, dict) or len(raw_variants) < 2:
        raise _err(where, "variants", "expected a mapping of at least two variants, name: "
                                      "{parameter: value} (the reference and what it is "
                                      "compared with)")
    variants: dict[str, dict[str, Any]] = {}
    seen: list[tuple[tuple[ModelConfig, TrainConfig], str]] = []
    for name, overrides in raw_variants.items():
        variants[name] = _parse_variant(where, task, name, overrides, fixed, params)
        effective = _effective(task, {**fixed, **variants[name]})
        twin = next((other for eff, other in seen if eff == effective), None)
        if twin is not None:
            raise _err(where, f"variants.{name}", f"trains exactly what variant '{twin}' trains "
                                                  "(same effective parameters); change or drop "
                                                  "one of them")
        seen.append((effective, name))
    if "reference" not in raw:
        raise _err(where, "reference", "required with variants: the variant every other one is "
                                       f"compared with (one of {', '.join(variants)})")
    reference = raw["reference"]
    if reference not in variants:
        raise _err(where, "reference", f"must be one of the variants ({', '.join(variants)}), "
                                       f"got {reference!r}")
    return {"variants": variants, "reference": reference}


def _variant_study_search(raw: dict[str, Any], where: str, kw: dict[str, Any]) -> None:
    """A variants study is the grid variant x seed (x grid-searched values) at the full budget:
    the variants must pair with the reference on identical (seed, fold) keys."""
    for section in ("fixed", "search"):
        if "seed" in (raw.get(section) or {}):
            raise _err(where, f"{section}.seed", "a variants study crosses every variant with "
                                                 "the top-level seeds list; use seeds: [0, 1, 2]")
    if "sampler" not in raw:
        kw["sampler"] = SEARCH_DEFAULTS["sampler"]
    elif kw["sampler"] != "grid":
        raise _err(where, "sampler", "a variants study runs every (variant, seed) once so the "
                                     "variants pair with the reference by (seed, fold); an "
                                     "Optuna sampler would tune each variant on the folds it is "
                                     "scored on. Use sampler: grid (the default with variants); "
                                     "grid-searched parameters are crossed with the variants")
    if "scheduler" not in raw:
        kw["scheduler"] = SchedulerSpec(type=SEARCH_DEFAULTS["scheduler"])
    elif kw["scheduler"].type != "none":
        raise _err(where, "scheduler", "variants are compared at the same budget: ASHA would "
                                       "stop some variants early and leave them without values "
                                       "to pair with the reference. Use scheduler: none (the "
                                       "default with variants)")


def parse_study(raw: Any, where: str, base_dir: Path) -> StudyConfig:
    """Validate a study mapping (as loaded from YAML) into a `StudyConfig`.

    Each step checks one group of keys; the first failure is a `SpaceError` naming ``where``
    and the key.
    """
    _check_top_level(raw, where)
    kw: dict[str, Any] = _parse_identity(raw, where)
    kw.update(_parse_counts(raw, where))
    kw.update(_parse_seeds(raw, where))
    kw.update(_parse_rope(raw, where))
    kw["cohort"] = _parse_cohort(raw, where, base_dir)
    kw["sampler"] = _parse_sampler(raw, where)
    kw.update(_parse_nested(raw, where))
    _check_scheduler(kw.get("scheduler", SchedulerSpec()), where, raw)
    kw.update(_parse_runtime(raw, where))
    kw["resources"] = _parse_resources(raw, where)
    kw["fixed"], kw["search"] = _parse_params(raw, where)
    if "variants" not in raw and _seed_is_a_parameter(raw, where, kw["fixed"], kw["search"]):
        kw["seeds"] = ()
    _check_param_values(where, kw["task"], kw["fixed"], kw["search"])
    kw.update(_parse_variants(raw, where, kw["task"], kw["fixed"], kw["search"]))
    if kw.get("variants"):
        _variant_study_search(raw, where, kw)
    _check_sampler_compat(where, kw["sampler"], kw["search"])
    kw.update(_parse_evaluation(raw, where, kw["task"]))
    if kw.get("variants") and kw["evaluation"] == "nested":
        raise _err(where, "evaluation", "a variants study scores every variant on every fold "
                                        "already (nothing is chosen, so nothing is optimistic); "
                                        "nested evaluation is for searches - drop it")
    if kw.get("scheduler", SchedulerSpec()).type == "pbt":
        _check_pbt(where, kw)
    if kw.get("repeats", 1) > 1 and kw["evaluation"] == "nested":
        raise _err(where, "repeats", "nested evaluation runs one search per outer fold of one "
                                     "partition; repeated outer partitions are not supported: "
                                     "use repeats: 1 (and seeds for repeated training)")
    if kw["fold_parallel"] == "tasks" and kw["evaluation"] == "nested":
        raise _err(where, "fold_parallel", "nested evaluation trains its folds in lock-step; "
                                           "fold_parallel: tasks is for cv evaluation")
    return StudyConfig(**kw, source=where)


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Read, override and validate a study file. Overrides use top-level keys, dotted keys
    (`scheduler.grace_period`), or bare model/training parameters (which go to `fixed`)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"{path}: no such study file (see search_spaces/ for examples)")
    from study.strict_yaml import StrictYamlError, check_finite, load_yaml

    try:
        raw = load_yaml(path.read_text(), str(path))  # a key twice, or .inf/.nan: refused
        check_finite(raw, str(path))
        for key, value in (overrides or {}).items():
            check_finite(value, "--set", key)
    except StrictYamlError as exc:
        raise SpaceError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise SpaceError(f"{path}: not valid YAML: {exc}") from None
    raw = apply_overrides(raw if isinstance(raw, dict) else {}, overrides or {}) if \
        isinstance(raw, dict) else raw
    return parse_study(raw, str(path), path.resolve().parent)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key, value in overrides.items():
        head, _, tail = key.partition(".")
        if tail:
            section = out.setdefault(head, {})
            if not isinstance(section, dict):
                raise SpaceError(f"--set {key}: '{head}' is not a mapping in the study file")
            section[tail] = value
        elif key in _TOP_KEYS:
            out[key] = value
        elif key in TRIAL_KEYS:
            out.setdefault("fixed", {})
            out["fixed"] = {**(out["fixed"] or {}), key: value}
            if isinstance(out.get("search"), dict):
                out["search"] = {k: v for k, v in out["search"].items() if k != key}
        else:
            raise SpaceError(f"--set {key}: unknown key; use a study key "
                             f"({', '.join(sorted(_TOP_KEYS))}) or a parameter name")
    return out


def dump_study(cfg: StudyConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False))
