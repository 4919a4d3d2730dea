"""The command line of the analysis of a finished study.

    python -m analysis.compare --experiment NAME [--tracking-uri URI] [--out DIR] [--rope R]

Arguments and the store's location are checked first, with the standard library only, so
``--help`` and mistakes are answered at once; the analysis (analysis/analyse.py: MLflow, pandas,
matplotlib) is imported after that. What it writes: analysis/analyse.py; the report:
analysis/report.py. ``run_compare``, ``analyse`` and the other names of analysis/analyse.py are
reachable from here too (imported when first used).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from analysis.uri import AnalysisError, check_experiment, resolve_tracking_uri

#: README sections the help cites (tests/test_analysis_cli.py checks that each exists).
README_SECTIONS = ("Does CG-Coord help on my cohort?", "Reading a verdict",
                   "Evaluation modes and baselines")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description="Analyse a finished KS-Study study from MLflow. The report opens with the "
                    "answer: per comparison (the model against each baseline, the method "
                    "against the others, each variant against the reference) a verdict - "
                    "better, worse, equivalent within ±ROPE, or undecided - from the Bayesian "
                    "correlated t-test for cross-validation, with P(better), P(equivalent) and "
                    "P(worse), and the model's estimate next to the best baseline. Then the "
                    "facts (paired table with the corrected resampled t-test, Wilcoxon where it "
                    "can reach significance, Friedman ranks and a critical-difference diagram "
                    "for many methods, the claims table, per-fold, sensitivity, history, "
                    "importance, Kaplan–Meier and telemetry figures) and last the study's "
                    "configuration. Writes report.md, a self-contained report.html and CSV "
                    "tables, and logs them to the study's parent MLflow run.",
        epilog="Example: python -m analysis.compare --experiment ablation "
               "--tracking-uri sqlite:///studies/ablation/mlflow.db\n"
               "README sections: " + "; ".join(f'"{s}"' for s in README_SECTIONS) + ".",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True,
                   help="MLflow experiment name (= the study name)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI), e.g. "
                        "sqlite:///studies/NAME/mlflow.db or http://host:5000; a sqlite file "
                        "that does not exist is an error (no empty store is created)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: ./reports/<experiment>)")
    p.add_argument("--method", default="cgcoord",
                   help="method compared against the baselines (default: cgcoord)")
    p.add_argument("--baseline", action="append", default=None,
                   help="baseline method; repeat for several (default: every other method)")
    p.add_argument("--reference", default=None,
                   help="reference variant of the claims table (default: the study's "
                        "ks.reference tag; without either, no claims table)")
    p.add_argument("--metric", action="append", default=None,
                   help="metric to compare (auc, accuracy, balanced_accuracy, f1, cindex); "
                        "repeat for several (default: the task's selection metric)")
    p.add_argument("--rope", type=_rope, default=None,
                   help="region of practical equivalence: differences within ±ROPE count as "
                        "equivalent (default: the study's `rope` if it set one, else 0.01 for "
                        "auc / cindex / accuracy / balanced_accuracy / f1)")
    p.add_argument("--n-boot", type=int, default=10_000,
                   help="bootstrap resamples, for comparisons of at least 6 pairs (10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and fANOVA (0)")
    p.add_argument("--parent-run-id", default=None,
                   help="study (parent) run to analyse when the experiment has several")
    p.add_argument("--no-log", action="store_true",
                   help="do not log the report files to the parent MLflow run")
    return p


def _rope(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number ≥ 0, e.g. 0.01 (got {text!r})") \
            from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0 (got {text})")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # the store's location and the experiment's name, before anything heavy
        uri = resolve_tracking_uri(args.tracking_uri)
        check_experiment(uri, args.experiment)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from analysis.analyse import run_compare  # MLflow, pandas, matplotlib: after the checks

    try:
        r = run_compare(args.experiment, uri, args.out, candidate=args.method,
                        baselines=args.baseline, metrics=args.metric, reference=args.reference,
                        n_boot=args.n_boot, seed=args.seed, log_to_mlflow=not args.no_log,
                        parent_run_id=args.parent_run_id, rope=args.rope)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from analysis.answer import wrap
    from analysis.report import conclusion_lines

    lines = [line.replace("**", "") for line in conclusion_lines(r)]
    if lines:
        print("\n".join(wrap(["Conclusion:"] + [f"- {line}" for line in lines])))
    print(f"report written to {r.out_dir / 'report.md'} and {r.out_dir / 'report.html'}")
    return 0


def __getattr__(name: str) -> Any:
    """``compare.run_compare``, ``compare.Report``, ... from analysis/analyse.py, imported when
    first asked for (the CLI's --help does not pay for it)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from analysis import analyse

    try:
        return getattr(analyse, name)
    except AttributeError:
        raise AttributeError(f"module 'analysis.compare' has no attribute '{name}'") from None


if __name__ == "__main__":
    sys.exit(main())
