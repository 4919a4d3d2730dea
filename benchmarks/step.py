"""Time one full KS-Fusion training step per coordination rule.

One step = ``ksmodel.step.train_step``, the trainer's own step: forward, diagnosis
cross-entropy + lam * consistency, backward, subspace confidences and coordination of the
gradient, AdamW step (profiled: each phase synchronised and timed). Configurations: the
original study (``ModelConfig.paper()``: 2,500 tokens on 50x50, D = 1024, 59/361 genes, d = 128,
8 heads x 64, 8 offset groups, r = 4, kernel 6, RPB MLP 32 x 2) and the default CPU config, at
each ``--batch``.

Each (config, batch) runs in its own subprocess so its peak RSS (``ru_maxrss``) is its own.
``--oracle`` also times the paper config with the straightforward reference attention of
tests/reference_attention.py swapped in (same weights), for the speed/memory ratio.

``--target shared_trunk`` builds the model with ``shared_projection`` and coordinates the shared
patch projection's units (the per-stream gradients cost one extra matrix product; the
whole-layer rules one 2 x 2 solve on the CPU); ``coord %`` is then that target's share of the
step. The default is ``classifier_rows``, the published target.

    python benchmarks/step.py [--quick] [--json out.json] [--batch 2 8] [--rules ...]
                              [--target classifier_rows|shared_trunk]
                              [--oracle [--oracle-batch 2 8]] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ksmodel.coordination import RULES  # noqa: E402

REFERENCE = {2: {"step_s": (8.5, 14.2), "gflop": 100.7, "rss_gb": 5.6},
             8: {"step_s": (75.7, 75.7), "gflop": 402.8, "rss_gb": 20.1}}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB


def _rss_gb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def _mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return float("inf")


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:
        return float("nan")


def matmul_gflops(threads: int, n: int = 2048, reps: int = 5) -> float:
    """The machine's fp32 matrix-product rate (median of ``reps`` n x n products)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def worker(spec: dict) -> dict:
    """Build the model for one (config, batch) and time every rule. Runs in a subprocess."""
    import torch

    from benchmarks.common import diagnosis_objective, random_batch
    from ksmodel.config import ModelConfig
    from ksmodel.coordination.coordinator import make_coordinator
    from ksmodel.model import KSFusion
    from ksmodel.step import compute_gradients, train_step

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    target = spec.get("target", "classifier_rows")
    shared = {"shared_projection": target == "shared_trunk"}
    cfg = ModelConfig.paper(**shared) if spec["config"] == "paper" else ModelConfig(**shared)
    b = spec["batch"]
    model = KSFusion(cfg).to(device)
    if spec["oracle"]:
        from tests.reference_attention import ReferenceDeformableAttention

        for stream in model.streams.values():
            ref = ReferenceDeformableAttention(
                dim=cfg.dim, grid=cfg.grid, heads=cfg.heads, head_dim=cfg.head_dim,
                groups=cfg.offset_groups, downsample=cfg.downsample, kernel=cfg.offset_kernel,
                offset_scale=cfg.offset_scale, rpb_hidden=cfg.rpb_hidden,
                rpb_depth=cfg.rpb_depth).to(device)
            ref.load_state_dict(stream.attention.state_dict())
            stream.attention = ref
    batch = random_batch(cfg, b, device)
    objective = diagnosis_objective(cfg, batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    model.train()
    rss_model = _rss_gb()

    def step(coord) -> tuple[float, float, float, float]:
        """The trainer's own step, profiled: (wall s, coordination wall s, process CPU s,
        coordination process CPU s). CPU seconds are less inflated than wall time when other
        processes compete for the cores."""
        timed = _CpuTimed(coord)
        cpu0 = time.process_time()
        result = train_step(model, batch, objective, opt, timed, profile=True)
        return (sum(result.seconds.values()), result.seconds["coordinate"],
                time.process_time() - cpu0, timed.cpu_s)

    def coordination_alone(coord, repeats: int) -> float:
        """The coordination phase by itself, ``repeats`` times on one step's gradients (put back
        before each): the fastest time, the least disturbed by other processes."""
        out = compute_gradients(model, batch, objective, opt).out
        saved = [(p, p.grad.clone()) for p in model.parameters() if p.grad is not None]
        times = []
        for _ in range(repeats):
            for p, g in saved:
                p.grad.copy_(g)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            coord.step(model, out, batch.targets, objective.task)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        return min(times)

    flop = None
    if spec["flops"]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            step(make_coordinator("uniform", target=target))
        flop = counter.get_total_flops()
    rules = {}
    load0 = _loadavg()
    mm_rate = matmul_gflops(spec["threads"])  # the same conditions as this worker's steps
    for rule in spec["rules"]:
        coord = make_coordinator(rule, target=target)
        for _ in range(spec["warmup"]):
            step(coord)
        steps, coords, cpus, coord_cpus = zip(*(step(coord) for _ in range(spec["repeats"])),
                                              strict=True)
        isolated = coordination_alone(coord, spec["coord_repeats"])
        med = statistics.median(steps)
        rules[rule] = {"step_s": med, "step_min_s": min(steps), "step_all_s": list(steps),
                       "cpu_s": statistics.median(cpus),
                       "coord_s": statistics.median(coords),
                       "coord_share": statistics.median(c / s for c, s in zip(coords, steps,
                                                                               strict=True)),
                       "coord_cpu_s": statistics.median(coord_cpus),
                       "coord_cpu_share": statistics.median(
                           c / s for c, s in zip(coord_cpus, cpus, strict=True)),
                       "coord_alone_min_s": isolated,
                       "coord_min_share": isolated / min(steps)}
    result = {**spec, "rules": rules, "flop": flop, "rss_after_build_gb": rss_model,
              "matmul_gflops": mm_rate,
              "peak_rss_gb": _peak_rss_gb(), "loadavg": [load0, _loadavg()],
              "cpu_time_s": time.process_time()}
    if device.type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return result


class _CpuTimed:
    """A coordinator that also counts the process CPU seconds its step takes."""

    def __init__(self, inner) -> None:
        self.inner, self.cpu_s = inner, 0.0

    def step(self, *args, **kwargs):
        cpu0 = time.process_time()
        try:
            return self.inner.step(*args, **kwargs)
        finally:
            self.cpu_s += time.process_time() - cpu0


def run_worker(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS":
                                                              str(spec["threads"])})
    if proc.returncode != 0:
        return {**spec, "error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(results: list[dict], peak_gflops: float) -> None:
    targets = sorted({r.get("target", "classifier_rows") for r in results})
    print(f"coordination target: {', '.join(targets)}")
    head = (f"{'config':<8}{'attn':<7}{'B':>3} {'rule':<12}{'step s':>8}{'min s':>7}"
            f"{'cpu s':>7}{'coord %':>8}{'c cpu%':>7}{'c min%':>7}"
            f"{'GFLOP':>8}{'GFLOP/s':>9}{'% mm':>6}{'peak RSS GB':>12}  vs reference")
    print(head)
    print("-" * len(head))
    for r in results:
        name = "oracle" if r["oracle"] else "fast"
        if "error" in r:
            print(f"{r['config']:<8}{name:<7}{r['batch']:>3} ERROR {r['error'].splitlines()[-1]}")
            continue
        gflop = (r["flop"] or 0) / 1e9
        for rule, m in r["rules"].items():
            rate = gflop / m["step_s"] if gflop else float("nan")
            ref = REFERENCE.get(r["batch"]) if r["config"] == "paper" else None
            vs = ""
            if ref:
                lo, hi = ref["step_s"]
                vs = (f"{lo / m['step_s']:.1f}-{hi / m['step_s']:.1f}x faster, "
                      f"RSS {r['peak_rss_gb'] / ref['rss_gb']:.2f}x")
            print(f"{r['config']:<8}{name:<7}{r['batch']:>3} {rule:<12}{m['step_s']:>8.3f}"
                  f"{m['step_min_s']:>7.2f}{m['cpu_s']:>7.2f}{100 * m['coord_share']:>8.2f}"
                  f"{100 * m.get('coord_cpu_share', float('nan')):>7.2f}"
                  f"{100 * m.get('coord_min_share', float('nan')):>7.2f}"
                  f"{gflop:>8.1f}{rate:>9.1f}"
                  f"{100 * rate / r['matmul_gflops']:>6.1f}{r['peak_rss_gb']:>12.2f}  {vs}")
    rates = ", ".join(f"{r['matmul_gflops']:.0f}" for r in results if "matmul_gflops" in r)
    print(f"machine fp32 matmul (2048^2, same threads): {peak_gflops:.1f} GFLOP/s at start; "
          f"per run: {rates}. % mm = achieved / that run's rate.\n"
          "step s = median wall, min s = fastest, cpu s = process CPU seconds per step; coord % "
          "= coordination's share of the step's wall time (median over steps), c cpu% = of its "
          "process CPU time, c min% = fastest of --coord-repeats runs of the coordination alone "
          "/ fastest step (the least disturbed by other processes)")
    fast = {r["batch"]: r for r in results
            if r["config"] == "paper" and not r["oracle"] and "error" not in r}
    for r in results:
        if r["oracle"] and "error" not in r and r["batch"] in fast:
            f = fast[r["batch"]]
            f_step = f["rules"].get("uniform", next(iter(f["rules"].values())))["step_s"]
            ratio = r["rules"]["uniform"]["step_s"] / f_step
            print(f"oracle / fast at B={r['batch']}: step {ratio:.1f}x, "
                  f"peak RSS {r['peak_rss_gb'] / f['peak_rss_gb']:.1f}x")
    loads = [x for r in results if "loadavg" in r for x in r["loadavg"]]
    if loads:
        print(f"1-min load average during the runs: {min(loads):.2f}-{max(loads):.2f} "
              f"(> threads means other processes competed for the cores)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (2 8)")
    ap.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    ap.add_argument("--configs", nargs="+", default=["paper", "default"],
                    choices=["paper", "default"])
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per rule")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--coord-repeats", type=int, default=10,
                    help="runs of the coordination phase alone per rule (for c min%%)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--target", default="classifier_rows",
                    choices=["classifier_rows", "shared_trunk"],
                    help="where coordination acts (shared_trunk builds the model with "
                         "shared_projection); default classifier_rows")
    ap.add_argument("--quick", action="store_true",
                    help="B=2 only (unless --batch), 2 timed steps, rules uniform + cgcoord")
    ap.add_argument("--oracle", action="store_true",
                    help="also time the reference attention (paper config, rule uniform)")
    ap.add_argument("--oracle-batch", type=int, nargs="+", default=None,
                    help="batches for --oracle (default: the --batch list; B=8 needs ~20 GB)")
    ap.add_argument("--skip-oracle-b8", action="store_true",
                    help="no oracle run at B=8 (the ratio then uses B=2)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP-counting step")
    ap.add_argument("--json", type=Path, default=None, help="write all results here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    batches = args.batch or ([2] if args.quick else [2, 8])
    rules = ["uniform", "cgcoord"] if args.quick and args.rules == list(RULES) else args.rules
    repeats = 2 if args.quick else args.repeats
    base = {"threads": args.threads, "device": args.device, "warmup": args.warmup,
            "repeats": repeats, "flops": not args.no_flops, "target": args.target,
            "coord_repeats": args.coord_repeats}
    specs = [{**base, "config": c, "batch": b, "oracle": False, "rules": rules}
             for c in args.configs for b in batches]
    if args.oracle:
        for b in args.oracle_batch or batches:
            need = 20.1 * b / 8 + 1.0  # the reference's peak RSS scales with B
            if (b >= 8 and args.skip_oracle_b8) or need > 0.9 * _mem_available_gb():
                print(f"skipping oracle B={b}: needs ~{need:.0f} GB, "
                      f"{_mem_available_gb():.0f} GB available", file=sys.stderr)
                continue
            specs.append({**base, "config": "paper", "batch": b, "oracle": True,
                          "rules": ["uniform"], "repeats": min(repeats, 3)})
    peak = matmul_gflops(args.threads)
    results = []
    for spec in specs:
        print(f"... {spec['config']} B={spec['batch']} {'oracle' if spec['oracle'] else 'fast'}",
              file=sys.stderr, flush=True)
        results.append(run_worker(spec))
    print_table(results, peak)
    if args.json:
        args.json.write_text(json.dumps({"matmul_gflops": peak, "threads": args.threads,
                                         "reference": REFERENCE, "results": results}, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
