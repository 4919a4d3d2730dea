"""Baselines on the study's own folds, each logged as a child run of the study (``ks.role`` =
baseline) in the layout of a trial run, so the analysis pairs them with the model like any method.

Why on the driver, before the search: the baselines (``ksmodel.baselines``: Cox / logistic
regression with fixed settings, penalised Cox / logistic regression tuned by inner
cross-validation, random forests) need no GPU, and a baseline that cannot be fit (a covariate the
cohort lacks, a Cox model that does not converge) is then known before any compute is spent on
trials. Their cost is logged (``fit_seconds``) so it can be weighed.

Seeds: the baselines do not depend on the training seed: the fixed-setting ones are
deterministic (Newton-Raphson Cox, lbfgs logistic regression, full-SVD PCA), the tuned ones draw
their inner folds (and forests) from the study's first seed and the outer fold. So each is fit
and logged once per study with ``ks.seed`` = ``SEEDLESS``; the analysis pairs such a run with
every seed of the model's runs (``analysis/load.py``). Fitting it once per seed would only redraw
the inner folds.

What a baseline run holds: tags (role, method = the baseline name, task, metric, folds, status,
``ks.baseline_inputs`` and ``ks.baseline_tuning``: what it read and how its settings were chosen,
in words), params (the baseline's options, its covariates, a description, settings equal on every
fold), the record's final metrics (``final_<m>`` for every task metric, ``fold_<k>/final_<m>`` per
fold), ``fit_seconds`` (summed over folds; ``fold_<k>/fit_seconds``), per-fold facts that vary by
fold (``fold_<k>/features``, ``fold_<k>/explained_variance``, a tuned ``fold_<k>/alpha``, ``C`` or
``min_samples_leaf``) and ``predictions.parquet`` with the columns of a trial's predictions (fold,
case_id, the task's columns, seed). In nested evaluation the study's folds are the outer folds,
so the baselines are scored on those.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from ksmodel.baselines import (
    BASELINES,
    BaselineResult,
    baselines_for,
    run_baseline,
    table_expression,
)
from ksmodel.config import TrainConfig
from ksmodel.data import RunData
from ksmodel.errors import ConfigError
from ksmodel.tasks import get_task
from study.quiet import say
from study.record import (
    FIT_SECONDS,
    SEEDLESS,
    Artifacts,
    Params,
    Roles,
    Status,
    Tags,
    baseline_trial_id,
    final_metric,
    fold_metric,
    run_name,
)
from study.space import StudyConfig
from study.tracking import completed_run, log_batched, retry, trial_runs


def check_covariates(cfg: StudyConfig, data: RunData) -> None:
    """The study's covariates exist in the cohort's clinical table and are not the label;
    ConfigError naming the column otherwise (before Ray starts)."""
    if not cfg.covariates:
        return
    from ksmodel.baselines import check_covariates as check

    try:
        check(data.cohort, cfg.covariates, cfg.task)
    except ConfigError as exc:
        raise ConfigError(f"{cfg.source}: {exc}") from None


def fit_seed(cfg: StudyConfig) -> int:
    """The seed handed to the baselines (only scikit-learn's unused random_state sees it)."""
    return int(cfg.seeds[0]) if cfg.seeds else int(cfg.fixed.get("seed", 0))


def _by_fold(results: Sequence[BaselineResult]) -> tuple[dict[str, str], list[Metric]]:
    """Params equal on every fold; numeric ones that vary per fold become fold metrics."""
    keys = dict.fromkeys(k for r in results for k in r.params)
    params: dict[str, str] = {}
    metrics: list[Metric] = []
    for key in keys:
        values = [r.params.get(key) for r in results]
        if all(v == values[0] for v in values):
            params[key] = str(values[0])
        for r in results:
            v = r.params.get(key)
            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and \
                    not all(x == values[0] for x in values):
                metrics.append(Metric(fold_metric(r.fold, key), float(v), 0, 0))
    for r in results:
        metrics.append(Metric(fold_metric(r.fold, "features"), float(len(r.features)), 0, 0))
        metrics.append(Metric(fold_metric(r.fold, FIT_SECONDS), round(r.fit_seconds, 3), 0, 0))
    metrics.append(Metric(FIT_SECONDS, round(sum(r.fit_seconds for r in results), 3), 0, 0))
    return params, metrics


def _finals(results: Sequence[BaselineResult]) -> list[Metric]:
    out = []
    for name in results[0].metrics:
        values = [r.metrics[name] for r in results]
        out.append(Metric(final_metric(name), float(np.mean(values)), 0, 0))
        out += [Metric(fold_metric(r.fold, final_metric(name)), float(r.metrics[name]), 0, 0)
                for r in results]
    return out


def _start(client: MlflowClient, experiment_id: str, parent: str, name: str,
           tags: dict[str, str]) -> str:
    """The baseline's run; an earlier unfinished attempt is marked INTERRUPTED first."""
    earlier = trial_runs(client, experiment_id, baseline_trial_id(name))
    for run in earlier:
        if run.info.status == "RUNNING":
            retry(lambda r=run: client.set_tag(r.info.run_id, Tags.STATUS, Status.INTERRUPTED))
            retry(lambda r=run: client.set_terminated(r.info.run_id, "KILLED"))
    all_tags = {Tags.ROLE: Roles.BASELINE, Tags.TRIAL_ID: baseline_trial_id(name),
                Tags.PARENT: parent, Tags.ATTEMPT: str(len(earlier) + 1),
                Tags.STATUS: Status.RUNNING, **tags}
    if earlier:
        all_tags[Tags.RETRY_OF] = earlier[-1].info.run_id
    run = retry(lambda: client.create_run(experiment_id, run_name=run_name(Roles.BASELINE, name),
                                          tags=all_tags))
    return run.info.run_id


def log_baseline(client: MlflowClient, experiment_id: str, parent: str, cfg: StudyConfig,
                 data: RunData, name: str, extra_tags: dict[str, str] | None = None,
                 table: pd.DataFrame | None = None) -> str:
    """Fit baseline ``name`` on every fold of the study and log its run; returns the status.
    ``table``: the cohort's whole expression table, read once for the ``_table`` baselines."""
    task = get_task(cfg.task)
    tags = {Tags.METHOD: name, Tags.TASK: cfg.task, Tags.METRIC: task.metric,
            Tags.FOLDS: ",".join(map(str, data.folds)), Tags.SEED: SEEDLESS,
            Tags.STUDY: cfg.name, **(extra_tags or {})}
    if getattr(cfg, "variants", None):  # a variants study groups by ks.variant
        tags[Tags.VARIANT] = name
    run_id = _start(client, experiment_id, parent, name, tags)
    seed = fit_seed(cfg)
    log1p = bool(cfg.fixed.get("log1p", TrainConfig.log1p))
    try:
        results = run_baseline(name, data.cohort, data.splits, cfg.task, cfg.covariates,
                               seed=seed, log1p=log1p, table=table)
    except Exception as exc:  # noqa: BLE001 - a baseline that cannot be fit must not stop the study
        message = f"{type(exc).__name__}: {exc}"
        log_batched(client, run_id, tags=[RunTag(Tags.STATUS, Status.FAILED),
                                          RunTag(Tags.ERROR, message[:5000])])
        retry(lambda: client.set_terminated(run_id, "FAILED"))
        print(f"baseline {name}: FAILED ({message})", flush=True)
        return Status.FAILED
    params, fold_facts = _by_fold(results)
    params.update({Params.BASELINE: name, Params.DESCRIPTION: BASELINES[name].description,
                   Params.FOLDS: str(len(results)), "covariates": ",".join(cfg.covariates)
                   if BASELINES[name].needs_covariates else ""})
    params = {k: v for k, v in params.items() if v != ""}
    predictions = pd.concat([r.predictions for r in results], ignore_index=True).assign(seed=seed)
    notes = [f"fold {r.fold}: {n}" for r in results for n in r.notes]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Artifacts.PREDICTIONS
        predictions.to_parquet(path, index=False)
        retry(lambda: client.log_artifact(run_id, str(path)))
        if notes:
            retry(lambda: client.log_text(run_id, "\n".join(notes) + "\n", Artifacts.NOTES))
    end_tags = [RunTag(Tags.STATUS, Status.COMPLETED),
                # in words; a fold whose smallest stratum allowed fewer inner folds says so too
                RunTag(Tags.BASELINE_INPUTS, results[0].inputs),
                RunTag(Tags.BASELINE_TUNING, "; ".join(dict.fromkeys(r.tuning
                                                                     for r in results)))]
    if notes:
        end_tags.append(RunTag(Tags.NOTES, "; ".join(notes)[:5000]))
    log_batched(client, run_id, params=[Param(k, v[:6000]) for k, v in sorted(params.items())],
                metrics=_finals(results) + fold_facts, tags=end_tags)
    retry(lambda: client.set_terminated(run_id, "FINISHED"))
    metric = task.metric
    value = float(np.mean([r.metrics[metric] for r in results]))
    seconds = sum(r.fit_seconds for r in results)
    print(f"baseline {name}: {metric} {value:.4f} (mean over {len(results)} folds, fit "
          f"{seconds:.1f} s)"
          + (f"; {len(notes)} note(s): {notes[0]}" if notes else ""), flush=True)
    return Status.COMPLETED


def run_baselines(client: MlflowClient, experiment_id: str, parent: str, cfg: StudyConfig,
                  data: RunData, extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    """Every baseline of the study (``baselines:``) that has no COMPLETED run yet (a resumed
    study does not fit them again); returns baseline -> status."""
    out: dict[str, str] = {}
    kind = get_task(cfg.task).kind
    left_out = [b for b in baselines_for(kind) if b not in cfg.baselines
                and BASELINES[b].needs_covariates and not cfg.covariates]
    if cfg.baselines:
        need = "needs" if len(left_out) == 1 else "need"
        say(f"baselines on the study's folds: {', '.join(cfg.baselines)}"
            + (f" ({', '.join(left_out)} {need} `covariates:` in the study file)"
               if left_out else ""))
    table: pd.DataFrame | None = None
    for name in cfg.baselines:
        if completed_run(client, experiment_id, baseline_trial_id(name)) is not None:
            out[name] = Status.COMPLETED
            continue
        if BASELINES[name].needs_table and table is None:
            try:  # read once for every _table baseline (if it fails, each fails on its own)
                table, notes = table_expression(data.cohort)
            except Exception:  # noqa: BLE001 - log_baseline reads it again and records why
                notes = ()
            for note in notes:
                print(f"baselines: {note}", flush=True)
        out[name] = log_baseline(client, experiment_id, parent, cfg, data, name, extra_tags,
                                 table)
    return out


def baseline_values(client: MlflowClient, experiment_id: str, names: Sequence[str],
                    metric: str) -> dict[str, Any]:
    """Final ``metric`` of each baseline's completed run (for the end-of-study table)."""
    out: dict[str, Any] = {}
    for name in names:
        run = completed_run(client, experiment_id, baseline_trial_id(name))
        if run is not None:
            out[name] = run.data.metrics.get(final_metric(metric))
    return out


__all__ = ["check_covariates", "run_baselines", "log_baseline", "baseline_values", "fit_seed"]
