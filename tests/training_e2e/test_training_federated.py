"""Federated training through the whole market on Anvil: three workers train on their own local files (never
uploaded), their clipped, noised updates are combined by secure aggregation, one worker crashes after sharing its
keys; the round still closes, the market never stores an individual update, the applied aggregate is the plain
sum of the survivors' contributions, and the DP accountant's ε is in the result."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from globai.protocol import secagg
from globai.protocol.compression import payload_digest
from market.db.engine import make_engine
from market.db.training import TrainingUpdate
from market.training.federated import fixed_point
from market.training.privacy import epsilon
from market.training.spec import FederatedSpec
from market.training.storage import parameter_shapes, storage_at
from tests.training_e2e.conftest import Market, settle_and_audit, tiny_spec, train_until_done


def test_federated_round_survives_a_dropout_and_stores_no_individual_update(
    market: Market, corpus: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the market's and the Celery aggregator's logs, at every level
    fed = FederatedSpec(clip_norm=0.5, noise_multiplier=0.8, delta=1e-5, phase_timeout_s=3.0)
    spec = tiny_spec(
        rounds=2,
        workers_per_round=3,
        inner_steps=4,
        aggregation="mean",
        outer_lr=1.0,
        outer_momentum=0.0,  # θ1 = θ0 − mean: the applied aggregate can be read back from the checkpoints
        federated=fed,
    )
    lines = corpus.splitlines(keepends=True)
    local = []
    for i in range(3):  # each worker's own file; the requester uploads only a held-out set
        path = tmp_path / f"local-{i}.txt"
        path.write_bytes(b"".join(lines[i * 100 : (i + 1) * 100]))
        local.append(path)
    requester = market.requester()
    job = requester.post_job(spec, b"".join(lines[300:]))
    workers = [market.worker(f"op-{i}", cache=tmp_path, local_data=local[i]) for i in range(3)]
    workers[2].crash_after = "shares"  # round 0: keys and sealed shares sent, then gone before its masked input
    done = train_until_done(requester, job["id"], workers, max_tasks=[None, None, 1])

    r0 = done["per_round"][0]
    assert r0["close_state"] == "closed_deadline" and r0["updates"] == 2, r0
    assert done["per_round"][1]["updates"] == 2
    # The DP accountant: ε per round and in the result (2 rounds of the Gaussian mechanism, σ = 0.8).
    privacy = done["privacy"]
    assert privacy["secure_aggregation"] and privacy["rounds_accounted"] == 2
    assert privacy["epsilon"] == pytest.approx(epsilon(0.8, 2, 1e-5)) and 0 < privacy["epsilon"] < 100
    assert done["per_round"][0]["epsilon"] < done["per_round"][1]["epsilon"] == privacy["epsilon"]

    # The applied aggregate is the plain sum of the two survivors' clipped, noised updates (mean × 2).
    storage = storage_at(market.settings.training_dir)
    v0, v1 = storage.checkpoints.load(job["id"], 0), storage.checkpoints.load(job["id"], 1)
    applied = secagg.flatten({n: (v0.params[n].double() - v1.params[n].double()) for n in v0.params}) * 2
    key = (job["id"], 0)
    survivors = [w.contributions[key] for w in workers[:2]]
    dropped = workers[2].contributions[key]
    expected = survivors[0] + survivors[1]
    assert float((applied - expected).abs().max()) < 1e-5
    assert float((applied - expected - dropped).abs().max()) > 1e-2  # the dropped worker's update is not in it

    # Nothing the market stored or logged holds an individual update: every received payload is masked
    # (uncorrelated with each contribution), and no file, DB page or log line contains one's bytes.
    bound, scale = fixed_point(spec)
    n = dropped.numel()
    individual = [*survivors, dropped] + [w.contributions[(job["id"], 1)] for w in workers[:2]]
    engine = make_engine(market.settings.database_url)
    try:
        with Session(engine) as s:
            rows = s.scalars(select(TrainingUpdate).where(TrainingUpdate.job_id == job["id"])).all()
            shas = [u.payload_sha256 for u in rows]
    finally:
        engine.dispose()
    assert len(shas) == 4  # two survivors x two rounds: the dropped worker sent no masked input
    for sha in shas:
        seen = secagg.decode_sum(secagg.decode_masked(storage.updates.get(sha), n), scale)
        for x in individual:
            corr = float(torch.corrcoef(torch.stack([seen, x]))[0, 1])
            assert abs(corr) < 0.05, corr
    needles = []
    for x in individual:
        wire = secagg.encode_masked(secagg.encode(x, scale, bound))
        needles += [wire[-4096 : -4096 + 48], x.to(torch.float32).numpy().tobytes()[:48], payload_digest(wire).encode()]
    stored = [p for p in Path(market.settings.training_dir).rglob("*") if p.is_file()]
    stored.append(Path(market.settings.database_url.removeprefix("sqlite:///")))
    assert len(stored) > 10
    for path in stored:
        data = path.read_bytes()
        assert not any(needle in data for needle in needles), path
    logs = caplog.text.encode()
    assert "federated round 0 closed_deadline" in caplog.text
    assert not any(needle in logs for needle in needles)
    # ... and the job is paid and audited like any other (the dropped worker did not deliver: not paid).
    settle_and_audit(market, job)
    assert market.chain.credited(workers[2].account.address) == 0
    assert all(market.chain.credited(w.account.address) > 0 for w in workers[:2])
    assert parameter_shapes(v0.manifest.config)  # the checkpoint is a real model of the job's config
