"""Gradient coordination of the two knowledge subspaces.

``registry`` (torch-free): the rules, their hyper-parameters and implementations.
``rules``: the rule functions. ``coordinator``: applies a rule to a model's gradients after
backward and records the telemetry.
"""

from ksmodel.coordination.registry import (
    RULES,
    HyperParam,
    Rule,
    effective_params,
    get_rule,
    hyper_params,
)

__all__ = ["RULES", "HyperParam", "Rule", "effective_params", "get_rule", "hyper_params"]
