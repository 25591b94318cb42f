"""EIP-2612 permits for GLB, signed locally with eth-account (a requester funds a job in one transaction)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from globai.chain.client import ChainClient

# GLBToken's ERC20Permit domain: name as passed to ERC20Permit, OpenZeppelin's default version "1".
TOKEN_NAME = "GlobAI Token"
TOKEN_VERSION = "1"

PERMIT_TYPES = {
    "Permit": [
        {"name": "owner", "type": "address"},
        {"name": "spender", "type": "address"},
        {"name": "value", "type": "uint256"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}


@dataclass(frozen=True)
class Permit:
    """A signed permit; `v`, `r`, `s` go to `fundJobWithPermit` after the job arguments."""

    value: int
    deadline: int
    v: int
    r: bytes
    s: bytes


def sign_permit(
    owner: LocalAccount,
    *,
    token: str,
    spender: str,
    value: int,
    nonce: int,
    deadline: int,
    chain_id: int,
    token_name: str = TOKEN_NAME,
) -> Permit:
    """Sign `owner`'s approval of `value` to `spender`, valid until `deadline` and for this `nonce` only."""
    domain = {
        "name": token_name,
        "version": TOKEN_VERSION,
        "chainId": chain_id,
        "verifyingContract": to_checksum_address(token),
    }
    message = {
        "owner": owner.address,
        "spender": to_checksum_address(spender),
        "value": value,
        "nonce": nonce,
        "deadline": deadline,
    }
    signed = owner.sign_typed_data(domain, PERMIT_TYPES, message)
    return Permit(value, deadline, signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"))


def sign_glb_permit(
    client: ChainClient, owner: LocalAccount, *, token: str, spender: str, value: int, deadline: int
) -> Permit:
    """`sign_permit` with the owner's current permit nonce read from the token."""
    contract = client.contract("GLBToken", token)
    nonce = int(client.call(contract.functions.nonces(owner.address)))
    return sign_permit(
        owner, token=token, spender=spender, value=value, nonce=nonce, deadline=deadline, chain_id=client.chain_id
    )


def fund_job_with_permit(client: ChainClient, requester: LocalAccount, escrow: Mapping[str, Any]) -> dict[str, Any]:
    """Fund a job in one transaction (permit + `fundJobWithPermit`) from the escrow parameters the market gives
    (`POST /v1/jobs` or `GET /v1/jobs/{id}/escrow`: escrow_address, job_key, amount, spec_hash, deadline).
    Returns the receipt."""
    contract = client.contract("JobEscrow", escrow["escrow_address"])
    amount, deadline = int(escrow["amount"]), int(escrow["deadline"])
    token = str(client.call(contract.functions.token()))
    permit = sign_glb_permit(client, requester, token=token, spender=contract.address, value=amount, deadline=deadline)
    return client.transact(
        contract.functions.fundJobWithPermit(
            bytes.fromhex(str(escrow["job_key"]).removeprefix("0x")),
            amount,
            bytes.fromhex(str(escrow["spec_hash"]).removeprefix("0x")),
            deadline,
            permit.deadline,
            permit.v,
            permit.r,
            permit.s,
        ),
        requester,
    )
