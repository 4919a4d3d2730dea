"""The answer a study gives, in words: one line per comparison (verdict, ROPE, the three
probabilities), the model's estimate next to the best baseline, and the claims. The report's
conclusion (analysis/report.py) and the terminal's last lines (``terminal_lines``, called by
study/finish.py at the end of a study) both come from here, so they never disagree.

Only the standard library is imported at the top (the analysis inside the functions):
``python -m study.run --help`` imports study/finish.py, which calls ``terminal_lines``, and must
stay fast.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from analysis.load import Study

WIDTH = 120


def _num(v: object, digits: int = 3, sign: str = "") -> str:
    """``v`` with ``digits`` decimals (``sign="+"``: always signed); ``–`` when not a finite
    number. (analysis.fmt has the report's rules; this module imports the standard library
    only, for the study's terminal.)"""
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return f"{x:{sign}.{digits}f}" if math.isfinite(x) else "–"


def _signed(v: object, digits: int = 3) -> str:
    return _num(v, digits, sign="+")


def verdict_phrase(word: str, a: str, b: str, rope: float) -> str:
    if word == "better":
        return f"{a} is better than {b}"
    if word == "worse":
        return f"{a} is worse than {b}"
    if word == "equivalent":
        return f"{a} and {b} are equivalent within ±{rope:g}"
    return f"undecided between {a} and {b}"


def probabilities(row: Any, a: str, b: str) -> str:
    from analysis.verdict import prob_text

    return (f"P({a} better) {prob_text(row.p_better)}, P(equivalent within ±{row.rope:g}) "
            f"{prob_text(row.p_equivalent)}, P({b} better) {prob_text(row.p_worse)}")


def comparison_line(row: Any, *, markdown: bool = True) -> str:
    """One comparison (a row of comparison.csv) in verdict words."""
    from analysis.fmt import effect
    from analysis.verdict import UNDECIDED

    a, b = str(row.method), str(row.baseline)
    bold = (lambda s: f"**{s}**") if markdown else (lambda s: s)
    if not row.n_pairs:
        return (f"{bold(f'{a} vs {b}')} ({row.task}, {row.metric}): no (seed, fold) result "
                f"exists for both; not compared.")
    if not math.isfinite(float(row.p_better)):
        return (f"{bold(f'{a} vs {b}')} ({row.task}, {row.metric}): {int(row.n_pairs)} pair: "
                f"too few for a verdict.")
    diff = effect(row.mean_diff, row.cred_low, row.cred_high, level="95% credible interval")
    text = (f"{bold(f'{a} vs {b}')} ({row.task}, {row.metric}): "
            f"{bold(verdict_phrase(row.verdict, a, b, row.rope))} — "
            f"{probabilities(row, a, b)}; mean {_num(row.mean_method)} vs "
            f"{_num(row.mean_baseline)}, difference {diff} ({int(row.n_pairs)} pairs, "
            f"{row.design}).")
    if row.verdict == UNDECIDED and isinstance(row.decide, str) and row.decide:
        text += f" {row.decide}"
    return text


def best_baseline(comparison: pd.DataFrame, task: str, metric: str,
                  baselines: set[str], mode: str = "max") -> Any | None:
    """The comparison row of the baseline with the best mean on the paired keys (in the
    study's direction ``mode``)."""
    c = comparison[(comparison["task"] == task) & (comparison["metric"] == metric)
                   & comparison["baseline"].isin(baselines) & (comparison["n_pairs"] > 0)]
    if c.empty:
        return None
    means = c["mean_baseline"].astype(float)
    return c.loc[means.idxmin() if mode == "min" else means.idxmax()]


def estimate_line(task: str, metric: str, model: str, value: float, sd: float | None,
                  best: Any | None, n_baselines: int) -> str:
    """The model's estimate next to the best baseline, in one line."""
    from analysis.verdict import prob_text

    est = f"{metric} {_num(value)}" + (f" ± {_num(sd)} sd" if sd is not None and
                                       math.isfinite(sd) else "")
    text = f"{task}: {model}: {est}"
    if best is None:
        return text + " (no baseline in this study)."
    return (text + f"; best of {n_baselines} baseline{'' if n_baselines == 1 else 's'}: "
            f"{best.baseline} {_num(best.mean_baseline)} on the same pairs — "
            f"{verdict_phrase(best.verdict, 'the model', best.baseline, best.rope)} "
            f"(P(model better) {prob_text(best.p_better)}, P(equivalent) "
            f"{prob_text(best.p_equivalent)}, P({best.baseline} better) "
            f"{prob_text(best.p_worse)}).")


def wrap(lines: list[str], width: int = WIDTH) -> list[str]:
    """Lines no wider than ``width`` (continuations indented)."""
    out: list[str] = []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        out += textwrap.wrap(line, width, subsequent_indent=" " * (indent + 2),
                             break_on_hyphens=False) or [""]
    return out


def terminal_lines(tracking_uri: str, experiment: str, parent_run_id: str | None = None, *,
                   rope: float | None = None) -> list[str]:
    """The end of a study in the terminal: the best trial (or the nested estimate) against each
    baseline - difference and verdict - from the study's own MLflow store; ≤ 120 columns. Empty
    when the study has nothing to compare; a one-line note when the store cannot be read."""
    try:  # heavy: the study CLI's --help imports the module that calls this
        from analysis import evaluation as ev
        from analysis import recorded, stats
        from analysis.load import AnalysisError, load_study
    except ImportError as exc:  # pragma: no cover - a broken install says so, once
        return [f"(no verdict: the analysis could not be imported: {exc})"]
    try:
        study = load_study(experiment, tracking_uri, parent_run_id=parent_run_id)
        return study_lines(study, rope=rope, ev=ev, recorded=recorded, stats=stats)
    except AnalysisError as exc:
        return wrap([f"(no verdict: {exc})"])
    except Exception as exc:  # noqa: BLE001 - the study itself is finished; say why, go on
        return wrap([f"(no verdict: the analysis failed: {type(exc).__name__}: {exc}; "
                     f"python -m analysis.compare gives the full report)"])


def study_lines(study: Study, *, rope: float | None = None, ev: Any = None, recorded: Any = None,
                stats: Any = None) -> list[str]:
    """``terminal_lines`` on a study already read."""
    from analysis.verdict import prob_text

    if ev is None:
        from analysis import evaluation as ev
        from analysis import recorded, stats
    from study.record import Roles

    ev.ensure_roles(study)
    lines: list[str] = []
    for task in study.tasks:
        metric = study.metric_for(task)
        paired, _ = ev.comparison_folds(study, task, metric)
        base = sorted(set(paired.loc[paired["role"] == Roles.BASELINE, "arm"]))
        model_arms = sorted(set(paired.loc[paired["role"] != Roles.BASELINE, "arm"]))
        if not base or not model_arms:
            continue
        design = recorded.design(study, task, metric, rope)
        best = _model_arm(study, paired, model_arms, metric)
        comp = stats.compare_arms(paired, metric, task, candidate=best, baselines=base,
                                  n_boot=0, design=design).table
        if comp.empty:
            continue
        label = ("nested estimate" if ev.is_nested(study) else
                 f"best trial ({best})" if ev.searched_arms(study, task, metric) else best)
        n = int(comp["n_pairs"].max())
        lines.append(f"Verdict ({task}, {metric}; Bayesian correlated t-test on {n} paired "
                     f"folds, ROPE ±{design.rope:g}, P ≥ 0.95 to decide; P = better/equivalent/"
                     f"worse):")
        for row in comp.sort_values("mean_baseline", ascending=False).itertuples(index=False):
            if not row.n_pairs:
                continue
            lines.append(f"  {label} {_num(row.mean_method)} vs {row.baseline} "
                         f"{_num(row.mean_baseline)}: {_signed(row.mean_diff, 4)} → "
                         f"{row.verdict} (P {prob_text(row.p_better)}/"
                         f"{prob_text(row.p_equivalent)}/{prob_text(row.p_worse)})")
    return wrap(lines)


def _model_arm(study: Study, paired: pd.DataFrame, arms: list[str], metric: str) -> str:
    """The model's arm with the best mean on the paired rows (the best trial's arm), in the
    study's direction."""
    if len(arms) == 1:
        return arms[0]
    means = paired[paired["arm"].isin(arms)].groupby("arm")[metric].mean()
    return str(means.idxmin() if study.mode == "min" else means.idxmax())


__all__ = ["comparison_line", "estimate_line", "best_baseline", "terminal_lines", "study_lines",
           "verdict_phrase", "wrap", "WIDTH"]
