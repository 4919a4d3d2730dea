"""The patch projection shared by the two subspace streams, handed to each stream separately.

With ``shared_projection`` both streams read the tokens p = ReLU(x W^T + b) of one projection P.
Each stream gets its own view of p carrying a gradient hook, so one ordinary backward pass yields
(a) P's usual gradient - autograd sums the two streams' contributions, so any code that calls
``backward()`` trains P exactly as a model whose streams read p directly - and (b) what each
stream sent back, u_s = dL/dp_s [B, T, d]. From u_s the part of P's gradient that came through
stream s is one matrix product, with no second backward through the attention:

    g_s[j] = sum_{b,tau} u_s[b,tau,j] * 1[p[b,tau,j] > 0] * [x[b,tau]; 1]   (row j: weights, bias)

and g_t + g_m = grad_P L. ``ksmodel.coordination.targets`` turns these into the per-unit blocks
the coordination rules act on (``coord_target: shared_trunk``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from einops import rearrange
from torch import Tensor


class SharedTokens:
    """One forward pass's shared tokens and, after backward, each stream's gradient on them."""

    def __init__(self, inputs: Tensor, tokens: Tensor) -> None:
        self.inputs = inputs  # x [B, T, D]
        self.tokens = tokens  # p [B, T, d], after the ReLU
        self.grads: dict[str, Tensor] = {}  # stream name -> u_s [B, T, d], filled by backward

    def view_for(self, name: str) -> Tensor:
        """The tokens as stream ``name`` reads them: the same values, a hook on the gradient."""
        view = self.tokens.view_as(self.tokens)
        grads = self.grads  # the hook holds the dict only, not this object (no reference cycle)

        def keep(grad: Tensor) -> None:
            grads[name] = grad

        view.register_hook(keep)
        return view

    @torch.no_grad()
    def stream_gradients(self, names: Iterable[str]) -> tuple[Tensor, ...]:
        """Per stream, the part of P's gradient that came through it: [d, D + 1] each (weight
        columns, then the bias), float32 or wider. One matrix product for all streams."""
        names = list(names)
        missing = [n for n in names if n not in self.grads]
        if missing:
            raise RuntimeError(f"no gradient from stream(s) {', '.join(missing)} on the shared "
                               "tokens: call backward() on a loss of this forward pass first")
        dtype = torch.promote_types(self.inputs.dtype, torch.float32)
        active = (self.tokens.detach() > 0).to(dtype)
        # [N, S*d]: every stream's gradient through the ReLU, side by side -> one GEMM
        u = torch.cat([self.grads[n].to(dtype) * active for n in names], dim=-1)
        u = rearrange(u, "b t c -> (b t) c")
        x = rearrange(self.inputs.detach().to(dtype), "b t D -> (b t) D")
        g = torch.cat([u.T @ x, u.sum(dim=0)[:, None]], dim=1)  # [S*d, D + 1]
        return tuple(g.chunk(len(names), dim=0))


__all__ = ["SharedTokens"]
