"""Short summary of a study: per method, trials by status and the final metric, and the best
trial (``python -m analysis.summary`` prints it)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.load import Study, param_name
from analysis.stats import USABLE_STATUSES, best_label, full_budget
from study.record import Roles, Status


def _missing(v: object) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)


def summary_table(study: Study) -> pd.DataFrame:
    """Per (task, method): trials, completed / stopped early / failed, mean ± sd and best of the
    final metric (mean over folds of each trial) over COMPLETED trials only: a trial stopped early
    by the scheduler was judged after fewer epochs, so it is counted but not averaged."""
    t = study.trials[~study.trials["superseded"]]  # a retried trial counts once
    ok = pd.Series(False, index=t.index)
    ok[full_budget(t).index] = True
    rows = []
    for (task, arm), g in t.groupby(["task", "arm"]):
        v = g.loc[ok[g.index], "final"].astype(float)
        rows.append({"task": task, "method": arm, "metric": study.metric_for(task),
                     "trials": len(g), "completed": int((g["status"] == Status.COMPLETED).sum()),
                     "stopped": int((g["status"] == Status.STOPPED_EARLY).sum()),
                     "failed": int((~g["status"].isin([*USABLE_STATUSES, "RUNNING"])).sum()),
                     "running": int((g["status"] == "RUNNING").sum()),
                     "mean": v.mean() if len(v) else np.nan,
                     "sd": v.std(ddof=1) if len(v) > 1 else np.nan,
                     "best": v.loc[best_label(v, study.mode)] if len(v) else np.nan})
    return pd.DataFrame(rows)


def best_trial(study: Study, task: str | None = None) -> pd.Series | None:
    """The completed trial with the best final metric in the study's direction (stopped-early
    trials never win)."""
    t = study.trials
    if "role" in t:  # baselines and nested evaluation's outer runs are not the search's trials
        t = t[t["role"] == Roles.TRIAL]
    ok = full_budget(t, task)
    return None if ok.empty else ok.loc[best_label(ok["final"], study.mode)]


def format_summary(study: Study) -> str:
    table = summary_table(study)
    lines = [f"Study '{study.name}'  ({study.tracking_uri}, parent run "
             f"{study.parent_run_id or 'none'})", ""]
    header = (f"{'task':<10} {'method':<24} {'trials':>6} {'done':>5} {'stop':>5} {'fail':>5}  "
              f"{'final metric (mean ± sd)':<26} {'best':>7}")
    lines += [header, "-" * len(header)]
    for r in table.itertuples(index=False):
        ms = "–" if not np.isfinite(r.mean) else (
            f"{r.metric} {r.mean:.4f}" + (f" ± {r.sd:.4f}" if np.isfinite(r.sd) else ""))
        best = "–" if not np.isfinite(r.best) else f"{r.best:.4f}"
        lines.append(f"{r.task:<10} {r.method:<24} {r.trials:>6} {r.completed:>5} "
                     f"{r.stopped:>5} {r.failed:>5}  {ms:<26} {best:>7}")
    stopped = int(table["stopped"].sum()) if len(table) else 0
    if stopped:
        lines.append(f"({stopped} trial(s) stopped early by the scheduler are counted under "
                     f"'stop' but left out of mean ± sd and best: they did not reach the full "
                     f"budget)")
    running = int(table["running"].sum()) if len(table) else 0
    if running:
        lines.append(f"({running} trial run(s) still RUNNING or never finished)")
    b = best_trial(study)
    lines.append("")
    if b is None:
        lines.append("No completed trial with a final metric.")
    else:
        lines.append(f"Best trial: {b['trial_id']} ({b['arm']}, run {b['run_id']}): "
                     f"final {study.metric_for(b['task'])} = {b['final']:.4f}")
        params = {param_name(c): b[c] for c in study.param_columns if not _missing(b[c])}
        searched = [k for k in study.searched if k in params]
        groups = [("searched", searched), ("fixed", [k for k in sorted(params)
                                                    if k not in searched])]
        if not searched:
            groups = [("params", sorted(params))]
        for label, keys in groups:
            items = [f"{k}={_fmt(params[k])}" for k in keys]
            for i in range(0, len(items), 6):
                lines.append(f"  {label + ':' if i == 0 else '':<10}" + "  ".join(items[i:i + 6]))
    if study.notes:
        lines += [""] + [f"note: {n}" for n in study.notes]
    return "\n".join(lines)


__all__ = ["summary_table", "best_trial", "format_summary"]
