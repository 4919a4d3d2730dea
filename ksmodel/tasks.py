"""The prediction tasks, one object each, in one registry.

A ``Task`` knows everything that differs between tasks: how many outputs the model has, which
clinical column(s) hold the label and their valid range, the targets and strata derived from
them, the training loss, the validation metrics (and which one selects models), the columns of
the prediction table, and a subspace's confidence for CG-Coord. Code elsewhere asks the task and
never branches on its name; adding a task is one definition here (plus its tests).

The module imports no torch at import time (the task names and metrics are read by the study-file
checker and ``--help``); torch, scikit-learn and lifelines are imported where they are used.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ksmodel.errors import CohortError, ConfigError, few, shown

if TYPE_CHECKING:
    import pandas as pd  # imported where used: `study.run --help` reads the task registry
    from torch import Tensor


@dataclass(frozen=True)
class FoldTargets:
    """A fold's targets as tensors for every case (cohort order) and the training-part statistics
    the loss needs (class weights, or survival bin edges)."""

    tensors: dict[str, Tensor]
    class_weights: Tensor | None = None
    bin_edges: np.ndarray | None = None


CLASSIFICATION, SURVIVAL = "classification", "survival"
KINDS = (CLASSIFICATION, SURVIVAL)
"""Task kinds (``Task.kind``): what a task predicts, so what models and baselines apply."""


@dataclass(frozen=True)
class Task(ABC):
    name: str
    n_outputs: int
    label_columns: tuple[str, ...]
    description: str

    metric: str = field(init=False)  # the validation metric models are selected on (maximised)
    metrics: tuple[str, ...] = field(init=False)  # every validation metric, selection metric first
    kind: str = field(init=False)
    strata_name: str = field(init=False)  # what folds are stratified on, for messages

    # --- labels (cohort side) -----------------------------------------------------------------
    @abstractmethod
    def validate(self, cases: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        """Clean values of the label columns; CohortError naming the cases otherwise."""

    @abstractmethod
    def targets(self, cases: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        """Model targets: {"label"} (class index) or {"time" (days), "event" (0/1)}."""

    @abstractmethod
    def strata(self, targets: Mapping[str, np.ndarray]) -> np.ndarray:
        """The values folds are stratified on."""

    @abstractmethod
    def check_fold(self, fold: int, train: np.ndarray, val: np.ndarray,
                   everything: np.ndarray) -> None:
        """Raise CohortError when a fold (strata of its two parts) cannot be trained/evaluated."""

    # --- training (torch side) ----------------------------------------------------------------
    @abstractmethod
    def fold_targets(self, targets: Mapping[str, np.ndarray], train_idx: np.ndarray
                     ) -> FoldTargets:
        """Targets as tensors, with statistics from the training part only."""

    @abstractmethod
    def loss(self, logits: Tensor, batch: Mapping[str, Tensor], fold: FoldTargets) -> Tensor:
        """The task's training loss on one batch (fp32)."""

    @abstractmethod
    def scores(self, logits: Tensor) -> np.ndarray:
        """What a prediction is scored on: class probabilities [n, C], or risk [n]."""

    @abstractmethod
    def evaluate_scores(self, scores: np.ndarray, targets: Mapping[str, np.ndarray]
                        ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """(validation metrics, prediction-table columns) from ``scores`` of the validation
        cases - the one place metrics and prediction columns are defined, so the model and the
        baselines are scored identically."""

    def evaluate(self, logits: Tensor, targets: Mapping[str, np.ndarray]
                 ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """(validation metrics, prediction-table columns) for logits of the validation cases."""
        return self.evaluate_scores(self.scores(logits), targets)

    @abstractmethod
    def confidence(self, logits: Tensor, batch: Mapping[str, Tensor]) -> float | None:
        """How well one subspace's logits alone do on a batch (CG-Coord's confidence); None when
        the batch cannot tell (the coordinator then leaves the step alone)."""


def _fail(cases: pd.DataFrame, column: str, bad: np.ndarray, rule: str, source: str) -> None:
    culprits = [f"{cid} ({shown(raw)})" for cid, raw in
                zip(cases.index[bad], cases[column].to_numpy()[bad], strict=True)]
    raise CohortError(f"{source}: {column} must be {rule}; bad value for case(s) {few(culprits)}; "
                      f"fix or remove these rows")


def _column(cases: pd.DataFrame, column: str, source: str) -> np.ndarray:
    if column not in cases.columns:
        raise CohortError(f"{source}: missing column {column}; add it (docs/cohort-format.md)")
    import pandas as pd

    return pd.to_numeric(cases[column], errors="coerce").to_numpy(dtype=np.float64)


@dataclass(frozen=True)
class ClassificationTask(Task):
    """Classes ``offset .. offset + n_outputs - 1`` in one clinical column; weighted cross-entropy
    (inverse class frequency of the training part); macro one-vs-rest AUC selects models."""

    offset: int = 0  # raw label value of class 0 (WHO grade 2 -> class 0)
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", "auc")
        object.__setattr__(self, "metrics", ("auc", "accuracy", "balanced_accuracy", "f1"))
        object.__setattr__(self, "kind", CLASSIFICATION)
        object.__setattr__(self, "strata_name", f"{self.name} class")

    @property
    def column(self) -> str:
        return self.label_columns[0]

    def validate(self, cases: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        v = _column(cases, self.column, source)
        lo, hi = self.offset, self.offset + self.n_outputs - 1
        bad = ~np.isfinite(v) | (v != np.round(v)) | (v < lo) | (v > hi)
        if bad.any():
            _fail(cases, self.column, bad, f"an integer in {lo}..{hi}", source)
        return {self.column: v.astype(np.int64)}

    def targets(self, cases: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        return {"label": self.validate(cases, source)[self.column] - self.offset}

    def strata(self, targets: Mapping[str, np.ndarray]) -> np.ndarray:
        return targets["label"]

    def check_fold(self, fold: int, train: np.ndarray, val: np.ndarray,
                   everything: np.ndarray) -> None:
        classes = np.unique(everything)
        lacking = np.setdiff1d(classes, train)
        if len(lacking):
            raise CohortError(f"fold {fold}: {self.name} class(es) {few(lacking.tolist())} missing "
                              f"from the training part; use fewer folds or stratified splits")
        lacking = np.setdiff1d(classes, val)
        if len(lacking):
            warnings.warn(f"fold {fold}: {self.name} class(es) {few(lacking.tolist())} missing "
                          f"from the validation part", UserWarning, stacklevel=3)

    def fold_targets(self, targets: Mapping[str, np.ndarray], train_idx: np.ndarray
                     ) -> FoldTargets:
        import torch

        from ksmodel.losses import class_weights

        # a copy (torch.tensor): targets may be read-only (a cohort sent through Ray's object
        # store), and a tensor sharing their memory would be writable over read-only data
        label = torch.tensor(targets["label"], dtype=torch.long)
        return FoldTargets({"label": label},
                           class_weights=class_weights(label[train_idx], self.n_outputs))

    def loss(self, logits: Tensor, batch: Mapping[str, Tensor], fold: FoldTargets) -> Tensor:
        from ksmodel.losses import classification_loss

        return classification_loss(logits.float(), batch["label"], fold.class_weights)

    def scores(self, logits: Tensor) -> np.ndarray:
        import torch

        return torch.softmax(logits.float(), dim=1).numpy()

    def evaluate_scores(self, scores: np.ndarray, targets: Mapping[str, np.ndarray]
                        ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        from ksmodel.metrics import classification_metrics

        label = np.asarray(targets["label"])
        columns = {"label": label, **{f"prob_{c}": scores[:, c] for c in range(scores.shape[1])}}
        return classification_metrics(label, scores), columns

    def confidence(self, logits: Tensor, batch: Mapping[str, Tensor]) -> float | None:
        """Mean softmax probability of the true class."""
        import torch

        label = batch["label"].to(logits.device).long().view(-1, 1)
        return float(torch.softmax(logits.detach().float(), dim=1).gather(1, label).mean())


@dataclass(frozen=True)
class SurvivalTask(Task):
    """Discrete-time hazards over ``n_outputs`` bins (quartiles of the training part's event
    times), censored NLL; risk = -sum_k S_k; Harrell's C-index selects models."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metric", "cindex")
        object.__setattr__(self, "metrics", ("cindex",))
        object.__setattr__(self, "kind", SURVIVAL)
        object.__setattr__(self, "strata_name", "event")

    def validate(self, cases: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        time_col, event_col = self.label_columns
        t = _column(cases, time_col, source)
        bad = ~np.isfinite(t) | (t < 0)
        if bad.any():
            _fail(cases, time_col, bad, "a finite number of days >= 0", source)
        e = _column(cases, event_col, source)
        bad = ~np.isin(e, (0.0, 1.0))
        if bad.any():
            _fail(cases, event_col, bad, "0 (censored) or 1 (death observed)", source)
        return {time_col: t, event_col: e.astype(np.int64)}

    def targets(self, cases: pd.DataFrame, source: str) -> dict[str, np.ndarray]:
        values = self.validate(cases, source)
        return {"time": values[self.label_columns[0]], "event": values[self.label_columns[1]]}

    def strata(self, targets: Mapping[str, np.ndarray]) -> np.ndarray:
        return targets["event"]

    def check_fold(self, fold: int, train: np.ndarray, val: np.ndarray,
                   everything: np.ndarray) -> None:
        for part, events in (("validation", val), ("training", train)):
            if events.sum() == 0:
                raise CohortError(f"fold {fold}: the {part} part ({len(events)} cases) has no "
                                  f"events, so survival cannot be evaluated; use fewer folds or "
                                  f"another split seed")

    def fold_targets(self, targets: Mapping[str, np.ndarray], train_idx: np.ndarray
                     ) -> FoldTargets:
        import torch

        from ksmodel.losses import discretise, survival_bin_edges

        time, event = targets["time"], targets["event"]
        edges = survival_bin_edges(time[train_idx], event[train_idx], n_bins=self.n_outputs)
        time_t = torch.tensor(time)  # copies, as for classification (read-only targets)
        tensors = {"bin": discretise(time_t, edges), "time": time_t.to(torch.float32),
                   "event": torch.tensor(event, dtype=torch.float32)}
        return FoldTargets(tensors, bin_edges=edges)

    def loss(self, logits: Tensor, batch: Mapping[str, Tensor], fold: FoldTargets) -> Tensor:
        from ksmodel.losses import survival_nll

        return survival_nll(logits.float(), batch["bin"], batch["event"])

    def scores(self, logits: Tensor) -> np.ndarray:
        from ksmodel.losses import survival_risk

        return survival_risk(logits.float()).numpy()

    def evaluate_scores(self, scores: np.ndarray, targets: Mapping[str, np.ndarray]
                        ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        from ksmodel.metrics import concordance

        time, event = np.asarray(targets["time"]), np.asarray(targets["event"])
        columns = {"time": time, "event": event.astype(int), "risk": scores}
        return {"cindex": concordance(time, event, scores)}, columns

    def confidence(self, logits: Tensor, batch: Mapping[str, Tensor]) -> float | None:
        """Batch C-index of the subspace's risk; None without a comparable pair."""
        from ksmodel.losses import survival_risk
        from ksmodel.metrics import batch_concordance

        device = logits.device
        return batch_concordance(batch["time"].to(device), batch["event"].to(device),
                                 survival_risk(logits.detach().float()))


TASKS: dict[str, Task] = {t.name: t for t in (
    ClassificationTask(
        "diagnosis", 4, ("diagnosis",), "WHO-2021 glioma diagnosis",
        classes=("GBM, IDH-wildtype", "astrocytoma, IDH-mutant, grade 4",
                 "astrocytoma, IDH-mutant, grade 2/3",
                 "oligodendroglioma, IDH-mutant, 1p/19q-codeleted")),
    ClassificationTask("grade", 3, ("grade",), "WHO grade (2, 3, 4)", offset=2,
                       classes=("grade 2", "grade 3", "grade 4")),
    ClassificationTask("idh", 2, ("idh_mutant",), "IDH mutation status (0 wildtype, 1 mutant)",
                       classes=("IDH-wildtype", "IDH-mutant")),
    SurvivalTask("survival", 4, ("survival_days", "event"),
                 "overall survival (discrete-time hazards, 4 bins)"),
)}
"""Task name -> Task. The first entry is the default task."""

DEFAULT_TASK: str = next(iter(TASKS))
"""The task a training config and ``python -m ksmodel.train`` use unless told."""

LABEL_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(c for t in TASKS.values()
                                                     for c in t.label_columns))
"""Every clinical column some task reads its label from."""


def get_task(name: Any) -> Task:
    """The task called ``name``; ConfigError listing the known tasks otherwise."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        raise ConfigError(f"config key 'task': must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]


def get_tasks(names: Sequence[str] | None) -> list[Task]:
    return list(TASKS.values()) if names is None else [get_task(n) for n in names]


__all__ = ["Task", "ClassificationTask", "SurvivalTask", "FoldTargets", "TASKS", "LABEL_COLUMNS",
           "CLASSIFICATION", "SURVIVAL", "KINDS", "DEFAULT_TASK", "get_task", "get_tasks"]
