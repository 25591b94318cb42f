"""The verifier's view of a real run, through the market's endpoints (no Celery, no escrow): every sampled-style
check of an honest 2-stage run passes with the whole hidden-state tensor (stage 0) and the market's projections of
the logits (last stage); replicas come with their draw weight (reputation x stake) and each replay answer is signed
by its replica."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from sqlalchemy.orm import Session

from globai.dev.services import free_port
from globai.protocol.sketch import DEFAULT_K
from market.config import Settings
from market.db import Job, JobRun
from market.db.engine import make_engine, make_session_factory
from market.db.migrate import upgrade
from market.services.inference_source import InferenceWorkSource, MarketVerifierClient
from market.verifier.compare import DEFAULT_TOLERANCES
from market.verifier.disputes import ProjectedRows, check_claim
from tests.runtime.conftest import MODEL, SECRET, InProcessWorker, MarketServer, Requester, openai_client
from tests.runtime.test_runtime_failover import wait_finished

QUANTISED = MODEL + "-bf16-int4"


@pytest.fixture(scope="module")
def quantised_models(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding the tiny model with bfloat16 compute and int4 weights (its own manifest)."""
    from globai.models.importer import recast

    out = tmp_path_factory.mktemp("quantised")
    recast(tiny_model, out / QUANTISED, dtype="bfloat16", name=QUANTISED, weight_format="int4")
    return out


@pytest.fixture
def admin_market(  # type: ignore[no-untyped-def]
    request: pytest.FixtureRequest, tiny_model: Path, deployment: Any, anvil: Any, tmp_path: Path
):
    admin = Account.from_key(b"\x31" * 32)
    models_dir = tiny_model.parent
    if getattr(request, "param", MODEL) == QUANTISED:
        models_dir = request.getfixturevalue("quantised_models")
    settings = Settings(
        profile="test",
        database_url=f"sqlite:///{tmp_path / 'market.db'}",
        auth_secret=SECRET,  # type: ignore[arg-type]
        auth_domain="localhost",
        auth_uri="http://localhost",
        chain_id=31337,
        rpc_url=anvil.url,
        staking_vault_address=deployment.vault,
        job_escrow_address=deployment.escrow,
        token_address=deployment.token,
        models_dir=str(models_dir),
        blob_dir=str(tmp_path / "blobs"),
        stage_timeout_s=30.0,
        rate_limit_per_s=1000.0,
        rate_limit_burst=1000,
        admin_addresses=[admin.address],
    )
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    server = MarketServer(settings, free_port())
    server.start()
    try:
        yield server, admin
    finally:
        server.stop()


def record_job(engine: Any, admin: LocalAccount, model: str, run_ids: list[str]) -> str:
    """A completed inference job holding `run_ids` (no escrow): what the verifier's work source reads."""
    job_id = str(uuid.uuid4())
    with Session(engine) as s:
        s.add(
            Job(
                id=job_id,
                chain_job_id="0x" + keccak(text=job_id).hex(),
                requester=admin.address,
                kind="inference",
                model=model,
                spec={},
                spec_hash="0x" + "01" * 32,
                budget=1,
                price_per_unit=1,
                max_units=1,
                deadline=datetime.now(UTC) + timedelta(hours=1),
                status="completed",
                created_at=datetime.now(UTC),
            )
        )
        s.add_all(JobRun(run_id=run_id, job_id=job_id) for run_id in run_ids)
        s.commit()
    return job_id


def work_source(market: MarketServer, admin: LocalAccount, sessions: Any) -> InferenceWorkSource:
    """The verifier's view of the market's runs (its HTTP client signed in as admin)."""
    return InferenceWorkSource(
        sessions,
        MarketVerifierClient(market.url, admin),
        chain_id=31337,
        models_dir=Path(market.settings.models_dir),
        blob_dir=Path(market.settings.blob_dir),
    )


def check_replayed(source: InferenceWorkSource, job_id: str, part: Any, chunk: int, replica: str) -> Any:
    """The verifier's check of one committed chunk against `replica`'s replay (the whole tensor or projections the
    market kept), at the dtype's default tolerance."""
    signed, proof = source.commitment(job_id, part.work_key, chunk)
    return check_claim(
        signed,
        proof,
        source.replay(job_id, part, chunk, replica),
        DEFAULT_TOLERANCES[part.dtype],
        k=DEFAULT_K,
        expected_scope=part.scope,
        chunk_index=chunk,
        worker=part.worker,
        signed_root=part.signed_root,
        held=source.held(job_id, part, chunk),
    )


def route_through(coordinator: Any, primary: str, *standbys: str) -> Any:
    """Every route from now on: the whole model on `primary`, `standbys` its standbys (the planner still runs).
    Returns the original planner."""
    original = coordinator.plan

    def plan(served):  # type: ignore[no-untyped-def]
        live = {lnk.address: lnk for lnk in coordinator.links.live()}
        original(served)
        return [(live[primary], [live[s] for s in standbys])]

    coordinator.plan = plan
    return original


@pytest.mark.parametrize("admin_market", [MODEL, QUANTISED], indirect=True)
def test_honest_run_checks_whole_tensors_and_projections(
    admin_market,
    staked: list[LocalAccount],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Also for a quantised model (bfloat16 + int4 weights): its replicas replay in the same format (the manifest
    binds it) and every check of the honest run passes with that format's tolerance: nothing to slash."""
    market, admin = admin_market
    model = QUANTISED if (Path(market.settings.models_dir) / QUANTISED).is_dir() else MODEL
    layout = {staked[0]: "0:2", staked[1]: "2:4", staked[2]: "0:2", staked[3]: "2:4"}
    workers = [
        InProcessWorker.start(market, a, layers, tmp_path / f"c{i}", model=model)
        for i, (a, layers) in enumerate(layout.items())
    ]
    engine = make_engine(market.settings.database_url)
    sessions = make_session_factory(engine)
    try:
        market.wait_workers(4, timeout=120, model=model)
        requester = Requester(market, Account.from_key(b"\x78" * 32), model=model)
        done = requester.generate([[5, 9, 11, 3] * 9, [7, 1, 2] * 5], max_new_tokens=40)
        assert wait_finished(requester, done["id"])["status"] == "completed"
        job_id = record_job(engine, admin, requester.model, [done["id"]])
        source = work_source(market, admin, sessions)
        parts = source.parts(job_id)
        assert sorted(p.layer_start for p in parts) == [0, 2]
        assert source.violations(job_id) == []
        kinds = set()
        for part in parts:
            pool = [r for r in source.replicas(job_id, part) if r.address != part.worker]
            assert len(pool) == 1 and pool[0].weight > 0
            for chunk in part.chunk_indices:
                signed, proof = source.commitment(job_id, part.work_key, chunk)
                held = source.held(job_id, part, chunk)
                kinds.add(type(held).__name__)
                replayed = source.replay(job_id, part, chunk, pool[0].address)
                receipt = source.replay_evidence(job_id, part, chunk, pool[0].address)
                assert receipt.digest.startswith("0x") and receipt.signature.startswith("0x") and receipt.units > 0
                verdict = check_claim(
                    signed,
                    proof,
                    replayed,
                    DEFAULT_TOLERANCES[part.dtype],
                    k=DEFAULT_K,
                    expected_scope=part.scope,
                    chunk_index=chunk,
                    worker=part.worker,
                    signed_root=part.signed_root,
                    held=held,
                )
                assert verdict.ok, (part.layer_start, chunk, verdict)
                if isinstance(held, ProjectedRows):
                    assert verdict.metrics["projection_err"] is not None
                if isinstance(held, ProjectedRows) and model == MODEL:  # (a 1 % change is within bf16's tolerance)
                    # The same check fails for logits changed outside their top-k (what projections are for).
                    bad = held.rows + torch.randn_like(held.rows) * replayed.float().norm(dim=1, keepdim=True) * 0.01
                    assert not check_claim(
                        signed,
                        proof,
                        replayed,
                        DEFAULT_TOLERANCES[part.dtype],
                        k=DEFAULT_K,
                        expected_scope=part.scope,
                        chunk_index=chunk,
                        worker=part.worker,
                        signed_root=part.signed_root,
                        held=ProjectedRows(bad, held.seed),
                    ).ok
        assert kinds == {"Tensor", "ProjectedRows"}
        assert {p.dtype for p in parts} == {"bfloat16+int4" if model == QUANTISED else "float32"}
    finally:
        for w in workers:
            w.stop()
        engine.dispose()


def test_worker_that_sends_other_than_it_commits_is_caught_by_the_coordinator(
    admin_market,
    staked: list[LocalAccount],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The `unbound` cheat commits to its honest output and sends another (with a valid signed hash of what it
    sends): the coordinator finds the commitment contradicting the rows, keeps the evidence, fails the hop over
    to an honest worker (the text is still the model's) and the verifier sees a provable fault without a replay."""
    from globai.models.reference import generate_reference
    from globai.protocol.commitments import SignedCommitment, tensor_sha256
    from market.db.inference import StageViolation
    from worker.runtime.cheats import apply_cheat

    market, admin = admin_market
    cheat, honest = staked[4], staked[5]
    workers = [InProcessWorker.start(market, a, "0:4", tmp_path / f"c{i}") for i, a in enumerate((cheat, honest))]
    engine = make_engine(market.settings.database_url)
    try:
        market.wait_workers(2, timeout=120)
        apply_cheat(workers[0].daemon.server, "unbound:0")  # admitted (its join challenge answered): cheats from now
        coordinator = market.coordinator
        route_through(coordinator, cheat.address, honest.address)
        requester = Requester(market, Account.from_key(b"\x79" * 32))
        prompt = [[(3 * i) % 400 + 2 for i in range(36)]]
        done = requester.generate(prompt, max_new_tokens=40)
        assert wait_finished(requester, done["id"])["status"] == "completed"
        assert (
            done["tokens"]
            == generate_reference(Path(market.settings.models_dir) / requester.model, torch.tensor(prompt), 40).tolist()
        )
        assert done["failovers"] == 1
        with Session(engine) as s:
            violations = s.query(StageViolation).filter_by(run_id=done["id"]).all()
        assert [v.worker_address for v in violations] == [cheat.address]
        evidence = violations[0].evidence
        signed = SignedCommitment.from_json(evidence["commitment"])
        assert signed.signer() == cheat.address and "0x" + signed.commitment.digest.hex() == violations[0].digest
        blob = market.coordinator.blobs.get(evidence["rows_blob"])
        from globai.protocol.tensors import decode_message

        rows = decode_message(blob, max_bytes=1 << 26).tensors[0]
        assert tensor_sha256(rows).hex() == evidence["received_sha256"][2:] != signed.commitment.output_sha256.hex()
        assert evidence["calls"] and all(c["signature"].startswith("0x") for c in evidence["calls"])
        # Isolation: the provable cheater's link is closed at once and the fault is on its record.
        closed_by = time.monotonic() + 5  # right after the run's evidence is saved
        while any(lnk.address == cheat.address for lnk in coordinator.links.live()):
            assert time.monotonic() < closed_by, "the cheater's link stayed open"
            time.sleep(0.02)
        from market.db import ReputationEvent, Worker

        with Session(engine) as s:
            wid = s.query(Worker.id).filter_by(address=cheat.address).scalar()
            kinds = [e.kind for e in s.query(ReputationEvent).filter_by(worker_id=wid)]
        assert kinds == ["fail"]
    finally:
        for w in workers:
            w.stop()
        engine.dispose()


def test_worker_committing_an_obsolete_sketch_is_refused_and_never_paid(
    admin_market,
    staked: list[LocalAccount],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The `sketch_v1` worker computes honestly but commits with the version-1 sketch (top-8, no projection: blind
    to changes outside the top-8). The coordinator refuses such commitments: an answer that completes a chunk (a
    decode step at position 63: the last stage answers one row per call) is not relayed and the hop fails over to
    an honest worker; a run whose commitments come only at close is answered but its root is refused. Either way
    no commitment or root of the worker is kept, so the verifier finds no part of it to pay; nothing is slashed
    and its record is untouched (the commitment is no lie, only too weak)."""
    from globai.models.reference import generate_reference
    from market.db import ReputationEvent, Worker
    from market.db.inference import StageCommitment, StageViolation
    from worker.runtime.cheats import apply_cheat

    market, admin = admin_market
    old, honest = staked[4], staked[5]
    workers = [InProcessWorker.start(market, a, "0:4", tmp_path / f"c{i}") for i, a in enumerate((old, honest))]
    engine = make_engine(market.settings.database_url)
    sessions = make_session_factory(engine)
    try:
        market.wait_workers(2, timeout=120)
        apply_cheat(workers[0].daemon.server, "sketch_v1:0")
        coordinator = market.coordinator
        route_through(coordinator, old.address, honest.address)
        requester = Requester(market, Account.from_key(b"\x7a" * 32))
        model_dir = Path(market.settings.models_dir) / requester.model
        runs = []
        for prompt, new, failovers in (([[(3 * i) % 400 + 2 for i in range(36)]], 40, 1), ([[5, 9, 11]], 4, 0)):
            done = requester.generate(prompt, max_new_tokens=new)
            assert wait_finished(requester, done["id"])["status"] == "completed"
            assert done["tokens"] == generate_reference(model_dir, torch.tensor(prompt), new).tolist()
            assert done["failovers"] == failovers  # the short run's commitments come at close, after the answer
            runs.append(done["id"])
        with Session(engine) as s:
            kept = {
                (c.run_id, c.worker_address) for c in s.query(StageCommitment).filter(StageCommitment.run_id.in_(runs))
            }
            assert kept == {(runs[0], honest.address)}  # the short run's only worker was the refused one
            assert s.query(StageViolation).filter(StageViolation.run_id.in_(runs)).count() == 0
            wid = s.query(Worker.id).filter_by(address=old.address).scalar()
            assert s.query(ReputationEvent).filter_by(worker_id=wid).count() == 0
        source = work_source(market, admin, sessions)
        job_id = record_job(engine, admin, requester.model, runs)
        assert [p.worker for p in source.parts(job_id)] == [honest.address]
        assert source.violations(job_id) == []
    finally:
        for w in workers:
            w.stop()
        engine.dispose()


UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def session_signature(messages: list[Any], layers: tuple[int, int], num_layers: int) -> tuple[Any, ...]:
    """What a worker can see of one session, as a tuple of fields a replay must share with ordinary work.

    Compared: op order (open, forward..., close); header key sets per op; the session id's format (a UUID4);
    the scope's keys, chain id, job id = keccak(session), task id = keccak("<session>/stage/<first layer>"),
    stage = first layer, a 32-byte nonce; per forward: `rid` an int, `step` 0, 1, 2, ... with `first_position` 0
    then prefill length + step - 1, `last_token_only` of the prefill and of the decode steps (on the last stage
    true, or false for a scoring prefill; false elsewhere), tensor count, dtypes and ranks, batch size, whether a
    mask is sent (exactly when the batch is padded), positions as `generate` computes them (prefill) and one past
    the last (decode), one token per decode step, whether there is a decode step at all."""
    from eth_utils import keccak

    from globai.models.reference import prefill_positions

    ops = [m.header["op"] for m in messages]
    opened, forwards, closed = messages[0], messages[1:-1], messages[-1]
    session = opened.header["session"]
    scope = opened.header["scope"]
    scope_ok = (
        scope["chain_id"] == 31337
        and scope["job_id"] == "0x" + keccak(text=session).hex()
        and scope["task_id"] == "0x" + keccak(text=f"{session}/stage/{layers[0]}").hex()
        and scope["stage"] == layers[0]
        and len(bytes.fromhex(scope["job_nonce"].removeprefix("0x"))) == 32
    )
    first = forwards[0]
    prefill = int(first.tensors[0].shape[1])
    batch = int(first.tensors[0].shape[0])
    mask = first.tensors[2] if len(first.tensors) > 2 else None
    padded = mask is not None and not bool(mask.all())
    want_pos = prefill_positions(mask if mask is not None else torch.ones(batch, prefill, dtype=torch.int64))
    calls_ok = torch.equal(first.tensors[1], want_pos) or torch.equal(first.tensors[1], want_pos[:1])
    last = first.tensors[1][:, -1:]
    for m in forwards[1:]:
        last = last + 1
        calls_ok = calls_ok and (
            int(m.tensors[0].shape[1]) == 1
            and int(m.tensors[0].shape[0]) == batch
            and len(m.tensors) == 2
            and torch.equal(m.tensors[1], last)
        )
    steps_ok = all(
        m.header["step"] == k and m.header["first_position"] == (0 if k == 0 else prefill + k - 1)
        for k, m in enumerate(forwards)
    )
    return (
        tuple(dict.fromkeys(ops)),
        ops[0] == "open" and ops[-1] == "close" and set(ops[1:-1]) == {"forward"},
        frozenset(opened.header),
        frozenset(scope),
        bool(UUID4.match(session)),
        scope_ok,
        frozenset(frozenset(m.header) for m in forwards),
        frozenset((type(m.header["rid"]).__name__, type(m.header["step"]).__name__) for m in forwards),
        (
            layers[1] == num_layers,
            first.header["last_token_only"],
            frozenset(m.header["last_token_only"] for m in forwards[1:]),
        ),
        frozenset(
            (len(m.tensors), tuple(str(t.dtype) for t in m.tensors), tuple(t.dim() for t in m.tensors))
            for m in forwards[1:]
        ),
        (len(first.tensors), tuple(str(t.dtype) for t in first.tensors), tuple(t.dim() for t in first.tensors)),
        batch,
        mask is not None,
        padded == (mask is not None),
        calls_ok,
        steps_ok,
        len(forwards) >= 2,
        frozenset(closed.header),
    )


def test_replays_look_like_ordinary_work_at_the_worker(
    admin_market,
    staked: list[LocalAccount],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """Every message each worker receives is captured; sessions of ordinary runs (a padded batch of 2, a single
    prompt, and prompt-scoring requests through the OpenAI API: echo + logprobs with max_tokens 0 and 3) and the
    verifier's replays of every committed chunk of both stages (scoring runs included) are reduced to
    `session_signature`: each replay's signature is one that ordinary work also has, and every check passes."""
    from globai.protocol.tensors import decode_message

    market, admin = admin_market
    layout = {staked[0]: "0:2", staked[1]: "2:4", staked[2]: "0:2", staked[3]: "2:4"}
    seen: dict[str, dict[str, list[Any]]] = {}  # worker address -> session -> messages in arrival order

    def capture(daemon: Any) -> None:  # before it connects: its join challenge is captured too
        server = daemon.server
        assert server is not None
        handle = server.handle_many
        box = seen.setdefault(daemon.config.account.address, {})

        def handle_many(raws):  # type: ignore[no-untyped-def]
            for raw in raws:
                m = decode_message(raw, max_bytes=1 << 30)
                if m.header.get("op") in ("open", "forward", "close"):
                    box.setdefault(m.header["session"], []).append(m)
            return handle(raws)

        server.handle_many = handle_many  # type: ignore[method-assign]

    workers = [
        InProcessWorker.start(market, a, layers, tmp_path / f"c{i}", setup=capture)
        for i, (a, layers) in enumerate(layout.items())
    ]
    engine = make_engine(market.settings.database_url)
    sessions = make_session_factory(engine)
    try:
        market.wait_workers(4, timeout=120)
        challenges = {address: dict(by_session) for address, by_session in seen.items()}  # the join challenges
        for by_session in seen.values():
            by_session.clear()
        requester = Requester(market, Account.from_key(b"\x78" * 32))
        runs = [
            requester.generate([[5, 9, 11, 3] * 9, [7, 1, 2] * 5], max_new_tokens=40)["id"],
            requester.generate([[4, 8, 15, 16, 23, 42] * 3], max_new_tokens=20)["id"],
        ]
        for run in runs:
            assert wait_finished(requester, run)["status"] == "completed"
        api = openai_client(market)  # answers once the run's evidence is saved
        scoring = []
        for max_tokens in (0, 3):  # scoring: a prefill answering every row's logits, then 0 or 2 decode steps
            scored = api.completions.create(
                model=MODEL, prompt="Once upon a time " * 6, max_tokens=max_tokens, echo=True, logprobs=1
            )
            assert scored.choices[0].logprobs.token_logprobs[0] is None
            scoring.append(scored.model_extra["globai"]["run_id"])
        with Session(engine) as s:  # the API's runs belong to the credit's job
            credit_job = s.get(JobRun, scoring[0]).job_id  # type: ignore[union-attr]
        job_id = record_job(engine, admin, MODEL, runs)
        source = work_source(market, admin, sessions)
        layers_of = {a.address: tuple(int(v) for v in spec.split(":")) for a, spec in layout.items()}
        replayed, sequences, scored_parts = 0, set(), 0
        for jid, part in [(j, p) for j in (job_id, credit_job) for p in source.parts(j)]:
            scored_parts += jid == credit_job
            replica = next(r for r in source.replicas(jid, part) if r.address != part.worker)
            for chunk in part.chunk_indices:
                verdict = check_replayed(source, jid, part, chunk, replica.address)
                assert verdict.ok, (part.layer_start, chunk, verdict)
                replayed += 1
                sequences.add((part.work_key, chunk >> 32))
        ordinary, replays = set(), []
        for address, by_session in seen.items():
            layers = layers_of[address]
            for session, messages in by_session.items():
                sig = session_signature(messages, layers, 4)  # type: ignore[arg-type]
                if session in runs + scoring:
                    ordinary.add(sig)
                else:
                    replays.append(sig)
        # One replay session per (part, sequence): it answers every chunk of that sequence.
        assert len(replays) == len(sequences) and replayed > 10 and scored_parts == 4  # 2 scoring runs x 2 stages
        assert {sig[12] for sig in ordinary} == {True, False}  # padded and unpadded batches were both seen
        odd = [sig for sig in replays if sig not in ordinary]
        assert not odd, odd[:1]
        # Each worker's join challenge was one session, shaped like ordinary work as well.
        assert all(len(by_session) == 1 for by_session in challenges.values()) and len(challenges) == 4
        joined = [session_signature(m, layers_of[a], 4) for a, b in challenges.items() for m in b.values()]  # type: ignore[arg-type]
        assert all(sig in ordinary for sig in joined), [sig for sig in joined if sig not in ordinary][:1]
    finally:
        for w in workers:
            w.stop()
        engine.dispose()


def test_span_no_replica_serves_whole_is_replayed_through_a_chain(
    admin_market,
    staked: list[LocalAccount],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The audited worker serves layers [0, 4) and nobody else does; two workers of other operators serve [0, 2)
    and [2, 4). The market offers that pair as a chain replica (`verify_replay.replica_chains`, the coordinator's
    routing), replays every chunk through it - one session id on both hops, each hop's own stage scope, the inner
    hop answering hidden states - and every check of the honest work passes on the last hop's logits. Without the
    second half there is no chain and no replica (the work would be held)."""
    from globai.protocol.tensors import decode_message

    market, admin = admin_market
    whole, first, second = staked[0], staked[1], staked[2]
    layout = {whole: "0:4", first: "0:2", second: "2:4"}
    workers = [InProcessWorker.start(market, a, spec, tmp_path / f"c{i}") for i, (a, spec) in enumerate(layout.items())]
    seen: dict[str, list[Any]] = {}  # hop address -> replay messages

    def capture(worker: InProcessWorker) -> None:
        server = worker.daemon.server
        assert server is not None
        handle = server.handle_many
        box = seen.setdefault(worker.daemon.config.account.address, [])

        def handle_many(raws):  # type: ignore[no-untyped-def]
            box.extend(decode_message(raw, max_bytes=1 << 30) for raw in raws)
            return handle(raws)

        server.handle_many = handle_many  # type: ignore[method-assign]

    engine = make_engine(market.settings.database_url)
    sessions = make_session_factory(engine)
    try:
        market.wait_workers(3, timeout=120)
        coordinator = market.coordinator
        original = coordinator.plan

        def plan(served):  # type: ignore[no-untyped-def]
            live = {lnk.address: lnk for lnk in coordinator.links.live()}
            original(served)
            return [(live[whole.address], [])]

        coordinator.plan = plan
        requester = Requester(market, Account.from_key(b"\x78" * 32))
        done = requester.generate([[5, 9, 11, 3] * 9, [7, 1, 2] * 5], max_new_tokens=30)
        assert wait_finished(requester, done["id"])["status"] == "completed"
        coordinator.plan = original
        for w in workers[1:]:
            capture(w)
        job_id = record_job(engine, admin, MODEL, [done["id"]])
        source = work_source(market, admin, sessions)
        (part,) = source.parts(job_id)
        assert (part.worker, part.layer_start, part.layer_end) == (whole.address, 0, 4)
        pool = source.replicas(job_id, part)
        assert [r.address for r in pool if not r.chain] == [whole.address]  # itself (the verifier leaves it out)
        (chain,) = [r for r in pool if r.chain]
        assert [(h[0], h[2], h[3]) for h in chain.chain] == [(first.address, 0, 2), (second.address, 2, 4)]
        for chunk in part.chunk_indices:
            assert isinstance(source.held(job_id, part, chunk), ProjectedRows)
            verdict = check_replayed(source, job_id, part, chunk, chain.ident)
            assert verdict.ok, (chunk, verdict)
            receipt = source.replay_evidence(job_id, part, chunk, chain.ident)
            assert receipt.units > 0 and receipt.digest == ""  # a chain's answer is evidence against no single hop
            assert UUID4.match(receipt.replay_id)  # the replay session: what its hops are paid for, once
        # On the wire: each replay is one session on both hops, scoped like the stages of one ordinary run.
        opens = {a: [m for m in msgs if m.header["op"] == "open"] for a, msgs in seen.items()}
        sequences = {c >> 32 for c in part.chunk_indices}  # one replay session per sampled sequence
        assert len(opens[first.address]) == len(opens[second.address]) == len(sequences)
        for a, b in zip(opens[first.address], opens[second.address], strict=True):
            session = a.header["session"]
            assert b.header["session"] == session and UUID4.match(session)
            assert a.header["scope"]["job_nonce"] == b.header["scope"]["job_nonce"]
            for m, stage in ((a, 0), (b, 2)):
                assert m.header["scope"]["task_id"] == "0x" + keccak(text=f"{session}/stage/{stage}").hex()
        forwards = [m for m in seen[first.address] if m.header["op"] == "forward"]
        assert forwards and not any(m.header["last_token_only"] for m in forwards)  # the inner hop: hidden states
        # No second half, no chain: the span has no replica at all.
        workers[2].stop()
        gone = time.monotonic() + 15
        while any(lnk.address == second.address for lnk in coordinator.links.live()):
            assert time.monotonic() < gone
            time.sleep(0.05)
        assert [r.address for r in source.replicas(job_id, part)] == [whole.address]
    finally:
        for w in workers:
            w.stop()
        engine.dispose()


def test_lying_hop_of_a_chain_replay_is_convicted_by_its_own_signed_answer(
    admin_market,
    staked: list[LocalAccount],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    """The audited worker serves [0, 4) alone; chains of half-range workers replay it. A first-half worker answers
    x1.10 (the `noise` cheat). The chain through it fails the honest claim; its replay answer names a transcript
    (every hop's input and signed answer), and `/v1/verification/rerun` re-runs each hop alone on an independent
    half-range worker with exactly the input it got: the liar's signed answer is contradicted (and its signature
    over it recovers to it: slashable evidence), its honest partner, fed the liar's answer, is reproduced."""
    import dataclasses

    from globai.protocol.signing import verify_signer
    from market.services.verification import judge_rerun
    from worker.runtime.cheats import apply_cheat

    market, admin = admin_market
    whole, liar, other_first, second, other_second = staked[:5]
    layout = {whole: "0:4", liar: "0:2", other_first: "0:2", second: "2:4", other_second: "2:4"}
    workers = [InProcessWorker.start(market, a, spec, tmp_path / f"c{i}") for i, (a, spec) in enumerate(layout.items())]
    engine = make_engine(market.settings.database_url)
    sessions = make_session_factory(engine)
    try:
        market.wait_workers(5, timeout=120)
        apply_cheat(workers[1].daemon.server, "noise:0")  # admitted: lies from now on
        coordinator = market.coordinator
        original = route_through(coordinator, whole.address)
        requester = Requester(market, Account.from_key(b"\x7b" * 32))
        done = requester.generate([[5, 9, 11, 3] * 9], max_new_tokens=8)
        assert wait_finished(requester, done["id"])["status"] == "completed"
        coordinator.plan = original
        job_id = record_job(engine, admin, MODEL, [done["id"]])
        source = work_source(market, admin, sessions)
        (part,) = source.parts(job_id)
        chain = next(r for r in source.replicas(job_id, part) if r.chain and r.chain[0][0] == liar.address)
        partner = chain.chain[1][0]
        chunk = part.chunk_indices[0]
        assert not check_replayed(source, job_id, part, chunk, chain.ident).ok  # the lying chain fails the honest claim
        receipt = source.replay_evidence(job_id, part, chunk, chain.ident)
        assert receipt.digest == "" and len(receipt.transcript) == 64
        tol = DEFAULT_TOLERANCES[part.dtype]
        for hop, (address, lo, hi) in enumerate((h[0], h[2], h[3]) for h in chain.chain):
            sub = dataclasses.replace(part, worker=address, layer_start=lo, layer_end=hi, stage=lo)
            (independent,) = [
                r for r in source.replicas(job_id, sub) if not r.chain and r.address not in (liar.address, partner)
            ]
            rerun = source.rerun_hop(job_id, part, receipt.transcript, hop, independent.address)
            assert rerun.input_bound and rerun.units > 0 and UUID4.match(rerun.replay_id)
            assert verify_signer(bytes.fromhex(rerun.digest[2:]), bytes.fromhex(rerun.signature[2:]), address)
            judged = judge_rerun(rerun, tol)
            assert judged is not None and judged.ok == (address != liar.address), (hop, judged)
    finally:
        for w in workers:
            w.stop()
        engine.dispose()
