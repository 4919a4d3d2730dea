"""Number formatting for reports: as many digits as the numbers need, never a false "+0.000".

An effect is printed to 2 significant digits of its confidence-interval width (the interval says
how many digits carry information); a point value without an interval to 2 significant digits of
itself. So a difference of 1e-5 reads "+0.000010 (95% CI -0.000005 to +0.000025)", not
"+0.000 (CI +0.000 to +0.000)".
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

MAX_DECIMALS = 12


def _finite(v: object) -> bool:
    if v is None or v is pd.NA:
        return False
    try:
        return math.isfinite(float(v))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def decimals_for(*, width: float | None = None, value: float | None = None,
                 significant: int = 2, minimum: int = 0) -> int:
    """Decimals that show ``significant`` digits of ``width`` (if finite and > 0), else of
    ``value`` (if finite and != 0), else ``minimum``."""
    for ref in (width, value):
        if _finite(ref) and abs(float(ref)) > 0:  # type: ignore[arg-type]
            d = significant - 1 - math.floor(math.log10(abs(float(ref))))  # type: ignore[arg-type]
            return int(min(MAX_DECIMALS, max(minimum, d)))
    return minimum


def signed(v: object, decimals: int) -> str:
    """``+0.012`` / ``-0.012``; exactly zero prints ``0``; non-finite prints ``–``."""
    if not _finite(v):
        return "–"
    x = float(v)  # type: ignore[arg-type]
    if x == 0:
        return "0"
    return f"{x:+.{decimals}f}"


def effect(mean: object, low: object, high: object, *, level: str = "95% CI") -> str:
    """``+0.021 (95% CI +0.0048 to +0.037)`` with digits from the CI width (see module doc)."""
    if not _finite(mean):
        return "–"
    width = float(high) - float(low) if _finite(low) and _finite(high) else None  # type: ignore
    d = decimals_for(width=width, value=float(mean))  # type: ignore[arg-type]
    if float(mean) != 0:  # never a false "-0.000": at least one significant digit of the mean
        d = max(d, decimals_for(value=float(mean), significant=1))  # type: ignore[arg-type]
    if width is None:
        return signed(mean, d)
    if width == 0 and float(mean) == 0:  # type: ignore[arg-type]
        return "0 (every paired difference is exactly zero)"
    return f"{signed(mean, d)} ({level} {signed(low, d)} to {signed(high, d)})"


def interval(low: object, high: object) -> str:
    """``+0.0048 to +0.037`` with digits from the width; ``–`` when either end is missing."""
    if not (_finite(low) and _finite(high)):
        return "–"
    d = decimals_for(width=float(high) - float(low), value=float(high))  # type: ignore[arg-type]
    return f"{signed(low, d)} to {signed(high, d)}"


def value(v: object, *, decimals: int = 3) -> str:
    """A metric value (mean, sd, ...) with fixed ``decimals``; integers as integers."""
    if not _finite(v):
        return "–"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    return f"{float(v):.{decimals}f}"  # type: ignore[arg-type]


def sig(v: object, significant: int = 2) -> str:
    """``v`` to ``significant`` significant digits, in plain (non-exponent) notation."""
    if not _finite(v):
        return "–"
    x = float(v)  # type: ignore[arg-type]
    if x == 0:
        return "0"
    return f"{x:.{decimals_for(value=x, significant=significant)}f}"


def pvalue(v: object) -> str:
    """``0.034``, ``<0.001``; ``–`` when there is no p-value."""
    if not _finite(v):
        return "–"
    x = float(v)  # type: ignore[arg-type]
    return "<0.001" if x < 0.001 else f"{x:.3g}"


def p_eq(v: object) -> str:
    """``= 0.034`` / ``< 0.001`` for running text."""
    s = pvalue(v)
    return f"< {s[1:]}" if s.startswith("<") else f"= {s}"
