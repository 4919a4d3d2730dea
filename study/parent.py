"""What the study's parent MLflow run records about the study itself, so a run can be reproduced
and judged from MLflow alone: the study configuration as ``study.<key>`` params (flattened:
``study.scheduler.type``, ``study.fixed.lam``, ``study.search.alpha``), what the cohort gave the
model as ``cohort.<key>`` params (cases, genes used per subspace out of the table's columns, the
folder), and the evaluation mode as a tag. ``config.yaml`` and the split files are artifacts of
the same run (``study.run``); the report is added by ``analysis.compare``. The experiment gets
the study's view of its trials at the same time (study/view.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ksmodel.data import RunData
from study.record import COHORT_PARAM, STUDY_PARAM, Tags
from study.space import StudyConfig

COORD_TARGET = "coord_target"
"""The model parameter saying where coordination acts (recorded when the study fixes it)."""


def _text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value)
    return str(value)


def _flat(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}", v))
        return out
    return {prefix: _text(value)}


def expression_columns(root: Path) -> int | None:
    """Gene columns of the cohort's expression table (all of them, not only the gene sets'),
    read from the header alone; None when the table cannot be read."""
    parquet, csv = root / "expression.parquet", root / "expression.csv"
    try:
        if parquet.is_file():
            import pyarrow.parquet as pq

            names = pq.read_schema(parquet).names
        elif csv.is_file():
            with csv.open() as fh:
                names = fh.readline().rstrip("\r\n").split(",")
        else:
            return None
    except (OSError, ValueError):
        return None
    return sum(1 for n in names if n.strip('"') != "case_id" and not n.startswith("__"))


def study_params(cfg: StudyConfig, data: RunData) -> dict[str, str]:
    """``study.*`` and ``cohort.*`` params of the parent run (strings, as MLflow keeps them)."""
    raw = cfg.to_yaml_dict()
    raw["folds"] = data.k  # a cohort's published splits win over the file's folds
    raw["repeats"] = data.repeats  # global fold ids: repeat * folds + fold
    raw["folds_source"] = data.splits_source
    if cfg.seeds:
        raw["seeds"] = list(cfg.seeds)
    if cfg.sampler == "grid":  # a grid runs every combination; num_samples does not apply
        raw.pop("num_samples", None)
        raw["trials"] = cfg.grid_size()
    out = {}
    for key, value in raw.items():
        if key == "search":
            for name, spec in value.items():
                bounds = (spec["values"] if spec["type"] == "categorical"
                          else [spec["low"], spec["high"]])
                out[f"{STUDY_PARAM}search.{name}"] = f"{spec['type']} {_text(bounds)}"
            continue
        out.update(_flat(f"{STUDY_PARAM}{key}", value))
    if COORD_TARGET in cfg.fixed:
        out[f"{STUDY_PARAM}{COORD_TARGET}"] = _text(cfg.fixed[COORD_TARGET])
    cohort = data.cohort
    facts: dict[str, Any] = {
        "path": str(cohort.root), "n_cases": len(cohort.cases),
        "genes_tumour": len(cohort.gene_sets["tumour"]), "genes_tme": len(cohort.gene_sets["tme"]),
        "feature_dim": cohort.feature_dim if cohort.feature_dim is not None else "none"}
    table = expression_columns(Path(cohort.root))
    if table is not None:
        facts["genes_table"] = table
    targets = cohort.targets(cfg.task)
    if "event" in targets:  # a time-to-event task: how many events the C-index rests on
        facts["n_events"] = int(targets["event"].sum())
    out.update({f"{COHORT_PARAM}{k}": _text(v) for k, v in facts.items()})
    return {k: v[:6000] for k, v in out.items()}


def study_tags(cfg: StudyConfig) -> dict[str, str]:
    """Parent tags beyond run.py's: the evaluation mode (and the coordination target if fixed)."""
    tags = {Tags.EVALUATION: cfg.evaluation}
    if COORD_TARGET in cfg.fixed:
        tags[Tags.COORD_TARGET] = _text(cfg.fixed[COORD_TARGET])
    return tags


def record_study(client: Any, parent: str, cfg: StudyConfig, data: RunData) -> None:
    """Log the study's params and tags on its parent run. On resume only params it lacks are
    added (MLflow refuses to change a param; e.g. the folds now come from the saved file)."""
    from mlflow.entities import Param, RunTag

    from study.tracking import log_batched, retry
    from study.view import save_trials_view

    run = retry(lambda: client.get_run(parent))
    have = run.data.params
    params = [Param(k, v) for k, v in sorted(study_params(cfg, data).items()) if k not in have]
    tags = [RunTag(k, v) for k, v in study_tags(cfg).items()]
    try:
        log_batched(client, parent, params=params, tags=tags)
    except Exception as exc:  # noqa: BLE001 - e.g. a resumed study whose cohort moved
        print(f"warning: could not record the study's params on the parent run: {exc}",
              flush=True)
    try:  # the runs table as the study's printed URL opens it (study/view.py)
        save_trials_view(client, run.info.experiment_id, cfg)
    except Exception as exc:  # noqa: BLE001 - the study itself does not depend on it
        print(f"warning: could not save the study's view of its trials in MLflow: {exc}",
              flush=True)


__all__ = ["study_params", "study_tags", "record_study", "expression_columns"]
