"""The coordination rules (torch). Declared, with their hyper-parameters, in ``registry.py``.

A rule sees the two subspaces' gradient blocks of every row at once (``Blocks``: [R, k] each,
with their dot products, norms and cosines precomputed) and returns new blocks plus which rows
it changed on which side (``RuleResult``). Rules are vectorised over rows: no Python loop over
rows or samples.

Two kinds of rule:

* **per row** (``pcgrad``, ``cgcoord``, ``cgcoord_ref``): each row (a class row of the classifier,
  or a unit of the shared projection) is decided on its own cosine;
* **whole layer** (``mgda``, ``upgrad``, ``cagrad``, ``nashmtl`` through torchjd's weightings, and
  ``ogm_ge``): one decision per step for the whole target, as their papers aggregate the whole
  shared-parameter gradient of each objective. The torchjd weightings only need the 2 x 2 Gramian
  of the two streams' whole-layer gradients, which the blocks' dot products already give: one
  solve per step on a 2 x 2 matrix, no loop over rows and no [2, n] Jacobian built. The result
  is ``2 * (w_t * g_t + w_m * g_m)``: torchjd's aggregators average the objectives (UPGrad and
  CAGrad reduce to the mean when nothing conflicts), the plain summed loss adds them, so the
  factor 2 puts every rule on the sum's scale and ``rel_change`` measures direction changes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
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


    def layer_gramian(self) -> Tensor:
        """The 2 x 2 Gramian of the two whole-layer gradients, float64 on the CPU (one sync)."""
        v = torch.stack([self.norm_t.square().sum(), self.dot.sum(), self.norm_m.square().sum()])
        tt, tm, mm = v.to("cpu", torch.float64).unbind()
        return torch.stack([torch.stack([tt, tm]), torch.stack([tm, mm])])


@dataclass(frozen=True)
class RuleResult:
    g_t: Tensor
    g_m: Tensor
    projected_t: Tensor  # bool [R]
    projected_m: Tensor  # bool [R]
    removed_t: Tensor  # [R] norm of the removed component (0 where not projected)
    removed_m: Tensor
    # OGM-GE: factors on each stream's own weight gradients (tumour, TME), and the Gaussian noise
    # (in standard deviations of each gradient tensor) added to both streams' weight gradients
    stream_scale: tuple[float, float] = (1.0, 1.0)
    stream_noise: float = 0.0


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


# --- whole-layer rules ---------------------------------------------------------------------

N_STREAMS = 2  # torchjd averages the objectives; the plain summed loss adds them


def _weighted(b: Blocks, w_t: float, w_m: float) -> RuleResult:
    """g_t' = w_t g_t, g_m' = w_m g_m for every row; a side counts as changed when w != 1."""
    changed_t = torch.full_like(b.cos, abs(w_t - 1.0) > 1e-12, dtype=torch.bool)
    changed_m = torch.full_like(b.cos, abs(w_m - 1.0) > 1e-12, dtype=torch.bool)
    return RuleResult(b.g_t * w_t, b.g_m * w_m, changed_t, changed_m,
                      b.norm_t * abs(1.0 - w_t) * changed_t, b.norm_m * abs(1.0 - w_m) * changed_m)


def _reduced(gramian: Tensor) -> Tensor:
    """A 2 x 2 matrix R with R R^T = gramian: what a Jacobian-based weighting sees of [g_t; g_m]
    when it only depends on their Gramian (and the norms of their combinations)."""
    vals, vecs = torch.linalg.eigh(gramian)
    return vecs * vals.clamp_min(0.0).sqrt()


def _by_weighting(b: Blocks, weights: Callable[[Tensor], Tensor]) -> RuleResult:
    gramian = b.layer_gramian()
    if not bool(torch.isfinite(gramian).all()) or gramian.trace() <= 0:
        return uniform(b, {})
    w = weights(gramian).tolist()
    return _weighted(b, N_STREAMS * w[0], N_STREAMS * w[1])


def mgda(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """MGDA (torchjd): the min-norm convex combination of the two whole-layer gradients."""
    from torchjd.aggregation import MGDAWeighting

    return _by_weighting(b, MGDAWeighting())


def upgrad(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """UPGrad (torchjd): each whole-layer gradient projected onto the dual cone of both, then
    averaged."""
    from torchjd.aggregation import UPGradWeighting

    return _by_weighting(b, UPGradWeighting())


def cagrad(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """CAGrad (torchjd): the mean gradient moved, within a ball of radius c |g_0|, towards the
    direction that most improves the worse-off stream."""
    from torchjd.aggregation import CAGradWeighting

    return _by_weighting(b, CAGradWeighting(c=params["cagrad_c"]))


def nashmtl(params: Mapping[str, float]) -> Callable[[Blocks, Mapping[str, float]], RuleResult]:
    """Nash-MTL (torchjd) for one coordinator: the bargaining weights are warm-started from the
    previous step's (the solver state lives in the returned rule)."""
    from torchjd.aggregation import NashMTL

    weighting = NashMTL(n_tasks=N_STREAMS).weighting

    def rule(b: Blocks, params: Mapping[str, float]) -> RuleResult:
        with warnings.catch_warnings():  # cvxpy: "not DPP" - the problem is small either way
            warnings.simplefilter("ignore", UserWarning)
            return _by_weighting(b, lambda gramian: weighting(_reduced(gramian)))

    return rule


def ogm_coefficients(conf_t: float, conf_m: float, alpha: float) -> tuple[float, float]:
    """OGM's k_t, k_m: the dominant stream (confidence ratio rho > 1 over the other) gets
    1 - tanh(alpha * (rho - 1)), the other 1."""
    if conf_t > conf_m:
        rho = conf_t / conf_m if conf_m > 0 else math.inf
        return 1.0 - math.tanh(alpha * (rho - 1.0)), 1.0
    if conf_m > conf_t:
        rho = conf_m / conf_t if conf_t > 0 else math.inf
        return 1.0, 1.0 - math.tanh(alpha * (rho - 1.0))
    return 1.0, 1.0


def ogm_ge(b: Blocks, params: Mapping[str, float]) -> RuleResult:
    """OGM-GE (Peng et al. 2022): scale the dominant stream's gradients by 1 - tanh(alpha (rho -
    1)), rho = its confidence over the other's; GE adds Gaussian noise with the standard deviation
    of each (scaled) gradient tensor, on both streams. Here: on its block of the target and on
    the weight tensors of its own modules (``stream_scale``, applied by the coordinator)."""
    if b.conf_t is None or b.conf_m is None:
        raise ValueError("OGM-GE needs both subspace confidences")
    k_t, k_m = ogm_coefficients(b.conf_t, b.conf_m, params["ogm_alpha"])
    res = _weighted(b, k_t, k_m)
    noise = params["ogm_noise"]
    if noise > 0:
        res = RuleResult(_add_noise(res.g_t, noise), _add_noise(res.g_m, noise), res.projected_t,
                         res.projected_m, res.removed_t, res.removed_m)
    return RuleResult(res.g_t, res.g_m, res.projected_t, res.projected_m, res.removed_t,
                      res.removed_m, stream_scale=(k_t, k_m), stream_noise=noise)


def _add_noise(g: Tensor, scale: float) -> Tensor:
    """g + N(0, (scale * std(g))^2), the GE part of OGM-GE (std over the whole tensor)."""
    return g + torch.randn_like(g) * (scale * g.std(correction=0))


__all__ = ["Blocks", "RuleResult", "uniform", "pcgrad", "cgcoord", "cgcoord_ref", "mgda",
           "upgrad", "cagrad", "nashmtl", "ogm_ge", "ogm_coefficients", "EPS", "N_STREAMS"]
