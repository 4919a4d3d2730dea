"""The names of the gradient-coordination telemetry, in one place (standard library only).

``ksmodel.coordination.coordinator`` records these per training step; the trainer averages them
per epoch; the study logs each as ``coord/<name>`` (study/record.py) and the analysis reads them
back by these names. What each one measures: the coordinator's docstring and the README's
"What you see in MLflow".
"""

from __future__ import annotations

COS_MEAN = "cos_mean"  # mean cosine of the tumour and TME blocks over rows
CONFLICT_RATE = "conflict_rate"  # share of rows with cos < 0
PROJECTED_TUMOUR = "projected_tumour"  # share of rows whose tumour block the rule changed
PROJECTED_TME = "projected_tme"  # share of rows whose TME block the rule changed
PROJ_NORM = "proj_norm"  # mean norm of the removed component over changed blocks
SKIPPED = "skipped"  # 1 when a confidence-based rule had no confidence this step
LAYER_COS = "layer_cos"  # cosine of the two streams' whole gradients on the target
REL_CHANGE = "rel_change"  # |g' - g| / |g|: the coordinated update against the plain one
COS_P01 = "cos_p01"  # 1st percentile of the per-row cosines
COS_P99 = "cos_p99"  # 99th percentile of the per-row cosines
SCALE_TUMOUR = "scale_tumour"  # |g_t'| / |g_t|
SCALE_TME = "scale_tme"  # |g_m'| / |g_m|

TELEMETRY_KEYS = (COS_MEAN, CONFLICT_RATE, PROJECTED_TUMOUR, PROJECTED_TME, PROJ_NORM, SKIPPED,
                  LAYER_COS, REL_CHANGE, COS_P01, COS_P99, SCALE_TUMOUR, SCALE_TME)
"""Every telemetry value a coordination step records, in the order it is logged."""

__all__ = ["COS_MEAN", "COS_P01", "COS_P99", "CONFLICT_RATE", "LAYER_COS", "PROJECTED_TME",
           "PROJECTED_TUMOUR", "PROJ_NORM", "REL_CHANGE", "SCALE_TME", "SCALE_TUMOUR", "SKIPPED",
           "TELEMETRY_KEYS"]
