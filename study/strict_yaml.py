"""Study files read strictly: a key given twice in one mapping, or a number that is not finite,
is an error naming the place, not a silent choice.

YAML lets the last of two equal keys win without a word (``epochs: 4`` then ``epochs: 2`` runs
2 epochs), and reads ``.inf`` / ``.nan`` as numbers that no parameter of a study can mean. Both
are refused here, before the study file is validated key by key (study/space.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import yaml


class StrictYamlError(ValueError):
    """A duplicate key or a non-finite number; the message names the key and the line(s)."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} is given twice (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (merge keys ``<<`` may still be
    overridden, as YAML intends)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """Parse a study file's text; `StrictYamlError` for a repeated key, `yaml.YAMLError` for
    text that is not YAML."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise StrictYamlError(
            f"{where}: key '{exc.key}' is given twice (lines {exc.first} and {exc.second}); "
            "YAML would silently use the second - keep one") from None


def _non_finite(value: Any, path: str) -> Iterator[tuple[str, float]]:
    if isinstance(value, float) and not math.isfinite(value):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _non_finite(item, f"{path}[{i}]")


def check_finite(value: Any, where: str, path: str = "") -> None:
    """`StrictYamlError` naming the first key whose value (at any depth) is inf or NaN."""
    for key, bad in _non_finite(value, path):
        shown = {math.inf: ".inf", -math.inf: "-.inf"}.get(bad, ".nan")
        raise StrictYamlError(f"{where}: key '{key}': {shown} is not a finite number; every "
                              "number of a study must be finite - write a finite value")


__all__ = ["StrictYamlError", "check_finite", "load_yaml"]
