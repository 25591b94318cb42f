"""What the market needs of a chain, as small protocols: reads (`ChainView`), settling jobs (`Escrow`), slashing
cheaters (`Slasher`). Services take these and never see web3 objects; `globai.chain.web3_market` implements them
over the project's contracts, and a second chain means a second implementation, not edits to the services.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from globai.errors import ChainError

ESCROW_STATUS = {0: "none", 1: "funded", 2: "settled", 3: "refunded"}


@dataclass(frozen=True)
class OnchainJob:
    requester: str
    amount: int
    spec_hash: str  # 0x-hex; "0x" when the escrow's view does not return it (the JobFunded event does)
    deadline: int  # unix seconds
    status: str  # none | funded | settled | refunded
    report_root: str = "0x"  # 0x-hex bytes32 once settled


@dataclass(frozen=True)
class ChainLog:
    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    tx_hash: str
    log_index: int


@dataclass(frozen=True)
class SettleEntry:
    """One job's settlement: who gets how much, and the Merkle root of its published report."""

    chain_job_id: bytes
    payees: list[str]
    amounts: list[int]
    report_root: bytes


@dataclass(frozen=True)
class Sent:
    """A transaction the chain holds (mined in `block_number`)."""

    tx_hash: str  # 0x-hex
    block_number: int
    gas_used: int | None = None


@dataclass(frozen=True)
class Slash:
    tx_hash: str  # 0x-hex
    block_number: int
    amount: int  # what was actually slashed (may be less than asked)


class EscrowJobNotFunded(ChainError):
    """A settlement names a job the escrow does not hold as funded (settled meanwhile, refunded, never funded)."""


class NothingToSlash(ChainError):
    """The worker has no stake left to slash."""


class EvidenceRejected(ChainError):
    """The vault refused the slash's evidence: the signature is not the worker's, or the evidence was used."""


class ChainView(Protocol):
    chain_id: int
    escrow_address: str
    staking_address: str

    def latest_block(self) -> int: ...

    def min_stake(self) -> int: ...

    def fee_bps(self) -> int: ...

    def stake_of(self, address: str, *, block: int | None = None) -> tuple[int, int]:
        """(active stake, unbonding amount) of `address` at `block` (latest when None)."""
        ...

    def get_job(self, chain_job_id: str) -> OnchainJob: ...

    def staking_logs(self, from_block: int, to_block: int) -> list[ChainLog]: ...

    def escrow_logs(self, from_block: int, to_block: int) -> list[ChainLog]: ...


class ChainWriter(Protocol):
    """What every writing side shares: when an effect counts, and recovering from a transaction the chain lost."""

    def confirmed(self, block_number: int) -> bool:
        """A transaction mined in `block_number` is deep enough to count (the market's confirmations setting)."""
        ...

    def resync(self) -> None:
        """A transaction once mined is gone (a reorg, a node restarted without its state): forget local nonce state
        before sending it again."""
        ...


class Escrow(ChainWriter, Protocol):
    """The market's settling side of the job escrow (its operator key holds the settler role)."""

    @property
    def chain_id(self) -> int: ...

    @property
    def escrow_address(self) -> str: ...

    def fee_bps(self) -> int: ...

    def job(self, chain_job_id: bytes) -> OnchainJob: ...

    def settle(self, entries: Sequence[SettleEntry]) -> Sent:
        """Settle one job or a batch in one transaction; raises `EscrowJobNotFunded` if one is not funded."""
        ...

    def settled(self, chain_job_id: bytes, from_block: int) -> Sent | None:
        """The transaction that settled the job, from its JobSettled event (None when there is none)."""
        ...


class Slasher(ChainWriter, Protocol):
    """The market's slashing side of the staking vault (its operator key holds the slasher role)."""

    def min_stake(self) -> int: ...

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
        """Slash `worker` for the job with `evidence` (a digest) and the worker's EIP-191 `signature` over it;
        raises `NothingToSlash` when it has no stake left, `EvidenceRejected` when the vault refuses the evidence."""
        ...

    def find_slash(self, *, worker: str, chain_job_id: bytes, from_block: int) -> Slash | None:
        """A slash of `worker` for the job already on chain (a retry after a crash must not slash twice)."""
        ...
