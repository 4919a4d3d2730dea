"""How far to trust a verdict: the report's verdicts measured on worlds whose answer is known.

For each scenario of the synthetic generator (README, "Synthetic scenarios") this runs R replicate
studies - the same world drawn with R different data seeds - and gives every comparison the
verdict the report gives it (``analysis.verdict.correlated_verdict``: Bayesian correlated t-test,
rho = 1/k, ROPE ``--rope``) on the per-fold scores of that replicate:

* ``null`` - the same configuration trained with two training seeds on the same folds (a fresh
  pair per replicate). The truth is "no difference": a "better"/"worse" verdict is a false
  positive (goal: <= 5%).
* ``histology_needed`` - the full model vs ``modality: genomics`` and vs the ``logreg_pca``
  baseline. The truth is "better" (planted): the share of "better" verdicts is the power.
* ``imbalance`` - on the shared trunk: the TME stream's own probe (its logits ``out_m`` -> AUC)
  under uniform training vs the same stream trained alone (the starvation the world plants), and
  each coordination rule vs uniform (the question; no truth is assumed).

Coverage: whether each replicate's 95% credible interval holds the true difference - 0 under
``null``; for a planted effect the mean difference over all replicates (the effect this model
and budget realise in the world; the world fixes its direction, not its size at a given model).

What runs: the library trainer (``ksmodel.trainer.FoldTrainer``, the step every study trial runs)
on the folds a study would make (``ksmodel.splits.make_splits``, ``repeats`` included) and the
platform's baselines (``ksmodel.baselines``), not ``python -m study.run``: a real study starts
Ray and an MLflow store per replicate (tens of seconds each on a shared 2-core machine), more
than the training of these small replicates, and the verdicts only need the per-fold scores.

    python benchmarks/calibration.py [--null 20] [--histology 10] [--imbalance 3] [--folds 5]
        [--repeats 1] [--rope 0.01] [--json out.json] [--markdown out.md] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.verdict import correlated_verdict  # noqa: E402

GRID = (6, 6)
SMALL_MODEL = dict(grid=GRID, dim=32, gene_hidden=64, heads=2, head_dim=16, offset_groups=2,
                   downsample=2, offset_kernel=3)
"""The model of every replicate: smoke.yaml's sizes (a few seconds per fold on one core)."""
COHORT = dict(patients=400, patches=(40, 80))
"""Replicate cohorts: the default cohort's patients and feature dimension, fewer patches (null:
200 patients and 5 epochs - its truth holds at any budget, and it needs the most replicates)."""
RULES = ("pcgrad", "cgcoord", "ogm_ge")


@dataclass(frozen=True)
class Arm:
    """One model configuration of a replicate: model/training overrides and the loss head."""

    name: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    head: str = "logits"  # what the task loss reads (ksmodel.step.HEADS)
    probes: tuple[str, ...] = ()  # per-stream logits also scored on the validation part


TRAIN = dict(epochs=8, batch_size=16, lr=1e-3)
NULL_TRAIN = dict(epochs=5)  # the null truth holds at any budget: a cheaper one
IMBALANCE_TRAIN = dict(epochs=10, batch_size=16, lr=3e-3, coord_target="shared_trunk")
TRUNK = dict(shared_projection=True)
SCENARIOS: dict[str, dict[str, Any]] = {
    "null": {"synthetic": {"patients": 200},
             "arms": [Arm("seed_a", train={**NULL_TRAIN, "seed": 0}),
                      Arm("seed_b", train={**NULL_TRAIN, "seed": 1})],
             "baselines": [],
             "comparisons": [("seed_a", "seed_b", "auc", "none")]},
    "histology_needed": {
        "synthetic": {}, "arms": [Arm("full"), Arm("genomics_only", {"modality": "genomics"})],
        "baselines": ["logreg_pca"],
        "comparisons": [("full", "genomics_only", "auc", "better"),
                        ("full", "logreg_pca", "auc", "better")]},
    "imbalance": {
        "synthetic": {"tme_shift": 0.0},
        "arms": [Arm("uniform", TRUNK, {**IMBALANCE_TRAIN, "coordination": "uniform"},
                     probes=("logits_t", "logits_m")),
                 Arm("tme_alone", TRUNK, {**IMBALANCE_TRAIN, "coordination": "uniform"},
                     head="logits_m", probes=("logits_m",)),
                 *(Arm(rule, TRUNK, {**IMBALANCE_TRAIN, "coordination": rule},
                       probes=("logits_t", "logits_m")) for rule in RULES)],
        "baselines": [],
        "comparisons": [("tme_alone", "uniform", "auc_logits_m", "better"),
                        *((rule, "uniform", "auc", "unknown") for rule in RULES),
                        *((rule, "uniform", "auc_logits_m", "unknown") for rule in RULES)]},
}


def _train_arm(arm: Arm, data: Any, folds: list[int], epochs: int | None = None,
               seed_base: int = 0) -> dict[str, list[float]]:
    """Per-fold validation AUC of the arm (and of its stream probes) at its last epoch. Its
    training seed is ``seed_base`` + the arm's own offset (``train["seed"]``, default 0)."""
    from ksmodel.config import TrainConfig
    from ksmodel.trainer import FoldTrainer, build_model_config, prepare_fold

    model_cfg = build_model_config(data.cohort, "diagnosis", **{**SMALL_MODEL, **arm.model})
    bags = data.bags if model_cfg.modality != "genomics" else None
    out: dict[str, list[float]] = {"auc": [], **{f"auc_{p}": [] for p in arm.probes}}
    for fold in folds:
        train_cfg = TrainConfig(task="diagnosis", **{
            **TRAIN, **arm.train, "seed": seed_base + arm.train.get("seed", 0),
            **({"epochs": epochs} if epochs else {})})
        trainer = FoldTrainer(prepare_fold(data.cohort, bags, data.splits, fold, "diagnosis"),
                              model_cfg, train_cfg, head=arm.head)
        while not trainer.done:
            trainer.fit_epoch()
        out["auc"].append(trainer.evaluate()[0]["auc"])
        for probe in arm.probes:
            out[f"auc_{probe}"].append(trainer.evaluate(head=probe)[0]["auc"])
    return out


def replicate(scenario: str, seed: int, *, folds: int, repeats: int, workdir: Path,
              cohort: dict[str, Any] | None = None, epochs: int | None = None) -> dict:
    """One replicate study: a cohort of ``scenario`` drawn with data seed ``seed``, its folds,
    every arm and baseline on them; per-fold scores by arm."""
    from ksmodel.baselines import run_baseline
    from ksmodel.data import load_run_data
    from ksmodel.synthetic import generate

    spec = SCENARIOS[scenario]
    root = workdir / f"{scenario}-{seed}"
    start = time.perf_counter()
    generate(root, scenario=scenario, seed=seed, quiet=True,
             **{**COHORT, **spec["synthetic"], **(cohort or {})})
    try:
        data = load_run_data(root, "diagnosis", grid=GRID, folds=folds, split_seed=seed,
                             repeats=repeats)
        # training seeds drawn afresh per replicate (2 x data seed + the arm's offset): arms of
        # one replicate pair on a seed, and no initialisation recurs across replicates
        scores = {arm.name: _train_arm(arm, data, data.folds, epochs, 2 * seed)
                  for arm in spec["arms"]}
        for name in spec["baselines"]:
            scores[name] = {"auc": [r.metrics["auc"] for r in run_baseline(
                name, data.cohort, data.splits, "diagnosis")]}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"scenario": scenario, "seed": seed, "folds": data.folds, "scores": scores,
            "seconds": round(time.perf_counter() - start, 1)}


def verdicts(rep: dict, scenario: str, k: int, rope: float) -> list[dict[str, Any]]:
    """The verdict of each comparison of the scenario on one replicate's per-fold scores."""
    out = []
    for a, b, key, truth in SCENARIOS[scenario]["comparisons"]:
        v = correlated_verdict(rep["scores"][a][key], rep["scores"][b][key], folds=k, rope=rope)
        out.append({"a": a, "b": b, "score": key, "truth": truth, "word": v.word,
                    "mean_diff": v.mean_diff, "ci": [v.ci_low, v.ci_high],
                    "p": [v.p_better, v.p_equivalent, v.p_worse]})
    return out


def summarise(results: list[dict], rope: float) -> list[dict[str, Any]]:
    """One row per (scenario, comparison): verdict counts, the share correct, coverage."""
    rows = []
    seen = {(r["scenario"], v["a"], v["b"], v["score"]) for r in results for v in r["verdicts"]}
    keys = [(scenario, a, b, score, truth) for scenario, spec in SCENARIOS.items()
            for a, b, score, truth in spec["comparisons"] if (scenario, a, b, score) in seen]
    for scenario, a, b, score, truth in keys:
        vs = [v for r in results if r["scenario"] == scenario for v in r["verdicts"]
              if (v["a"], v["b"], v["score"]) == (a, b, score)]
        words = [v["word"] for v in vs]
        diffs = np.array([v["mean_diff"] for v in vs])
        target = 0.0 if truth == "none" else float(diffs.mean())
        covered = np.mean([v["ci"][0] <= target <= v["ci"][1] for v in vs])
        if truth == "none":
            correct = np.mean([w in ("equivalent", "undecided") for w in words])
        elif truth == "better":
            correct = np.mean([w == "better" for w in words])
        else:
            correct = float("nan")
        rows.append({"scenario": scenario, "comparison": f"{a} vs {b}", "score": score,
                     "truth": truth, "replicates": len(vs),
                     **{w: int(words.count(w)) for w in ("better", "equivalent", "undecided",
                                                          "worse")},
                     "correct": float(correct), "coverage": float(covered),
                     "coverage_of": target, "mean_diff": float(diffs.mean()),
                     "sd_diff": float(diffs.std(ddof=1)) if len(diffs) > 1 else float("nan"),
                     "excludes_0": float(np.mean([not v["ci"][0] <= 0 <= v["ci"][1]
                                                  for v in vs]))})
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    """The README table: one line per comparison."""
    lines = ["| scenario | comparison (score) | truth | replicates | better / equiv. / undec. / "
             "worse | correct | 95% CI covers truth | mean diff (sd) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        truth = {"none": "0 (no difference)", "better": "a better (planted)",
                 "unknown": "unknown"}[r["truth"]]
        correct = ("–" if np.isnan(r["correct"]) else
                   f"{r['correct']:.0%}" + (" (FP " + f"{1 - r['correct']:.0%})"
                                            if r["truth"] == "none" else " (power)"))
        cover_of = "0" if r["truth"] == "none" else f"{r['coverage_of']:+.3f}"
        lines.append(f"| {r['scenario']} | {r['comparison']} ({r['score']}) | {truth} | "
                     f"{r['replicates']} | {r['better']} / {r['equivalent']} / "
                     f"{r['undecided']} / {r['worse']} | {correct} | {r['coverage']:.0%} "
                     f"(of {cover_of}) | {r['mean_diff']:+.3f} ({r['sd_diff']:.3f}) |")
    lines.append("")
    lines.append(f"ROPE {meta['rope']}, {meta['folds']} folds x {meta['repeats']} repeat(s) per "
                 f"replicate; {meta['minutes']:.0f} min on {meta['threads']} thread(s), load "
                 f"average {meta['load_start']} at the start, {meta['load_end']} at the end.")
    return "\n".join(lines) + "\n"


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/calibration.py", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--null", type=int, default=20, help="replicates of the null scenario (20)")
    p.add_argument("--histology", type=int, default=10,
                   help="replicates of histology_needed (10)")
    p.add_argument("--imbalance", type=int, default=3, help="replicates of imbalance (3)")
    p.add_argument("--folds", type=int, default=5, help="k (5)")
    p.add_argument("--repeats", type=int, default=1, help="repeats of the k folds (1)")
    p.add_argument("--rope", type=float, default=0.01, help="ROPE in AUC (0.01)")
    p.add_argument("--first-seed", type=int, default=1, help="data seed of replicate 0 (1)")
    p.add_argument("--patients", type=int,
                   help=f"patients per replicate cohort (default {COHORT['patients']}; null 200)")
    p.add_argument("--epochs", type=int, help="override every arm's epochs (a quick look)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    p.add_argument("--json", type=Path, help="write every replicate's scores and verdicts here")
    p.add_argument("--markdown", type=Path, help="write the summary table here")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    counts = {"null": args.null, "histology_needed": args.histology,
              "imbalance": args.imbalance}
    start, load_start = time.perf_counter(), _load()
    results: list[dict] = []
    meta = {"rope": args.rope, "folds": args.folds, "repeats": args.repeats,
            "threads": args.threads, "load_start": load_start,
            "cohort": {**COHORT, **({"patients": args.patients} if args.patients else {})},
            "scenario_cohorts": {k: v["synthetic"] for k, v in SCENARIOS.items()},
            "epochs_override": args.epochs, "null_train": NULL_TRAIN,
            "model": SMALL_MODEL, "train": TRAIN, "imbalance_train": IMBALANCE_TRAIN}
    with tempfile.TemporaryDirectory(prefix="ks-calibration-") as tmp:
        for scenario, n in counts.items():
            for i in range(n):
                rep = replicate(scenario, args.first_seed + i, folds=args.folds,
                                repeats=args.repeats, workdir=Path(tmp), epochs=args.epochs,
                                cohort={"patients": args.patients} if args.patients else None)
                rep["verdicts"] = verdicts(rep, scenario, args.folds, args.rope)
                results.append(rep)
                said = "; ".join(f"{v['a']} vs {v['b']} ({v['score']}): {v['word']} "
                                 f"{v['mean_diff']:+.3f}" for v in rep["verdicts"])
                print(f"{scenario} {i + 1}/{n} (seed {rep['seed']}, {rep['seconds']:.0f} s): "
                      f"{said}", flush=True)
                if args.json:
                    _write_json(args.json, meta, results, start)
    meta.update(minutes=(time.perf_counter() - start) / 60, load_end=_load())
    rows = summarise(results, args.rope)
    table = markdown(rows, meta)
    print("\n" + table)
    if args.json:
        _write_json(args.json, meta, results, start, rows)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(table)
    return 0


def _write_json(path: Path, meta: dict, results: list[dict], start: float,
                rows: list[dict] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"meta": {**meta, "seconds_so_far": round(time.perf_counter() - start, 1)},
            "replicates": results, **({"summary": rows} if rows is not None else {})}
    path.write_text(json.dumps(body, indent=1, default=float))


if __name__ == "__main__":
    sys.exit(main())
