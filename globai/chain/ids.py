"""On-chain identifiers derived from market identifiers."""

from __future__ import annotations

from eth_utils import keccak


def job_id_bytes(job_uuid: str) -> bytes:
    """The escrow's `bytes32 jobId` for a market job: keccak256 of the UUID string's UTF-8 bytes.

    The string is hashed exactly as given (callers pass the canonical lower-case hyphenated form), so the same
    job always maps to the same id and the chain never needs the UUID format.
    """
    return keccak(text=job_uuid)


def chain_job_id(job_uuid: str) -> str:
    """`job_id_bytes` as 0x-hex, the form the market stores and the chain views take."""
    return "0x" + job_id_bytes(str(job_uuid)).hex()
