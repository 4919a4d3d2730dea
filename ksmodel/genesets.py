"""Knowledge-driven tumour / TME gene sets from public signatures, matched to a cohort's genes.

Your own ``gene_sets.csv`` stays the primary way to define the two subspaces; this builder gives
a documented default for real cohorts. It takes the signatures shipped by the PyPI package
``pirlygenes`` (optional extra: ``pip install 'ks-study[genesets]'``), keeps the genes the cohort
measures, and writes ``gene, subspace`` rows:

* TME   = ESTIMATE immune + ESTIMATE stromal signatures (Yoshihara et al. 2013; 141 genes each),
          the genes that mark non-malignant immune and stromal cells in a tumour sample.
* tumour = glioma tumour-intrinsic genes: GBM/LGG drivers, suppressors, subtype and lineage
          markers (cancer-type-genes, cancer-key-genes, lineage-genes), the glial cancer-family
          and neural/glial compartment panels (negative markers excluded), and the genes most
          up-regulated in GBM/LGG over normal cortex.

Matching: a signature gene matches a cohort gene by symbol (case-insensitive -- the MCAT tables
upper-case symbols such as C2ORF49), otherwise by Ensembl gene id, resolving old symbols and
aliases (FYB -> FYB1, WISP1 -> CCN4) and Ensembl-id columns through pirlygenes' canonical map.

Overlap rule: a gene on both sides goes to **tme**. ESTIMATE genes were selected because tumour
cells do not express them, so a tumour-side hit on one is a therapy-target or marker listing of
a stromal gene (with pirlygenes 6.0.18 the only overlap is KDR/VEGFR2, an endothelial gene listed
as a GBM drug target). Gene order within a set is alphabetical, so the output is deterministic.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pandas as pd

from ksmodel.cohort import CohortError, _few

PIRLYGENES_PIN = "pirlygenes==6.0.18"
INSTALL_HINT = "pip install 'ks-study[genesets]'"
GLIOMA_CODES = ("GBM", "LGG")
SUBSPACES = ("tumour", "tme")


@dataclass(frozen=True)
class Source:
    """One public signature: a pirlygenes dataset and the rows of it that belong to the set."""

    name: str
    subspace: str
    dataset: str
    select: Callable[[pd.DataFrame], pd.Series]
    description: str


def _in(column: str, values: Sequence[str]) -> Callable[[pd.DataFrame], pd.Series]:
    return lambda df: df[column].astype(str).isin(values)


SOURCES: tuple[Source, ...] = (
    Source("estimate_immune", "tme", "estimate-signatures", _in("category", ["Immune"]),
           "ESTIMATE immune signature"),
    Source("estimate_stromal", "tme", "estimate-signatures", _in("category", ["Stromal"]),
           "ESTIMATE stromal signature"),
    Source("glioma_drivers_markers", "tumour", "cancer-type-genes",
           _in("cancer_type", GLIOMA_CODES),
           "GBM/LGG drivers, suppressors, subtype/lineage markers"),
    Source("glioma_key_genes", "tumour", "cancer-key-genes", _in("cancer_code", GLIOMA_CODES),
           "GBM/LGG biomarkers and therapy targets"),
    Source("glioma_lineage", "tumour", "lineage-genes",
           lambda df: df["cancer_type"].isin(GLIOMA_CODES) & (df["direction"] == "high"),
           "GBM/LGG lineage genes (high)"),
    Source("glial_family_panel", "tumour", "cancer-family-panels",
           lambda df: (df["family"] == "GLIAL") & (df["role"] != "negative"),
           "glioma family panel (anchor/confirmatory markers)"),
    Source("neural_glial_compartment", "tumour", "cancer-compartment-panels",
           _in("compartment", ["NEURAL_GLIAL"]), "neural/glial compartment panel"),
    Source("glioma_up_vs_brain", "tumour", "tumor-up-vs-matched-normal",
           _in("cancer_code", GLIOMA_CODES), "genes up in GBM/LGG vs normal cortex"),
)


def _pirlygenes() -> ModuleType:
    """Import the optional dependency, or say exactly how to install it."""
    try:
        import pirlygenes
    except ImportError as exc:
        raise ImportError(f"the gene-set builder needs the optional package pirlygenes; install it "
                          f"with: {INSTALL_HINT}  (pins {PIRLYGENES_PIN}). Or write "
                          f"gene_sets.csv yourself (columns gene, subspace).") from exc
    return pirlygenes


def signatures() -> pd.DataFrame:
    """All source signatures: DataFrame[source, subspace, symbol, ensembl_id], one row per gene."""
    pg = _pirlygenes()
    frames, cache = [], {}
    for src in SOURCES:
        if src.dataset not in cache:
            try:
                raw = pg.get_data(src.dataset)
            except Exception as exc:  # a pirlygenes release that renamed or dropped a table
                raise RuntimeError(f"pirlygenes {getattr(pg, '__version__', '?')} has no usable "
                                   f"'{src.dataset}' table ({type(exc).__name__}: {exc}); install "
                                   f"the tested version: pip install {PIRLYGENES_PIN}") from exc
            cache[src.dataset] = raw.rename(columns=str.lower)
        df = cache[src.dataset]
        rows = df[src.select(df)]
        frame = pd.DataFrame({"source": src.name, "subspace": src.subspace,
                              "symbol": rows["symbol"].astype(str).str.strip(),
                              "ensembl_id": rows["ensembl_gene_id"].astype("string")})
        frames.append(frame.drop_duplicates("symbol"))
    return pd.concat(frames, ignore_index=True)


def _cohort_index(genes: Sequence[str], canonical: Callable[[str], str | None]
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """symbol (upper) -> cohort gene and Ensembl id -> cohort gene; first in sorted order wins."""
    by_symbol: dict[str, str] = {}
    by_id: dict[str, str] = {}
    for gene in sorted(set(genes)):
        by_symbol.setdefault(gene.upper(), gene)
        try:
            ens = canonical(gene)
        except Exception:  # an unparseable name is simply not matched
            ens = None
        if ens:
            by_id.setdefault(ens, gene)
    return by_symbol, by_id


def match_signatures(genes: Sequence[str]) -> pd.DataFrame:
    """Every signature gene with the cohort gene it matches (or None) and how it matched.

    Columns: source, subspace, symbol, ensembl_id, gene (cohort spelling or None),
    how ("symbol", "ensembl" or None).
    """
    pg = _pirlygenes()
    sig = signatures()
    by_symbol, by_id = _cohort_index([str(g) for g in genes], pg.canonical_gene_id)
    matched, how = [], []
    for symbol, ens in zip(sig["symbol"], sig["ensembl_id"], strict=True):
        gene = by_symbol.get(symbol.upper())
        if gene is not None:
            matched.append(gene)
            how.append("symbol")
            continue
        key = ens if isinstance(ens, str) and ens else pg.canonical_gene_id(symbol)
        gene = by_id.get(key) if key else None
        matched.append(gene)
        how.append("ensembl" if gene is not None else None)
    return sig.assign(gene=matched, how=how)


def _assign(matches: pd.DataFrame) -> pd.DataFrame:
    """gene -> subspace with the overlap rule (tme wins); tumour first, then alphabetical."""
    hits = matches.dropna(subset=["gene"])
    tme = set(hits.loc[hits["subspace"] == "tme", "gene"])
    tumour = set(hits.loc[hits["subspace"] == "tumour", "gene"]) - tme
    return pd.DataFrame({"gene": sorted(tumour) + sorted(tme),
                         "subspace": ["tumour"] * len(tumour) + ["tme"] * len(tme)})


def _coverage(matches: pd.DataFrame, sets: pd.DataFrame) -> pd.DataFrame:
    final = dict(zip(sets["gene"], sets["subspace"], strict=True))
    rows = []
    for src in SOURCES:
        m = matches[matches["source"] == src.name]
        hit = m.dropna(subset=["gene"])
        rows.append({"source": src.name, "subspace": src.subspace,
                     "signature_genes": len(m), "in_cohort": len(hit),
                     "coverage": len(hit) / len(m) if len(m) else 0.0,
                     "via_ensembl": int((hit["how"] == "ensembl").sum()),
                     "assigned": int(sum(final.get(g) == src.subspace for g in hit["gene"])),
                     "description": src.description})
    return pd.DataFrame(rows)


def signature_coverage(genes: Sequence[str]) -> pd.DataFrame:
    """Per source: signature size, genes found in the cohort, coverage; never raises on 0."""
    matches = match_signatures(genes)
    return _coverage(matches, _assign(matches))


def build_gene_sets(genes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(DataFrame[gene, subspace], coverage per source) for a cohort's expression genes.

    Raises CohortError when the tumour or the TME set would be empty, saying how many genes
    matched and pointing to a user gene-set file.
    """
    sets, coverage, _ = _build(genes)
    return sets, coverage


def _build(genes: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    genes = [str(g) for g in genes]
    matches = match_signatures(genes)
    sets = _assign(matches)
    coverage = _coverage(matches, sets)
    sizes = sets["subspace"].value_counts()
    empty = [s for s in SUBSPACES if sizes.get(s, 0) == 0]
    if empty:
        hits = matches.dropna(subset=["gene"]).groupby("subspace")["gene"].nunique()
        total = matches.groupby("subspace")["symbol"].nunique()
        per = {s: int(hits.get(s, 0)) for s in SUBSPACES}
        raise CohortError(
            f"gene-set builder: the {' and '.join(empty)} set(s) would be empty -- of the cohort's "
            f"{len(genes)} genes ({_few(genes, 4)}), {per['tumour']} matched the "
            f"{total['tumour']} tumour and {per['tme']} the {total['tme']} TME signature genes. "
            f"The signatures use HGNC symbols or Ensembl ids (e.g. EGFR, PTPRC); synthetic or "
            f"renamed genes cannot match. Write gene_sets.csv yourself (columns gene, subspace "
            f"with tumour|tme) into the cohort folder.\n{format_coverage(coverage)}")
    return sets, coverage, matches


def format_coverage(coverage: pd.DataFrame) -> str:
    """A fixed-width table of the coverage per source (what the CLI prints)."""
    lines = [f"{'source':<26}{'subspace':<9}{'genes':>6}{'in cohort':>11}{'coverage':>10}"
             f"{'assigned':>10}"]
    for r in coverage.itertuples():
        lines.append(f"{r.source:<26}{r.subspace:<9}{r.signature_genes:>6}{r.in_cohort:>11}"
                     f"{r.coverage:>10.0%}{r.assigned:>10}")
    return "\n".join(lines)


def cohort_genes(cohort: str | Path) -> list[str]:
    """Gene columns of a cohort's expression table (header only; no values read)."""
    root = Path(cohort)
    for name in ("expression.parquet", "expression.csv"):
        path = root / name
        if not path.is_file():
            continue
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            columns = pq.read_schema(path).names
        else:
            columns = list(pd.read_csv(path, nrows=0).columns)
        return [str(c) for c in columns if c != "case_id" and not str(c).startswith("__index")]
    raise CohortError(f"{root}: no expression.parquet or expression.csv; pass a cohort folder "
                      f"(docs/cohort-format.md), e.g. one written by "
                      f"python -m ksmodel.importers.mcat")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ksmodel.genesets",
        description="Build tumour vs TME gene sets for a cohort from public signatures "
                    f"(pirlygenes: ESTIMATE immune/stromal, GBM/LGG drivers and markers). Needs "
                    f"{INSTALL_HINT}.",
        epilog="Example: python -m ksmodel.genesets --cohort cohorts/tcga_gbmlgg "
               "--out cohorts/tcga_gbmlgg/gene_sets.csv")
    parser.add_argument("--cohort", required=True, type=Path, help="cohort folder")
    parser.add_argument("--out", type=Path,
                        help="gene-set file to write (default: <cohort>/gene_sets.csv)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    args = parser.parse_args(argv)
    out = args.out or args.cohort / "gene_sets.csv"
    try:
        if out.exists() and not args.force:
            raise CohortError(f"{out} exists (a user gene-set file takes precedence); pass "
                              f"--force to overwrite it or choose another --out")
        genes = cohort_genes(args.cohort)
        sets, coverage, matches = _build(genes)
    except (CohortError, ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    version = getattr(_pirlygenes(), "__version__", "?")
    print(f"signature coverage of {args.cohort} ({len(genes)} genes; pirlygenes {version}):")
    print(format_coverage(coverage))
    sizes = sets["subspace"].value_counts()
    both = sorted(set(matches.loc[matches["subspace"] == "tumour", "gene"].dropna())
                  & set(matches.loc[matches["subspace"] == "tme", "gene"].dropna()))
    total = matches.groupby("subspace")["symbol"].nunique()
    print(f"tumour: {int(sizes.get('tumour', 0))} of {int(total['tumour'])} signature genes, "
          f"tme: {int(sizes.get('tme', 0))} of {int(total['tme'])}"
          + (f" (in both, assigned to tme: {', '.join(both)})" if both else ""))
    out.parent.mkdir(parents=True, exist_ok=True)
    sets.to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
