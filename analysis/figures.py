"""Figures of a study (matplotlib, PNG). Each answers one question, is readable on its own (title,
axes, legend outside the data) and returns the path and the numbers it drew, so tests and the
report can use them. Here: the per-fold values the paired verdicts compare, Kaplan–Meier of
predicted risk groups, per-epoch curves and the critical-difference diagram; the search's
figures (sensitivity, history, importance) are in analysis/search_figures.py and the drawing
conventions in analysis/plotting.py (both reachable from here).

Methods are told apart by colour AND marker (and line style in curves), with small x offsets so
that overlapping methods stay visible. Only completed trials enter means, curves and bands.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from analysis.plotting import (  # noqa: F401 - the figures' shared names, reachable from here
    FigureResult,
    colours,
    keep_in_range,
    legend_outside,
    legend_problems,
    new_figure,
    offsets,
    proxy,
    record_legend,
    save,
    styles,
)
from analysis.search_figures import (  # noqa: F401
    NOT_HYPERPARAMS,
    fold_bootstrap_band,
    history,
    importance,
    infer_distributions,
    rebuild_study,
    sensitivity,
    varying_numeric,
)
from analysis.stats import t_interval, usable

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
    fig, ax = new_figure(size=(max(6.5, 1.7 * len(wide.columns) + 4.2), 5.0))
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
    keep_in_range(ax, wide.to_numpy(dtype=float))  # auc, accuracy, c-index: within [0, 1]
    ax.set_xticks(x, list(wide.columns))
    ax.set_xlim(-0.6, len(wide.columns) - 0.4)
    ax.set_xlabel("method")
    ax.set_ylabel(f"validation {metric} ({selection} of each fold)")
    ax.set_title(f"{task}: {metric} per fold and seed, by method (completed trials)")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(fig, ax, handles=[h for h in handles if not h.get_label().startswith("_")])
    return FigureResult(save(fig, path), wide.reset_index(),
                        {"ylim": ax.get_ylim(), "intervals": len(bars)}, figure=fig)


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
    fig, axes = new_figure(nrows, ncols, size=(5.0 * ncols, 4.3 * nrows))
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
        record_legend(fig, handles, labels)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1,
                  frameon=False)
        ax.grid(alpha=0.3)
    for j in range(len(arms), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    fig.suptitle("Kaplan–Meier by predicted risk (split at each fold's median risk, pooled)",
                 fontsize=10)
    return FigureResult(save(fig, path), pd.concat(frames, ignore_index=True), stats,
                        figure=fig)


# --- per-epoch curves -----------------------------------------------------------------------

def _epoch_bands(hist: pd.DataFrame) -> pd.DataFrame:
    g = hist.groupby(["arm", "key", "step"])["value"]
    out = g.agg(mean="mean", sd=lambda v: v.std(ddof=1) if len(v) > 1 else 0.0, n="size")
    return out.reset_index()


def epoch_curves(hist: pd.DataFrame, keys: list[tuple[str, str]], task: str, title: str,
                 path: Path, *, bounded: bool = False) -> FigureResult:
    """Mean over runs per method and epoch, with a ± 1 SD band for methods with at least 2 runs
    (and a legend entry for the band only when one is drawn); one panel per (key, label).
    ``bounded``: the keys are task metrics, so each axis stays within [0, 1].
    Methods differ in colour, marker and line style and are offset by a few hundredths of an
    epoch, so identical curves stay visible."""
    bands = _epoch_bands(hist)
    arms = sorted(bands["arm"].unique())
    st = styles(arms)
    dx = offsets(arms, 0.06)
    fig, axes = new_figure(1, len(keys), size=(5.6 * len(keys) + 2.6, 4.5))
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
                            linestyle=s.linestyle, ms=4,
                            label=f"{arm} ({n_runs} run{'' if n_runs == 1 else 's'})")
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
        if bounded:
            keep_in_range(ax, hist.loc[hist["key"] == key, "value"].to_numpy(dtype=float))
    legend = list(handles.values())
    if drawn:
        legend.append(proxy(Patch(color="0.5", alpha=0.25, label="band: ± 1 SD over runs "
                                  "(methods with ≥ 2 runs)"), drawn[0]))
    legend_outside(fig, axes[0, 0], title="line: mean over runs", handles=legend)
    if len(keys) > 1:
        fig.suptitle(title, fontsize=10)
    return FigureResult(save(fig, path), bands, {"bands": len(drawn)}, figure=fig)


# --- critical-difference diagram ------------------------------------------------------------

def cd_diagram(result, path: Path) -> FigureResult:
    """Mean ranks (1 = best) of the methods over the complete (seed, fold) blocks, drawn by
    scikit-posthocs: a thick bar joins methods the Nemenyi test does not separate (p ≥ α), and
    the CD bar shows the critical difference of mean ranks. ``result``: multi.Friedman."""
    import scikit_posthocs as sp

    ranks = result.mean_ranks
    st = styles(list(ranks.index))
    fig, ax = new_figure(size=(8.0, 0.42 * len(ranks) + 2.4))
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
    return FigureResult(save(fig, path, tight=True), data, {"cd": result.cd}, figure=fig)

