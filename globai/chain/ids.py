"""On-chain identifiers derived from market identifiers.

A job has two: its *key* (`job_key_bytes`, keccak256 of the market's job UUID), which the requester passes to
`JobEscrow.fundJob`, and its *id* on chain (`job_id_bytes`), which the escrow derives from the key and the
funding requester: keccak256(abi.encode(requester, key)) (`JobEscrow.jobIdOf`). Everything after funding (events,
settlement, slashing, signed commitments) uses the id, so nobody can squat a job of another requester.
"""

from __future__ import annotations

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address


def job_key_bytes(job_uuid: str) -> bytes:
    """What a requester passes to `fundJob`: keccak256 of the UUID string's UTF-8 bytes.

    The string is hashed exactly as given (callers pass the canonical lower-case hyphenated form), so the same
    job always maps to the same key and the chain never needs the UUID format.
    """
    return keccak(text=str(job_uuid))


def escrow_job_id(requester: str, key: bytes) -> bytes:
    """`JobEscrow.jobIdOf(requester, key)`: keccak256(abi.encode(requester, key))."""
    return keccak(abi_encode(["address", "bytes32"], [to_checksum_address(requester), key]))


def job_id_bytes(job_uuid: str, requester: str) -> bytes:
    """The escrow's `bytes32 jobId` of `requester`'s market job `job_uuid`."""
    return escrow_job_id(requester, job_key_bytes(job_uuid))


def chain_job_id(job_uuid: str, requester: str) -> str:
    """`job_id_bytes` as 0x-hex, the form the market stores and the chain views take."""
    return "0x" + job_id_bytes(job_uuid, requester).hex()


def job_key(job_uuid: str) -> str:
    """`job_key_bytes` as 0x-hex."""
    return "0x" + job_key_bytes(job_uuid).hex()
