"""Does the synthetic ``conflict`` knob plant gradient conflict on the shared trunk? Measured.

For each conflict level and training seed: a synthetic cohort at that level (everything else
equal: same seed, so same patients, labels, expression and patches apart from the planted
signature), one fold of KS-Fusion with ``shared_projection`` trained by the trainer's own step
(``FoldTrainer`` -> ``train_step``) on ``coord_target: shared_trunk`` with each ``--rules`` rule,
and every step's telemetry recorded: ``layer_cos`` (cosine of the whole-layer gradients reaching
the shared projection through each stream), the per-unit cosines (pooled for their 1-99% range),
``rel_change`` (|g' - g| / |g| of the coordinated update). The uniform run also records what
PCGrad and CG-Coord *would* change on its own gradients (same steps, nothing applied).

    python benchmarks/conflict.py [--kappas 0 0.5 1] [--seeds 0 1 2] [--epochs 10]
                                  [--patients 300] [--rules uniform pcgrad cgcoord]
                                  [--json out.json] [--figure out.png] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROBES = ("pcgrad", "cgcoord")


def measure(kappa: float, seed: int, *, epochs: int = 10, patients: int = 300,
            patches: tuple[int, int] = (40, 80), grid: tuple[int, int] = (8, 8),
            rule: str = "uniform", cache: Path | None = None, fold: int = 0,
            knob: str = "conflict") -> dict[str, Any]:
    """Train one fold at conflict ``kappa`` with ``rule`` on the shared trunk; per-step telemetry
    (and, for ``uniform``, what PCGrad / CG-Coord would change) plus the pooled unit cosines."""
    from ksmodel.config import SyntheticConfig, TrainConfig
    from ksmodel.data import load_run_data
    from ksmodel.synthetic import ensure_synthetic
    from ksmodel.train import FoldTrainer, build_model_config, prepare_fold

    # the world the knob was measured in (README, "Gradient coordination"): histology adds
    # nothing beyond the genes there, so the knob is the only thing that moves
    params = SyntheticConfig(scenario="null", patients=patients, patches=patches, seed=0,
                             **{knob: kappa})
    cache = Path(cache or tempfile.gettempdir()) / "ks-conflict-knob"
    root = ensure_synthetic(cache / params.key(), params, quiet=True)
    data = load_run_data(root, "diagnosis", grid=grid)
    model_cfg = build_model_config(data.cohort, "diagnosis", grid=grid, shared_projection=True)
    train_cfg = TrainConfig(epochs=epochs, batch_size=32, lam=0.1, coordination=rule,
                            coord_target="shared_trunk", seed=seed)
    trainer = FoldTrainer(prepare_fold(data.cohort, data.bags, data.splits, fold, "diagnosis"),
                          model_cfg, train_cfg)
    recorder = _Recorder(trainer.coordinator, probe=rule == "uniform")
    trainer.coordinator = recorder  # the trainer's step calls it like its own coordinator
    start = time.perf_counter()
    metrics = {}
    while not trainer.done:
        metrics = trainer.fit_epoch().metrics
    steps, cos = recorder.steps, np.concatenate(recorder.unit_cos)
    layer = np.array([s["layer_cos"] for s in steps])
    result = {"kappa": kappa, "seed": seed, "rule": rule, "epochs": epochs, "steps": len(steps),
              "seconds": time.perf_counter() - start, "val_auc": metrics.get("auc"),
              "layer_cos_median": float(np.median(layer)), "layer_cos_mean": float(layer.mean()),
              "unit_cos_p01": float(np.percentile(cos, 1)),
              "unit_cos_p99": float(np.percentile(cos, 99)),
              "unit_conflict_rate": float((cos < 0).mean()),
              "rel_change_mean": float(np.mean([s["rel_change"] for s in steps])),
              "layer_cos_steps": layer.tolist()}
    for name in recorder.probes:
        result[f"would_{name}_rel_change_mean"] = float(np.mean([s[f"would_{name}"]
                                                                 for s in steps]))
    result["unit_cos_hist"] = np.histogram(cos, bins=40, range=(-1, 1))[0].tolist()
    return result


class _Recorder:
    """The trainer's coordinator, recording every step (and probing other rules' effect)."""

    def __init__(self, inner: Any, probe: bool) -> None:
        from ksmodel.coordination.coordinator import Coordinator

        self.inner = inner
        self.probes = {p: Coordinator(p, {}, "shared_trunk") for p in PROBES} if probe else {}
        self.steps: list[dict[str, float]] = []
        self.unit_cos: list[np.ndarray] = []
        self._conf: tuple[Any, Any] = (None, None)

    def step(self, model: Any, out: Any, targets: Any, task: Any) -> Any:
        import torch

        self._conf = (task.confidence(out.logits_t, targets),
                      task.confidence(out.logits_m, targets))
        g_t, g_m = out.shared.stream_gradients(("tumour", "tme"))
        row = dict(self.inner.step(model, out, targets, task))
        for name, probe in self.probes.items():  # the same gradients, nothing applied
            row[f"would_{name}"] = probe.coordinate(g_t, g_m, *self._conf)[1]["rel_change"]
        self.steps.append(row)
        self.unit_cos.append(torch.nn.functional.cosine_similarity(g_t, g_m, dim=1).numpy())
        return {k: v for k, v in row.items() if not k.startswith("would_")}


def figure(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uni = [r for r in results if r["rule"] == "uniform"]
    kappas = sorted({r["kappa"] for r in uni})
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for seed in sorted({r["seed"] for r in uni}):
        rs = sorted((r for r in uni if r["seed"] == seed), key=lambda r: r["kappa"])
        a.plot([r["kappa"] for r in rs], [r["layer_cos_mean"] for r in rs], "o-", alpha=0.6,
               label=f"seed {seed}")
    means = [np.mean([r["layer_cos_mean"] for r in uni if r["kappa"] == k]) for k in kappas]
    a.plot(kappas, means, "k-", lw=3, label="mean over seeds")
    a.set_xlabel("synthetic conflict")
    a.set_ylabel("layer_cos, mean over the training's steps")
    a.set_title("whole-layer cosine of the two streams' gradients on P")
    a.legend()
    edges = np.linspace(-1, 1, 41)
    centres = (edges[:-1] + edges[1:]) / 2
    for k in kappas:
        hist = np.sum([r["unit_cos_hist"] for r in uni if r["kappa"] == k], axis=0)
        b.plot(centres, hist / hist.sum(), label=f"conflict {k:g}")
    b.set_xlabel("per-unit cosine cos(g_t[j], g_m[j])")
    b.set_ylabel("share of (unit, step)")
    b.set_title("per-unit cosines on the shared projection")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kappas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--patients", type=int, default=300)
    ap.add_argument("--rules", nargs="+", default=["uniform"])
    ap.add_argument("--knob", default="conflict", choices=["conflict", "tme_shift"],
                    help="the synthetic parameter the levels set (default conflict)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None, help="where the cohorts are generated")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--figure", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    results = []
    for rule in args.rules:
        for seed in args.seeds:
            for kappa in args.kappas:
                r = measure(kappa, seed, epochs=args.epochs, patients=args.patients, rule=rule,
                            cache=args.cache, knob=args.knob)
                results.append(r)
                extra = "".join(f"  would {p} {r[f'would_{p}_rel_change_mean']:.3f}"
                                for p in PROBES if f"would_{p}_rel_change_mean" in r)
                print(f"{rule:<8} seed {seed} conflict {kappa:<4g} layer_cos median "
                      f"{r['layer_cos_median']:.3f} mean {r['layer_cos_mean']:.3f}  unit cos "
                      f"1-99% [{r['unit_cos_p01']:.2f}, {r['unit_cos_p99']:.2f}]  rel_change "
                      f"{r['rel_change_mean']:.3f}{extra}  auc {r['val_auc']:.3f}  "
                      f"({r['seconds']:.0f} s)", flush=True)
    for rule in args.rules:
        for kappa in args.kappas:
            rs = [r for r in results if r["rule"] == rule and r["kappa"] == kappa]
            print(f"{rule:<8} conflict {kappa:<4g} mean over {len(rs)} seeds: layer_cos mean "
                  f"{np.mean([r['layer_cos_mean'] for r in rs]):.3f} (median "
                  f"{np.mean([r['layer_cos_median'] for r in rs]):.3f}), rel_change "
                  f"{np.mean([r['rel_change_mean'] for r in rs]):.3f}, unit cos 1% "
                  f"{np.mean([r['unit_cos_p01'] for r in rs]):.2f} 99% "
                  f"{np.mean([r['unit_cos_p99'] for r in rs]):.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.figure:
        figure(results, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
