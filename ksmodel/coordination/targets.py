"""Where coordination acts: which gradient is split into a tumour and a TME block, per row.

``classifier_rows`` (the published rule, kept for reproduction): for each class row c of the
classifier, g_t = dL/dW[c, :d] and g_m = dL/dW[c, d:]. These are gradients of one loss on
*disjoint* parameters, so their cosine depends on an arbitrary basis in each stream: permuting and
sign-flipping one stream's last hidden units together with the matching classifier columns leaves
the loss unchanged and flips about half the "conflicts" (tests/test_shared_trunk.py shows it).

``shared_trunk``: the two streams share one patch projection P (``shared_projection``); g_s is the
part of P's gradient that reached it through stream s (``ksmodel.model.shared``), so g_t + g_m =
grad_P L on the *same* parameters and a negative cosine is a real disagreement. One row per unit
j of P: [weights W[j, :], bias b[j]], a basis both streams share. After the rule,
P.grad = g_t' + g_m' (written as the change, so an untouched row keeps autograd's own gradient
bit for bit).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ksmodel.coordination.registry import CLASSIFIER_ROWS, COORD_TARGETS, SHARED_TRUNK
from ksmodel.errors import ConfigError

STREAMS = ("tumour", "tme")


class ClassifierRows:
    """The classifier's weight gradient [C, 2d], tumour columns then TME columns."""

    name = CLASSIFIER_ROWS
    summed = False  # the blocks sit side by side in one parameter gradient

    def blocks(self, model: nn.Module, out: Any) -> tuple[Tensor, Tensor]:
        grad = model.classifier.weight.grad
        if grad is None:
            raise ValueError("classifier.weight.grad is None: call backward() first")
        k = grad.shape[1] // 2
        return grad[:, :k], grad[:, k:]

    def write(self, model: nn.Module, out: Any, old: tuple[Tensor, Tensor],
              new: tuple[Tensor, Tensor]) -> None:
        grad = model.classifier.weight.grad
        k = grad.shape[1] // 2
        grad[:, :k].copy_(new[0])
        grad[:, k:].copy_(new[1])


class SharedTrunk:
    """The shared patch projection's gradient, split by the stream it came through:
    [d, D + 1] per stream (unit j: its weight row and its bias)."""

    name = SHARED_TRUNK
    summed = True  # the blocks add up to the parameter gradient

    def blocks(self, model: nn.Module, out: Any) -> tuple[Tensor, Tensor]:
        """g_t from the tumour stream's gradient on the tokens (one matrix product); g_m as
        P.grad - g_t, since autograd has already summed both paths into P.grad."""
        if getattr(model, "shared_proj", None) is None:
            raise ConfigError("config key 'coord_target': shared_trunk needs a model built with "
                              "shared_projection: true")
        if out.shared is None:
            raise ValueError("the forward pass recorded no shared tokens (it ran without "
                             "gradients); coordinate after backward() of a training step")
        (g_t,) = out.shared.stream_gradients(STREAMS[:1])
        linear = model.shared_proj[0]
        total = torch.cat([linear.weight.grad, linear.bias.grad[:, None]], dim=1)
        return g_t, total.to(g_t.dtype) - g_t

    def write(self, model: nn.Module, out: Any, old: tuple[Tensor, Tensor],
              new: tuple[Tensor, Tensor]) -> None:
        linear = model.shared_proj[0]
        delta = (new[0] - old[0]) + (new[1] - old[1])  # [d, D + 1]
        linear.weight.grad.add_(delta[:, :-1].to(linear.weight.grad.dtype))
        linear.bias.grad.add_(delta[:, -1].to(linear.bias.grad.dtype))


TARGETS = {t.name: t for t in (ClassifierRows(), SharedTrunk())}
assert tuple(TARGETS) == COORD_TARGETS  # one implementation per name of the registry


def get_target(name: str) -> ClassifierRows | SharedTrunk:
    if name not in TARGETS:
        raise ConfigError(f"config key 'coord_target': must be one of {', '.join(TARGETS)}, "
                          f"got {name!r}")
    return TARGETS[name]


__all__ = ["ClassifierRows", "SharedTrunk", "TARGETS", "STREAMS", "get_target"]
