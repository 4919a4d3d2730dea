"""Reused CPU buffers for the attention's per-step scratch of ~100 MB.

Why: torch's CPU allocator hands tensors this large straight from the kernel (``mmap``) and
back on free, so each step page-faults every one of them in again, 4 KB at a time, and two
stream threads faulting at once contend in the kernel. At the original shapes, B = 8, the bias
kernel's active units and the attention's logit gradient are two such buffers per stream and
step: reusing them took the 2-thread step from 1.93 to 1.84 s (benchmarks/step.py). Only
buffers whose whole lifetime the attention node controls come from here: taken in its forward
or backward, given back once its backward has read them (the probabilities, saved for autograd,
are not). CUDA keeps its own cache; there ``take`` is ``torch.empty``.
"""

from __future__ import annotations

import os
import threading

import torch
from torch import Tensor

KEEP = 4  # free buffers kept per (shape, dtype): two streams x a forward's and a backward's
_LOCK = threading.Lock()
_FREE: dict[tuple, list[Tensor]] = {}


def _after_fork() -> None:
    """A forked child starts with no buffers and a free lock (a thread of the parent may have
    held it at the fork)."""
    global _LOCK
    _LOCK = threading.Lock()
    _FREE.clear()


os.register_at_fork(after_in_child=_after_fork)


def take(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """An uninitialised tensor: a given-back one of that shape and dtype if there is one."""
    if device.type == "cpu":
        with _LOCK:
            free = _FREE.get((tuple(shape), dtype))
            if free:
                return free.pop()
    return torch.empty(shape, dtype=dtype, device=device)


def give(t: Tensor | None) -> None:
    """Back for reuse: nothing may read or write ``t`` afterwards."""
    if t is None or t.device.type != "cpu":
        return
    with _LOCK:
        free = _FREE.setdefault((tuple(t.shape), t.dtype), [])
        if len(free) < KEEP:
            free.append(t)


def clear() -> None:
    """Drop every kept buffer (their memory goes back to the system)."""
    with _LOCK:
        _FREE.clear()
