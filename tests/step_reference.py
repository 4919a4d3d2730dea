"""Saved outputs of the training step at bd3adde, to check later commits against.

``run(name)`` trains a small KS-Fusion for two steps of ``train_step`` (seeded, dropout on) and
returns what the step computed: the logits before training (eval mode), each step's loss,
telemetry and coordinated gradients. It imports only names every version since bd3adde has
(``ksmodel.train.train_step``), so the same function runs on the old tree to write the file:

    PYTHONPATH=<checkout of bd3adde> python tests/step_reference.py tests/data/step_bd3adde.pt

tests/test_model.py compares this tree's ``run`` with the file.
"""

from __future__ import annotations

import sys

import torch

from benchmarks.common import diagnosis_objective, random_batch
from ksmodel.config import ModelConfig
from ksmodel.coordination.coordinator import make_coordinator
from ksmodel.model import KSFusion
from ksmodel.train import train_step

BASE = dict(feature_dim=48, n_tumour_genes=5, n_tme_genes=7, n_outputs=4, dim=32,
            gene_hidden=16, rpb_hidden=8)
SCENARIOS: dict[str, dict] = {
    # one head per offset group, 3 x 3 sampled keys on a 13 x 10 grid, CG-Coord
    "heads8_groups8": dict(model=dict(grid=(10, 13), heads=8, head_dim=8, offset_groups=8),
                           batch=3, rule="cgcoord", target="classifier_rows"),
    # two heads per group, a deeper bias MLP, the shared patch projection coordinated by PCGrad
    "heads4_groups2_shared": dict(model=dict(grid=(12, 12), heads=4, head_dim=16,
                                             offset_groups=2, rpb_depth=3,
                                             shared_projection=True),
                                  batch=2, rule="pcgrad", target="shared_trunk"),
    # more offset groups than heads (a head averages its groups' biases), uniform
    "heads2_groups4": dict(model=dict(grid=(9, 8), heads=2, head_dim=8, offset_groups=4,
                                      downsample=2, offset_kernel=3),
                           batch=2, rule="uniform", target="classifier_rows"),
}


def run(name: str) -> dict[str, object]:
    spec = SCENARIOS[name]
    cfg = ModelConfig(**{**BASE, **spec["model"]})
    torch.manual_seed(0)
    model = KSFusion(cfg)
    batch = random_batch(cfg, spec["batch"], torch.device("cpu"), seed=1)
    objective = diagnosis_objective(cfg, batch)
    model.eval()
    with torch.no_grad():
        logits = model(batch.bags, batch.genes_t, batch.genes_m).logits.clone()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    coord = make_coordinator(spec["rule"], target=spec["target"])
    steps = []
    for _ in range(2):
        result = train_step(model, batch, objective, opt, coord)
        steps.append({"loss": result.loss, "telemetry": result.telemetry,
                      "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                                if p.grad is not None}})
    return {"logits": logits, "steps": steps}


def main(path: str) -> None:
    torch.save({name: run(name) for name in SCENARIOS}, path)


if __name__ == "__main__":
    main(sys.argv[1])
