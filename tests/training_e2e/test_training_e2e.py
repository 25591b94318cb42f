"""A DiLoCo job through the whole market on real Anvil: REST posting and permit funding, staked workers leasing tasks
over HTTP, a real Celery aggregator over Redis, replays, on-chain settlement and slashing, the job audited from the
chain, the downloaded model loaded with transformers."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session
from transformers import LlamaForCausalLM

from globai.client import check
from market.db import SlashRecord, VerificationRun, WorkPart
from market.db.engine import make_engine
from market.training.export import open_model
from market.training.reference import reference_diloco
from tests.training_e2e.conftest import Market, run_workers, settle_and_audit, tiny_spec, train_until_done


def _download(requester: Any, job_id: str, dest: Path, key: bytes | None = None) -> LlamaForCausalLM:
    tar = check(requester.http.get(f"/v1/training/jobs/{job_id}/model")).content
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    if key is not None:  # sealed with the requester's key: decrypted here, client-side
        assert not (dest / "model.safetensors").exists()
        open_model(dest, key, job_id)
    return LlamaForCausalLM.from_pretrained(dest)


def test_two_workers_train_and_match_reference(market: Market, corpus: bytes, tmp_path: Path) -> None:
    spec = tiny_spec(rounds=3, workers_per_round=2, compression="none")
    requester = market.requester()
    job = requester.post_job(spec, corpus)
    clients = [market.worker("op-a", cache=tmp_path), market.worker("op-b", cache=tmp_path)]
    done = train_until_done(requester, job["id"], clients)
    losses = done["eval_loss"]
    assert len(losses) == spec.rounds + 1
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(r["updates"] == 2 and r["close_state"] == "closed_quorum" for r in done["per_round"])
    assert done["job_status"] in ("completed", "settled")  # settlement may already have run

    model = _download(requester, job["id"], tmp_path / "model")
    ref = reference_diloco(spec, corpus, evaluate=False)
    got = {n: p.detach() for n, p in model.named_parameters()}
    assert set(got) == set(ref.params)
    worst = max(float((got[n] - ref.params[n]).abs().max()) for n in got)
    assert worst < 1e-4, worst
    # Tensors are content-addressed: a worker that ran round r and r+1 fetched only the new checkpoint's tensors.
    assert sum(c.tensors_cached for c in clients) > 0 or sum(c.tensors_fetched for c in clients) > 0
    # Settled on chain: each worker credited price x its inner steps, and the audit from the chain passes.
    report = settle_and_audit(market, job)
    units = {c.account.address: 0 for c in clients}
    for r in report["records"]:
        units[r["payee"]] += int(r["units"])
    assert sum(units.values()) == spec.rounds * spec.workers_per_round * spec.inner_steps
    for c in clients:  # price: 1 wei per inner step
        assert market.chain.credited(c.account.address) == units[c.account.address] > 0


def test_killed_worker_round_closes_at_deadline(market: Market, corpus: bytes, tmp_path: Path) -> None:
    spec = tiny_spec(rounds=2, workers_per_round=2, min_updates=1, round_timeout_s=3.0, compression="int8")
    requester = market.requester()
    job = requester.post_job(spec, corpus)
    dead = market.worker("op-dead", cache=tmp_path)
    lease = dead.claim()  # ... and the worker dies holding it: no heartbeat, no result
    assert lease is not None and lease["task"]["payload"]["round"] == 0
    done = train_until_done(requester, job["id"], [market.worker("op-a", cache=tmp_path)])
    first = done["per_round"][0]
    assert first["close_state"] == "closed_deadline" and first["updates"] == 1
    assert done["eval_loss"][-1] < done["eval_loss"][0]
    # The dead worker's lease is gone with the round: its late result is refused.
    r = dead.http.post(f"/v1/tasks/{lease['task']['id']}/heartbeat", json={"lease_id": lease["lease_id"]})
    assert r.status_code == 409


def test_poisoned_update_is_caught_excluded_and_flagged(market: Market, corpus: bytes, tmp_path: Path) -> None:
    spec = tiny_spec(rounds=1, workers_per_round=3, compression="int8")
    requester = market.requester()
    job = requester.post_job(spec, corpus, verify_rate=1.0)

    def poison(payload: Any, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: t * -20.0 for n, t in update.items()}

    cheater = market.worker("op-evil", cache=tmp_path, tamper=poison)
    honest = [market.worker("op-a", cache=tmp_path), market.worker("op-b", cache=tmp_path)]
    # The cheater does one task and leaves; the honest workers do the rest, replays included.
    done = train_until_done(requester, job["id"], [cheater, *honest], max_tasks=[1, None, None])
    r0 = done["per_round"][0]
    assert r0["excluded"] == 1 and r0["updates"] == 2
    assert done["eval_loss"][-1] < done["eval_loss"][0]
    verdicts = check(requester.http.get(f"/v1/training/jobs/{job['id']}/verdicts")).json()
    by_worker = {v["worker"]: v for v in verdicts}
    bad = by_worker[cheater.account.address]
    assert bad["verdict"] == "fail" and not bad["aggregated"] and bad["replica"] in {h.account.address for h in honest}
    assert all(by_worker[h.account.address]["verdict"] == "pass" for h in honest)
    # Handed to settlement: the cheater's work unpaid, one pending slash with its signed digest as evidence.
    engine = make_engine(market.settings.database_url)
    try:
        with Session(engine) as s:
            slash = s.scalars(select(SlashRecord).where(SlashRecord.job_id == job["id"])).one()
            assert slash.worker == cheater.account.address and slash.evidence == bad["evidence_hash"]
            parts = s.scalars(select(WorkPart).where(WorkPart.job_id == job["id"])).all()
            assert {p.status for p in parts if p.worker == cheater.account.address} == {"unpaid_slashed"}
            assert {p.status for p in parts if p.worker != cheater.account.address} == {"paid"}
        # On chain: settled and audited, the honest workers credited, the cheater slashed and credited nothing.
        settle_and_audit(market, job)
        assert market.chain.credited(cheater.account.address) == 0
        assert all(market.chain.credited(h.account.address) > 0 for h in honest)
        stake = market.chain.min_stake()
        end = time.monotonic() + 30
        while market.chain.stake_of(cheater.account.address) == stake and time.monotonic() < end:
            time.sleep(0.25)
        assert market.chain.stake_of(cheater.account.address) == stake - market.settings.slash_amount_wei
        with Session(engine) as s:
            run = s.get(VerificationRun, job["id"])
            assert run is not None and run.status == "done"
    finally:
        engine.dispose()


def test_unsampled_poisoned_update_is_bounded_by_the_robust_mean(market: Market, corpus: bytes, tmp_path: Path) -> None:
    """Not replayed (verify_rate 0): the trimmed mean still keeps every coordinate of the applied pseudo-gradient
    inside the honest updates' range."""
    from globai.protocol.compression import decode_update
    from market.db.training import TrainingUpdate
    from market.training.storage import parameter_shapes, storage_at

    spec = tiny_spec(rounds=1, workers_per_round=3, compression="none", outer_momentum=0.9, outer_lr=0.7)
    requester = market.requester()
    job = requester.post_job(spec, corpus, verify_rate=0.0)
    cheater = market.worker("op-evil", cache=tmp_path, tamper=lambda p, u: {n: t * -20.0 for n, t in u.items()})
    workers = [cheater, market.worker("op-a", cache=tmp_path), market.worker("op-b", cache=tmp_path)]
    done = train_until_done(requester, job["id"], workers, max_tasks=[1, None, None])
    assert done["per_round"][0]["updates"] == 3  # it was aggregated ...
    storage = storage_at(market.settings.training_dir)
    v0, v1 = storage.checkpoints.load(job["id"], 0), storage.checkpoints.load(job["id"], 1)
    shapes = parameter_shapes(v0.manifest.config)
    engine = make_engine(market.settings.database_url)
    try:
        with Session(engine) as s:
            rows = s.scalars(select(TrainingUpdate).where(TrainingUpdate.job_id == job["id"])).all()
            updates = {u.worker: decode_update(storage.updates.get(u.payload_sha256), shapes) for u in rows}
    finally:
        engine.dispose()
    honest = [u for w, u in updates.items() if w != cheater.account.address]
    assert len(honest) == 2
    for name in shapes:  # ... but bounded: first outer step is θ1 = θ0 − lr (1 + μ) g
        g = (v0.params[name] - v1.params[name]) / (spec.outer_lr * (1 + spec.outer_momentum))
        lo = torch.minimum(honest[0][name], honest[1][name]) - 1e-6
        hi = torch.maximum(honest[0][name], honest[1][name]) + 1e-6
        assert bool(((g >= lo) & (g <= hi)).all()), name
    assert done["eval_loss"][-1] < done["eval_loss"][0]


def test_rollback_two_versions_then_train_on_and_download(market: Market, corpus: bytes, tmp_path: Path) -> None:
    """`job train rollback`: the open round restarts from a version two back, the next version's parent is it,
    later versions stay as history; the checkpoints are encrypted at rest with the requester's key, and the final
    model downloads sealed, decrypts client-side and loads with `from_pretrained`."""
    import secrets
    import threading

    from globai.protocol.aead import AeadError
    from market.training.storage import storage_at

    spec = tiny_spec(rounds=5, workers_per_round=2, inner_steps=3, compression="int8")
    requester = market.requester()
    key = secrets.token_bytes(32)
    job = requester.post_job(spec, corpus, checkpoint_key=key)
    jid = job["id"]
    stop = threading.Event()
    threads = run_workers([market.worker("op-a", cache=tmp_path), market.worker("op-b", cache=tmp_path)], stop)
    try:
        requester.wait(jid, lambda p: p["version"] >= 2)
        while True:  # 409 while the round is being closed/aggregated: retry
            p = requester.progress(jid)
            assert p["status"] == "running", p
            r = requester.http.post(f"/v1/training/jobs/{jid}/rollback", json={"version": p["version"] - 2})
            if r.status_code == 200:
                break
            assert r.status_code == 409, r.text
            time.sleep(0.05)
        rolled = r.json()
        done = requester.wait(jid, lambda p: p["status"] == "completed")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert rolled["round"] == rolled["version"] + 2
    assert done["per_round"][rolled["round"]]["reopened"] >= 1
    manifest = check(requester.http.get(f"/v1/training/jobs/{jid}/checkpoints/{rolled['round'] + 1}")).json()
    base = check(requester.http.get(f"/v1/training/jobs/{jid}/checkpoints/{rolled['version']}")).json()
    skipped = check(requester.http.get(f"/v1/training/jobs/{jid}/checkpoints/{rolled['round']}")).json()
    assert manifest["parent"] == base["sha256"] == rolled["base_manifest"] != skipped["sha256"]
    assert done["version"] == spec.rounds
    # At rest: every tensor of every version is sealed with the job's key; no plain copy exists.
    store = storage_at(market.settings.training_dir).checkpoints
    for v in range(spec.rounds + 1):
        for sha in store.manifest(jid, v).tensors.values():
            # (version 0 is the same init as other jobs of this module, which are stored in the clear)
            assert v == 0 or not (store.root / "tensors" / f"{sha}.safetensors").exists()
            sealed = next((store.root / "tensors").glob(f"{sha}.*.enc")).read_bytes()
            assert b"dtype" not in sealed[:200]  # no safetensors header in the clear
    with pytest.raises(AeadError):
        _download(requester, jid, tmp_path / "wrong", key=secrets.token_bytes(32))
    model = _download(requester, jid, tmp_path / "model", key=key)
    final = store.load(jid, spec.rounds).params
    assert all(torch.equal(p.detach(), final[n]) for n, p in model.named_parameters())
    assert model.config.num_hidden_layers == tiny_spec().model.config["num_hidden_layers"]  # type: ignore[union-attr]
    logits = model(torch.tensor([[256, 72, 105]])).logits
    assert bool(torch.isfinite(logits).all())
    # Bad rollbacks: to a version that does not exist, by someone else, after completion.
    assert requester.http.post(f"/v1/training/jobs/{jid}/rollback", json={"version": 99}).status_code in (400, 409)
    other = market.requester()
    assert other.http.post(f"/v1/training/jobs/{jid}/rollback", json={"version": 0}).status_code == 403
