"""``eager_only``: ``torch.compiler.disable`` without importing TorchDynamo at import time.

``torch.compiler.disable`` imports ``torch._dynamo`` (1.3 s on a 2-core machine), which every
process that imports the model would pay - each Ray trial worker, each study driver - though only
the optional ``torch.compile`` path (``TrainConfig.compile``) needs it. ``eager_only`` calls the
function as it is in eager mode and makes the disabled version the first time Dynamo traces it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])


def eager_only(fn: F) -> F:
    """``fn`` run eagerly, never traced by ``torch.compile`` (a graph break around it)."""
    disabled: Callable[..., Any] | None = None

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        nonlocal disabled
        if not torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return run  # type: ignore[return-value]


__all__ = ["eager_only"]
