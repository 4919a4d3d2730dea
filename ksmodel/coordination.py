"""Gradient coordination of the two knowledge subspaces on the shared classifier (DESIGN §3.8).

For each class row c the classifier-weight gradient splits into g_t = dL/dW[c, :d] and
g_m = dL/dW[c, d:]. A *rule* maps the (g_t, g_m) blocks of all rows at once (vectorised, no loop
over rows) to new blocks plus which side it projected; the ``Coordinator`` wraps any rule with the
shared bookkeeping (cosines, telemetry, skipping when a confidence is missing). Adding a rule is
one function decorated with ``@register("name")`` (and the name added to
``ksmodel.config.COORDINATION_RULES`` so configs accept it).

Telemetry per step (floats): ``cos_mean`` (mean per-row cosine), ``conflict_rate`` (rows with
cos < 0, the same criterion for every rule so methods are comparable), ``projected_t`` /
``projected_m`` (fraction of rows whose t / m block was replaced), ``proj_norm`` (mean norm of the
removed projection component over the replaced blocks, 0 if none), ``skipped`` (1 when a
confidence-based rule had no confidence this step and left the gradient untouched).
The classifier bias gradient is shared by both subspaces and is never coordinated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ksmodel.losses import survival_risk
from ksmodel.metrics import batch_concordance

_EPS = 1e-12


@dataclass(frozen=True)
class Blocks:
    """Inputs every rule sees. Vectors are [C, d]; per-row scalars are [C]."""

    g_t: Tensor
    g_m: Tensor
    dot: Tensor
    norm_t: Tensor
    norm_m: Tensor
    cos: Tensor
    conf_t: float | None
    conf_m: float | None
    tau_cos: float
    tau_rho: float


@dataclass(frozen=True)
class RuleResult:
    g_t: Tensor
    g_m: Tensor
    projected_t: Tensor  # bool [C]
    projected_m: Tensor  # bool [C]
    removed_t: Tensor  # [C] norm of the removed component (0 where not projected)
    removed_m: Tensor


@dataclass(frozen=True)
class Rule:
    fn: Callable[[Blocks], RuleResult]
    needs_confidence: bool


RULES: dict[str, Rule] = {}


def register(name: str, needs_confidence: bool = False):
    """Decorator adding a rule to the registry."""

    def deco(fn: Callable[[Blocks], RuleResult]) -> Callable[[Blocks], RuleResult]:
        RULES[name] = Rule(fn, needs_confidence)
        return fn

    return deco


def _project_out(g: Tensor, onto: Tensor, dot: Tensor, onto_norm: Tensor, times: float = 1.0
                 ) -> tuple[Tensor, Tensor]:
    """g - times * <g, onto>/|onto|^2 * onto, and the norm |<g, onto>|/|onto| of that component."""
    coef = dot / onto_norm.square().clamp_min(_EPS)
    return g - times * coef[:, None] * onto, dot.abs() / onto_norm.clamp_min(_EPS)


def _rescale(g: Tensor, norm: Tensor) -> Tensor:
    return g * (norm / g.norm(dim=1).clamp_min(_EPS))[:, None]


@register("uniform")
def uniform(b: Blocks) -> RuleResult:
    """Plain summed loss: gradients untouched."""
    none = torch.zeros_like(b.cos, dtype=torch.bool)
    zero = torch.zeros_like(b.cos)
    return RuleResult(b.g_t, b.g_m, none, none, zero, zero)


@register("pcgrad")
def pcgrad(b: Blocks) -> RuleResult:
    """PCGrad (Yu et al. 2020): on conflict (cos < 0) project each block onto the normal plane of
    the other, both from the original gradients."""
    conflict = b.cos < 0
    pt, rt = _project_out(b.g_t, b.g_m, b.dot, b.norm_m)
    pm, rm = _project_out(b.g_m, b.g_t, b.dot, b.norm_t)
    c = conflict[:, None]
    zero = torch.zeros_like(rt)
    return RuleResult(torch.where(c, pt, b.g_t), torch.where(c, pm, b.g_m), conflict, conflict,
                      torch.where(conflict, rt, zero), torch.where(conflict, rm, zero))


def _cg(b: Blocks, times: float) -> RuleResult:
    assert b.conf_t is not None and b.conf_m is not None
    conflict = b.cos < b.tau_cos
    margin = 1.0 - b.tau_rho
    # rho = conf_t / conf_m < 1 - tau_rho, written without dividing (conf may be 0)
    weak_t = conflict & bool(b.conf_t < margin * b.conf_m)
    weak_m = conflict & bool(b.conf_m < margin * b.conf_t)
    pt, rt = _project_out(b.g_t, b.g_m, b.dot, b.norm_m, times)
    pm, rm = _project_out(b.g_m, b.g_t, b.dot, b.norm_t, times)
    pt, pm = _rescale(pt, b.norm_t), _rescale(pm, b.norm_m)
    zero = torch.zeros_like(rt)
    new_t = torch.where(weak_t[:, None], pt, b.g_t)
    new_m = torch.where(weak_m[:, None], pm, b.g_m)
    return RuleResult(new_t, new_m, weak_t, weak_m, torch.where(weak_t, rt, zero),
                      torch.where(weak_m, rm, zero))


@register("cgcoord", needs_confidence=True)
def cgcoord(b: Blocks) -> RuleResult:
    """CG-Coord: on conflict (cos < tau_cos), replace the weaker subspace's block (confidence
    ratio behind by more than tau_rho) by its projection onto the normal plane of the stronger
    block, rescaled to its original norm."""
    return _cg(b, 1.0)


@register("cgcoord_ref", needs_confidence=True)
def cgcoord_ref(b: Blocks) -> RuleResult:
    """As the original code: the projection is subtracted twice (a reflection) before rescaling."""
    return _cg(b, 2.0)


class Coordinator:
    """``coord(grad [C, 2d], conf_t, conf_m) -> (new grad [C, 2d], telemetry dict)``."""

    def __init__(self, name: str, tau_cos: float = 0.0, tau_rho: float = 0.0) -> None:
        if name not in RULES:
            raise ValueError(f"unknown coordination rule {name!r}; known: {', '.join(RULES)}")
        self.name, self.tau_cos, self.tau_rho = name, float(tau_cos), float(tau_rho)
        self.rule = RULES[name]

    @property
    def needs_confidence(self) -> bool:
        return self.rule.needs_confidence

    @torch.no_grad()
    def __call__(self, grad: Tensor, conf_t: float | None = None, conf_m: float | None = None
                 ) -> tuple[Tensor, dict[str, float]]:
        if grad.dim() != 2 or grad.shape[1] % 2:
            raise ValueError(f"grad must be [C, 2d], got {tuple(grad.shape)}")
        d = grad.shape[1] // 2
        g = grad.to(torch.promote_types(grad.dtype, torch.float32))  # bf16 grads -> fp32 math
        g_t, g_m = g[:, :d], g[:, d:]
        dot = (g_t * g_m).sum(dim=1)
        norm_t, norm_m = g_t.norm(dim=1), g_m.norm(dim=1)
        cos = dot / (norm_t * norm_m).clamp_min(_EPS)
        skipped = self.needs_confidence and (conf_t is None or conf_m is None)
        blocks = Blocks(g_t, g_m, dot, norm_t, norm_m, cos, conf_t, conf_m, self.tau_cos,
                        self.tau_rho)
        res = RULES["uniform"].fn(blocks) if skipped else self.rule.fn(blocks)
        new = torch.cat([res.g_t, res.g_m], dim=1).to(grad.dtype)
        n_proj = res.projected_t.sum() + res.projected_m.sum()
        proj_norm = (res.removed_t.sum() + res.removed_m.sum()) / n_proj.clamp_min(1)
        stats = torch.stack([cos.mean(), (cos < 0).float().mean(), res.projected_t.float().mean(),
                             res.projected_m.float().mean(), proj_norm])
        values = stats.tolist()  # one device sync
        keys = ("cos_mean", "conflict_rate", "projected_t", "projected_m", "proj_norm")
        telemetry = dict(zip(keys, values, strict=True))
        telemetry["skipped"] = float(skipped)
        return new, telemetry

    def apply_(self, classifier: nn.Linear, conf_t: float | None = None,
               conf_m: float | None = None) -> dict[str, float]:
        """Coordinate ``classifier.weight.grad`` in place; returns the telemetry."""
        grad = classifier.weight.grad
        if grad is None:
            raise ValueError("classifier.weight.grad is None: call backward() first")
        new, telemetry = self(grad, conf_t, conf_m)
        grad.copy_(new)
        return telemetry


def make_coordinator(name: str, tau_cos: float = 0.0, tau_rho: float = 0.0) -> Coordinator:
    return Coordinator(name, tau_cos, tau_rho)


@torch.no_grad()
def subspace_confidence(task: str, logits_s: Tensor, targets) -> float | None:
    """How well one subspace alone does on this batch (CG-Coord's confidence).

    Classification: mean softmax probability of the true class; ``targets`` is the label tensor
    or a mapping with "label". Survival: batch C-index of the subspace risk -sum_k S_k;
    ``targets`` is a mapping with "time" and "event" (or a (time, event) pair); None when the batch
    has no comparable pair (the coordinator then skips the step).
    """
    logits_s = logits_s.detach().float()
    if task == "survival":
        if isinstance(targets, Mapping):
            time, event = targets["time"], targets["event"]
        else:
            time, event = targets
        time = torch.as_tensor(time, device=logits_s.device)
        event = torch.as_tensor(event, device=logits_s.device)
        return batch_concordance(time, event, survival_risk(logits_s))
    label = targets["label"] if isinstance(targets, Mapping) else targets
    label = torch.as_tensor(label, device=logits_s.device).long().view(-1, 1)
    return float(F.softmax(logits_s, dim=1).gather(1, label).mean())


__all__ = ["Blocks", "RuleResult", "Rule", "RULES", "register", "Coordinator", "make_coordinator",
           "subspace_confidence", "uniform", "pcgrad", "cgcoord", "cgcoord_ref"]
