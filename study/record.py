"""The MLflow record of a study: every run name, tag, param, metric and artifact name, in one place.

``study/`` writes this record, ``analysis/`` reads it back and the tests check it; all import the
names from here (standard library only, with the telemetry names of ksmodel/telemetry.py, so
the analysis does not pull in Ray or torch).

Layout: one MLflow experiment per study (named after it); one parent run (``ks.role`` = study)
holding the study config and report; one child run per trial (``ks.role`` = trial) with the
trial's parameters, per-epoch metrics, final per-fold metrics and predictions; one child run per
baseline (``ks.role`` = baseline) scored on the study's folds, in the same layout. Nested
evaluation (``ks.evaluation`` = nested) adds one ``outer`` run per outer fold: the configuration
the search chose on that fold's inner folds, retrained on the outer training part and scored once
on the outer fold; its inner trials carry ``ks.outer_fold``.

Metric names (the README's "What you see in MLflow" table explains each to users):

* per epoch (``step`` = epoch): ``val_<m>`` - validation metric averaged over folds (x seeds), the
  number ASHA and Optuna judge a trial by; ``train_loss``; ``coord/<key>`` - gradient-coordination
  telemetry averaged over the epoch's steps and folds;
* at the end (``step`` = 0): ``final_<m>`` for every metric of the task, each fold at its
  selected epoch, averaged over folds (x seeds); ``epochs_run``;
* per fold, one pattern for every fold-mean key X above: ``fold_<k>/X`` (so ``fold_0/val_auc`` is
  fold 0's per-epoch validation AUC and ``fold_0/final_auc`` its final one).
"""

from __future__ import annotations

import re

from ksmodel.telemetry import LAYER_COS, REL_CHANGE, TELEMETRY_KEYS  # standard library only


class Roles:
    """Tag ``ks.role``: what a run is."""

    STUDY = "study"
    TRIAL = "trial"
    BASELINE = "baseline"
    OUTER = "outer"  # nested evaluation: the chosen configuration, refit, scored on an outer fold


class Status:
    """Tag ``ks.status``: how a trial run ended (MLflow's own status is coarser)."""

    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    STOPPED_EARLY = "STOPPED_EARLY"  # stopped by the scheduler (ASHA) before its last epoch
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"  # its process died; a retry carries on

    USABLE = (COMPLETED, STOPPED_EARLY)  # have validation metrics


class Tags:
    PARENT = "mlflow.parentRunId"  # MLflow's own nesting tag
    RUN_NAME = "mlflow.runName"  # MLflow's own run-name tag
    ROLE = "ks.role"
    STUDY = "ks.study"
    STATUS = "ks.status"
    # trial runs
    TRIAL_ID = "ks.trial_id"
    ATTEMPT = "ks.attempt"
    RETRY_OF = "ks.retry_of"
    METHOD = "ks.method"  # the coordination rule, or 'single' without decomposition
    VARIANT = "ks.variant"  # the named variant of a variants study (what the analysis groups by)
    TASK = "ks.task"
    METRIC = "ks.metric"  # the task's selection metric, e.g. auc or cindex
    FOLDS = "ks.folds"  # comma-separated fold ids the trial was evaluated on
    SEED = "ks.seed"  # the training seed, or 'mean' when a trial averaged several
    NODE_ID = "ks.node_id"
    ERROR = "ks.error"
    STOPPED_AT = "ks.stopped_at_epoch"
    WALL_SECONDS = "ks.wall_seconds"
    # --- study folder integrity (issue 17): epochs the driver filled from Ray's results
    RECONCILED = "ks.reconciled"
    # --- mid-trial checkpoints (issue 14): a run that continued a checkpoint
    RESUMED_AT = "ks.resumed_at_epoch"  # the checkpoint's epoch; training went on from the next
    CHECKPOINT_OF = "ks.checkpoint_of"  # the trial that saved it (itself, or a PBT donor)
    # ---
    # parent run
    MODE = "ks.mode"
    SAMPLER = "ks.sampler"
    OUT = "ks.out"
    SEARCHED = "ks.searched"  # comma-separated names of the searched parameters
    REFERENCE = "ks.reference"  # the reference variant of a variants study
    EVALUATION = "ks.evaluation"  # cv | nested
    COORD_TARGET = "ks.coord_target"  # where coordination acts: classifier_rows | shared_trunk
    # nested evaluation
    OUTER_FOLD = "ks.outer_fold"  # inner trials and outer runs: the outer fold they belong to
    CHOSEN_TRIAL = "ks.chosen_trial"  # outer run: the inner trial whose configuration was refit
    SAMPLER_SEED = "ks.sampler_seed"  # inner trials: the seed of their outer fold's sampler
    # --- the search says what it is (issue 26): parent run, only when the search is random
    SEARCH_NOTE = "ks.search_note"  # e.g. num_samples <= TPE's start-up trials: random search
    # baseline runs
    NOTES = "ks.notes"  # e.g. a covariate dropped in a fold because it was constant there
    BASELINE_INPUTS = "ks.baseline_inputs"  # what it read, in words ("all 1,544 expression ...")
    BASELINE_TUNING = "ks.baseline_tuning"  # how its settings were chosen, in words


SEEDLESS = "any"
"""Value of ``ks.seed`` on a run whose result does not depend on the training seed (a
deterministic baseline): it is logged once per study and the analysis pairs it with every seed."""

EVALUATIONS = ("cv", "nested")
"""``ks.evaluation`` / study key ``evaluation``: ``cv`` (the search and the estimate share the
folds; best-of-search is optimistic) or ``nested`` (the search runs inside each outer training
part; the outer folds give the unbiased estimate)."""


class Params:
    """Trial params are the effective model/training/coordination parameters by their study-file
    names (``lr``, ``alpha``, ``tau_cos``, ...), defaults included; plus these."""

    SEEDS = "seeds"  # the training seeds a trial averaged, comma-separated
    FOLDS = "folds"  # number of folds
    # outer runs of nested evaluation
    OUTER_FOLD = "outer_fold"
    INNER_FOLDS = "inner_folds"  # how many inner folds the search used
    REFIT_EPOCHS = "refit_epochs"  # epochs trained on the outer training part
    REFIT_RULE = "refit_rule"  # how refit_epochs was chosen (never on the outer fold)
    SAMPLER_SEED = "sampler_seed"  # outer run: the seed its search's sampler was given
    # baseline runs: their own options (ksmodel.baselines) plus
    BASELINE = "baseline"
    DESCRIPTION = "description"


STUDY_PARAM = "study."
"""Parent-run params: the study configuration, flattened (``study.epochs``, ``study.folds``,
``study.scheduler.type``, ``study.fixed.lam``, ``study.search.alpha``, ...)."""
COHORT_PARAM = "cohort."
"""Parent-run params: what the cohort gave the model (``cohort.n_cases``, ``cohort.genes_tumour``,
``cohort.genes_tme``, ``cohort.genes_table``, ``cohort.path``, ...)."""


class Artifacts:
    PREDICTIONS = "predictions.parquet"  # per (seed, fold, case) validation predictions
    # --- researcher's view (issue 15): what the MLflow UI can preview on a trial's page
    PREDICTIONS_CSV = "predictions.csv"  # the same rows as CSV (the UI shows it as a table)
    CURVES = "val_curves.png"  # the trial's per-fold validation curves (the UI shows it)
    # ---
    ERROR = "error.txt"
    CONFIG = "config.yaml"
    SPLITS = "splits.parquet"
    INNER_SPLITS = "inner_splits.parquet"  # nested: outer_fold, case_id, fold (inner)
    NESTED = "nested.csv"  # nested: one row per outer fold (chosen trial, inner and outer score)
    NOTES = "notes.txt"
    SUMMARY = "summary.csv"
    BEST_CONFIG = "best_config.yaml"
    REPORT_DIR = "report"


SUMMARY_PARAM = "param."
"""summary.csv / nested.csv: the column prefix of a trial's searched values (``param.alpha``)."""


def summary_param(name: str) -> str:
    """The summary.csv column of the searched parameter ``name``."""
    return f"{SUMMARY_PARAM}{name}"


TRAIN_LOSS = "train_loss"
EPOCHS_RUN = "epochs_run"
FIT_SECONDS = "fit_seconds"  # baseline runs: fit time summed over folds (fold_<k>/fit_seconds)
TELEMETRY_PREFIX = "coord/"


def run_name(role: str, name: str) -> str:
    """``study-<study name>`` for the parent, ``trial-<trial id>`` for a trial."""
    return f"{role}-{name}"


def val_metric(metric: str) -> str:
    """Per epoch, mean over folds: what the scheduler and the search see."""
    return f"val_{metric}"


def final_metric(metric: str) -> str:
    """At the end, each fold at its selected epoch, mean over folds."""
    return f"final_{metric}"


def best_metric(metric: str) -> str:
    """Parent run: the best trial's final value."""
    return f"best_{metric}"


def inner_metric(metric: str) -> str:
    """Outer run: the chosen configuration's inner cross-validation score, i.e. the best of the
    search on that outer training part, scored on the folds it was chosen on (optimistic only
    where it is above ``nested_<metric>``; the study and report state the difference either
    way). Parent run: its mean over outer folds."""
    return f"inner_{metric}"


def nested_metric(metric: str) -> str:
    """Parent run of a nested study: the outer folds' ``final_<metric>``, averaged (unbiased)."""
    return f"nested_{metric}"


def baseline_trial_id(name: str) -> str:
    """``ks.trial_id`` of a baseline's run (one per study; a resumed study finds it again)."""
    return f"baseline-{name}"


def outer_trial_id(fold: int) -> str:
    """``ks.trial_id`` of nested evaluation's outer run for ``fold``."""
    return f"outer-{int(fold)}"


def telemetry_metric(key: str) -> str:
    return f"{TELEMETRY_PREFIX}{key}"


def fold_metric(fold: int, key: str) -> str:
    """Fold ``fold``'s value of the fold-mean metric ``key``."""
    return f"fold_{int(fold)}/{key}"


_FOLD = re.compile(r"^fold_(\d+)/(.+)$")


def parse_fold_metric(name: str) -> tuple[int, str] | None:
    """(fold, fold-mean key) of a per-fold metric name, else None."""
    m = _FOLD.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


EXPLAINED: dict[str, str] = {
    "val_<m>": "validation metric of the epoch (m = auc or cindex), mean over folds (and seeds); "
               "what ASHA and Optuna compare trials on",
    "train_loss": "training loss of the epoch (task loss + lambda x consistency), mean over folds",
    "final_<m>": "each fold's validation metric at its selected epoch (last epoch, or best with "
                 "patience), mean over folds; m = auc, accuracy, balanced_accuracy, f1 or cindex",
    "fold_<k>/<key>": "fold k's own value of <key> (e.g. fold_0/val_auc per epoch, "
                      "fold_0/final_auc at the end)",
    "epochs_run": "epochs trained (fewer than asked when early stopping ended every fold)",
    "coord/cos_mean": "mean cosine between the tumour and TME gradient blocks (per row: a class "
                      "row of the classifier, or a unit of the shared projection)",
    "coord/cos_p01": "1st percentile of the per-row cosines (mean over steps)",
    "coord/cos_p99": "99th percentile of the per-row cosines (mean over steps)",
    "coord/conflict_rate": "share of rows whose blocks point in opposite directions (cos < 0)",
    "coord/projected_tumour": "share of rows whose tumour block the rule changed",
    "coord/projected_tme": "share of rows whose TME block the rule changed",
    "coord/proj_norm": "mean norm of the gradient component the rule removed",
    "coord/skipped": "share of steps a confidence-based rule skipped (no confidence in the batch)",
    "coord/layer_cos": "cosine between the two streams' whole gradients on the coordination "
                       "target (shared_trunk: the gradients reaching the shared projection "
                       "through each stream)",
    "coord/rel_change": "how much the rule changed the update: |g' - g| / |g|, coordinated vs "
                        "plain gradient of the target (0 for uniform)",
    "coord/scale_tumour": "|g_t'| / |g_t|: how the rule rescaled the tumour stream's block",
    "coord/scale_tme": "|g_m'| / |g_m|: how the rule rescaled the TME stream's block",
    "fit_seconds": "baseline run: wall time of its fits (inputs, tuning, model, scoring), summed "
                   "over folds; fold_<k>/fit_seconds per fold",
    "best_<m>": "parent run: final metric of the best completed trial",
    "inner_<m>": "nested evaluation, outer run: the chosen configuration's inner cross-validation "
                 "score (best of the search on that outer training part, scored on the folds "
                 "it was chosen on); parent run: its mean over outer folds. Above nested_<m>: "
                 "best-of-search was optimistic by the difference; below it: no optimism "
                 "showed (the study and the report state the difference)",
    "nested_<m>": "nested evaluation, parent run: mean over outer folds of the refit "
                  "configuration's score on its outer fold (the unbiased estimate)",
}
"""Every metric name a user sees in the MLflow UI, in words."""


__all__ = ["LAYER_COS", "REL_CHANGE", "TELEMETRY_KEYS", "Roles", "Status", "Tags", "Params",
           "Artifacts", "SUMMARY_PARAM", "summary_param",
           "TRAIN_LOSS", "EPOCHS_RUN",
           "FIT_SECONDS",
           "TELEMETRY_PREFIX", "SEEDLESS", "EVALUATIONS", "STUDY_PARAM", "COHORT_PARAM",
           "run_name", "val_metric", "final_metric", "best_metric", "inner_metric",
           "nested_metric", "baseline_trial_id", "outer_trial_id", "telemetry_metric",
           "fold_metric", "parse_fold_metric", "EXPLAINED"]
