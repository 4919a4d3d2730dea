"""The claims table: one row per variant against the reference variant, with a verdict the
statistics allow.

Each variant removes or replaces one part of the reference model; its row states the claim the
paper makes about that part ("the multi-modal teacher raises AUC"), the paired evidence on
identical (seed, fold) keys (difference = reference − variant, so > 0 supports the claim),
Holm-adjusted Wilcoxon p across the rows, and a verdict:

* **supported** - Holm p < α and the mean difference is positive (the reference is better);
* **contradicted** - Holm p < α and the mean difference is negative;
* **not supported at this sample size** - otherwise (which is not evidence of no effect).

The power note says what these pairs could have detected: the minimum detectable difference of a
paired test by the normal approximation, MDD = (z_{1-α/2} + z_{power}) · sd_diff / √n, and the
floor of the exact two-sided Wilcoxon test, whose smallest attainable p with n non-zero pairs is
2 / 2^n (before Holm; after it the first row needs p < α / m).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

from analysis import fmt
from analysis.stats import bootstrap_mean_ci, duplicated_arms, holm, pair, wilcoxon_test

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
SUPPORTED, CONTRADICTED, NOT_SUPPORTED = (
    "supported", "contradicted", "not supported at this sample size")

CLAIM_COLUMNS = [
    "task", "metric", "reference", "variant", "setting", "claim", "n_pairs", "mean_reference",
    "mean_variant", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "holm_p", "win_rate",
    "n_wins", "n_ties", "n_losses", "verdict", "sd_diff", "mdd", "n_nonzero", "min_p",
    "n_missing_pairs", "power_note", "note"]


def claim_text(variant: str, metric: str, reference: str) -> str:
    """The claim a variant tests, in words."""
    words = METRIC_WORDS.get(metric, metric)
    template = CLAIMS.get(variant, GENERIC_CLAIM)
    return template.format(metric=words, reference=reference, variant=variant)


def minimum_detectable_difference(sd_diff: float, n: int, *, alpha: float = 0.05,
                                  power: float = 0.80) -> float:
    """Paired normal approximation: (z_{1-α/2} + z_power) · sd_diff / √n (NaN if undefined)."""
    if n < 2 or not np.isfinite(sd_diff):
        return math.nan
    z = float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))
    return z * float(sd_diff) / math.sqrt(n)


def verdict(mean_diff: float, holm_p: float, alpha: float = 0.05) -> str:
    """Supported / contradicted / not supported at this sample size (see module doc)."""
    if np.isfinite(holm_p) and holm_p < alpha and np.isfinite(mean_diff) and mean_diff != 0:
        return SUPPORTED if mean_diff > 0 else CONTRADICTED
    return NOT_SUPPORTED


def _power_note(n: int, n_nonzero: int, sd: float, mdd: float, m: int, alpha: float,
                power: float) -> str:
    if n == 0:
        return "no pairs: nothing could be detected"
    parts = []
    if np.isfinite(mdd):
        parts.append(f"with {n} pairs (sd of the differences {fmt.sig(sd)}) a true mean "
                     f"difference of about {fmt.sig(mdd)} would be detected with "
                     f"{power:.0%} power (paired normal approximation, two-sided α = {alpha:g})")
    floor = 2.0 / 2 ** n_nonzero if n_nonzero else 1.0
    need = alpha / m if m > 1 else alpha
    text = (f"the Wilcoxon test's smallest attainable p with {n_nonzero} non-zero pairs is "
            f"2/2^{n_nonzero} = {floor:.2g}")
    if floor >= need:
        text += (f", not below {need:.2g} (α{' / ' + str(m) + ' rows, Holm' if m > 1 else ''}): "
                 f"no difference of any size could be called significant with these pairs")
    parts.append(text)
    return "; ".join(parts)


@dataclass
class Claims:
    table: pd.DataFrame  # CLAIM_COLUMNS, one row per variant
    notes: list[str] = field(default_factory=list)


def claims_table(folds: pd.DataFrame, metric: str, task: str, reference: str, *,
                 variants: Iterable[str] | None = None, by: str = "arm", n_boot: int = 10_000,
                 seed: int = 0, alpha: float = 0.05, power: float = 0.80) -> Claims:
    """Every variant (default: every other label of column ``by``) against ``reference`` on
    identical (seed, fold) keys; Holm across the rows. Only completed trials count.

    With ``by="variant"`` and a ``setting`` column (a variants study that also grid-searched
    parameters), each variant is compared with the reference of the same setting, one row per
    (setting, variant), Holm across all of them."""
    f = folds[folds["task"] == task]
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
                           n_boot=n_boot, seed=seed, alpha=alpha, power=power)
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    if table.empty:
        return Claims(table, notes)
    table["holm_p"] = holm(table["wilcoxon_p"].to_numpy(dtype=float))
    table["verdict"] = [verdict(md, hp, alpha) for md, hp in
                        zip(table["mean_diff"], table["holm_p"], strict=True)]
    m = int(np.isfinite(table["wilcoxon_p"].to_numpy(dtype=float)).sum()) or len(table)
    table["power_note"] = [
        _power_note(int(r.n_pairs), int(r.n_nonzero), r.sd_diff, r.mdd, m, alpha, power)
        for r in table.itertuples(index=False)]
    return Claims(table, notes)


def _cell_rows(f: pd.DataFrame, metric: str, task: str, reference: str,
               variants: Iterable[str] | None, setting: str, where: str, notes: list[str], *,
               n_boot: int, seed: int, alpha: float, power: float) -> list[dict]:
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
        rows.append({
            "task": task, "metric": metric, "reference": reference, "variant": v,
            "setting": setting, "claim": claim_text(v, metric, reference), "n_pairs": n,
            "mean_reference": p.candidate.mean() if n else math.nan,
            "mean_variant": p.baseline.mean() if n else math.nan,
            "mean_diff": d.mean() if n else math.nan, "ci_low": lo, "ci_high": hi,
            "wilcoxon_p": pval, "win_rate": float((d > 0).mean()) if n else math.nan,
            "n_wins": int((d > 0).sum()), "n_ties": int((d == 0).sum()),
            "n_losses": int((d < 0).sum()), "sd_diff": sd,
            "mdd": minimum_detectable_difference(sd, n, alpha=alpha, power=power),
            "n_nonzero": int(np.count_nonzero(d)),
            "min_p": 2.0 / 2 ** int(np.count_nonzero(d)) if np.count_nonzero(d) else math.nan,
            "n_missing_pairs": len(p.only_candidate) + len(p.only_baseline), "note": note})
    return rows


def verdict_sentence(row: pd.Series | object) -> str:
    """One sentence per claim for the report's conclusion."""
    r = row if isinstance(row, pd.Series) else pd.Series(row._asdict())  # type: ignore[attr-defined]
    if not r["n_pairs"]:
        return f"“{r['claim']}”: no (seed, fold) result exists for both variants; not tested."
    eff = fmt.effect(r["mean_diff"], r["ci_low"], r["ci_high"])
    setting = r.get("setting")
    at = f" at {setting}" if isinstance(setting, str) and setting else ""
    return (f"“{r['claim']}” (**{r['reference']}** vs **{r['variant']}**{at}, "
            f"{int(r['n_pairs'])} "
            f"pairs): {r['reference']} − {r['variant']} = {eff}, Holm p "
            f"{fmt.p_eq(r['holm_p'])}, {r['reference']} better on {int(r['n_wins'])} of "
            f"{int(r['n_pairs'])}: **{r['verdict']}**.")
