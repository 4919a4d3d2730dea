"""Reference baselines scored on exactly the model's folds, with the model's metric functions.

A reviewer's first question is whether the model beats the simple models; the answer is only
valid when both see the same patients in the same folds and are scored the same way. So every
baseline here takes the study's splits (DataFrame[case_id, fold]), fits on the training part of a
fold only and is scored on its validation part with ``ksmodel.metrics`` (C-index for survival;
AUC, accuracy, balanced accuracy, F1 for classification). Its prediction table has the columns of
the model's fold predictions (``FoldTrainer.evaluate``), so the analysis pairs it like any method.

Baselines (``BASELINES``), named <model>_<inputs>:

* fixed settings: ``cox_clinical`` (Cox, lifelines, unpenalised) and ``logreg_clinical`` on the
  clinical covariates; ``cox_pca`` (L2 penalty 0.1) and ``logreg_pca`` (C = 1) on the first 10
  principal components of the gene-set genes;
* tuned penalised models, the penalty chosen by an inner cross-validation on the training part:
  ``coxnet_*`` (scikit-survival's elastic-net Cox, ``CoxnetSurvivalAnalysis``: one
  regularisation path per inner fold, the penalty with the best mean inner C-index, as glmnet's
  cv.glmnet does) and ``logregcv_*`` (scikit-learn's ``LogisticRegressionCV``, L2, the C with the
  best mean inner macro AUC), each on ``_table`` (every expression gene of the cohort's table),
  ``_genes`` (the gene-set genes the model reads) and ``_clinical_genes`` (clinical covariates +
  the gene-set genes);
* tuned non-linear models on clinical covariates + gene-set genes: ``rsf_clinical_genes`` (random
  survival forest, scikit-survival) and ``rf_clinical_genes`` (random forest, scikit-learn), the
  minimum leaf size chosen by inner cross-validation on the training part.

Inner cross-validation: stratified (event / class) folds of the outer training part only, seeded
by (seed, outer fold); as many folds as the smallest stratum allows, at most ``INNER_FOLDS``
(``FOREST_INNER_FOLDS`` for the forests). The outer validation rows never enter it.

What is fit on the training part only: the covariate encoder (standardisation, imputation
values, one-hot categories), the expression scaler (log1p + z-score, ``ExpressionScaler``), the
PCA, the inputs' standardisation, the inner folds, the tuning and the model itself. Validation
rows (their expression, covariates and labels) never enter a fit.

Covariates: numeric columns are standardised; 0/1 and boolean columns are used as numbers;
text/categorical columns are one-hot encoded with the training part's categories (the first,
sorted, is the reference level and gets no column; a category unseen in training is treated as
missing). Missing values take the training median (numeric) or mode (0/1, categorical). A
covariate that is constant in a training part (after imputation) is dropped for that fold with a
note in ``BaselineResult.notes``; a covariate absent from the clinical table, entirely missing,
listed twice, or that is the task's own label is an error before anything is fit. Only the label
itself is refused: a column that implies it (e.g. ``diagnosis`` for the IDH task) is the user's
call. Baselines without "clinical" in their name ignore ``covariates``.

Risk for survival = linear predictor / partial hazard / forest risk score (higher = earlier
death); classification probabilities are in the task's class order, ``prob_0..prob_{C-1}`` (a
class absent from a training part gets probability 0).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from lifelines import CoxPHFitter
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from ksmodel.cohort import Cohort
from ksmodel.errors import CohortError, ConfigError
from ksmodel.errors import few as _few
from ksmodel.splits import ExpressionScaler, check_folds, fold_case_ids
from ksmodel.tasks import CLASSIFICATION, KINDS, SURVIVAL, Task, get_task

DEFAULT_COMPONENTS = 10
DEFAULT_PENALIZER = {"cox_clinical": 0.0, "cox_pca": 0.1}
DEFAULT_C = 1.0
MAX_ITER = 10_000

INNER_FOLDS = 5  # inner folds of the penalised models' tuning (fewer when a stratum is small)
FOREST_INNER_FOLDS = 3  # the forests' (each inner fit costs ~100x a penalised path)
LOGREG_CS = tuple(float(c) for c in np.logspace(-4, 2, 13))  # inverse L2 strengths searched
COXNET_L1_RATIO = 0.05  # elastic-net mix of the Cox models: mostly L2 (scikit-survival needs > 0)
COXNET_ALPHAS = 40  # penalties on each Cox path, alpha_max down to ...
COXNET_ALPHA_MIN_RATIO = 0.01  # ... alpha_max x this (weaker penalties only overfit)
FOREST_TREES = 100
FOREST_LEAVES = (5, 20)  # min_samples_leaf searched by the forests' inner CV

# inputs: what a baseline reads; model: how it is fit
INPUTS = {
    "clinical": "the clinical covariates",
    "pca": "the first k principal components of the gene-set genes",
    "table": "every expression gene of the cohort's table",
    "genes": "the gene-set genes the model reads",
    "clinical_genes": "the clinical covariates + the gene-set genes",
}
TUNED_MODELS = ("coxnet", "logregcv", "rsf", "rf")


class BaselineError(ValueError):
    """A baseline could not be fit on a fold (e.g. Cox did not converge); the message says why."""


@dataclass(frozen=True)
class Baseline:
    """A registry entry: what the baseline is, what it reads (``inputs``, a key of ``INPUTS``)
    and how it is fit (``model``)."""

    name: str
    kind: str  # a task kind (ksmodel.tasks.KINDS)
    inputs: str
    model: str  # cox | logreg (fixed settings) | coxnet | logregcv | rsf | rf (tuned)
    description: str

    @property
    def needs_covariates(self) -> bool:
        return self.inputs.startswith("clinical")

    @property
    def needs_table(self) -> bool:
        """Reads every gene of the expression table (not only the gene sets)."""
        return self.inputs == "table"

    @property
    def tuned(self) -> bool:
        return self.model in TUNED_MODELS


_COXNET = ("elastic-net Cox (scikit-survival CoxnetSurvivalAnalysis, l1_ratio "
           f"{COXNET_L1_RATIO}), the penalty chosen by inner cross-validation on the training part")
_LOGREGCV = ("L2-penalised multinomial logistic regression (scikit-learn LogisticRegressionCV, "
             "balanced class weights), C chosen by inner cross-validation on the training part")
_PCS = "(log1p + z-score and PCA fit on the training part)"
BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("cox_clinical", SURVIVAL, "clinical", "cox",
             "Cox proportional hazards (lifelines) on the clinical covariates"),
    Baseline("cox_pca", SURVIVAL, "pca", "cox",
             f"L2-penalised Cox (lifelines, penalizer 0.1) on the first k principal components "
             f"of the gene-set genes {_PCS}"),
    Baseline("coxnet_table", SURVIVAL, "table", "coxnet",
             f"{_COXNET}, on every expression gene of the cohort's table"),
    Baseline("coxnet_genes", SURVIVAL, "genes", "coxnet",
             f"{_COXNET}, on the gene-set genes the model reads"),
    Baseline("coxnet_clinical_genes", SURVIVAL, "clinical_genes", "coxnet",
             f"{_COXNET}, on the clinical covariates + the gene-set genes"),
    Baseline("rsf_clinical_genes", SURVIVAL, "clinical_genes", "rsf",
             "random survival forest (scikit-survival, log-rank splits) on the clinical "
             "covariates + the gene-set genes, the minimum leaf size chosen by inner "
             "cross-validation on the training part"),
    Baseline("logreg_clinical", CLASSIFICATION, "clinical", "logreg",
             "multinomial logistic regression (scikit-learn, balanced class weights, C 1) on the "
             "clinical covariates"),
    Baseline("logreg_pca", CLASSIFICATION, "pca", "logreg",
             f"multinomial logistic regression (scikit-learn, balanced class weights, C 1) on the "
             f"first k principal components of the gene-set genes {_PCS}"),
    Baseline("logregcv_table", CLASSIFICATION, "table", "logregcv",
             f"{_LOGREGCV}, on every expression gene of the cohort's table"),
    Baseline("logregcv_genes", CLASSIFICATION, "genes", "logregcv",
             f"{_LOGREGCV}, on the gene-set genes the model reads"),
    Baseline("logregcv_clinical_genes", CLASSIFICATION, "clinical_genes", "logregcv",
             f"{_LOGREGCV}, on the clinical covariates + the gene-set genes"),
    Baseline("rf_clinical_genes", CLASSIFICATION, "clinical_genes", "rf",
             "random forest (scikit-learn, balanced class weights) on the clinical covariates + "
             "the gene-set genes, the minimum leaf size chosen by inner cross-validation on the "
             "training part"),
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
    inputs: str = ""  # what the baseline read, in words (e.g. "all 436 expression genes ...")
    tuning: str = ""  # how its settings were chosen, in words
    fit_seconds: float = 0.0  # wall time of this fold's fit (inputs, tuning, model, scoring)


def baselines_for(task_kind: str) -> list[str]:
    """Names of the baselines that apply to a task kind (one of ksmodel.tasks.KINDS)."""
    if task_kind not in KINDS:
        raise ConfigError(f"task kind must be one of {', '.join(KINDS)}, got {task_kind!r}")
    return [name for name, b in BASELINES.items() if b.kind == task_kind]


# --------------------------------------------------------------------------------------------
# Inputs: clinical covariates, expression (gene sets or the whole table), principal components


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


def set_genes(cohort: Cohort) -> list[str]:
    """The gene-set genes the model reads (tumour then TME, each gene once)."""
    return list(dict.fromkeys(cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]))


def table_expression(cohort: Cohort) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """(every numeric expression column of the cohort's table for the cohort's cases, notes).

    ``Cohort.expression`` holds the gene-set genes only; the ``_table`` baselines read the whole
    table. A column with a missing or non-numeric value for some case is left out (noted), as
    the gene-set genes are validated to have none."""
    from ksmodel.cohort import _find_table, _read_table

    path = _find_table(cohort.root, "expression")
    df = _read_table(path, ("case_id",))
    df = df.assign(case_id=df["case_id"].astype(str).str.strip()).set_index("case_id")
    df.columns = [str(c) for c in df.columns]
    missing = [c for c in cohort.case_ids if c not in df.index]
    if missing:
        raise CohortError(f"{path}: no expression row for case(s) {_few(missing)}")
    df = df.loc[cohort.case_ids]
    values = df.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    ok = np.isfinite(values).all(axis=0)
    notes = () if ok.all() else (
        f"{int((~ok).sum())} expression column(s) of {path.name} with a missing or non-numeric "
        f"value left out: {_few(df.columns[~ok])}",)
    return pd.DataFrame(values[:, ok], index=df.index, columns=df.columns[ok]), notes


@dataclass(frozen=True, eq=False)
class Design:
    """One fold's input matrices (training and validation rows) and what they hold."""

    train: np.ndarray
    val: np.ndarray
    features: tuple[str, ...]
    params: dict[str, object]
    notes: tuple[str, ...]
    inputs: str  # in words, with counts


def _expression_design(expr: pd.DataFrame, train_ids: list[str], val_ids: list[str],
                       log1p: bool) -> tuple[np.ndarray, np.ndarray]:
    scaler = ExpressionScaler.fit(expr.loc[train_ids], log1p=log1p)
    return (scaler.transform(expr.loc[train_ids]).astype(np.float64),
            scaler.transform(expr.loc[val_ids]).astype(np.float64))


def design(baseline: Baseline, cohort: Cohort, train_ids: list[str], val_ids: list[str],
           covariates: tuple[str, ...], *, log1p: bool = True,
           n_components: int = DEFAULT_COMPONENTS, seed: int = 0,
           table: pd.DataFrame | None = None) -> Design:
    """The baseline's inputs for one fold, every statistic from the training rows."""
    blocks_tr: list[np.ndarray] = []
    blocks_va: list[np.ndarray] = []
    features: list[str] = []
    params: dict[str, object] = {}
    notes: list[str] = []
    words: list[str] = []
    if baseline.needs_covariates:
        enc = CovariateEncoder.fit(cohort.cases.loc[train_ids], covariates)
        notes += [*enc.notes, *enc.unseen(cohort.cases.loc[val_ids])]
        blocks_tr.append(enc.transform(cohort.cases.loc[train_ids]))
        blocks_va.append(enc.transform(cohort.cases.loc[val_ids]))
        features += enc.features
        params["covariates"] = ",".join(covariates)
        words.append(f"the clinical covariates ({', '.join(covariates)})")
    if baseline.inputs == "pca":
        genes = cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]
        pcs = ExpressionPCA.fit(cohort.expression.loc[train_ids, genes], n_components, log1p,
                                seed)
        blocks_tr.append(pcs.transform(cohort.expression.loc[train_ids, genes]))
        blocks_va.append(pcs.transform(cohort.expression.loc[val_ids, genes]))
        features += pcs.features
        params.update(n_components=n_components, n_components_used=len(pcs.features),
                      log1p=log1p, genes=len(genes),
                      explained_variance=float(pcs.pca.explained_variance_ratio_.sum()))
        words.append(f"the first {n_components} principal components of the {len(genes)} "
                     f"gene-set genes")
    elif baseline.inputs in ("genes", "clinical_genes"):
        genes = set_genes(cohort)  # a gene in both sets is one column
        expr = cohort.expression.loc[:, ~cohort.expression.columns.duplicated()][genes]
        x_tr, x_va = _expression_design(expr, train_ids, val_ids, log1p)
        blocks_tr.append(x_tr)
        blocks_va.append(x_va)
        features += genes
        params.update(log1p=log1p, genes=len(genes))
        words.append(f"the {len(genes)} gene-set genes the model reads")
    elif baseline.inputs == "table":
        if table is None:
            table, table_notes = table_expression(cohort)
            notes += table_notes
        x_tr, x_va = _expression_design(table, train_ids, val_ids, log1p)
        blocks_tr.append(x_tr)
        blocks_va.append(x_va)
        features += [str(c) for c in table.columns]
        params.update(log1p=log1p, genes=table.shape[1])
        words.append(f"all {table.shape[1]:,} expression genes of the table")
    x_train = np.concatenate(blocks_tr, axis=1)
    x_val = np.concatenate(blocks_va, axis=1)
    return Design(x_train, x_val, tuple(features), params, tuple(notes), " + ".join(words))


# --------------------------------------------------------------------------------------------
# Tuning on the training part: inner folds and the tuned models


def inner_folds(strata: np.ndarray, n_max: int, seed: int, where: str
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified inner folds of the training rows (positions into them): as many as the
    smallest stratum allows, at most ``n_max``, so every inner validation part holds every
    class (classification) or an event (survival)."""
    _, counts = np.unique(strata, return_counts=True)
    k = int(min(n_max, counts.min()))
    if k < 2 or len(counts) < 2:
        raise BaselineError(f"{where}: the training part cannot be split for tuning (its "
                            f"smallest class/event stratum has {int(counts.min())} case(s)); "
                            f"use the fixed-setting baselines on a cohort this small")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(skf.split(np.zeros(len(strata)), strata))


def path_concordance(time_: np.ndarray, event: np.ndarray, risk: np.ndarray) -> np.ndarray:
    """Harrell's C of each column of ``risk`` [n, A] (lifelines' pair rules, as
    ``ksmodel.metrics``), vectorised over the columns; nan without a comparable pair."""
    t = np.asarray(time_, dtype=np.float64)
    e = np.asarray(event).astype(bool)
    comparable = e[:, None] & ((t[:, None] < t[None, :]) | ((t[:, None] == t[None, :])
                                                             & ~e[None, :]))
    i, j = np.nonzero(comparable)
    if len(i) == 0:
        return np.full(risk.shape[1], np.nan)
    diff = risk[i] - risk[j]
    return ((diff > 0).sum(axis=0) + 0.5 * (diff == 0).sum(axis=0)) / len(i)


def _surv(time_: np.ndarray, event: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(np.asarray(event).astype(bool), np.asarray(time_, dtype=np.float64))


def _coxnet(alphas: np.ndarray | None) -> object:
    from sksurv.linear_model import CoxnetSurvivalAnalysis

    return CoxnetSurvivalAnalysis(l1_ratio=COXNET_L1_RATIO, n_alphas=COXNET_ALPHAS,
                                  alphas=alphas, alpha_min_ratio=COXNET_ALPHA_MIN_RATIO,
                                  max_iter=100_000)


def _fit_path(x: np.ndarray, time_: np.ndarray, event: np.ndarray, alphas: np.ndarray | None,
              where: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, coefficients [features, alphas]) of one elastic-net Cox path."""
    model = _coxnet(alphas)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="all coefficients are zero")
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            model.fit(x, _surv(time_, event))
        except (ArithmeticError, ValueError) as exc:
            raise BaselineError(f"{where}: elastic-net Cox failed ({type(exc).__name__}: "
                                f"{str(exc).splitlines()[0]})") from exc
    return np.asarray(model.alphas_), np.asarray(model.coef_)


def _mean_score(scores: np.ndarray, where: str) -> np.ndarray:
    """Mean inner score of each candidate [folds, candidates] over the inner folds that could
    score it; BaselineError when none could (no comparable pair in any inner validation part)."""
    ok = np.isfinite(scores)
    if not ok.any():
        raise BaselineError(f"{where}: no inner validation part could be scored (too few "
                            f"events or cases); use the fixed-setting baselines on so few cases")
    with np.errstate(invalid="ignore"):
        return np.where(ok.any(axis=0), np.nansum(scores, axis=0) / ok.sum(axis=0), np.nan)


def fit_coxnet_cv(x_train: np.ndarray, time_: np.ndarray, event: np.ndarray,
                  x_val: np.ndarray, seed: int = 0, where: str = "coxnet"
                  ) -> tuple[np.ndarray, dict[str, object]]:
    """Validation risk of the elastic-net Cox whose penalty has the best mean inner C-index.

    The training part's path fixes the penalties; each inner fold fits the same path on its
    training rows and scores every penalty on its validation rows at once; the chosen
    penalty's coefficients of the training part's path make the prediction (cv.glmnet's rule).
    """
    scaler = StandardScaler().fit(x_train)
    z_train, z_val = scaler.transform(x_train), scaler.transform(x_val)
    alphas, coef = _fit_path(z_train, time_, event, None, where)
    folds = inner_folds(np.asarray(event).astype(int), INNER_FOLDS, seed, where)
    scores = np.full((len(folds), len(alphas)), np.nan)
    for f, (tr, va) in enumerate(folds):
        a, c = _fit_path(z_train[tr], time_[tr], event[tr], alphas, where)
        scores[f, :len(a)] = path_concordance(time_[va], event[va], z_train[va] @ c)
    mean = _mean_score(scores, where)
    best = int(np.nanargmax(mean))  # the first maximum: the strongest penalty that reaches it
    info = {"alpha": float(alphas[best]), "l1_ratio": COXNET_L1_RATIO,
            "inner_folds": len(folds), "inner_cindex": float(mean[best]),
            "nonzero": int((np.abs(coef[:, best]) > 0).sum())}
    return z_val @ coef[:, best], info


def fit_logreg_cv(x_train: np.ndarray, label: np.ndarray, x_val: np.ndarray, n_classes: int,
                  seed: int = 0, where: str = "logregcv"
                  ) -> tuple[np.ndarray, dict[str, object], tuple[str, ...]]:
    """(validation probabilities [n, n_classes], chosen settings, notes) of L2 logistic
    regression with C chosen by ``LogisticRegressionCV`` on stratified inner folds of the
    training rows (macro one-vs-rest AUC, the study's classification metric)."""
    from sklearn.linear_model import LogisticRegressionCV

    scaler = StandardScaler().fit(x_train)
    folds = inner_folds(label, INNER_FOLDS, seed, where)
    model = LogisticRegressionCV(Cs=list(LOGREG_CS), l1_ratios=(0.0,), cv=folds,
                                 scoring="roc_auc_ovr", class_weight="balanced",
                                 solver="newton-cg", max_iter=1000,
                                 use_legacy_attributes=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(scaler.transform(x_train), label)
    notes = ("the solver stopped at its iteration limit for some C (the inner score of that C "
             "still counts)",) if any(issubclass(w.category, ConvergenceWarning)
                                      for w in caught) else ()
    prob = np.zeros((len(x_val), n_classes))
    prob[:, model.classes_] = model.predict_proba(scaler.transform(x_val))
    mean = np.asarray(model.scores_).reshape(len(folds), -1).mean(axis=0) \
        if np.ndim(model.scores_) else None
    info: dict[str, object] = {"C": float(np.ravel(model.C_)[0]), "inner_folds": len(folds)}
    if mean is not None:
        info["inner_auc"] = float(np.max(mean))
    return prob, info, notes


def _fit_forest(model: object, x: np.ndarray, y: object) -> object:
    """Trees grown in parallel (each from its own seed: the same trees whatever the order), then
    predicted in one thread: parallel prediction sums the trees in thread order, which moves the
    last bits of a prediction from run to run."""
    model.fit(x, y)
    return model.set_params(n_jobs=1)


def _forest_cv(make: Callable[[int], object], x: np.ndarray, y: object, strata: np.ndarray,
               score: Callable[[object, np.ndarray, np.ndarray], float], seed: int,
               where: str) -> tuple[object, dict[str, object]]:
    """The forest whose ``min_samples_leaf`` has the best mean inner score, refit on all
    training rows."""
    folds = inner_folds(strata, FOREST_INNER_FOLDS, seed, where)
    scores = np.array([[score(_fit_forest(make(leaf), x[tr], y[tr]), x[va], va)
                        for leaf in FOREST_LEAVES] for tr, va in folds], dtype=np.float64)
    mean = _mean_score(scores, where)
    best = int(np.nanargmax(mean))
    return _fit_forest(make(FOREST_LEAVES[best]), x, y), {
        "min_samples_leaf": FOREST_LEAVES[best], "inner_folds": len(folds),
        "inner_score": float(mean[best]), "trees": FOREST_TREES}


def fit_rsf_cv(x_train: np.ndarray, time_: np.ndarray, event: np.ndarray, x_val: np.ndarray,
               seed: int = 0, where: str = "rsf") -> tuple[np.ndarray, dict[str, object]]:
    """Validation risk of a random survival forest, leaf size by inner C-index."""
    from sksurv.ensemble import RandomSurvivalForest

    def make(leaf: int) -> object:
        return RandomSurvivalForest(n_estimators=FOREST_TREES, min_samples_leaf=leaf,
                                    max_features="sqrt", low_memory=True, n_jobs=-1,
                                    random_state=seed)

    def score(model: object, x: np.ndarray, rows: np.ndarray) -> float:
        return float(path_concordance(time_[rows], event[rows], model.predict(x)[:, None])[0])

    model, info = _forest_cv(make, x_train, _surv(time_, event), np.asarray(event).astype(int),
                             score, seed, where)
    return np.asarray(model.predict(x_val), dtype=np.float64), info


def fit_rf_cv(x_train: np.ndarray, label: np.ndarray, x_val: np.ndarray, n_classes: int,
              seed: int = 0, where: str = "rf") -> tuple[np.ndarray, dict[str, object]]:
    """Validation probabilities of a random forest, leaf size by inner macro AUC."""
    from sklearn.ensemble import RandomForestClassifier

    from ksmodel.metrics import macro_auc

    def make(leaf: int) -> object:
        return RandomForestClassifier(n_estimators=FOREST_TREES, min_samples_leaf=leaf,
                                      max_features="sqrt", class_weight="balanced",
                                      n_jobs=-1, random_state=seed)

    def probs(model: object, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), n_classes))
        out[:, model.classes_] = model.predict_proba(x)
        return out

    def score(model: object, x: np.ndarray, rows: np.ndarray) -> float:
        return macro_auc(label[rows], probs(model, x))

    model, info = _forest_cv(make, x_train, label, label, score, seed, where)
    return probs(model, x_val), info


def tuning_words(baseline: Baseline, penalizer: float | None = None, C: float = DEFAULT_C,
                 inner: int | None = None) -> str:
    """How the baseline's settings were chosen, in words (the run's ``ks.baseline_tuning``)."""
    k = f"{inner}-fold" if inner else "stratified"
    if baseline.model == "cox":
        pen = DEFAULT_PENALIZER[baseline.name] if penalizer is None else penalizer
        return f"not tuned: L2 penalizer fixed at {pen:g}" + (
            f", {DEFAULT_COMPONENTS} components" if baseline.inputs == "pca" else "")
    if baseline.model == "logreg":
        return f"not tuned: C fixed at {C:g}" + (
            f", {DEFAULT_COMPONENTS} components" if baseline.inputs == "pca" else "")
    if baseline.model == "coxnet":
        return (f"penalty alpha by {k} inner CV (C-index) on the training part, "
                f"{COXNET_ALPHAS}-value path alpha_max..{COXNET_ALPHA_MIN_RATIO:g} x alpha_max; "
                f"l1_ratio {COXNET_L1_RATIO:g}")
    if baseline.model == "logregcv":
        return (f"L2 penalty C by {k} inner CV (macro AUC) on the training part, grid "
                f"{LOGREG_CS[0]:g}..{LOGREG_CS[-1]:g} ({len(LOGREG_CS)} values)")
    metric = "C-index" if baseline.kind == SURVIVAL else "macro AUC"
    return (f"min_samples_leaf by {k} inner CV ({metric}) on the training part, grid "
            f"{', '.join(map(str, FOREST_LEAVES))}; {FOREST_TREES} trees, sqrt features")


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


def inner_seed(seed: int, fold: int) -> int:
    """Seed of outer fold ``fold``'s inner folds and forests (one stream per outer fold)."""
    return int(np.random.SeedSequence([int(seed), int(fold)]).generate_state(1)[0])


def _fit_fold(baseline: Baseline, spec: Task, cohort: Cohort, splits: pd.DataFrame,
              fold: int, task: str, covariates: tuple[str, ...], seed: int, log1p: bool,
              n_components: int, penalizer: float | None, C: float,
              table: pd.DataFrame | None) -> BaselineResult:
    start = time.perf_counter()
    train_ids, val_ids = fold_case_ids(splits, fold)
    where = f"baseline {baseline.name}, fold {fold}"
    d = design(baseline, cohort, train_ids, val_ids, covariates, log1p=log1p,
               n_components=n_components, seed=seed, table=table)
    params: dict[str, object] = {"baseline": baseline.name, "seed": seed, **d.params}
    notes = list(d.notes)
    if not d.features:
        notes.append("no usable input in this fold: constant prediction")

    position = pd.Series(np.arange(len(cohort.cases)), index=cohort.cases.index)
    tr, va = position.loc[train_ids].to_numpy(), position.loc[val_ids].to_numpy()
    targets = cohort.targets(task)
    rng_seed = inner_seed(seed, fold)
    inner: int | None = None
    if baseline.kind == SURVIVAL:
        time_, event = targets["time"][tr], targets["event"][tr].astype(int)
        if baseline.model == "cox":
            pen = DEFAULT_PENALIZER[baseline.name] if penalizer is None else float(penalizer)
            params["penalizer"] = pen
            scores = (_fit_cox(d.train, d.val, d.features, time_, event, pen, where)
                      if d.features else np.ones(len(va)))
        else:
            fit = fit_coxnet_cv if baseline.model == "coxnet" else fit_rsf_cv
            scores, info = fit(d.train, time_, event, d.val, rng_seed, where)
            params.update(info)
            inner = int(info["inner_folds"])
    else:
        label = targets["label"][tr]
        if baseline.model == "logreg":
            params.update(C=C, class_weight="balanced")
            scores = _fit_logreg(d.train, d.val, label, spec.n_outputs, C, seed, where)
        elif baseline.model == "logregcv":
            scores, info, more = fit_logreg_cv(d.train, label, d.val, spec.n_outputs, rng_seed,
                                               where)
            params.update(info, class_weight="balanced")
            notes += more
            inner = int(info["inner_folds"])
        else:
            scores, info = fit_rf_cv(d.train, label, d.val, spec.n_outputs, rng_seed, where)
            params.update(info)
            inner = int(info["inner_folds"])
    metrics, columns = spec.evaluate_scores(scores, {k: v[va] for k, v in targets.items()})
    table_out = pd.DataFrame({"fold": np.full(len(val_ids), fold, dtype=np.int64),
                              "case_id": val_ids}).assign(**columns)
    params["features"] = len(d.features)
    return BaselineResult(baseline.name, fold, metrics, table_out, d.features, params,
                          tuple(notes), d.inputs, tuning_words(baseline, penalizer, C, inner),
                          time.perf_counter() - start)


def _table_for(baseline: Baseline, cohort: Cohort, table: pd.DataFrame | None
               ) -> tuple[pd.DataFrame | None, tuple[str, ...]]:
    if not baseline.needs_table or table is not None:
        return table, ()
    return table_expression(cohort)


def fit_fold(name: str, cohort: Cohort, splits: pd.DataFrame, fold: int, task: str,
             covariates: Sequence[str] = (), *, seed: int = 0, log1p: bool = True,
             n_components: int = DEFAULT_COMPONENTS, penalizer: float | None = None,
             C: float = DEFAULT_C, table: pd.DataFrame | None = None) -> BaselineResult:
    """Fit baseline ``name`` on the training part of ``fold`` and score its validation part.

    ``penalizer`` (cox_*, L2): None = the baseline's default (cox_clinical 0, cox_pca 0.1).
    ``C`` (logreg_*): inverse L2 strength. ``n_components``, ``log1p``: PCA baselines (``log1p``
    also for every expression input). ``table``: the expression table of the ``_table``
    baselines (``table_expression``; read from the cohort folder when None). The tuned baselines
    choose their own settings; options a baseline does not use are ignored.
    """
    _check_options(n_components, penalizer, C)
    baseline, spec, covs = _resolve(name, cohort, task, covariates)
    check_folds(cohort, splits, task)
    table, notes = _table_for(baseline, cohort, table)
    res = _fit_fold(baseline, spec, cohort, splits, fold, task, covs, seed, log1p, n_components,
                    penalizer, C, table)
    return res if not notes else _with_notes(res, notes)


def _with_notes(res: BaselineResult, notes: tuple[str, ...]) -> BaselineResult:
    from dataclasses import replace

    return replace(res, notes=(*notes, *res.notes))


def run_baseline(name: str, cohort: Cohort, splits: pd.DataFrame, task: str,
                 covariates: Sequence[str] = (), *, seed: int = 0, log1p: bool = True,
                 n_components: int = DEFAULT_COMPONENTS, penalizer: float | None = None,
                 C: float = DEFAULT_C, table: pd.DataFrame | None = None
                 ) -> list[BaselineResult]:
    """``fit_fold`` on every fold of ``splits`` (in fold order, whatever the fold ids); inputs
    are checked once, first."""
    _check_options(n_components, penalizer, C)
    baseline, spec, covs = _resolve(name, cohort, task, covariates)
    check_folds(cohort, splits, task)
    table, notes = _table_for(baseline, cohort, table)
    folds = sorted({int(f) for f in splits["fold"]})
    results = [_fit_fold(baseline, spec, cohort, splits, f, task, covs, seed, log1p,
                         n_components, penalizer, C, table) for f in folds]
    if notes:  # said once, on the first fold
        results[0] = _with_notes(results[0], notes)
    return results


__all__ = ["BASELINES", "INPUTS", "Baseline", "BaselineError", "BaselineResult",
           "CovariateEncoder", "Design", "ExpressionPCA", "baselines_for", "check_covariates",
           "clinical_columns", "design", "fit_coxnet_cv", "fit_fold", "fit_logreg_cv",
           "fit_rf_cv", "fit_rsf_cv", "inner_folds", "inner_seed", "path_concordance",
           "run_baseline", "set_genes", "table_expression", "tuning_words"]
