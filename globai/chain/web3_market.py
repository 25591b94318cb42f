"""The market's chain ports (`globai.chain.ports`) over web3: the deployed StakingVault and JobEscrow.

`Web3ChainView` reads (stakes, escrowed jobs, event logs); `Web3Operator` writes with the market's operator key
(settle as SETTLER_ROLE, slash as SLASHER_ROLE). Contract errors become the ports' typed errors here, so the
services that use them never see a web3 object or a revert string.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from web3.contract import Contract

from globai.chain.client import ChainClient, ContractReverted
from globai.chain.ports import (
    ESCROW_STATUS,
    ChainLog,
    EscrowJobNotFunded,
    EvidenceRejected,
    NothingToSlash,
    OnchainJob,
    Sent,
    SettleEntry,
    Slash,
)


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


def _plain(args: dict[str, Any]) -> dict[str, Any]:
    """Event args as JSON-friendly values (bytes -> 0x-hex, ints stay ints)."""
    return {k: _hex(v) if isinstance(v, bytes | bytearray) else v for k, v in args.items()}


def read_escrow_job(client: ChainClient, escrow: Contract, chain_job_id: bytes) -> OnchainJob:
    """`JobEscrow.getJob`, decoded by the ABI's output names, not positions (a reordered view cannot be misread)."""
    fn = escrow.functions.getJob(chain_job_id)
    raw = client.call(fn)
    names = [o["name"] for o in fn.abi["outputs"]]
    fields = dict(zip(names, raw, strict=True))
    return OnchainJob(
        requester=to_checksum_address(fields["requester"]),
        amount=int(fields["amount"]),
        spec_hash=_hex(fields.get("specHash", b"")),
        deadline=int(fields["deadline"]),
        status=ESCROW_STATUS.get(int(fields["status"]), "none"),
        report_root=_hex(fields.get("reportRoot", b"")),
    )


class Web3ChainView:
    """`ChainView` over the project's ChainClient and the deployed StakingVault and JobEscrow."""

    def __init__(self, client: ChainClient, *, staking_address: str, escrow_address: str, page: int = 2000) -> None:
        self.client = client
        self.chain_id = int(client.chain_id)
        self.staking_address: str = to_checksum_address(staking_address)
        self.escrow_address: str = to_checksum_address(escrow_address)
        self.vault = client.contract("StakingVault", self.staking_address)
        self.escrow = client.contract("JobEscrow", self.escrow_address)
        self.page = page
        self._genesis: str | None = None

    def latest_block(self) -> int:
        return int(self.client.block_number())

    def genesis_hash(self) -> str:
        """Hash of block 0: tells two chains with the same id (two devnets) apart."""
        if self._genesis is None:
            self._genesis = _hex(bytes(self.client.w3.eth.get_block(0)["hash"]))
        return self._genesis

    def min_stake(self) -> int:
        return int(self.client.call(self.vault.functions.minStake()))

    def fee_bps(self) -> int:
        return int(self.client.call(self.escrow.functions.feeBps()))

    def stake_of(self, address: str, *, block: int | None = None) -> tuple[int, int]:
        at: int | str = "latest" if block is None else block
        who = to_checksum_address(address)
        stake = int(self.client.call(self.vault.functions.stakeOf(who), at))
        unbonding = self.client.call(self.vault.functions.unbondingOf(who), at)
        return stake, int(unbonding[0])

    def get_job(self, chain_job_id: str) -> OnchainJob:
        return read_escrow_job(self.client, self.escrow, bytes.fromhex(chain_job_id.removeprefix("0x")))

    def _logs(self, contract: Contract, from_block: int, to_block: int) -> list[ChainLog]:
        events = self.client.get_logs([contract], from_block, to_block, page=self.page)
        return [
            ChainLog(
                name=e.name,
                args=_plain(e.args),
                address=e.address,
                block_number=e.block_number,
                tx_hash=e.tx_hash,
                log_index=e.log_index,
            )
            for e in events
        ]

    def staking_logs(self, from_block: int, to_block: int) -> list[ChainLog]:
        return self._logs(self.vault, from_block, to_block)

    def escrow_logs(self, from_block: int, to_block: int) -> list[ChainLog]:
        return self._logs(self.escrow, from_block, to_block)


@dataclass
class Web3Operator:
    """The market's own chain identity: `Escrow` and `Slasher` over JobEscrow and StakingVault, signed by `account`."""

    client: ChainClient
    escrow: Contract  # JobEscrow
    vault: Contract  # StakingVault
    account: LocalAccount
    # A transaction's effect counts once its event is this many blocks deep (0: at its receipt); until then it is
    # only "sent", and re-checked (re-sent if the chain lost it: a reorg, a node restarted without its state).
    confirmations: int = 0

    def confirmed(self, block_number: int) -> bool:
        return block_number <= self.client.block_number() - self.confirmations

    def resync(self) -> None:
        self.client.reset_nonce(self.account.address)

    @property
    def chain_id(self) -> int:
        return self.client.chain_id

    @property
    def escrow_address(self) -> str:
        return str(self.escrow.address)

    # --- Escrow -----------------------------------------------------------------------------------------------
    def fee_bps(self) -> int:
        return int(self.client.call(self.escrow.functions.feeBps()))

    def job(self, chain_job_id: bytes) -> OnchainJob:
        return read_escrow_job(self.client, self.escrow, chain_job_id)

    def settle(self, entries: Sequence[SettleEntry]) -> Sent:
        rows = [(e.chain_job_id, e.payees, e.amounts, e.report_root) for e in entries]
        fn = self.escrow.functions.settle(*rows[0]) if len(rows) == 1 else self.escrow.functions.settleBatch(rows)
        try:
            receipt = self.client.transact(fn, self.account)
        except ContractReverted as exc:
            if exc.error == "JobEscrowNotFunded":
                raise EscrowJobNotFunded(str(exc)) from exc
            raise
        return Sent(_hex(bytes(receipt["transactionHash"])), int(receipt["blockNumber"]), receipt.get("gasUsed"))

    def settled(self, chain_job_id: bytes, from_block: int) -> Sent | None:
        for ev in self.client.get_logs([self.escrow], from_block):
            if ev.name == "JobSettled" and ev.args["jobId"] == chain_job_id:
                return Sent(ev.tx_hash, ev.block_number)
        return None

    # --- Slasher ----------------------------------------------------------------------------------------------
    def min_stake(self) -> int:
        return int(self.client.call(self.vault.functions.minStake()))

    def slash(
        self,
        *,
        worker: str,
        amount: int,
        chain_job_id: bytes,
        evidence: bytes,
        signature: bytes,
        requester: str,
        finder: str,
    ) -> Slash:
        fn = self.vault.functions.slash(
            to_checksum_address(worker),
            amount,
            chain_job_id,
            evidence,
            signature,
            to_checksum_address(requester),
            to_checksum_address(finder),
        )
        try:
            receipt = self.client.transact(fn, self.account)
        except ContractReverted as exc:
            if exc.error == "StakingVaultNothingToSlash":
                raise NothingToSlash(str(exc)) from exc
            if exc.error in ("StakingVaultBadEvidence", "StakingVaultEvidenceUsed"):
                raise EvidenceRejected(str(exc)) from exc
            raise
        event = next(e for e in self.client.events(receipt, self.vault) if e.name == "Slashed")
        return Slash(event.tx_hash, event.block_number, int(event.args["amount"]))

    def find_slash(self, *, worker: str, chain_job_id: bytes, from_block: int) -> Slash | None:
        who = to_checksum_address(worker)
        for ev in self.client.get_logs([self.vault], from_block):
            if (
                ev.name == "Slashed"
                and ev.args["jobId"] == chain_job_id
                and to_checksum_address(ev.args["worker"]) == who
            ):
                return Slash(ev.tx_hash, ev.block_number, int(ev.args["amount"]))
        return None
