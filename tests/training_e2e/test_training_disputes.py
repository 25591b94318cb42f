"""Training verification decides a disputed update 2-of-3 (issue 13, Deliver 7), through the API in one process
(TestClient, SQLite, the session Anvil) with real `TrainingClient` workers: a first replay that disagrees opens two
more replays on other operators; the loser's signed update is failed, unpaid and slashed."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from market.db import SlashRecord, Task, WorkPart
from market.db.engine import make_session_factory
from market.db.training import TrainingJob, TrainingUpdate
from market.settlement.payout import PAID, UNPAID_SLASHED
from market.training import jobs as training
from market.training.storage import storage_at
from tests.training_e2e.test_training_rounds_api import _post, _worker, api  # noqa: F401  (api: the fixture)


def _tampers_replays(p: Mapping[str, Any], u: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A lying (or lazy) replica: its replays claim a different update than the task gives."""
    return {n: t * 3.0 for n, t in u.items()} if p.get("replay_of") else u


def _setup(ctx: dict[str, Any], corpus: bytes) -> tuple[str, Any]:
    job_id = _post(ctx, corpus, rounds=1, workers_per_round=1, inner_steps=2)
    with Session(ctx["engine"]) as s:
        tj = s.get(TrainingJob, job_id)
        assert tj is not None
        tj.verify_rate = 1.0
        s.commit()
    sessions = make_session_factory(ctx["engine"])
    storage = storage_at(ctx["settings"].training_dir)

    def step() -> str:
        return training.advance(sessions, storage, job_id, now=lambda: datetime.now(UTC))

    return job_id, step


def test_a_lying_replica_is_outvoted_the_worker_is_paid_the_replica_slashed(
    api: dict[str, Any],  # noqa: F811
    corpus: bytes,
) -> None:
    job_id, step = _setup(api, corpus)
    worker = _worker(api, "op-a")
    liar = _worker(api, "op-liar")
    liar.tamper = _tampers_replays
    b, c = _worker(api, "op-b"), _worker(api, "op-c")
    done = worker.run_once()
    assert done is not None and not done.replay and step() == "verifying"
    first = liar.run_once()
    assert first is not None and first.replay
    assert step() == "verifying"  # disputed: two more replays queued, not decided on one replica's word
    assert worker.claim() is None  # the accused operator never replays its own update
    for replica in (b, c):
        outcome = replica.run_once()
        assert outcome is not None and outcome.replay
    assert step() == "completed"
    with Session(api["engine"]) as s:
        u = s.get(TrainingUpdate, done.task_id)
        assert u is not None and u.check == "pass" and u.aggregated
        assert u.check_metrics["outcome"] == "cleared"
        assert [v[1] for v in u.check_metrics["votes"]] == ["fail", "pass", "pass"]
        lied = s.get(TrainingUpdate, first.task_id)
        assert lied is not None and lied.check == "fail"
        parts = {p.worker: p.status for p in s.scalars(select(WorkPart).where(WorkPart.job_id == job_id))}
        assert parts[worker.account.address] == PAID
        assert parts[liar.account.address] == UNPAID_SLASHED
        assert parts[b.account.address] == PAID and parts[c.account.address] == PAID
        slashes = s.scalars(select(SlashRecord).where(SlashRecord.job_id == job_id)).all()
        assert [(r.worker, r.evidence) for r in slashes] == [(liar.account.address, lied.digest)]
        assert slashes[0].signature == lied.signature  # its own signed replay is the evidence
        assert slashes[0].finder in (b.account.address, c.account.address)


def test_a_real_cheat_is_guilty_2_of_3_and_slashed(
    api: dict[str, Any],  # noqa: F811
    corpus: bytes,
) -> None:
    job_id, step = _setup(api, corpus)
    cheater = _worker(api, "op-evil")
    cheater.tamper = lambda p, u: {n: t * 3.0 for n, t in u.items()}
    a, b, c = _worker(api, "op-a"), _worker(api, "op-b"), _worker(api, "op-c")
    done = cheater.run_once()
    assert done is not None and step() == "verifying"
    first = a.run_once()
    assert first is not None and first.replay and step() == "verifying"  # disputed
    assert cheater.claim() is None  # the accused operator never replays its own update
    again = a.run_once()  # the first replica's operator takes a dispute replay: its vote does not count twice
    assert again is not None and again.replay and step() == "verifying"
    second = b.run_once()
    assert second is not None and second.replay
    assert step() == "open"  # guilty as soon as an independent replica agrees with the first: runs again
    with Session(api["engine"]) as s:
        u = s.get(TrainingUpdate, done.task_id)
        assert u is not None and u.check == "fail" and u.check_metrics["outcome"] == "guilty"
        assert sorted(v[1] for v in u.check_metrics["votes"]) == ["fail", "fail", "void"]
        replays = s.scalars(select(TrainingUpdate).where(TrainingUpdate.replay_of == done.task_id)).all()
        assert len(replays) == 3 and all(r.check == "unchecked" for r in replays)  # no replica was outvoted
        disputes = [t for t in s.scalars(select(Task).where(Task.job_id == job_id)) if t.payload.get("dispute")]
        # the void slot was queued again for another operator, then cancelled with the verdict
        assert sorted(t.status for t in disputes) == ["cancelled", "submitted", "submitted"]
    redo = c.run_once()
    assert redo is not None and not redo.replay and step() == "verifying"
    assert b.run_once() is not None and step() == "completed"
    with Session(api["engine"]) as s:
        slashes = s.scalars(select(SlashRecord).where(SlashRecord.job_id == job_id)).all()
        assert [(r.worker, r.evidence) for r in slashes] == [(cheater.account.address, u.digest)]
        assert slashes[0].finder == a.account.address
        parts = {p.worker: p.status for p in s.scalars(select(WorkPart).where(WorkPart.job_id == job_id))}
        assert parts[cheater.account.address] == UNPAID_SLASHED
        assert all(parts[w.account.address] == PAID for w in (a, b, c))
