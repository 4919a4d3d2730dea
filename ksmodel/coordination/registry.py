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

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}


TAU_COS = HyperParam("tau_cos", 0.0, -1.0, 1.0,
                     "cosine threshold: the blocks conflict when cos(g_t, g_m) < tau_cos")
TAU_RHO = HyperParam("tau_rho", 0.0, 0.0, 1.0,
                     "confidence margin: project the weaker subspace only when it is behind by "
                     "more than this (rho < 1 - tau_rho)", high_inclusive=False)

_IMPL = "ksmodel.coordination.rules"
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


__all__ = ["HyperParam", "Rule", "RULES", "get_rule", "hyper_params", "effective_params"]
