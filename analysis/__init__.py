"""Analysis of finished studies: reads MLflow only (never ksmodel or study).

load.py (MLflow -> tidy tables), stats.py (paired statistics), figures.py (PNG figures),
compare.py (``python -m analysis.compare``: report), summary.py (``python -m analysis.summary``).
"""
