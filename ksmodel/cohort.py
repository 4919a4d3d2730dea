"""Cohort loading, validation and the in-memory bag cache (format: docs/cohort-format.md).

A cohort directory holds::

    clinical.parquet|csv   one row per slide: case_id, slide_id and the label columns of the
                           tasks (ksmodel.tasks: diagnosis 0..3, grade 2..4, idh_mutant 0/1,
                           survival_days >= 0 + event 0/1); extra columns are kept
    expression.parquet|csv one row per case_id (column ``case_id``), one column per gene
    gene_sets.csv          columns gene, subspace (tumour|tme); or one *.gmt with sets tumour, tme
    features/<slide_id>.h5 dataset "features" [N, D], optional "coords" [N, 2] as (x, y)

``load_cohort`` checks everything that is cheap (tables, gene sets, labels, every h5 header) and
raises one exception type, ``CohortError``, naming the file and row/case/gene/key and saying what
to fix, so a study fails before any compute is spent. ``load_bags`` then reads every bag once into
one float32 tensor that a trial keeps in memory.

Decisions (documented here because the format leaves them open):

* Parquet is preferred when both ``<table>.parquet`` and ``<table>.csv`` exist; ``gene_sets.csv``
  is preferred over a ``.gmt`` file. ``tumor`` is accepted as a spelling of ``tumour``.
* Several slides per case: the case's bags are **concatenated** into one bag (no slide is thrown
  away). When every slide of the case has coords, each slide is shifted below the previous one
  (y offset) so the grid layout keeps each slide's patches together; otherwise file order is used.
  Labels must agree between the slides of a case; other clinical columns take the first slide's
  value (slides sorted by slide_id).
* Expression rows whose case has no clinical row are ignored with a ``UserWarning`` naming them
  (an expression matrix often covers more patients than were scanned); ``strict=True`` makes
  them an error. The opposite -- a slide whose case has no expression row -- is always an error.
  Feature files in ``features/`` without a clinical row are ignored.
* Expression columns outside the two gene sets are dropped; the kept columns follow gene-set
  order (tumour genes, then TME genes). Values are kept raw (normalisation is per fold, splits.py).
* Grid rule (``load_bags``): a bag of N patches is brought to T = H*W tokens -- N > T: T patches
  subsampled without replacement (seeded per case from ``seed`` and the case id); N < T: every
  patch repeated ~T/N times in a row ("repeat to fill"). With coords the tokens are laid out
  row-major: sorted by y and cut into H rows of W, each row sorted by x, so patches that are near
  on the slide stay near on the grid; without coords file order is kept.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import pandas as pd
import torch

from ksmodel.config import check_grid
from ksmodel.errors import CohortError, data_rows, few, shown
from ksmodel.tasks import LABEL_COLUMNS, get_task, get_tasks

if TYPE_CHECKING:
    from ksmodel.tasks import Task

SUBSPACES = ("tumour", "tme")
_FMT = "parquet or csv"
_few = few  # the name other modules import


# --------------------------------------------------------------------------------------------
# The loaded cohort


@dataclass(frozen=True, eq=False, repr=False)
class Cohort:
    """A validated cohort; ``cases`` and ``expression`` share one index (case_id, sorted)."""

    root: Path
    cases: pd.DataFrame
    expression: pd.DataFrame
    gene_sets: dict[str, list[str]]
    feature_dim: int | None

    @property
    def case_ids(self) -> list[str]:
        return self.cases.index.tolist()

    def targets(self, task: str) -> dict[str, np.ndarray]:
        """Model targets of ``task`` (see ``Task.targets``), in case order.

        Labels of tasks not named in ``load_cohort(tasks=...)`` are validated here, on first use.
        """
        return get_task(task).targets(self.cases, f"clinical table in {self.root}")

    def __repr__(self) -> str:
        sizes = {k: len(v) for k, v in self.gene_sets.items()}
        return (f"Cohort(root={str(self.root)!r}, cases={len(self.cases)}, "
                f"slides={int(self.cases['slide_ids'].map(len).sum())}, genes={sizes}, "
                f"feature_dim={self.feature_dim})")


# --------------------------------------------------------------------------------------------
# Tables


def _find_table(root: Path, stem: str) -> Path:
    for suffix in (".parquet", ".csv"):
        path = root / f"{stem}{suffix}"
        if path.is_file():
            return path
    raise CohortError(f"{root}: no {stem}.parquet or {stem}.csv found; write the {stem} table "
                      f"({_FMT}) into the cohort directory (format: docs/cohort-format.md)")


def _read_table(path: Path, id_columns: Sequence[str]) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, dtype={c: str for c in id_columns})
    except Exception as exc:  # pyarrow/pandas raise many types for a corrupt file
        raise CohortError(f"{path}: cannot be read as {path.suffix[1:]} ({type(exc).__name__}: "
                          f"{exc}); re-export the table") from exc
    if df.index.name in id_columns and df.index.name not in df.columns:
        df = df.reset_index()  # a parquet written with the id as index
    return df


def _require_columns(df: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CohortError(f"{path}: missing column(s) {', '.join(missing)} (columns present: "
                          f"{_few(df.columns, 8)}); add them or rename the existing ones")


def clean_ids(values: pd.Series, column: str, path: Path) -> pd.Series:
    """Ids as stripped strings; CohortError naming the rows where one is blank."""
    text = values.astype("string").str.strip()
    blank = text.isna() | (text == "")
    if blank.any():
        raise CohortError(f"{path}: {column} is missing in {data_rows(blank.to_numpy())}; every "
                          f"row needs a {column}")
    return text.astype(str)


def _read_clinical(root: Path, tasks: Sequence[Task] | None) -> tuple[pd.DataFrame, Path]:
    """Per-slide table -> per-case table (index case_id, sorted; slide_ids list column).

    ``tasks=None`` validates every task the table has (some of) the label columns of."""
    path = _find_table(root, "clinical")
    df = _read_table(path, ("case_id", "slide_id"))
    if tasks is None:
        tasks = [t for t in get_tasks(None) if set(t.label_columns) & set(df.columns)]
    required = ["case_id", "slide_id"] + [c for t in tasks for c in t.label_columns]
    _require_columns(df, required, path)
    if df.empty:
        raise CohortError(f"{path}: the table has no rows; add one row per slide")
    df = df.copy()
    df["case_id"] = clean_ids(df["case_id"], "case_id", path)
    df["slide_id"] = clean_ids(df["slide_id"], "slide_id", path)
    dup = df["slide_id"].duplicated(keep=False)
    if dup.any():
        raise CohortError(f"{path}: duplicate slide_id {_few(sorted(set(df.loc[dup, 'slide_id'])))}"
                          f" in {data_rows(dup.to_numpy())}; each slide must appear once")
    bad_name = df["slide_id"].str.contains(r"[/\\]", regex=True)
    if bad_name.any():
        raise CohortError(f"{path}: slide_id {_few(df.loc[bad_name, 'slide_id'])} contains a path "
                          f"separator; slide ids name files features/<slide_id>.h5")
    labels = [c for c in LABEL_COLUMNS if c in df.columns]
    for column in labels:
        n_values = df.groupby("case_id")[column].nunique(dropna=False)
        if (n_values > 1).any():
            case = n_values.index[n_values.to_numpy() > 1][0]
            seen = df.loc[df["case_id"] == case, ["slide_id", column]].to_numpy().tolist()
            raise CohortError(f"{path}: case {case} has slides with different {column}: {seen}; "
                              f"slides of one patient must share its labels")
    df = df.sort_values(["case_id", "slide_id"], kind="stable")
    grouped = df.groupby("case_id", sort=True)
    extra = [c for c in df.columns if c not in ("case_id", "slide_id", *labels)]
    cases = grouped[labels + extra].first()
    cases.insert(len(labels), "slide_ids", grouped["slide_id"].agg(list))
    cases.index.name = "case_id"
    for task in tasks:
        for column, values in task.validate(cases, str(path)).items():
            cases[column] = values
    return cases, path


# --------------------------------------------------------------------------------------------
# Gene sets


def _canonical_subspace(name: str) -> str:
    key = str(name).strip().lower()
    return "tumour" if key == "tumor" else key


def _read_gene_sets(root: Path) -> tuple[dict[str, list[str]], Path]:
    csv = root / "gene_sets.csv"
    if csv.is_file():
        sets, path = _gene_sets_csv(csv), csv
    else:
        gmts = sorted(root.glob("*.gmt"))
        if not gmts:
            raise CohortError(f"{root}: no gene_sets.csv (columns gene, subspace) and no .gmt "
                              f"file found; add one defining the tumour and tme gene sets")
        if len(gmts) > 1:
            raise CohortError(f"{root}: several .gmt files ({_few(g.name for g in gmts)}); keep "
                              f"one, or write gene_sets.csv")
        sets, path = _gene_sets_gmt(gmts[0]), gmts[0]
    for name in SUBSPACES:
        if not sets.get(name):
            raise CohortError(f"{path}: the {name} gene set is empty or missing; list its genes")
    both = sorted(set(sets["tumour"]) & set(sets["tme"]))
    if both:
        raise CohortError(f"{path}: gene(s) {_few(both)} are in both the tumour and the tme set; "
                          f"assign each gene to one subspace")
    return sets, path


def _gene_sets_csv(path: Path) -> dict[str, list[str]]:
    df = _read_table(path, ("gene", "subspace"))
    _require_columns(df, ("gene", "subspace"), path)
    genes = clean_ids(df["gene"], "gene", path)
    subspace = clean_ids(df["subspace"], "subspace", path).map(_canonical_subspace)
    bad = ~subspace.isin(SUBSPACES)
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise CohortError(f"{path}: data row {i + 1} (gene {genes.iloc[i]}) has subspace "
                          f"{df['subspace'].iloc[i]!r}; subspace must be 'tumour' or 'tme'")
    return {name: list(dict.fromkeys(genes[subspace == name])) for name in SUBSPACES}


def _gene_sets_gmt(path: Path) -> dict[str, list[str]]:
    sets: dict[str, list[str]] = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        name = _canonical_subspace(fields[0])
        if len(fields) < 3:
            raise CohortError(f"{path}: line {line_no} has fewer than 3 tab-separated fields; GMT "
                              f"lines are: set name, description, gene, gene, ...")
        if name not in SUBSPACES:
            raise CohortError(f"{path}: line {line_no} defines set {fields[0]!r}; the two sets "
                              f"must be named 'tumour' and 'tme'")
        if name in sets:
            raise CohortError(f"{path}: set {name!r} is defined twice (line {line_no}); merge them")
        sets[name] = list(dict.fromkeys(g for g in fields[2:] if g))
    return sets


# --------------------------------------------------------------------------------------------
# Expression


def _read_expression(root: Path, cases: pd.DataFrame, genes: list[str], gene_path: Path,
                     strict: bool) -> pd.DataFrame:
    path = _find_table(root, "expression")
    df = _read_table(path, ("case_id",))
    _require_columns(df, ("case_id",), path)
    ids = clean_ids(df["case_id"], "case_id", path)
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise CohortError(f"{path}: duplicate expression rows for case_id "
                          f"{_few(sorted(set(ids[dup])))}; keep one row per case")
    df = df.drop(columns="case_id").set_axis(pd.Index(ids, name="case_id"), axis=0)
    present = {str(c) for c in df.columns}
    df.columns = [str(c) for c in df.columns]
    missing = [g for g in genes if g not in present]
    if missing:
        lower = {c.lower() for c in present}
        case_only = any(g.lower() in lower for g in missing)
        hint = " (some differ only in upper/lower case)" if case_only else ""
        raise CohortError(f"{path}: {len(missing)} gene(s) from {gene_path.name} are not columns "
                          f"of the expression table: {_few(missing)}{hint}; fix the gene names "
                          f"or remove them from {gene_path.name}")
    no_expr = cases.index.difference(df.index)
    if len(no_expr):
        slides = [f"{c} (slides {', '.join(cases.at[c, 'slide_ids'])})" for c in no_expr]
        raise CohortError(f"{path}: no expression row for {len(no_expr)} case(s) that have "
                          f"slides: {_few(slides)}; add their expression or drop their slides "
                          f"from the clinical table")
    extra = df.index.difference(cases.index)
    if len(extra):
        msg = (f"{path}: {len(extra)} expression row(s) have no clinical row and are ignored: "
               f"{_few(extra)}")
        if strict:
            raise CohortError(msg + "; remove them or add their slides to the clinical table")
        warnings.warn(msg, UserWarning, stacklevel=3)
    sub = df.loc[cases.index, genes]
    not_numeric = [g for g, dt in zip(genes, sub.dtypes, strict=True) if dt.kind not in "biuf"]
    if not_numeric:
        gene = not_numeric[0]
        bad = pd.to_numeric(sub[gene], errors="coerce").isna() & sub[gene].notna()
        case = bad.index[bad.to_numpy()][0] if bad.any() else "?"
        raise CohortError(f"{path}: gene column(s) {_few(not_numeric)} are not numeric (e.g. "
                          f"gene {gene}, case {case}: {shown(sub.at[case, gene])}); write numbers "
                          "only")
    values = sub.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows, cols = np.nonzero(bad)
        culprits = [f"case {sub.index[r]} gene {genes[c]} ({values[r, c]})"
                    for r, c in zip(rows, cols, strict=True)]
        raise CohortError(f"{path}: {len(culprits)} NaN/inf expression value(s): {_few(culprits)}; "
                          f"impute or drop these values before loading")
    return pd.DataFrame(values, index=cases.index.copy(), columns=list(genes))


# --------------------------------------------------------------------------------------------
# Feature files


def _feature_header(path: Path) -> int:
    """D of one bag from its h5 header (no data read); CohortError naming the file otherwise."""
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or not isinstance(f["features"], h5py.Dataset):
                raise CohortError(f"{path}: no dataset 'features' (keys: {_few(list(f.keys()))}); "
                                  f"write the patch embeddings as dataset 'features' [N, D]")
            ds = f["features"]
            shape, kind = ds.shape, ds.dtype.kind
            coords = f["coords"].shape if "coords" in f else None
    except CohortError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/RuntimeError for damaged files
        raise CohortError(f"{path}: cannot be opened as HDF5 ({type(exc).__name__}: {exc}); the "
                          f"file is corrupt or truncated -- re-extract this slide's features"
                          ) from exc
    if len(shape) != 2 or kind not in "fiu":
        raise CohortError(f"{path}: 'features' must be a numeric [N, D] array, got shape {shape} "
                          f"dtype kind {kind!r}; re-extract this slide's features")
    if shape[0] == 0 or shape[1] == 0:
        raise CohortError(f"{path}: 'features' is empty (shape {shape}); re-extract this slide's "
                          f"features or drop the slide from the clinical table")
    if coords is not None and tuple(coords) != (shape[0], 2):
        raise CohortError(f"{path}: 'coords' has shape {coords}, expected ({shape[0]}, 2) to match "
                          f"'features'; rewrite coords or delete that dataset")
    return int(shape[1])


def _check_features(root: Path, cases: pd.DataFrame, required: bool) -> int | None:
    folder = root / "features"
    slides = [s for ids in cases["slide_ids"] for s in ids]
    paths = [folder / f"{s}.h5" for s in slides]
    exists = [p.is_file() for p in paths]
    if required and not all(exists):
        missing = [str(p) for p, ok in zip(paths, exists, strict=True) if not ok]
        where = "" if folder.is_dir() else f" (the folder {folder} does not exist)"
        raise CohortError(f"{len(missing)} feature file(s) missing{where}: {_few(missing, 3)}; "
                          f"write features/<slide_id>.h5 for every slide, or run without "
                          f"histology (modality: genomics)")
    dims = {p: _feature_header(p) for p, ok in zip(paths, exists, strict=True) if ok}
    if not dims:
        return None
    values, counts = np.unique(list(dims.values()), return_counts=True)
    d = int(values[np.argmax(counts)])
    odd = [f"{p} (D={v})" for p, v in dims.items() if v != d]
    if odd:
        raise CohortError(f"inconsistent feature dimension: most files have D={d}, but "
                          f"{_few(odd, 3)}; extract all slides with the same encoder")
    return d


# --------------------------------------------------------------------------------------------
# Entry point


def load_cohort(path: str | Path, *, tasks: Sequence[str] | None = None,
                require_features: bool = True, strict: bool = False) -> Cohort:
    """Load and validate a cohort directory; raise ``CohortError`` before any compute is spent.

    ``tasks`` limits label validation (and required label columns) to those tasks; ``None``
    validates every task of ``ksmodel.tasks.TASKS`` the table has label columns for (a task with
    only some of its columns is an error naming the missing one).
    ``strict`` turns "expression rows without a clinical row" from a warning into an error.
    Feature files are checked by header only (existence, shape, consistent D).
    """
    root = Path(path)
    if not root.is_dir():
        raise CohortError(f"{root}: cohort directory not found; pass the folder that holds "
                          f"clinical, expression, gene_sets and features/ "
                          f"(docs/cohort-format.md)")
    cases, _ = _read_clinical(root, None if tasks is None else get_tasks(tasks))
    gene_sets, gene_path = _read_gene_sets(root)
    genes = gene_sets["tumour"] + gene_sets["tme"]
    expression = _read_expression(root, cases, genes, gene_path, strict)
    feature_dim = _check_features(root, cases, require_features)
    return Cohort(root=root, cases=cases, expression=expression, gene_sets=gene_sets,
                  feature_dim=feature_dim)


# --------------------------------------------------------------------------------------------
# Bags


@dataclass(frozen=True, eq=False)
class Bags:
    """Every case's bag on the token grid: ``tensor`` [n_cases, H*W, D] in ``case_ids`` order."""

    tensor: torch.Tensor
    case_ids: list[str]
    files_read: int

    def rows(self, case_ids: Sequence[str]) -> np.ndarray:
        """Row positions of ``case_ids`` in ``tensor`` (for indexing one fold's cases)."""
        where = pd.Index(self.case_ids).get_indexer(list(case_ids))
        if (where < 0).any():
            raise KeyError(f"case(s) not in these bags: {_few(np.asarray(case_ids)[where < 0])}")
        return where


def select_tokens(n: int, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Indices into a bag of ``n`` patches giving exactly ``tokens`` entries (see module doc)."""
    if n >= tokens:
        return np.sort(rng.choice(n, size=tokens, replace=False))
    return (np.arange(tokens) * n) // tokens  # each patch repeated ~tokens/n times, in order


def arrange_on_grid(coords: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Permutation placing tokens row-major on an H x W grid: y picks the row, x the column."""
    h, w = grid
    x, y = coords[:, 0], coords[:, 1]
    by_y = np.lexsort((x, y))
    row = np.arange(h * w) // w
    return by_y[np.lexsort((x[by_y], row))]


def _available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


class NonFiniteFeatures(ValueError):
    """One feature file holds NaN/inf values (collected by `load_bags`, reported together)."""


def _read_case(folder: Path, slide_ids: Sequence[str], dim: int) -> tuple[np.ndarray,
                                                                           np.ndarray | None]:
    feats, coords = [], []
    for slide in slide_ids:
        path = folder / f"{slide}.h5"
        try:
            with h5py.File(path, "r") as f:
                x = np.asarray(f["features"][()], dtype=np.float32)
                c = np.asarray(f["coords"][()], dtype=np.int64) if "coords" in f else None
        except Exception as exc:
            raise CohortError(f"{path}: cannot read 'features' ({type(exc).__name__}: {exc}); "
                              f"re-extract this slide's features") from exc
        if x.ndim != 2 or x.shape[1] != dim or x.shape[0] == 0:
            raise CohortError(f"{path}: 'features' has shape {x.shape}, expected [N>0, {dim}]; the "
                              f"file changed after load_cohort -- reload the cohort")
        if not np.isfinite(x).all():  # NaN, inf, or a value beyond float32 (~3.4e38)
            bad = int(np.count_nonzero(~np.isfinite(x)))
            raise NonFiniteFeatures(f"{path} ({bad} of {x.size} values)")
        feats.append(x)
        coords.append(c)
    if len(feats) == 1:
        return feats[0], coords[0]
    if any(c is None for c in coords):
        return np.concatenate(feats), None
    stacked, offset = [], 0
    for c in coords:  # slides one below the other, each keeping its own layout
        c = c - c.min(axis=0)
        c[:, 1] += offset
        offset = int(c[:, 1].max()) + 1
        stacked.append(c)
    return np.concatenate(feats), np.concatenate(stacked)


def load_bags(cohort: Cohort, grid: tuple[int, int], *, seed: int = 0,
              max_gb: float = 8.0) -> Bags:
    """Read every case's feature files once and bring each bag to the H x W token grid."""
    h, w = check_grid(tuple(grid))
    if cohort.feature_dim is None:
        raise CohortError(f"{cohort.root}: the cohort has no feature files (features/"
                          f"<slide_id>.h5), so only modality=genomics can run on it; set "
                          f"modality: genomics (study file 'fixed', or --set modality=genomics)")
    tokens, dim, n = h * w, cohort.feature_dim, len(cohort.cases)
    need = n * tokens * dim * 4 / 1e9
    if need > max_gb:
        raise CohortError(f"{cohort.root}: the bags need {need:.2f} GB ({n} cases x {tokens} "
                          f"tokens x D={dim} x 4 bytes) > max_gb={max_gb}; use a smaller grid, "
                          f"fewer cases, or raise max_gb if the machine has the memory")
    avail = _available_gb()
    if avail is not None and need > avail:
        raise CohortError(f"{cohort.root}: the bags need {need:.2f} GB but only {avail:.2f} GB of "
                          f"memory is available; use a smaller grid or a bigger machine")
    folder = cohort.root / "features"
    missing = [f"{s}.h5" for ids in cohort.cases["slide_ids"] for s in ids
               if not (folder / f"{s}.h5").is_file()]
    if missing:
        raise CohortError(f"{folder}: {len(missing)} feature file(s) missing: {_few(missing)}; "
                          f"write features/<slide_id>.h5 for every slide, or run without "
                          f"histology (modality: genomics)")
    tensor = torch.empty((n, tokens, dim), dtype=torch.float32)
    view = tensor.numpy()  # numpy copies into the shared buffer are ~10x faster than torch setitem
    files_read = 0
    non_finite: list[str] = []
    for i, (case_id, slide_ids) in enumerate(cohort.cases["slide_ids"].items()):
        try:
            feats, coords = _read_case(folder, slide_ids, dim)
        except NonFiniteFeatures as exc:  # every such file is named, then the load stops
            non_finite.append(str(exc))
            continue
        files_read += len(slide_ids)
        rng = np.random.default_rng([seed, zlib.crc32(str(case_id).encode())])
        idx = select_tokens(feats.shape[0], tokens, rng)
        if coords is not None:
            idx = idx[arrange_on_grid(coords[idx], (h, w))]
        view[i] = feats[idx]
    if non_finite:
        raise CohortError(f"{len(non_finite)} feature file(s) hold NaN or infinite values: "
                          f"{_few(non_finite, 3)}; re-extract these slides' features (or drop "
                          f"the slides from the clinical table)")
    return Bags(tensor=tensor, case_ids=cohort.case_ids, files_read=files_read)


__all__ = ["CohortError", "Cohort", "Bags", "load_cohort", "load_bags", "clean_ids",
           "select_tokens", "arrange_on_grid", "SUBSPACES"]
