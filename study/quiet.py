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
  weak-reference callback runs. Each trial calls `quiet_worker` first: it sets those loggers to
  WARNING and drops that one message when the driver asked for it (``KS_STUDY_QUIET=1``, which a
  local Ray's workers inherit; a cluster joined with ``--address`` keeps its workers' lines).
  Not Ray's ``worker_process_setup_hook``: a runtime environment of the job's own keeps Ray from
  using its pre-started workers (measured: the first tasks took 7-8 s instead of 2 s);
* "Experiment state snapshotting has been triggered multiple times": the study asks Tune to save
  its state every second (so an interrupted study loses at most a second), which is what this
  warning is about (``TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0`` is the
  switch it names);
* MLflow's "Creating initial MLflow database tables..." (``MLFLOW_LOGGING_LEVEL=WARNING``, which
  Ray's workers inherit as well);
* "Saving experiment state to storage ... failed" with a ``FileNotFoundError`` on one of Ray's own
  ``-tmp-`` files in its staging folder (`StagingRace`): Ray copies the staging folder to the
  study folder in a background thread while its next save writes a temporary file there and
  renames it; the copy that listed the temporary file fails, and the next save (a second later)
  copies the state whole. Any other failure of that copy (a full disk, a permission) prints.

Warnings and errors still come through: a trial's traceback, a fold without a class, a failed
MLflow write. ``--verbose`` changes nothing here: every line above is printed as before.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import textwrap
from typing import Any

WIDTH = 119
"""Longest line the study prints (terminals are 120 columns or wider; nothing wraps)."""


def say(text: str, indent: str = "  ") -> None:
    """Print ``text`` as lines of at most ``WIDTH`` columns, continuation lines indented."""
    print(textwrap.fill(text, width=WIDTH, subsequent_indent=indent, break_long_words=False,
                        break_on_hyphens=False), flush=True)


QUIET_LOGGERS = ("ray", "ray.tune", "ray.train", "ray.data", "mlflow")
"""Loggers whose INFO lines say nothing about the study (WARNING and above still print)."""

QUIET_ENV = "KS_STUDY_QUIET"
"""Set to 1 by the driver: the trials quiet Ray's INFO lines too (`quiet_worker`)."""

ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
       "MLFLOW_LOGGING_LEVEL": "WARNING", QUIET_ENV: "1"}
"""Environment switches set for the driver and (inherited) the study's local Ray workers."""

AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Ray's logger of the token-authentication notice (Ray 2.60)."""


STATE_LOGGER = "ray.tune.execution.experiment_state"
"""Ray Tune's logger of a failed copy of the experiment state into the study folder."""


class StagingRace(logging.Filter):
    """Drop Ray's report of a state copy that failed only because a temporary file of Ray's own
    next save vanished under it (renamed into place); keep every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (isinstance(exc, FileNotFoundError) and _TMP_FILE.search(str(exc)))


_TMP_FILE = re.compile(r"/[^/']*-tmp-[^/']*'")  # a quoted path whose file name is Ray's temporary


def quiet_driver(level: str) -> None:
    """Before MLflow or Ray start: switch their chatter off (not with ``verbose``)."""
    if level == "verbose":
        return
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger(AUTH_LOGGER).setLevel(logging.ERROR)
    logging.getLogger(STATE_LOGGER).addFilter(StagingRace())


def ray_init_kwargs(level: str) -> dict[str, Any]:
    """Keyword arguments of the study's ``ray.init``: Ray's own log level (not changed with
    ``verbose``)."""
    return {} if level == "verbose" else {"logging_level": logging.WARNING}


def _drop_exit_during_shutdown(unraisable: Any) -> None:
    """A trial process that Ray ends (ASHA stopped it) raises SystemExit from its SIGTERM
    handler; raised inside a weak-reference callback, Python reports it as "Exception ignored".
    That one is expected; every other unraisable exception is reported as usual."""
    if isinstance(unraisable.exc_value, SystemExit):
        return
    sys.__unraisablehook__(unraisable)


def quiet_worker() -> None:
    """In a trial's process, before it reports: Ray's INFO lines off and a stopped trial's
    exit unreported, if the driver asked for it (`QUIET_ENV`)."""
    if os.environ.get(QUIET_ENV) != "1":
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    sys.unraisablehook = _drop_exit_during_shutdown


__all__ = ["quiet_driver", "ray_init_kwargs", "quiet_worker", "QUIET_LOGGERS", "ENV",
           "AUTH_LOGGER", "QUIET_ENV", "STATE_LOGGER", "StagingRace"]
