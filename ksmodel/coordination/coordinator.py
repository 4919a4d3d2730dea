"""Apply a coordination rule to the two subspaces' gradients after backward, with telemetry.

The published target (``classifier_rows``): for each class row c of the shared classifier, the
weight gradient splits into g_t = dL/dW[c, :d] (tumour features) and g_m = dL/dW[c, d:] (TME
features); the rule maps the blocks of all rows at once and the result is written back into
``classifier.weight.grad``. The classifier bias gradient is shared and never coordinated.

Telemetry per step (floats, names in ``TELEMETRY_KEYS``): ``cos_mean`` (mean per-row cosine),
``conflict_rate`` (rows with cos < 0, the same criterion for every rule so methods compare),
``projected_tumour`` / ``projected_tme`` (fraction of rows whose tumour / TME block the rule
replaced), ``proj_norm`` (mean norm of the removed component over replaced blocks, 0 if none),
``skipped`` (1 when a confidence-based rule had no confidence this step and left it alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ksmodel.coordination.registry import Rule, effective_params, get_rule
from ksmodel.coordination.rules import Blocks, RuleResult

TELEMETRY_KEYS = ("cos_mean", "conflict_rate", "projected_tumour", "projected_tme", "proj_norm",
                  "skipped")


class Coordinator:
    """``coord(grad [R, 2k], conf_t, conf_m) -> (new grad [R, 2k], telemetry dict)``."""

    def __init__(self, rule: str | Rule, params: Mapping[str, Any] | None = None) -> None:
        self.rule = rule if isinstance(rule, Rule) else get_rule(rule)
        self.params = effective_params(self.rule.name, dict(params or {}))
        self._fn = self.rule.load()

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def needs_confidence(self) -> bool:
        return self.rule.needs_confidence

    @torch.no_grad()
    def __call__(self, grad: Tensor, conf_t: float | None = None, conf_m: float | None = None
                 ) -> tuple[Tensor, dict[str, float]]:
        if grad.dim() != 2 or grad.shape[1] % 2:
            raise ValueError(f"grad must be [R, 2k], got {tuple(grad.shape)}")
        k = grad.shape[1] // 2
        g = grad.to(torch.promote_types(grad.dtype, torch.float32))  # bf16 grads -> fp32 math
        blocks = Blocks.of(g[:, :k], g[:, k:], conf_t, conf_m)
        skipped = self.needs_confidence and (conf_t is None or conf_m is None)
        res = _untouched(blocks) if skipped else self._fn(blocks, self.params)
        new = torch.cat([res.g_t, res.g_m], dim=1).to(grad.dtype)
        return new, _telemetry(blocks, res, skipped)

    def step(self, model: nn.Module, out: Any, targets: Mapping[str, Tensor], task: Any
             ) -> dict[str, float] | None:
        """After ``loss.backward()``: coordinate the model's gradients in place and return the
        telemetry; None when the model has no pair of subspaces (one stream)."""
        if out.logits_t is None or out.logits_m is None:
            return None
        conf_t = conf_m = None
        if self.needs_confidence:
            conf_t = task.confidence(out.logits_t, targets)
            conf_m = task.confidence(out.logits_m, targets)
        return self.apply_(model.classifier, conf_t, conf_m)

    def apply_(self, classifier: nn.Linear, conf_t: float | None = None,
               conf_m: float | None = None) -> dict[str, float]:
        """Coordinate ``classifier.weight.grad`` in place; returns the telemetry."""
        grad = classifier.weight.grad
        if grad is None:
            raise ValueError("classifier.weight.grad is None: call backward() first")
        new, telemetry = self(grad, conf_t, conf_m)
        grad.copy_(new)
        return telemetry


def _untouched(b: Blocks) -> RuleResult:
    none = torch.zeros_like(b.cos, dtype=torch.bool)
    zero = torch.zeros_like(b.cos)
    return RuleResult(b.g_t, b.g_m, none, none, zero, zero)


def _telemetry(b: Blocks, res: RuleResult, skipped: bool) -> dict[str, float]:
    n_proj = res.projected_t.sum() + res.projected_m.sum()
    proj_norm = (res.removed_t.sum() + res.removed_m.sum()) / n_proj.clamp_min(1)
    stats = torch.stack([b.cos.mean(), (b.cos < 0).float().mean(), res.projected_t.float().mean(),
                         res.projected_m.float().mean(), proj_norm])
    values = stats.tolist()  # one device sync
    telemetry = dict(zip(TELEMETRY_KEYS[:-1], values, strict=True))
    telemetry["skipped"] = float(skipped)
    return telemetry


def make_coordinator(name: str, **params: Any) -> Coordinator:
    """A coordinator for rule ``name`` with its hyper-parameters (defaults from the registry)."""
    return Coordinator(name, params)


__all__ = ["Coordinator", "make_coordinator", "TELEMETRY_KEYS"]
