"""Named variants: an ablation table as one study (docs/study-files.md, "Variants").

A study file's ``variants:`` maps a name to overrides of the model, training and coordination
parameters (``no_teacher: {teacher: false}``) and ``reference:`` names the variant the others are
compared with. The study is the grid variant x seed (x the values of any grid-searched
parameter) on the study's folds, so every variant is paired with the reference on identical
(seed, fold) keys: that pairing is what the claims table of ``analysis.compare`` tests.

A trial's configuration carries the variant *name* (key ``variant``); the trial expands it into
the overrides (`expand`) and records the name as the tag ``ks.variant``, which the analysis
groups by. Parsing and validation of the study-file keys live in ``study/space.py``; this module
is the part the trainable and the Tune search need (standard library only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

VARIANT_KEY = "variant"
"""Key of the variant name in a trial's configuration (Ray Tune's param space)."""

STUDY_WIDE = {
    "seed": "a variants study crosses every variant with the top-level seeds list",
    "epochs": "the budget is the top-level epochs key, the same for every variant",
    "grid": "the token grid is laid out once per study; fix it in 'fixed'",
}
"""Parameters a variant may not override, and why."""

SEARCH_DEFAULTS = {"sampler": "grid", "scheduler": "none"}
"""What a variants study uses when the file does not say: every (variant, seed) once, at the
full budget (an early-stopped variant would have no value to pair with the reference)."""


def expand(config: Mapping[str, Any],
           variants: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """(parameters, variant name) of a trial configuration: the named variant's overrides, then
    the rest of the configuration (seed and grid-searched values, which a variant never sets).
    A configuration without a variant comes back unchanged with name None."""
    rest = {k: v for k, v in config.items() if k != VARIANT_KEY}
    name = config.get(VARIANT_KEY)
    if name is None:
        return rest, None
    if name not in variants:
        raise KeyError(f"variant '{name}' is not one of the study's variants "
                       f"({', '.join(variants)})")
    return {**variants[name], **rest}, str(name)


def modalities(fixed: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]],
               default: str) -> set[str]:
    """Every input modality some variant reads (the study loads the bags if any needs them)."""
    base = fixed.get("modality", default)
    if not variants:
        return {base}
    return {ov.get("modality", base) for ov in variants.values()}


__all__ = ["VARIANT_KEY", "STUDY_WIDE", "SEARCH_DEFAULTS", "expand", "modalities"]
