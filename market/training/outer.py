"""DiLoCo's outer optimizer: SGD with Nesterov momentum applied to the aggregated pseudo-gradient.

Same update as ``torch.optim.SGD(lr, momentum=mu, nesterov=True)`` with dampening 0 and the pseudo-gradient as
the gradient (the reference implementation uses that optimizer, so the two are checked against each other):

    buf ← mu · buf + g          (buf starts at 0, so the first buf is g)
    θ   ← θ − lr · (g + mu · buf)
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

Tensors = dict[str, torch.Tensor]


def nesterov_step(
    params: Mapping[str, torch.Tensor],
    momentum: Mapping[str, torch.Tensor] | None,
    pseudo_gradient: Mapping[str, torch.Tensor],
    lr: float,
    mu: float,
) -> tuple[Tensors, Tensors]:
    """Return (new params, new momentum buffers); inputs are not modified."""
    new_params: Tensors = {}
    new_momentum: Tensors = {}
    for name, p in params.items():
        g = pseudo_gradient[name].to(torch.float32)
        prev = momentum.get(name) if momentum else None
        # Same op order as torch.optim.SGD, so this matches it to the last bit, not just within rounding.
        buf = g.clone() if prev is None else prev.to(torch.float32).mul(mu).add(g)
        new_momentum[name] = buf
        new_params[name] = p.to(torch.float32).add(g.add(buf, alpha=mu), alpha=-lr)
    return new_params, new_momentum
