"""The figures of a search: how the final metric depends on each searched parameter
(sensitivity: one panel per parameter, a fold-bootstrap band only from enough folds), the
optimisation history, and fANOVA parameter importance. Only completed trials enter means, bands
and importance; trials stopped early by the scheduler (ASHA) are drawn hollow and apart.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.load import is_param_column, param_column, param_name
from analysis.plotting import (
    FigureResult,
    keep_in_range,
    legend_outside,
    new_figure,
    offsets,
    proxy,
    save,
    styles,
)
from analysis.stats import MIN_PAIRS_INTERVAL, USABLE_STATUSES, full_budget, stopped_early
from study.record import Status

#: Axis labels of well-known parameters (any other parameter is labelled by its name).
PARAM_LABELS = {"alpha": "α (tumour vs TME weight)", "lam": "λ (consistency weight)",
                "tau_cos": "τ_cos (cosine threshold)", "tau_rho": "τ_ρ (confidence margin)",
                "lr": "learning rate", "weight_decay": "weight decay",
                "cagrad_c": "CAGrad c (conflict-averse radius)",
                "ogm_alpha": "OGM-GE α (modulation strength)",
                "ogm_noise": "OGM-GE noise scale"}
LOG_PARAMS = ("lr", "weight_decay")
#: Trial parameters that are bookkeeping, not hyper-parameters (left out of fANOVA).
NOT_HYPERPARAMS = ("seed", "seeds", "folds", "task", "trial_id")
#: Bootstrap resamples of the folds behind the sensitivity bands.
BAND_BOOT = 2000
#: Folds a sensitivity band needs (as any interval of the report: analysis/stats.py).
MIN_FOLDS_BAND = MIN_PAIRS_INTERVAL


def _finished(trials: pd.DataFrame, task: str) -> pd.DataFrame:
    """Completed trials of the task with a final value (the full budget; see stats.py)."""
    return full_budget(trials, task)


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


def is_numeric_param(values: pd.Series) -> bool:
    """A parameter drawn on a numeric axis (numbers, not booleans); others are categorical."""
    return bool(pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values))


def varying_numeric(trials: pd.DataFrame, params: tuple[str, ...],
                    min_distinct: int = 3) -> list[str]:
    """The numeric (non-bool) params among ``params`` that take ``min_distinct`` or more values."""
    out = []
    for p in params:
        col = trials.get(param_column(p))
        if col is not None and is_numeric_param(col) and col.dropna().nunique() >= min_distinct:
            out.append(p)
    return out


def fold_bootstrap_band(values: np.ndarray, *, n_boot: int = BAND_BOOT, level: float = 0.95,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a bin's mean, resampling folds.

    ``values``: trials × folds (NaN = missing). Each resample draws K fold ids with replacement
    (``rng.integers(0, K, size=(n_boot, K))``, the same draw for every trial of the bin, because
    the folds are the same patients for all of them); the statistic is the mean over trials of
    each trial's mean over the drawn folds. NaN when fewer than ``MIN_FOLDS_BAND`` folds have
    values: a resample of 5 folds or fewer is little more than the folds themselves.
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or np.isfinite(v).any(axis=0).sum() < MIN_FOLDS_BAND:
        return np.nan, np.nan
    v = v[:, np.isfinite(v).any(axis=0)]
    k = v.shape[1]
    idx = np.random.default_rng(seed).integers(0, k, size=(n_boot, k))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        stat = np.nanmean(np.nanmean(v[:, idx], axis=2), axis=0)
    lo, hi = np.nanquantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


@dataclass
class _Drawn:
    """What the panels drew per arm, for legend entries that stand for a drawn artist."""

    line: dict[str, Artist] = field(default_factory=dict)
    hollow: dict[str, Artist] = field(default_factory=dict)
    band: list[Artist] = field(default_factory=list)


def _param_values(frame: pd.DataFrame, col: str, numeric: bool) -> np.ndarray:
    return frame[col].to_numpy(dtype=float) if numeric else frame[col].astype(str).to_numpy()


def _panel(ax, param: str, done: pd.DataFrame, stop: pd.DataFrame, per_fold: pd.DataFrame,
           arms: list[str], drawn: _Drawn, n_boot: int, seed: int) -> list[dict]:
    """One parameter's panel: completed trials as dots with the mean per bin (numeric) or per
    value (categorical), a band only from enough folds; stopped trials hollow, apart."""
    col = param_column(param)
    done = done[done[col].notna()] if col in done else done.iloc[0:0]
    stop = stop[stop[col].notna()] if col in stop else stop.iloc[0:0]
    both = pd.concat([done[col], stop[col]])
    numeric = is_numeric_param(both.infer_objects())
    st = styles(arms)
    if numeric:
        x_all = both.to_numpy(dtype=float)
        log = bool(param in LOG_PARAMS or (x_all.size and x_all.min() > 0
                                           and x_all.max() / x_all.min() > 100))
        span = (np.log10(x_all.max()) - np.log10(x_all.min())) if log and x_all.size else (
            x_all.max() - x_all.min() if x_all.size else 1.0)
        dx = offsets(arms, 0.012 * (span or 1.0)) if len(arms) > 1 else {a: 0.0 for a in arms}
        levels: list[str] = []
    else:
        log = False
        levels = sorted(both.astype(str).unique())
        dx = offsets(arms, 0.08) if len(arms) > 1 else {a: 0.0 for a in arms}

    def where(x: np.ndarray, arm: str) -> np.ndarray:
        if not numeric:
            return np.searchsorted(levels, x).astype(float) + dx[arm]
        return x * 10 ** dx[arm] if log else x + dx[arm]

    rows = []
    for arm in arms:
        s = st[arm]
        a = done[done["arm"] == arm]
        x = _param_values(a, col, numeric)
        y = a["final"].to_numpy(dtype=float)
        if x.size:
            ax.scatter(where(x, arm), y, color=s.colour, marker=s.marker, alpha=0.35, s=18,
                       linewidths=0)
            b = _bins(x, log) if numeric else np.searchsorted(levels, x)
            centre, mean, lo, hi = [], [], [], []
            for k in np.unique(b):
                sel = b == k
                xs, ys = x[sel], y[sel]
                ids = a["run_id"].to_numpy()[sel]
                vals = (per_fold.reindex(ids).to_numpy(dtype=float) if len(per_fold)
                        else np.empty((len(ids), 0)))
                l_, h_ = fold_bootstrap_band(vals, n_boot=n_boot, seed=seed)
                if numeric:
                    c = float(10 ** np.log10(xs).mean()) if log else float(xs.mean())
                    low, high, level = float(xs.min()), float(xs.max()), (
                        f"{xs.min():.4g}" if xs.min() == xs.max()
                        else f"{xs.min():.4g} to {xs.max():.4g}")
                else:
                    c, low, high, level = np.nan, np.nan, np.nan, str(xs[0])
                centre.append(c if numeric else xs[0])
                mean.append(float(ys.mean()))
                lo.append(l_)
                hi.append(h_)
                rows.append({"param": param, "arm": arm, "level": level, "x_low": low,
                             "x_high": high, "x_centre": c, "n": xs.size,
                             "mean": float(ys.mean()), "band_low": l_, "band_high": h_,
                             "n_folds": int(np.isfinite(vals).any(axis=0).sum())
                             if vals.ndim == 2 else 0})
            cx = where(np.asarray(centre, dtype=float if numeric else str), arm)
            line, = ax.plot(cx, mean, color=s.colour, marker=s.marker,
                            linestyle=s.linestyle if numeric else "none", ms=6, lw=1.6,
                            zorder=3)
            drawn.line.setdefault(arm, line)
            lo_a, hi_a = np.asarray(lo), np.asarray(hi)
            ok = np.isfinite(lo_a) & np.isfinite(hi_a)
            if numeric and ok.sum() >= 2:  # a band needs two bins; else error bars
                drawn.band.append(ax.fill_between(cx[ok], lo_a[ok], hi_a[ok], color=s.colour,
                                                  alpha=0.15, lw=0))
            elif ok.any():
                m_ = np.asarray(mean)[ok]
                drawn.band.append(ax.errorbar(cx[ok], m_, yerr=[m_ - lo_a[ok], hi_a[ok] - m_],
                                              fmt="none", color=s.colour, alpha=0.5,
                                              capsize=3))
        sa = stop[stop["arm"] == arm]
        if len(sa):
            hollow = ax.scatter(where(_param_values(sa, col, numeric), arm),
                                sa["final"].to_numpy(dtype=float), facecolors="none",
                                edgecolors=s.colour, marker=s.marker, s=30, linewidths=1.1,
                                zorder=2)
            drawn.hollow.setdefault(arm, hollow)
    if numeric and log:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(levels)), levels)
        ax.set_xlim(-0.6, len(levels) - 0.4)
    ax.set_xlabel(PARAM_LABELS.get(param, param) + ("" if numeric else " (categorical)"))
    ax.set_title(f"{param}: {len(done)} completed"
                 + (f", {len(stop)} stopped" if len(stop) else ""), fontsize=9)
    ax.grid(alpha=0.3)
    return rows


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def sensitivity(trials: pd.DataFrame, folds: pd.DataFrame, metric: str, task: str,
                params: str | Sequence[str], path: Path, *, n_boot: int = BAND_BOOT,
                seed: int = 0) -> FigureResult:
    """Final metric against each parameter of ``params``: one panel per parameter, sharing the
    metric axis, so the parameter that moves the result shows beside those that do not.

    Completed trials: filled dots, and per method the mean per bin (numeric: one bin per
    distinct value when there are at most 8, else quantile bins; categorical: per value). A 95%
    percentile-bootstrap band over folds (``fold_bootstrap_band``) only when at least
    ``MIN_FOLDS_BAND`` folds have values; with fewer the dots and means stand alone. Trials
    stopped early by the scheduler: hollow markers at their last value, never in the means or
    bands (they were judged after fewer epochs). ``data``: one row per (parameter, arm, bin);
    ``stats["stopped"]``: the hollow points; ``stats["panels"]``: the parameters drawn."""
    params = [params] if isinstance(params, str) else list(params)
    done = _finished(trials, task)
    stop = stopped_early(trials, task)
    stop = stop[np.isfinite(stop["final"].astype(float))]
    arms = sorted(set(done["arm"]) | set(stop["arm"]))
    f = folds[(folds["task"] == task)] if metric in folds else folds.iloc[0:0]
    per_fold = (f[f["run_id"].isin(done["run_id"])].pivot_table(
        index="run_id", columns="fold", values=metric, aggfunc="mean")
        if len(f) else pd.DataFrame())
    n_folds = int(per_fold.notna().any(axis=0).sum()) if len(per_fold) else 0
    ncols = min(3, len(params))
    nrows = int(np.ceil(len(params) / ncols))
    fig, axes = new_figure(nrows, ncols, size=(4.3 * ncols + 3.2, 3.9 * nrows + 0.6))
    for ax in axes.flat[1:]:
        ax.sharey(axes.flat[0])
    drawn, rows = _Drawn(), []
    for i, p in enumerate(params):
        rows += _panel(axes.flat[i], p, done, stop, per_fold, arms, drawn, n_boot, seed)
        if i % ncols == 0:
            axes.flat[i].set_ylabel(f"final {metric} (mean over folds)")
    for ax in axes.flat[len(params):]:
        ax.set_visible(False)
    shown = np.concatenate([done["final"].to_numpy(dtype=float),
                            stop["final"].to_numpy(dtype=float)])
    keep_in_range(axes.flat[0], shown)
    handles = []
    for arm in arms:
        s = styles(arms)[arm]
        n_done, n_stop = int((done["arm"] == arm).sum()), int((stop["arm"] == arm).sum())
        if arm in drawn.line:
            handles.append(proxy(Line2D([], [], color=s.colour, marker=s.marker,
                                        linestyle=s.linestyle,
                                        label=f"{arm}: {_count(n_done, 'completed trial')} "
                                              f"(dots), mean per bin (line)"), drawn.line[arm]))
        if arm in drawn.hollow:
            epochs = stop.loc[stop["arm"] == arm, "epochs_run"].astype(float)
            when = (f" after ≤ {_count(int(epochs.max()), 'epoch')}"
                    if np.isfinite(epochs).any() else "")
            handles.append(proxy(Line2D([], [], color=s.colour, marker=s.marker,
                                        linestyle="none", markerfacecolor="none",
                                        label=f"{arm}: {n_stop} stopped early by ASHA{when} "
                                              f"(last value; not in the mean)"),
                                 drawn.hollow[arm]))
    if drawn.band:
        handles.append(proxy(Patch(color="0.5", alpha=0.3,
                                   label=f"band: 95% bootstrap interval of the bin mean "
                                         f"(folds resampled, B={n_boot})"), drawn.band[0]))
        title = "dots: completed trials"
    elif n_folds:
        title = (f"dots: completed trials; no band: {n_folds} folds (an interval needs "
                 f"≥ {MIN_FOLDS_BAND})")
    else:
        title = "dots: completed trials; no band (per-fold values not logged)"
    fig.suptitle(f"{task}: final {metric} against each searched parameter "
                 f"({len(params)} panel{'' if len(params) == 1 else 's'})", fontsize=10)
    legend_outside(fig, axes.flat[0], title=title, handles=handles)
    col = {p: param_column(p) for p in params}
    stopped = pd.concat([stop.loc[stop[col[p]].notna(), ["run_id", "arm", col[p], "final",
                                                           "epochs_run"]]
                         .rename(columns={col[p]: "x"}).assign(param=p)
                         for p in params if col[p] in stop], ignore_index=True) \
        if any(col[p] in stop for p in params) else pd.DataFrame(
            columns=["run_id", "arm", "x", "final", "epochs_run", "param"])
    return FigureResult(save(fig, path), pd.DataFrame(rows),
                        {"stopped": stopped, "band": bool(drawn.band), "panels": params,
                         "n_stopped": len(stop),
                         "n_folds": n_folds, "ylim": axes.flat[0].get_ylim(),
                         "legend": [title, *(h.get_label() for h in handles)]}, figure=fig)


# --- optimisation history -------------------------------------------------------------------

def history(trials: pd.DataFrame, metric: str, task: str, path: Path, *,
            mode: str = "max") -> FigureResult:
    """Trial value in start order with the best-so-far line over completed trials (in the
    study's direction ``mode``); trials stopped early are hollow and do not move the
    best-so-far line. Only for searches: in a grid the order of trials carries no
    information."""
    t = trials[trials["task"] == task].sort_values(["start_time", "trial_id"], kind="stable")
    t = t.reset_index(drop=True)
    t["number"] = np.arange(1, len(t) + 1)
    finite = np.isfinite(t["final"].astype(float))
    ok = t["status"].isin(USABLE_STATUSES) & finite
    done_all = (t["status"] == Status.COMPLETED) & finite
    vals = t["final"].where(ok).to_numpy(dtype=float)
    so_far = pd.Series(t["final"].where(done_all).to_numpy(dtype=float))
    best = (so_far.cummin() if mode == "min" else so_far.cummax()).ffill()
    best = best.to_numpy()
    fig, ax = new_figure(size=(9.0, 4.8))
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
    keep_in_range(ax, vals)
    legend_outside(fig, ax)
    data = pd.DataFrame({"number": t["number"], "run_id": t["run_id"], "arm": t["arm"],
                         "status": t["status"], "value": vals, "best_so_far": best})
    return FigureResult(save(fig, path), data, figure=fig)


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
    fig, ax = new_figure(size=(7.0, 0.45 * len(data) + 1.8))
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
    return FigureResult(save(fig, path), data, figure=fig)



__all__ = ["sensitivity", "history", "importance", "rebuild_study", "infer_distributions",
           "varying_numeric", "is_numeric_param", "fold_bootstrap_band", "NOT_HYPERPARAMS",
           "PARAM_LABELS", "MIN_FOLDS_BAND"]
