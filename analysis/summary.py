"""Short terminal summary of a study: per method, trials by status and the final metric.

    python -m analysis.summary --experiment NAME [--tracking-uri URI]

The arguments and the store's location are checked with the standard library only (``--help``
and mistakes answer at once); the tables are in analysis/trials_summary.py, whose names are
reachable from here too.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from analysis.uri import AnalysisError, check_experiment, resolve_tracking_uri


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.summary",
        description="Print a short table of a KS-Study study read from MLflow: per method the "
                    "number of trials (completed / stopped early / failed), mean ± sd and best of "
                    "the final metric, and the best trial's parameters.")
    p.add_argument("--experiment", required=True, help="MLflow experiment name (= study name)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--parent-run-id", default=None,
                   help="study (parent) run to summarise when the experiment has several")
    args = p.parse_args(argv)
    try:
        uri = resolve_tracking_uri(args.tracking_uri)
        check_experiment(uri, args.experiment)
        from analysis.load import load_study  # MLflow and pandas: after the checks
        from analysis.trials_summary import format_summary

        study = load_study(args.experiment, uri, parent_run_id=args.parent_run_id)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_summary(study))
    return 0


def __getattr__(name: str) -> Any:
    """``summary.summary_table`` and friends, imported when first asked for."""
    if name.startswith("__"):
        raise AttributeError(name)
    from analysis import trials_summary

    try:
        return getattr(trials_summary, name)
    except AttributeError:
        raise AttributeError(f"module 'analysis.summary' has no attribute '{name}'") from None


if __name__ == "__main__":
    sys.exit(main())
