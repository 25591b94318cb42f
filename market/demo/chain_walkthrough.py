"""The money path on its own: fund → settle → withdraw, refund of another job, slash — then reconcile.

Every step prints its transaction hash and gas; the end prints balances and checks the escrow's and the
vault's token balances against what the events alone add up to.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3

from globai.chain.client import ChainClient
from globai.chain.deploy import BoundContracts, Deployment
from globai.chain.ids import job_id_bytes, job_key_bytes
from globai.chain.local import dev_accounts
from globai.chain.permit import sign_glb_permit
from globai.protocol.merkle import MerkleTree, SettlementRecord, settlement_leaf
from globai.protocol.signing import sign_digest
from market.audit.reconcile import reconcile

GLB = 10**18


@dataclass
class Step:
    what: str
    tx_hash: str
    gas: int


@dataclass
class Walkthrough:
    client: ChainClient
    deployment: Deployment
    say: Callable[[str], None] = print
    steps: list[Step] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.c: BoundContracts = self.deployment.bind(self.client)
        self.treasury, self.requester, self.worker_a, self.worker_b, self.finder = dev_accounts(5)

    def tx(self, what: str, fn: object, sender: LocalAccount) -> dict:
        receipt = self.client.transact(fn, sender)
        step = Step(what, Web3.to_hex(receipt["transactionHash"]), int(receipt["gasUsed"]))
        self.steps.append(step)
        self.say(f"  {what:48s} gas {step.gas:>7,}  tx {step.tx_hash}")
        return receipt

    def glb(self, address: str) -> int:
        return int(self.client.call(self.c.token.functions.balanceOf(address)))

    def run(self) -> bool:
        t, v, e = self.c.token.functions, self.c.vault.functions, self.c.escrow.functions
        self.say("1. faucet and stakes")
        self.tx("treasury → requester 1,000 GLB", t.transfer(self.requester.address, 1_000 * GLB), self.treasury)
        for name, worker in (("A", self.worker_a), ("B", self.worker_b)):
            self.tx(f"treasury → worker {name} 500 GLB", t.transfer(worker.address, 500 * GLB), self.treasury)
            self.tx(f"worker {name} approves the vault", t.approve(self.deployment.vault, 200 * GLB), worker)
            self.tx(f"worker {name} stakes 200 GLB", v.stake(200 * GLB), worker)

        self.say("2. a job funded with a permit (one transaction), settled with a report root, withdrawn")
        job = str(uuid.uuid4())
        job_id = job_id_bytes(job, self.requester.address)
        now = int(self.client.w3.eth.get_block("latest")["timestamp"])
        spec_hash = keccak(text=f'{{"kind":"inference","job":"{job}"}}')
        permit = sign_glb_permit(
            self.client,
            self.requester,
            token=self.deployment.token,
            spender=self.deployment.escrow,
            value=100 * GLB,
            deadline=now + 3600,
        )
        self.tx(
            "requester funds job 1 (100 GLB, permit)",
            e.fundJobWithPermit(
                job_key_bytes(job), 100 * GLB, spec_hash, now + 3600, permit.deadline, permit.v, permit.r, permit.s
            ),
            self.requester,
        )
        records = [
            SettlementRecord(job_id, keccak(text=f"{job}/task/0"), self.worker_a.address, 40, 40 * GLB),
            SettlementRecord(job_id, keccak(text=f"{job}/task/1"), self.worker_b.address, 30, 30 * GLB),
        ]
        root = MerkleTree([settlement_leaf(r) for r in records]).root
        self.tx(
            "market settles job 1 (A 40, B 30, fee 2%)",
            e.settle(job_id, [r.payee for r in records], [r.amount for r in records], root),
            self.treasury,
        )
        for name, who in (("worker A", self.worker_a), ("worker B", self.worker_b), ("requester", self.requester)):
            credited = int(self.client.call(e.balanceOf(who.address)))
            self.tx(f"{name} withdraws {credited / GLB:,.2f} GLB", e.withdraw(), who)

        self.say("3. a job nobody settles: refunded by anyone after its deadline")
        job2 = str(uuid.uuid4())
        now = int(self.client.w3.eth.get_block("latest")["timestamp"])
        self.tx("requester approves the escrow", t.approve(self.deployment.escrow, 50 * GLB), self.requester)
        self.tx(
            "requester funds job 2 (50 GLB, deadline +2 s)",
            e.fundJob(job_key_bytes(job2), 50 * GLB, keccak(text=job2), now + 2),
            self.requester,
        )
        # Devnet time travel instead of waiting: Anvil's clock need not follow the wall clock.
        self.client.rpc("evm_increaseTime", 3)
        self.client.rpc("evm_mine")
        self.tx("a third party refunds job 2", e.refund(job_id_bytes(job2, self.requester.address)), self.finder)

        self.say("4. worker B is caught cheating on job 1: slashed 100 GLB (50% requester, 10% finder, 40% burned)")
        evidence = keccak(text=f"{job}/commitment/B/chunk/3")  # stands for the digest of B's signed commitment
        signature = sign_digest(self.worker_b, evidence)
        self.tx(
            "slasher slashes worker B (the vault checks B signed the evidence)",
            v.slash(
                self.worker_b.address,
                100 * GLB,
                job_id,
                evidence,
                signature,
                self.requester.address,
                self.finder.address,
            ),
            self.treasury,
        )

        self.say("5. balances (GLB)")
        for name, address in (
            ("requester", self.requester.address),
            ("worker A", self.worker_a.address),
            ("worker B", self.worker_b.address),
            ("finder", self.finder.address),
            ("JobEscrow", self.deployment.escrow),
            ("StakingVault", self.deployment.vault),
        ):
            self.say(f"  {name:13s} {self.glb(address) / GLB:>14,.4f}")
        self.say(
            f"  stake A {self.client.call(v.stakeOf(self.worker_a.address)) / GLB:,.2f}, "
            f"stake B {self.client.call(v.stakeOf(self.worker_b.address)) / GLB:,.2f}"
        )
        total = sum(s.gas for s in self.steps)
        self.say(f"  {len(self.steps)} transactions, {total:,} gas")

        self.say("6. independent reconciliation from events")
        result = reconcile(
            self.client, self.c.token, self.c.escrow, self.c.vault, from_block=self.deployment.first_block
        )
        for line in result.lines():
            self.say(f"  {line}")
        return result.ok
