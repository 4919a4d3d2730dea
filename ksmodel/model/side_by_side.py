"""Run the subspace streams' histology side by side on CPU threads, forward and backward.

Both histology streams do the same work on the same bags with their own weights (projection,
teacher, deformable attention) and meet only at the classifier. On a CPU with a few cores,
running each stream on its own thread, single-threaded, keeps every core busy with whole
operations instead of splitting each operation over the cores (an OpenMP fork and barrier per
operator, and the cores idle wherever an operator does not scale), and a thread that another
process delays holds up only its own stream.

``_SideBySide`` is one autograd node for all the streams: its forward runs each stream's
histology on a worker thread, recording that stream's own graph there; its backward runs each
graph's backward on the same workers (CPU backward executes on the calling thread), which fills
the streams' parameter gradients directly and returns the gradients of the node's inputs (the
tokens or bags each stream read, and its gene embedding). The gene encoders run on the calling
thread beforehand, in stream order: their dropout is the streams' only random draw, so the
global RNG is consumed exactly as by a sequential forward. The outputs equal the sequential
ones up to rounding (each operator runs single-threaded).

Used on CPU when torch has at least two threads and the model has at least two histology
streams, outside autocast, dispatch modes (FLOP counters, which see only their own thread) and
``torch.compile`` tracing; ``PARALLEL_STREAMS = False`` switches it off. A worker gets
``torch.get_num_threads() // streams`` threads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from ksmodel.model.stream import StreamOutput, SubspaceStream

__all__ = ["PARALLEL_STREAMS", "run_streams"]

PARALLEL_STREAMS = True
_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child must not reuse dead threads


def _pool(workers: int, threads: int) -> ThreadPoolExecutor:
    key = (workers, threads)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="ks-stream",
                                         initializer=torch.set_num_threads, initargs=(threads,))
    return _POOLS[key]


def _side_by_side(streams: Sequence[SubspaceStream], inputs: Sequence[Tensor | None]) -> bool:
    x = next((t for t in inputs if t is not None), None)
    return (PARALLEL_STREAMS and len(streams) >= 2 and x is not None and x.device.type == "cpu"
            and all(s.reads_histology for s in streams) and torch.get_num_threads() >= 2
            and not torch.is_autocast_enabled("cpu")
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch.compiler.is_compiling())


def run_streams(streams: Sequence[SubspaceStream], inputs: Sequence[Tensor | None],
                genes: Sequence[Tensor | None]) -> list[StreamOutput]:
    """Every stream's output for its input (bags or shared tokens) and genes: side by side
    where that applies (module docstring), else one after the other."""
    if not _side_by_side(streams, inputs):
        return [s(x, g) for s, x, g in zip(streams, inputs, genes, strict=True)]
    embs = [s.encode_genes(g) for s, g in zip(streams, genes, strict=True)]
    k = len(streams)
    pool = _pool(k, max(1, torch.get_num_threads() // k))
    if torch.is_grad_enabled():
        flat = _SideBySide.apply(streams, pool, k, *inputs, *embs)
        pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(k)]
    else:
        def job(i: int) -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                return streams[i].histology(inputs[i], embs[i])
        pairs = list(pool.map(job, range(k)))
    return [StreamOutput(f, e, v) for (f, v), e in zip(pairs, embs, strict=True)]


class _SideBySide(torch.autograd.Function):
    """Inputs: the streams, the worker pool, k, then k stream inputs and k gene embeddings
    (None without genes). Outputs: (feature, vgrid) per stream, flattened."""

    @staticmethod
    def forward(ctx, streams, pool, k, *tensors):  # type: ignore[override]
        inputs, embs = tensors[:k], tensors[k:]

        def job(i: int):
            with torch.enable_grad():  # grad mode is per thread
                x = inputs[i].detach().requires_grad_(inputs[i].requires_grad)
                e = embs[i]
                e = None if e is None else e.detach().requires_grad_(e.requires_grad)
                feature, vgrid = streams[i].histology(x, e)
            return feature, vgrid, x, e

        ctx.graphs = list(pool.map(job, range(k)))
        ctx.pool, ctx.k = pool, k
        ctx.set_materialize_grads(False)
        return tuple(t.detach() for feature, vgrid, _, _ in ctx.graphs for t in (feature, vgrid))

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        k, graphs = ctx.k, ctx.graphs

        def job(i: int):
            feature, vgrid, x, e = graphs[i]
            pairs = [(t, g) for t, g in ((feature, grads[2 * i]), (vgrid, grads[2 * i + 1]))
                     if g is not None and t.requires_grad]
            if pairs:
                torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
            return (x.grad if x.requires_grad else None,
                    e.grad if e is not None and e.requires_grad else None)

        results = list(ctx.pool.map(job, range(k)))
        ctx.graphs = None  # free the streams' graphs
        return (None, None, None, *(r[0] for r in results), *(r[1] for r in results))
