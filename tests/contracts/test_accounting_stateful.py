"""Random sequences of escrow and vault operations; after every step the token balances must equal what the
emitted events alone add up to (docs/chain.md, "Accounting identities"), and the contracts' views must match a
plain Python model of credits, open jobs and stakes.

Each example runs from an `evm_snapshot` and is reverted afterwards. CI (env CI set) runs 200 examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import hypothesis.strategies as st
from eth_utils import keccak
from hexbytes import HexBytes
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from globai.chain.deploy import GLB, DeployConfig
from globai.protocol.signing import sign_digest

from .conftest import Env, job_id_of
from .rawrpc import RawRpc, RpcError

CONFIG = DeployConfig()
NOT_FUNDED = "0x" + keccak(text="JobEscrowNotFunded(bytes32,uint8)")[:4].hex()
BPS = 10_000
ZERO = "0x" + "00" * 20

amounts = st.integers(min_value=1, max_value=500 * GLB)
picks = st.integers(min_value=0, max_value=2**16)
shares = st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=3)


@dataclass
class OpenJob:
    job_id: bytes
    requester: str
    amount: int
    deadline: int


@dataclass
class Model:
    jobs: list[OpenJob] = field(default_factory=list)
    closed: list[bytes] = field(default_factory=list)
    credits: dict[str, int] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    unbonding: dict[str, tuple[int, int]] = field(default_factory=dict)  # worker -> (amount, release time)

    def credit(self, account: str, amount: int) -> None:
        self.credits[account] = self.credits.get(account, 0) + amount


@dataclass
class EventTotals:
    """Running sums of the events seen so far (block range [start, last])."""

    funded: int = 0
    escrow_withdrawn: int = 0
    refunded: int = 0
    staked: int = 0
    vault_withdrawn: int = 0
    slashed: int = 0
    last_block: int = 0
    last_seen: tuple[int, int] = (0, -1)


def _split(total: int, weights: list[int]) -> list[int]:
    if sum(weights) == 0:
        return [0] * len(weights)
    parts = [total * w // sum(weights) for w in weights]
    return parts


def make_machine(env: Env) -> type[RuleBasedStateMachine]:
    accounts = env.anvil.accounts
    admin = env.admin
    requesters = [env.requester, env.requester2]
    workers = [env.worker, env.worker2, env.outsider]
    finder = env.finder
    # Raw batched JSON-RPC instead of ChainClient: a few hundred random sequences must run in minutes.
    rpc = RawRpc(env.anvil.url, env.client.chain_id)
    decoder = env.client
    escrow, vault, token = env.c.escrow, env.c.vault, env.c.token
    senders = [admin, *requesters, *workers, finder]

    def send(contract: Any, fn: str, *args: Any, sender: Any) -> None:
        receipt = rpc.send(contract, fn, list(args), sender)
        assert receipt["status"] == "0x1", f"{fn}{args} reverted"

    def now() -> int:
        return int(rpc.call("eth_getBlockByNumber", "latest", False)["timestamp"], 16)

    def warp(seconds: int) -> None:
        rpc.batch([("evm_increaseTime", [seconds]), ("evm_mine", [])])

    def uint(result: str) -> int:
        return int(result, 16)

    class Accounting(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.snapshot = rpc.call("evm_snapshot")
            rpc.load_nonces(senders)
            self.model = Model()
            head, escrow_balance, vault_balance = rpc.batch(
                [
                    ("eth_blockNumber", []),
                    RawRpc.eth_call(token, "balanceOf", [escrow.address]),
                    RawRpc.eth_call(token, "balanceOf", [vault.address]),
                ]
            )
            # Events up to the snapshot are in the base balances: count only those after it.
            self.totals = EventTotals(last_block=uint(head), last_seen=(uint(head), 2**63))
            self.base_escrow = uint(escrow_balance)
            self.base_vault = uint(vault_balance)
            self.counter = 0
            self.touched: set[str] = set()

        def teardown(self) -> None:
            assert rpc.call("evm_revert", self.snapshot)

        # --- escrow -------------------------------------------------------------------------------------------

        @rule(who=picks, amount=amounts, lifetime=st.integers(min_value=60, max_value=3 * 24 * 3600))
        def fund(self, who: int, amount: int, lifetime: int) -> None:
            requester = requesters[who % len(requesters)]
            self.counter += 1
            key = keccak(text=f"{self.snapshot}:{self.counter}")
            job_id = job_id_of(requester.address, key)
            deadline = now() + lifetime
            send(escrow, "fundJob", key, amount, keccak(job_id), deadline, sender=requester)
            self.model.jobs.append(OpenJob(job_id, requester.address, amount, deadline))

        def _staked(self, address: str) -> bool:
            return self.model.active.get(address, 0) > 0 or address in self.model.unbonding

        def _settlement(
            self, job: OpenJob, weights: list[int], fraction: int
        ) -> tuple[list[str], list[int], list[int], int, int]:
            """(payees, amounts sent, amounts credited, fee, requester's rest): payees without stake forfeit."""
            budget = job.amount * BPS // (BPS + CONFIG.fee_bps) * fraction // 100
            pay = _split(budget, weights)
            payees = [workers[i % len(workers)].address for i in range(len(pay))]
            credited = [v if self._staked(p) else 0 for p, v in zip(payees, pay, strict=True)]
            paid = sum(credited)
            fee = paid * CONFIG.fee_bps // BPS
            return payees, pay, credited, fee, job.amount - paid - fee

        def _apply_settlement(
            self, job: OpenJob, payees: list[str], pay: list[int], credited: list[int], fee: int, rest: int
        ) -> None:
            for payee, value in zip(payees, credited, strict=True):
                self.model.credit(payee, value)
            self.model.credit(admin.address, fee)
            self.model.credit(job.requester, rest)
            self.touched.update([*payees, admin.address, job.requester])
            self.model.jobs.remove(job)
            self.model.closed.append(job.job_id)

        @precondition(lambda self: self.model.jobs)
        @rule(pick=picks, weights=shares, fraction=st.integers(min_value=0, max_value=100))
        def settle(self, pick: int, weights: list[int], fraction: int) -> None:
            job = self.model.jobs[pick % len(self.model.jobs)]
            plan = self._settlement(job, weights, fraction)
            send(escrow, "settle", job.job_id, plan[0], plan[1], keccak(b"r" + job.job_id), sender=admin)
            self._apply_settlement(job, *plan)

        @precondition(lambda self: len(self.model.jobs) >= 2)
        @rule(count=st.integers(min_value=2, max_value=4), weights=shares, fraction=st.integers(0, 100))
        def settle_batch(self, count: int, weights: list[int], fraction: int) -> None:
            jobs = self.model.jobs[:count]
            plans = [self._settlement(job, weights, fraction) for job in jobs]
            items = [(j.job_id, p[0], p[1], keccak(b"r" + j.job_id)) for j, p in zip(jobs, plans, strict=True)]
            send(escrow, "settleBatch", items, sender=admin)
            for job, plan in zip(jobs, plans, strict=True):
                self._apply_settlement(job, *plan)

        @precondition(lambda self: self.model.jobs)
        @rule(pick=picks)
        def refund(self, pick: int) -> None:
            job = self.model.jobs[pick % len(self.model.jobs)]
            current = now()
            if current <= job.deadline:
                warp(job.deadline - current + 1)
            send(escrow, "refund", job.job_id, sender=finder)  # anyone may trigger it
            self.model.jobs.remove(job)
            self.model.closed.append(job.job_id)

        @precondition(lambda self: self.model.closed)
        @rule(pick=picks)
        def closed_jobs_stay_closed(self, pick: int) -> None:
            job_id = self.model.closed[pick % len(self.model.closed)]
            call = RawRpc.eth_call(
                escrow, "settle", [job_id, [workers[0].address], [1], keccak(b"again")], admin.address
            )
            try:
                rpc.batch([call])
            except RpcError as exc:
                assert NOT_FUNDED in str(exc), exc
            else:
                raise AssertionError("a closed job settled again")

        @precondition(lambda self: any(v > 0 for v in self.model.credits.values()))
        @rule(pick=picks)
        def withdraw_credit(self, pick: int) -> None:
            holders = sorted(a for a, v in self.model.credits.items() if v > 0)
            holder = holders[pick % len(holders)]
            account = next(a for a in accounts if a.address == holder)
            send(escrow, "withdraw", sender=account)
            self.model.credits[holder] = 0
            self.touched.add(holder)

        # --- vault --------------------------------------------------------------------------------------------

        @rule(who=picks, amount=amounts)
        def stake(self, who: int, amount: int) -> None:
            worker = workers[who % len(workers)]
            send(vault, "stake", amount, sender=worker)
            self.touched.add(worker.address)
            self.model.active[worker.address] = self.model.active.get(worker.address, 0) + amount

        @precondition(lambda self: any(v > 0 for v in self.model.active.values()))
        @rule(pick=picks, percent=st.integers(min_value=1, max_value=100))
        def request_unstake(self, pick: int, percent: int) -> None:
            stakers = sorted(a for a, v in self.model.active.items() if v > 0)
            address = stakers[pick % len(stakers)]
            amount = max(1, self.model.active[address] * percent // 100)
            send(vault, "requestUnstake", amount, sender=next(w for w in workers if w.address == address))
            self.touched.add(address)
            self.model.active[address] -= amount
            pending = self.model.unbonding.get(address, (0, 0))[0]
            self.model.unbonding[address] = (pending + amount, now() + CONFIG.unbonding_period)

        @precondition(lambda self: any(v > 0 for v in self.model.active.values()) or self.model.unbonding)
        @rule(pick=picks, amount=amounts, with_requester=st.booleans(), with_finder=st.booleans())
        def slash(self, pick: int, amount: int, with_requester: bool, with_finder: bool) -> None:
            candidates = sorted(set(self.model.active) | set(self.model.unbonding))
            worker = candidates[pick % len(candidates)]
            active = self.model.active.get(worker, 0)
            pending, release = self.model.unbonding.get(worker, (0, 0))
            if active + pending == 0:
                return
            self.counter += 1
            evidence = keccak(text=f"{self.snapshot}:evidence:{self.counter}")  # each signed digest slashes once
            account = next(w for w in workers if w.address == worker)
            args = (
                worker,
                amount,
                keccak(b"job"),
                evidence,
                sign_digest(account, evidence),
                requesters[0].address if with_requester else ZERO,
                finder.address if with_finder else ZERO,
            )
            send(vault, "slash", *args, sender=admin)
            self.touched.add(worker)
            from_active = min(amount, active)
            from_pending = min(amount - from_active, pending)
            self.model.active[worker] = active - from_active
            if pending - from_pending:
                self.model.unbonding[worker] = (pending - from_pending, release)
            else:
                self.model.unbonding.pop(worker, None)

        @precondition(lambda self: self.model.unbonding)
        @rule(pick=picks)
        def withdraw_stake(self, pick: int) -> None:
            address = sorted(self.model.unbonding)[pick % len(self.model.unbonding)]
            _, release = self.model.unbonding.pop(address)
            current = now()
            if current < release:
                warp(release - current)
            send(vault, "withdraw", sender=next(w for w in workers if w.address == address))
            self.touched.add(address)

        # --- invariants ---------------------------------------------------------------------------------------

        @invariant()
        def balances_match_events_and_model(self) -> None:
            totals, model = self.totals, self.model
            touched = sorted(self.touched)
            self.touched.clear()
            reads: list[tuple[str, list[Any]]] = [
                (
                    "eth_getLogs",
                    [{"address": [escrow.address, vault.address], "fromBlock": hex(totals.last_block)}],
                ),
                RawRpc.eth_call(token, "balanceOf", [escrow.address]),
                RawRpc.eth_call(token, "balanceOf", [vault.address]),
            ]
            # Per-account views only for the accounts the last step touched: reading all of them is slow.
            for account in touched:
                reads.append(RawRpc.eth_call(escrow, "balanceOf", [account]))
                reads.append(RawRpc.eth_call(vault, "stakeOf", [account]))
                reads.append(RawRpc.eth_call(vault, "unbondingOf", [account]))
            logs, escrow_balance, vault_balance, *views = rpc.batch(reads)

            # 1. The identities of docs/chain.md, from the events alone.
            # The query starts at the last block already seen (always a valid range); skip what was counted.
            for event in decoder.decode_logs([_log(entry) for entry in logs], [escrow, vault]):
                position = (event.block_number, event.log_index)
                if position <= totals.last_seen:
                    continue
                totals.last_seen = position
                totals.last_block = event.block_number
                args = event.args
                if event.address == escrow.address:
                    if event.name == "JobFunded":
                        totals.funded += args["amount"]
                    elif event.name == "Withdrawn":
                        totals.escrow_withdrawn += args["amount"]
                    elif event.name == "JobRefunded":
                        totals.refunded += args["amount"]
                elif event.name == "Staked":
                    totals.staked += args["amount"]
                elif event.name == "Withdrawn":
                    totals.vault_withdrawn += args["amount"]
                elif event.name == "Slashed":
                    assert args["amount"] == args["toRequester"] + args["toFinder"] + args["burned"]
                    totals.slashed += args["amount"]
            escrow_from_events = self.base_escrow + totals.funded - totals.escrow_withdrawn - totals.refunded
            vault_from_events = self.base_vault + totals.staked - totals.vault_withdrawn - totals.slashed
            assert uint(escrow_balance) == escrow_from_events
            assert uint(vault_balance) == vault_from_events

            # 2. The escrow holds exactly the open jobs plus every credited balance; views match the model.
            open_amounts = sum(j.amount for j in model.jobs)
            assert uint(escrow_balance) == self.base_escrow + open_amounts + sum(model.credits.values())
            for i, account in enumerate(touched):
                credit, active, unbonding = views[3 * i : 3 * i + 3]
                assert uint(credit) == model.credits.get(account, 0), account
                assert uint(active) == model.active.get(account, 0), account
                assert int(unbonding[2:66], 16) == model.unbonding.get(account, (0, 0))[0], account

    return Accounting


def test_balances_reconcile_from_events_after_every_step(env: Env) -> None:
    ci = bool(os.environ.get("CI"))
    run_state_machine_as_test(
        make_machine(env),
        settings=settings(
            max_examples=200 if ci else 20,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


def _log(entry: dict[str, Any]) -> dict[str, Any]:
    """A raw JSON log in the shape web3 decodes (bytes topics, int numbers)."""
    return {
        "address": entry["address"],
        "topics": [HexBytes(t) for t in entry["topics"]],
        "data": HexBytes(entry["data"]),
        "blockNumber": int(entry["blockNumber"], 16),
        "transactionHash": HexBytes(entry["transactionHash"]),
        "transactionIndex": int(entry["transactionIndex"], 16),
        "blockHash": HexBytes(entry["blockHash"]),
        "logIndex": int(entry["logIndex"], 16),
        "removed": False,
    }
