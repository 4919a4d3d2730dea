"""Typed configuration for the model, the task and one fold's training.

Every knob lives here, validated once in ``__post_init__``; the rest of the code reads plain
attributes and never re-checks. ``ConfigError`` names the offending key so a study file or a
``--set key=value`` override can be fixed without reading code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import yaml

TASKS: dict[str, int] = {"diagnosis": 4, "grade": 3, "survival": 4}
"""Task name -> number of model outputs (classes, or discrete-time hazard bins for survival)."""

TASK_METRIC: dict[str, str] = {"diagnosis": "auc", "grade": "auc", "survival": "cindex"}
"""The validation metric each task is selected on (always maximised)."""

COORDINATION_RULES = ("uniform", "pcgrad", "cgcoord", "cgcoord_ref")
MODALITIES = ("both", "genomics", "histology")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}': {msg}")


@dataclass(frozen=True)
class ModelConfig:
    """KS-Fusion architecture (DESIGN §3). Defaults are CPU-sized; `paper()` gives the original."""

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

    def __post_init__(self) -> None:
        for key in ("feature_dim", "n_tumour_genes", "n_tme_genes", "n_outputs", "dim",
                    "gene_hidden", "gene_blocks", "heads", "head_dim", "offset_groups",
                    "downsample", "offset_kernel", "rpb_hidden", "rpb_depth"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 1, key,
                   f"must be an integer >= 1, got {value!r}")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.offset_scale > 0, "offset_scale", f"must be > 0, got {self.offset_scale}")
        grid = tuple(self.grid)
        _check(len(grid) == 2 and all(isinstance(g, int) and g >= 1 for g in grid), "grid",
               f"must be two integers >= 1, got {self.grid!r}")
        object.__setattr__(self, "grid", grid)
        _check(self.dim % self.offset_groups == 0, "offset_groups",
               f"dim={self.dim} must be divisible by offset_groups={self.offset_groups}")
        _check(self.heads % self.offset_groups == 0 or self.offset_groups % self.heads == 0,
               "offset_groups", "heads and offset_groups must divide one another")
        _check(self.modality in MODALITIES, "modality",
               f"must be one of {', '.join(MODALITIES)}, got {self.modality!r}")

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
    """One fold's optimisation, loss weights and gradient coordination."""

    task: str = "diagnosis"
    epochs: int = 20
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 1e-4
    alpha: float = 0.5  # tumour vs TME balance of the consistency loss
    lam: float = 0.1  # consistency weight lambda (0 disables it)
    coordination: str = "cgcoord"
    tau_cos: float = 0.0
    tau_rho: float = 0.0
    patience: int = 0  # early-stopping patience in epochs (0 = no early stopping)
    seed: int = 0
    log1p: bool = True  # log1p expression before the z-score (off for already-logged data)
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model

    def __post_init__(self) -> None:
        _check(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        _check(self.coordination in COORDINATION_RULES, "coordination",
               f"must be one of {', '.join(COORDINATION_RULES)}, got {self.coordination!r}")
        for key in ("epochs", "batch_size"):
            value = getattr(self, key)
            _check(isinstance(value, int) and value >= 1, key,
                   f"must be an integer >= 1, got {value!r}")
        _check(isinstance(self.patience, int) and self.patience >= 0, "patience", "must be >= 0")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(0.0 <= self.alpha <= 1.0, "alpha", f"must be in [0, 1], got {self.alpha}")
        _check(self.lam >= 0, "lam", f"must be >= 0, got {self.lam}")
        _check(-1.0 <= self.tau_cos <= 1.0, "tau_cos", f"must be in [-1, 1], got {self.tau_cos}")
        _check(0.0 <= self.tau_rho < 1.0, "tau_rho", f"must be in [0, 1), got {self.tau_rho}")
        _check(self.device in ("auto", "cpu", "cuda"), "device", "must be auto, cpu or cuda")

    @property
    def metric(self) -> str:
        return TASK_METRIC[self.task]


MODEL_KEYS = frozenset(f.name for f in fields(ModelConfig))
TRAIN_KEYS = frozenset(f.name for f in fields(TrainConfig))


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat parameter dict (as a study trial sees it) into model and train kwargs."""
    unknown = set(params) - MODEL_KEYS - TRAIN_KEYS
    if unknown:
        raise ConfigError(
            f"unknown parameter(s) {', '.join(sorted(unknown))}; model keys: "
            f"{', '.join(sorted(MODEL_KEYS))}; training keys: {', '.join(sorted(TRAIN_KEYS))}")
    model = {k: v for k, v in params.items() if k in MODEL_KEYS}
    train = {k: v for k, v in params.items() if k in TRAIN_KEYS}
    if "grid" in model:
        model["grid"] = tuple(model["grid"])
    return model, train


def to_dict(cfg: ModelConfig | TrainConfig) -> dict[str, Any]:
    """Plain-data view (tuples as lists) for YAML/JSON/MLflow."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs -> dict, values parsed as YAML scalars (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


__all__ = ["TASKS", "TASK_METRIC", "COORDINATION_RULES", "MODALITIES", "ConfigError",
           "ModelConfig", "TrainConfig", "MODEL_KEYS", "TRAIN_KEYS", "split_params", "to_dict",
           "parse_overrides", "replace"]
