"""The plain-data layout of a fold trainer's state (``FoldTrainer.get_state``).

Tensors, numbers, strings, lists and dicts only, so ``torch.save`` writes it and
``torch.load(..., weights_only=True)`` reads it back; ``STATE_VERSION`` names the layout, and a
checkpoint of another layout is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import Tensor


@dataclass
class EpochResult:
    """One trained epoch of a fold: its loss, validation metrics, mean telemetry, wall time."""

    epoch: int
    train_loss: float
    metrics: dict[str, float]
    telemetry: dict[str, float]
    seconds: float


STATE_VERSION = 1
"""Version of ``FoldTrainer.get_state()``'s layout (a checkpoint of another layout is refused)."""


def epoch_state(r: EpochResult) -> dict[str, Any]:
    return {"epoch": r.epoch, "train_loss": r.train_loss, "metrics": dict(r.metrics),
            "telemetry": dict(r.telemetry), "seconds": r.seconds}


def frame_state(frame: pd.DataFrame | None) -> dict[str, Any] | None:
    """A prediction table as plain data: numeric columns as tensors (dtype kept), others as
    lists (case ids)."""
    if frame is None:
        return None
    return {str(c): (torch.from_numpy(frame[c].to_numpy().copy())
                     if pd.api.types.is_numeric_dtype(frame[c]) else frame[c].tolist())
            for c in frame.columns}


def frame_from_state(state: dict[str, Any] | None) -> pd.DataFrame | None:
    if state is None:
        return None
    return pd.DataFrame({c: v.numpy() if isinstance(v, Tensor) else v for c, v in state.items()})
