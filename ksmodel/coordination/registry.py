"""The one registry of gradient-coordination rules: names, hyper-parameters, implementations.

Each ``Rule`` declares its name, what it does, its own hyper-parameters (with defaults and valid
ranges) and whether it needs the subspaces' confidences. ``TrainConfig`` checks coordination
parameters against it, the study-file checker accepts exactly the names declared here, and the
analysis reads the sensitivity parameters from it. The implementation (torch) is named by
``impl`` and imported on first use, so this module stays importable without torch (``--help``,
study-file checks). Adding a rule = one function in ``rules.py`` (or anywhere) + one ``Rule`` here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ksmodel.errors import ConfigError

CLASSIFIER_ROWS, SHARED_TRUNK = "classifier_rows", "shared_trunk"
COORD_TARGETS = (CLASSIFIER_ROWS, SHARED_TRUNK)
"""Where gradient coordination acts (README, "Gradient coordination"): ``classifier_rows`` - the
published rule, each class row of the classifier split into its tumour and TME columns;
``shared_trunk`` - the rows (units) of the patch projection both streams share, split into what
reaches it through each stream (needs ``shared_projection``). Implemented in ``targets.py``."""


@dataclass(frozen=True)
class HyperParam:
    """A rule's hyper-parameter; the name is global (study files set it as a flat key)."""

    name: str
    default: float
    low: float
    high: float
    doc: str
    high_inclusive: bool = True

    def check(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{self.name}': expected a number, got {value!r}")
        v = float(value)
        above = v > self.high if self.high_inclusive else v >= self.high
        if v < self.low or above:
            bracket = "]" if self.high_inclusive else ")"
            raise ConfigError(f"config key '{self.name}': must be in [{self.low}, {self.high}"
                              f"{bracket}, got {value}")
        return v


@dataclass(frozen=True)
class Rule:
    name: str
    summary: str
    impl: str  # "module:function" taking (Blocks, params) -> RuleResult
    params: tuple[HyperParam, ...] = ()
    needs_confidence: bool = False
    # True: ``impl`` is a factory, called once per coordinator with the parameters, returning
    # the rule function (for rules that carry state from step to step, e.g. a warm-started solver)
    stateful: bool = False

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)

    def make(self, params: Mapping[str, float]) -> Callable[..., Any]:
        """The function ``(Blocks, params) -> RuleResult`` one coordinator uses."""
        fn = self.load()
        return fn(params) if self.stateful else fn

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}


TAU_COS = HyperParam("tau_cos", 0.0, -1.0, 1.0,
                     "cosine threshold: the blocks conflict when cos(g_t, g_m) < tau_cos")
TAU_RHO = HyperParam("tau_rho", 0.0, 0.0, 1.0,
                     "confidence margin: project the weaker subspace only when it is behind by "
                     "more than this (rho < 1 - tau_rho)", high_inclusive=False)

CAGRAD_C = HyperParam("cagrad_c", 0.5, 0.0, 1.0,
                      "CAGrad's c: radius of the ball around the mean gradient, relative to its "
                      "norm, in which the worse-off stream's improvement is maximised (0 = mean)",
                      high_inclusive=False)
OGM_ALPHA = HyperParam("ogm_alpha", 0.5, 0.0, 10.0,
                       "OGM's alpha: the dominant stream's gradients are scaled by "
                       "1 - tanh(alpha * (rho - 1)), rho = its confidence over the other's")
OGM_NOISE = HyperParam("ogm_noise", 1.0, 0.0, 1.0,
                       "OGM-GE's Gaussian noise, in standard deviations of each gradient tensor "
                       "(1 = the published GE, 0 = OGM without GE)")

_IMPL = "ksmodel.coordination.rules"
_WHOLE = ("whole-layer: one decision per step on the two streams' whole gradients of the target "
          "(as in its paper), via torchjd on their 2x2 Gramian; result x2 to the plain sum's scale")
RULES: dict[str, Rule] = {r.name: r for r in (
    Rule("uniform", "plain summed loss: gradients untouched", f"{_IMPL}:uniform"),
    Rule("pcgrad", "PCGrad (Yu et al. 2020): on conflict (cos < 0) project each block onto the "
         "normal plane of the other", f"{_IMPL}:pcgrad"),
    Rule("cgcoord", "CG-Coord: on conflict, replace the less confident subspace's block by its "
         "projection onto the normal plane of the other, rescaled to its norm",
         f"{_IMPL}:cgcoord", (TAU_COS, TAU_RHO), needs_confidence=True),
    Rule("cgcoord_ref", "CG-Coord as the original code: the projection subtracted twice (a "
         "reflection) before rescaling", f"{_IMPL}:cgcoord_ref", (TAU_COS, TAU_RHO),
         needs_confidence=True),
    Rule("mgda", f"MGDA (Desideri 2012; Sener & Koltun 2018): the min-norm convex combination of "
         f"the two streams' gradients; {_WHOLE}", f"{_IMPL}:mgda"),
    Rule("upgrad", f"UPGrad (Quinton & Rey 2024): each stream's gradient projected onto the dual "
         f"cone of both, averaged; {_WHOLE}", f"{_IMPL}:upgrad"),
    Rule("cagrad", f"CAGrad (Liu et al. 2021): the mean gradient moved within a ball of radius "
         f"cagrad_c |mean| towards the worse-off stream's improvement; {_WHOLE}",
         f"{_IMPL}:cagrad", (CAGRAD_C,)),
    Rule("nashmtl", f"Nash-MTL (Navon et al. 2022): bargaining weights w with w_i (G w)_i = 1, "
         f"warm-started from the previous step, update norm clipped at 1; {_WHOLE}",
         f"{_IMPL}:nashmtl", stateful=True),
    Rule("ogm_ge", "OGM-GE (Peng et al. 2022): the dominant stream (confidence ratio rho > 1) has "
         "its gradients scaled by 1 - tanh(ogm_alpha (rho - 1)) - its block of the target and "
         "the weight tensors of its own modules (gene encoder, teacher, attention, own "
         "projection) - plus Gaussian noise of ogm_noise standard deviations of each of those "
         "tensors on both streams (GE); whole-layer. Meant for shared_trunk: on classifier_rows "
         "its block is the classifier's columns, which the paper leaves alone",
         f"{_IMPL}:ogm_ge", (OGM_ALPHA, OGM_NOISE), needs_confidence=True),
)}
"""Rule name -> Rule."""


def get_rule(name: Any) -> Rule:
    if name not in RULES:
        raise ConfigError(f"config key 'coordination': must be one of {', '.join(RULES)}, "
                          f"got {name!r}")
    return RULES[name]


def hyper_params() -> dict[str, HyperParam]:
    """Every hyper-parameter some rule declares, by name (one definition per name)."""
    out: dict[str, HyperParam] = {}
    for rule in RULES.values():
        for p in rule.params:
            if out.setdefault(p.name, p) != p:
                raise ConfigError(f"rules {rule.name} and another declare '{p.name}' differently")
    return out


def effective_params(rule: str, given: Mapping[str, Any]) -> dict[str, float]:
    """The rule's defaults overlaid with ``given``, every value range-checked. Parameters of other
    rules are kept (a grid over rules may fix them once for all) and checked too."""
    known = hyper_params()
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown coordination parameter(s) {', '.join(unknown)}; known: "
                          f"{', '.join(sorted(known)) or 'none'}")
    checked = {k: known[k].check(v) for k, v in given.items()}
    return {**get_rule(rule).defaults(), **checked}


__all__ = ["CLASSIFIER_ROWS", "COORD_TARGETS", "SHARED_TRUNK", "HyperParam", "Rule", "RULES",
           "get_rule", "hyper_params", "effective_params"]
