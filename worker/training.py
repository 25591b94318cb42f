"""Worker side of a training task: H local AdamW steps from checkpoint v on a data shard → pseudo-gradient.

A task is deterministic given (checkpoint tensors, model config, shard windows, H, lr, seed, batch size,
weight decay, clipping): the seed fixes which shard rows each step trains on, and deterministic algorithms are
on while it runs, so a replica re-running a sampled task gets the same update (up to float reduction order
across thread counts, which the verifier's tolerance absorbs).

The market sends the checkpoint and the shard; the worker returns ``θ_v − θ_after`` (compressed with
`globai.protocol.compression`) plus loss metrics. This module is self-contained on purpose: the worker does
not import `market`, only the shared `globai` protocol.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from globai.models.build import build_causal_lm

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class InnerMetrics:
    """What the worker reports besides the update. Losses are nats/token on the batch of that step."""

    loss_start: float  # step 1, before any update
    loss_end: float  # step H
    loss_mean: float
    steps: int
    tokens: int
    seconds: float


def batch_rows(n_rows: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """``[steps, batch_size]`` shard rows for each inner step, sampled with replacement from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_rows, (steps, batch_size), generator=g)


@contextlib.contextmanager
def _deterministic(num_threads: int | None) -> Iterator[None]:
    # These are process-wide switches: set them for the task and restore them afterwards.
    prev_det, prev_threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def run_inner_steps(
    checkpoint_tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    shard_tokens: torch.Tensor,
    H: int,
    lr: float,
    seed: int,
    *,
    batch_size: int = 8,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    num_threads: int | None = None,
) -> tuple[Tensors, InnerMetrics]:
    """Run H AdamW steps from ``checkpoint_tensors`` on ``shard_tokens`` (``[n, T+1]`` int64 windows).

    Returns the pseudo-gradient ``θ_v − θ_after`` (fp32, every trainable parameter) and `InnerMetrics`.
    The inner optimizer starts fresh each task (workers are stateless between rounds).
    """
    if shard_tokens.dim() != 2 or shard_tokens.shape[0] < 1 or shard_tokens.shape[1] < 2:
        raise ValueError("shard_tokens must be [n >= 1, T+1 >= 2] token windows")
    if H < 1:
        raise ValueError("H must be >= 1")
    started = time.perf_counter()
    with _deterministic(num_threads):
        torch.manual_seed(seed)
        model = build_causal_lm(config, checkpoint_tensors).train()
        start = {name: p.detach().clone() for name, p in model.named_parameters()}
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        rows = batch_rows(shard_tokens.shape[0], H, batch_size, seed)
        losses = []
        for step in range(H):
            batch = shard_tokens[rows[step]]
            logits = model(input_ids=batch[:, :-1]).logits
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            losses.append(float(loss.detach()))
        pseudo = {name: (start[name] - p.detach()).contiguous() for name, p in model.named_parameters()}
    metrics = InnerMetrics(
        loss_start=losses[0],
        loss_end=losses[-1],
        loss_mean=sum(losses) / len(losses),
        steps=H,
        tokens=H * batch_size * (shard_tokens.shape[1] - 1),
        seconds=time.perf_counter() - started,
    )
    return pseudo, metrics
