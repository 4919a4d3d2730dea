"""What a study prints while it runs, made for studies rather than for Ray's generic trial table.

One line when a trial starts (its searched parameters, short) and one when it ends (completed,
stopped early by ASHA at epoch e, or failed, with its fold-mean validation metric); between
them, one compact status line per reported epoch: which epoch of which trial, the trial's value,
how many trials run / are done / were stopped (only where the scheduler stops trials) / failed
out of n, the best value so far, and an estimated time left from the measured seconds per
trial-epoch. Every line fits in 120 columns. Ray's own table is switched off
(``RunConfig(verbose=0)``): this replaces it. A nested study gives each outer fold's search one
of these (``prefix`` "outer k", one clock and one time estimate across the searches).

Levels: ``quiet`` prints nothing here (the final summary still comes from study/finish.py),
``normal`` the lines above, ``verbose`` adds each epoch's per-fold values and training loss.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from ray import tune

from study.quiet import WIDTH
from study.record import TRAIN_LOSS, parse_fold_metric, val_metric
from study.results import COMPLETED, ITERATION, REPLAYED

LEVELS = ("quiet", "normal", "verbose")
STOPPERS = {"asha": "ASHA", "pbt": "PBT"}
"""How the terminal names the scheduler that ends trials early."""


def can_stop(scheduler: str) -> bool:
    """Whether the scheduler stops trials before their last epoch (so "0 stopped" says
    something)."""
    return scheduler == "asha"


def stopper(scheduler: str) -> str:
    """``ASHA``; ``the scheduler`` for one without a name here."""
    return STOPPERS.get(scheduler, "the scheduler")


def short(value: Any) -> str:
    """A parameter value in a few characters: 3 significant digits for floats."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(short(v) for v in value) + "]"
    return str(value)


def clock(seconds: float) -> str:
    """``mm:ss`` below an hour, ``hh:mm:ss`` above."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def duration(seconds: float) -> str:
    """``45s``, ``4m10s``, ``1h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def fit(line: str, width: int = WIDTH) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"


@dataclass
class _Trial:
    number: int
    params: str
    epochs: int = 0
    value: float | None = None
    last_at: float | None = None
    state: str = "running"  # running | completed | stopped | failed


@dataclass
class StudyProgress(tune.Callback):
    """Ray Tune callback printing the study's progress (see the module docstring).

    ``total``: trials the study will run (num_samples, or the grid's size); ``epochs``: the
    budget per trial; ``searched``: the parameter names worth showing; ``mode``: max or min;
    ``scheduler``: the study's (asha, pbt, none). A nested study's searches: ``prefix`` labels
    the outer fold, ``started_at`` keeps one clock, ``later`` counts the trials of the
    searches still to come and ``epoch_seconds`` is shared (for the time estimate).
    """

    metric: str
    total: int
    epochs: int
    searched: Sequence[str]
    mode: str = "max"
    concurrency: int = 1
    level: str = "normal"
    scheduler: str = "asha"
    prefix: str = ""
    started_at: float | None = None
    later: int = 0
    out: TextIO | None = None
    now: Callable[[], float] = time.monotonic
    trials: dict[str, _Trial] = field(default_factory=dict)
    epoch_seconds: list[float] = field(default_factory=list)
    best: tuple[float, int] | None = None  # (value, trial number)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"progress level must be one of {LEVELS}, got {self.level!r}")
        self.key = val_metric(self.metric)
        self.start = self.now() if self.started_at is None else self.started_at
        self.began = self.now()  # this search's start (``start`` is the clock's)

    # --- output -----------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        if self.level == "quiet":
            return
        stream = self.out if self.out is not None else sys.stdout
        print(fit(f"[{clock(self.now() - self.start)}] {text}"), file=stream, flush=True)

    def _params(self, config: dict[str, Any] | None) -> str:
        config = config or {}
        names = [n for n in self.searched if n in config] or sorted(config)
        return " ".join(f"{n}={short(config[n])}" for n in names)

    def _trial(self, trial: Any) -> _Trial:
        t = self.trials.get(trial.trial_id)
        if t is None:
            t = self.trials[trial.trial_id] = _Trial(len(self.trials) + 1,
                                                     self._params(trial.config))
        return t

    def _label(self, t: _Trial) -> str:
        return f"{self.prefix}trial {t.number}/{max(self.total, t.number)}"

    def _value(self, v: float | None) -> str:
        return f"{self.key} {v:.3f}" if v is not None and math.isfinite(v) else f"{self.key} -"

    # --- counts and estimate ----------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = {"running": 0, "completed": 0, "stopped": 0, "failed": 0}
        for t in self.trials.values():
            out[t.state] += 1
        return out

    def eta(self) -> float | None:
        """Seconds left if every trial still to run used its full budget (ASHA can only make
        it shorter): remaining trial-epochs x mean seconds per trial-epoch / trials at once."""
        if not self.epoch_seconds:
            return None
        per_epoch = sum(self.epoch_seconds) / len(self.epoch_seconds)
        running = [t for t in self.trials.values() if t.state == "running"]
        waiting = max(0, self.total - len(self.trials)) + self.later
        left = sum(self.epochs - t.epochs for t in running) + waiting * self.epochs
        # trials at once: at most the study's limit, and no more than are left to run
        return left * per_epoch / max(1, min(self.concurrency, len(running) + waiting))

    def status(self, t: _Trial) -> str:
        c = self.counts()
        best = (f"best {self.best[0]:.3f} (trial {self.best[1]})" if self.best is not None
                else "best -")
        eta = self.eta()
        left = f"left ≤{duration(eta)}" if eta is not None else "left ?"
        stop = f"stop {c['stopped']} " if c["stopped"] or can_stop(self.scheduler) else ""
        return (f"{self._label(t)} epoch {t.epochs}/{self.epochs} {self._value(t.value)} | "
                f"run {c['running']} done {c['completed']} {stop}"
                f"fail {c['failed']} of {self.total} | {best} | {left}")

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    # --- Ray Tune callback hooks --------------------------------------------------------------
    def setup(self, stop: Any = None, num_samples: int | None = None,
              total_num_samples: int | None = None, **info: Any) -> None:
        if total_num_samples:
            self.total = int(total_num_samples)
        self.began = self.now()
        if self.started_at is None:
            self.start = self.began

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        t.state, t.last_at = "running", self.now()
        self._print(f"{self._label(t)} started  {t.params}  (run trial-{trial.trial_id})")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict,
                        **info: Any) -> None:
        t = self._trial(trial)
        now = self.now()
        if t.last_at is not None and not result.get(REPLAYED):
            self.epoch_seconds.append(now - t.last_at)
        t.last_at = now
        t.epochs = int(result.get(ITERATION, t.epochs + 1))
        value = result.get(self.key)
        t.value = float(value) if value is not None else None
        if t.value is not None and math.isfinite(t.value) and self._better(t.value):
            self.best = (t.value, t.number)
        self._print(self.status(t))
        if self.level == "verbose":
            folds = sorted((f, v) for k, v in result.items()
                           if (p := parse_fold_metric(k)) and p[1] == self.key
                           for f in [p[0]])
            per_fold = " ".join(f"f{f} {v:.3f}" for f, v in folds)
            loss = result.get(TRAIN_LOSS)
            loss_text = f"{TRAIN_LOSS} {loss:.4f}  " if loss is not None else ""
            self._print(f"  {self._label(t)} {loss_text}{per_fold}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        last = trial.last_result or {}
        if last.get(COMPLETED):
            t.state, what = "completed", f"completed {t.epochs} epochs"
        else:
            t.state = "stopped"
            what = f"stopped early by {stopper(self.scheduler)} at epoch {t.epochs}/{self.epochs}"
        self._print(f"{self._label(t)} {what}  {self._value(t.value)}  {t.params}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        t = self._trial(trial)
        t.state = "failed"
        self._print(f"{self._label(t)} FAILED at epoch {t.epochs}/{self.epochs}  {t.params}  "
                    f"(error in MLflow run trial-{trial.trial_id}, tag ks.error)")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        c = self.counts()
        stopped = (f"{c['stopped']} stopped early, " if c["stopped"] or can_stop(self.scheduler)
                   else "")
        what = f"{self.prefix}search" if self.prefix else "all trials"
        self._print(f"{what} ended in {duration(self.now() - self.began)}: "
                    f"{c['completed']} completed, {stopped}{c['failed']} failed")


__all__ = ["StudyProgress", "LEVELS", "WIDTH", "short", "clock", "duration", "fit", "can_stop",
           "stopper"]
