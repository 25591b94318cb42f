"""What the market reads from the chain, behind one small interface.

`ChainView` is the seam between market logic and web3: the services take any object with these methods, the
process entry point builds `Web3ChainView` over `globai.chain.client.ChainClient`, and tests use the real Anvil.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from eth_utils import keccak, to_checksum_address

ESCROW_STATUS = {0: "none", 1: "funded", 2: "settled", 3: "refunded"}


def chain_job_id(job_uuid: str) -> str:
    """bytes32 jobId as 0x-hex: keccak256 of the job's UUID string (docs/chain.md)."""
    return "0x" + keccak(text=str(job_uuid)).hex()


@dataclass(frozen=True)
class OnchainJob:
    requester: str
    amount: int
    spec_hash: str  # 0x-hex; "0x" when the escrow's view does not return it (the JobFunded event does)
    deadline: int  # unix seconds
    status: str  # none | funded | settled | refunded


@dataclass(frozen=True)
class ChainLog:
    name: str
    args: dict[str, Any]
    address: str
    block_number: int
    tx_hash: str
    log_index: int


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


def _hex(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return "0x" + bytes(value).hex()
    return str(value)


def _plain(args: dict[str, Any]) -> dict[str, Any]:
    """Event args as JSON-friendly values (bytes -> 0x-hex, ints stay ints)."""
    return {k: _hex(v) if isinstance(v, bytes | bytearray) else v for k, v in args.items()}


class Web3ChainView:
    """`ChainView` over the project's ChainClient and the deployed StakingVault and JobEscrow."""

    def __init__(self, client: Any, *, staking_address: str, escrow_address: str, page: int = 2000) -> None:
        self.client = client
        self.chain_id = int(client.chain_id)
        self.staking_address: str = to_checksum_address(staking_address)
        self.escrow_address: str = to_checksum_address(escrow_address)
        self.vault = client.contract("StakingVault", self.staking_address)
        self.escrow = client.contract("JobEscrow", self.escrow_address)
        self.page = page

    def latest_block(self) -> int:
        return int(self.client.block_number())

    def genesis_hash(self) -> str:
        """Hash of block 0: tells two chains with the same id (two devnets) apart."""
        if getattr(self, "_genesis", None) is None:
            self._genesis = "0x" + bytes(self.client.w3.eth.get_block(0)["hash"]).hex().removeprefix("0x")
        return str(self._genesis)

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
        fn = self.escrow.functions.getJob(bytes.fromhex(chain_job_id.removeprefix("0x")))
        raw = self.client.call(fn)
        # Decode by the ABI's output names, not positions, so a reordered view cannot be misread.
        names = [o["name"] for o in fn.abi["outputs"]]
        fields = dict(zip(names, raw, strict=True))
        return OnchainJob(
            requester=to_checksum_address(fields["requester"]),
            amount=int(fields["amount"]),
            spec_hash=_hex(fields.get("specHash", b"")),
            deadline=int(fields["deadline"]),
            status=ESCROW_STATUS.get(int(fields["status"]), "none"),
        )

    def _logs(self, contract: Any, from_block: int, to_block: int) -> list[ChainLog]:
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


def chain_view_from_settings(settings: Any) -> Web3ChainView | None:
    """Build the chain view for a process, or None when no contracts are configured (chain features answer 503)."""
    if not (settings.staking_vault_address and settings.job_escrow_address):
        return None
    from globai.chain.client import ChainClient

    return Web3ChainView(
        ChainClient(settings.rpc_url),
        staking_address=settings.staking_vault_address,
        escrow_address=settings.job_escrow_address,
        page=settings.log_page_blocks,
    )
