"""The keys of the results a trial reports to Ray Tune (``tune.report``), in one place.

The trial (study/trial.py) writes them; the driver reads them back: its reconciliation with
MLflow (study/reconcile.py), the study's summary (study/finish.py), the nested search's choice
(study/nested.py), the progress lines (study/progress.py) and the benchmarks. Each result also
holds the epoch's logged values under their MLflow names (study/record.py). Standard library
only.
"""

from __future__ import annotations

EPOCH = "epoch"
RUN_ID = "mlflow_run_id"  # the trial's MLflow run
REPLAYED = "replayed"  # a result re-reported from MLflow by a trial an earlier attempt finished
LOGGED_AT = "mlflow_timestamp_ms"  # the timestamp the trial gave this epoch's MLflow metrics
COMPLETED = "completed"  # the trial trained its last epoch (not stopped by the scheduler)
NODE = "node_id"  # the Ray node the trial ran on
SETUP_SECONDS = "setup_seconds"  # building the folds (models, data on the device)
TRAIN_SECONDS = "train_seconds"  # training so far
ENTERED_AT = "trial_entered_at"  # wall clock when the trainable was entered
READY_AT = "trial_ready_at"  # wall clock when its folds were ready to train
REPORTED_AT = "reported_at"  # wall clock of this report

# Ray Tune's own keys of every result
TRIAL_ID = "trial_id"
ITERATION = "training_iteration"  # reports so far: the epoch, for the schedulers
TIME_TOTAL = "time_total_s"

__all__ = ["COMPLETED", "ENTERED_AT", "EPOCH", "ITERATION", "LOGGED_AT", "NODE", "READY_AT",
           "REPLAYED", "REPORTED_AT", "RUN_ID", "SETUP_SECONDS", "TIME_TOTAL", "TRAIN_SECONDS",
           "TRIAL_ID"]
