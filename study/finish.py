"""The end of a study: one summary row per trial (summary.csv), the terminal table, the best
configuration (best_config.yaml) and the parent run closed with the best value."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study.record import Artifacts, Status, best_metric, val_metric
from study.space import StudyConfig
from study.variants import expand as expand_variant


def summarise(grid: Any, cfg: StudyConfig) -> pd.DataFrame:
    """One row per trial: id, status, searched params, final metric."""
    from study.trial import COMPLETED, NODE, RUN_ID

    key = val_metric(cfg.metric)
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        iters = metrics.get("training_iteration", 0) or 0
        if result.error is not None:
            status = Status.FAILED
        elif metrics.get(COMPLETED):
            status = Status.COMPLETED
        else:
            status = Status.STOPPED_EARLY if iters else "NOT_RUN"
        trial_id = metrics.get("trial_id") or Path(result.path).name.split("_")[2]
        rows.append({"trial_id": trial_id, "status": status,
                     **{f"param.{k}": v for k, v in (result.config or {}).items()},
                     key: metrics.get(key), "epochs": iters,
                     "mlflow_run_id": metrics.get(RUN_ID),
                     "node_id": metrics.get(NODE),
                     "error": str(result.error).splitlines()[0][:200] if result.error else ""})
    return pd.DataFrame(rows)


def finish_study(grid: Any, cfg: StudyConfig, out: Path, client: Any, parent: str,
                 seconds: float) -> int:
    """summary.csv, the terminal table, best_config.yaml; close the parent run."""
    from study.tracking import log_frame, retry

    summary = summarise(grid, cfg)
    summary.to_csv(out / Artifacts.SUMMARY, index=False)
    log_frame(client, parent, summary, Artifacts.SUMMARY)
    key = val_metric(cfg.metric)
    counts = summary["status"].value_counts()
    print(f"\n{cfg.name}: {len(summary)} trials in {seconds:.0f} s — "
          f"{counts.get(Status.COMPLETED, 0)} completed, "
          f"{counts.get(Status.STOPPED_EARLY, 0)} stopped early by ASHA, "
          f"{counts.get(Status.FAILED, 0)} failed")
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        cols = [c for c in summary.columns if c not in ("mlflow_run_id", "node_id")]
        print(summary[cols].sort_values(key, ascending=False, na_position="last")
              .to_string(index=False))
    done = summary[summary["status"] == Status.COMPLETED]
    if done.empty:
        print("no trial completed; see the errors above and in MLflow", file=sys.stderr)
        retry(lambda: client.set_terminated(parent, "FAILED"))
        return 1
    best = done.loc[done[key].idxmax()]
    best_params = {k.removeprefix("param."): _plain(v) for k, v in best.items()
                   if k.startswith("param.") and pd.notna(v)}
    params, variant = expand_variant(best_params, cfg.variants)  # a variant's own overrides
    best_cfg = {"study": cfg.name, "trial_id": best["trial_id"], cfg.metric: float(best[key]),
                **({"variant": variant} if variant else {}), "params": {**cfg.fixed, **params}}
    (out / Artifacts.BEST_CONFIG).write_text(yaml.safe_dump(best_cfg, sort_keys=False))
    retry(lambda: client.log_artifact(parent, str(out / Artifacts.BEST_CONFIG)))
    retry(lambda: client.log_metric(parent, best_metric(cfg.metric), float(best[key])))
    retry(lambda: client.set_terminated(parent, "FINISHED"))
    print(f"best {cfg.metric} {float(best[key]):.4f} (trial {best['trial_id']}): "
          f"{best_params} -> {out / Artifacts.BEST_CONFIG}")
    print(f"MLflow: mlflow ui --backend-store-uri {client.tracking_uri}")
    return 0


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


__all__ = ["summarise", "finish_study"]
