"""The report's sections of facts: the best configuration (and the nested estimate), ranks of
many methods, the effect on the update, the figures with what each shows, and what is missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from analysis import evaluation as ev
from analysis import fmt, multi, recorded, stats  # noqa: F401
from analysis.document import Doc
from analysis.plotting import FigureResult
from analysis.search_figures import MIN_FOLDS_BAND
from analysis.task_figures import BASIS_DEPENDENT, BASIS_NOTE, TELEMETRY_PANELS

if TYPE_CHECKING:
    from analysis.analyse import Analysis, Best


def best_section(doc: Doc, r: Analysis) -> None:

    doc.heading("Best configuration")
    nested = bool(r.nested) or ev.is_nested(r.study)
    doc.para("**Best-of-search is optimistically biased**: the configuration below was chosen on "
             "the same validation folds it is scored on, so its score overstates what to expect "
             "on new patients. Use it to pick a configuration, not to report performance"
             + (" (see the nested estimate below)." if nested else
                "; an unbiased number needs nested evaluation (`evaluation: nested`)."))
    if not r.best:
        doc.para("_No completed trial: no best configuration._")
    for task, b in r.best.items():
        what = (f"trial `{b.label}` (run `{b.run_ids[0]}`)" if b.kind == "trial"
                else f"method **{b.label}** (highest mean over its (seed, fold) values)")
        if b.outer_fold is not None:
            what += (f", from the inner search of outer fold {b.outer_fold} (its inner folds "
                     f"split outer fold {b.outer_fold}'s training part)")
        sel = ev.selection_rule(r.study.trials, task)
        sel = (f"each fold's value is taken at the {sel}"
               if not sel.startswith(recorded.NOT_RECORDED)
               else "how each fold's epoch was selected is not recorded (no trial logged "
                    "the param `patience`)")
        doc.heading(f"{task}: {b.metric} {b.value:.4f}", level=3)
        doc.para(f"Best {what}: mean {b.metric} {b.value:.4f} over {len(b.per_fold)} "
                 f"(seed, fold) value(s); {sel}.")
        if b.params:
            keys = b.searched + sorted(k for k in b.params if k not in b.searched)
            items = [f"`{k}={_param_text(b.params[k])}`" for k in keys]
            doc.para(("Searched: " + ", ".join(items[:len(b.searched)]) + ". Fixed: "
                      if b.searched else "Parameters: ") + ", ".join(items[len(b.searched):]))
        pf = b.per_fold.copy()
        mcols = [c for c in pf.columns if c not in ("seed", "fold")]
        if len(pf) > 1:
            summary = {"seed": "mean ± sd", "fold": ""}
            for c in mcols:
                v = pf[c].astype(float)
                summary[c] = (f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if v.notna().sum() > 1
                              else fmt.value(v.mean(), decimals=4))
            pf = pd.concat([pf.astype(object), pd.DataFrame([summary])], ignore_index=True)
        doc.table(pf, {c: (lambda v: v if isinstance(v, str) else fmt.value(v, decimals=4))
                       for c in mcols})
        if nested:
            _nested_block(doc, r, task, b)


def _nested_block(doc: Doc, r: Analysis, task: str, b: Best) -> None:
    """The nested estimate beside best-of-search (README, "Evaluation modes")."""
    nested = r.nested.get(task)
    if nested is None:
        doc.para("This study ran nested evaluation (`ks.evaluation` = nested), but the report "
                 "cannot read its nested estimate yet: no completed outer-fold run "
                 "(`ks.role` = outer) was found (the study may still be running, or its refits "
                 "failed); the number above remains the optimistic best-of-search value.")
        return
    doc.para(f"**Nested estimate (unbiased)** of {b.metric}, one row per outer fold, beside the "
             f"best-of-search {b.value:.4f} above. Each outer fold's search ran on inner folds "
             "of its training part only; the configuration it chose (`chosen trial`, a trial of "
             "that outer fold's own search) was retrained on the whole training part and scored "
             "once on the outer fold (`value`). `best-of-search` is that configuration's own "
             "inner score, selected on the inner folds it is scored on, from models trained on "
             "the smaller inner training parts.")
    four = {c: (lambda v: v if isinstance(v, str) else fmt.value(v, decimals=4))
            for c in ("value", "best-of-search")}
    rest = {c: (lambda v: v if isinstance(v, str) else _param_text(v))
            for c in nested.columns if c not in four and c not in ("outer_fold", "method",
                                                                   "chosen trial")}
    doc.table(nested, {**four, **rest})
    v = nested["value"].astype(float)
    inner = (pd.to_numeric(nested["best-of-search"], errors="coerce")
             if "best-of-search" in nested else None)
    text = (f"Nested estimate: {b.metric} {v.mean():.4f}"
            + (f" ± {v.std(ddof=1):.4f} (sd over {v.notna().sum()} outer folds)"
               if v.notna().sum() > 1 else ""))
    if inner is not None and inner.notna().any():
        gap = float(inner.mean() - v.mean())
        text += (f"; best-of-search: {inner.mean():.4f} (mean of the chosen configurations' "
                 f"inner scores), {b.value:.4f} (the single best inner trial). ")
        if gap > 0:
            text += (f"The inner scores are optimistic here, by {gap:+.4f}: they were selected "
                     f"on the data they are scored on, while each outer fold was scored once, "
                     f"by a configuration chosen without it (the unbiased estimate).")
        else:
            text += (f"The inner scores are {-gap:.4f} below the nested estimate here (inner − "
                     f"nested = {gap:+.4f}): no optimism showed on this cohort (the refit on the "
                     f"larger outer training part can outweigh it); the nested estimate is "
                     f"still the one to report.")
    doc.para(text + " The paired comparison with the baselines uses the outer folds' values.")


def _param_text(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def multi_section(doc: Doc, r: Analysis) -> None:
    if not r.multi:
        return
    doc.heading("All methods together: Friedman test and mean ranks")
    doc.para("Blocks are the (seed, fold) keys; within each block the methods are ranked "
             "(1 = best, ties share the average rank). Friedman test (scipy) over complete "
             "blocks only (a block that lacks one method cannot be ranked); post-hoc: Nemenyi "
             "test of every pair of mean ranks (scikit-posthocs); CD = q₀.₉₅(k, ∞)/√2 · "
             "√(k(k+1)/(6N)), the smallest difference of mean ranks Nemenyi calls significant. "
             "Also in `friedman.csv`.")
    for (task, metric), fr in r.multi.items():
        doc.heading(f"{task}, {metric}: {len(fr.arms)} methods", level=3)
        text = (f"{fr.n_blocks} complete (seed, fold) blocks used, {fr.n_dropped} dropped"
                + (" (" + "; ".join(f"seed {d.seed} fold {d.fold}: no {d.missing}"
                                    for d in fr.dropped.itertuples(index=False)) + ")"
                   if fr.n_dropped else "") + ". ")
        if np.isfinite(fr.p):
            text += (f"Friedman χ² = {fr.statistic:.3g} ({len(fr.arms) - 1} df), p "
                     f"{fmt.p_eq(fr.p)}; Nemenyi CD = {fr.cd:.2f} at α = {fr.alpha:g}.")
        else:
            text += fr.note + "."
        doc.para(text)
        tab = fr.table().rename(columns={"arm": "method", "differs_from":
                                         "differs (Nemenyi p < 0.05) from"})
        doc.table(tab.drop(columns=["task", "metric"]),
                  {"mean_rank": lambda v: fmt.value(v, decimals=2), "mean": fmt.value,
                   "sd": fmt.value})
        if np.isfinite(fr.p):
            ph = fr.posthoc.copy()
            ph.insert(0, "Nemenyi p", ph.index)
            doc.table(ph.reset_index(drop=True), {c: fmt.pvalue for c in fr.posthoc.columns})
        fig = r.figures.get(f"{task}_{metric}_cd")
        if fig is not None:
            doc.image(fig.path, "critical-difference diagram")


def update_section(doc: Doc, r: Analysis) -> None:
    e = r.update_effect
    if e.empty:
        return
    doc.heading("Effect on the update")
    doc.para("How much each method changed the coordinated gradient, from the telemetry the "
             "trials log per epoch (means over the epoch's steps and folds): each completed "
             "run's mean over epochs, then mean ± SD over runs. A rule that changes the update by "
             "a few percent cannot be expected to move the metric; a null result with large "
             "changes says the changes did not matter. Also in `update_effect.csv`.")
    rows = []
    for (task, arm), g in e.groupby(["task", "arm"], sort=True):
        row: dict[str, object] = {"task": task, "method": arm,
                                  "runs": int(g["n_runs"].max())}
        for key in dict.fromkeys(e["key"]):
            label = multi.UPDATE_LABELS.get(key, key)
            k = g[g["key"] == key]
            row[label] = ("–" if k.empty else fmt.value(k["mean"].item(), decimals=4)
                          + (f" ± {fmt.value(k['sd'].item(), decimals=4)}"
                             if np.isfinite(k["sd"].item()) else ""))
        rows.append(row)
    doc.table(pd.DataFrame(rows))


_SECTIONS = [
    ("_per_fold", "Per-fold results", "Each marker is one (seed, fold) of a completed trial, "
     "spread slightly by seed and fold; grey lines join the same (seed, fold) across methods, so "
     "crossing lines show where methods swap order; black diamonds: the mean, with a 95% "
     "t-interval only where a method has at least 6 values (fewer give no interval)."),
    ("_history", "Optimisation history", "Trials in start order; filled: completed, hollow: "
     "stopped early by the scheduler (their last value); the black line is the best completed "
     "value so far."),
    ("_importance", "Parameter importance (fANOVA)", "Optuna's FanovaImportanceEvaluator on a "
     "study rebuilt from the completed trials (distributions inferred from observed values); "
     "trials stopped early are left out."),
    ("_km", "Survival: Kaplan–Meier by predicted risk", "Patients split at the median predicted "
     "risk of their validation fold, pooled over folds; log-rank test (lifelines). The p-value "
     "says how well one run's validation predictions separate patients; it is not a test "
     "between methods (that is the paired comparison above). Nested evaluation: the model's "
     "curve pools the outer-fold runs, each on its own outer fold (the patients the baselines "
     "were scored on)."),
    ("_learning", "Validation curves", "Mean validation metric over folds per epoch, completed "
     "runs; line: mean over runs; band: ± 1 SD over runs, drawn (and in the legend) only for "
     "methods with at least 2 runs."),
]


def sensitivity_text(fig: FigureResult) -> str:
    """What the sensitivity figure draws, with its own numbers (panels, folds, stopped)."""
    panels = fig.stats.get("panels", [])
    text = (f"One panel per searched parameter ({len(panels)}: {', '.join(panels)}), all on "
            "the same metric axis. Dots: the final metric of each completed trial; line or "
            "marker: the mean per bin (one bin per distinct value when there are at most 8, "
            "else quantile bins; a categorical parameter: per value)")
    n_folds = fig.stats.get("n_folds", 0)
    if fig.stats.get("band"):
        text += "; band: 95% percentile-bootstrap interval of the bin mean, resampling folds"
    elif n_folds:
        text += (f"; no band: a bootstrap over {n_folds} folds is little more than the folds "
                 f"themselves (a band needs at least {MIN_FOLDS_BAND})")
    else:
        text += "; no band (no per-fold values)"
    n_stop = fig.stats.get("n_stopped", 0)
    if n_stop:
        text += (f". Hollow: the {n_stop} trial(s) stopped early by the scheduler, at their "
                 f"last value, not in the means (fewer epochs)")
    return text + "."


def figure_sections(doc: Doc, r: Analysis) -> None:
    for task in r.study.tasks:
        for suffix, title, text in _SECTIONS[:1]:
            _fig(doc, r, f"{task}{suffix}", f"{title} — {task}", text)
        fig = r.figures.get(f"{task}_sensitivity")
        if fig is not None:
            _fig(doc, r, f"{task}_sensitivity", f"Sensitivity — {task}", sensitivity_text(fig))
        for suffix, title, text in _SECTIONS[1:4]:
            _fig(doc, r, f"{task}{suffix}", f"{title} — {task}", text)
        for suffix, label in TELEMETRY_PANELS.items():
            key = f"{task}_telemetry_{suffix}"
            text = ("Per epoch, the trainer's means over steps and folds; line: mean over "
                    "completed runs; band: ± 1 SD over runs, only for methods with at least 2 "
                    "runs.")
            fig = r.figures.get(key)
            if fig is not None and "classifier_rows" in str(fig.stats.get("coord_target", "")) \
                    and suffix in BASIS_DEPENDENT:
                text += f" Basis-dependent: {BASIS_NOTE}."
            _fig(doc, r, key, f"Telemetry: {label} — {task}", text)
        _fig(doc, r, f"{task}{_SECTIONS[4][0]}", f"{_SECTIONS[4][1]} — {task}", _SECTIONS[4][2])


def _fig(doc: Doc, r: Analysis, key: str, title: str, text: str) -> None:
    fig = r.figures.get(key)
    if fig is None:
        return
    doc.heading(title)
    doc.para(text)
    doc.image(fig.path, title)
    if key.endswith("_km"):
        rows = pd.DataFrame([{"method": a, **v} for a, v in fig.stats.items() if a != "runs"])
        doc.table(rows, {"logrank_p": fmt.pvalue, "test_statistic": fmt.value})
        doc.para("Predictions used: " + "; ".join(fig.stats.get("runs", [])))
    if key.endswith("_importance"):
        doc.table(fig.data, {"importance": fmt.value})


def _group_missing(missing: pd.DataFrame) -> pd.DataFrame:
    """One line per (task, metric, method, seed, reason) listing its folds."""
    g = missing.groupby(["task", "metric", "arm", "seed", "reason", "run_id"], sort=True,
                        dropna=False)["fold"]
    out = g.agg(lambda f: ", ".join(str(int(x)) for x in sorted(f))).reset_index()
    return out[["task", "metric", "arm", "seed", "fold", "reason", "run_id"]].rename(
        columns={"arm": "method", "fold": "folds"})


def missing_section(doc: Doc, r: Analysis) -> None:
    t = r.study.trials
    doc.heading("Missing / failed")
    failed = r.failed.fillna({"error": ""}).rename(columns={"arm": "method"})
    failed["error"] = failed["error"].map(lambda e: e.strip().splitlines()[-1][:300] if e else "")
    final, retried = failed[~failed["retried"]], failed[failed["retried"]]
    if final.empty:
        doc.para("No trial failed or was left unfinished.")
    else:
        doc.para("Trials that failed or never finished (their latest attempt):")
        doc.table(final.drop(columns="retried"))
    if not retried.empty:
        doc.para("Earlier attempts of trials that were retried (the retry's outcome counts):")
        doc.table(retried.drop(columns="retried"))
    stopped = stats.stopped_early(t)
    if len(stopped):
        doc.para(f"{len(stopped)} trial(s) were stopped early by the scheduler (ASHA): they did "
                 f"not reach the full budget, so they are left out of the method summaries, "
                 f"paired statistics, ranks and parameter importance, and drawn hollow (at "
                 f"their last validation value) in the sensitivity and history figures only.")
        cols = [c for c in ("task", "arm", "trial_id", "run_id", "epochs_run", "final")
                if c in stopped]
        doc.table(stopped[cols].rename(columns={"arm": "method", "final": "last value"}),
                  {"last value": lambda v: fmt.value(v, decimals=4),
                   "epochs_run": lambda v: str(int(v)) if np.isfinite(float(v)) else "–"})
    if r.missing.empty:
        doc.para("No (method, seed, fold) result is missing.")
    else:
        doc.para("(method, seed, fold) results missing from the full grid (all methods × seeds × "
                 "folds seen), so left out of the paired statistics (also in `missing.csv`):")
        doc.table(_group_missing(r.missing))
    if r.skipped or r.notes:
        doc.heading("Skipped / notes", level=3)
        doc.bullets(r.skipped + r.notes)


