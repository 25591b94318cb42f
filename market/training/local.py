"""Run a whole training job in one process through the *distributed* path, for tests, the bench and demos.

Each task goes through what the market does for real, minus the network: load checkpoint v from the store,
call the worker's inner loop (injected, so the market package does not import the worker), compress and encode
the update to wire bytes, decode and validate it, decide the round on a simulated clock, aggregate and commit
v+1 with `apply_round`. Leasing, signatures and Celery are wired elsewhere; they only change who calls these
functions.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch

from globai.protocol.compression import decode_update, encode_update, shapes_of
from market.training.checkpoints import CheckpointStore, apply_round
from market.training.data import prepare, shard_for
from market.training.model import evaluate_loss, initial_checkpoint
from market.training.rounds import RoundState, Submission, decide_round
from market.training.spec import TrainingJobSpec, task_seed

Tensors = dict[str, torch.Tensor]


class InnerFn(Protocol):
    """The signature of `worker.training.run_inner_steps`."""

    def __call__(
        self,
        checkpoint_tensors: Mapping[str, torch.Tensor],
        config: Mapping[str, Any],
        shard_tokens: torch.Tensor,
        H: int,
        lr: float,
        seed: int,
        *,
        batch_size: int = ...,
        weight_decay: float = ...,
        grad_clip: float | None = ...,
    ) -> tuple[Tensors, Any]: ...


#: (round, slot, honest update) → what that worker actually sends; for adversarial tests.
Tamper = Callable[[int, int, Tensors], Tensors]


@dataclass
class LocalJobResult:
    eval_loss: list[float]  # before round 0, then after each round
    worker_loss: list[float]  # mean over a round's accepted tasks of their last-step loss
    round_states: list[RoundState]
    bytes_up: int  # encoded updates sent by workers
    bytes_down: int  # fp32 checkpoints fetched by workers
    updates_per_round: list[int] = field(default_factory=list)


def run_local_job(
    spec: TrainingJobSpec,
    corpus: bytes,
    store: CheckpointStore,
    job_id: str,
    inner: InnerFn,
    *,
    dropped: Collection[tuple[int, int]] = (),
    tamper: Tamper | None = None,
    evaluate: bool = True,
) -> LocalJobResult:
    """Run (or resume) all rounds of ``spec``; ``dropped`` (round, slot) tasks never submit (worker
    killed)."""
    config, params0 = initial_checkpoint(spec)
    store.init_job(job_id, config, params0)
    data = prepare(spec, corpus)
    codec = spec.codec
    result = LocalJobResult([], [], [], 0, 0)
    if evaluate and len(data.eval):
        result.eval_loss.append(evaluate_loss(config, store.load(job_id, 0).params, data.eval))
    first_round = store.manifest(job_id).version  # resume after the last committed round
    for r in range(first_round, spec.rounds):
        ckpt = store.load(job_id, r)
        expected = shapes_of(ckpt.params)
        payloads: dict[int, bytes] = {}
        subs: list[Submission] = []
        losses: dict[int, float] = {}
        for slot in range(spec.workers_per_round):
            if (r, slot) in dropped:
                continue
            result.bytes_down += sum(t.numel() * 4 for t in ckpt.params.values())
            update, metrics = inner(
                ckpt.params,
                ckpt.manifest.config,
                shard_for(data, spec, r, slot),
                spec.inner_steps,
                spec.inner_lr,
                task_seed(spec, r, slot),
                batch_size=spec.batch_size,
                weight_decay=spec.inner_weight_decay,
                grad_clip=spec.grad_clip,
            )
            if tamper is not None:
                update = tamper(r, slot, update)
            payloads[slot] = encode_update(update, codec)
            result.bytes_up += len(payloads[slot])
            losses[slot] = float(getattr(metrics, "loss_end", float("nan")))
            # Simulated clock: slot s answers at t = s + 1, well inside the deadline.
            subs.append(Submission(slot, f"{job_id}/{r}/{slot}", received_at=float(slot + 1)))
        decide = partial(
            decide_round,
            workers=spec.workers_per_round,
            quorum=spec.effective_quorum,
            min_updates=spec.min_updates,
            deadline=spec.round_timeout_s,
        )
        decision = decide(subs, now=max((s.received_at for s in subs), default=0.0))
        if not decision.closed:
            decision = decide(subs, now=spec.round_timeout_s)  # nobody else is coming: wait out the deadline
        result.round_states.append(decision.state)
        if not decision.closed:
            raise RuntimeError(f"round {r} stalled: {len(decision.accepted)} updates < min_updates")
        updates = [decode_update(payloads[s.slot], expected, codec) for s in decision.accepted]
        accepted_losses = [losses[s.slot] for s in decision.accepted]
        metrics_out = {"worker_loss_end": sum(accepted_losses) / len(accepted_losses)}
        apply_round(store, job_id, r, updates, spec=spec, metrics=metrics_out)
        result.worker_loss.append(metrics_out["worker_loss_end"])
        result.updates_per_round.append(len(updates))
        if evaluate and len(data.eval):
            result.eval_loss.append(evaluate_loss(config, store.load(job_id, r + 1).params, data.eval))
    return result
