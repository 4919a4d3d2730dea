"""What a study recorded about itself, read once: its cross-validation design (folds per repeat,
repeats, seeds), the ROPE its verdicts use, the parameters it searched, and the facts the
report's configuration section lists (parent params ``study.*`` / ``cohort.*``, tags ``ks.*``,
with the trials' own params where the parent did not record one).

The parent's params are written by the study (``study/parent.py``): ``study.folds`` = k folds per
repeat, ``study.repeats`` = r (absent: 1), ``study.search.<name>`` per searched parameter,
``study.rope`` when the study file set one. Global fold ids are ``repeat · k + fold``.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.load import Study, is_param_column, param_column, param_name
from analysis.stats import Design
from analysis.verdict import default_rope
from study.record import COHORT_PARAM, STUDY_PARAM, Tags

NOT_RECORDED = "not recorded"
#: Parent tag a study may set about its search (e.g. that it is random), shown with the baselines.
SEARCH_NOTE = Tags.SEARCH_NOTE
SEARCH_PARAM = f"{STUDY_PARAM}search."
ROPE_PARAM = f"{STUDY_PARAM}rope"
FOLDS_PARAM = f"{STUDY_PARAM}folds"
REPEATS_PARAM = f"{STUDY_PARAM}repeats"


def _int(v: object) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def design(study: Study, task: str, metric: str, rope_override: float | None = None) -> Design:
    """k and r from the parent's ``study.folds`` / ``study.repeats`` (without them, k = the
    distinct fold ids seen divided by r: an in-memory or older study) and the ROPE (``rope``)."""
    params = study.parent_params
    repeats = _int(params.get(REPEATS_PARAM)) or 1
    width, where = rope(study, metric, rope_override)
    k = _int(params.get(FOLDS_PARAM))
    if k and k >= 2:
        return Design(k, width, repeats, f"k from `{FOLDS_PARAM}`; ROPE: {where}")
    f = study.folds[study.folds["task"] == task] if "task" in study.folds else study.folds
    seen = int(f["fold"].nunique()) if "fold" in f and len(f) else 0
    k = max(2, seen // repeats)
    return Design(k, width, repeats, f"k from the {seen} fold ids seen"
                  + (f" / {repeats} repeats" if repeats > 1 else "") + f"; ROPE: {where}")


def rope(study: Study, metric: str, override: float | None = None) -> tuple[float, str]:
    """(ROPE, where it came from): ``--rope``, else the study's ``study.rope``, else the
    metric's default (analysis/verdict.py)."""
    if override is not None:
        return float(override), "--rope"
    raw = study.parent_params.get(ROPE_PARAM)
    if raw not in (None, "", "None"):
        try:
            value = float(raw)
            if math.isfinite(value) and value >= 0:
                return value, f"study file (`{ROPE_PARAM}`)"
        except ValueError:
            pass
    return default_rope(metric), f"default for {metric}"


def searched_params(study: Study) -> list[str]:
    """The searched parameters: the parent's ``study.search.<name>`` params, else the
    ``ks.searched`` tag."""
    names = [k[len(SEARCH_PARAM):] for k in study.parent_params if k.startswith(SEARCH_PARAM)]
    return sorted(names) if names else study.searched


# --- the configuration section ------------------------------------------------------------

#: What the parent run records about the study, in the order a reader wants it.
PARENT_PARAMS = tuple(
    (f"{STUDY_PARAM}{key}", label) for key, label in (
        ("epochs", "epochs per trial"), ("folds", "folds"), ("repeats", "repeats"),
        ("seeds", "seeds"), ("trials", "trials planned"), ("evaluation", "evaluation"),
        ("coord_target", "coordination target"), ("rope", "ROPE"))) + tuple(
    (f"{COHORT_PARAM}{key}", label) for key, label in (
        ("n_cases", "cases in the cohort"), ("genes_tumour", "tumour genes used"),
        ("genes_tme", "TME genes used"), ("genes_table", "genes in the expression table")))
PARENT_TAGS = ((Tags.SAMPLER, "sampler"), (Tags.MODE, "metric direction"),
               (Tags.SEARCHED, "searched parameters"), (Tags.EVALUATION, "evaluation (tag)"),
               (Tags.REFERENCE, "reference variant"), (SEARCH_NOTE, "search note"))
#: parent params that are said under another key, or only when present
_ALIASES = {f"{STUDY_PARAM}trials": f"{STUDY_PARAM}num_samples"}
_OPTIONAL = {f"{STUDY_PARAM}repeats", f"{STUDY_PARAM}rope"}


def latest(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[~trials["superseded"].astype(bool)]


def _from_trials(study: Study, key: str) -> str | None:
    """A value the parent did not record but every trial did (its own param)."""
    t = latest(study.trials)
    if "role" in t:
        t = t[t["role"] != "baseline"]
    name = key[len(STUDY_PARAM):] if key.startswith(STUDY_PARAM) else None
    if name == "seeds":
        v = sorted(int(x) for x in t["seed"].unique() if int(x) >= 0)
        return ", ".join(map(str, v)) or None
    if name == "folds":
        n = sorted({len(f) for f in t["folds"] if len(f)}) if "folds" in t else []
        return ", ".join(map(str, n)) or None
    if name == "trials":  # planned: only the study knows (a count of runs is not a plan)
        return None
    col = param_column(name) if name else None
    if col and col in t:
        values = t[col].dropna().astype(str).unique()
        return ", ".join(sorted(values)) or None
    return None


def study_rows(study: Study, selection: dict[str, str]) -> pd.DataFrame:
    """The configuration table: known items first; the trials' own value where the parent did
    not record one (said so); "not recorded" only when nothing did."""
    params = study.parent_params
    rows = []
    for key, what in PARENT_PARAMS:
        shown = key if key in params else _ALIASES.get(key, key)
        if shown in params:
            rows.append({"what": what, "value": params[shown], "recorded as": f"`{shown}`"})
            continue
        seen = _from_trials(study, key)
        if seen is not None:
            source = f"trial param `{key[len(STUDY_PARAM):]}`"
            rows.append({"what": what, "value": seen, "recorded as": f"{source} (the parent "
                         f"run has no `{key}`)"})
        elif key not in _OPTIONAL:
            rows.append({"what": what, "value": NOT_RECORDED, "recorded as": f"`{key}`"})
    try:
        used = int(params[f"{COHORT_PARAM}genes_tumour"]) + int(params[f"{COHORT_PARAM}genes_tme"])
        total = int(params[f"{COHORT_PARAM}genes_table"])
        rows.append({"what": "genes reaching the model", "value": f"{used} of {total} "
                     f"({used / total:.1%})" if total else str(used), "recorded as": "(derived)"})
    except (KeyError, ValueError):
        pass
    known = {k for k, _ in PARENT_PARAMS} | set(_ALIASES.values())
    extra = (k for k in params if k.startswith((STUDY_PARAM, COHORT_PARAM)) and k not in known)
    for key in sorted(extra):
        rows.append({"what": key.split(".", 1)[1].replace("_", " "), "value": params[key],
                     "recorded as": f"`{key}`"})
    for tag, what in PARENT_TAGS:
        if study.parent_tags.get(tag):
            rows.append({"what": what, "value": study.parent_tags[tag], "recorded as": f"`{tag}`"})
    for task, rule in selection.items():
        rows.append({"what": f"selection rule ({task})", "value": rule,
                     "recorded as": "trial param `patience`"})
    return pd.DataFrame(rows)


def trial_params(study: Study, run: pd.Series, *, exclude: tuple[str, ...] = ()) -> dict:
    """A run's params by name (no prefix), missing ones left out."""
    out = {}
    for c in study.param_columns:
        if not is_param_column(c) or c not in run.index:
            continue
        v = run[c]
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            continue
        if param_name(c) in exclude:
            continue
        out[param_name(c)] = v
    return out


__all__ = ["design", "rope", "searched_params", "study_rows", "trial_params",
           "NOT_RECORDED", "PARENT_PARAMS", "PARENT_TAGS", "latest"]
