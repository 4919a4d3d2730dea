"""Typed configuration: the model, one fold's training, the synthetic cohort.

Every knob lives here, validated once in ``__post_init__``; the rest of the code reads plain
attributes and never re-checks. ``ConfigError`` names the offending key so a study file or a
``--set key=value`` override can be fixed without reading code. Tasks live in ``ksmodel.tasks``
and coordination rules (with their own hyper-parameters) in ``ksmodel.coordination``; both are
read from their registries here. No torch import: study files are checked without it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import yaml

from ksmodel.coordination.registry import (
    CLASSIFIER_ROWS,
    COORD_TARGETS,
    SHARED_TRUNK,
    effective_params,
    get_rule,
    hyper_params,
)
from ksmodel.errors import ConfigError
from ksmodel.tasks import DEFAULT_TASK, get_task

MODALITIES = ("both", "genomics", "histology")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


def check_grid(grid: Any) -> tuple[int, int]:
    """The token grid (H, W) as a tuple of two integers >= 1."""
    ok = (isinstance(grid, (list, tuple)) and len(grid) == 2
          and all(isinstance(g, int) and not isinstance(g, bool) and g >= 1 for g in grid))
    _check(ok, "grid", f"must be two integers >= 1, got {grid!r}")
    return int(grid[0]), int(grid[1])


@dataclass(frozen=True)
class ModelConfig:
    """KS-Fusion architecture. Defaults are CPU-sized; `paper()` gives the original study's."""

    feature_dim: int = 384  # D of the patch embeddings (taken from the cohort)
    n_tumour_genes: int = 59
    n_tme_genes: int = 361
    n_outputs: int = 4  # classes, or hazard bins for survival (set from the task)
    dim: int = 128  # d
    gene_hidden: int = 256
    gene_blocks: int = 2
    dropout: float = 0.25
    grid: tuple[int, int] = (16, 16)  # token grid (H, W); bags are brought to H*W tokens
    heads: int = 4
    head_dim: int = 32
    offset_groups: int = 4
    downsample: int = 4  # r: reference grid is floor(H/r) x floor(W/r), at least 1 x 1
    offset_kernel: int = 6
    offset_scale: float = 4.0
    rpb_hidden: int = 32  # relative-position-bias MLP width
    rpb_depth: int = 2
    decompose: bool = True  # False: one gene encoder on all genes, one stream, no coordination
    teacher: bool = True  # False: attention queries from histology only
    modality: str = "both"  # both | genomics | histology
    # True: one patch projection P (Linear D -> d + ReLU) read by both streams, so that the two
    # subspaces' gradients meet on the same parameters (coord_target: shared_trunk)
    shared_projection: bool = False

    def __post_init__(self) -> None:
        for key in ("feature_dim", "n_tumour_genes", "n_tme_genes", "n_outputs", "dim",
                    "gene_hidden", "gene_blocks", "heads", "head_dim", "offset_groups",
                    "downsample", "offset_kernel", "rpb_hidden", "rpb_depth"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 1, key,
                   f"must be an integer >= 1, got {value!r}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.offset_scale > 0, "offset_scale", f"must be > 0, got {self.offset_scale}")
        object.__setattr__(self, "grid", check_grid(self.grid))
        _check(self.dim % self.offset_groups == 0, "offset_groups",
               f"dim={self.dim} must be divisible by offset_groups={self.offset_groups}")
        _check(self.heads % self.offset_groups == 0 or self.offset_groups % self.heads == 0,
               "offset_groups", "heads and offset_groups must divide one another")
        _check(self.modality in MODALITIES, "modality",
               f"must be one of {', '.join(MODALITIES)}, got {self.modality!r}")
        _check(isinstance(self.shared_projection, bool), "shared_projection",
               f"must be true or false, got {self.shared_projection!r}")
        _check(not self.shared_projection or (self.decompose and self.modality != "genomics"),
               "shared_projection", "a patch projection shared by the two subspace streams needs "
               "decompose: true and histology (modality both or histology)")

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @classmethod
    def paper(cls, **overrides: Any) -> ModelConfig:
        """The original study's configuration (2,500 ResNet-50 patches on a 50x50 grid)."""
        base = dict(feature_dim=1024, grid=(50, 50), heads=8, head_dim=64, offset_groups=8,
                    downsample=4, offset_kernel=6, offset_scale=4.0, rpb_hidden=32, rpb_depth=2)
        return cls(**{**base, **overrides})


@dataclass(frozen=True)
class TrainConfig:
    """One fold's optimisation, loss weights and gradient coordination.

    ``coord_params`` holds the coordination rule's own hyper-parameters (declared in the rule
    registry); after validation it holds every one the rule uses, defaults included.
    """

    task: str = DEFAULT_TASK
    epochs: int = 20
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    alpha: float = 0.5  # tumour vs TME balance of the consistency loss
    lam: float = 0.1  # consistency weight lambda (0 disables it)
    coordination: str = "cgcoord"
    coord_params: Mapping[str, float] = field(default_factory=dict)
    coord_target: str = CLASSIFIER_ROWS  # where coordination acts (COORD_TARGETS)
    patience: int = 0  # early-stopping patience in epochs (0 = no early stopping)
    seed: int = 0
    log1p: bool = True  # log1p expression before the z-score (off for already-logged data)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model

    def __post_init__(self) -> None:
        get_task(self.task)
        get_rule(self.coordination)
        _check(self.coord_target in COORD_TARGETS, "coord_target",
               f"must be one of {', '.join(COORD_TARGETS)}, got {self.coord_target!r}")
        object.__setattr__(self, "coord_params",
                           effective_params(self.coordination, dict(self.coord_params)))
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 1, key,
                   f"must be an integer >= 1, got {value!r}")
        _check(isinstance(self.patience, int) and self.patience >= 0, "patience", "must be >= 0")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.lam >= 0, "lam", f"must be >= 0, got {self.lam}")
        _check(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")

    @property
    def metric(self) -> str:
        return get_task(self.task).metric


MODEL_KEYS = frozenset(f.name for f in fields(ModelConfig))
TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig)) - {"coord_params"}


def coordination_keys() -> frozenset[str]:
    """The coordination rules' hyper-parameter names (flat keys in study files and --set)."""
    return frozenset(hyper_params())


def parameter_keys() -> frozenset[str]:
    """Every flat parameter name a trial accepts: model, training and coordination keys."""
    return MODEL_KEYS | TRAIN_KEYS | coordination_keys()


def _check_target(target: Any, shared_projection: Any) -> None:
    _check(target != SHARED_TRUNK or shared_projection is True, "coord_target",
           "shared_trunk coordinates the patch projection both subspace streams share: set "
           "shared_projection: true as well (README, 'Gradient coordination')")


def check_target(model: ModelConfig, train: TrainConfig) -> None:
    """The one rule joining the two configs: ``coord_target: shared_trunk`` needs the shared
    patch projection (there is nothing shared to coordinate on otherwise)."""
    _check_target(train.coord_target, model.shared_projection)


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat parameter dict (as a study trial sees it) into ModelConfig and TrainConfig
    keyword arguments (coordination hyper-parameters go to ``coord_params``). A shared_trunk
    target without the shared projection is refused here, where both halves are still in view
    (study files are checked through this function)."""
    coord = coordination_keys()
    unknown = set(params) - MODEL_KEYS - TRAIN_KEYS - coord
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(sorted(unknown))}; model keys: "
            f"{', '.join(sorted(MODEL_KEYS))}; training keys: {', '.join(sorted(TRAIN_KEYS))}; "
            f"coordination keys: {', '.join(sorted(coord))}")
    model = {k: v for k, v in params.items() if k in MODEL_KEYS}
    train = {k: v for k, v in params.items() if k in TRAIN_KEYS}
    coord_params = {k: v for k, v in params.items() if k in coord}
    if coord_params:
        train["coord_params"] = coord_params
    if "grid" in model:
        model["grid"] = tuple(model["grid"])
    _check_target(train.get("coord_target"), model.get("shared_projection", False))
    return model, train


def to_dict(cfg: ModelConfig | TrainConfig | SyntheticConfig) -> dict[str, Any]:
    """Flat plain-data view (tuples as lists, coordination parameters as top-level keys) for
    YAML/JSON/MLflow: the keys are the ones study files and ``--set`` use."""
    out: dict[str, Any] = {}
    for k, v in asdict(cfg).items():
        if k == "coord_params":
            out.update(v)
        else:
            out[k] = list(v) if isinstance(v, tuple) else v
    return out


SCENARIOS = ("histology_needed", "null", "imbalance")
"""Named worlds of the synthetic generator (``ksmodel.synthetic.WORLDS``, README "Synthetic
scenarios"); each writes its planted truth into cohort.json. The first is the default."""


@dataclass(frozen=True)
class SyntheticConfig:
    """The synthetic cohort's parameters. These defaults are *the* synthetic default: study files
    (``cohort: synthetic``), ``python -m ksmodel.train`` and ``python -m ksmodel.synthetic`` all
    start from them, so they train on the same data unless told otherwise."""

    scenario: str = SCENARIOS[0]  # which world is planted (SCENARIOS)
    patients: int = 400
    patches: tuple[int, int] = (100, 400)  # (min, max) patches per patient; int N -> mean N
    dim: int = 384
    seed: int = 0
    conflict: float = 0.0  # strength of the planted histology conflict (ksmodel.synthetic)
    tme_shift: float = 0.3  # fraction of patients whose TME latent belongs to another diagnosis
    n_tumour: int = 59
    n_tme: int = 361

    def __post_init__(self) -> None:
        _check(self.scenario in SCENARIOS, "synthetic.scenario",
               f"must be one of {', '.join(SCENARIOS)}, got {self.scenario!r}")
        for key in ("patients", "dim", "n_tumour", "n_tme"):
            value = getattr(self, key)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                   f"synthetic.{key}", f"must be an integer >= 1, got {value!r}")
        _check(self.patients >= 8, "synthetic.patients", f"must be >= 8, got {self.patients}")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool), "synthetic.seed",
               f"must be an integer, got {self.seed!r}")
        for key in ("conflict", "tme_shift"):
            value = getattr(self, key)
            _check(isinstance(value, (int, float)) and not isinstance(value, bool)
                   and 0.0 <= value <= 1.0, f"synthetic.{key}", f"must be in [0, 1], got {value!r}")
        object.__setattr__(self, "patches", _patch_range(self.patches))

    def key(self) -> str:
        """Content hash of the parameters: one cached cohort per parameter set."""
        text = json.dumps(to_dict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _patch_range(patches: Any) -> tuple[int, int]:
    if isinstance(patches, int) and not isinstance(patches, bool):
        _check(patches >= 1, "synthetic.patches", f"must be >= 1, got {patches}")
        return max(1, math.ceil(patches / 2)), max(1, (3 * patches) // 2)
    ok = (isinstance(patches, (list, tuple)) and len(patches) == 2
          and all(isinstance(p, int) and not isinstance(p, bool) for p in patches)
          and 1 <= patches[0] <= patches[1])
    _check(ok, "synthetic.patches", f"must be N >= 1 or [min, max] with 1 <= min <= max, "
                                    f"got {patches!r}")
    return int(patches[0]), int(patches[1])


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs -> dict, values parsed as YAML scalars (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set lr=1e-3), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({exc})") from None
    return out


__all__ = ["MODALITIES", "COORD_TARGETS", "SCENARIOS", "ConfigError", "check_target", "ModelConfig",
           "TrainConfig", "SyntheticConfig", "MODEL_KEYS", "TRAIN_KEYS", "coordination_keys",
           "parameter_keys", "split_params", "to_dict", "check_grid", "parse_overrides",
           "replace"]
