"""The cheating suite: every cheat is caught and slashed at the rate the sampling policy predicts; honest workers
with every drift source are never slashed. Real Redis, a real Celery worker, real Anvil."""

from __future__ import annotations

import math

import pytest
import torch

from globai.chain.deploy import GLB
from globai.protocol.sketch import DEFAULT_K
from market.services.verification import LOCALISE_ROUND, VerifierConfig
from market.verifier import sampling
from tests.verification.conftest import Harness, JobResult
from tests.verification.network import HONEST_DRIFTS, SimNetwork, SimWorker

LENGTHS = (64, 40, 32, 64, 20, 40)  # 6 sequences (the sampling unit), 2 + 2 + 1 + 2 + 1 + 2 = 10 chunks per part
CHEATS = (
    "perturbed_weights",
    "int8_weights",
    "bf16_instead_of_fp32",
    "skipped_layer",
    "identity_stage",
    "noise_x1.10",
    "replayed_commitment",
    "malformed_sketch",
    "unbound",  # commits to the honest output, sends another
    "outside_topk",  # changes only coordinates outside the sketch's top-k
    "sub_fp16",  # a change below the sketch's fp16 resolution
)
STRUCTURAL = ("replayed_commitment", "malformed_sketch", "unbound")  # decided from signed data, no vote

torch.set_num_threads(2)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def fund_gas(harness: Harness, *workers: SimWorker) -> None:
    for w in workers:
        harness.funder.client.rpc("anvil_setBalance", w.address, hex(10**20))


def stake(harness: Harness, worker: SimWorker, amount: int = 500 * GLB) -> None:
    fund_gas(harness, worker)
    harness.funder.stake(worker.account, amount)


def two_part_job(net: SimNetwork, cheater: SimWorker, honest: SimWorker, seed: int, forged_from: str | None = None):  # type: ignore[no-untyped-def]
    def build(job_id: str):  # type: ignore[no-untyped-def]
        inputs = net.stage_inputs(seed, LENGTHS)
        forged = net.scope(forged_from, f"{forged_from}/c") if forged_from else None
        return [
            net.do_work(job_id, cheater, inputs, work_key=f"{job_id}/c", forged_scope=forged),
            net.do_work(job_id, honest, net.stage_inputs(seed + 1, LENGTHS), work_key=f"{job_id}/h"),
        ]

    return build


def caught(result: JobResult, worker: str) -> bool:
    return result.slashed.get(worker) == "confirmed"


def predicted_catch(rate: float, cheated_sequences: int, collusion: float = 0.0) -> float:
    """Sequences are drawn independently, each with all its chunks: P(a sequence with a cheated chunk is drawn
    and its replica does not collude)."""
    return sampling.detection_probability(rate, 1.0, cheated_sequences, collusion)


def cheated_sequences(net: SimNetwork, worker: SimWorker, job_id: str) -> int:
    return len({c >> 32 for c in net.jobs[job_id][0].signed if SimNetwork._cheats_on(worker, job_id, c)})


@pytest.mark.parametrize("cheat", CHEATS)
def test_each_cheat_is_caught_and_slashed(cheat: str, harness: Harness) -> None:
    net = SimNetwork()
    cheater = net.add_worker("op-cheat", cheat)
    honest = [net.add_worker(f"op-{i}", drift=HONEST_DRIFTS[i]) for i in range(3)]
    stake(harness, cheater)
    results = []
    for n in range(3):
        forged_from = None
        if cheat == "replayed_commitment":
            forged_from = results[-1].job_id if results else "an-earlier-job"
        job = harness.job(net, two_part_job(net, cheater, honest[n % 3], seed=10 * n, forged_from=forged_from))
        results.extend(harness.wait([job]))
    for r in results:
        # Predicted: each of the 6 cheated sequences is replayed with the part's rate (>= 0.75 for this new worker).
        assert predicted_catch(r.rates[cheater.address], len(LENGTHS)) > 0.999
        assert caught(r, cheater.address), (cheat, r.checks)
        assert r.parts[cheater.address] == "unpaid_slashed"
        assert all(r.parts[h.address] == "paid" for h in honest if h.address in r.parts)
        assert set(r.slashed) == {cheater.address}  # the honest partner is never slashed
        assert r.report is not None and cheater.address not in {p["payee"] for p in r.report["payees"]}
        guilty = [c for c in r.checks if c.status == "fail" and c.round == 0]
        assert guilty and all(c.evidence.startswith("0x") for c in guilty)
    if cheat not in STRUCTURAL:
        # A tolerance mismatch is decided 2-of-3: the two extra replicas were asked and agreed.
        first = results[0]
        disputes = [c for c in first.checks if c.round > 0]
        assert disputes and all(c.status == "fail" for c in disputes)


def fixed_rate(p: float) -> VerifierConfig:
    """A policy whose rate is exactly p for everyone (no trust dynamics), to test the rate maths itself."""
    policy = sampling.SamplingPolicy(p_min=p, target_detection=1e-9, prior_bad=0.0, failure_weight=0.0)
    econ = sampling.Economics(cost=0.0, reward=1.0, slash=1.0)
    return VerifierConfig(policy=policy, economics=econ, sketch_k=DEFAULT_K, slash_amount=GLB)


def _binomial_ok(observed: int, probs: list[float]) -> tuple[bool, str]:
    mean = sum(probs)
    sd = math.sqrt(sum(p * (1 - p) for p in probs)) or 1e-9
    return abs(observed - mean) <= 4 * sd + 0.5, f"observed {observed}, predicted {mean:.2f} +- {sd:.2f}"


def test_fractional_cheater_caught_at_the_predicted_rate(harness: Harness) -> None:
    harness.configure(fixed_rate(0.3))
    net = SimNetwork(holds=False)  # commitments only (as for last-token logits): the sketch decides
    cheater = net.add_worker("op-cheat", "fraction_noise", cheat_fraction=0.25)
    honest = [net.add_worker(f"op-{i}") for i in range(3)]
    stake(harness, cheater, 400 * GLB)
    jobs = [harness.job(net, two_part_job(net, cheater, honest[n % 3], seed=100 + n)) for n in range(24)]
    results = harness.wait(jobs)
    probs = []
    for r in results:
        cheated = cheated_sequences(net, cheater, r.job_id)
        assert r.rates[cheater.address] == pytest.approx(0.3)
        probs.append(predicted_catch(0.3, cheated))
        if cheated == 0:
            assert not caught(r, cheater.address)  # never slashed for a job it did honestly
    observed = sum(caught(r, cheater.address) for r in results)
    ok, detail = _binomial_ok(observed, probs)
    assert ok, detail
    assert all(set(r.slashed) <= {cheater.address} for r in results)


def test_colluding_replica_only_shields_the_segments_it_checks(harness: Harness) -> None:
    harness.configure(fixed_rate(0.5))
    net = SimNetwork()
    cheater = net.add_worker("op-cheat", "noise_x1.10")
    colluder = net.add_worker("op-friend", "colluder", colludes_with=cheater.address)
    honest = [net.add_worker(f"op-{i}") for i in range(3)]
    stake(harness, cheater)
    jobs = [harness.job(net, two_part_job(net, cheater, honest[n % 3], seed=200 + n)) for n in range(10)]
    results = harness.wait(jobs)
    firsts = [c for r in results for c in r.checks if c.worker == cheater.address and c.round == 0]
    for c in firsts:  # each first replay fails the cheat exactly when the replica is not the colluder
        assert (c.status == "pass") == (c.replica == colluder.address), c
    # r = 1/4 of the eligible replicas collude, one replica per sequence: per job P(caught) = 1 - (1 - p (1 - r))^6.
    probs = [predicted_catch(0.5, len(LENGTHS), collusion=0.25) for _ in results]
    ok, detail = _binomial_ok(sum(caught(r, cheater.address) for r in results), probs)
    assert ok, detail
    shares = sum(c.replica == colluder.address for c in firsts) / max(len(firsts), 1)
    assert 0.05 < shares < 0.5  # chosen at random among the 4 eligible replicas


def test_honest_workers_are_never_slashed(harness: Harness) -> None:
    """>= 200 honest jobs, fp32 and bf16, every drift source, whole tensors and projections: the false-positive
    count is reported (and 0)."""
    # Whole tensors kept (hidden states) or only the market's projections of them (last-token logits).
    nets = {
        (dt, holds): SimNetwork(dt, holds=holds)
        for dt in (torch.float32, torch.bfloat16)
        for holds in (True, "projection")
    }
    workers = {
        key: [net.add_worker(f"op-{i}", drift=HONEST_DRIFTS[i]) for i in range(len(HONEST_DRIFTS))]
        for key, net in nets.items()
    }
    jobs = []
    lengths = [(40,), (33, 20), (48,), (64,), (20, 36)]  # small: 200 jobs stay affordable
    for n in range(200):
        dt = torch.bfloat16 if n % 4 == 3 else torch.float32
        key = (dt, "projection" if n % 8 in (2, 7) else True)
        net, ws = nets[key], workers[key]
        a, b = ws[n % len(ws)], ws[(n + 1 + n // len(ws)) % len(ws)]

        def build(job_id: str, net=net, a=a, b=b, n=n):  # type: ignore[no-untyped-def]
            shape = lengths[n % len(lengths)]
            return [
                net.do_work(job_id, a, net.stage_inputs(1000 + n, shape), work_key=f"{job_id}/a"),
                net.do_work(job_id, b, net.stage_inputs(5000 + n, shape), work_key=f"{job_id}/b"),
            ]

        jobs.append(harness.job(net, build))
    results = harness.wait(jobs, timeout=900)
    checks = [c for r in results for c in r.checks]
    false_fails = [c for c in checks if c.status == "fail"]
    slashes = [r for r in results if r.slashed]
    print(
        f"\nhonest jobs: {len(results)}, replayed chunks: {len(checks)}, "
        f"false failures: {len(false_fails)}, false slashes: {len(slashes)}"
    )
    assert not slashes and not false_fails, [(c.reason, c.metrics) for c in false_fails[:3]]
    assert all(set(r.parts.values()) == {"paid"} for r in results)
    assert len(checks) > 300


def test_redelivered_tasks_change_nothing(harness: Harness) -> None:
    """At-least-once delivery: every task run again after the job is done finds its work done."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from market.db import SlashRecord, VerificationCheck
    from market.tasks.settlement import settle_job
    from market.tasks.verification import finish_job, replay_check, slash_worker, verify_job
    from tests.settlement.support import iter_events

    net = SimNetwork()
    cheater = net.add_worker("op-cheat", "noise_x1.10")
    honest = [net.add_worker(f"op-{i}") for i in range(3)]
    stake(harness, cheater)
    (result,) = harness.wait([harness.job(net, two_part_job(net, cheater, honest[0], seed=300))])
    assert caught(result, cheater.address)
    with Session(harness.engine) as s:
        checks_before = s.scalar(select(func.count()).select_from(VerificationCheck))
        slash_id = s.scalar(select(SlashRecord.id).where(SlashRecord.job_id == result.job_id))
    for sig in (
        verify_job.s(result.job_id),
        replay_check.s(result.checks[0].id),
        finish_job.s(result.job_id),
        slash_worker.s(slash_id),
        settle_job.s(result.job_id),
    ):
        sig.apply_async().get(timeout=120)
    with Session(harness.engine) as s:
        assert s.scalar(select(func.count()).select_from(VerificationCheck)) == checks_before
    client, deployment = harness.funder.client, harness.funder.deployment
    slashed = [e for e in iter_events(client, deployment, "Slashed") if e.args["worker"] == cheater.address]
    settled = [e for e in iter_events(client, deployment, "JobSettled")]
    assert len(slashed) == 1 and len(settled) == 1


def test_repeated_guilt_bans_the_worker(harness: Harness) -> None:
    """Guilty in two jobs: slashed twice, banned (not eligible); an honest partner stays active."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from market.db import Worker
    from tests.settlement.support import register_worker

    net = SimNetwork()
    cheater = net.add_worker("op-cheat", "noise_x1.10")
    honest = [net.add_worker(f"op-{i}") for i in range(3)]
    stake(harness, cheater)
    with Session(harness.engine) as s:
        for w in (cheater, *honest):
            register_worker(s, w.address, w.operator)
    statuses = []
    for n in range(2):
        (r,) = harness.wait([harness.job(net, two_part_job(net, cheater, honest[n], seed=400 + n))])
        assert caught(r, cheater.address)
        with Session(harness.engine) as s:
            statuses.append(s.scalar(select(Worker.status).where(Worker.address == cheater.address)))
    assert statuses == ["active", "banned"]
    with Session(harness.engine) as s:
        rows = {w.address: w for w in s.scalars(select(Worker))}
        assert rows[cheater.address].eligible is False
        assert all(rows[h.address].status == "active" for h in honest)


def test_lazy_replica_that_loses_a_2_of_3_is_slashed(harness: Harness) -> None:
    """A replica that answers replays without doing the work fails honest workers' chunks; two replicas of other
    operators outvote it, the worker is cleared and paid, and the replica's signed answer slashes it."""
    harness.configure(fixed_rate(1.0))
    net = SimNetwork()
    lazy = net.add_worker("op-lazy", "lazy_replica")
    honest = [net.add_worker(f"op-{i}") for i in range(4)]
    stake(harness, lazy)

    def build(job_id: str, n: int):  # type: ignore[no-untyped-def]
        return [
            net.do_work(job_id, honest[n % 2], net.stage_inputs(600 + n, LENGTHS), work_key=f"{job_id}/a"),
            net.do_work(job_id, honest[2 + n % 2], net.stage_inputs(700 + n, LENGTHS), work_key=f"{job_id}/b"),
        ]

    jobs = [harness.job(net, lambda job_id, n=n: build(job_id, n)) for n in range(3)]
    results = harness.wait(jobs)
    asked = 0
    for r in results:
        firsts = [c for c in r.checks if c.round == 0]
        lazy_first = [c for c in firsts if c.replica == lazy.address]
        asked += len(lazy_first)
        assert all(c.status == "fail" and c.metrics.get("replica_evidence", "").startswith("0x") for c in lazy_first)
        assert set(r.slashed) == ({lazy.address} if lazy_first else set())
        if lazy_first:
            assert caught(r, lazy.address)
        assert all(status == "paid" for status in r.parts.values())  # the accused honest workers are cleared
        # Its outvoted replays are not paid; the honest replicas' replays (the dispute votes included) are.
        assert all((st == "unpaid_slashed") == (a == lazy.address) for a, _, st in r.replays), r.replays
    assert asked > 0  # 36 first replicas drawn (one per sequence) among 4 eligible ones


def test_honest_replicas_are_paid_for_their_replays(harness: Harness) -> None:
    """Every replay a check used is a work part of its replica (units = token positions it ran through the stage),
    settled from the job's escrow with the job's own work: the report carries a record per replay, the escrow
    credits each replica exactly those records, and the job's audit reconciles against the chain."""
    from market.audit.job import audit_job

    harness.configure(fixed_rate(1.0))
    net = SimNetwork()
    worker = net.add_worker("op-w")
    replicas = [net.add_worker(f"op-r{i}") for i in range(2)]
    for w in (worker, *replicas):
        stake(harness, w)
    inputs = net.stage_inputs(800, LENGTHS)
    job = harness.job(net, lambda job_id: [net.do_work(job_id, worker, inputs, work_key=f"{job_id}/w")])
    (r,) = harness.wait([job])
    assert r.parts == {worker.address: "paid"} and not r.slashed
    # Every chunk checked once, no dispute; each replay ran its sequence from position 0 to the chunk's end.
    ends = [min(32 * (c + 1), n) for n in LENGTHS for c in range(math.ceil(n / 32))]
    assert len(r.replays) == len(ends)
    assert {a for a, _, _ in r.replays} <= {x.address for x in replicas}
    assert all(st == "paid" and units > 0 for _, units, st in r.replays)
    assert sorted(units for _, units, _ in r.replays) == sorted(ends)
    assert r.report is not None
    price = GLB // 100
    records = [rec for rec in r.report["records"] if "/r/" in rec["task"]]
    assert len(records) == len(ends) and all(int(rec["amount"]) == price * rec["units"] for rec in records)
    escrow = harness.funder.c.escrow
    for replica in replicas:
        owed = sum(int(rec["amount"]) for rec in records if rec["payee"] == replica.address)
        assert int(harness.funder.client.call(escrow.functions.balanceOf(replica.address))) == owed
    assert sum(int(rec["amount"]) for rec in records) == price * sum(ends)
    result = audit_job(harness.funder.client, escrow, r.report)
    assert result.ok, result.reason


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_too_wide_to_keep_are_covered_by_projections(dtype: torch.dtype, harness: Harness) -> None:
    """Where the market keeps only its secret-seed projections of the sent rows (last-token logits), a change
    outside the sketch's top-k is still caught on every sampled chunk, and honest workers pass."""
    harness.configure(fixed_rate(1.0))
    net = SimNetwork(dtype, holds="projection")
    cheater = net.add_worker("op-cheat", "outside_topk")
    honest = [net.add_worker(f"op-{i}", drift=HONEST_DRIFTS[i]) for i in range(3)]
    stake(harness, cheater)
    results = harness.wait([harness.job(net, two_part_job(net, cheater, honest[n], seed=800 + n)) for n in range(2)])
    for r in results:
        assert caught(r, cheater.address) and set(r.slashed) == {cheater.address}
        firsts = [c for c in r.checks if c.round == 0]
        assert all(c.status == "fail" and "projection_err" in c.reason for c in firsts if c.worker == cheater.address)
        assert all(c.status == "pass" for c in firsts if c.worker != cheater.address)


def test_span_covered_only_by_half_range_replicas_is_checked_through_chains(harness: Harness) -> None:
    """Nobody else serves the audited stage whole; workers of other operators serve its two halves. Each check
    runs through a chain of a first-half and a second-half worker (Deliver 3): the honest worker is checked and
    paid (not held), every hop of every chain is paid for its replay, a cheater is outvoted 2-of-3 by three
    chains and slashed; with no second half there is no chain, and the work is held (unpaid_unchecked)."""
    harness.configure(fixed_rate(1.0))
    net, other = SimNetwork(), SimNetwork()  # one worker serves the stage whole in each: the other is no replica
    mid = (1 + 3) // 2
    honest = net.add_worker("op-w")
    cheater = other.add_worker("op-c", "noise_x1.10")
    halves = [net.add_worker(f"op-h{i}", layers=(1, mid) if i % 2 == 0 else (mid, 3)) for i in range(6)]
    other.workers.update({h.address: h for h in halves})
    for w in (honest, cheater, *halves):
        stake(harness, w)
    inputs = net.stage_inputs(900, LENGTHS)
    good = harness.job(net, lambda job_id: [net.do_work(job_id, honest, inputs, work_key=f"{job_id}/w")])
    bad = harness.job(other, lambda job_id: [other.do_work(job_id, cheater, inputs, work_key=f"{job_id}/c")])
    r_good, r_bad = harness.wait([good, bad])
    assert r_good.parts == {honest.address: "paid"} and not r_good.slashed
    firsts = [c for c in r_good.checks if c.round == 0]
    ends = [min(32 * (c + 1), n) for n in LENGTHS for c in range(math.ceil(n / 32))]
    assert len(firsts) == len(ends) and all(c.status == "pass" and len(c.metrics["chain"]) == 2 for c in firsts)
    # Both hops of each chain are paid for the positions they ran (the sequence up to the chunk's end, per hop).
    assert len(r_good.replays) == 2 * len(ends) and all(st == "paid" for _, _, st in r_good.replays)
    assert {a for a, _, _ in r_good.replays} <= {h.address for h in halves}
    assert sum(units for _, units, _ in r_good.replays) == 2 * sum(ends)
    assert r_bad.parts == {cheater.address: "unpaid_slashed"} and r_bad.slashed == {cheater.address: "confirmed"}
    assert any(c.round > 0 and c.status == "fail" and c.metrics.get("chain") for c in r_bad.checks)

    lonely = SimNetwork()
    alone = lonely.add_worker("op-w")
    lonely.add_worker("op-h", layers=(1, mid))  # half the span: no chain covers it
    (r_held,) = harness.wait(
        [harness.job(lonely, lambda job_id: [lonely.do_work(job_id, alone, inputs, work_key=f"{job_id}/w")])]
    )
    assert r_held.parts == {alone.address: "unpaid_unchecked"} and not r_held.replays
    assert {c.reason for c in r_held.checks} == {"no_replica"}


def test_lying_hop_of_a_losing_chain_is_localised_and_slashed(harness: Harness) -> None:
    """Nobody else serves the audited stage whole: its checks run through chains of half-range workers. One
    first-half worker answers without doing the work (x1.10 of its honest answer): the chain through it fails the
    honest worker's claim and loses the 2-of-3 to two honest chains. Each hop of the losing chain is then re-run
    alone, on exactly the input it received, by two half-range workers of other operators: the lying hop's own
    signed answer is contradicted by both and slashes it; its honest partner (fed the liar's answer) is reproduced
    by both and paid for its replay; the honest worker is paid; the re-runs are paid; the audit passes."""
    from market.audit.job import audit_job

    harness.configure(fixed_rate(1.0))
    net = SimNetwork()
    mid = (1 + 3) // 2
    honest = net.add_worker("op-w")
    halves = [net.add_worker(f"op-h{i}", layers=(1, mid) if i % 2 == 0 else (mid, 3)) for i in range(6)]
    liar, partner = halves[0], halves[1]  # paired into one chain (`SimNetwork.replicas`)
    liar.behaviour = "lazy_replica"
    liar.weight = partner.weight = 1e6  # the chain through them is drawn first for every sequence
    for w in (honest, *halves):
        stake(harness, w)
    inputs = net.stage_inputs(910, LENGTHS)
    (r,) = harness.wait(
        [harness.job(net, lambda job_id: [net.do_work(job_id, honest, inputs, work_key=f"{job_id}/w")])]
    )
    assert r.parts == {honest.address: "paid"}  # the accused worker is cleared
    assert r.slashed == {liar.address: "confirmed"}
    firsts = [c for c in r.checks if c.round == 0]
    assert firsts and all(c.status == "fail" and c.metrics["chain"][0][0] == liar.address for c in firsts)
    assert all("hop 0 contradicted" in c.metrics["localised"] for c in firsts)
    reruns = [c for c in r.checks if c.round >= LOCALISE_ROUND]
    assert len(reruns) == 2 * 2 * len(firsts)  # two re-runs of each of the two hops per lost segment
    assert all(c.status == ("fail" if c.worker == liar.address else "pass") for c in reruns)
    assert all(c.replica not in (liar.address, partner.address) for c in reruns)
    slash = next(c for c in reruns if c.worker == liar.address)
    assert slash.evidence.startswith("0x") and slash.metrics["evidence_signature"].startswith("0x")
    # Pay: the liar nothing; its honest partner its replays; the dispute chains and the re-runs theirs.
    by_worker: dict[str, set[str]] = {}
    for address, units, status in r.replays:
        assert units > 0
        by_worker.setdefault(address, set()).add(status)
    assert by_worker.pop(liar.address) == {"unpaid_slashed"}
    assert all(statuses == {"paid"} for statuses in by_worker.values()), by_worker
    assert partner.address in by_worker
    assert r.report is not None and liar.address not in {p["payee"] for p in r.report["payees"]}
    result = audit_job(harness.funder.client, harness.funder.c.escrow, r.report)
    assert result.ok, result.reason
