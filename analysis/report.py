"""The report of an analysis, answer first: the conclusion (one line per comparison in verdict
words, with the ROPE and the three probabilities; the model's estimate next to the best
baseline), then the facts (claims, paired table, baselines, best configuration, per-method
results, ranks, figures, what is missing), then the study's configuration. Rendered to
report.md and a self-contained report.html (analysis/document.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis import answer, fmt, recorded, stats
from analysis import evaluation as ev
from analysis.claims import verdict_sentence
from analysis.document import Doc
from analysis.recorded import SEARCH_NOTE
from analysis.report_sections import (
    best_section,
    figure_sections,
    missing_section,
    multi_section,
    update_section,
)
from analysis.verdict import prob_text
from study.record import Roles

if TYPE_CHECKING:
    from analysis.analyse import Analysis

HOW_TO_READ = (
    "How to read a verdict: each comparison is a Bayesian correlated t-test (Benavoli et al., "
    "JMLR 2017) of the paired (seed, fold) differences, with the Nadeau–Bengio correlation "
    "ρ = 1/k for the overlapping training sets of k-fold cross-validation. Its three "
    "probabilities say how likely the first arm is better by more than the ROPE (region of "
    "practical equivalence, ±ROPE), practically equivalent, or worse by more than the ROPE. A "
    "verdict is given when one of them reaches 0.95; otherwise it is _undecided_: these folds do "
    "not settle it, which is not evidence of no difference, and the line says what would (more "
    "repeats, or - because the fold correlation puts a floor under the uncertainty - not even "
    "that). The corrected resampled t-test (the same correction, frequentist) and Wilcoxon "
    "(only with ≥ 6 non-zero pairs, where it can reach p < 0.05) are in the paired table.")


def write_report(r: Analysis) -> None:
    """report.md and report.html into the analysis's folder (figures embedded in the HTML)."""
    doc = build_document(r)
    (r.out_dir / "report.md").write_text(doc.to_markdown(), encoding="utf-8")
    (r.out_dir / "report.html").write_text(doc.to_html(), encoding="utf-8")
    r.files += [r.out_dir / "report.md", r.out_dir / "report.html"]
    r.files += [f.path for f in r.figures.values()]


def trial_counts(r: Analysis) -> str:
    """``4 trials (3 stopped early, 1 completed); 2 baseline runs`` - baselines and nested
    evaluation's outer runs are counted apart from the search's trials."""
    t = recorded.latest(r.study.trials)
    parts = []
    for role, name in ((Roles.TRIAL, "trial"), (Roles.OUTER, "outer-fold run"),
                       (Roles.BASELINE, "baseline run")):
        g = t[t["role"] == role]
        if g.empty:
            continue
        counts = ", ".join(f"{n} {str(k).lower().replace('_', ' ')}"
                           for k, n in g["status"].value_counts().items())
        parts.append(f"{len(g)} {name}{'' if len(g) == 1 else 's'} ({counts})")
    retried = len(r.study.trials) - len(t)
    return "; ".join(parts) + (f"; {retried} earlier attempt(s) retried" if retried else "")


def conclusion_lines(r: Analysis) -> list[str]:
    """The conclusion: estimates beside the best baseline, then one line per comparison."""
    lines = []
    claimed = {(c.task, c.metric, c.reference, c.variant) for c in r.claims.itertuples(index=False)}
    for task in r.study.tasks:
        lines += _estimate(r, task)
    for row in r.comparison.itertuples(index=False):
        if (row.task, row.metric, row.method, row.baseline) not in claimed:
            lines.append(answer.comparison_line(row))
    for task, what in r.model_rows.items():
        if what == ev.GRID_ROWS or r.comparison.empty or \
                not (r.comparison["task"] == task).any():
            continue
        if what == ev.NESTED_ROWS:
            lines.append(f"**{task}**: the model's values above are the outer folds of nested "
                         f"evaluation (each scored by a configuration chosen without it), so "
                         f"the comparison with the baselines is unbiased by the search.")
        else:
            lines.append(f"**{task}**: the model's values above are its best-of-search trial's, "
                         f"chosen on the same folds they are scored on: optimistic, so a "
                         f"difference in the model's favour overstates it (the baselines were "
                         f"not searched). `evaluation: nested` gives an unbiased comparison.")
    for (task, metric), fr in r.multi.items():
        if not np.isfinite(fr.p):
            lines.append(f"**All {len(fr.arms)} methods** ({task}, {metric}): {fr.note}.")
            continue
        best = fr.mean_ranks.index[0]
        verdict = ("the methods' ranks differ" if fr.p < fr.alpha
                   else "no method ranks consistently better")
        lines.append(f"**All {len(fr.arms)} methods** ({task}, {metric}, {fr.n_blocks} complete "
                     f"(seed, fold) blocks): Friedman p {fmt.p_eq(fr.p)}: {verdict}; best mean "
                     f"rank {best} ({fr.mean_ranks.iloc[0]:.2f}).")
    for _, row in r.claims.iterrows():
        lines.append(verdict_sentence(row))
    return lines


def _estimate(r: Analysis, task: str) -> list[str]:
    """The model's estimate (nested: the outer folds; else the best configuration) next to the
    best baseline, naming it and its verdict."""
    metric = r.study.metric_for(task)
    base = set(r.baselines.loc[r.baselines["task"] == task, "baseline"]) \
        if not r.baselines.empty else set()
    best = answer.best_baseline(r.comparison, task, metric, base, r.study.mode) if base else None
    nested = r.nested.get(task)
    if nested is not None and len(nested):
        v = nested["value"].astype(float)
        model, value, sd = "nested estimate", float(v.mean()), (
            float(v.std(ddof=1)) if v.notna().sum() > 1 else None)
    elif task in r.best:
        b = r.best[task]
        kind = "best-of-search trial" if b.kind == "trial" else "best method"
        model, value = f"{kind} {b.label}", b.value
        col = b.per_fold[metric].astype(float) if metric in b.per_fold else pd.Series(dtype=float)
        sd = float(col.std(ddof=1)) if col.notna().sum() > 1 else None
    else:
        return []
    line = answer.estimate_line(task, metric, model, value, sd, best, len(base))
    if best is not None and len(base) > 1:
        others = r.comparison[(r.comparison["task"] == task)
                              & r.comparison["baseline"].isin(base - {best.baseline})]
        line += " Other baselines: " + "; ".join(
            f"{o.baseline} {fmt.value(o.mean_baseline)} ({o.verdict})"
            for o in others.itertuples(index=False)) + "."
    return [line]


def _verdict_columns(c: pd.DataFrame, difference: str, a: str, b: str) -> dict[str, Any]:
    """The correlated t-test's columns of a comparison table: the difference with its credible
    interval, the verdict, the three probabilities (``a`` / ``b`` better) and the ROPE."""
    return {
        f"{difference} (95% credible interval)": [
            fmt.effect(m, lo, hi, level="95% CrI") for m, lo, hi in
            zip(c["mean_diff"], c["cred_low"], c["cred_high"], strict=True)],
        "verdict": c["verdict"].map(lambda v: f"**{v}**"),
        f"P({a} better)": c["p_better"].map(prob_text),
        "P(equivalent)": c["p_equivalent"].map(prob_text),
        f"P({b} better)": c["p_worse"].map(prob_text),
        "ROPE": c["rope"].map(lambda v: f"±{v:g}")}


def _test_columns(c: pd.DataFrame) -> dict[str, Any]:
    """The frequentist lines: the corrected resampled t-test and Wilcoxon with Holm."""
    return {
        "corrected t-test p": c["p_corrected"].map(fmt.pvalue),
        "Wilcoxon p (Holm)": [f"{fmt.pvalue(w)} ({fmt.pvalue(h)})" if np.isfinite(w) else "–"
                              for w, h in zip(c["wilcoxon_p"], c["holm_p"], strict=True)]}


def _pairs_table(c: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "task": c["task"], "metric": c["metric"], "method": c["method"],
        "baseline": c["baseline"], "pairs": c["n_pairs"],
        "mean (method)": c["mean_method"].map(fmt.value),
        "mean (baseline)": c["mean_baseline"].map(fmt.value),
        **_verdict_columns(c, "difference", "method", "baseline"),
        "design": c["design"], **_test_columns(c),
        "bootstrap 95% CI": [fmt.interval(lo, hi) for lo, hi in
                             zip(c["ci_low"], c["ci_high"], strict=True)],
        "win rate": c["win_rate"].map(lambda v: fmt.value(v, decimals=2)),
        "note": c["note"].fillna("")})


def _claims_table(c: pd.DataFrame) -> pd.DataFrame:
    setting = c["setting"].fillna("") if "setting" in c else pd.Series("", index=c.index)
    shown = {"setting": setting} if (setting != "").any() else {}
    return pd.DataFrame({
        **shown, "claim": c["claim"], "variant": c["variant"], "pairs": c["n_pairs"],
        **_verdict_columns(c, "reference − variant", "reference", "variant"),
        **_test_columns(c),
        "win rate": c["win_rate"].map(lambda v: fmt.value(v, decimals=2))})


def build_document(r: Analysis) -> Doc:
    """The report as blocks: conclusion, facts, configuration."""
    s = r.study
    doc = Doc(f"Study report: {s.name}")
    doc.heading("Conclusion")
    doc.bullets(conclusion_lines(r))
    if r.comparison.empty and r.claims.empty:
        doc.para("No paired comparison could be made (see _Skipped / notes_ below), so this report "
                 "makes no claim about which method is better.")
    doc.para(HOW_TO_READ)
    designs = "; ".join(f"{task}/{metric}: k = {d.folds} folds per repeat, {d.repeats} "
                        f"repeat{'' if d.repeats == 1 else 's'}, ROPE ±{d.rope:g} ({d.source})"
                        for (task, metric), d in r.designs.items())
    if designs:
        doc.para(f"Design of the verdicts: {designs}.")
    doc.para(f"Runs: {trial_counts(r)}. " + _budget_text(r))
    _claims(doc, r)
    _paired(doc, r)
    _baselines(doc, r)
    best_section(doc, r)
    _methods(doc, r)
    multi_section(doc, r)
    update_section(doc, r)
    figure_sections(doc, r)
    missing_section(doc, r)
    _configuration(doc, r)
    return doc


def _budget_text(r: Analysis) -> str:
    stopped = stats.stopped_early(r.study.trials)
    text = ("Only trials that ran their full budget (status COMPLETED) enter the summaries, "
            "paired tests, ranks, parameter importance and curves.")
    if len(stopped):
        text += (f" {len(stopped)} trial(s) stopped early by the scheduler (ASHA) were judged "
                 f"after fewer epochs: they are counted and listed, drawn hollow in the "
                 f"sensitivity and history figures, and left out of every number above.")
    return text


def _claims(doc: Doc, r: Analysis) -> None:
    if not r.reference:
        return
    doc.heading("Claims")
    doc.para(f"One row per variant against the reference variant **{r.reference}** on identical "
             "(seed, fold) keys: difference = reference − variant (> 0 supports the claim). "
             "Verdict from the correlated t-test: _supported_ (P(reference better by more than "
             "the ROPE) ≥ 0.95), _contradicted_ (P(variant better) ≥ 0.95), _equivalent within "
             "±ROPE_ (P(equivalent) ≥ 0.95: the part makes no practical difference), "
             "_undecided_ otherwise. Also in `claims.csv`.")
    if r.claims.empty:
        doc.para("_No claim could be tested (see Skipped)._")
    else:
        doc.table(_claims_table(r.claims))


def _paired(doc: Doc, r: Analysis) -> None:
    doc.heading("Paired comparison")
    doc.para("Difference = method − baseline on identical (seed, fold) keys (> 0: the method is "
             "better). Verdict and P(…): Bayesian correlated t-test with the ROPE shown; "
             "credible interval (CrI) from its posterior. Corrected t-test: Nadeau–Bengio "
             "corrected resampled t-test (variance × (1/n + 1/(k − 1))). Wilcoxon signed-rank "
             "(Holm over the comparisons of one task and metric) only where it can reach "
             "p < 0.05 (≥ 6 non-zero pairs); a bootstrap interval only over ≥ 6 pairs. Win rate: "
             "share of pairs where the method is strictly better. All columns in "
             "`comparison.csv`.")
    for task, what in r.model_rows.items():
        doc.para(f"{task}: the model is represented by {what}; baselines (if any) are fit on "
                 f"each fold's training part and scored on the same folds.")
    if not r.comparison.empty:
        doc.table(_pairs_table(r.comparison))
    else:
        doc.para("_No paired comparison (see Skipped)._")


def _baselines(doc: Doc, r: Analysis) -> None:
    if r.baselines.empty:
        return
    doc.heading("Baselines")
    doc.para("Every baseline run of the study, fit on each fold's training part and scored on "
             "the same folds as the model: what it reads, how it was tuned and what it cost "
             "(as each run recorded it; – where it did not). Also in `baselines.csv`.")
    cols = [c for c in r.baselines.columns if c != "run_id"]
    doc.table(r.baselines[cols], {c: (lambda v: fmt.value(v, decimals=1)) if c == "fit seconds"
                                  else (lambda v: fmt.value(v, decimals=4))
                                  for c in cols if c.startswith(("fit", "final"))})
    note = r.study.parent_tags.get(SEARCH_NOTE)
    if note:
        doc.para(f"Search: {note}")


def _methods(doc: Doc, r: Analysis) -> None:

    doc.heading("Per-method results")
    doc.para("Mean, SD (ddof = 1) and median over every (seed, fold) value of completed trials; "
             "trials of that method by their latest attempt (completed / stopped early / failed "
             "or unfinished); stopped-early trials are counted, not averaged. Also in "
             "`methods.csv`."
             + (" In a search a method's row pools every configuration it was tried with; the "
                "chosen one is under _Best configuration_." if any(
                    ev.is_search(r.study, task) for task in r.study.tasks) else ""))
    if not r.methods.empty:
        cols = ["task", "metric", "arm", "trials", "completed", "stopped_early", "failed",
                "n_values", "mean", "sd", "median", "min", "max"]
        table = r.methods[cols].rename(columns={"arm": "method"})
        doc.table(table, {c: fmt.value for c in ("mean", "sd", "median", "min", "max")})


def _configuration(doc: Doc, r: Analysis) -> None:

    s = r.study
    doc.heading("Study configuration")
    doc.bullets([
        f"Tracking URI: `{s.tracking_uri}` — experiment id {s.experiment_id}, parent run "
        f"`{s.parent_run_id or 'none'}`",
        f"Tasks: {', '.join(s.tasks)}",
        f"Generated: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"`python -m analysis.compare`"])
    doc.para("What the study's parent run records (params `study.*` and `cohort.*`, tags "
             "`ks.*`); where the parent did not record an item the trials' own param is shown "
             "and said so; items nobody recorded say so, so a reduced run cannot pass for a "
             "full one.")
    doc.table(recorded.study_rows(s, {task: ev.selection_rule(s.trials, task) for task in s.tasks}))
    doc.heading("Files")
    doc.para("`report.md`, `report.html` (the same report, self-contained), `comparison.csv` "
             "(one row per comparison), `methods.csv` (one row per task, metric and method), "
             "`missing.csv`, and where they apply `claims.csv`, `friedman.csv`, "
             "`update_effect.csv`, `baselines.csv`, `best_per_fold.csv`, and the PNG figures "
             "above; the same files are logged under `report/` of the study's parent MLflow "
             "run.")


__all__ = ["build_document", "write_report", "conclusion_lines", "trial_counts", "HOW_TO_READ"]
