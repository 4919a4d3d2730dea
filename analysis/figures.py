"""Figures of a study (matplotlib, PNG). Each answers one question, is readable on its own (title,
axes, legend outside the data) and returns the path and the numbers it drew, so tests and the
report can use them.

Methods are told apart by colour AND marker (and line style in curves), with small x offsets so
that overlapping methods stay visible. Only completed trials enter means, curves and bands;
trials stopped early by the scheduler (ASHA) are drawn hollow and apart where they are shown.

Uses matplotlib's object API (``Figure``) with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import logging
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import Collection, PolyCollection
from matplotlib.container import Container
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.load import is_param_column, param_column, param_name
from analysis.stats import USABLE_STATUSES, full_budget, stopped_early, t_interval, usable
from study.record import Status

PARAM_LABELS = {"alpha": "α (tumour vs TME weight)", "lam": "λ (consistency weight)",
                "tau_cos": "τ_cos (cosine threshold)", "tau_rho": "τ_ρ (confidence margin)"}
LOG_PARAMS = ("lr", "weight_decay")
#: Trial parameters that are bookkeeping, not hyper-parameters (left out of fANOVA).
NOT_HYPERPARAMS = ("seed", "seeds", "folds", "task", "trial_id")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
LINESTYLES = ("-", "--", "-.", ":")
#: Characters per legend line (legends sit beside the plot and must not squeeze it).
LEGEND_WIDTH = 34
#: Bootstrap resamples of the folds behind the sensitivity bands.
BAND_BOOT = 2000


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


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.5, 5.0)):
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path, *, tight: bool = False) -> Path:
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


def _legend_outside(fig: Figure, ax, title: str | None = None, handles=None) -> None:
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
        _record(fig, handles, labels)
        fig.legend(handles, labels, loc="outside right upper", fontsize=8, title=title,
                   title_fontsize=8, alignment="left")


def _record(fig: Figure, handles: list, labels: list[str]) -> None:
    """Remember each legend entry's handle (``legend_problems``)."""
    fig.ks_legend = [*getattr(fig, "ks_legend", []), *zip(labels, handles, strict=True)]


def _finished(trials: pd.DataFrame, task: str) -> pd.DataFrame:
    """Completed trials of the task with a final value (the full budget; see stats.py)."""
    return full_budget(trials, task)


# --- per-fold paired plot -------------------------------------------------------------------

def per_fold(folds: pd.DataFrame, metric: str, task: str, arms: list[str], path: Path,
             selection: str = "selected epoch") -> FigureResult:
    """Every (seed, fold) value per method (completed trials); grey lines join the same
    (seed, fold) across methods, black diamonds are the mean, with a 95% t-interval only for a
    method with at least 6 values. Seeds are spread by small x offsets so that equal values do
    not hide each other; a bounded metric's axis stays within [0, 1]."""
    f = usable(folds[(folds["task"] == task) & folds["arm"].isin(arms)], metric)
    wide = f.pivot_table(index=["seed", "fold"], columns="arm", values=metric, aggfunc="mean")
    wide = wide.reindex(columns=[a for a in arms if a in wide.columns])
    st = styles(arms)
    fig, ax = _figure(size=(max(6.5, 1.7 * len(wide.columns) + 4.2), 5.0))
    ax = ax[0, 0]
    seeds = sorted(wide.index.get_level_values("seed").unique())
    folds_ = sorted(wide.index.get_level_values("fold").unique())
    n_pos = max(1, len(seeds) * len(folds_))
    spread = min(0.5, 0.03 * n_pos)
    pos = {key: (i - (n_pos - 1) / 2) * spread / max(1, n_pos - 1)
           for i, key in enumerate((s, k) for s in seeds for k in folds_)}
    x = np.arange(len(wide.columns))
    joins = []
    for key, row in wide.iterrows():
        joins += ax.plot(x + pos[key], row.to_numpy(dtype=float), color="0.6", alpha=0.45,
                         lw=0.9, zorder=1)
    handles, means, bars = [], [], []
    for i, arm in enumerate(wide.columns):
        v = wide[arm].to_numpy(dtype=float)
        dx = np.array([pos[k] for k in wide.index])
        handles.append(ax.scatter(i + dx, v, color=st[arm].colour, marker=st[arm].marker, s=26,
                                  zorder=2, edgecolors="white", linewidths=0.4,
                                  label=f"{arm} (n={int(np.isfinite(v).sum())})"))
        m, lo, hi = t_interval(v)  # no interval from fewer than 6 values
        cx = i + spread / 2 + 0.12
        means += ax.plot(cx, m, "D", color="black", ms=6, zorder=3)
        if np.isfinite(lo):
            bars.append(ax.errorbar(cx, m, yerr=[[m - lo], [hi - m]], fmt="none",
                                    color="black", capsize=4, zorder=3))
    if means:
        handles.append(proxy(Line2D([], [], marker="D", color="black", linestyle="none",
                                    label="mean" + (" ± 95% t-interval (methods with ≥ 6 "
                                                    "values)" if bars else "")), means[0]))
    if bars:
        handles.append(proxy(Line2D([], [], color="black", label="95% t-interval of the mean"),
                             bars[0]))
    if len(wide.columns) > 1 and joins:
        handles.append(proxy(Line2D([], [], color="0.6", label="same (seed, fold)"), joins[0]))
    values = wide.to_numpy(dtype=float)
    if np.isfinite(values).any() and np.nanmin(values) >= 0 and np.nanmax(values) <= 1:
        # a bounded metric (auc, accuracy, c-index): the axis stays within its range
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, 0.0), min(hi, 1.0))
    ax.set_xticks(x, list(wide.columns))
    ax.set_xlim(-0.6, len(wide.columns) - 0.4)
    ax.set_xlabel("method")
    ax.set_ylabel(f"validation {metric} ({selection} of each fold)")
    ax.set_title(f"{task}: {metric} per fold and seed, by method (completed trials)")
    ax.grid(axis="y", alpha=0.3)
    _legend_outside(fig, ax, handles=[h for h in handles if not h.get_label().startswith("_")])
    return FigureResult(_save(fig, path), wide.reset_index(),
                        {"ylim": ax.get_ylim(), "intervals": len(bars)}, figure=fig)


# --- sensitivity ----------------------------------------------------------------------------

def _bins(x: np.ndarray, log: bool) -> np.ndarray:
    """Bin index per value: one bin per distinct value when there are few, else quantile bins."""
    uniq = np.unique(x)
    if uniq.size <= 8:
        return np.searchsorted(uniq, x)
    z = np.log10(x) if log else x
    n_bins = int(min(8, max(3, x.size // 4)))
    edges = np.unique(np.quantile(z, np.linspace(0, 1, n_bins + 1)))
    return np.clip(np.searchsorted(edges, z, side="right") - 1, 0, edges.size - 2)


def varying_numeric(trials: pd.DataFrame, params: tuple[str, ...],
                    min_distinct: int = 3) -> list[str]:
    """The numeric (non-bool) params among ``params`` that take ``min_distinct`` or more values."""
    out = []
    for p in params:
        col = trials.get(param_column(p))
        if (col is not None and pd.api.types.is_numeric_dtype(col)
                and not pd.api.types.is_bool_dtype(col) and col.dropna().nunique() >= min_distinct):
            out.append(p)
    return out


def fold_bootstrap_band(values: np.ndarray, *, n_boot: int = BAND_BOOT, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a bin's mean, resampling folds.

    ``values``: trials × folds (NaN = missing). Each resample draws K fold ids with replacement
    (``rng.integers(0, K, size=(n_boot, K))``, the same draw for every trial of the bin, because
    the folds are the same patients for all of them); the statistic is the mean over trials of
    each trial's mean over the drawn folds. NaN when fewer than two folds have values.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] < 2 or np.isfinite(v).sum(axis=0).astype(bool).sum() < 2:
        return np.nan, np.nan
    v = v[:, np.isfinite(v).any(axis=0)]
    k = v.shape[1]
    idx = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stat = np.nanmean(np.nanmean(v[:, idx], axis=2), axis=0)
    lo, hi = np.nanquantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def sensitivity(trials: pd.DataFrame, folds: pd.DataFrame, metric: str, task: str, param: str,
                path: Path, *, n_boot: int = BAND_BOOT, seed: int = 0) -> FigureResult:
    """Final metric against one parameter.

    Completed trials: filled markers, and per method a binned mean (one bin per distinct value
    when there are at most 8, else quantile bins) with a 95% percentile-bootstrap band over folds
    (``fold_bootstrap_band``). Trials stopped early by the scheduler: hollow markers at their last
    value, never in the binned mean or band (they were judged after fewer epochs).
    ``data``: one row per (arm, bin); ``stats["stopped"]``: the hollow points."""
    col = param_column(param)
    t = _finished(trials, task)
    t = t[t[col].notna()] if col in t else t.iloc[0:0]
    stop = stopped_early(trials, task)
    stop = stop[stop[col].notna() & np.isfinite(stop["final"].astype(float))] \
        if col in stop else stop.iloc[0:0]
    arms = sorted(set(t["arm"]) | set(stop["arm"]))
    st = styles(arms)
    x_all = np.concatenate([t[col].to_numpy(dtype=float), stop[col].to_numpy(dtype=float)])
    log = bool(param in LOG_PARAMS or (x_all.size and x_all.min() > 0
                                       and x_all.max() / x_all.min() > 100))
    span = (np.log10(x_all.max()) - np.log10(x_all.min())) if log and x_all.size else (
        x_all.max() - x_all.min() if x_all.size else 1.0)
    dx = offsets(arms, 0.012 * (span or 1.0)) if len(arms) > 1 else {a: 0.0 for a in arms}

    def shift(x: np.ndarray, arm: str) -> np.ndarray:
        return x * 10 ** dx[arm] if log else x + dx[arm]

    f = folds[(folds["task"] == task)] if metric in folds else folds.iloc[0:0]
    per_fold = (f[f["run_id"].isin(t["run_id"])].pivot_table(
        index="run_id", columns="fold", values=metric, aggfunc="mean")
        if len(f) else pd.DataFrame())
    fig, ax = _figure(size=(9.0, 4.8))
    ax = ax[0, 0]
    rows, bands, handles = [], [], []
    for arm in arms:
        s = st[arm]
        a = t[t["arm"] == arm]
        x = a[col].to_numpy(dtype=float)
        y = a["final"].to_numpy(dtype=float)
        if x.size:
            ax.scatter(shift(x, arm), y, color=s.colour, marker=s.marker, alpha=0.35, s=18,
                       linewidths=0)
            b = _bins(x, log)
            centre, mean, lo, hi = [], [], [], []
            for k in np.unique(b):
                sel = b == k
                xs, ys = x[sel], y[sel]
                ids = a["run_id"].to_numpy()[sel]
                vals = (per_fold.reindex(ids).to_numpy(dtype=float) if len(per_fold)
                        else np.empty((len(ids), 0)))
                l_, h_ = fold_bootstrap_band(vals, n_boot=n_boot, seed=seed)
                c = float(10 ** np.log10(xs).mean()) if log else float(xs.mean())
                centre.append(c)
                mean.append(float(ys.mean()))
                lo.append(l_)
                hi.append(h_)
                rows.append({"param": param, "arm": arm, "x_low": xs.min(), "x_high": xs.max(),
                             "x_centre": c, "n": xs.size, "mean": float(ys.mean()),
                             "band_low": l_, "band_high": h_,
                             "n_folds": int(vals.shape[1]) if vals.ndim == 2 else 0})
            cx = shift(np.asarray(centre), arm)
            line, = ax.plot(cx, mean, color=s.colour, marker=s.marker, linestyle=s.linestyle,
                            ms=5, lw=1.6, zorder=3)
            lo_a, hi_a = np.asarray(lo), np.asarray(hi)
            ok = np.isfinite(lo_a) & np.isfinite(hi_a)
            if ok.sum() >= 2:  # a band needs two bins; one bin gets an error bar
                bands.append(ax.fill_between(cx[ok], lo_a[ok], hi_a[ok], color=s.colour,
                                             alpha=0.15, lw=0))
            elif ok.sum() == 1:
                m_ = np.asarray(mean)[ok]
                bands.append(ax.errorbar(cx[ok], m_, yerr=[m_ - lo_a[ok], hi_a[ok] - m_],
                                         fmt="none", color=s.colour, alpha=0.5, capsize=3))
            handles.append(proxy(Line2D([], [], color=s.colour, marker=s.marker,
                                        linestyle=s.linestyle,
                                        label=f"{arm}: {x.size} completed trials, binned mean"),
                                 line))
        sa = stop[stop["arm"] == arm]
        if len(sa):
            hollow = ax.scatter(shift(sa[col].to_numpy(dtype=float), arm),
                                sa["final"].to_numpy(dtype=float), facecolors="none",
                                edgecolors=s.colour, marker=s.marker, s=30, linewidths=1.1,
                                zorder=2)
            epochs = sa["epochs_run"].astype(float)
            when = (f" after ≤ {int(epochs.max())} epochs" if np.isfinite(epochs).any() else "")
            handles.append(proxy(Line2D([], [], color=s.colour, marker=s.marker,
                                        linestyle="none", markerfacecolor="none",
                                        label=f"{arm}: {len(sa)} stopped early by ASHA{when} "
                                              f"(last value; not in the mean)"), hollow))
    any_band = bool(bands)
    if any_band:
        handles.append(proxy(Patch(color="0.5", alpha=0.3,
                                   label=f"band: 95% bootstrap interval of the bin mean "
                                         f"(folds resampled, B={n_boot})"), bands[0]))
        title = "dots: completed trials"
    else:
        title = "dots: completed trials; no band (per-fold values not logged)"
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(PARAM_LABELS.get(param, param))
    ax.set_ylabel(f"final {metric} (mean over folds)")
    ax.set_title(f"{task}: sensitivity to {param}")
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax, title=title, handles=handles)
    stopped = stop[["run_id", "arm", col, "final", "epochs_run"]].rename(
        columns={col: "x"}).reset_index(drop=True)
    return FigureResult(_save(fig, path), pd.DataFrame(rows),
                        {"stopped": stopped, "band": any_band,
                         "legend": [title, *(h.get_label() for h in handles)]}, figure=fig)


# --- optimisation history -------------------------------------------------------------------

def history(trials: pd.DataFrame, metric: str, task: str, path: Path) -> FigureResult:
    """Trial value in start order with the best-so-far line over completed trials (metric
    maximised); trials stopped early are hollow and do not move the best-so-far line. Only for
    searches: in a grid the order of trials carries no information."""
    t = trials[trials["task"] == task].sort_values(["start_time", "trial_id"], kind="stable")
    t = t.reset_index(drop=True)
    t["number"] = np.arange(1, len(t) + 1)
    finite = np.isfinite(t["final"].astype(float))
    ok = t["status"].isin(USABLE_STATUSES) & finite
    done_all = (t["status"] == Status.COMPLETED) & finite
    vals = t["final"].where(ok).to_numpy(dtype=float)
    best = pd.Series(t["final"].where(done_all).to_numpy(dtype=float)).cummax().ffill()
    best = best.to_numpy()
    fig, ax = _figure(size=(9.0, 4.8))
    ax = ax[0, 0]
    arms = sorted(t["arm"].unique())
    st = styles(arms)
    for arm in arms:
        sel = ok & (t["arm"] == arm)
        done = sel & (t["status"] == Status.COMPLETED)
        stop = sel & (t["status"] == Status.STOPPED_EARLY)
        if done.any():
            ax.scatter(t.loc[done, "number"], t.loc[done, "final"], color=st[arm].colour,
                       marker=st[arm].marker, s=24, label=f"{arm} (completed)")
        if stop.any():
            ax.scatter(t.loc[stop, "number"], t.loc[stop, "final"], facecolors="none",
                       edgecolors=st[arm].colour, marker=st[arm].marker, s=24,
                       label=f"{arm} (stopped early by ASHA: last value)")
    ax.step(t["number"], best, where="post", color="black", lw=1.5,
            label="best completed so far")
    failed = t.loc[~ok, "number"]
    if len(failed):
        ax.plot(failed, np.full(len(failed), np.nanmin(vals) if ok.any() else 0.0), "x",
                color="red", label=f"failed / no value ({len(failed)})")
    ax.set_xlabel("trial (in start order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"final {metric} (mean over folds)")
    ax.set_title(f"{task}: optimisation history")
    ax.grid(alpha=0.3)
    _legend_outside(fig, ax)
    data = pd.DataFrame({"number": t["number"], "run_id": t["run_id"], "arm": t["arm"],
                         "status": t["status"], "value": vals, "best_so_far": best})
    return FigureResult(_save(fig, path), data, figure=fig)


# --- parameter importance -------------------------------------------------------------------

def infer_distributions(params: pd.DataFrame) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions from observed values: bool/str -> categorical, int -> IntDistribution,
    float -> FloatDistribution (log for lr / weight_decay or a positive span > 2 decades).
    Columns are param names (no ``params.`` prefix); constant columns are skipped."""
    D = optuna.distributions
    out: dict[str, D.BaseDistribution] = {}
    for name in params.columns:
        s = params[name].dropna()
        if s.nunique() < 2:
            continue
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            choices = sorted({(bool(v) if isinstance(v, (bool, np.bool_)) else str(v))
                              for v in s}, key=str)
            out[name] = D.CategoricalDistribution(choices)
        elif pd.api.types.is_integer_dtype(s):
            out[name] = D.IntDistribution(int(s.min()), int(s.max()))
        else:
            lo, hi = float(s.min()), float(s.max())
            log = lo > 0 and (name in LOG_PARAMS or hi / lo > 100)
            out[name] = D.FloatDistribution(lo, hi, log=log)
    return out


def _param_value(dist: optuna.distributions.BaseDistribution, v: object) -> object:
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return bool(v) if isinstance(v, (bool, np.bool_)) else str(v)
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(v)
    return float(v)


def rebuild_study(trials: pd.DataFrame, task: str,
                  params: list[str] | None = None) -> optuna.Study:
    """An in-memory Optuna study of the task's completed trials (value = final metric), over
    ``params`` (default: every logged param except bookkeeping ones such as seed). Trials
    stopped early by the scheduler are left out: their values come from fewer epochs."""
    t = _finished(trials, task)
    pcols = [c for c in t.columns if is_param_column(c)
             and param_name(c) not in NOT_HYPERPARAMS and t[c].notna().all()
             and (params is None or param_name(c) in params)]
    params = t[pcols].rename(columns=param_name)
    dists = infer_distributions(params)
    optuna.logging.set_verbosity(logging.WARNING)
    study = optuna.create_study(direction="maximize")
    frozen = [optuna.trial.create_trial(
        value=float(v), distributions=dists,
        params={k: _param_value(d, row[k]) for k, d in dists.items()})
        for (_, row), v in zip(params.iterrows(), t["final"], strict=True)]
    study.add_trials(frozen)
    return study


def importance(trials: pd.DataFrame, metric: str, task: str, path: Path, seed: int = 0,
               params: list[str] | None = None) -> FigureResult | None:
    """fANOVA importance of every varying hyper-parameter (of ``params`` if given); None when
    fewer than 2 vary."""
    study = rebuild_study(trials, task, params)
    if not study.trials or len(study.trials[0].distributions) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed))
    data = pd.DataFrame({"param": list(imp), "importance": list(imp.values())})
    fig, ax = _figure(size=(7.0, 0.45 * len(data) + 1.8))
    ax = ax[0, 0]
    d = data.iloc[::-1]
    ax.barh(d["param"], d["importance"], color="tab:blue")
    for y, v in enumerate(d["importance"]):
        ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
    ax.set_xlabel("fANOVA importance (share of explained variance, sums to 1)")
    ax.set_ylabel("hyper-parameter")
    ax.set_title(f"{task}: parameter importance for final {metric}\n"
                 f"({len(study.trials)} completed trials; trials stopped early left out)",
                 fontsize=10)
    ax.set_xlim(0, max(1.0, float(data["importance"].max()) * 1.15))
    return FigureResult(_save(fig, path), data, figure=fig)


# --- Kaplan-Meier ---------------------------------------------------------------------------

def risk_groups(pred: pd.DataFrame) -> pd.Series:
    """'high' where risk > the median risk of its fold (per seed), else 'low'."""
    keys = [k for k in ("seed", "fold") if k in pred]
    med = pred.groupby(keys)["risk"].transform("median") if keys else pred["risk"].median()
    return pd.Series(np.where(pred["risk"] > med, "high", "low"), index=pred.index, name="group")


def kaplan_meier(predictions: dict[str, pd.DataFrame], task: str, path: Path,
                 labels: dict[str, str] | None = None) -> FigureResult:
    """KM curves of high vs low predicted risk (median split per fold, pooled), one panel per
    method, with the log-rank p (lifelines) on each panel; stats[arm] holds p and counts.
    ``labels``: optional arm -> which run the predictions came from (shown in the panel title)."""
    labels = labels or {}
    arms = list(predictions)
    ncols = min(3, len(arms))
    nrows = int(np.ceil(len(arms) / ncols))
    fig, axes = _figure(nrows, ncols, size=(5.0 * ncols, 4.3 * nrows))
    frames, stats = [], {}
    for i, arm in enumerate(arms):
        ax = axes[i // ncols, i % ncols]
        pred = predictions[arm].copy()
        pred["group"] = risk_groups(pred)
        pred.insert(0, "arm", arm)
        frames.append(pred)
        hi, lo = pred[pred["group"] == "high"], pred[pred["group"] == "low"]
        if hi.empty or lo.empty:  # every risk equal: nothing to split
            stats[arm] = {"logrank_p": np.nan, "test_statistic": np.nan, "n_high": len(hi),
                          "n_low": len(lo), "events_high": int(hi["event"].sum()),
                          "events_low": int(lo["event"].sum())}
            ax.text(0.5, 0.5, f"{arm}: all predicted risks are equal;\nno high/low split",
                    ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        res = logrank_test(hi["time"], lo["time"], event_observed_A=hi["event"],
                           event_observed_B=lo["event"])
        stats[arm] = {"logrank_p": float(res.p_value), "test_statistic": float(res.test_statistic),
                      "n_high": len(hi), "n_low": len(lo), "events_high": int(hi["event"].sum()),
                      "events_low": int(lo["event"].sum())}
        for name, g, colour, ls in (("high risk", hi, "tab:red", "--"),
                                    ("low risk", lo, "tab:blue", "-")):
            kmf = KaplanMeierFitter().fit(g["time"], g["event"], label=name)
            sf = kmf.survival_function_
            ci = kmf.confidence_interval_
            ax.step(sf.index, sf.iloc[:, 0], where="post", color=colour, linestyle=ls,
                    label=f"{name} (n={len(g)}, events={int(g['event'].sum())})")
            ax.fill_between(ci.index, ci.iloc[:, 0], ci.iloc[:, 1], step="post", color=colour,
                            alpha=0.15)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("time (days)")
        ax.set_ylabel("survival probability")
        ax.set_title(f"{task} — {arm}: predicted-risk groups, log-rank p = {res.p_value:.3g}"
                     + (f"\n{labels[arm]}" if arm in labels else ""), fontsize=10)
        handles, labels = ax.get_legend_handles_labels()
        _record(fig, handles, labels)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
                  frameon=False)
        ax.grid(alpha=0.3)
    for j in range(len(arms), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    fig.suptitle("Kaplan–Meier by predicted risk (split at each fold's median risk, pooled)",
                 fontsize=10)
    return FigureResult(_save(fig, path), pd.concat(frames, ignore_index=True), stats,
                        figure=fig)


# --- per-epoch curves -----------------------------------------------------------------------

def _epoch_bands(hist: pd.DataFrame) -> pd.DataFrame:
    g = hist.groupby(["arm", "key", "step"])["value"]
    out = g.agg(mean="mean", sd=lambda v: v.std(ddof=1) if len(v) > 1 else 0.0, n="size")
    return out.reset_index()


def epoch_curves(hist: pd.DataFrame, keys: list[tuple[str, str]], task: str, title: str,
                 path: Path) -> FigureResult:
    """Mean over runs per method and epoch, with a ± 1 SD band for methods with at least 2 runs
    (and a legend entry for the band only when one is drawn); one panel per (key, label).
    Methods differ in colour, marker and line style and are offset by a few hundredths of an
    epoch, so identical curves stay visible."""
    bands = _epoch_bands(hist)
    arms = sorted(bands["arm"].unique())
    st = styles(arms)
    dx = offsets(arms, 0.06)
    fig, axes = _figure(1, len(keys), size=(5.6 * len(keys) + 2.6, 4.5))
    handles, drawn = {}, []
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        sub = bands[bands["key"] == key]
        for arm in arms:
            a = sub[sub["arm"] == arm].sort_values("step")
            if a.empty:
                continue
            n_runs = hist[(hist["arm"] == arm) & (hist["key"] == key)]["run_id"].nunique()
            x = a["step"].to_numpy(dtype=float) + dx[arm]
            s = st[arm]
            line, = ax.plot(x, a["mean"], color=s.colour, marker=s.marker,
                            linestyle=s.linestyle, ms=4, label=f"{arm} ({n_runs} runs)")
            handles.setdefault(arm, line)
            if n_runs >= 2 and len(x) >= 2 and (a["sd"] > 0).any():
                drawn.append(ax.fill_between(x, a["mean"] - a["sd"], a["mean"] + a["sd"],
                                             color=s.colour, alpha=0.12, lw=0))
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{task}: {label}" + (f"\n{title}" if len(keys) == 1 else ""),
                     fontsize=10)
        ax.grid(alpha=0.3)
    legend = list(handles.values())
    if drawn:
        legend.append(proxy(Patch(color="0.5", alpha=0.25, label="band: ± 1 SD over runs "
                                  "(methods with ≥ 2 runs)"), drawn[0]))
    _legend_outside(fig, axes[0, 0], title="line: mean over runs", handles=legend)
    if len(keys) > 1:
        fig.suptitle(title, fontsize=10)
    return FigureResult(_save(fig, path), bands, {"bands": len(drawn)}, figure=fig)


# --- critical-difference diagram ------------------------------------------------------------

def cd_diagram(result, path: Path) -> FigureResult:
    """Mean ranks (1 = best) of the methods over the complete (seed, fold) blocks, drawn by
    scikit-posthocs: a thick bar joins methods the Nemenyi test does not separate (p ≥ α), and
    the CD bar shows the critical difference of mean ranks. ``result``: multi.Friedman."""
    import scikit_posthocs as sp

    ranks = result.mean_ranks
    st = styles(list(ranks.index))
    fig, ax = _figure(size=(8.0, 0.42 * len(ranks) + 2.4))
    ax = ax[0, 0]
    sp.critical_difference_diagram(
        ranks, result.posthoc, ax=ax, alpha=result.alpha,
        cd=result.cd if np.isfinite(result.cd) else None,
        color_palette={a: st[a].colour for a in ranks.index},
        label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}")
    # the whole rank scale 1..k, so that close ranks look close (the package zooms to the data)
    k = len(ranks)
    lo, hi = ax.get_xlim()
    ax.set_xlim(min(lo, 1.0), max(hi, float(k)))
    ax.set_xticks(np.arange(1, k + 1))
    p = "–" if not np.isfinite(result.p) else (
        "< 0.001" if result.p < 0.001 else f"= {result.p:.3g}")
    ax.set_title(
        f"{result.task}: mean rank of {result.metric} (1 = best) over {result.n_blocks} "
        f"complete (seed, fold) blocks\nFriedman χ² = {result.statistic:.3g}, p {p}; bars join "
        f"methods Nemenyi does not separate (α = {result.alpha:g})", fontsize=9, pad=28)
    data = pd.DataFrame({"arm": ranks.index, "mean_rank": ranks.to_numpy()})
    return FigureResult(_save(fig, path, tight=True), data, {"cd": result.cd}, figure=fig)
