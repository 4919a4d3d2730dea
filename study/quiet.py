"""What a study keeps off the terminal unless ``--verbose`` asks for it, and how.

A study's terminal is its progress lines (study/progress.py) and its summary. Left alone, Ray,
Ray Tune and MLflow add their own lines, none of which tells a researcher anything about the
study:

* Ray's "Token authentication is enabled for this Ray cluster" warning: Ray enables token
  authentication for every local cluster it starts (and says so each time). Authentication
  stays on; only that logger (`AUTH_LOGGER`) is set to ERROR;
* "Started a local Ray instance", "Wrote the latest version of all result files ...": INFO logs
  of Ray and Ray Tune (their loggers are set to WARNING);
* "Checkpoint successfully created at ... [repeated 5x across cluster]": an INFO log inside every
  trial at every mid-trial checkpoint (study/checkpoint.py), forwarded by Ray to the driver; and
  "Exception ignored ... SystemExit: 1", printed by a trial process that ASHA stops while a
  weak-reference callback runs. A worker set-up hook (`worker_setup`, run by Ray in every worker
  of the study) sets those loggers to WARNING and drops that one message;
* "Experiment state snapshotting has been triggered multiple times": the study asks Tune to save
  its state every second (so an interrupted study loses at most a second), which is what this
  warning is about (``TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0`` is the
  switch it names);
* MLflow's "Creating initial MLflow database tables..." (``MLFLOW_LOGGING_LEVEL=WARNING``, which
  Ray's workers inherit as well).

Warnings and errors still come through: a trial's traceback, a fold without a class, a failed
MLflow write. ``--verbose`` changes nothing here: every line above is printed as before.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "mlflow")
"""Loggers whose INFO lines say nothing about the study (WARNING and above still print)."""

ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
       "MLFLOW_LOGGING_LEVEL": "WARNING"}
"""Environment switches set for the driver and (inherited) the study's local Ray workers."""

AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Ray's logger of the token-authentication notice (Ray 2.60)."""

WORKER_SETUP = "study.quiet.worker_setup"
"""Ray's ``worker_process_setup_hook`` for the study's workers (imported there by name)."""


def quiet_driver(level: str) -> None:
    """Before MLflow or Ray start: switch their chatter off (not with ``verbose``)."""
    if level == "verbose":
        return
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)


def ray_init_kwargs(level: str) -> dict[str, Any]:
    """Keyword arguments of the study's ``ray.init``: Ray's own log level and the workers'
    set-up hook (none with ``verbose``)."""
    if level == "verbose":
        return {}
    return {"logging_level": logging.WARNING,
            "runtime_env": {"worker_process_setup_hook": WORKER_SETUP}}


def _drop_exit_during_shutdown(unraisable: Any) -> None:
    """A trial process that Ray ends (ASHA stopped it) raises SystemExit from its SIGTERM
    handler; raised inside a weak-reference callback, Python reports it as "Exception ignored".
    That one is expected; every other unraisable exception is reported as usual."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def worker_setup() -> None:
    """Run by Ray in each of the study's worker processes before any trial code."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.unraisablehook = _drop_exit_during_shutdown


__all__ = ["quiet_driver", "ray_init_kwargs", "worker_setup", "QUIET_LOGGERS", "ENV",
           "AUTH_LOGGER", "WORKER_SETUP"]
