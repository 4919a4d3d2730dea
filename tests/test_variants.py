"""Named variants: the study-file keys, the variant x seed grid, the record (ks.variant /
ks.reference), the analysis grouped by variant with its claims table, and a known answer on a
planted synthetic cohort through the real pipeline (study.run, then analysis.compare)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from analysis import claims, compare
from analysis.load import load_study as load_recorded
from study.launch import _modalities, parent_tags
from study.record import Tags
from study.search import make_search
from study.space import SpaceError, dump_study, load_study
from study.variants import VARIANT_KEY, expand
from tests.analysis_fixtures import log_study
from tests.study_helpers import ROOT, T, run_study, runs, study_env

PAPER = ROOT / "search_spaces" / "paper_ablations.yaml"
PAPER_VARIANTS = {"full": {}, "no_decomposition": {"decompose": False},
                  "no_consistency": {"lam": 0}, "no_teacher": {"teacher": False},
                  "no_coordination": {"coordination": "uniform"},
                  "genomics_only": {"modality": "genomics"},
                  "histology_only": {"modality": "histology"}}


# --- the study file ------------------------------------------------------------------------

def test_paper_ablations_is_the_paper_table_by_three_seeds() -> None:
    cfg = load_study(PAPER)
    assert cfg.variants == PAPER_VARIANTS and cfg.reference == "full"
    assert cfg.seeds == (0, 1, 2) and cfg.folds == 5 and cfg.cohort == "synthetic"
    assert cfg.sampler == "grid" and cfg.scheduler.type == "none"
    assert cfg.grid_size() == 21
    assert _modalities(cfg) == {"both", "genomics", "histology"}  # the bags are loaded
    assert parent_tags(cfg, Path("/x"))[Tags.REFERENCE] == "full"


def test_variant_grid_is_variant_by_seed() -> None:
    from ray import tune

    cfg = load_study(PAPER)
    search_alg, space, num_samples = make_search(cfg)
    assert search_alg is None and num_samples == 1
    assert set(space) == {VARIANT_KEY, "seed"}
    assert space["seed"] == tune.grid_search([0, 1, 2])
    assert space[VARIANT_KEY] == tune.grid_search(list(PAPER_VARIANTS))


def test_trial_config_expands_to_the_variant_overrides() -> None:
    params, name = expand({VARIANT_KEY: "no_teacher", "seed": 2}, PAPER_VARIANTS)
    assert name == "no_teacher" and params == {"teacher": False, "seed": 2}
    assert expand({"alpha": 0.3}, PAPER_VARIANTS) == ({"alpha": 0.3}, None)
    with pytest.raises(KeyError, match="not one of the study's variants"):
        expand({VARIANT_KEY: "nope"}, PAPER_VARIANTS)


BASE = {"name": "v", "task": "diagnosis", "fixed": {"lam": 0.1},
        "variants": {"full": {}, "no_teacher": {"teacher": False}}, "reference": "full"}


def _load(tmp_path: Path, **changes: object):
    raw = {**BASE, **changes}
    raw = {k: v for k, v in raw.items() if v is not None}
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, load_study(path)


def test_searched_parameters_cross_the_variants_on_a_grid(tmp_path: Path) -> None:
    from ray import tune

    _, cfg = _load(tmp_path, seeds=[0, 1], search={
        "coordination": {"type": "categorical", "values": ["uniform", "cgcoord"]}})
    assert cfg.grid_size() == 2 * 2 * 2
    _, space, _ = make_search(cfg)
    assert space["coordination"] == tune.grid_search(["uniform", "cgcoord"])
    saved = tmp_path / "config.yaml"  # --resume reads the saved config back
    dump_study(cfg, saved)
    reread = load_study(saved)
    assert reread.variants == cfg.variants and reread.reference == "full"
    assert reread.grid_size() == 8


def test_study_without_variants_is_unchanged(tmp_path: Path) -> None:
    cfg = load_study(ROOT / "search_spaces" / "ablation.yaml")
    assert cfg.variants == {} and cfg.reference == ""
    assert "variants" not in cfg.to_yaml_dict() and "reference" not in cfg.to_yaml_dict()
    _, space, _ = make_search(cfg)
    assert set(space) == {"coordination", "seed"}
    assert Tags.REFERENCE not in parent_tags(cfg, Path("/x"))


BAD = {
    "unknown parameter": ({"variants": {"full": {}, "x": {"gamma": 1}}}, "variants.x.gamma"),
    "value the model rejects": ({"variants": {"full": {}, "x": {"lam": -1}}}, "variants.x.lam"),
    "unknown modality": ({"variants": {"full": {}, "x": {"modality": "rna"}}},
                         "variants.x.modality"),
    "unknown rule": ({"variants": {"full": {}, "x": {"coordination": "gradnorm"}}},
                     "variants.x.coordination"),
    "seed in a variant": ({"variants": {"full": {}, "x": {"seed": 3}}}, "variants.x.seed"),
    "epochs in a variant": ({"variants": {"full": {}, "x": {"epochs": 3}}}, "variants.x.epochs"),
    "grid in a variant": ({"variants": {"full": {}, "x": {"grid": [4, 4]}}}, "variants.x.grid"),
    "not a mapping": ({"variants": {"full": {}, "x": "teacher=false"}}, "variants.x"),
    "bad name": ({"variants": {"full": {}, "no teacher": {"teacher": False}}},
                 "variants.no teacher"),
    "one variant": ({"variants": {"full": {}}}, "variants"),
    "twin variants": ({"variants": {"full": {}, "same": {"lam": 0.1}}}, "variants.same"),
    "twin by default": ({"variants": {"full": {}, "x": {"coordination": "cgcoord"}}},
                        "variants.x"),
    "no reference": ({"reference": None}, "reference"),
    "reference not a variant": ({"reference": "fulll"}, "reference"),
    "reference without variants": ({"variants": None, "search": {
        "alpha": {"type": "float", "low": 0, "high": 1}}}, "reference"),
    "optuna sampler": ({"sampler": "tpe"}, "sampler"),
    "asha": ({"scheduler": "asha"}, "scheduler"),
    "fixed seed": ({"fixed": {"seed": 1}}, "fixed.seed"),
    "searched seed": ({"search": {"seed": {"type": "categorical", "values": [0, 1]}}},
                      "search.seed"),
    "variant sets a searched parameter": (
        {"search": {"alpha": {"type": "categorical", "values": [0.2, 0.8]}},
         "variants": {"full": {}, "x": {"alpha": 0.5}}}, "variants.x.alpha"),
    "searched float": ({"search": {"alpha": {"type": "float", "low": 0, "high": 1}}},
                       "search.alpha"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_variants_name_file_and_key(tmp_path: Path, case: str) -> None:
    patch, key = BAD[case]
    with pytest.raises(SpaceError) as err:
        _load(tmp_path, **patch)
    assert str(tmp_path / "v.yaml") in str(err.value)
    assert f"'{key}'" in str(err.value), str(err.value)
    assert "DESIGN" not in str(err.value)


def test_override_reaches_a_variant(tmp_path: Path) -> None:
    path, _ = _load(tmp_path)
    cfg = load_study(path, {"variants.no_lam": {"lam": 0}, "lam": 0.3})
    assert cfg.variants["no_lam"] == {"lam": 0} and cfg.fixed["lam"] == 0.3
    with pytest.raises(SpaceError, match="'reference'"):
        load_study(path, {"reference": "nope"})


# --- the analysis of a variants study --------------------------------------------------------

SEEDS, FOLDS = (0, 1, 2), range(5)
SHIFT = {"full": 0.0, "histology_only": -0.1, "no_teacher": 0.0}


def _value(variant: str, seed: int, fold: int, setting: float = 0.0) -> float:
    wobble = ((seed * 5 + fold) * 7919 % 13) / 1000  # deterministic, differs per (seed, fold)
    own = 0.002 * ((seed + fold) % 3 - 1) if variant == "no_teacher" else 0.0  # no effect
    return 0.8 + setting + SHIFT[variant] + wobble + own


def _rows(method: str = "cgcoord", settings: tuple[str, ...] = ()) -> list[dict]:
    rows = []
    for v in SHIFT:
        for s in SEEDS:
            for i, c in enumerate(settings or ("",)):
                rows.append({"method": method, "seed": s,
                             "folds": {f: _value(v, s, f, 0.05 * i) for f in FOLDS},
                             "tags": {Tags.VARIANT: v},
                             "params": {"coordination": c} if c else {}})
    return rows


def test_variants_study_groups_by_variant_and_reports_claims(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "variants", _rows(), parent_tags={Tags.SAMPLER: "grid",
                                                     Tags.REFERENCE: "full"})
    study = load_recorded("variants", uri)
    assert set(study.folds["variant"]) == set(SHIFT)
    assert (study.folds["arm"] == study.folds["variant"]).all()  # every run is method cgcoord
    assert set(study.trials["setting"]) == {""}
    r = compare.run_compare("variants", uri, tmp_path / "rep", n_boot=500,
                            log_to_mlflow=False, progress=lambda _m: None)
    assert r.reference == "full"  # from the parent's ks.reference tag
    t = r.claims.set_index("variant")
    assert set(t.index) == {"histology_only", "no_teacher"}
    assert (t["n_pairs"] == 15).all()
    assert t.loc["histology_only", "verdict"] == claims.SUPPORTED
    assert t.loc["histology_only", "mean_diff"] == pytest.approx(0.1)
    assert t.loc["no_teacher", "verdict"] != claims.SUPPORTED
    md = (r.out_dir / "report.md").read_text()
    assert "## Claims" in md and "| adding genomics raises AUC | histology_only | 15 |" in md
    # the paired comparison is against the reference, not a coordination rule
    assert set(r.comparison["method"]) == {"full"}
    assert "method 'cgcoord' not in the study" not in md


def test_grid_searched_variants_pair_within_each_setting(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log_study(uri, "crossed", _rows(settings=("uniform", "cgcoord")), searched="coordination",
              parent_tags={Tags.SAMPLER: "grid", Tags.REFERENCE: "full"})
    study = load_recorded("crossed", uri)
    assert set(study.folds["arm"]) == {f"{v} coordination={c}" for v in SHIFT
                                       for c in ("uniform", "cgcoord")}
    c = claims.claims_table(study.folds, "auc", "grade", "full", by="variant", n_boot=200)
    t = c.table
    assert len(t) == 4 and set(t["setting"]) == {"coordination=uniform",
                                                 "coordination=cgcoord"}
    assert (t["n_pairs"] == 15).all()  # a variant pairs with the reference of its setting
    hist = t[t["variant"] == "histology_only"]
    assert hist["mean_diff"].to_numpy() == pytest.approx([0.1, 0.1])
    assert (hist["verdict"] == claims.SUPPORTED).all()
    r = compare.run_compare("crossed", uri, tmp_path / "rep", n_boot=200, log_to_mlflow=False,
                            progress=lambda _m: None)
    md = (r.out_dir / "report.md").read_text()
    assert "| setting | claim |" in md and "at coordination=uniform" in md


def test_coordination_study_still_groups_by_method(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rows = [{"method": m, "seed": s, "folds": {f: 0.8 + 0.01 * i + f / 100 for f in FOLDS}}
            for i, m in enumerate(("uniform", "pcgrad", "cgcoord")) for s in SEEDS]
    log_study(uri, "ablation", rows, parent_tags={Tags.SAMPLER: "grid"})
    study = load_recorded("ablation", uri)
    assert "variant" not in study.folds and "setting" not in study.trials
    assert set(study.folds["arm"]) == {"uniform", "pcgrad", "cgcoord"}
    r = compare.run_compare("ablation", uri, tmp_path / "rep", n_boot=200, log_to_mlflow=False,
                            progress=lambda _m: None)
    assert set(r.comparison["method"]) == {"cgcoord"} and r.claims.empty
    # its variants are the rules: a claims table against a chosen rule on request
    r = compare.run_compare("ablation", uri, tmp_path / "rep2", reference="cgcoord", n_boot=200,
                            log_to_mlflow=False, progress=lambda _m: None)
    t = r.claims.set_index("variant")
    assert set(t.index) == {"uniform", "pcgrad"} and (t["n_pairs"] == 15).all()
    assert t.loc["uniform", "claim"] == "cgcoord raises AUC over uniform"
    assert t.loc["uniform", "mean_diff"] == pytest.approx(0.02)


# --- the known answer, through the real pipeline ---------------------------------------------

#: A planted cohort where the diagnosis lives in the tumour genes: removing genomics
#: (histology_only) must lose clearly; with no planted gradient conflict (conflict 0) gradient
#: coordination has nothing to resolve, so no_coordination must not be "supported".
KNOWN = {"synthetic": {"patients": 200, "patches": 32, "dim": 32, "seed": 0, "conflict": 0.0},
         "seeds": [0, 1], "epochs": 4,
         "fixed": {"grid": [6, 6], "dim": 32, "gene_hidden": 64, "heads": 2, "head_dim": 16,
                   "offset_groups": 2, "downsample": 2, "offset_kernel": 3, "batch_size": 16,
                   "lr": 2.0e-3, "lam": 0.1, "alpha": 0.5, "coordination": "cgcoord"},
         "variants": {"full": {}, "histology_only": {"modality": "histology"},
                      "no_coordination": {"coordination": "uniform"}}}


@pytest.mark.slow
def test_known_answer_on_a_planted_cohort(tmp_path: Path) -> None:
    raw = yaml.safe_load(PAPER.read_text())  # the shipped file, made small
    raw.update(name="known_answer", **KNOWN)
    space = tmp_path / "known_answer.yaml"
    space.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "study"
    start = time.perf_counter()
    proc = run_study(out, space=space, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parents, children = runs(out, "known_answer")
    assert len(children) == 6 and (children[T.STATUS] == "COMPLETED").all()
    assert sorted(children[f"tags.{Tags.VARIANT}"]) == sorted(list(KNOWN["variants"]) * 2)
    assert parents[f"tags.{Tags.REFERENCE}"].iloc[0] == "full"
    hist = children[children[f"tags.{Tags.VARIANT}"] == "histology_only"]
    assert (hist["params.modality"] == "histology").all()  # the overrides reached the trainer
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    want = {**KNOWN["fixed"], **KNOWN["variants"][best["variant"]]}
    assert want.items() <= best["params"].items()  # the best variant's own parameters

    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "analysis.compare", "--experiment",
                           "known_answer", "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}",
                           "--out", str(report), "--n-boot", "2000"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=study_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"known answer: study + report in {time.perf_counter() - start:.0f} s")
    table = pd.read_csv(report / "claims.csv").set_index("variant")
    print(table[["n_pairs", "mean_diff", "ci_low", "ci_high", "wilcoxon_p", "holm_p",
                 "n_wins", "verdict"]].to_string())
    assert set(table.index) == {"histology_only", "no_coordination"}
    assert (table["n_pairs"] == 10).all()  # 2 seeds x 5 folds
    assert table.loc["histology_only", "verdict"] == claims.SUPPORTED
    assert table.loc["histology_only", "claim"] == "adding genomics raises AUC"
    assert table.loc["no_coordination", "verdict"] != claims.SUPPORTED
    md = (report / "report.md").read_text()
    assert "## Claims" in md and "reference variant **full**" in md


def test_variants_and_nested_evaluation_are_refused_together(tmp_path: Path) -> None:
    path = tmp_path / "vn.yaml"
    path.write_text("name: vn\ntask: diagnosis\nevaluation: nested\nvariants:\n  full: {}\n"
                    "  no_teacher: {teacher: false}\nreference: full\n")
    with pytest.raises(SpaceError, match="'evaluation'.*variants"):
        load_study(path)
