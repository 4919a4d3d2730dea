"""A trial's validation curves as a small PNG, the size of MLflow's artifact preview: drawn by the
trial when it completes (study/tracking.py) or by the driver for a trial the scheduler stopped
(study/trial_callback.py)."""

from __future__ import annotations

from pathlib import Path

from study.record import parse_fold_metric


def curves_png(curves: dict[str, dict[int, float]], path: Path) -> Path:
    """Per-fold validation metric by epoch (thin lines, one per fold) and the fold mean (thick
    black): what the trial reported, readable at the size of MLflow's artifact preview."""
    # matplotlib (~0.3 s to import) only here: the one function of the study that draws
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    folds = sorted((parse_fold_metric(k), k) for k in curves if parse_fold_metric(k))
    means = [k for k in curves if not parse_fold_metric(k)]
    for (fold, _), name in folds:
        xs = sorted(curves[name])
        ax.plot(xs, [curves[name][x] for x in xs], marker=".", lw=1, alpha=0.8,
                label=f"fold {fold}")
    for name in means:
        xs = sorted(curves[name])
        ax.plot(xs, [curves[name][x] for x in xs], color="black", lw=2.2, marker="o",
                label="mean over folds")
    ax.set_xlabel("epoch")
    ax.set_ylabel(means[0] if means else "validation metric")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left",
              bbox_to_anchor=(1.01, 0.5), frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


__all__ = ["curves_png"]
