"""GPU path check: CUDA + bf16 vs CPU fp32, step time, memory, GPU sharing.

On a CUDA machine, in well under 5 minutes:
1. the same model and batch on CPU (fp32) and on CUDA (bf16 autocast, as trials run it):
   relative error of the logits and of the gradients, against bf16 tolerance;
2. one full training step (``ksmodel.step.train_step``, the trainer's own) at B = 8 of the
   original configuration (2,500 tokens, D = 1024): median time and peak CUDA memory;
3. 1, 2 and 4 concurrent trials on one GPU, as Ray schedules them with fractional GPUs
   (`num_gpus = 1/k` per task): total training steps per second, i.e. the sharing speed-up.
Without CUDA it says so and exits 0.

    python benchmarks/gpu_check.py [--json out.json] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
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


def time_steps(cfg: ModelConfig, b: int, steps: int, rule: str = "cgcoord") -> dict:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = KSFusion(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    coord = make_coordinator(rule)
    batch = random_batch(cfg, b, device)
    objective = diagnosis_objective(cfg, batch)
    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(model, batch, objective, opt, coord, amp=True)
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return {"batch": b, "step_s": statistics.median(times), "steps": steps,
            "peak_cuda_gb": torch.cuda.max_memory_allocated() / 1024**3}


def sharing(steps: int) -> list[dict]:
    """Throughput of k concurrent trials on one GPU, scheduled by Ray with num_gpus=1/k."""
    import ray

    ray.init(num_gpus=1, num_cpus=max(4, torch.get_num_threads()), include_dashboard=False)

    @ray.remote
    def trial(n: int) -> float:
        t0 = time.perf_counter()
        time_steps(ModelConfig.paper(), 2, n)
        return time.perf_counter() - t0

    rows = []
    try:
        for k in (1, 2, 4):
            t0 = time.perf_counter()
            ray.get([trial.options(num_gpus=1 / k).remote(steps) for _ in range(k)])
            wall = time.perf_counter() - t0
            rows.append({"concurrent_trials": k, "wall_s": wall,
                         "steps_per_s": k * (steps + 2) / wall})
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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible to torch; nothing to check (skipped)")
        return 0
    start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    report["agreement"] = check_agreement()
    print(f"CUDA bf16 vs CPU fp32: logits rel err {report['agreement']['logits_rel_err']:.2e}, "
          f"grad rel err {report['agreement']['grad_rel_err']:.2e} "
          f"({'ok' if report['agreement']['ok'] else 'OUT OF TOLERANCE'})", flush=True)
    report["paper_b8"] = time_steps(ModelConfig.paper(), 8, args.steps)
    print(f"paper config B=8: {report['paper_b8']['step_s'] * 1e3:.1f} ms/step, peak "
          f"{report['paper_b8']['peak_cuda_gb']:.2f} GiB", flush=True)
    report["sharing"] = sharing(args.steps)
    for r in report["sharing"]:
        print(f"{r['concurrent_trials']} trial(s) on one GPU: {r['steps_per_s']:.2f} steps/s "
              f"({r['speedup']:.2f}x)", flush=True)
    report["wall_s"] = time.perf_counter() - start
    print(f"done in {report['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["agreement"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
