"""The two kinds of bad input, shared by every module that validates something.

Both subclass ``ValueError`` so a CLI can report any of them as one ``error:`` line (exit 2).
Messages name the file and the row, case, gene or key, and say how to fix it (docs/errors.md).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


class CohortError(ValueError):
    """Bad cohort data; the message names the file and row/case/gene/key and says how to fix it."""


def few(items: Iterable[object], n: int = 5) -> str:
    """'a, b, c (and 7 more)': names the first few culprits without flooding the message."""
    items = list(items)
    head = ", ".join(str(i) for i in items[:n])
    return head + (f" (and {len(items) - n} more)" if len(items) > n else "")


def shown(value: object) -> str:
    """A value as the user wrote it: numbers plain (7, not np.int64(7)), text quoted ('IV')."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def data_rows(mask: Iterable[bool]) -> str:
    """'data row(s) 4, 9 (1-based, header not counted)': the one row numbering of every table
    message (cohort tables and imported tables alike)."""
    rows = np.flatnonzero(np.asarray(list(mask), dtype=bool)) + 1
    return f"data row(s) {few(rows.tolist())} (1-based, header not counted)"


__all__ = ["ConfigError", "CohortError", "few", "data_rows", "shown"]
