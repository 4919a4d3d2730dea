"""Analysis of finished studies: reads MLflow only (never ksmodel or study's runtime).

uri.py (where the store is; stdlib only) -> load.py (MLflow -> tidy tables) -> recorded.py (what
the study recorded: design, ROPE, searched parameters, configuration rows) -> verdict.py (the
Bayesian correlated t-test) -> stats.py / claims.py / multi.py (paired verdicts, claims,
Friedman) -> evaluation.py (which runs stand for the model) -> analyse.py (the whole analysis)
-> task_figures.py, figures.py, search_figures.py, plotting.py (figures) -> report.py,
report_sections.py, document.py (the report) ; answer.py (verdict lines for the report's
conclusion and the end of a study). CLIs: compare.py (``python -m analysis.compare``) and
summary.py (``python -m analysis.summary``; tables in trials_summary.py).
"""
