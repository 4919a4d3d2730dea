"""The MLflow UI pages a study links to, set up so that they show the study, not MLflow's defaults.

MLflow 3 opens an experiment on its GenAI overview; its runs table lists a study's trials
collapsed under the study's run, with no parameter or metric column, and every trial stopped
early by ASHA shows the same green "Finished" tick as a completed one. So each study saves a
*view* of the runs table on its experiment, the way the UI's own "Views" menu stores one
(experiment tag ``mlflow.sharedViewState.<key>``: a JSON envelope whose ``state`` is the table's
search and column state): every trial run side by side, flat (only trial runs are listed, so
none is folded under the study's run), best first by the validation metric, with the columns a
researcher compares them by:

    ks.status (COMPLETED, STOPPED_EARLY, FAILED, ...) | val_<m> | each searched parameter
    (a variants study: ks.variant, ks.seed first; nested: ks.outer_fold last)

The columns are wide enough for a full value (MLflow shows params as logged, floats to 17
digits) and, for a study searching two parameters, fit a 1920-pixel window beside MLflow's
assistant panel. The baselines and the study's run are one click away (clear the search
filter); the report compares the trials with the baselines. The study prints the view's URL
(`trials_url`) at its start and end; the view is also listed under the runs table's "Views"
button. A run's own page needs ``workflowType=machine_learning``
too (`run_url`), or MLflow 3 opens its GenAI "Evaluation runs" view.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from study.record import Roles, Tags, val_metric
from study.variants import VARIANT_KEY

if TYPE_CHECKING:
    from study.space import StudyConfig

VIEW_KEY = "trials"
"""The saved view's key: its URL parameter ``viewStateShareKey`` and its tag's suffix."""
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
"""The experiment tag MLflow's UI reads saved views from (3.17; checked in headless Chromium)."""
ML_VIEW = "workflowType=machine_learning"
"""Query parameter that makes MLflow 3 open the "Model training" pages, not the GenAI ones."""

_WIDTH = {"tags": 135, "metrics": 170, "params": 200}  # px: a full value, nothing cut off
_LEAD = {"attributes.`Run Name`": 170, "runDateAndNestInfo": 120}
"""The table's own first columns (run name, created), narrowed to leave room for the study's."""


def _col(kind: str, key: str) -> str:
    """A runs-table column id as the UI names it: ``metrics.`val_auc```."""
    return f"{kind}.`{key}`"


def view_columns(cfg: StudyConfig) -> list[str]:
    """The saved view's columns, in order (see the module docstring)."""
    cols = [_col("tags", Tags.STATUS), _col("metrics", val_metric(cfg.metric))]
    if cfg.variants:
        cols += [_col("tags", Tags.VARIANT), _col("tags", Tags.SEED)]
    cols += [_col("params", p) for p in cfg.searched if p != VARIANT_KEY]
    if cfg.evaluation == "nested":
        cols.append(_col("tags", Tags.OUTER_FOLD))
    return cols


def view_state(cfg: StudyConfig) -> dict[str, Any]:
    """The runs table's state for the study's view (the UI's search facets + column state)."""
    cols = view_columns(cfg)
    return {"searchFilter": f"tags.`{Tags.ROLE}` = '{Roles.TRIAL}'",
            "orderByKey": _col("metrics", val_metric(cfg.metric)),
            "orderByAsc": cfg.mode == "min", "startTime": "ALL", "lifecycleFilter": "Active",
            "modelVersionFilter": "All Runs", "datasetsFilter": [],
            "selectedColumns": cols, "columnOrder": [*_LEAD, *cols],
            "columnWidths": {**_LEAD, **{c: _WIDTH[c.split(".", 1)[0]] for c in cols}}}


def view_tag_value(cfg: StudyConfig, now_ms: int | None = None) -> str:
    """The tag's value: the UI's saved-view envelope around the JSON state."""
    stamp = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": VIEW_KEY, "createdAt": stamp, "updatedAt": stamp,
                       "state": json.dumps(view_state(cfg))})


def save_trials_view(client: Any, experiment_id: str, cfg: StudyConfig) -> None:
    """Store the study's view on its experiment (again on resume: the same view)."""
    from study.tracking import retry

    value = view_tag_value(cfg)
    retry(lambda: client.set_experiment_tag(experiment_id, VIEW_TAG, value))


def ui_base(tracking_uri: str, port: int) -> str:
    """Where the study's MLflow UI answers: the tracking server itself, or the local `mlflow
    ui` the study's hint starts on ``port``."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return f"http://127.0.0.1:{port}"


def runs_url(base: str, experiment_id: str) -> str:
    """The experiment's runs table with MLflow's default columns."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?{ML_VIEW}"


def trials_url(base: str, experiment_id: str) -> str:
    """The runs table in the study's saved view (`save_trials_view`)."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{ML_VIEW}"
            f"&viewStateShareKey={VIEW_KEY}")


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """One run's page (params, metrics, tags; its Artifacts tab previews the files)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


__all__ = ["VIEW_KEY", "VIEW_TAG", "ML_VIEW", "view_columns", "view_state", "view_tag_value",
           "save_trials_view", "ui_base", "runs_url", "trials_url", "run_url"]
