"""Drawing conventions shared by every figure: one style per method (colour, marker, line
style), small offsets so overlapping methods stay visible, the legend outside the data, and the
rule that a legend entry stands for an artist that was drawn (``legend_problems`` checks it).

Uses matplotlib's object API (``Figure``) with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection, PolyCollection
from matplotlib.container import Container
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
LINESTYLES = ("-", "--", "-.", ":")
#: Characters per legend line (legends sit beside the plot and must not squeeze it).
LEGEND_WIDTH = 34


@dataclass
class FigureResult:
    path: Path
    data: pd.DataFrame
    stats: dict = field(default_factory=dict)
    figure: Figure | None = None  # the drawn figure (tests walk its legends)


def proxy(handle: Artist, drawn: Artist | None) -> Artist:
    """A legend handle that stands for the artist ``drawn`` (``legend_problems`` checks it)."""
    handle.stands_for = drawn  # type: ignore[attr-defined]
    return handle


def _has_data(a: Artist) -> bool:
    if isinstance(a, Line2D):
        return len(a.get_xdata()) > 0 and a.get_visible()
    if isinstance(a, PolyCollection):  # a band: some area, not a flat line
        return any(len(p.vertices) > 2 and np.ptp(p.vertices[:, 1]) > 0 for p in a.get_paths())
    if isinstance(a, Collection):
        return len(a.get_offsets()) > 0 or len(a.get_paths()) > 0
    if isinstance(a, Container):
        return any(_has_data(c) for c in a.get_children())
    return a.get_visible()


def legend_problems(fig: Figure) -> list[str]:
    """Legend entries of ``fig`` without a drawn artist: a handle that is not an artist of the
    figure with data, or a proxy whose artist is missing or empty (e.g. a band not drawn)."""
    drawn = {id(a) for ax in fig.axes for a in ax.get_children()}
    drawn |= {id(c) for ax in fig.axes for cont in ax.containers for c in cont.get_children()}
    problems = []
    for label, handle in getattr(fig, "ks_legend", []):
        target = getattr(handle, "stands_for", handle)
        if target is None or id(target) not in drawn and not isinstance(target, Container):
            problems.append(f"{label!r}: no artist drawn")
        elif not _has_data(target):
            problems.append(f"{label!r}: its artist is empty")
    return problems


@dataclass(frozen=True)
class Style:
    colour: tuple
    marker: str
    linestyle: str


def new_figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.5, 5.0)):
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def save(fig: Figure, path: Path, *, tight: bool = False) -> Path:
    """Write ``path``; ``tight``: grow the canvas to every artist (labels drawn in data
    coordinates outside the axes, as in the CD diagram)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, **({"bbox_inches": "tight", "pad_inches": 0.15} if tight else {}))
    return path


def styles(arms: list[str]) -> dict[str, Style]:
    """Arm -> colour, marker and line style (by sorted name), the same in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {a: Style(cmap(i % 10), MARKERS[i % len(MARKERS)], LINESTYLES[i % len(LINESTYLES)])
            for i, a in enumerate(sorted(arms))}


def colours(arms: list[str]) -> dict[str, tuple]:
    """Arm -> colour (tab10, by sorted name), so a method has one colour in every figure."""
    return {a: s.colour for a, s in styles(arms).items()}


def offsets(arms: list[str], step: float) -> dict[str, float]:
    """Small symmetric offsets, one per arm (in the order given), ``step`` apart."""
    n = len(arms)
    return {a: (i - (n - 1) / 2) * step for i, a in enumerate(arms)}


def legend_outside(fig: Figure, ax, title: str | None = None, handles=None) -> None:
    """The legend to the right of the plot, never over the data."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    else:
        labels = [h.get_label() for h in handles]
    labels = ["\n".join(textwrap.wrap(lab, LEGEND_WIDTH, subsequent_indent="  ")) or lab
              for lab in labels]
    if title:
        title = "\n".join(textwrap.fill(line, LEGEND_WIDTH) for line in title.split("\n"))
    if handles:
        record_legend(fig, handles, labels)
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title=title,
                   title_fontsize=8, alignment="left")


UNIT = (0.0, 1.0)
"""The range of every task metric (AUC, accuracy, balanced accuracy, F1, C-index)."""


def keep_in_range(ax, values: np.ndarray, bounds: tuple[float, float] = UNIT) -> bool:
    """A bounded metric's axis stays within its range: when every drawn value lies within
    ``bounds``, the y limits (margins, bands) are cut to them. True when cut."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size or v.min() < bounds[0] or v.max() > bounds[1]:
        return False
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(lo, bounds[0]), min(hi, bounds[1]))
    return True


def record_legend(fig: Figure, handles: list, labels: list[str]) -> None:
    """Remember each legend entry's handle (``legend_problems``)."""
    fig.ks_legend = [*getattr(fig, "ks_legend", []), *zip(labels, handles, strict=True)]



__all__ = ["FigureResult", "Style", "styles", "colours", "offsets", "proxy", "legend_problems",
           "new_figure", "save", "legend_outside", "record_legend", "keep_in_range", "UNIT"]
