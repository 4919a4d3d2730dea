"""Nested evaluation (``evaluation: nested``): an estimate of the searched model that the search
never saw.

The study's folds are the outer folds. For each outer fold k:

1. its training part (every other outer fold) is split into ``inner_folds`` patient-level folds,
   stratified on the task's strata and seeded by (``split_seed``, k); all of them are saved in
   ``inner_splits.parquet`` (columns outer_fold, case_id, fold) and reused on ``--resume``, so
   they are reproducible and can be checked: outer fold k's rows are in none of them;
2. the search runs on those inner folds only (one Ray Tune ``Tuner``, the study's sampler,
   scheduler and budget; its trials are ordinary trial runs tagged ``ks.outer_fold`` = k);
3. the completed inner trial with the best inner cross-validation score is chosen, retrained on
   the whole outer training part (a Ray task with a trial's resources) and scored once on outer
   fold k: the ``outer`` run of fold k. Epochs: the study's ``epochs`` and the last epoch, as in
   the search; with ``patience`` > 0 the outer fold must not pick the epoch, so the refit trains
   the median epoch early stopping selected on the chosen trial's inner folds (its learning-rate
   schedule still spans the study's epochs, as in the search) and is scored at its last epoch.

The mean of the outer scores is the nested estimate (parent metric ``nested_<m>``); the mean of
the chosen trials' inner scores is what best-of-search would have reported (``inner_<m>``).

One Tuner per outer fold, not one Tuner whose trials carry the outer fold: with one Optuna
sampler for all outer folds, the proposals for outer fold k would be informed by trials of other
outer folds, which train and validate on fold k's rows - the outer fold would leak into its own
search. Separate Tuners keep each search blind to its outer fold, let ASHA rank trials that ran
on the same inner folds, and can be resumed one by one. The price: outer folds are searched one
after another, so at most ``max_concurrent`` trials run at a time.

Each outer fold's sampler is seeded from (``sampler_seed``, outer fold) (``outer_sampler_seed``),
so the outer folds do not all try the same configurations (with one seed, a search at or below
TPE's start-up trials would draw the same random configurations in every outer fold). The study
key ``outer_sampler_seeds: same`` gives every outer fold ``sampler_seed`` instead. The seed is on
the outer run (param ``sampler_seed``) and on its inner trials (tag ``ks.sampler_seed``).

Compute: k_outer x (the search: num_samples trials x inner_folds folds) + k_outer refits.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import ray
import torch
import yaml
from ray import tune

from analysis.answer import terminal_lines  # standard library only at import
from ksmodel.cohort import Cohort
from ksmodel.config import TrainConfig
from ksmodel.data import RunData
from ksmodel.errors import CohortError
from ksmodel.errors import few as _few
from ksmodel.splits import fold_case_ids
from ksmodel.tasks import get_task
from study.baseline_runs import baseline_values
from study.configuration_run import complete, open_run, run_params, run_tags
from study.fanout import LocalFolds
from study.finish import next_steps, summarise
from study.folder import StudyError
from study.progress import StudyProgress, fit
from study.quiet import WIDTH
from study.record import (
    EPOCHS_RUN,
    SUMMARY_PARAM,
    TRAIN_LOSS,
    Artifacts,
    Params,
    Roles,
    Tags,
    final_metric,
    fold_metric,
    inner_metric,
    nested_metric,
    outer_trial_id,
    run_name,
    summary_param,
    val_metric,
)
from study.results import COMPLETED, RUN_ID, TRIAL_ID
from study.search import make_search, make_tuner
from study.space import StudyConfig
from study.spec import TrialContext
from study.tracking import completed_run, log_frame, retry
from study.trial import run_trial
from study.trial_callback import TrialStatusCallback

INNER_COLUMNS = ["outer_fold", "case_id", "fold"]


# --- inner splits ----------------------------------------------------------------------------

def inner_seed(split_seed: int, outer_fold: int) -> int:
    """The seed of outer fold ``outer_fold``'s inner split (one stream per outer fold)."""
    return int(np.random.SeedSequence([int(split_seed), int(outer_fold)]).generate_state(1)[0])


def outer_sampler_seed(cfg: StudyConfig, outer_fold: int) -> int:
    """The seed of outer fold ``outer_fold``'s sampler: drawn from (``sampler_seed``, outer
    fold), or ``sampler_seed`` itself with ``outer_sampler_seeds: same``."""
    if cfg.outer_sampler_seeds == "same":
        return int(cfg.sampler_seed)
    seq = np.random.SeedSequence([int(cfg.sampler_seed), int(outer_fold)])
    return int(seq.generate_state(1)[0] % (2**31 - 1))  # within every sampler's seed range


def _strata(cohort: Cohort, task: str) -> pd.Series:
    t = get_task(task)
    return pd.Series(t.strata(cohort.targets(task)), index=cohort.case_ids)


def make_inner_splits(cohort: Cohort, task: str, outer: pd.DataFrame, k: int,
                      split_seed: int) -> pd.DataFrame:
    """Stratified k-fold split of every outer training part: DataFrame[outer_fold, case_id,
    fold]. Outer fold f's own cases are in none of outer fold f's inner folds."""
    from sklearn.model_selection import StratifiedKFold  # heavy; only this function splits

    strata = _strata(cohort, task)
    what = get_task(task).strata_name
    frames = []
    for f in sorted(int(x) for x in outer["fold"].unique()):
        train_ids, _ = fold_case_ids(outer, f)
        s = strata.loc[train_ids].to_numpy()
        values, counts = np.unique(s, return_counts=True)
        small = [f"{what} {v}: {c} case(s)" for v, c in zip(values, counts, strict=True) if c < k]
        if small:
            raise CohortError(f"outer fold {f}: its training part cannot be split into {k} "
                              f"stratified inner folds: {_few(small)} (< {k}); use fewer "
                              f"inner_folds or fewer folds")
        inner = np.empty(len(s), dtype=np.int64)
        skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=inner_seed(split_seed, f))
        for j, (_, val) in enumerate(skf.split(np.zeros(len(s)), s)):
            inner[val] = j
        frames.append(pd.DataFrame({"outer_fold": f, "case_id": train_ids, "fold": inner}))
    return pd.concat(frames, ignore_index=True)


def inner_for(inner: pd.DataFrame, outer_fold: int) -> pd.DataFrame:
    """Outer fold ``outer_fold``'s inner folds as a split table (case_id, fold): what its
    search's trials train and validate on (``prepare_fold`` sees no other case)."""
    sel = inner[inner["outer_fold"] == outer_fold]
    return sel[["case_id", "fold"]].reset_index(drop=True)


def check_inner_splits(cohort: Cohort, task: str, outer: pd.DataFrame, inner: pd.DataFrame,
                       source: str) -> None:
    """Each outer fold's inner folds cover exactly its training part (no row of the outer fold,
    none missing, each case once) and can each be trained (the task's fold rule)."""
    missing = [c for c in INNER_COLUMNS if c not in inner.columns]
    if missing:
        raise StudyError(f"{source}: missing column(s) {', '.join(missing)}; expected "
                         f"{', '.join(INNER_COLUMNS)}")
    t = get_task(task)
    strata = _strata(cohort, task)
    outer_ids = sorted(int(x) for x in outer["fold"].unique())
    if sorted(int(x) for x in inner["outer_fold"].unique()) != outer_ids:
        raise StudyError(f"{source}: outer folds {sorted(inner['outer_fold'].unique().tolist())} "
                         f"do not match the study's folds {outer_ids}; remake it (start afresh)")
    for f in outer_ids:
        train_ids, val_ids = fold_case_ids(outer, f)
        sel = inner_for(inner, f)
        ids = sel["case_id"].astype(str)
        leaked = sorted(set(ids) & set(val_ids))
        if leaked:
            raise StudyError(f"{source}: outer fold {f}'s own case(s) {_few(leaked)} are in its "
                             f"inner folds; its search would see them")
        if ids.duplicated().any() or set(ids) != set(train_ids):
            raise StudyError(f"{source}: outer fold {f}'s inner folds do not cover its training "
                             f"part exactly once; remake it (start afresh)")
        s = strata.loc[ids].to_numpy()
        fold = sel["fold"].to_numpy()
        for j in sorted(set(fold.tolist())):
            try:
                t.check_fold(j, s[fold != j], s[fold == j], s)
            except CohortError as exc:
                raise CohortError(f"outer fold {f}, inner {exc}") from None


def prepare_inner_splits(cfg: StudyConfig, data: RunData, out: Path,
                         resume: bool) -> pd.DataFrame | None:
    """Nested studies: the inner splits (made once and saved in the study folder, read back on
    resume) after checking them; None for ``evaluation: cv``. Errors before Ray starts."""
    if cfg.evaluation != "nested":
        return None
    path = out / Artifacts.INNER_SPLITS
    if resume and path.is_file():
        inner = pd.read_parquet(path)
        inner["case_id"] = inner["case_id"].astype(str)
    else:
        inner = make_inner_splits(data.cohort, cfg.task, data.splits, cfg.inner_folds,
                                  cfg.split_seed)
    check_inner_splits(data.cohort, cfg.task, data.splits, inner, str(path))
    if not path.is_file():
        inner.to_parquet(path, index=False)
    return inner


# --- the searches ----------------------------------------------------------------------------

@dataclass
class Choice:
    """The configuration an outer fold's search chose."""

    outer_fold: int
    trial_id: str
    run_id: str | None
    config: dict[str, Any]  # what the sampler proposed (searched keys)
    inner_value: float  # its inner cross-validation score (best of the search)
    trials: int  # inner trials completed


def _tuner_name(study: str, outer_fold: int) -> str:
    return f"{study}-outer{outer_fold}"


def _search(cfg: StudyConfig, ctx: Any, outer_fold: int, storage: str,
            args: argparse.Namespace, shown: dict[str, Any]) -> Any:
    """One outer fold's search: a Tuner of its own (see the module docstring for why). Its
    progress lines are a cv study's (study/progress.py), labelled with the outer fold;
    ``shown`` carries the clock and time estimate across the searches (`_progress`)."""

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    {"cpu": cfg.resources["cpu"], "gpu": cfg.resources["gpu"]})
    name = _tuner_name(cfg.name, outer_fold)
    search = make_search(replace(cfg, sampler_seed=outer_sampler_seed(cfg, outer_fold)))
    progress = _progress(cfg, args, outer_fold, search, shown)
    run_config = tune.RunConfig(
        name=name, storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        callbacks=[TrialStatusCallback(ctx.tracking_uri, ctx.experiment_id, cfg.metric),
                   progress],
        verbose=0)  # Ray's own trial tables: replaced by the progress lines
    tuner = make_tuner(trainable, cfg, search, run_config, resume=args.resume,
                       retry_failed=args.retry_failed)
    return tuner.fit()


def _progress(cfg: StudyConfig, args: argparse.Namespace, outer_fold: int,
              search: tuple[Any, Any, int], shown: dict[str, Any]) -> Any:
    """The progress lines of outer fold ``outer_fold``'s search: one clock from the first
    search on (``shown['start']``), the seconds per trial-epoch measured so far shared, and
    the trials of the searches still to come in the time estimate."""

    search_alg, _, num_samples = search
    trials = num_samples if search_alg is not None else cfg.grid_size()
    return StudyProgress(cfg.metric, trials, cfg.epochs, cfg.searched, mode=cfg.mode,
                         concurrency=cfg.max_concurrent, level=args.progress,
                         scheduler=cfg.scheduler.type, prefix=f"outer {outer_fold} ",
                         started_at=shown["start"], later=trials * shown["after"],
                         epoch_seconds=shown["epoch_seconds"])


def choose(grid: Any, cfg: StudyConfig, outer_fold: int) -> Choice | None:
    """The completed trial with the best inner score (the rule of ``best_config.yaml``: trials
    stopped early by the scheduler never win, they ran fewer epochs)."""

    key = val_metric(cfg.metric)
    done = [r for r in grid if r.error is None and (r.metrics or {}).get(COMPLETED)
            and r.metrics.get(key) is not None]
    if not done:
        return None
    pick = min if cfg.mode == "min" else max  # the study's direction
    best = pick(done, key=lambda r: float(r.metrics[key]))
    trial_id = best.metrics.get(TRIAL_ID) or Path(best.path).name.split("_")[2]
    return Choice(outer_fold, str(trial_id), best.metrics.get(RUN_ID), dict(best.config or {}),
                  float(best.metrics[key]), len(done))


def refit_plan(client: Any, choice: Choice, cfg: StudyConfig,
               inner_folds: list[int]) -> tuple[int, str]:
    """(epochs to train on the outer training part, the rule in words). Patience 0: the
    study's epochs (last epoch, as the search scored it). Patience > 0: the median over the
    chosen trial's inner folds of the epoch early stopping selected there (first maximum of the
    fold's validation curve), never an epoch picked on the outer fold."""
    patience = int({**cfg.fixed, **choice.config}.get("patience", TrainConfig.patience))
    if patience == 0:
        return cfg.epochs, "last epoch (patience 0), the study's epochs"
    if choice.run_id is None:
        return cfg.epochs, (f"the study's epochs (patience {patience}; the chosen trial's "
                            f"curves were not found)")
    selected = []
    for j in inner_folds:
        hist = sorted(client.get_metric_history(choice.run_id,
                                                fold_metric(j, val_metric(cfg.metric))),
                      key=lambda m: m.step)
        if hist:
            selected.append(int(hist[int(np.argmax([m.value for m in hist]))].step))
    if not selected:
        return cfg.epochs, f"the study's epochs (patience {patience}; no inner curves logged)"
    epochs = max(1, min(cfg.epochs, int(round(float(np.median(selected))))))
    return epochs, (f"median inner early-stopping epoch (patience {patience}; inner folds "
                    f"selected {', '.join(map(str, selected))}), last epoch")


# --- the refit (a Ray task) ------------------------------------------------------------------

def refit_outer(ctx: TrialContext, outer_fold: int, config: dict[str, Any], epochs: int,
                info: dict[str, Any]) -> dict[str, Any]:
    """Retrain ``config`` on outer fold ``outer_fold``'s whole training part for ``epochs``
    epochs (per training seed) and score its last epoch once on the outer fold; log the outer
    run. ``ctx`` is the study's TrialContext (splits = the outer folds)."""
    start = time.perf_counter()
    # the outer fold never selects an epoch: patience 0 trained, the chosen value recorded
    spec = ctx.spec(config, folds=(outer_fold,), train_overrides={"patience": 0})
    params = run_params(spec, **{Params.OUTER_FOLD: outer_fold,
                                 Params.INNER_FOLDS: info["inner_folds"],
                                 Params.REFIT_EPOCHS: epochs, Params.REFIT_RULE: info["rule"],
                                 Params.SAMPLER_SEED: info["sampler_seed"]})
    tags = run_tags(spec, ctx, ray.get_runtime_context().get_node_id(),
                    **{Tags.ROLE: Roles.OUTER, Tags.OUTER_FOLD: str(outer_fold),
                       Tags.CHOSEN_TRIAL: info["trial_id"]})
    logger = open_run(spec, ctx, outer_trial_id(outer_fold), params, tags)
    retry(lambda: logger.client.set_tag(logger.run_id, Tags.RUN_NAME,
                                        run_name(Roles.OUTER, str(outer_fold))))
    try:
        torch.set_num_threads(max(1, int(ctx.cpus)))
        folds = LocalFolds(ctx, spec)
        for epoch in range(1, epochs + 1):
            losses = [s.trained.train_loss for s in folds.step()]
            logger.log_epoch(epoch, {TRAIN_LOSS: float(np.mean(losses))})
        final = complete(logger, folds.finals(), time.perf_counter() - start,
                         {inner_metric(ctx.metric): float(info["inner_value"])})
    except Exception as exc:
        logger.fail(exc)
        raise
    return {"outer_fold": outer_fold, "run_id": logger.run_id, **final}


def _done_refit(client: Any, experiment_id: str, outer_fold: int) -> dict[str, Any] | None:
    run = completed_run(client, experiment_id, outer_trial_id(outer_fold))
    if run is None:
        return None
    return {"outer_fold": outer_fold, "run_id": run.info.run_id, **run.data.metrics}


def _refits(cfg: StudyConfig, ctx: Any, client: Any, choices: dict[int, Choice],
            inner: pd.DataFrame) -> dict[int, dict[str, Any]]:
    """Every chosen configuration retrained and scored on its outer fold, in parallel as Ray
    tasks with a trial's resources; outer folds already refit (resume) are read back."""
    remote = ray.remote(refit_outer).options(
        num_cpus=cfg.resources["cpu"], num_gpus=cfg.resources["gpu"],
        max_retries=cfg.max_failures, retry_exceptions=False)
    ctx_ref = ray.put(ctx)
    results: dict[int, dict[str, Any]] = {}
    futures = {}
    for k, choice in choices.items():
        done = _done_refit(client, ctx.experiment_id, k)
        if done is not None:
            results[k] = done
            continue
        folds = sorted(int(f) for f in inner_for(inner, k)["fold"].unique())
        epochs, rule = refit_plan(client, choice, cfg, folds)
        print(textwrap.fill(f"outer fold {k}: refit trial {choice.trial_id} on the outer "
                            f"training part, {epochs} epochs ({rule})", width=WIDTH,
                            subsequent_indent="  "), flush=True)
        info = {"trial_id": choice.trial_id, "inner_value": choice.inner_value,
                "inner_folds": len(folds), "rule": rule,
                "sampler_seed": outer_sampler_seed(cfg, k)}
        futures[k] = remote.remote(ctx_ref, k, choice.config, epochs, info)
    for k, fut in futures.items():
        try:
            results[k] = ray.get(fut)
        except Exception as exc:  # noqa: BLE001 - the other outer folds still count
            print(f"outer fold {k}: refit FAILED: {str(exc).strip().splitlines()[-1][:300]}",
                  file=sys.stderr, flush=True)
    return results


# --- the study -------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """numpy scalars as Python values (for YAML)."""
    return value.item() if hasattr(value, "item") else value


def run_nested(cfg: StudyConfig, out: Path, ctx: Any, args: argparse.Namespace, client: Any,
               parent: str, storage: str) -> int:
    """Search every outer fold on its inner folds, refit the choices, score them on the outer
    folds, write summary.csv / nested.csv / best_config.yaml and close the parent run. Exit
    status 1 when an outer fold has no estimate (no completed inner trial, or its refit failed)."""
    inner = pd.read_parquet(out / Artifacts.INNER_SPLITS)
    inner["case_id"] = inner["case_id"].astype(str)
    retry(lambda: client.log_artifact(parent, str(out / Artifacts.INNER_SPLITS)))
    start = time.time()
    shown = {"start": time.monotonic(), "epoch_seconds": []}  # the progress lines' clock
    choices: dict[int, Choice] = {}
    summaries = []
    for i, k in enumerate(ctx.folds):
        splits_k = inner_for(inner, k)
        folds_k = sorted(int(f) for f in splits_k["fold"].unique())
        seed_k = outer_sampler_seed(cfg, k)
        print(fit(f"outer fold {k}: searching on its training part ({len(splits_k)} cases, "
                  f"{len(folds_k)} inner folds, sampler seed {seed_k}); its "
                  f"{int((ctx.splits['fold'] == k).sum())} cases stay unseen until the refit"),
              flush=True)
        ctx_k = replace(ctx, splits=splits_k, folds=folds_k,
                        tags={**ctx.tags, Tags.OUTER_FOLD: str(k),
                              Tags.SAMPLER_SEED: str(seed_k)})
        shown["after"] = len(ctx.folds) - i - 1
        grid = _search(cfg, ctx_k, k, storage, args, shown)
        summaries.append(summarise(grid, cfg).assign(outer_fold=k))
        choice = choose(grid, cfg, k)
        if choice is None:
            print(f"outer fold {k}: no inner trial completed; no estimate for this fold",
                  file=sys.stderr, flush=True)
        else:
            choices[k] = choice
    summary = pd.concat(summaries, ignore_index=True)
    summary.to_csv(out / Artifacts.SUMMARY, index=False)
    log_frame(client, parent, summary, Artifacts.SUMMARY)
    results = _refits(cfg, ctx, client, choices, inner)
    return _finish(cfg, out, client, parent, ctx.folds, choices, results, time.time() - start)


def _finish(cfg: StudyConfig, out: Path, client: Any, parent: str, folds: list[int],
            choices: dict[int, Choice], results: dict[int, dict[str, Any]],
            seconds: float) -> int:
    m = cfg.metric
    experiment_id = retry(lambda: client.get_run(parent)).info.experiment_id
    hints = next_steps(client.tracking_uri, experiment_id, cfg.name)
    rows = []
    for k in folds:
        c, r = choices.get(k), results.get(k, {})
        row: dict[str, Any] = {"outer_fold": k, "sampler_seed": outer_sampler_seed(cfg, k),
                               "chosen_trial": c.trial_id if c else None,
                               "inner_trials_completed": c.trials if c else 0,
                               inner_metric(m): c.inner_value if c else np.nan,
                               m: r.get(final_metric(m), np.nan),
                               "refit_epochs": r.get(EPOCHS_RUN, np.nan),
                               "run_id": r.get("run_id")}
        if c:
            row.update({summary_param(p): _plain(c.config[p]) for p in cfg.searched
                        if p in c.config})
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out / Artifacts.NESTED, index=False)
    log_frame(client, parent, table, Artifacts.NESTED)
    estimated = table[table[m].notna()]
    print(f"\n{cfg.name}: nested evaluation over {len(folds)} outer folds in {seconds:.0f} s")
    with pd.option_context("display.width", WIDTH, "display.max_columns", 20):
        print(table.drop(columns=["run_id"]).rename(columns=lambda c: c.removeprefix(SUMMARY_PARAM))
              .to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if estimated.empty:
        print("no outer fold has an estimate; see the errors above and in MLflow",
              file=sys.stderr)
        retry(lambda: client.set_terminated(parent, "FAILED"))
        print(hints)
        return 1
    nested, inner = float(estimated[m].mean()), float(table[inner_metric(m)].mean())
    retry(lambda: client.log_metric(parent, nested_metric(m), nested))
    retry(lambda: client.log_metric(parent, inner_metric(m), inner))
    best = {"study": cfg.name, "evaluation": "nested", nested_metric(m): nested,
            inner_metric(m): inner,
            "note": "one configuration per outer fold, each chosen on that fold's inner folds; "
                    "to choose one configuration for new patients run the study with "
                    "evaluation: cv (its best-of-search score is optimistic, this nested "
                    "estimate is not)",
            "outer_folds": [{"outer_fold": int(k), "trial_id": c.trial_id,
                             inner_metric(m): c.inner_value,
                             m: _plain(results.get(k, {}).get(final_metric(m))),
                             "params": {**{p: list(v) if isinstance(v, (list, tuple)) else v
                                           for p, v in cfg.fixed.items()},
                                        **{p: _plain(v) for p, v in c.config.items()}}}
                            for k, c in choices.items()]}
    (out / Artifacts.BEST_CONFIG).write_text(yaml.safe_dump(best, sort_keys=False))
    retry(lambda: client.log_artifact(parent, str(out / Artifacts.BEST_CONFIG)))
    baselines = baseline_values(client, experiment_id, cfg.baselines, m)
    print("\n".join(estimate_lines(m, nested, inner, baselines)))
    for line in terminal_lines(client.tracking_uri, cfg.name, parent):  # the verdicts
        print(line)
    missing = [k for k in folds if k not in set(estimated["outer_fold"])]
    if missing:
        print(f"outer fold(s) {', '.join(map(str, missing))} have no estimate: the nested "
              f"estimate above is incomplete", file=sys.stderr)
        retry(lambda: client.set_terminated(parent, "FAILED"))
        print(hints)
        return 1
    retry(lambda: client.set_terminated(parent, "FINISHED"))
    print(hints)
    return 0


def estimate_lines(metric: str, nested: float, inner: float,
                   baselines: dict[str, float | None]) -> list[str]:
    """The terminal's answer of a nested study: the nested estimate, what best-of-search
    would have said (called optimistic only when it is higher) and each baseline on the same
    outer folds, with the differences."""
    diff = inner - nested
    if diff > 0:
        judged = f"optimistic by {diff:.4f}"
    elif diff < 0:
        judged = f"{-diff:.4f} below the nested estimate"
    else:
        judged = "equal to the nested estimate"
    lines = [f"nested estimate {metric} {nested:.4f} (each outer fold scored once, by a "
             f"configuration chosen without it)",
             f"best-of-search {metric} {inner:.4f} (the chosen trials' own inner scores): "
             f"{judged}"]
    lines += [f"baseline {name} {metric} {value:.4f} on the same outer folds: nested estimate "
              f"{nested - value:+.4f}" for name, value in baselines.items() if value is not None]
    return lines


__all__ = ["make_inner_splits", "inner_for", "check_inner_splits", "prepare_inner_splits",
           "inner_seed", "outer_sampler_seed", "Choice", "choose", "refit_plan", "refit_outer",
           "run_nested", "estimate_lines", "INNER_COLUMNS"]
