"""Single-process reference implementation of a job's DiLoCo run (same data, seeds and hyper-parameters).

Written independently of the worker and of the checkpoint store, with stock torch optimizers (AdamW inside,
SGD with Nesterov momentum outside), so the distributed path is checked against a second implementation rather
than against itself. It applies no compression: the distributed run with ``compression="none"`` must match it
to float precision, and with int8 / top-k must stay close.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from globai.models.build import build_causal_lm
from market.training.aggregation import aggregate
from market.training.data import prepare, shard_for
from market.training.model import evaluate_loss, initial_checkpoint, params_of
from market.training.spec import TrainingJobSpec, task_seed

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ReferenceResult:
    params: Tensors
    momentum: Tensors
    eval_loss: list[float]  # before round 0, then after each round


def _inner(model: torch.nn.Module, spec: TrainingJobSpec, shard: torch.Tensor, seed: int) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.inner_lr, weight_decay=spec.inner_weight_decay)
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, shard.shape[0], (spec.inner_steps, spec.batch_size), generator=g)
    for step in range(spec.inner_steps):
        batch = shard[rows[step]]
        logits = model(input_ids=batch[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()


def reference_diloco(spec: TrainingJobSpec, corpus: bytes, *, evaluate: bool = True) -> ReferenceResult:
    """Run all R rounds with all W workers in this process: final params, outer momentum, eval losses."""
    config, params = initial_checkpoint(spec)
    data = prepare(spec, corpus)
    outer_model = build_causal_lm(config, params)
    inner_model = build_causal_lm(config, params).train()
    outer = torch.optim.SGD(outer_model.parameters(), lr=spec.outer_lr, momentum=spec.outer_momentum, nesterov=True)
    losses = [evaluate_loss(config, params, data.eval)] if evaluate and len(data.eval) else []
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):
            for r in range(spec.rounds):
                start = params_of(outer_model)
                deltas = []
                for i in range(spec.workers_per_round):
                    inner_model.load_state_dict(start, strict=True)
                    _inner(inner_model, spec, shard_for(data, spec, r, i), task_seed(spec, r, i))
                    after = params_of(inner_model)
                    deltas.append({n: start[n] - after[n] for n in start})
                pseudo = aggregate(deltas, spec.aggregation, spec.trim_fraction)
                for name, p in outer_model.named_parameters():
                    p.grad = pseudo[name].clone()
                outer.step()
                if losses:
                    losses.append(evaluate_loss(config, params_of(outer_model), data.eval))
    finally:
        torch.use_deterministic_algorithms(prev_det)
    momentum = {n: outer.state[p]["momentum_buffer"].clone() for n, p in outer_model.named_parameters()}
    return ReferenceResult(params_of(outer_model), momentum, losses)
