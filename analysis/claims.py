"""The claims table: one row per variant against the reference variant, with the verdict that
cross-validation can reach.

Each variant removes or replaces one part of the reference model; its row states the claim the
paper makes about that part ("the multi-modal teacher raises AUC"), the paired evidence on
identical (seed, fold) keys (difference = reference − variant, so > 0 supports the claim) and
the Bayesian correlated t-test (analysis/verdict.py) of reference against variant:

* **supported** - P(reference better by more than the ROPE) ≥ 0.95;
* **contradicted** - P(variant better by more than the ROPE) ≥ 0.95;
* **equivalent within ±rope** - P(|difference| ≤ ROPE) ≥ 0.95: the part makes no practical
  difference;
* **undecided** - none of the three reaches 0.95; the row says what would decide it.

The corrected resampled t-test is its frequentist line; Wilcoxon (Holm across the rows) only
where it can reach p < 0.05 (≥ 6 non-zero pairs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from analysis import fmt
from analysis.stats import (
    VERDICT_COLUMNS,
    Design,
    bootstrap_mean_ci,
    duplicated_arms,
    holm,
    pair,
    verdict_columns,
    wilcoxon_test,
)
from analysis.verdict import BETTER, EQUIVALENT, WORSE, Verdict, default_rope, prob_text

#: The paper's claims, by the name of the variant that tests them ({metric}: e.g. AUC).
CLAIMS: dict[str, str] = {
    "no_decomposition": "gene decomposition (tumour/TME) raises {metric}",
    "no_consistency": "the gene-guided consistency loss raises {metric}",
    "no_teacher": "the multi-modal teacher raises {metric}",
    "no_coordination": "gradient coordination raises {metric}",
    "genomics_only": "adding histology raises {metric}",
    "histology_only": "adding genomics raises {metric}",
}
GENERIC_CLAIM = "{reference} raises {metric} over {variant}"
METRIC_WORDS = {"auc": "AUC", "cindex": "the C-index", "accuracy": "accuracy",
                "balanced_accuracy": "balanced accuracy", "f1": "F1"}
SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "undecided"

CLAIM_COLUMNS = [
    "task", "metric", "reference", "variant", "setting", "claim", "n_pairs", "mean_reference",
    "mean_variant", "mean_diff", *VERDICT_COLUMNS, "test_verdict", "ci_low", "ci_high",
    "wilcoxon_p", "holm_p", "win_rate", "n_wins", "n_ties", "n_losses", "sd_diff",
    "n_missing_pairs", "note"]


def claim_text(variant: str, metric: str, reference: str) -> str:
    """The claim a variant tests, in words."""
    words = METRIC_WORDS.get(metric, metric)
    template = CLAIMS.get(variant, GENERIC_CLAIM)
    return template.format(metric=words, reference=reference, variant=variant)


def claim_verdict(v: Verdict) -> str:
    """The claim's word from the correlated test of reference − variant (see module doc)."""
    if v.word == BETTER:
        return SUPPORTED
    if v.word == WORSE:
        return CONTRADICTED
    if v.word == EQUIVALENT:
        return f"equivalent within ±{v.rope:g}"
    return UNDECIDED


@dataclass
class Claims:
    table: pd.DataFrame  # CLAIM_COLUMNS, one row per variant
    notes: list[str] = field(default_factory=list)


def claims_table(folds: pd.DataFrame, metric: str, task: str, reference: str, *,
                 variants: Iterable[str] | None = None, by: str = "arm", n_boot: int = 10_000,
                 seed: int = 0, design: Design | None = None) -> Claims:
    """Every variant (default: every other label of column ``by``) against ``reference`` on
    identical (seed, fold) keys: the correlated t-test's verdict (``design``: folds per run and
    ROPE; default: the fold ids seen and the metric's ROPE); Wilcoxon with Holm across the rows
    where it can reach significance. Only completed trials count.

    With ``by="variant"`` and a ``setting`` column (a variants study that also grid-searched
    parameters), each variant is compared with the reference of the same setting, one row per
    (setting, variant), Holm across all of them."""
    f = folds[folds["task"] == task]
    design = design or Design(max(2, int(f["fold"].nunique()) if len(f) else 2),
                              default_rope(metric))
    if by != "arm":
        f = f.assign(arm=f[by].astype(str))
    grouped = by != "arm" and "setting" in f
    settings = sorted(f["setting"].fillna("").astype(str).unique()) if grouped else [""]
    notes: list[str] = []
    rows: list[dict] = []
    for setting in settings:
        cell = f[f["setting"].fillna("").astype(str) == setting] if grouped else f
        where = f"{task} [{setting}]" if setting else task
        rows += _cell_rows(cell, metric, task, reference, variants, setting, where, notes,
                           n_boot=n_boot, seed=seed, design=design)
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    if not table.empty:
        table["holm_p"] = holm(table["wilcoxon_p"].to_numpy(dtype=float))
    return Claims(table, notes)


def _cell_rows(f: pd.DataFrame, metric: str, task: str, reference: str,
               variants: Iterable[str] | None, setting: str, where: str, notes: list[str], *,
               n_boot: int, seed: int, design: Design) -> list[dict]:
    """The rows of one setting (every variant against the reference); problems go to notes."""
    labels = sorted(f["arm"].dropna().unique())
    if reference not in labels:
        notes.append(f"{where}: reference '{reference}' is not among the variants "
                     f"({', '.join(labels) or 'none'}): no claims table")
        return []
    chosen = [v for v in (variants or labels) if v != reference]
    unknown = [v for v in chosen if v not in labels]
    notes += [f"{where}: variant '{v}' not in the study" for v in unknown]
    chosen = [v for v in chosen if v in labels]
    dups = set(duplicated_arms(f, metric))
    if reference in dups:
        notes.append(f"{where}: the reference '{reference}' has several runs per (seed, fold) "
                     f"(a search, not a variant grid): no claims table")
        return []
    rows = []
    for v in chosen:
        if v in dups:
            notes.append(f"{where}: variant '{v}' has several runs per (seed, fold): not paired")
            continue
        p = pair(f, metric, reference, v)
        d = p.diff
        n = d.size
        _, pval, note = wilcoxon_test(d)
        lo, hi = bootstrap_mean_ci(d, n_boot=n_boot, seed=seed)
        sd = float(d.std(ddof=1)) if n > 1 else math.nan
        v_, cols = verdict_columns(p, design)
        rows.append({
            "task": task, "metric": metric, "reference": reference, "variant": v,
            "setting": setting, "claim": claim_text(v, metric, reference), "n_pairs": n,
            "mean_reference": p.candidate.mean() if n else math.nan,
            "mean_variant": p.baseline.mean() if n else math.nan,
            "mean_diff": d.mean() if n else math.nan,
            # the claim's word (supported, ...); the test's own word (better, ...) beside it
            **cols, "verdict": claim_verdict(v_), "test_verdict": v_.word,
            "ci_low": lo, "ci_high": hi,
            "wilcoxon_p": pval, "win_rate": float((d > 0).mean()) if n else math.nan,
            "n_wins": int((d > 0).sum()), "n_ties": int((d == 0).sum()),
            "n_losses": int((d < 0).sum()), "sd_diff": sd,
            "n_missing_pairs": len(p.only_candidate) + len(p.only_baseline), "note": note})
    return rows


def verdict_sentence(row: pd.Series | object) -> str:
    """One sentence per claim for the report's conclusion: the claim's word, the three
    probabilities, the ROPE and, when undecided, what would decide it."""
    r = row if isinstance(row, pd.Series) else pd.Series(row._asdict())  # type: ignore[attr-defined]
    if not r["n_pairs"]:
        return f"“{r['claim']}”: no (seed, fold) result exists for both variants; not tested."
    setting = r.get("setting")
    at = f" at {setting}" if isinstance(setting, str) and setting else ""
    ref, var = r["reference"], r["variant"]
    d = fmt.effect(r["mean_diff"], r["cred_low"], r["cred_high"],
                   level="95% credible interval")
    text = (f"“{r['claim']}”: **{r['verdict']}** (**{ref}** vs **{var}**{at}, "
            f"{int(r['n_pairs'])} pairs, {r['design']}): {ref} − {var} = {d}; "
            f"P({ref} better) {prob_text(r['p_better'])}, P(equivalent within "
            f"±{r['rope']:g}) {prob_text(r['p_equivalent'])}, P({var} better) "
            f"{prob_text(r['p_worse'])}.")
    if isinstance(r.get("decide"), str) and r["decide"]:
        text += f" {r['decide']}"
    return text
