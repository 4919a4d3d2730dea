"""The synthetic cohort: format, determinism, planted signal, the conflict and TME-shift knobs,
CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from ksmodel.cohort import Cohort, load_bags, load_cohort
from ksmodel.config import SyntheticConfig
from ksmodel.splits import ExpressionScaler, fold_case_ids, make_splits
from ksmodel.synthetic import generate, main

TINY = dict(patients=30, patches=(6, 12), dim=8, quiet=True)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _auc(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> float:
    model = LogisticRegression(C=0.1, max_iter=3000).fit(x[train], y[train])
    return float(roc_auc_score(y[val], model.predict_proba(x[val]), multi_class="ovr",
                               average="macro"))


def _gene_aucs(cohort: Cohort, fold: int = 0,
               subspaces: tuple[str, ...] = ("tumour", "tme")) -> dict[str, float]:
    """Diagnosis macro OvR AUC of a logistic regression on each gene subspace (log1p + z)."""
    splits = make_splits(cohort, "diagnosis", seed=0)
    train, val = fold_case_ids(splits, fold)
    idx = cohort.expression.index
    y = cohort.targets("diagnosis")["label"]
    out = {}
    for name in subspaces:
        genes = cohort.gene_sets[name]
        expr = cohort.expression[genes]
        scaler = ExpressionScaler.fit(expr.loc[train], log1p=True)
        x = np.zeros((len(idx), len(genes)), np.float32)
        x[idx.get_indexer(train)] = scaler.transform(expr.loc[train])
        x[idx.get_indexer(val)] = scaler.transform(expr.loc[val])
        out[name] = _auc(x, y, idx.get_indexer(train), idx.get_indexer(val))
    return out


def test_same_seed_byte_identical(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", seed=5, **TINY))
    b = _files(generate(tmp_path / "b", seed=5, **TINY))
    assert a.keys() == b.keys() and any(k.endswith(".h5") for k in a)
    assert a == b
    c = _files(generate(tmp_path / "c", seed=6, **TINY))
    assert c["clinical.parquet"] != a["clinical.parquet"]
    assert c["expression.parquet"] != a["expression.parquet"]


def test_tables_do_not_depend_on_bag_parameters(tmp_path: Path) -> None:
    a = _files(generate(tmp_path / "a", seed=2, **TINY))
    b = _files(generate(tmp_path / "b", seed=2, **{**TINY, "patches": 40, "dim": 3}))
    for name in ("clinical.parquet", "expression.parquet", "gene_sets.csv"):
        assert a[name] == b[name]


def test_format_and_planted_labels(small_cohort: Path) -> None:
    cohort = load_cohort(small_cohort)  # validates everything
    clinical = pd.read_parquet(small_cohort / "clinical.parquet")
    assert list(clinical.columns[:6]) == ["case_id", "slide_id", "diagnosis", "grade",
                                          "survival_days", "event"]
    sets = pd.read_csv(small_cohort / "gene_sets.csv")
    assert sets["subspace"].value_counts().to_dict() == {"tme": 361, "tumour": 59}
    meta = json.loads((small_cohort / "cohort.json").read_text())
    assert meta["patients"] == 60 and meta["dim"] == 32 and meta["seed"] == 7
    cases = cohort.cases
    grade4 = cases["diagnosis"].isin([0, 1])
    assert (cases.loc[grade4, "grade"] == 4).all()
    assert cases.loc[~grade4, "grade"].isin([2, 3]).all()
    assert (cases["survival_days"] > 0).all()
    for case, slides in cases["slide_ids"].items():
        sizes = []
        for slide in slides:
            with h5py.File(small_cohort / "features" / f"{slide}.h5") as f:
                sizes.append(f["features"].shape[0])
                assert f["coords"].shape == (f["features"].shape[0], 2)
                assert f["coords"].dtype == np.int64
        assert 24 <= sum(sizes) <= 80, case



def test_clinical_covariates(small_cohort: Path) -> None:
    """age / is_female / idh_mutant (what the clinical baselines use): glioma-like ranges, IDH
    status from the diagnosis, GBM IDH-wildtype patients older on average."""
    cases = load_cohort(small_cohort).cases
    age, female, idh = (cases[c].to_numpy() for c in ("age", "is_female", "idh_mutant"))
    assert ((age >= 18) & (age <= 90)).all() and (age == np.round(age)).all()
    assert set(female.tolist()) == {0, 1} and 0.2 < female.mean() < 0.7
    assert set(idh.tolist()) == {0, 1}
    assert (idh == (cases["diagnosis"].to_numpy() != 0)).all()
    gbm = cases["diagnosis"].to_numpy() == 0
    assert age[gbm].mean() > age[~gbm].mean() + 10, (age[gbm].mean(), age[~gbm].mean())
    assert age[gbm].std() > 5 and age[~gbm].std() > 5  # spread, not one age per class

def test_default_cohort_tables_carry_the_planted_signal(tmp_path: Path) -> None:
    """The default cohort's tables (400 patients, seed 0): bag parameters do not change them, so
    tiny bags keep this fast while testing exactly the default clinical/expression tables."""
    cohort = load_cohort(generate(tmp_path / "c", patients=400, patches=(2, 3), dim=2,
                                  seed=0, quiet=True))
    counts = np.bincount(cohort.targets("diagnosis")["label"], minlength=4)
    assert counts.argmax() == 0 and counts.min() >= 30  # GBM most common, no empty class
    censored = 1 - cohort.targets("survival")["event"].mean()
    assert 0.28 <= censored <= 0.42
    auc = _gene_aucs(cohort)
    assert auc["tumour"] >= 0.8, auc
    assert 0.5 < auc["tme"] < auc["tumour"], auc


def test_tme_shift_turns_tme_evidence_to_another_class(tmp_path: Path) -> None:
    small = dict(patients=300, patches=(2, 3), dim=2, n_tme=80, quiet=True)
    base = load_cohort(generate(tmp_path / "a", tme_shift=0.0, **small))
    conf = load_cohort(generate(tmp_path / "b", tme_shift=0.75, **small))
    # the tumour side (labels, tumour genes) is the same cohort; only the TME side moves
    np.testing.assert_array_equal(base.targets("diagnosis")["label"],
                                  conf.targets("diagnosis")["label"])
    tum = base.gene_sets["tumour"]
    pd.testing.assert_frame_equal(base.expression[tum], conf.expression[tum])
    flagged = conf.cases["synthetic_conflict"] == 1
    assert flagged.sum() == 225 and base.cases["synthetic_conflict"].sum() == 0
    assert (conf.cases.loc[flagged, "tme_source_diagnosis"]
            != conf.cases.loc[flagged, "diagnosis"]).all()
    # a TME-gene classifier trained without conflict reads the conflict patients' TME as the
    # other class: probability moves from their diagnosis to the TME source class
    tme = base.gene_sets["tme"]
    scaler = ExpressionScaler.fit(base.expression[tme])
    model = LogisticRegression(C=0.1, max_iter=3000).fit(
        scaler.transform(base.expression[tme]), base.targets("diagnosis")["label"])
    rows = np.arange(int(flagged.sum()))
    true = conf.cases.loc[flagged, "diagnosis"].to_numpy()
    source = conf.cases.loc[flagged, "tme_source_diagnosis"].to_numpy()
    p_base, p_conf = (model.predict_proba(scaler.transform(c.expression.loc[flagged, tme]))
                      for c in (base, conf))
    assert p_conf[rows, true].mean() < p_base[rows, true].mean() - 0.15
    assert p_conf[rows, source].mean() > p_base[rows, source].mean() + 0.1


def _features(root: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted((root / "features").glob("*.h5")):
        with h5py.File(path) as f:
            out[path.stem] = f["features"][()]
    return out


def test_conflict_plants_another_class_tumour_signature_on_tme_patches(tmp_path: Path) -> None:
    """conflict: only the TME-compartment patches move, only along the tumour feature
    directions, towards the tumour signature of a class other than the patient's; tables,
    coordinates and tumour patches stay as they are; conflict 0 is the cohort without the knob."""
    from ksmodel.config import SyntheticConfig
    from ksmodel.synthetic import _planted_class

    kw = dict(patients=40, patches=(20, 30), dim=64, seed=4, quiet=True)
    base, half, full = (generate(tmp_path / n, conflict=k, **kw)
                        for n, k in (("a", 0.0), ("b", 0.5), ("c", 1.0)))
    fa, fb, fc = _files(base), _files(half), _files(full)
    for name in ("clinical.parquet", "expression.parquet", "gene_sets.csv"):
        assert fa[name] == fb[name] == fc[name]
    xa, xb, xc = _features(base), _features(half), _features(full)
    assert xa.keys() == xc.keys()
    # rebuild the generator's tumour directions and each patient's planted class
    seqs = np.random.SeedSequence(4).spawn(4)
    cohort = load_cohort(base)
    diag = cohort.cases["diagnosis"].to_numpy()
    planted = _planted_class(seqs[3], diag)
    assert (planted != diag).all() and len(set(planted.tolist())) > 1
    deltas, unmoved = [], 0
    for i, slides in enumerate(cohort.cases["slide_ids"]):
        for slide in slides:
            d1, d2 = xb[slide] - xa[slide], xc[slide] - xa[slide]
            np.testing.assert_allclose(d2, 2 * d1, rtol=1e-4, atol=1e-5)  # linear in conflict
            moved = np.abs(d2).max(axis=1) > 0
            deltas.append((planted[i], d2[moved]))
            unmoved += int((~moved).sum())
    assert unmoved > 0  # the tumour patches stay put
    # every moved patch moved by the same per-patient vector: conflict x centroid(planted) @ M
    sig = np.stack([d[0] for _, d in deltas if len(d)])
    cls = np.array([c for c, d in deltas if len(d)])
    rank = np.linalg.matrix_rank(sig.astype(np.float64), tol=1e-3)
    assert rank <= 4  # within the 4 tumour feature directions
    for c in set(cls.tolist()):  # the same planted class: the same signature
        assert np.abs(sig[cls == c] - sig[cls == c][0]).max() < 1e-5
    assert len(set(cls.tolist())) > 1 and np.abs(sig).max() > 0.05
    assert SyntheticConfig().conflict == 0.0  # the default cohort has none


def test_patches_carry_histology_and_spatial_structure(tmp_path: Path) -> None:
    cohort = load_cohort(generate(tmp_path / "c", patients=200, patches=(30, 50), dim=48,
                                  quiet=True))
    bags = load_bags(cohort, (5, 6))
    x = bags.tensor.mean(dim=1).numpy()
    x = (x - x.mean(0)) / x.std(0)
    y = cohort.targets("diagnosis")["label"]
    train, val = fold_case_ids(make_splits(cohort, "diagnosis"), 0)
    idx = cohort.cases.index
    assert _auc(x, y, idx.get_indexer(train), idx.get_indexer(val)) > 0.7
    # spatial structure: a patch resembles its nearest spatial neighbour more than a random patch
    near, rand = [], []
    rng = np.random.default_rng(0)
    for slide in [s[0] for s in cohort.cases["slide_ids"].iloc[:40]]:
        with h5py.File(cohort.root / "features" / f"{slide}.h5") as f:
            feats, coords = f["features"][()], f["coords"][()]
        d = np.linalg.norm(coords[:, None] - coords[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nn = d.argmin(axis=1)
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        near.append((unit * unit[nn]).sum(1).mean())
        rand.append((unit * unit[rng.permutation(len(unit))]).sum(1).mean())
    assert np.mean(near) > np.mean(rand) + 0.05


def test_csv_format(tmp_path: Path) -> None:
    root = generate(tmp_path / "c", fmt="csv", **TINY)
    assert (root / "clinical.csv").is_file() and not (root / "clinical.parquet").exists()
    assert len(load_cohort(root).cases) == 30


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    generate(tmp_path / "c", **TINY)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(tmp_path / "c", **TINY)
    generate(tmp_path / "c", overwrite=True, **{**TINY, "patients": 12})
    assert len(list((tmp_path / "c" / "features").glob("*.h5"))) < 20  # old bags removed


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path / "c"), "--patients", "20", "--patches", "10", "--dim",
                 "6", "--seed", "3", "--conflict", "0.5", "--tme-shift", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "20/20 patients" in out and "censored" in out and "TME-shift patients 10" in out
    assert "histology conflict 0.5" in out
    meta = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert meta["patches"] == [5, 15] and meta["conflict"] == 0.5 and meta["seed"] == 3
    assert meta["tme_shift"] == 0.5 and meta["tme_shift_cases"] == 10
    cohort = load_cohort(tmp_path / "c")
    with h5py.File(tmp_path / "c" / "features" / f"{cohort.cases['slide_ids'].iloc[0][0]}.h5") as f:
        assert f["features"].shape[1] == 6
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "c")])  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_module_entry_point_help() -> None:
    result = subprocess.run([sys.executable, "-m", "ksmodel.synthetic", "--help"],
                            capture_output=True, text=True, check=True)
    assert "--conflict" in result.stdout and "--patches" in result.stdout
    assert "--tme-shift" in result.stdout


@pytest.mark.slow
def test_default_cohort_under_60_seconds(tmp_path: Path) -> None:
    start = time.perf_counter()
    root = generate(tmp_path / "default", quiet=True)
    assert time.perf_counter() - start < 60
    cohort = load_cohort(root)
    assert len(cohort.cases) == 400 and cohort.feature_dim == 384
    auc = _gene_aucs(cohort)
    assert auc["tumour"] >= 0.8 and 0.5 < auc["tme"] < auc["tumour"]


# --- scenarios: each world plants what its cohort.json says --------------------------------


def _binary_auc(x: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray) -> float:
    model = LogisticRegression(C=0.1, max_iter=3000).fit(x[train], y[train])
    return float(roc_auc_score(y[val], model.predict_proba(x[val])[:, 1]))


def test_scenarios_write_their_planted_truth(tmp_path: Path) -> None:
    from ksmodel.config import SCENARIOS, SyntheticConfig

    assert SyntheticConfig().scenario == "histology_needed" == SCENARIOS[0]
    for scenario in SCENARIOS:
        root = generate(tmp_path / scenario, scenario=scenario, **TINY)
        meta = json.loads((root / "cohort.json").read_text())
        truth = meta["truth"]
        assert meta["scenario"] == truth["scenario"] == scenario
        assert truth["effect"] and truth["comparisons"]
        clinical = pd.read_parquet(root / "clinical.parquet")
        planted = {"synthetic_necrosis", "synthetic_mvp"} <= set(clinical.columns)
        assert planted == (scenario == "histology_needed")
    null = json.loads((tmp_path / "null" / "cohort.json").read_text())["truth"]
    assert null["comparisons"][0]["difference"] == 0.0
    hist = json.loads((tmp_path / "histology_needed" / "cohort.json").read_text())["truth"]
    assert {(c["a"], c["b"], c["expected"]) for c in hist["comparisons"]} == {
        ("full", "genomics_only", "better"), ("full", "logreg_pca", "better")}
    assert hist["morphology"]["present_by_diagnosis"][2] == 0.0  # grade 2-3 never shows it


def test_histology_needed_puts_grade_4_astrocytoma_in_the_slide_only(tmp_path: Path) -> None:
    """Class 1 (astrocytoma IDH-mutant grade 4) vs class 2 (grade 2-3): expression separates them
    only weakly, the slide's mean patch features well (necrosis / MVP patches), and adding the
    slide to the expression lifts the 4-class AUC - what the full model can earn over
    genomics_only and logreg_pca."""
    root = generate(tmp_path / "c", scenario="histology_needed", patients=400,
                    patches=(20, 30), dim=64, seed=3, quiet=True)
    cohort = load_cohort(root)
    cases = cohort.cases
    morph = (cases["synthetic_necrosis"] | cases["synthetic_mvp"]).to_numpy().astype(bool)
    diag = cases["diagnosis"].to_numpy()
    assert morph[diag == 1].all() and not morph[diag == 2].any()
    assert (cases.loc[(diag == 3) & morph, "grade"] == 3).all()
    genes = cohort.gene_sets["tumour"] + cohort.gene_sets["tme"]
    expr = ExpressionScaler.fit(cohort.expression[genes]).transform(cohort.expression[genes])
    pooled = load_bags(cohort, (6, 6)).tensor.mean(dim=1).numpy()
    pooled = (pooled - pooled.mean(0)) / pooled.std(0)
    pair = np.flatnonzero(np.isin(diag, [1, 2]))
    y = (diag[pair] == 1).astype(int)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(pair))
    train, val = order[: len(order) // 2], order[len(order) // 2:]
    auc_expr = _binary_auc(expr[pair], y, train, val)
    auc_slide = _binary_auc(pooled[pair], y, train, val)
    assert auc_expr < 0.8 and auc_slide > 0.9 and auc_slide > auc_expr + 0.15, (auc_expr,
                                                                                 auc_slide)
    label = cohort.targets("diagnosis")["label"]
    splits = make_splits(cohort, "diagnosis", seed=0)
    tr, va = (cases.index.get_indexer(ids) for ids in fold_case_ids(splits, 0))
    both = np.hstack([expr, pooled])
    assert _auc(both, label, tr, va) > _auc(expr, label, tr, va) + 0.03


def test_grade_4_morphology_sits_where_the_world_says(tmp_path: Path) -> None:
    """Necrosis replaces the tumour cluster's core, MVP its rim: the necrotic patches are nearer
    the tumour's centre than the MVP patches on every slide that has both."""
    from ksmodel.synthetic import MVP_TYPE, _slide

    rng = np.random.default_rng(0)
    closer = []
    for _ in range(20):
        coords, types = _slide(rng, 200, np.zeros(4), necrosis=0.4, mvp=0.3)
        tumour = np.isin(types, [0, 1, MVP_TYPE])
        centre = coords[types == 1].mean(axis=0)
        dist = np.linalg.norm(coords - centre, axis=1)
        closer.append(dist[types == 1].mean() < dist[types == MVP_TYPE].mean())
        assert (types == 1).sum() == round(0.4 * tumour.sum())
    assert all(closer)
    _, types = _slide(np.random.default_rng(1), 200, np.zeros(4), necrosis=0.0)
    assert not np.isin(types, [1, MVP_TYPE]).any()  # absent: no necrosis, no MVP


def test_imbalance_plants_a_strong_tumour_and_a_weak_complementary_tme_signal(
        tmp_path: Path) -> None:
    """The tumour genes alone beat the TME genes alone, and the two carry independent evidence:
    summing the two subspaces' log-probabilities (late fusion, as the model's per-stream logits
    sum) beats the tumour genes alone - so a starved TME stream costs something."""
    cohort = load_cohort(generate(tmp_path / "c", scenario="imbalance", patients=400,
                                  patches=(2, 3), dim=2, tme_shift=0.0, quiet=True))
    splits = make_splits(cohort, "diagnosis", seed=0)
    y = cohort.targets("diagnosis")["label"]
    idx = cohort.expression.index
    aucs: dict[str, list[float]] = {"tumour": [], "tme": [], "fused": []}
    for fold in range(3):
        train, val = (idx.get_indexer(ids) for ids in fold_case_ids(splits, fold))
        logp = {}
        for name in ("tumour", "tme"):
            genes = cohort.gene_sets[name]
            x = ExpressionScaler.fit(cohort.expression.iloc[train][genes]).transform(
                cohort.expression[genes])
            model = LogisticRegression(C=0.01, max_iter=3000).fit(x[train], y[train])
            logp[name] = model.predict_log_proba(x[val])
            aucs[name].append(roc_auc_score(y[val], np.exp(logp[name]), multi_class="ovr"))
        fused = np.exp(logp["tumour"] + logp["tme"])
        aucs["fused"].append(roc_auc_score(y[val], fused / fused.sum(1, keepdims=True),
                                           multi_class="ovr"))
    auc = {k: float(np.mean(v)) for k, v in aucs.items()}
    assert auc["tumour"] > auc["tme"] + 0.05 and auc["tme"] > 0.75, auc
    assert auc["fused"] > auc["tumour"] + 0.01, auc


def test_cli_scenario(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "c"), "--scenario", "null", "--patients", "12",
                 "--patches", "4", "--dim", "4"]) == 0
    assert json.loads((tmp_path / "c" / "cohort.json").read_text())["scenario"] == "null"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "d"), "--scenario", "nul"])


def test_a_cached_cohort_is_announced_by_its_final_folder_within_119_columns(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The summary names where the cohort ends up (not its staging folder), and a path too long
    for one line gets a line of its own."""
    from ksmodel.synthetic import ensure_synthetic  # noqa: PLC0415

    short = tmp_path / "synthetic" / "638a062109b6f66e"
    out = tmp_path / ("d" * max(1, 105 - len(str(short)))) / "synthetic" / "638a062109b6f66e"
    assert 81 <= len(str(out)) <= 117  # its own line fits, not after the header
    ensure_synthetic(out, SyntheticConfig(patients=20, patches=4, dim=8, seed=0))
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 119, max(lines, key=len)
    at = lines.index("synthetic cohort (histology_needed) ->")
    assert lines[at + 1] == f"  {out}"
    assert ".tmp-" not in "\n".join(lines)
