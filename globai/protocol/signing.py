"""Domain-separated digests for what workers sign, and EIP-191 sign / recover over them.

Every digest is `keccak256(TAG || abi.encode(fields...))` with a distinct ASCII tag per message kind, so a
signature over one kind of message can never be presented as another, and every field that scopes the message
(chain id, job id, task id, stage, chunk index, job nonce) is inside the hash, so it can't be replayed for
another job, stage or chunk. The worker signs the 32-byte digest with EIP-191 `personal_sign`
(`"\\x19Ethereum Signed Message:\\n32" || digest`), which Solidity checks with OpenZeppelin's
`ECDSA.recover(MessageHashUtils.toEthSignedMessageHash(digest), sig)`. In Solidity the digests are::

    keccak256(bytes.concat("GLOBAI-COMMIT-V1", abi.encode(uint256 chainId, bytes32 jobId, bytes32 taskId,
        uint32 stage, uint64 chunkIndex, bytes32 jobNonce, bytes32 outputSha256, bytes32 sketchSha256)))
    keccak256(bytes.concat("GLOBAI-ROOT-V1", abi.encode(uint256 chainId, bytes32 jobId, bytes32 taskId,
        bytes32 jobNonce, uint64 chunkCount, bytes32 commitmentsRoot)))
    keccak256(bytes.concat("GLOBAI-SENT-V1", abi.encode(uint256 chainId, bytes32 jobId, bytes32 taskId,
        uint32 stage, uint64 step, uint64 firstPosition, bytes32 jobNonce, bytes32 outputSha256)))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import coincurve
from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address

from globai.errors import GlobaiError
from globai.protocol.tensors import tensor_sha256

COMMIT_TAG = b"GLOBAI-COMMIT-V1"
ROOT_TAG = b"GLOBAI-ROOT-V1"
SENT_TAG = b"GLOBAI-SENT-V1"
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


class BadSignature(GlobaiError):
    """A signature is malformed or was not made by the expected key over the expected digest."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"bad signature: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class ChunkScope:
    """Everything that says *where* a chunk output belongs; all of it is signed.

    `job_id` / `task_id` are bytes32 (keccak256 of the market's UUID strings, see docs/chain.md); `task_id`
    identifies the worker's session or task within the job. `job_nonce` is the random bytes32 the market drew
    when the job was created.
    """

    chain_id: int
    job_id: bytes
    task_id: bytes
    stage: int
    job_nonce: bytes

    def __post_init__(self) -> None:
        _check_bytes32("job_id", self.job_id)
        _check_bytes32("task_id", self.task_id)
        _check_bytes32("job_nonce", self.job_nonce)
        if not 0 <= self.chain_id < 2**256:
            raise ValueError("chain_id out of range")
        if not 0 <= self.stage <= _UINT32_MAX:
            raise ValueError("stage out of range")


def _check_bytes32(name: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 32:
        raise ValueError(f"{name} must be 32 bytes")


def commit_digest(scope: ChunkScope, chunk_index: int, output_sha256: bytes, sketch_sha256: bytes) -> bytes:
    """Digest a worker signs for one chunk commitment."""
    if not 0 <= chunk_index <= _UINT64_MAX:
        raise ValueError("chunk_index out of range")
    _check_bytes32("output_sha256", output_sha256)
    _check_bytes32("sketch_sha256", sketch_sha256)
    body = abi_encode(
        ["uint256", "bytes32", "bytes32", "uint32", "uint64", "bytes32", "bytes32", "bytes32"],
        [
            scope.chain_id,
            scope.job_id,
            scope.task_id,
            scope.stage,
            chunk_index,
            scope.job_nonce,
            output_sha256,
            sketch_sha256,
        ],
    )
    return keccak(COMMIT_TAG + body)


def root_digest(scope: ChunkScope, chunk_count: int, commitments_root: bytes) -> bytes:
    """Digest a worker signs for the Merkle root over all its chunk commitments of a job/task.

    The stage is not a field here: a task serves one stage, and the leaves (commit digests) already bind it.
    """
    if not 0 <= chunk_count <= _UINT64_MAX:
        raise ValueError("chunk_count out of range")
    _check_bytes32("commitments_root", commitments_root)
    body = abi_encode(
        ["uint256", "bytes32", "bytes32", "bytes32", "uint64", "bytes32"],
        [scope.chain_id, scope.job_id, scope.task_id, scope.job_nonce, chunk_count, commitments_root],
    )
    return keccak(ROOT_TAG + body)


def sent_digest(scope: ChunkScope, step: int, first_position: int, output_sha256: bytes) -> bytes:
    """Digest a worker signs over every forward answer it sends: sha256 of the exact output bytes of that call.

    It makes what was sent provable: the coordinator checks it before relaying the tensor, and a chunk commitment
    whose `output_sha256` differs from the rows these signed answers carried is signed evidence against the worker.
    """
    if not (0 <= step <= _UINT64_MAX and 0 <= first_position <= _UINT64_MAX):
        raise ValueError("step / first_position out of range")
    _check_bytes32("output_sha256", output_sha256)
    body = abi_encode(
        ["uint256", "bytes32", "bytes32", "uint32", "uint64", "uint64", "bytes32", "bytes32"],
        [
            scope.chain_id,
            scope.job_id,
            scope.task_id,
            scope.stage,
            step,
            first_position,
            scope.job_nonce,
            output_sha256,
        ],
    )
    return keccak(SENT_TAG + body)


def sign_digest(account: LocalAccount, digest: bytes) -> bytes:
    """EIP-191 signature (65 bytes r||s||v, v in {27, 28}) over a 32-byte digest."""
    _check_bytes32("digest", digest)
    # libsecp256k1 directly: the same deterministic (RFC 6979, low-s) signature eth-account makes, in ~0.12 ms
    # instead of ~0.65 (every forward answer is signed: this was a fixed cost on every pipeline hop).
    signature = _private_key(account.key).sign_recoverable(_eip191(digest), hasher=None)
    return signature[:64] + bytes([signature[64] + 27])


_KEYS: dict[bytes, coincurve.PrivateKey] = {}


def _private_key(key: bytes) -> coincurve.PrivateKey:
    found = _KEYS.get(bytes(key))
    if found is None:
        found = _KEYS.setdefault(bytes(key), coincurve.PrivateKey(bytes(key)))
    return found


def _eip191(digest: bytes) -> bytes:
    """The hash EIP-191 ("\\x19Ethereum Signed Message:\\n32" + digest) signs: what `encode_defunct` makes."""
    return keccak(b"\x19Ethereum Signed Message:\n32" + digest)


def recover_signer(digest: bytes, signature: bytes) -> str:
    """Checksummed address that signed `digest`; raises `BadSignature` on a malformed signature."""
    _check_bytes32("digest", digest)
    if not isinstance(signature, bytes) or len(signature) != 65:
        raise BadSignature("signature must be 65 bytes")
    if signature[64] not in (27, 28):
        raise BadSignature("v must be 27 or 28")
    # Reject high-s signatures (as OpenZeppelin's ECDSA does) so each message has a single valid signature.
    if int.from_bytes(signature[32:64], "big") > 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0:
        raise BadSignature("non-canonical s")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([signature[64] - 27]), _eip191(digest), hasher=None
        )
    except Exception as exc:  # libsecp256k1 refuses invalid curve points / r, s out of range
        raise BadSignature(f"unrecoverable ({type(exc).__name__})") from exc
    return to_checksum_address(keccak(public.format(compressed=False)[1:])[-20:])


def verify_signer(digest: bytes, signature: bytes, expected: str) -> bool:
    """True iff `signature` over `digest` recovers to `expected`; malformed signatures are simply False."""
    try:
        return recover_signer(digest, signature) == to_checksum_address(expected)
    except BadSignature:
        return False


class UnsignedAnswer(ValueError):
    """A forward answer whose bytes are not what its sender signed: `missing` (no signed output hash), `mismatch`
    (the bytes hash to something else) or `signer` (the hash is not signed by the expected worker)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class SignedAnswer:
    output_sha256: bytes
    signature: bytes
    digest: bytes


def check_sent(
    sent: object, output: Any, *, scope: ChunkScope, step: int, first_position: int, signer: str
) -> SignedAnswer:
    """The `sent` field of a forward answer, checked: its output hash is the answer's exact bytes and it is signed
    by `signer` over `sent_digest` for this call. Raises UnsignedAnswer (callers map it to their own error)."""
    try:
        sha = bytes.fromhex(str(sent["output_sha256"]).removeprefix("0x"))  # type: ignore[index]
        signature = bytes.fromhex(str(sent["signature"]).removeprefix("0x"))  # type: ignore[index]
    except (KeyError, TypeError, ValueError):
        raise UnsignedAnswer("missing") from None
    if len(sha) != 32 or sha != tensor_sha256(output):
        raise UnsignedAnswer("mismatch")
    digest = sent_digest(scope, step, first_position, sha)
    if not verify_signer(digest, signature, signer):
        raise UnsignedAnswer("signer")
    return SignedAnswer(sha, signature, digest)
