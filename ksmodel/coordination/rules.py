"""The coordination rules (torch). Declared, with their hyper-parameters, in ``registry.py``.

A rule sees the two subspaces' gradient blocks of every row at once (``Blocks``: [R, k] each,
with their dot products, norms and cosines precomputed) and returns new blocks plus which rows
it changed on which side (``RuleResult``). Rules are vectorised over rows: no Python loop over
rows or samples.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-12


@dataclass(frozen=True)
class Blocks:
    """Inputs every rule sees. Vectors are [R, k]; per-row scalars are [R]."""

    g_t: Tensor
    g_m: Tensor
    dot: Tensor
    norm_t: Tensor
    norm_m: Tensor
    cos: Tensor
    conf_t: float | None
    conf_m: float | None

    @classmethod
    def of(cls, g_t: Tensor, g_m: Tensor, conf_t: float | None = None,
           conf_m: float | None = None) -> Blocks:
        dot = (g_t * g_m).sum(dim=1)
        norm_t, norm_m = g_t.norm(dim=1), g_m.norm(dim=1)
        cos = dot / (norm_t * norm_m).clamp_min(EPS)
        return cls(g_t, g_m, dot, norm_t, norm_m, cos, conf_t, conf_m)


@dataclass(frozen=True)
class RuleResult:
    g_t: Tensor
    g_m: Tensor
    projected_t: Tensor  # bool [R]
    projected_m: Tensor  # bool [R]
    removed_t: Tensor  # [R] norm of the removed component (0 where not projected)
    removed_m: Tensor


def _project_out(g: Tensor, onto: Tensor, dot: Tensor, onto_norm: Tensor, times: float = 1.0
                 ) -> tuple[Tensor, Tensor]:
    """g - times * <g, onto>/|onto|^2 * onto, and the norm |<g, onto>|/|onto| of that component."""
    coef = dot / onto_norm.square().clamp_min(EPS)
    return g - times * coef[:, None] * onto, dot.abs() / onto_norm.clamp_min(EPS)


def _rescale(g: Tensor, norm: Tensor) -> Tensor:
    return g * (norm / g.norm(dim=1).clamp_min(EPS))[:, None]


def uniform(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """Plain summed loss: gradients untouched."""
    none = torch.zeros_like(b.cos, dtype=torch.bool)
    zero = torch.zeros_like(b.cos)
    return RuleResult(b.g_t, b.g_m, none, none, zero, zero)


def pcgrad(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """PCGrad (Yu et al. 2020): on conflict (cos < 0) project each block onto the normal plane of
    the other, both from the original gradients."""
    conflict = b.cos < 0
    pt, rt = _project_out(b.g_t, b.g_m, b.dot, b.norm_m)
    pm, rm = _project_out(b.g_m, b.g_t, b.dot, b.norm_t)
    c = conflict[:, None]
    zero = torch.zeros_like(rt)
    return RuleResult(torch.where(c, pt, b.g_t), torch.where(c, pm, b.g_m), conflict, conflict,
                      torch.where(conflict, rt, zero), torch.where(conflict, rm, zero))


def _cg(b: Blocks, params: Mapping[str, float], times: float) -> RuleResult:
    if b.conf_t is None or b.conf_m is None:
        raise ValueError("CG-Coord needs both subspace confidences")
    conflict = b.cos < params["tau_cos"]
    margin = 1.0 - params["tau_rho"]
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


def cgcoord(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """CG-Coord: on conflict (cos < tau_cos), replace the weaker subspace's block (confidence
    ratio behind by more than tau_rho) by its projection onto the normal plane of the stronger
    block, rescaled to its original norm."""
    return _cg(b, params, 1.0)


def cgcoord_ref(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """As the original code: the projection is subtracted twice (a reflection) before rescaling."""
    return _cg(b, params, 2.0)


__all__ = ["Blocks", "RuleResult", "uniform", "pcgrad", "cgcoord", "cgcoord_ref", "EPS"]
