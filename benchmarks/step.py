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

``--tree PATH`` (repeatable) times another checkout's model and step with this script, e.g. the
previous commit (``git worktree add --detach /tmp/base <commit>``): every (config, batch) runs
once per tree per ``--rounds``, the trees interleaved (their order alternating by round), so a
busy machine slows them alike; the table then gives each tree's median step over all rounds and
the ratio to the first tree, with the range of the per-round ratios. ``--profile N`` adds each
tree's top N operators of one profiled step (torch.profiler, self time): run on one thread with
the bias kernel's chunks and the streams inline, since the profiler sees only its own thread;
it shows where the step's work goes, the timed rows show the wall time on ``--threads``.

    python benchmarks/step.py [--quick] [--json out.json] [--batch 2 8] [--rules ...]
                              [--target classifier_rows|shared_trunk]
                              [--oracle [--oracle-batch 2 8]] [--threads 2]
                              [--tree PATH ... [--rounds R]] [--profile N]
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
TREE_ENV = "KS_STEP_BENCH_TREE"  # a worker imports ksmodel (and benchmarks.common) from here
sys.path.insert(0, os.environ.get(TREE_ENV) or str(ROOT))

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
    try:
        from ksmodel.step import compute_gradients, train_step
    except ImportError:  # a tree from before ksmodel.step (--tree): the same step, older home
        from ksmodel.train import train_step
        compute_gradients = None

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
    # --compile: the trainer's optional path (TrainConfig.compile), torch.compile of the model
    run = torch.compile(model) if spec.get("compile") else model
    rss_model = _rss_gb()

    def step(coord, net=None) -> tuple[float, float, float, float]:
        """The trainer's own step, profiled: (wall s, coordination wall s, process CPU s,
        coordination process CPU s). CPU seconds are less inflated than wall time when other
        processes compete for the cores."""
        timed = _CpuTimed(coord)
        cpu0 = time.process_time()
        result = train_step(net or run, batch, objective, opt, timed, profile=True)
        return (sum(result.seconds.values()), result.seconds["coordinate"],
                time.process_time() - cpu0, timed.cpu_s)

    def coordination_alone(coord, repeats: int) -> float:
        """The coordination phase by itself, ``repeats`` times on one step's gradients (put back
        before each): the fastest time, the least disturbed by other processes."""
        if compute_gradients is None:
            return float("nan")
        out = compute_gradients(run, batch, objective, opt).out
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
        with counter:  # counted on the eager model (the same arithmetic)
            step(make_coordinator("uniform", target=target), model)
        flop = counter.get_total_flops()
    rules = {}
    load0 = _loadavg()
    mm_rates = []  # the machine's matmul rate, measured right before each timed step
    for rule in spec["rules"]:
        coord = make_coordinator(rule, target=target)
        for _ in range(spec["warmup"]):
            step(coord)
        timed = []
        for _ in range(spec["repeats"]):
            mm_rates.append(matmul_gflops(spec["threads"], reps=3))
            timed.append(step(coord))
        steps, coords, cpus, coord_cpus = zip(*timed, strict=True)
        isolated = coordination_alone(coord, spec["coord_repeats"])
        med = statistics.median(steps)
        rules[rule] = {"step_s": med, "step_min_s": min(steps), "step_all_s": list(steps),
                       "mm_gflops_all": mm_rates[-len(steps):],
                       "cpu_s": statistics.median(cpus),
                       "coord_s": statistics.median(coords),
                       "coord_share": statistics.median(c / s for c, s in zip(coords, steps,
                                                                               strict=True)),
                       "coord_cpu_s": statistics.median(coord_cpus),
                       "coord_cpu_share": statistics.median(
                           c / s for c, s in zip(coord_cpus, cpus, strict=True)),
                       "coord_alone_min_s": isolated,
                       "coord_min_share": isolated / min(steps)}
    if spec.get("profile"):
        profiled = _profile_step(lambda: step(make_coordinator(spec["rules"][0], target=target),
                                              model), spec["profile"])
    result = {**spec, "rules": rules, "flop": flop, "rss_after_build_gb": rss_model,
              "matmul_gflops": statistics.median(mm_rates),
              "peak_rss_gb": _peak_rss_gb(), "loadavg": [load0, _loadavg()],
              "cpu_time_s": time.process_time()}
    if spec.get("profile"):
        result["profile"] = profiled
    if device.type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    return result


def _profile_step(step, top: int) -> dict:
    """Where one step's work goes, by operator: the step under torch.profiler on one thread,
    with the bias kernel's chunks and the streams run inline (the profiler sees only the
    calling thread, so threaded work would hide inside one opaque row); the ``top`` operators
    by self time and their share of the step's."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    inline = _inline_switches()
    threads = torch.get_num_threads()
    saved = [(mod, name, getattr(mod, name)) for mod, name in inline]
    torch.set_num_threads(1)
    for mod, name in inline:
        setattr(mod, name, False)
    try:
        step()  # warm up at one thread
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = step()[0]
    finally:
        torch.set_num_threads(threads)
        for mod, name, value in saved:
            setattr(mod, name, value)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return {"step_s": wall, "self_total_s": total / 1e6, "threads": 1,
            "ops": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6,
                     "share": e.self_cpu_time_total / total, "calls": e.count}
                    for e in events[:top]]}


def _inline_switches() -> list[tuple[object, str]]:
    """The module flags that thread the step (whichever this tree has)."""
    import importlib

    found = []
    for module, flag in (("ksmodel.model._rpb_kernel", "THREADED_CHUNKS"),
                         ("ksmodel.model.side_by_side", "PARALLEL_STREAMS")):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        if hasattr(mod, flag):
            found.append((mod, flag))
    return found


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


def run_worker(spec: dict, tree: Path = ROOT) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), TREE_ENV: str(tree),
           "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=tree)
    if proc.returncode != 0:
        return {**spec, "tree": str(tree), "error": (proc.stderr or proc.stdout)[-2000:]}
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "tree": str(tree)}


def print_table(results: list[dict], peak_gflops: float) -> None:
    targets = sorted({r.get("target", "classifier_rows") for r in results})
    print(f"coordination target: {', '.join(targets)}")
    head = (f"{'config':<8}{'attn':<7}{'B':>3} {'rule':<12}{'step s':>8}{'min s':>7}"
            f"{'cpu s':>7}{'coord %':>8}{'c cpu%':>7}{'c min%':>7}"
            f"{'GFLOP':>8}{'GFLOP/s':>9}{'% mm':>6}{'peak RSS GB':>12}  vs reference")
    print(head)
    print("-" * len(head))
    for r in results:
        name = "oracle" if r["oracle"] else "compiled" if r.get("compile") else "fast"
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
            if r["config"] == "paper" and _kind(r) == "eager" and "error" not in r}
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


def _write_json(path: Path, peak: float, trees: list[Path], results: list[dict]) -> None:
    threads = results[0]["threads"] if results else None
    path.write_text(json.dumps({"matmul_gflops": peak, "threads": threads,
                                "trees": [str(t) for t in trees], "reference": REFERENCE,
                                "results": results}, indent=2))


def _kind(r: dict) -> str:
    return "oracle" if r["oracle"] else "compiled" if r.get("compile") else "eager"


def _runs(results: list[dict], tree: Path, config: str, batch: int, kind: str) -> list[dict]:
    return [r for r in results if r["tree"] == str(tree) and r["config"] == config
            and r["batch"] == batch and _kind(r) == kind and "error" not in r]


def print_comparison(results: list[dict], trees: list[Path]) -> None:
    """Side by side: each tree's median step over all rounds, its FLOP rate against the matmul
    rate measured in the same workers, peak RSS, and the ratio to the first tree."""
    for r in results:
        if "error" in r:
            print(f"{Path(r['tree']).name} {r['config']} B={r['batch']} ERROR "
                  f"{r['error'].splitlines()[-1]}")
    keys = sorted({(r["config"], r["batch"], _kind(r)) for r in results if "error" not in r},
                  key=lambda k: (k[2] != "eager", k[2], k[0] != "paper", k[1]))
    head = (f"{'tree':<14}{'config':<8}{'B':>3} {'rule':<10}{'step s':>8}{'min s':>7}"
            f"{'GFLOP':>7}{'GFLOP/s':>8}{'mm GF/s':>8}{'% mm':>6}{'peak GB':>8}"
            f"  vs {trees[0].name} (per-round range)")
    print(head)
    print("-" * len(head))
    for config, batch, kind in keys:
        base_runs = _runs(results, trees[0], config, batch, "eager")
        for tree in trees:
            runs = _runs(results, tree, config, batch, kind)
            if not runs:
                continue
            flop = next((r["flop"] for r in runs if r.get("flop")), None)
            for rule in runs[0]["rules"]:
                steps = [x for r in runs for x in r["rules"][rule]["step_all_s"]]
                med = statistics.median(steps)
                mms = [x for r in runs for x in r["rules"][rule].get("mm_gflops_all", [])]
                mm = statistics.median(mms) if mms else float("nan")
                rate = flop / 1e9 / med if flop else float("nan")
                # % mm: each step's rate against the matmul rate measured just before it
                pct = (statistics.median(flop / 1e9 / s / m for s, m in zip(steps, mms,
                                                                          strict=True))
                       if flop and len(mms) == len(steps) else float("nan"))
                vs = ""
                if (tree != trees[0] or kind != "eager") and base_runs:
                    base = statistics.median(x for r in base_runs
                                             for x in r["rules"][rule]["step_all_s"])
                    per_round = [statistics.median(r["rules"][rule]["step_all_s"])
                                 / statistics.median(b["rules"][rule]["step_all_s"])
                                 for r in runs for b in base_runs if b["round"] == r["round"]]
                    vs = (f"{med / base:.3f}x ({min(per_round):.2f}-{max(per_round):.2f})"
                          if per_round else f"{med / base:.3f}x")
                name = tree.name + ("" if kind == "eager" else f" {kind}")
                print(f"{name:<14}{config:<8}{batch:>3} {rule:<10}{med:>8.3f}{min(steps):>7.2f}"
                      f"{(flop or 0) / 1e9:>7.1f}{rate:>8.1f}{mm:>8.1f}{100 * pct:>6.1f}"
                      f"{max(r['peak_rss_gb'] for r in runs):>8.2f}  {vs}")
    loads = [x for r in results if "loadavg" in r for x in r["loadavg"]]
    if loads:
        print(f"step s = median over all rounds' timed steps; mm GF/s = fp32 2048^2 matmul rate "
              f"measured right before each timed step (median); % mm = median over steps of the "
              f"step's GFLOP/s / that matmul rate. 1-min load average during the runs: "
              f"{min(loads):.2f}-{max(loads):.2f}")


def print_profiles(results: list[dict], trees: list[Path]) -> None:
    """Each tree's top operators of one profiled step, per (config, batch)."""
    for r in results:
        prof = r.get("profile")
        if not prof:
            continue
        print(f"\n{Path(r['tree']).name}: {r['config']} B={r['batch']} "
              f"{'oracle ' if r['oracle'] else ''}- one step on one thread, kernels and streams "
              f"inline: {prof['step_s']:.2f} s, operators' self time {prof['self_total_s']:.2f} s")
        print(f"  {'operator':<44}{'self s':>8}{'share':>8}{'calls':>7}")
        for op in prof["ops"]:
            print(f"  {op['op'][:43]:<44}{op['self_s']:>8.3f}{100 * op['share']:>7.1f}%"
                  f"{op['calls']:>7}")


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
    ap.add_argument("--tree", type=Path, action="append",
                    help="checkout whose ksmodel to time (repeatable, interleaved; the first "
                         "is the base of the ratios; default: this one)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="with --tree: run every (config, batch) this many times per tree")
    ap.add_argument("--compile", action="store_true",
                    help="also time the torch.compile path (TrainConfig.compile) of the paper "
                         "config; compilation runs in the warm-up steps")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile one step per (tree, config, batch): its top N operators")
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
            "coord_repeats": args.coord_repeats, "profile": args.profile}
    specs = [{**base, "config": c, "batch": b, "oracle": False, "rules": rules}
             for c in args.configs for b in batches]
    if args.compile:
        specs += [{**base, "config": "paper", "batch": b, "oracle": False, "rules": rules,
                   "compile": True, "warmup": max(2, args.warmup), "profile": 0}
                  for b in batches]
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
    trees = [t.resolve() for t in args.tree or [ROOT]]
    results = []
    for rnd in range(args.rounds):
        for spec in specs:
            # alternate the trees' order by round, so neither always runs first
            for tree in trees if rnd % 2 == 0 else trees[::-1]:
                print(f"... round {rnd + 1} {tree.name}: {spec['config']} B={spec['batch']} "
                      f"{'oracle' if spec['oracle'] else 'fast'}", file=sys.stderr, flush=True)
                first = rnd == 0  # count FLOPs and profile once per tree
                results.append({**run_worker({**spec, "flops": spec["flops"] and first,
                                              "profile": spec["profile"] if first else 0},
                                             tree), "round": rnd})
                if args.json:  # partial results survive an interrupted run
                    _write_json(args.json, peak, trees, results)
    if len(trees) == 1 and args.rounds == 1:
        print_table(results, peak)
    else:
        print_comparison(results, trees)
    if args.profile:
        print_profiles(results, trees)
    if args.json:
        _write_json(args.json, peak, trees, results)
    return 0 if all("error" not in r for r in results) else 1

if __name__ == "__main__":
    raise SystemExit(main())
