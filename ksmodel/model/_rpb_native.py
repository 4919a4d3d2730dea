"""The fused CPU bias MLP (``_rpb_native.c``): built on first use, loaded with ctypes.

Why: the bias kernel's products are skinny ([rows, 32] x [32, 32]) and between them the eager
path makes a dozen passes over every chunk's hidden activations (bias + ReLU, the ReLUs'
backward, sums), which move as many bytes as the products and count no FLOPs. The C kernel
takes a block of 8 keys through the whole MLP in registers: at the original study's shapes the
kernel alone runs ~2.5x faster on one core (benchmarks/step.py has the whole step).

It applies to float32 on CPU with one hidden 32 x 32 layer and one output unit per offset group
(the original and the default configurations); everything else, and any step run under a torch
dispatch mode (``FlopCounterMode`` counts the eager path's products, the same arithmetic), takes
the eager path. The library is compiled once per source, compiler and CPU (``-march=native``)
into ``$KS_KERNEL_CACHE`` (default ``~/.cache/ks-study/kernels``), so nodes of a mixed cluster
sharing a home directory each get their own; without a C compiler (``$CC``, else ``cc``) or with
``KS_NATIVE_KERNEL=0`` the eager path runs and the results are the same within float32 rounding.
ctypes releases the GIL during a call, so the kernel's worker threads run in parallel.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from ksmodel.model import _buffers

SOURCE = Path(__file__).with_name("_rpb_native.c")
HIDDEN = 32  # R of the C kernel
ENV_SWITCH = "KS_NATIVE_KERNEL"  # "0": always the eager path
ENV_CACHE = "KS_KERNEL_CACHE"
FLAGS = ["-O3", "-march=native", "-std=gnu11", "-shared", "-fPIC"]
log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_LIB: list[ctypes.CDLL | None] = []  # [] until the first load attempt


def _after_fork() -> None:
    """A forked child keeps the loaded library but gets a free lock (a thread of the parent
    may have been building at the fork)."""
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags."""
    text = ""
    with contextlib.suppress(OSError):
        text = Path("/proc/cpuinfo").read_text()
    keys = ("model name", "flags", "Features", "CPU part")
    lines = {ln.split(":")[0].strip(): ln for ln in text.splitlines() if ":" in ln}
    return platform.machine() + "".join(lines.get(k, "") for k in keys)


def library_path(compiler: str) -> Path:
    """Where the build for this source, compiler and CPU lives."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=False).stdout
    key = hashlib.blake2b("\0".join([SOURCE.read_text(), " ".join(FLAGS), version,
                                     _cpu_signature()]).encode(), digest_size=10).hexdigest()
    root = Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "ks-study" / "kernels")
    return root / f"rpb_{key}.so"


def _build() -> ctypes.CDLL:
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise OSError(f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH; set CC or install "
                      "gcc")
    target = library_path(compiler)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            done = subprocess.run([compiler, *FLAGS, "-o", tmp, str(SOURCE)],
                                  capture_output=True, text=True, check=False)
            if done.returncode:
                raise OSError(f"{compiler} could not build {SOURCE.name}: {done.stderr[-2000:]}")
            os.replace(tmp, target)  # atomic: processes building at once each leave a whole one
        finally:
            Path(tmp).unlink(missing_ok=True)
    lib = ctypes.CDLL(str(target))
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.ks_rpb_forward.argtypes = [p, p, i, i, i, p, p, p, p, p, p, i, i, p, p, p]
    lib.ks_rpb_backward.argtypes = [p, p, i, i, i, p, p, p, p, p, p, i, i, p, p, p, p]
    return lib


def library() -> ctypes.CDLL | None:
    """The fused kernel, built on first call; None (said once in the log) where it cannot be."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return None
    with _LOCK:
        if not _LIB:
            try:
                _LIB.append(_build())
            except OSError as exc:
                log.warning("fused CPU bias kernel unavailable, using the eager path: %s", exc)
                _LIB.append(None)
        return _LIB[0]


def applies(fx: Tensor, dtype: torch.dtype, r: int, n_mid: int, hpg: int) -> bool:
    """Whether the fused kernel computes this bias (see the module docstring)."""
    return (fx.device.type == "cpu" and fx.dtype == dtype == torch.float32 and r == HIDDEN
            and n_mid == 1 and hpg == 1 and torch._C._len_torch_dispatch_stack() == 0
            and library() is not None)


def _ptr(t: Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


class Weights:
    """The MLP's weights as the C kernel takes them (contiguous float32, derived once)."""

    def __init__(self, w1x: Tensor, w1y: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                 u: Tensor) -> None:
        self.w1x, self.w1y, self.b1 = (t.contiguous() for t in (w1x, w1y, b1))
        self.b2, self.u = b2.contiguous(), u.contiguous()
        self.w2t = w2.t().contiguous()
        self.wu = (w2 * u[:, None]).contiguous()  # u folded into the hidden layer's rows


def active_units(out: Tensor) -> Tensor:
    """The buffer ``forward`` records the hidden layer's active units in: 32 bits per bias
    element, which spares the backward a second pass through the hidden layer's product
    (a reused one: ``_buffers``; the backward gives it back)."""
    return _buffers.take(tuple(out.shape), torch.int32, out.device)


def forward(fx: Tensor, fy: Tensor, w: Weights, s0: int, s1: int, out: Tensor,
            active: Tensor | None) -> None:
    """The bias of slices s0:s1 into ``out`` [S, H, W, N] (contiguous), their active units into
    ``active`` (``active_units``; None when no backward will follow)."""
    _, width, n = fx.shape
    height = fy.shape[1]
    scratch = fx.new_empty((height + width) * n * HIDDEN)
    library().ks_rpb_forward(_ptr(fx), _ptr(fy), height, width, n, _ptr(w.w1x), _ptr(w.w1y),
                             _ptr(w.b1), _ptr(w.w2t), _ptr(w.b2), _ptr(w.u), s0, s1, _ptr(out),
                             _ptr(active), _ptr(scratch))


def backward(fx: Tensor, fy: Tensor, w: Weights, g: Tensor, active: Tensor, s0: int, s1: int,
             dfx: Tensor | None, dfy: Tensor | None) -> list[Tensor]:
    """Slices s0:s1's gradients from ``g`` [S, H, W, N] and the forward's ``active`` units:
    writes their ``dfx``/``dfy`` and returns (dw1x, dw1y, db1, C, c) summed over them, with
    C = sum P^T h1 and c = sum P (P = g where the hidden layer is active), from which the
    caller derives the hidden layer's and the output weight's gradients."""
    _, width, n = fx.shape
    height, r = fy.shape[1], HIDDEN
    scratch = fx.new_empty(2 * (height + width) * n * r)
    sums = fx.new_zeros(r * r + 4 * r)
    library().ks_rpb_backward(_ptr(fx), _ptr(fy), height, width, n, _ptr(w.w1x), _ptr(w.w1y),
                              _ptr(w.b1), _ptr(w.wu), _ptr(g), _ptr(active), s0, s1, _ptr(dfx),
                              _ptr(dfy), _ptr(sums), _ptr(scratch))
    dw1x, dw1y, db1 = sums[r * r + r:].view(3, r)
    return [dw1x, dw1y, db1, sums[:r * r].view(r, r), sums[r * r:r * r + r]]
