"""The driver's check that every epoch a trial reported to Ray is in its MLflow run.

A trial logs its epoch metrics through a background thread and reports the same values to Ray.
When the scheduler stops a trial, or its worker is torn down, batches still queued in that
thread can be lost; Ray's record of the trial (its reported results) is not. So when a trial
ends, and again when the study finishes, the driver compares each run's MLflow history with the
results the trial reported and logs any missing epoch from them, tagging the run
(``ks.reconciled``) with what it filled.

Filling never duplicates: the trial reports the exact MLflow timestamp it gave the epoch's
metrics, and the driver logs the identical (key, value, step, timestamp) rows, which MLflow
stores once. A trial still writing its own batch at that moment therefore cannot double it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Metric, RunTag

from study.record import TELEMETRY_PREFIX, TRAIN_LOSS, Tags, parse_fold_metric, val_metric
from study.results import EPOCH, LOGGED_AT, REPLAYED, RUN_ID
from study.tracking import log_batched, retry


def epoch_metric_names(result: Mapping[str, Any], metric: str) -> list[str]:
    """The per-epoch MLflow metrics among a reported result's keys: ``val_<m>``, ``train_loss``,
    their per-fold values and the coordination telemetry (study/record.py's names)."""
    key = val_metric(metric)
    names = []
    for name in result:
        fold = parse_fold_metric(name)
        if name in (key, TRAIN_LOSS) or name.startswith(TELEMETRY_PREFIX) or \
                (fold is not None and fold[1] == key):
            names.append(name)
    return names


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def missing_epochs(client: Any, run_id: str, reported: Iterable[Mapping[str, Any]],
                   metric: str) -> list[Metric]:
    """The metrics of every reported epoch whose ``val_<m>`` is absent from the run.

    An epoch is logged as one batch (one transaction), so its selection metric stands for the
    whole epoch; the whole epoch is filled (rows already there are kept once by MLflow)."""
    key = val_metric(metric)
    rows = [r for r in reported if _number(r.get(EPOCH)) is not None and not r.get(REPLAYED)
            and r.get(RUN_ID) == run_id and _number(r.get(key)) is not None]
    if not rows:
        return []
    have = {m.step for m in retry(lambda: client.get_metric_history(run_id, key))}
    fill: list[Metric] = []
    for row in rows:
        step = int(_number(row[EPOCH]))
        if step in have:
            continue
        have.add(step)
        stamp = _number(row.get(LOGGED_AT))
        stamp = int(stamp) if stamp is not None else int(time.time() * 1000)
        for name in epoch_metric_names(row, metric):
            value = _number(row[name])
            if value is not None:
                fill.append(Metric(name, value, stamp, step))
    return fill


def reconcile_run(client: Any, run_id: str, reported: Iterable[Mapping[str, Any]],
                  metric: str) -> list[int]:
    """Fill the run's missing epochs from the reported results; the filled epochs (sorted)."""
    fill = missing_epochs(client, run_id, list(reported), metric)
    if not fill:
        return []
    epochs = sorted({m.step for m in fill})
    log_batched(client, run_id, metrics=fill)
    previous = retry(lambda: client.get_run(run_id)).data.tags.get(Tags.RECONCILED)
    note = (f"epochs {','.join(map(str, epochs))} filled by the driver from the results the "
            "trial reported to Ray (the trial's own log of them was lost)")
    if previous:
        note = f"{previous}; {note}"
    log_batched(client, run_id, tags=[RunTag(Tags.RECONCILED, note[:5000])])
    return epochs


def reconcile_reported(client: Any, reported: Iterable[Mapping[str, Any]],
                       metric: str) -> dict[str, list[int]]:
    """Reconcile every run named in a trial's reported results (one per attempt)."""
    rows = list(reported)
    runs = {r.get(RUN_ID) for r in rows if isinstance(r.get(RUN_ID), str)}
    filled = {}
    for run_id in sorted(runs):
        epochs = reconcile_run(client, run_id, rows, metric)
        if epochs:
            filled[run_id] = epochs
    return filled


__all__ = ["epoch_metric_names", "missing_epochs",
           "reconcile_run", "reconcile_reported"]
