"""Figures of a study (matplotlib, PNG). Each is readable on its own (title, axes, legend) and each
function returns the path and the numbers it drew, so tests and the report can use them.

Uses matplotlib's object API (``Figure``) with the Agg canvas: no pyplot state, no display needed.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.stats import USABLE_STATUSES, t_interval, usable

PARAM_LABELS = {"alpha": "α (tumour vs TME weight)", "lam": "λ (consistency weight)",
                "tau_cos": "τ_cos (cosine threshold)", "tau_rho": "τ_ρ (confidence margin)"}
LOG_PARAMS = ("lr", "weight_decay")
#: Trial parameters that are bookkeeping, not hyper-parameters (left out of fANOVA).
NOT_HYPERPARAMS = ("seed", "seeds", "folds", "task", "trial_id")


@dataclass
class FigureResult:
    path: Path
    data: pd.DataFrame
    stats: dict = field(default_factory=dict)


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.5, 5.0)):
    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def colours(arms: list[str]) -> dict[str, tuple]:
    """Arm -> colour (tab10, by sorted name), so a method has one colour in every figure."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {a: cmap(i % 10) for i, a in enumerate(sorted(arms))}


def _finished(trials: pd.DataFrame, task: str) -> pd.DataFrame:
    t = trials[(trials["task"] == task) & trials["status"].isin(USABLE_STATUSES)]
    return t[np.isfinite(t["final"].astype(float))]


# --- per-fold paired plot -------------------------------------------------------------------

def per_fold(folds: pd.DataFrame, metric: str, task: str, arms: list[str],
             path: Path) -> FigureResult:
    """Every (seed, fold) value per method; grey lines join the same (seed, fold) across methods,
    black markers are the mean ± 95% CI."""
    f = usable(folds[(folds["task"] == task) & folds["arm"].isin(arms)], metric)
    wide = f.pivot_table(index=["seed", "fold"], columns="arm", values=metric, aggfunc="mean")
    wide = wide.reindex(columns=[a for a in arms if a in wide.columns])
    cols = colours(arms)
    fig, ax = _figure(size=(max(5.5, 1.9 * len(wide.columns) + 2), 5.0))
    ax = ax[0, 0]
    x = np.arange(len(wide.columns))
    for _, row in wide.iterrows():
        ax.plot(x, row.to_numpy(dtype=float), color="0.6", alpha=0.45, lw=0.9, zorder=1)
    for i, arm in enumerate(wide.columns):
        v = wide[arm].to_numpy(dtype=float)
        ax.scatter(np.full(v.shape, i), v, color=cols[arm], s=22, zorder=2,
                   label=f"{arm} (n={np.isfinite(v).sum()})")
        m, lo, hi = t_interval(v)
        if np.isfinite(lo):
            ax.errorbar(i + 0.12, m, yerr=[[m - lo], [hi - m]], fmt="D", color="black",
                        ms=6, capsize=4, zorder=3)
        else:
            ax.plot(i + 0.12, m, "D", color="black", ms=6, zorder=3)
    ax.plot([], [], "D", color="black", label="mean ± 95% CI")
    ax.plot([], [], color="0.6", label="same (seed, fold)")
    ax.set_xticks(x, list(wide.columns))
    ax.set_xlabel("method")
    ax.set_ylabel(f"validation {metric} (best epoch of each fold)")
    ax.set_title(f"{task}: {metric} per fold and seed, by method")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return FigureResult(_save(fig, path), wide.reset_index())


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
        col = trials.get(f"params.{p}")
        if (col is not None and pd.api.types.is_numeric_dtype(col)
                and not pd.api.types.is_bool_dtype(col) and col.dropna().nunique() >= min_distinct):
            out.append(p)
    return out


def sensitivity(trials: pd.DataFrame, metric: str, task: str, params: list[str],
                path: Path) -> FigureResult:
    """Final metric against each parameter: trials as dots, binned mean with a 95% t-band."""
    t = _finished(trials, task)
    arms = sorted(t["arm"].unique())
    cols = colours(arms)
    fig, axes = _figure(1, len(params), size=(5.2 * len(params), 4.6))
    rows = []
    for ax, p in zip(axes[0], params, strict=True):
        sub = t[t[f"params.{p}"].notna()]
        x_all = sub[f"params.{p}"].to_numpy(dtype=float)
        log = bool(p in LOG_PARAMS or (x_all.size and x_all.min() > 0
                                       and x_all.max() / x_all.min() > 100))
        for arm in arms:
            a = sub[sub["arm"] == arm]
            x = a[f"params.{p}"].to_numpy(dtype=float)
            y = a["final"].to_numpy(dtype=float)
            if x.size == 0:
                continue
            ax.scatter(x, y, color=cols[arm], alpha=0.35, s=16)
            b = _bins(x, log)
            centre, mean, lo, hi = [], [], [], []
            for k in np.unique(b):
                xs, ys = x[b == k], y[b == k]
                m, l_, h_ = t_interval(ys)
                c = float(np.exp(np.log(xs).mean())) if log else float(xs.mean())
                centre.append(c)
                mean.append(m)
                lo.append(l_)
                hi.append(h_)
                rows.append({"param": p, "arm": arm, "x_low": xs.min(), "x_high": xs.max(),
                             "x_centre": c, "n": xs.size, "mean": m, "ci_low": l_, "ci_high": h_})
            ax.plot(centre, mean, "-o", color=cols[arm], ms=4, label=f"{arm} (binned mean)")
            ax.fill_between(centre, lo, hi, color=cols[arm], alpha=0.18)
        if log:
            ax.set_xscale("log")
        ax.set_xlabel(PARAM_LABELS.get(p, p))
        ax.set_ylabel(f"final {metric} (mean over folds)")
        ax.set_title(f"{task}: sensitivity to {p}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="band: 95% CI per bin", title_fontsize=7)
    return FigureResult(_save(fig, path), pd.DataFrame(rows))


# --- optimisation history -------------------------------------------------------------------

def history(trials: pd.DataFrame, metric: str, task: str, path: Path) -> FigureResult:
    """Trial value in start order with the best-so-far line (metric maximised)."""
    t = trials[trials["task"] == task].sort_values(["start_time", "trial_id"], kind="stable")
    t = t.reset_index(drop=True)
    t["number"] = np.arange(1, len(t) + 1)
    ok = t["status"].isin(USABLE_STATUSES) & np.isfinite(t["final"].astype(float))
    vals = t["final"].where(ok).to_numpy(dtype=float)
    best = pd.Series(vals).cummax().to_numpy()  # cummax skips NaN, keeps them NaN
    best = pd.Series(best).ffill().to_numpy()
    fig, ax = _figure(size=(8.0, 4.8))
    ax = ax[0, 0]
    arms = sorted(t["arm"].unique())
    cols = colours(arms)
    for arm in arms:
        sel = ok & (t["arm"] == arm)
        done = sel & (t["status"] == "COMPLETED")
        stop = sel & (t["status"] == "STOPPED_EARLY")
        ax.scatter(t.loc[done, "number"], t.loc[done, "final"], color=cols[arm], s=22,
                   label=f"{arm}")
        if stop.any():
            ax.scatter(t.loc[stop, "number"], t.loc[stop, "final"], facecolors="none",
                       edgecolors=cols[arm], s=22, label=f"{arm} (stopped early)")
    ax.step(t["number"], best, where="post", color="black", lw=1.5, label="best so far")
    failed = t.loc[~ok, "number"]
    if len(failed):
        ax.plot(failed, np.full(len(failed), np.nanmin(vals) if ok.any() else 0.0), "x",
                color="red", label=f"failed / no value ({len(failed)})")
    ax.set_xlabel("trial (in start order)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"final {metric} (mean over folds)")
    ax.set_title(f"{task}: optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    data = pd.DataFrame({"number": t["number"], "run_id": t["run_id"], "arm": t["arm"],
                         "status": t["status"], "value": vals, "best_so_far": best})
    return FigureResult(_save(fig, path), data)


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
    """An in-memory Optuna study of the task's finished trials (value = final metric), over
    ``params`` (default: every logged param except bookkeeping ones such as seed)."""
    t = _finished(trials, task)
    pcols = [c for c in t.columns if c.startswith("params.")
             and c[len("params."):] not in NOT_HYPERPARAMS and t[c].notna().all()
             and (params is None or c[len("params."):] in params)]
    params = t[pcols].rename(columns=lambda c: c[len("params."):])
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
    ax.set_title(f"{task}: parameter importance for final {metric} "
                 f"({len(study.trials)} finished trials)")
    ax.set_xlim(0, max(1.0, float(data["importance"].max()) * 1.15))
    return FigureResult(_save(fig, path), data)


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
        for name, g, colour in (("high risk", hi, "tab:red"), ("low risk", lo, "tab:blue")):
            kmf = KaplanMeierFitter().fit(g["time"], g["event"], label=name)
            sf = kmf.survival_function_
            ci = kmf.confidence_interval_
            ax.step(sf.index, sf.iloc[:, 0], where="post", color=colour,
                    label=f"{name} (n={len(g)}, events={int(g['event'].sum())})")
            ax.fill_between(ci.index, ci.iloc[:, 0], ci.iloc[:, 1], step="post", color=colour,
                            alpha=0.15)
        ax.text(0.03, 0.05, f"log-rank p = {res.p_value:.3g}", transform=ax.transAxes,
                fontsize=10, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("time (days)")
        ax.set_ylabel("survival probability")
        ax.set_title(f"{task} — {arm}: predicted-risk groups" + (
            f"\n{labels[arm]}" if arm in labels else ""), fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    for j in range(len(arms), nrows * ncols):
        axes[j // ncols, j % ncols].set_visible(False)
    fig.suptitle("Kaplan–Meier by predicted risk (split at each fold's median risk, pooled)",
                 fontsize=10)
    return FigureResult(_save(fig, path), pd.concat(frames, ignore_index=True), stats)


# --- per-epoch curves -----------------------------------------------------------------------

def _epoch_bands(hist: pd.DataFrame) -> pd.DataFrame:
    g = hist.groupby(["arm", "key", "step"])["value"]
    out = g.agg(mean="mean", sd=lambda v: v.std(ddof=1) if len(v) > 1 else 0.0, n="size")
    return out.reset_index()


def epoch_curves(hist: pd.DataFrame, keys: list[tuple[str, str]], task: str, title: str,
                 path: Path) -> FigureResult:
    """Mean over runs per method and epoch with a ± 1 SD band; one panel per (key, label)."""
    bands = _epoch_bands(hist)
    arms = sorted(bands["arm"].unique())
    cols = colours(arms)
    fig, axes = _figure(1, len(keys), size=(5.6 * len(keys), 4.5))
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        sub = bands[bands["key"] == key]
        for arm in arms:
            a = sub[sub["arm"] == arm].sort_values("step")
            if a.empty:
                continue
            n_runs = hist[(hist["arm"] == arm) & (hist["key"] == key)]["run_id"].nunique()
            ax.plot(a["step"], a["mean"], color=cols[arm], label=f"{arm} ({n_runs} runs)")
            ax.fill_between(a["step"], a["mean"] - a["sd"], a["mean"] + a["sd"],
                            color=cols[arm], alpha=0.18)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.set_title(f"{task}: {label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="line: mean over runs, band: ± 1 SD", title_fontsize=7)
    fig.suptitle(title, fontsize=10)
    return FigureResult(_save(fig, path), bands)
