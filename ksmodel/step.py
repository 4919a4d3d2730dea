"""One training step of KS-Fusion: the batch, the objective and the step itself.

``train_step`` is the one training step (forward, task + consistency loss, backward, gradient
coordination, optimiser step). The fold trainer (``ksmodel.trainer``), the CLI, the study's
trials and every benchmark run it; ``compute_gradients`` is its first half (forward, loss,
backward), for the places that need the gradients without an update (benchmarks that time the
coordination alone or compare devices).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ksmodel.coordination.coordinator import Coordinator
from ksmodel.losses import consistency_total
from ksmodel.model import KSFusion, KSOutput
from ksmodel.tasks import FoldTargets, Task

__all__ = ["Batch", "NonFiniteLossError", "Objective", "StepResult", "compute_gradients",
           "train_step"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the trial is marked failed."""


@dataclass(frozen=True)
class Batch:
    """One batch on the model's device; ``targets`` as ``FoldTargets.tensors`` rows."""

    bags: Tensor | None  # [B, T, D]; None when no stream reads histology
    genes_t: Tensor  # [B, n_t]
    genes_m: Tensor  # [B, n_m]
    targets: dict[str, Tensor]


HEADS = ("logits", "logits_t", "logits_m")
"""Outputs a task loss or an evaluation can read: the fused logits, or one subspace stream's own
(``out_t``, ``out_m``) - a stream's probe, or that stream trained alone (benchmarks)."""


@dataclass(frozen=True)
class Objective:
    """The training loss: L = L_task + lam * (alpha * L_cons,t + (1 - alpha) * L_cons,m).
    ``head``: the output L_task reads (``HEADS``; the fused logits unless a stream is trained
    alone)."""

    task: Task
    fold: FoldTargets
    lam: float = 0.0
    alpha: float = 0.5
    head: str = "logits"

    def __call__(self, out: KSOutput, batch: Batch) -> Tensor:
        loss = self.task.loss(getattr(out, self.head), batch.targets, self.fold)
        if self.lam > 0:
            loss = loss + self.lam * consistency_total(out, self.alpha)
        return loss


@dataclass
class StepResult:
    loss: float
    telemetry: dict[str, float] | None  # None when there is no pair of subspaces to coordinate
    seconds: dict[str, float] | None = None  # per phase, when profiled


@dataclass
class Gradients:
    """What ``compute_gradients`` leaves besides the ``.grad`` of the parameters."""

    out: KSOutput
    loss: Tensor


def compute_gradients(model: KSFusion, batch: Batch, objective: Objective,
                      optimizer: torch.optim.Optimizer | None = None, *, amp: bool = False,
                      clock: PhaseClock | None = None) -> Gradients:
    """Forward, loss, backward: the parameters' ``.grad`` hold the objective's gradient.

    Gradients are reset first (``optimizer.zero_grad`` when given, else the model's), so they
    are this batch's only. A non-finite loss raises ``NonFiniteLossError`` before backward."""
    device = batch.genes_t.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(batch.bags, batch.genes_t, batch.genes_m)
    loss = objective(out, batch)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"training loss is {loss.item()} (lower lr, or check the inputs)")
    if clock:
        clock.lap("forward")
    (optimizer or model).zero_grad(set_to_none=True)
    loss.backward()
    if clock:
        clock.lap("backward")
    return Gradients(out, loss)


def train_step(model: KSFusion, batch: Batch, objective: Objective,
               optimizer: torch.optim.Optimizer, coordinator: Coordinator, *, amp: bool = False,
               profile: bool = False) -> StepResult:
    """One optimisation step. ``amp``: bf16 autocast (CUDA). ``profile``: synchronise and time
    the phases (forward, backward, coordinate, optimizer) - for benchmarks, it costs syncs."""
    clock = PhaseClock(batch.genes_t.device) if profile else None
    grads = compute_gradients(model, batch, objective, optimizer, amp=amp, clock=clock)
    telemetry = coordinator.step(model, grads.out, batch.targets, objective.task)
    if clock:
        clock.lap("coordinate")
    optimizer.step()
    if clock:
        clock.lap("optimizer")
    return StepResult(grads.loss.item(), telemetry, clock.laps if clock else None)


class PhaseClock:
    """Wall seconds per phase of a step, synchronising CUDA before each reading."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.laps = device, {}
        self._sync()
        self._last = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def lap(self, name: str) -> None:
        self._sync()
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
