"""Apply a coordination rule to the two subspaces' gradients after backward, with telemetry.

The target (``ksmodel.coordination.targets``) says which gradient is split into a tumour block
g_t and a TME block g_m, row by row: the classifier's class rows (``classifier_rows``, the
published rule) or the units of the patch projection both streams share (``shared_trunk``). The
rule maps the blocks of all rows at once and the target writes the result back. Rules that act
on the streams' own encoders as well (OGM-GE) return factors the coordinator applies to each
stream's weight tensors.

Telemetry per step (floats, names in ``ksmodel.telemetry``):

* per row: ``cos_mean`` (mean cosine of the two blocks), ``cos_p01`` / ``cos_p99`` (its 1st and
  99th percentile over rows), ``conflict_rate`` (rows with cos < 0, one criterion for every rule
  so methods compare), ``projected_tumour`` / ``projected_tme`` (rows whose tumour / TME block
  the rule changed), ``proj_norm`` (mean norm of the removed component over changed blocks);
* whole layer: ``layer_cos`` (cosine of the two streams' whole gradients on the target: on
  shared_trunk the gradients reaching P through each stream), ``rel_change`` (|g' - g| / |g|,
  the coordinated update against the plain one), ``scale_tumour`` / ``scale_tme``
  (|g_s'| / |g_s| per stream);
* ``skipped`` (1 when a confidence-based rule had no confidence this step and left it alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ksmodel.coordination.registry import CLASSIFIER_ROWS, Rule, effective_params, get_rule
from ksmodel.coordination.rules import EPS, Blocks, RuleResult
from ksmodel.coordination.targets import STREAMS, get_target
from ksmodel.telemetry import SKIPPED, TELEMETRY_KEYS


class Coordinator:
    """``coord(grad [R, 2k], conf_t, conf_m) -> (new grad [R, 2k], telemetry dict)`` on raw
    blocks; ``coord.step(model, out, targets, task)`` on a model after backward."""

    def __init__(self, rule: str | Rule, params: Mapping[str, Any] | None = None,
                 target: str = CLASSIFIER_ROWS) -> None:
        self.rule = rule if isinstance(rule, Rule) else get_rule(rule)
        self.params = effective_params(self.rule.name, dict(params or {}))
        self.target = get_target(target)
        self._fn = self.rule.make(self.params)

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def needs_confidence(self) -> bool:
        return self.rule.needs_confidence

    @torch.no_grad()
    def coordinate(self, g_t: Tensor, g_m: Tensor, conf_t: float | None = None,
                   conf_m: float | None = None) -> tuple[RuleResult, dict[str, float]]:
        """The rule on blocks [R, k] (float32 or wider), and the step's telemetry."""
        blocks = Blocks.of(g_t, g_m, conf_t, conf_m)
        skipped = self.needs_confidence and (conf_t is None or conf_m is None)
        res = _untouched(blocks) if skipped else self._fn(blocks, self.params)
        return res, _telemetry(blocks, res, skipped, self.target.summed)

    def __call__(self, grad: Tensor, conf_t: float | None = None, conf_m: float | None = None
                 ) -> tuple[Tensor, dict[str, float]]:
        if grad.dim() != 2 or grad.shape[1] % 2:
            raise ValueError(f"grad must be [R, 2k], got {tuple(grad.shape)}")
        k = grad.shape[1] // 2
        g = grad.to(torch.promote_types(grad.dtype, torch.float32))  # bf16 grads -> fp32 math
        res, telemetry = self.coordinate(g[:, :k], g[:, k:], conf_t, conf_m)
        return torch.cat([res.g_t, res.g_m], dim=1).to(grad.dtype), telemetry

    @torch.no_grad()
    def step(self, model: nn.Module, out: Any, targets: Mapping[str, Tensor], task: Any
             ) -> dict[str, float] | None:
        """After ``loss.backward()``: coordinate the model's gradients on the target in place and
        return the telemetry; None when the model has no pair of subspaces (one stream)."""
        if out.logits_t is None or out.logits_m is None:
            return None
        conf_t = conf_m = None
        if self.needs_confidence:
            conf_t = task.confidence(out.logits_t, targets)
            conf_m = task.confidence(out.logits_m, targets)
        g_t, g_m = self.target.blocks(model, out)
        dtype = torch.promote_types(g_t.dtype, torch.float32)
        old = (g_t.to(dtype), g_m.to(dtype))
        res, telemetry = self.coordinate(*old, conf_t, conf_m)
        if res.g_t is not old[0] or res.g_m is not old[1]:  # rules return the input untouched
            self.target.write(model, out, old, (res.g_t, res.g_m))
        if res.stream_scale != (1.0, 1.0) or res.stream_noise > 0:
            _modulate_streams(model, res.stream_scale, res.stream_noise)
        return telemetry

    def apply_(self, classifier: nn.Linear, conf_t: float | None = None,
               conf_m: float | None = None) -> dict[str, float]:
        """Coordinate ``classifier.weight.grad`` in place (classifier rows); the telemetry."""
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


def _modulate_streams(model: nn.Module, scale: tuple[float, float], noise: float) -> None:
    """OGM-GE on the streams' own modules: each stream's weight tensors (Linear and conv
    kernels; biases and norm gains are left alone, as the published code modulates its encoders'
    kernels) times its factor, then Gaussian noise of ``noise`` standard deviations of each."""
    for name, k in zip(STREAMS, scale, strict=True):
        grads = [p.grad for p in model.streams[name].parameters()
                 if p.grad is not None and p.dim() >= 2]
        if k != 1.0:
            torch._foreach_mul_(grads, k)
        if noise > 0:
            for g in grads:
                g.add_(torch.randn_like(g) * (noise * g.std(correction=0)))


def _telemetry(b: Blocks, res: RuleResult, skipped: bool, summed: bool) -> dict[str, float]:
    n_proj = res.projected_t.sum() + res.projected_m.sum()
    proj_norm = (res.removed_t.sum() + res.removed_m.sum()) / n_proj.clamp_min(1)
    tt, mm, tm = b.norm_t.square().sum(), b.norm_m.square().sum(), b.dot.sum()
    layer_cos = tm / (tt * mm).sqrt().clamp_min(EPS)
    d_t, d_m = res.g_t - b.g_t, res.g_m - b.g_m
    if summed:  # one parameter gradient g = g_t + g_m
        change = (d_t + d_m).square().sum()
        plain = tt + mm + 2 * tm
    else:  # blocks side by side: g = [g_t | g_m]
        change = d_t.square().sum() + d_m.square().sum()
        plain = tt + mm
    rel_change = change.sqrt() / plain.sqrt().clamp_min(EPS)
    new_tt, new_mm = res.g_t.square().sum(), res.g_m.square().sum()
    quantiles = torch.quantile(b.cos.float(), torch.tensor([0.01, 0.99], device=b.cos.device))
    stats = torch.stack([
        b.cos.mean(), (b.cos < 0).float().mean(), res.projected_t.float().mean(),
        res.projected_m.float().mean(), proj_norm, layer_cos, rel_change, quantiles[0],
        quantiles[1], (new_tt / tt.clamp_min(EPS)).sqrt(), (new_mm / mm.clamp_min(EPS)).sqrt(),
    ]).float()
    values = stats.tolist()  # one device sync
    keys = [k for k in TELEMETRY_KEYS if k != SKIPPED]
    telemetry = dict(zip(keys, values, strict=True))
    telemetry["skipped"] = float(skipped)
    return {k: telemetry[k] for k in TELEMETRY_KEYS}


def make_coordinator(name: str, target: str = CLASSIFIER_ROWS, **params: Any) -> Coordinator:
    """A coordinator for rule ``name`` on ``target`` with its hyper-parameters (defaults from
    the registry)."""
    return Coordinator(name, params, target)


__all__ = ["Coordinator", "make_coordinator", "TELEMETRY_KEYS"]
