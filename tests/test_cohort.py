"""Cohort loading, validation (docs/errors.md) and the bag cache / token-grid rule."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ksmodel.cohort import (
    Cohort,
    CohortError,
    arrange_on_grid,
    load_bags,
    load_cohort,
    select_tokens,
)

# --------------------------------------------------------------------------------------------
# helpers


def _read(root: Path, stem: str) -> pd.DataFrame:
    return pd.read_parquet(root / f"{stem}.parquet")


def _write(root: Path, stem: str, df: pd.DataFrame) -> None:
    df.to_parquet(root / f"{stem}.parquet", index=False)


def _edit(stem: str, fn: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        df = _read(root, stem)
        out = fn(df)
        _write(root, stem, df if out is None else out)
    return mutate


def _set(stem: str, case: str, column: str, value: object) -> Callable[[Path], None]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        if column not in ("case_id",) and df[column].dtype.kind in "iu":
            df[column] = df[column].astype("float64")
        df.loc[df["case_id"] == case, column] = value
        return df
    return _edit(stem, fn)


def _h5(path: Path, features: np.ndarray | None = None, coords: np.ndarray | None = None,
        **datasets: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        if features is not None:
            f.create_dataset("features", data=features)
        if coords is not None:
            f.create_dataset("coords", data=coords)
        for key, value in datasets.items():
            f.create_dataset(key, data=value)


def _multi_slide_case(root: Path) -> str:
    clinical = _read(root, "clinical")
    counts = clinical["case_id"].value_counts()
    return str(counts.index[counts.to_numpy() > 1][0])


# --------------------------------------------------------------------------------------------
# the synthetic cohort loads


def test_synthetic_cohort_loads_and_is_aligned(small_cohort: Path) -> None:
    cohort = load_cohort(small_cohort)
    assert isinstance(cohort, Cohort)
    ids = cohort.case_ids
    assert ids == sorted(ids) and len(ids) == 60
    assert cohort.expression.index.tolist() == ids
    assert list(cohort.cases.columns[:6]) == ["diagnosis", "grade", "idh_mutant", "survival_days",
                                              "event", "slide_ids"]
    assert "synthetic_conflict" in cohort.cases.columns  # extra clinical columns kept
    # gene-set order, background genes (BG_*) dropped
    assert list(cohort.expression.columns) == cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]
    assert len(cohort.gene_sets["tumour"]) == 59 and len(cohort.gene_sets["tme"]) == 361
    assert cohort.gene_sets["tumour"][0] == "TUM_001"
    assert cohort.feature_dim == 32
    raw = _read(small_cohort, "expression").set_index("case_id")
    np.testing.assert_array_equal(cohort.expression.to_numpy(),
                                  raw.loc[ids, cohort.expression.columns].to_numpy())
    multi = _multi_slide_case(small_cohort)
    assert cohort.cases.at[multi, "slide_ids"] == [f"{multi}-01", f"{multi}-02"]


def test_targets(small_cohort: Path) -> None:
    cohort = load_cohort(small_cohort)
    grade = cohort.targets("grade")["label"]
    assert grade.dtype == np.int64
    np.testing.assert_array_equal(grade, cohort.cases["grade"].to_numpy() - 2)
    diag = cohort.targets("diagnosis")["label"]
    assert set(diag.tolist()) == {0, 1, 2, 3}
    surv = cohort.targets("survival")
    assert surv["time"].dtype == np.float64 and surv["event"].dtype == np.int64
    assert set(surv["event"].tolist()) == {0, 1}


def test_csv_tables_load_like_parquet(cohort_copy: Path, small_cohort: Path) -> None:
    for stem in ("clinical", "expression"):
        _read(cohort_copy, stem).to_csv(cohort_copy / f"{stem}.csv", index=False)
        (cohort_copy / f"{stem}.parquet").unlink()
    a, b = load_cohort(small_cohort), load_cohort(cohort_copy)
    pd.testing.assert_frame_equal(a.expression, b.expression)
    pd.testing.assert_frame_equal(a.cases[["diagnosis", "grade", "event"]],
                                  b.cases[["diagnosis", "grade", "event"]])
    assert a.cases["slide_ids"].tolist() == b.cases["slide_ids"].tolist()


def test_parquet_preferred_over_csv(cohort_copy: Path) -> None:
    (cohort_copy / "clinical.csv").write_text("this,is,not\nthe,table,used\n")
    assert len(load_cohort(cohort_copy).cases) == 60


def test_gmt_gene_sets(cohort_copy: Path, small_cohort: Path) -> None:
    sets = load_cohort(small_cohort).gene_sets
    (cohort_copy / "gene_sets.csv").unlink()
    (cohort_copy / "sets.gmt").write_text(
        "TUMOR\tsynthetic\t" + "\t".join(sets["tumour"]) + "\n"
        "tme\tsynthetic\t" + "\t".join(sets["tme"]) + "\n")
    assert load_cohort(cohort_copy).gene_sets == sets


def test_tasks_limit_validation(cohort_copy: Path) -> None:
    _edit("clinical", lambda df: df.drop(columns=["grade"]))(cohort_copy)
    cohort = load_cohort(cohort_copy, tasks=["diagnosis", "survival"])
    assert len(cohort.targets("diagnosis")["label"]) == 60
    with pytest.raises(CohortError, match="grade"):
        cohort.targets("grade")
    # without tasks: every task the table has labels for is validated, absent ones on first use
    with pytest.raises(CohortError, match="grade"):
        load_cohort(cohort_copy).targets("grade")
    _edit("clinical", lambda df: df.assign(grade=9))(cohort_copy)
    with pytest.raises(CohortError, match="grade must be an integer in 2..4"):
        load_cohort(cohort_copy)


def test_extra_expression_rows_warn_or_fail_when_strict(cohort_copy: Path) -> None:
    def add_row(df: pd.DataFrame) -> pd.DataFrame:
        row = df.iloc[[0]].copy()
        row["case_id"] = "EXTRA-1"
        return pd.concat([df, row], ignore_index=True)

    _edit("expression", add_row)(cohort_copy)
    with pytest.warns(UserWarning, match="EXTRA-1"):
        cohort = load_cohort(cohort_copy)
    assert "EXTRA-1" not in cohort.expression.index
    with pytest.raises(CohortError, match="EXTRA-1"):
        load_cohort(cohort_copy, strict=True)


def test_genomics_only_cohort(cohort_copy: Path) -> None:
    shutil.rmtree(cohort_copy / "features")
    with pytest.raises(CohortError, match=r"modality: genomics"):
        load_cohort(cohort_copy)
    cohort = load_cohort(cohort_copy, require_features=False)
    assert cohort.feature_dim is None
    with pytest.raises(CohortError, match="no feature files"):
        load_bags(cohort, (4, 4))


# --------------------------------------------------------------------------------------------
# bad input: every error names its culprit


def _unlink(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).unlink()


def _write_text(name: str, text: str) -> Callable[[Path], None]:
    return lambda root: (root / name).write_text(text)


def _dup_expression(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df[df["case_id"] == "SYN-0005"]], ignore_index=True)


def _dup_slide(df: pd.DataFrame) -> None:
    df.loc[1, "slide_id"] = df.loc[0, "slide_id"]


def _blank_case(df: pd.DataFrame) -> None:
    df.loc[3, "case_id"] = None


def _gene_sets_edit(fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def mutate(root: Path) -> None:
        path = root / "gene_sets.csv"
        fn(pd.read_csv(path)).to_csv(path, index=False)
    return mutate


def _in_both(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, pd.DataFrame({"gene": ["TUM_001"], "subspace": ["tme"]})])


def _bad_subspace(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[4, "subspace"] = "stroma"
    return df


def _inconsistent_slides(root: Path) -> None:
    case = _multi_slide_case(root)
    df = _read(root, "clinical")
    df.loc[df.index[df["case_id"] == case][1], "diagnosis"] = (
        df.loc[df["case_id"] == case, "diagnosis"].iloc[0] + 1) % 4
    _write(root, "clinical", df)


def _features(name: str, **kw: np.ndarray) -> Callable[[Path], None]:
    return lambda root: _h5(root / "features" / name, **kw)


def _gmt_unknown_set(root: Path) -> None:
    (root / "gene_sets.csv").unlink()
    (root / "sets.gmt").write_text("tumour\tx\tTUM_001\nstroma\tx\tTME_001\n")


def _non_numeric(df: pd.DataFrame) -> None:
    df["TUM_010"] = df["TUM_010"].astype(str)
    df.loc[2, "TUM_010"] = "n/a"


BAD_INPUTS: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "missing clinical table": (_unlink("clinical.parquet"), ["clinical.parquet or clinical.csv"]),
    "missing column": (_edit("clinical", lambda df: df.drop(columns=["event"])),
                       ["clinical.parquet", "event"]),
    "missing case id": (_edit("clinical", _blank_case), ["case_id", "row(s) 4"]),
    "duplicate slide id": (_edit("clinical", _dup_slide), ["duplicate slide_id", "SYN-0001-01"]),
    "duplicate expression row": (_edit("expression", _dup_expression),
                                 ["expression.parquet", "duplicate", "SYN-0005"]),
    "slide without expression": (
        _edit("expression", lambda df: df[df["case_id"] != "SYN-0010"]),
        ["expression.parquet", "SYN-0010", "SYN-0010-01"]),
    "gene absent from expression": (
        _edit("expression", lambda df: df.drop(columns=["TUM_003", "TME_010"])),
        ["2 gene(s)", "TUM_003", "TME_010", "gene_sets.csv"]),
    "gene in both sets": (_gene_sets_edit(_in_both), ["gene_sets.csv", "TUM_001", "both"]),
    "bad subspace": (_gene_sets_edit(_bad_subspace), ["gene_sets.csv", "'stroma'", "TUM_005"]),
    "unknown gmt set": (_gmt_unknown_set, ["sets.gmt", "'stroma'"]),
    "nan expression": (_set("expression", "SYN-0003", "TME_007", np.nan),
                       ["expression.parquet", "SYN-0003", "TME_007"]),
    "inf expression": (_set("expression", "SYN-0004", "TUM_002", np.inf),
                       ["SYN-0004", "TUM_002", "inf"]),
    "non-numeric expression": (_edit("expression", _non_numeric), ["TUM_010", "numeric"]),
    "corrupt table": (_write_text("expression.parquet", "garbage"), ["expression.parquet"]),
    "missing feature file": (_unlink("features/SYN-0002-01.h5"), ["SYN-0002-01.h5", "missing"]),
    "corrupt feature file": (_write_text("features/SYN-0003-01.h5", "not hdf5"),
                             ["SYN-0003-01.h5", "corrupt"]),
    "empty feature file": (_features("SYN-0004-01.h5", features=np.zeros((0, 32), np.float32)),
                           ["SYN-0004-01.h5", "empty"]),
    "wrong feature dim": (_features("SYN-0005-01.h5", features=np.zeros((7, 16), np.float32)),
                          ["SYN-0005-01.h5", "D=16", "D=32"]),
    "no features dataset": (_features("SYN-0006-01.h5", feats=np.zeros((7, 32), np.float32)),
                            ["SYN-0006-01.h5", "'features'"]),
    "coords mismatch": (_features("SYN-0007-01.h5", features=np.zeros((7, 32), np.float32),
                                  coords=np.zeros((5, 2), np.int64)), ["SYN-0007-01.h5", "coords"]),
    "diagnosis out of range": (_set("clinical", "SYN-0011", "diagnosis", 7),
                               ["SYN-0011", "diagnosis", "0..3"]),
    "grade out of range": (_set("clinical", "SYN-0012", "grade", 1), ["SYN-0012", "grade", "2..4"]),
    "event not 0/1": (_set("clinical", "SYN-0014", "event", 2), ["SYN-0014", "event"]),
    "negative survival time": (_set("clinical", "SYN-0015", "survival_days", -3.0),
                               ["SYN-0015", "survival_days"]),
    "nan survival time": (_set("clinical", "SYN-0016", "survival_days", np.nan),
                          ["SYN-0016", "survival_days"]),
    "labels differ between slides": (_inconsistent_slides, ["different diagnosis"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_names_the_culprit(name: str, cohort_copy: Path) -> None:
    mutate, expected = BAD_INPUTS[name]
    mutate(cohort_copy)
    with pytest.raises(CohortError) as info:
        load_cohort(cohort_copy)
    message = str(info.value)
    for part in expected:
        assert part in message, f"{name}: {part!r} not in {message!r}"
    if name == "labels differ between slides":
        assert _multi_slide_case(cohort_copy) in message


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="nowhere"):
        load_cohort(tmp_path / "nowhere")


def test_bag_memory_limit(small_cohort: Path) -> None:
    cohort = load_cohort(small_cohort)
    with pytest.raises(CohortError, match=r"max_gb=0\.0001.*GB|GB.*max_gb=0\.0001"):
        load_bags(cohort, (16, 16), max_gb=0.0001)


# --------------------------------------------------------------------------------------------
# a hand-written cohort in the CLAM layout, and the token-grid rule


def _clam_cohort(root: Path) -> dict[str, np.ndarray]:
    """Three cases written by hand: CSV tables, a GMT file and CLAM-style h5 bags."""
    (root / "features").mkdir(parents=True)
    pd.DataFrame({"case_id": ["C", "A", "B", "B"], "slide_id": ["c1", "a1", "b1", "b2"],
                  "diagnosis": [0, 1, 2, 2], "grade": [4, 4, 3, 3],
                  "survival_days": [10.0, 20.0, 30.0, 30.0], "event": [1, 0, 1, 1],
                  "site": ["x", "y", "z", "z"]}).to_csv(root / "clinical.csv", index=False)
    pd.DataFrame({"case_id": ["A", "B", "C"], "g1": [1.0, 2.0, 3.0], "g2": [0.0, 5.0, 1.0],
                  "g3": [7.0, 8.0, 9.0]}).to_csv(root / "expression.csv", index=False)
    (root / "sets.gmt").write_text("tumour\tdesc\tg3\tg1\ntme\tdesc\tg2\n")
    feats = {}
    # a1: 6 patches in shuffled file order on a 2 x 3 layout (CLAM: float32 features, int64 coords)
    grid_xy = np.array([[x, y] for y in range(2) for x in range(3)]) * 256
    perm = np.array([4, 0, 5, 2, 1, 3])
    feats["a1"] = (np.arange(6, dtype=np.float32)[:, None] * np.ones(4, np.float32))[perm]
    with h5py.File(root / "features" / "a1.h5", "w") as f:
        f.create_dataset("features", data=feats["a1"])
        f.create_dataset("coords", data=grid_xy[perm].astype(np.int64))
        f["coords"].attrs["patch_size"] = 256
    feats["b1"] = np.full((2, 4), 10.0, np.float32) + np.arange(2)[:, None]
    feats["b2"] = np.full((2, 4), 20.0, np.float32) + np.arange(2)[:, None]
    _h5(root / "features" / "b1.h5", features=feats["b1"], coords=np.array([[0, 0], [256, 0]]))
    _h5(root / "features" / "b2.h5", features=feats["b2"], coords=np.array([[0, 0], [256, 0]]))
    feats["c1"] = np.arange(3 * 4, dtype=np.float16).reshape(3, 4)  # no coords, float16
    _h5(root / "features" / "c1.h5", features=feats["c1"])
    return feats


def test_clam_layout_cohort(tmp_path: Path) -> None:
    feats = _clam_cohort(tmp_path)
    cohort = load_cohort(tmp_path)
    assert cohort.case_ids == ["A", "B", "C"]
    assert cohort.gene_sets == {"tumour": ["g3", "g1"], "tme": ["g2"]}
    assert list(cohort.expression.columns) == ["g3", "g1", "g2"]
    assert cohort.expression.loc["C", "g3"] == 9.0
    assert cohort.feature_dim == 4
    assert cohort.cases.at["B", "slide_ids"] == ["b1", "b2"]
    assert cohort.cases.at["A", "site"] == "y"

    bags = load_bags(cohort, (2, 3))
    assert bags.case_ids == ["A", "B", "C"] and bags.files_read == 4
    assert bags.tensor.dtype == torch.float32 and bags.tensor.shape == (3, 6, 4)
    # A: 6 patches, shuffled in the file, put back on the grid row by row (y, then x)
    np.testing.assert_array_equal(bags.tensor[0, :, 0].numpy(), np.arange(6))
    # B: two slides concatenated (4 patches -> 6 tokens, repeated); b1 above b2 on the grid
    b = bags.tensor[1, :, 0].numpy()
    assert set(b.tolist()) == {10.0, 11.0, 20.0, 21.0}
    assert b[:3].max() < 20 <= b[3:].min()
    # C: no coords -> file order, each patch repeated twice in a row
    np.testing.assert_array_equal(bags.tensor[2].numpy(), feats["c1"][[0, 0, 1, 1, 2, 2]])
    np.testing.assert_array_equal(bags.rows(["C", "A"]), [2, 0])


def test_subsampling_is_seeded_and_without_replacement(small_cohort: Path) -> None:
    cohort = load_cohort(small_cohort)
    a = load_bags(cohort, (4, 4), seed=0)
    b = load_bags(cohort, (4, 4), seed=0)
    c = load_bags(cohort, (4, 4), seed=1)
    assert a.files_read == sum(len(s) for s in cohort.cases["slide_ids"])
    assert torch.equal(a.tensor, b.tensor)
    assert not torch.equal(a.tensor, c.tensor)
    # every bag has >= 24 patches > 16 tokens: no patch twice (rows are distinct noise vectors)
    for bag in a.tensor:
        assert torch.unique(bag, dim=0).shape[0] == 16


def test_select_tokens_rule() -> None:
    rng = np.random.default_rng(0)
    down = select_tokens(50, 16, rng)
    assert len(down) == 16 and len(set(down.tolist())) == 16 and (np.diff(down) > 0).all()
    up = select_tokens(3, 8, rng)
    np.testing.assert_array_equal(up, [0, 0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(select_tokens(5, 5, rng), np.arange(5))


def test_arrange_on_grid_keeps_neighbours_near() -> None:
    rng = np.random.default_rng(3)
    coords = rng.integers(0, 1000, (48, 2))
    order = arrange_on_grid(coords, (6, 8))
    assert sorted(order.tolist()) == list(range(48))
    placed = coords[order].reshape(6, 8, 2)
    assert (np.diff(placed[:, :, 0], axis=1) >= 0).all()  # x increases along a row
    assert (placed[:-1, :, 1].max(axis=1) <= placed[1:, :, 1].min(axis=1)).all()  # rows by y


def test_the_installed_pandas_reads_hex_ids(tmp_path: Path) -> None:
    """pandas 2.3.3's C parser segfaults on hex strings that look like a huge exponent (MLflow run
    ids, cohort ids); pyproject excludes it. Read in a child so a bad install fails one test."""
    csv = tmp_path / "ids.csv"
    csv.write_text("run_id,val_auc\n2e06918610327a,0.7\n81e3104049863b72,0.8\n")
    code = f"import pandas as pd; print(pd.read_csv({str(csv)!r})['run_id'].tolist())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"pandas crashed reading hex ids (rc {proc.returncode})"
    assert "2e06918610327a" in proc.stdout
