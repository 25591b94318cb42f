"""Round bookkeeping through the API in one process (TestClient): an aggregator killed between committing
checkpoint v+1 and recording it resumes without losing or re-applying the round; bad uploads are refused."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.protocol.compression import encode_update, parse_codec, payload_digest
from globai.protocol.training import UpdateScope, sign_update
from market.api import create_app
from market.db import Task
from market.db.engine import make_engine, make_session_factory
from market.db.migrate import upgrade
from market.db.training import TrainingJob, TrainingRound
from market.training import jobs as training
from market.training.storage import storage_at
from tests.market.conftest import make_settings
from tests.training_e2e.conftest import OnChain, chain_settings, tiny_spec
from worker.training_client import TrainingClient


@pytest.fixture
def api(onchain: OnChain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setattr("market.api.routes.training.kick_aggregator", lambda *_: None)  # advance is driven here
    db_url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    settings = make_settings(db_url, training_dir=str(tmp_path / "training"), **chain_settings(onchain))
    with TestClient(create_app(settings, engine=engine)) as client:
        yield {"client": client, "chain": onchain, "engine": engine, "settings": settings, "tmp": tmp_path}
    engine.dispose()


def _post(api: dict[str, Any], corpus: bytes, **spec: Any) -> str:
    client, chain = api["client"], api["chain"]
    requester = Account.create()
    from globai.client import sign_in

    headers = {"Authorization": "Bearer " + sign_in(client, requester, ["requester"])}
    ds = client.post("/v1/training/datasets", content=corpus, headers=headers).json()
    body = {
        "spec": tiny_spec(**spec).model_dump(mode="json"),
        "dataset_sha256": ds["sha256"],
        "budget": "100000",
        "price_per_unit": "1",
        "verify_rate": 0.0,
        "deadline": (max(datetime.now(UTC), chain.now()) + timedelta(hours=1)).isoformat(),
    }
    created = client.post("/v1/training/jobs", json=body, headers=headers)
    assert created.status_code == 201, created.text
    chain.fund(created.json()["escrow"], requester)
    job_id = created.json()["job"]["id"]
    assert client.post(f"/v1/jobs/{job_id}/confirm-funding", headers=headers).status_code == 200
    return str(job_id)


def _worker(api: dict[str, Any], operator: str) -> TrainingClient:
    account = Account.create()
    api["chain"].stake(account, api["chain"].min_stake())
    # Each worker gets its own TestClient (its own Authorization header) over the same app.
    http = TestClient(api["client"].app)
    w = TrainingClient(http, account, cache_dir=api["tmp"] / operator, operator_id=operator)
    w.sign_in()
    w.register()
    return w


def test_killed_aggregator_resumes_exactly_once(
    api: dict[str, Any], corpus: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = _post(api, corpus, rounds=2, workers_per_round=2, inner_steps=3)
    for w in (_worker(api, "op-a"), _worker(api, "op-b")):
        assert w.run_once() is not None
    sessions = make_session_factory(api["engine"])
    storage = storage_at(api["settings"].training_dir)
    real = training._record_applied

    def killed(*args: Any, **kwargs: Any) -> str:
        raise RuntimeError("aggregator killed after the checkpoint commit")

    monkeypatch.setattr(training, "_record_applied", killed)
    with pytest.raises(RuntimeError):
        training.advance(sessions, storage, job_id, now=lambda: datetime.now(UTC))
    assert storage.checkpoints.versions(job_id) == [0, 1]
    committed = storage.checkpoints.manifest(job_id, 1)
    with Session(api["engine"]) as s:
        assert s.get(TrainingJob, job_id).version == 0  # type: ignore[union-attr]
        r0 = s.scalar(select(TrainingRound).where(TrainingRound.job_id == job_id, TrainingRound.round == 0))
        assert r0 is not None and r0.status == "aggregating" and len(r0.aggregated or []) == 2

    monkeypatch.setattr(training, "_record_applied", real)
    assert training.advance(sessions, storage, job_id, now=lambda: datetime.now(UTC)) == "open"
    assert training.advance(sessions, storage, job_id, now=lambda: datetime.now(UTC)) == "open"  # idempotent
    again = storage.checkpoints.manifest(job_id, 1)
    assert (again.sha256, again.created_at) == (committed.sha256, committed.created_at)  # not re-applied
    with Session(api["engine"]) as s:
        tj = s.get(TrainingJob, job_id)
        assert tj is not None and tj.version == 1 and tj.round == 1
        tasks = s.scalars(select(Task).where(Task.job_id == job_id)).all()
        assert sorted(t.payload["round"] for t in tasks) == [0, 0, 1, 1]  # round 1 opened once


def test_bad_updates_are_refused(api: dict[str, Any], corpus: bytes) -> None:
    job_id = _post(api, corpus, rounds=1, workers_per_round=2, inner_steps=2, compression="int8")
    w = _worker(api, "op-a")
    lease = w.claim()
    assert lease is not None
    task, p = lease["task"], lease["task"]["payload"]
    config, tensors = w.fetch_checkpoint(job_id, 0, p["base_manifest"])
    update = {n: t * 0 + 1e-3 for n, t in tensors.items()}
    scope = UpdateScope(
        chain_id=p["chain_id"],
        chain_job_id=p["chain_job_id"],
        task_id=task["id"],
        round=0,
        slot=p["slot"],
        job_nonce=p["job_nonce"],
        base_checkpoint=p["base_manifest"],
    )

    def send(payload: bytes, signature: str) -> Any:
        params = {"lease_id": lease["lease_id"], "signature": signature, "loss_start": 5.0, "loss_end": 4.0}
        return w.http.post(f"/v1/training/tasks/{task['id']}/update", params=params, content=payload)

    good = encode_update(update, parse_codec("int8"))
    sha = payload_digest(good)
    # Another key's signature, a signature over another task's scope, and the wrong codec are all refused.
    assert send(good, sign_update(scope, sha, Account.create())).status_code == 403
    other = UpdateScope(**{**scope.__dict__, "slot": 1 - p["slot"]})
    assert send(good, sign_update(other, sha, w.account)).status_code == 403
    wrong_codec = encode_update(update, parse_codec("none"))
    assert send(wrong_codec, sign_update(scope, payload_digest(wrong_codec), w.account)).status_code == 400
    assert send(b"garbage" * 10, sign_update(scope, payload_digest(b"garbage" * 10), w.account)).status_code == 400
    ok = send(good, sign_update(scope, sha, w.account))
    assert ok.status_code == 200 and ok.json()["accepted"] is True
    again = send(good, sign_update(scope, sha, w.account))
    assert again.status_code == 200 and again.json()["accepted"] is False
    # A worker without a lease on the job can't read its checkpoints or shards.
    stranger = _worker(api, "op-z")
    assert stranger.http.get(f"/v1/training/jobs/{job_id}/checkpoints/0").status_code == 403
    assert stranger.http.get(f"/v1/training/jobs/{job_id}/shards/0/0").status_code == 403


def test_dataset_upload_size_limit(onchain: OnChain, tmp_path: Path) -> None:
    from globai.client import sign_in

    db_url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    settings = make_settings(
        db_url,
        training_dir=str(tmp_path / "t"),
        training_max_dataset_bytes=4096,
        max_body_bytes=1024,
        **chain_settings(onchain),
    )
    try:
        with TestClient(create_app(settings, engine=engine)) as client:
            headers = {"Authorization": "Bearer " + sign_in(client, Account.create(), ["requester"])}
            ok = client.post("/v1/training/datasets", content=b"x" * 3000, headers=headers)  # > the general limit
            assert ok.status_code == 201 and ok.json()["bytes"] == 3000
            assert client.post("/v1/training/datasets", content=b"x" * 5000, headers=headers).status_code == 413
            assert client.post("/v1/training/datasets", content=b"", headers=headers).status_code == 400
            # Anonymous (or a forged token): refused before its body is read, whatever it declares.
            for bad in ({}, {"Authorization": "Bearer glb1.forged.token"}):
                refused = client.post("/v1/training/datasets", content=b"x" * 3000, headers=bad)
                assert refused.status_code == 401 and refused.json()["error"] == "AuthError"
            # Elsewhere the general limit still holds.
            assert client.post("/v1/auth/nonce", content=b"{" + b" " * 2000 + b"}").status_code == 413
    finally:
        engine.dispose()


def test_stalled_round_is_extended_then_closes_at_its_deadline(api: dict[str, Any], corpus: bytes) -> None:
    """Nobody answers before the deadline: the round is extended (not applied empty, no duplicate tasks); the
    update that comes in then closes it at the new deadline; past the job's deadline the job stops."""
    job_id = _post(
        api,
        corpus,
        rounds=2,
        workers_per_round=2,
        inner_steps=2,
        min_updates=1,
        round_timeout_s=30.0,
        compression="topk:0.1",
    )
    sessions = make_session_factory(api["engine"])
    storage = storage_at(api["settings"].training_dir)
    t0 = datetime.now(UTC)
    assert training.advance(sessions, storage, job_id, now=lambda: t0) == "open"
    assert training.advance(sessions, storage, job_id, now=lambda: t0 + timedelta(seconds=31)) == "stalled"
    with Session(api["engine"]) as s:
        r0 = s.scalar(select(TrainingRound).where(TrainingRound.job_id == job_id, TrainingRound.round == 0))
        assert r0 is not None and r0.reopened == 1 and r0.status == "open"
        assert len(s.scalars(select(Task).where(Task.job_id == job_id)).all()) == 2  # both slots still queued
    assert _worker(api, "op-a").run_once() is not None
    later = datetime.now(UTC) + timedelta(seconds=62)
    assert training.advance(sessions, storage, job_id, now=lambda: later) == "open"  # round 1 opened
    with Session(api["engine"]) as s:
        r0 = s.scalar(select(TrainingRound).where(TrainingRound.job_id == job_id, TrainingRound.round == 0))
        assert r0 is not None and r0.close_state == "closed_deadline" and len(r0.aggregated or []) == 1
    past = datetime.now(UTC) + timedelta(hours=2)
    assert training.advance(sessions, storage, job_id, now=lambda: past) == "failed"


def test_concurrent_aggregators_apply_a_round_once(api: dict[str, Any], corpus: bytes) -> None:
    """Several Celery processes may drive one job at once (kicks + beat): the round is applied and the next one
    opened exactly once."""
    import threading

    job_id = _post(api, corpus, rounds=2, workers_per_round=2, inner_steps=2)
    for w in (_worker(api, "op-a"), _worker(api, "op-b")):
        assert w.run_once() is not None
    sessions = make_session_factory(api["engine"])
    storage = storage_at(api["settings"].training_dir)
    results: list[str] = []
    threads = [
        threading.Thread(
            target=lambda: results.append(training.advance(sessions, storage, job_id, now=lambda: datetime.now(UTC)))
        )
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == ["open"] * 3
    with Session(api["engine"]) as s:
        tj = s.get(TrainingJob, job_id)
        assert tj is not None and tj.version == 1
        tasks = s.scalars(select(Task).where(Task.job_id == job_id)).all()
        assert sorted(t.payload["round"] for t in tasks) == [0, 0, 1, 1]
        rounds = s.scalars(select(TrainingRound).where(TrainingRound.job_id == job_id)).all()
        assert sorted((r.round, r.status) for r in rounds) == [(0, "applied"), (1, "open")]


def test_round_of_only_cheats_is_run_again(api: dict[str, Any], corpus: bytes) -> None:
    """W = 1 and its only update is caught by the replay (and the two dispute replays): the round is not applied;
    it reopens with a fresh task, and the honest redo (replayed by a third operator) is what gets applied."""
    job_id = _post(api, corpus, rounds=1, workers_per_round=1, inner_steps=2)
    with Session(api["engine"]) as s:
        tj = s.get(TrainingJob, job_id)
        assert tj is not None
        tj.verify_rate = 1.0
        s.commit()
    sessions = make_session_factory(api["engine"])
    storage = storage_at(api["settings"].training_dir)

    def step() -> str:
        return training.advance(sessions, storage, job_id, now=lambda: datetime.now(UTC))

    cheater = _worker(api, "op-evil")
    cheater.tamper = lambda p, u: {n: t * 3.0 for n, t in u.items()}
    honest_a, honest_b = _worker(api, "op-a"), _worker(api, "op-b")
    assert cheater.run_once() is not None and step() == "verifying"
    assert cheater.claim() is None  # its own replay goes to another operator
    replay = honest_a.run_once()
    assert replay is not None and replay.replay
    assert step() == "verifying"  # disputed: two more operators replay it
    for replica in (honest_b, _worker(api, "op-c")):
        assert replica.run_once() is not None
    assert step() == "open"  # caught 2-of-3: reopened, nothing applied
    assert storage.checkpoints.versions(job_id) == [0]
    redo = honest_a.run_once()
    assert redo is not None and not redo.replay and step() == "verifying"
    assert honest_b.run_once() is not None
    assert step() == "completed"
    with Session(api["engine"]) as s:
        r0 = s.scalar(select(TrainingRound).where(TrainingRound.job_id == job_id))
        assert r0 is not None and r0.reopened == 1 and r0.aggregated == [redo.task_id]
    with sessions() as s:
        verdicts = {v.worker: v.verdict for v in training.verify.training_verdicts(s, job_id)}
    assert verdicts == {cheater.account.address: "fail", honest_a.account.address: "pass"}


def test_late_update_is_applied_to_the_next_round_with_a_staleness_weight(api: dict[str, Any], corpus: bytes) -> None:
    """Asynchronous rounds (max_staleness 1): round 0 closes at quorum 1; the straggler keeps its lease, its round-0
    update arrives after the close, is accepted and goes into round 1's aggregate scaled by 1/2."""
    from globai.protocol.compression import decode_update
    from market.db.training import TrainingUpdate
    from market.training.storage import parameter_shapes

    job_id = _post(
        api,
        corpus,
        rounds=2,
        workers_per_round=2,
        inner_steps=2,
        compression="none",
        quorum=1,
        max_staleness=1,
        aggregation="mean",
        outer_lr=1.0,
        outer_momentum=0.0,
    )
    fast, slow = _worker(api, "op-a"), _worker(api, "op-b")
    straggling = slow.claim()
    assert straggling is not None and straggling["task"]["payload"]["round"] == 0
    assert fast.run_once() is not None
    sessions = make_session_factory(api["engine"])
    storage = storage_at(api["settings"].training_dir)
    now = lambda: datetime.now(UTC)  # noqa: E731
    assert training.advance(sessions, storage, job_id, now=now) == "open"  # round 0 applied (1 update), round 1 open
    late = slow.run_task(straggling)  # after its round closed: still accepted
    assert late.accepted and late.round == 0
    assert fast.run_once() is not None  # round 1
    assert training.advance(sessions, storage, job_id, now=now) == "completed"
    with Session(api["engine"]) as s:
        r1 = s.scalar(select(TrainingRound).where(TrainingRound.job_id == job_id, TrainingRound.round == 1))
        assert r1 is not None and late.task_id in (r1.aggregated or []) and len(r1.aggregated or []) == 2
        rows = {u.task_id: u for u in s.scalars(select(TrainingUpdate).where(TrainingUpdate.job_id == job_id))}
        assert rows[late.task_id].aggregated
        fresh = next(u for t, u in rows.items() if u.round == 1)
    v1, v2 = storage.checkpoints.load(job_id, 1), storage.checkpoints.load(job_id, 2)
    shapes = parameter_shapes(v1.manifest.config)
    codec = parse_codec("none")
    a1 = decode_update(storage.updates.get(fresh.payload_sha256), shapes, codec)
    b0 = decode_update(storage.updates.get(rows[late.task_id].payload_sha256), shapes, codec)
    assert v2.manifest.metrics["late_updates"] == 1.0
    for name in shapes:  # θ2 = θ1 − mean(a1, b0 / (1 + 1))
        expected = v1.params[name] - (a1[name] + 0.5 * b0[name]) / 2
        assert torch.allclose(v2.params[name], expected, atol=1e-6), name
