"""Reference baselines scored on exactly the model's folds, with the model's metric functions.

A reviewer's first question is whether the model beats the simple models; the answer is only
valid when both see the same patients in the same folds and are scored the same way. So every
baseline here takes the study's splits (DataFrame[case_id, fold]), fits on the training part of a
fold only and is scored on its validation part with ``ksmodel.metrics`` (C-index for survival;
AUC, accuracy, balanced accuracy, F1 for classification). Its prediction table has the columns of
the model's fold predictions (``FoldTrainer.evaluate``), so the analysis pairs it like any method.

Baselines (``BASELINES``):

* ``cox_clinical`` -- Cox proportional hazards (lifelines) on clinical covariates.
* ``cox_pca`` -- L2-penalised Cox on the first k principal components of the expression.
* ``logreg_clinical`` / ``logreg_pca`` -- multinomial logistic regression (scikit-learn,
  balanced class weights) on the same inputs.

What is fit on the training part only: the covariate encoder (standardisation, imputation
values, one-hot categories), the expression scaler (log1p + z-score, ``ExpressionScaler``), the
PCA, the inputs' standardisation for logistic regression, and the model itself. Validation rows
(their expression, covariates and labels) never enter a fit.

Covariates: numeric columns are standardised; 0/1 and boolean columns are used as numbers;
text/categorical columns are one-hot encoded with the training part's categories (the first,
sorted, is the reference level and gets no column; a category unseen in training is treated as
missing). Missing values take the training median (numeric) or mode (0/1, categorical). A
covariate that is constant in a training part (after imputation) is dropped for that fold with a
note in ``BaselineResult.notes``; a covariate absent from the clinical table, entirely missing,
listed twice, or that is the task's own label is an error before anything is fit. Only the label
itself is refused: a column that implies it (e.g. ``diagnosis`` for the IDH task) is the user's
call. The PCA baselines ignore ``covariates``.

Risk for survival = Cox partial hazard (higher = earlier death); classification probabilities
are in the task's class order, ``prob_0..prob_{C-1}`` (a class absent from a training part gets
probability 0).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ksmodel.cohort import Cohort
from ksmodel.errors import ConfigError
from ksmodel.errors import few as _few
from ksmodel.splits import ExpressionScaler, check_folds, fold_case_ids
from ksmodel.tasks import Task, get_task

SURVIVAL, CLASSIFICATION = "survival", "classification"
KINDS = (CLASSIFICATION, SURVIVAL)
DEFAULT_COMPONENTS = 10
DEFAULT_PENALIZER = {"cox_clinical": 0.0, "cox_pca": 0.1}
DEFAULT_C = 1.0
MAX_ITER = 10_000


class BaselineError(ValueError):
    """A baseline could not be fit on a fold (e.g. Cox did not converge); the message says why."""


@dataclass(frozen=True)
class Baseline:
    """A registry entry: what the baseline is, and what it needs."""

    name: str
    kind: str  # "survival" | "classification"
    needs_covariates: bool
    description: str


BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("cox_clinical", SURVIVAL, True,
             "Cox proportional hazards (lifelines) on the clinical covariates"),
    Baseline("cox_pca", SURVIVAL, False,
             "L2-penalised Cox (lifelines) on the first k principal components of the expression "
             "(log1p + z-score and PCA fit on the training part)"),
    Baseline("logreg_clinical", CLASSIFICATION, True,
             "multinomial logistic regression (scikit-learn, balanced class weights) on the "
             "clinical covariates"),
    Baseline("logreg_pca", CLASSIFICATION, False,
             "multinomial logistic regression (scikit-learn, balanced class weights) on the first "
             "k principal components of the expression (log1p + z-score and PCA fit on the "
             "training part)"),
)}
"""Baseline name -> entry; ``baselines_for(kind)`` lists those that apply to a task kind."""


@dataclass(frozen=True, eq=False)
class BaselineResult:
    """One baseline on one fold: validation metrics and the per-case prediction table."""

    name: str
    fold: int
    metrics: dict[str, float]
    predictions: pd.DataFrame  # fold, case_id, then label, prob_* | time, event, risk
    features: tuple[str, ...]  # model inputs after encoding (e.g. age, idh_mutant | PC1..PCk)
    params: dict[str, object] = field(default_factory=dict)  # effective parameters (scalars)
    notes: tuple[str, ...] = ()  # e.g. a covariate dropped because constant in this fold


def baselines_for(task_kind: str) -> list[str]:
    """Names of the baselines that apply to a task kind ("classification" or "survival")."""
    if task_kind not in KINDS:
        raise ConfigError(f"task kind must be one of {', '.join(KINDS)}, got {task_kind!r}")
    return [name for name, b in BASELINES.items() if b.kind == task_kind]


# --------------------------------------------------------------------------------------------
# Inputs: clinical covariates and expression principal components


def clinical_columns(cohort: Cohort) -> list[str]:
    """Clinical columns usable as covariates (everything in ``cohort.cases`` but slide lists)."""
    return [str(c) for c in cohort.cases.columns if c != "slide_ids"]


def check_covariates(cohort: Cohort, covariates: Sequence[str], task: str) -> tuple[str, ...]:
    """Validated covariate names; ConfigError naming the column and the available ones."""
    if isinstance(covariates, str) or not all(isinstance(c, str) for c in covariates):
        raise ConfigError(f"config key 'covariates': must be a list of clinical column names, "
                          f"got {covariates!r}")
    available = clinical_columns(cohort)
    listing = f"available clinical columns: {', '.join(available)}"
    dup = sorted({c for c in covariates if list(covariates).count(c) > 1})
    if dup:
        raise ConfigError(f"config key 'covariates': {', '.join(dup)} listed more than once")
    for column in covariates:
        if column not in available:
            raise ConfigError(f"config key 'covariates': column {column!r} is not in the clinical "
                              f"table of {cohort.root}; {listing}")
        if cohort.cases[column].isna().all():
            raise ConfigError(f"config key 'covariates': column {column!r} has no value in the "
                              f"clinical table of {cohort.root} (all missing); {listing}")
    labels = [c for c in covariates if c in get_task(task).label_columns]
    if labels:
        raise ConfigError(f"config key 'covariates': {', '.join(labels)} is the label of task "
                          f"{task}; a baseline cannot use its own target as a covariate")
    return tuple(covariates)


def _is_numeric(values: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values)


def _as_float(values: pd.Series) -> pd.Series:
    """float64 with NaN for missing (also for nullable Int64/boolean columns holding NA)."""
    return pd.Series(values.to_numpy(dtype=np.float64, na_value=np.nan), index=values.index)


@dataclass(frozen=True, eq=False)
class CovariateEncoder:
    """Clinical covariates -> float matrix, with every statistic taken from the ``fit`` rows.

    kinds: "numeric" (z-scored), "binary" (0/1 as is), "categorical" (one-hot, drop first).
    """

    covariates: tuple[str, ...]  # kept covariates (constant/empty ones dropped)
    kinds: dict[str, str]
    fill: dict[str, object]  # imputation value: median (numeric) or mode
    center: dict[str, float]
    scale: dict[str, float]
    categories: dict[str, tuple[str, ...]]  # training categories, first = reference
    notes: tuple[str, ...]

    @classmethod
    def fit(cls, frame: pd.DataFrame, covariates: Sequence[str]) -> CovariateEncoder:
        kept: list[str] = []
        kinds: dict[str, str] = {}
        fill: dict[str, object] = {}
        center: dict[str, float] = {}
        scale: dict[str, float] = {}
        categories: dict[str, tuple[str, ...]] = {}
        notes: list[str] = []
        for column in covariates:
            raw = frame[column]
            if raw.isna().all():
                notes.append(f"covariate {column}: no value in the training part; dropped")
                continue
            if _is_numeric(raw):
                values = _as_float(raw)
                observed = values.dropna()
                kind = "binary" if observed.isin((0.0, 1.0)).all() else "numeric"
                value: object = (float(observed.mode().iloc[0]) if kind == "binary"
                                 else float(observed.median()))
                values = values.fillna(value)
            else:
                values = raw.astype("string")
                kind, value = "categorical", str(values.dropna().mode().iloc[0])
                values = values.fillna(value)
            if values.nunique() < 2:
                notes.append(f"covariate {column}: constant ({values.iloc[0]}) in the training "
                             f"part; dropped")
                continue
            kept.append(column)
            kinds[column], fill[column] = kind, value
            if kind == "numeric":
                center[column], scale[column] = float(values.mean()), float(values.std(ddof=0))
            elif kind == "categorical":
                categories[column] = tuple(sorted(values.unique()))
        return cls(tuple(kept), kinds, fill, center, scale, categories, tuple(notes))

    @property
    def features(self) -> tuple[str, ...]:
        names: list[str] = []
        for column in self.covariates:
            if self.kinds[column] == "categorical":
                names += [f"{column}={c}" for c in self.categories[column][1:]]
            else:
                names.append(column)
        return tuple(names)

    def unseen(self, frame: pd.DataFrame) -> list[str]:
        """Notes for categories in ``frame`` that the training part did not have."""
        out = []
        for column, cats in self.categories.items():
            new = sorted(set(frame[column].dropna().astype(str)) - set(cats))
            if new:
                out.append(f"covariate {column}: categor(ies) {_few(new)} not in the training "
                           f"part; treated as missing ({self.fill[column]})")
        return out

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """[rows, len(features)] float64 matrix."""
        blocks = []
        for column in self.covariates:
            kind = self.kinds[column]
            if kind == "categorical":
                values = frame[column].astype("string")
                values = values.where(values.isin(self.categories[column]), pd.NA)
                values = values.fillna(self.fill[column]).to_numpy(dtype=object)
                cats = np.array(self.categories[column][1:], dtype=object)
                blocks.append((values[:, None] == cats[None, :]).astype(np.float64))
                continue
            x = _as_float(frame[column]).fillna(self.fill[column]).to_numpy(dtype=np.float64)
            if kind == "numeric":
                x = (x - self.center[column]) / self.scale[column]
            blocks.append(x[:, None])
        return np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))


@dataclass(frozen=True, eq=False)
class ExpressionPCA:
    """Expression (tumour + TME genes) -> first k principal components, fit on given rows."""

    scaler: ExpressionScaler
    pca: PCA

    @classmethod
    def fit(cls, expression: pd.DataFrame, n_components: int = DEFAULT_COMPONENTS,
            log1p: bool = True, seed: int = 0) -> ExpressionPCA:
        """k = min(n_components, rows - 1, genes) components of the log1p/z-scored rows."""
        scaler = ExpressionScaler.fit(expression, log1p=log1p)
        x = scaler.transform(expression).astype(np.float64)
        k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
        pca = PCA(n_components=k, svd_solver="full", random_state=seed).fit(x)
        return cls(scaler, pca)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f"PC{i + 1}" for i in range(self.pca.n_components_))

    def transform(self, expression: pd.DataFrame) -> np.ndarray:
        return self.pca.transform(self.scaler.transform(expression).astype(np.float64))


# --------------------------------------------------------------------------------------------
# Fitting one fold


def _check_options(n_components: int, penalizer: float | None, C: float) -> None:
    if not isinstance(n_components, int) or isinstance(n_components, bool) or n_components < 1:
        raise ConfigError(f"baseline option n_components: must be an integer >= 1, got "
                          f"{n_components!r}")
    if penalizer is not None and not (np.isfinite(penalizer) and penalizer >= 0):
        raise ConfigError(f"baseline option penalizer: must be >= 0, got {penalizer!r}")
    if not (np.isfinite(C) and C > 0):
        raise ConfigError(f"baseline option C: must be > 0, got {C!r}")


def _resolve(name: str, cohort: Cohort, task: str,
             covariates: Sequence[str]) -> tuple[Baseline, Task, tuple[str, ...]]:
    """Everything that can be wrong with the request, checked before any fit."""
    if name not in BASELINES:
        raise ConfigError(f"config key 'baselines': unknown baseline {name!r}; choose from "
                          f"{', '.join(BASELINES)}")
    baseline, spec = BASELINES[name], get_task(task)
    if baseline.kind != spec.kind:
        raise ConfigError(f"config key 'baselines': {name} is a {baseline.kind} baseline but task "
                          f"{task} is {spec.kind}; use {', '.join(baselines_for(spec.kind))}")
    if not baseline.needs_covariates:
        return baseline, spec, ()
    if len(covariates) == 0:
        raise ConfigError(f"config key 'covariates': baseline {name} needs clinical covariates "
                          f"(e.g. age, is_female, idh_mutant); available clinical columns: "
                          f"{', '.join(clinical_columns(cohort))}")
    return baseline, spec, check_covariates(cohort, covariates, task)


def _fit_cox(x_train: np.ndarray, x_val: np.ndarray, features: tuple[str, ...],
             time_: np.ndarray, event: np.ndarray, penalizer: float, where: str) -> np.ndarray:
    columns = list(features)
    train = pd.DataFrame(x_train, columns=columns)
    train["__time"], train["__event"] = time_, event
    cph = CoxPHFitter(penalizer=penalizer, l1_ratio=0.0)
    try:
        cph.fit(train, duration_col="__time", event_col="__event")
    except Exception as exc:  # lifelines: ConvergenceError, LinAlgError on collinear inputs
        raise BaselineError(f"{where}: Cox did not converge ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0]}); remove collinear covariates or set "
                            f"a penalizer > 0") from exc
    return cph.predict_partial_hazard(pd.DataFrame(x_val, columns=columns)).to_numpy(np.float64)


def _fit_logreg(x_train: np.ndarray, x_val: np.ndarray, label: np.ndarray, n_classes: int,
                C: float, seed: int, where: str) -> np.ndarray:
    classes = np.unique(label)
    prob = np.zeros((len(x_val), n_classes))
    if x_train.shape[1] == 0:  # no usable input: the balanced intercept-only model
        prob[:, classes] = 1.0 / len(classes)
        return prob
    if len(classes) < 2:
        raise BaselineError(f"{where}: the training part has one class ({classes[0]}); "
                            f"logistic regression needs two")
    scaler = StandardScaler().fit(x_train)
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=MAX_ITER,
                               random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            model.fit(scaler.transform(x_train), label)
        except ConvergenceWarning as exc:
            raise BaselineError(f"{where}: logistic regression did not converge in {MAX_ITER} "
                                f"iterations; use fewer or less collinear inputs") from exc
    prob[:, model.classes_] = model.predict_proba(scaler.transform(x_val))
    return prob


def _fit_fold(baseline: Baseline, spec: Task, cohort: Cohort, splits: pd.DataFrame,
              fold: int, task: str, covariates: tuple[str, ...], seed: int, log1p: bool,
              n_components: int, penalizer: float | None, C: float) -> BaselineResult:
    train_ids, val_ids = fold_case_ids(splits, fold)
    where = f"baseline {baseline.name}, fold {fold}"
    params: dict[str, object] = {"baseline": baseline.name, "seed": seed}
    notes: list[str] = []
    if baseline.needs_covariates:
        enc = CovariateEncoder.fit(cohort.cases.loc[train_ids], covariates)
        notes += [*enc.notes, *enc.unseen(cohort.cases.loc[val_ids])]
        x_train = enc.transform(cohort.cases.loc[train_ids])
        x_val = enc.transform(cohort.cases.loc[val_ids])
        features = enc.features
        params["covariates"] = ",".join(covariates)
    else:
        genes = cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]
        pcs = ExpressionPCA.fit(cohort.expression.loc[train_ids, genes], n_components, log1p,
                                seed)
        x_train = pcs.transform(cohort.expression.loc[train_ids, genes])
        x_val = pcs.transform(cohort.expression.loc[val_ids, genes])
        features = pcs.features
        params.update(n_components=n_components, n_components_used=len(features),
                      log1p=log1p, genes=len(genes),
                      explained_variance=float(pcs.pca.explained_variance_ratio_.sum()))
    if not features:
        notes.append("no usable input in this fold: constant prediction")

    position = pd.Series(np.arange(len(cohort.cases)), index=cohort.cases.index)
    tr, va = position.loc[train_ids].to_numpy(), position.loc[val_ids].to_numpy()
    targets = cohort.targets(task)
    table = pd.DataFrame({"fold": np.full(len(val_ids), fold, dtype=np.int64),
                          "case_id": val_ids})
    if baseline.kind == SURVIVAL:  # the baseline family decides the fit (Cox or logistic)
        pen = DEFAULT_PENALIZER[baseline.name] if penalizer is None else float(penalizer)
        params["penalizer"] = pen
        time_, event = targets["time"], targets["event"]
        scores = (_fit_cox(x_train, x_val, features, time_[tr], event[tr], pen, where)
                  if features else np.ones(len(va)))
    else:
        params.update(C=C, class_weight="balanced")
        scores = _fit_logreg(x_train, x_val, targets["label"][tr], spec.n_outputs, C, seed, where)
    metrics, columns = spec.evaluate_scores(scores, {k: v[va] for k, v in targets.items()})
    table = table.assign(**columns)
    params["features"] = len(features)
    return BaselineResult(baseline.name, fold, metrics, table, tuple(features), params,
                          tuple(notes))


def fit_fold(name: str, cohort: Cohort, splits: pd.DataFrame, fold: int, task: str,
             covariates: Sequence[str] = (), *, seed: int = 0, log1p: bool = True,
             n_components: int = DEFAULT_COMPONENTS, penalizer: float | None = None,
             C: float = DEFAULT_C) -> BaselineResult:
    """Fit baseline ``name`` on the training part of ``fold`` and score its validation part.

    ``penalizer`` (Cox, L2): None = the baseline's default (cox_clinical 0, cox_pca 0.1).
    ``C`` (logistic regression): inverse L2 strength. ``n_components``, ``log1p``: PCA baselines.
    Options a baseline does not use are ignored (and not reported in ``params``).
    """
    _check_options(n_components, penalizer, C)
    baseline, spec, covs = _resolve(name, cohort, task, covariates)
    check_folds(cohort, splits, task)
    return _fit_fold(baseline, spec, cohort, splits, fold, task, covs, seed, log1p, n_components,
                     penalizer, C)


def run_baseline(name: str, cohort: Cohort, splits: pd.DataFrame, task: str,
                 covariates: Sequence[str] = (), *, seed: int = 0, log1p: bool = True,
                 n_components: int = DEFAULT_COMPONENTS, penalizer: float | None = None,
                 C: float = DEFAULT_C) -> list[BaselineResult]:
    """``fit_fold`` on every fold of ``splits`` (in fold order); inputs are checked once, first."""
    _check_options(n_components, penalizer, C)
    baseline, spec, covs = _resolve(name, cohort, task, covariates)
    check_folds(cohort, splits, task)
    folds = sorted({int(f) for f in splits["fold"]})
    return [_fit_fold(baseline, spec, cohort, splits, f, task, covs, seed, log1p, n_components,
                      penalizer, C) for f in folds]


__all__ = ["BASELINES", "Baseline", "BaselineError", "BaselineResult", "CovariateEncoder",
           "ExpressionPCA", "baselines_for", "check_covariates", "clinical_columns", "fit_fold",
           "run_baseline"]
