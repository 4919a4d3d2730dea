"""GPU path check: CUDA + bf16 vs CPU fp32, step time, memory, GPU sharing.

On a CUDA machine, in well under 5 minutes:
1. the same model and batch on CPU (fp32) and on CUDA (bf16 autocast, as trials run it):
   relative error of the logits and of the gradients, against bf16 tolerance;
2. one full training step (``ksmodel.step.train_step``, the trainer's own) at B = 2 and B = 8 of
   the original configuration (2,500 tokens, D = 1024), bf16 autocast as trials run it, and fp32
   at B = 8 for the autocast's speed-up: median time, peak CUDA memory, and the phases
   (forward, backward, coordinate, optimizer) of one synchronised step;
3. 1, 2 and 4 concurrent trials on one GPU, as Ray schedules them with fractional GPUs
   (`num_gpus = 1/k` per task): training steps per second of all k together, timed inside the
   tasks once every one of them has started and warmed up (a gate), so process and CUDA start-up
   are not in it, i.e. the sharing speed-up of the steps themselves;
4. with ``--compile``, the trainer's optional ``torch.compile`` path at B = 8: the first
   (compiling) step's time and the median step after it;
5. with ``--chunks 25 26 ...``, the B = 8 bf16 step with the bias kernel's chunks of 2^k
   elements (the module's ``chunk_elems``): on CUDA each chunk is ~15 kernels forward and ~30
   backward, so the chunk size sets how launch-bound the step is, against its peak memory.
Each part reports its own error and the others still run. Without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py [--json out.json] [--steps 20] [--compile] [--chunks 25 27]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import diagnosis_objective, random_batch  # noqa: E402
from ksmodel.config import ModelConfig  # noqa: E402
from ksmodel.coordination.coordinator import make_coordinator  # noqa: E402
from ksmodel.model import KSFusion  # noqa: E402
from ksmodel.step import compute_gradients, train_step  # noqa: E402

BF16_RTOL = 5e-2


def loss_and_grads(model: KSFusion, cfg: ModelConfig, device: torch.device, amp: bool
                   ) -> tuple[torch.Tensor, list]:
    """Logits and gradients of the training objective (no optimiser step), fp32 or bf16."""
    batch = random_batch(cfg, 4, device)
    out = compute_gradients(model, batch, diagnosis_objective(cfg, batch), amp=amp).out
    return out.logits.float().detach().cpu(), [p.grad.float().cpu() for p in model.parameters()
                                               if p.grad is not None]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def check_agreement() -> dict:
    cfg = ModelConfig(dropout=0.0)
    torch.manual_seed(0)
    cpu_model = KSFusion(cfg).eval()
    gpu_model = KSFusion(cfg).cuda().eval()
    gpu_model.load_state_dict(cpu_model.state_dict())
    logits_c, grads_c = loss_and_grads(cpu_model, cfg, torch.device("cpu"), amp=False)
    logits_g, grads_g = loss_and_grads(gpu_model, cfg, torch.device("cuda"), amp=True)
    grad_c, grad_g = torch.cat([g.flatten() for g in grads_c]), torch.cat(
        [g.flatten() for g in grads_g])
    out = {"logits_rel_err": rel(logits_g, logits_c), "grad_rel_err": rel(grad_g, grad_c),
           "tolerance": BF16_RTOL}
    out["ok"] = out["logits_rel_err"] < BF16_RTOL and out["grad_rel_err"] < BF16_RTOL
    return out


def build(cfg: ModelConfig, chunk_elems: int | None = None) -> KSFusion:
    """The model on CUDA in training mode, its bias kernel at ``chunk_elems`` when given."""
    torch.manual_seed(0)
    model = KSFusion(cfg).to(torch.device("cuda")).train()
    if chunk_elems:
        for stream in model.streams.values():
            stream.attention.chunk_elems = chunk_elems
    return model


def time_steps(cfg: ModelConfig, b: int, steps: int, rule: str = "cgcoord", *, amp: bool = True,
               compile: bool = False, chunk_elems: int | None = None) -> dict:
    """Median wall time of the trainer's step after two warm-up steps (the first one's time kept:
    with ``compile`` it is the compilation), then one synchronised step's phases."""
    device = torch.device("cuda")
    model = build(cfg, chunk_elems)
    net = torch.compile(model) if compile else model  # as the trainer's TrainConfig.compile
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    coord = make_coordinator(rule)
    batch = random_batch(cfg, b, device)
    objective = diagnosis_objective(cfg, batch)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(net, batch, objective, opt, coord, amp=amp)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    phases = train_step(net, batch, objective, opt, coord, amp=amp, profile=True).seconds
    return {"batch": b, "amp_bf16": amp, "compile": compile, "chunk_elems": chunk_elems,
            "step_s": statistics.median(times[2:]),
            "first_step_s": times[0], "steps": steps, "phases_s": dict(phases),
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1024**3}


def warmed_step(cfg: ModelConfig, b: int) -> Callable[[], None]:
    """One more bf16 training step of a fresh model on a fresh batch, after three warm-up
    steps (the first ones allocate and pick kernels)."""
    device = torch.device("cuda")
    model = build(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    coord = make_coordinator("cgcoord")
    batch = random_batch(cfg, b, device)
    objective = diagnosis_objective(cfg, batch)

    def step() -> None:
        train_step(model, batch, objective, opt, coord, amp=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    return step


def profile_step(cfg: ModelConfig, b: int, top: int) -> dict:
    """One bf16 step under torch.profiler: GPU-busy share of the wall time, kernel launches, and
    the top operators by GPU time (is the step compute- or launch-bound?)."""
    from torch.profiler import ProfilerActivity, profile

    step = warmed_step(cfg, b)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy_us = sum(e.device_time for e in kernels)
    ranked = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:top]
    return {"batch": b, "wall_s_profiled": wall, "kernels": len(kernels),
            "gpu_busy_s": busy_us / 1e6,
            "top": [{"op": e.key, "self_gpu_ms": e.self_device_time_total / 1e3,
                     "calls": e.count} for e in ranked]}


def describe(name: str, r: dict) -> str:
    phases = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in r["phases_s"].items())
    return (f"{name}: {r['step_s'] * 1e3:.1f} ms/step (first step {r['first_step_s']:.2f} s), "
            f"peak {r['peak_cuda_gb']:.2f} GiB; phases ms: {phases}")


def gated_steps(cfg: ModelConfig, b: int, steps: int, gate) -> float:
    """Warm up, wait at ``gate`` until every concurrent task has, then time ``steps`` steps."""
    step = warmed_step(cfg, b)
    import ray

    ray.get(gate.arrive.remote())
    while not ray.get(gate.open.remote()):
        time.sleep(0.01)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def sharing(steps: int) -> list[dict]:
    """Step throughput of k concurrent trials on one GPU, scheduled by Ray with num_gpus=1/k:
    k * steps over the slowest task's timed steps, all k having started and warmed up first."""
    import ray

    ray.init(num_gpus=1, num_cpus=max(4, torch.get_num_threads()), include_dashboard=False)

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self, k: int) -> None:
            self.k, self.arrived = k, 0

        def arrive(self) -> None:
            self.arrived += 1

        def open(self) -> bool:
            return self.arrived >= self.k

    @ray.remote
    def trial(n: int, gate) -> float:
        return gated_steps(ModelConfig.paper(), 2, n, gate)

    rows = []
    try:
        for k in (1, 2, 4):
            gate = Gate.remote(k)
            seconds = ray.get([trial.options(num_gpus=1 / k).remote(steps, gate)
                               for _ in range(k)])
            rows.append({"concurrent_trials": k, "task_step_s": seconds,
                         "steps_per_s": k * steps / max(seconds)})
        base = rows[0]["steps_per_s"]
        for r in rows:
            r["speedup"] = r["steps_per_s"] / base
    finally:
        ray.shutdown()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile one B = 8 step: GPU-busy time, kernels, top N ops")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile path (TrainConfig.compile) at B = 8")
    parser.add_argument("--chunks", type=int, nargs="*", default=[], metavar="LOG2",
                        help="also time the B = 8 bf16 step with bias-kernel chunks of 2^LOG2 "
                             "elements (e.g. 25 26 27 28)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing to check (skipped)")
        return 0
    start = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                    "errors": {}}

    def part(name: str, fn, show) -> None:
        """Run one check; its failure is reported and the others still run."""
        try:
            report[name] = fn()
            show(report[name])
        except Exception as exc:  # noqa: BLE001 - a broken part must not hide the others
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED {report['errors'][name]}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2))

    part("agreement", check_agreement, lambda a: print(
        f"CUDA bf16 vs CPU fp32: logits rel err {a['logits_rel_err']:.2e}, grad rel err "
        f"{a['grad_rel_err']:.2e} ({'ok' if a['ok'] else 'OUT OF TOLERANCE'})", flush=True))
    paper = ModelConfig.paper()
    for name, kw in (("paper_b2", {"b": 2}), ("paper_b8", {"b": 8}),
                     ("paper_b8_fp32", {"b": 8, "amp": False})):
        part(name, lambda kw=kw: time_steps(paper, steps=args.steps, **kw),
             lambda r, name=name: print(describe(name, r), flush=True))
    part("sharing", lambda: sharing(args.steps), lambda rows: [print(
        f"{r['concurrent_trials']} trial(s) on one GPU: {r['steps_per_s']:.2f} steps/s "
        f"({r['speedup']:.2f}x); each task's step "
        f"{1e3 * min(r['task_step_s']) / args.steps:.1f}-"
        f"{1e3 * max(r['task_step_s']) / args.steps:.1f} ms", flush=True) for r in rows])
    if args.profile:
        part("profile_b8", lambda: profile_step(paper, 8, args.profile), lambda r: print(
            f"profiled B=8 step: {r['wall_s_profiled'] * 1e3:.1f} ms wall, GPU busy "
            f"{r['gpu_busy_s'] * 1e3:.1f} ms in {r['kernels']} kernels\n" + "\n".join(
                f"  {t['self_gpu_ms']:8.2f} ms {t['calls']:5d}x {t['op']}" for t in r["top"]),
            flush=True))
    if args.compile:
        part("paper_b8_compiled", lambda: time_steps(paper, 8, args.steps, compile=True),
             lambda r: print(describe("paper_b8_compiled", r), flush=True))
    for log2 in args.chunks:
        name = f"paper_b8_chunk2^{log2}"
        part(name, lambda log2=log2: time_steps(paper, 8, args.steps, chunk_elems=1 << log2),
             lambda r, name=name: print(describe(name, r), flush=True))
    report["wall_s"] = time.perf_counter() - start
    print(f"done in {report['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report.get("agreement", {}).get("ok") and not report["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
