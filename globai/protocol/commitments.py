"""Per-chunk output commitments and the per-task Merkle root a worker signs over them.

For each stage output the worker splits the tokens into chunks of `CHUNK_TOKENS` (chunk c covers token
positions [32c, 32c+32) of the sequence) and commits, per chunk, to
- `output_sha256`: sha256 of the exact bytes of the chunk tensor [tokens, hidden] (C order, little-endian, the
  job's dtype - the same bytes the tensor codec sends), and
- `sketch`: the chunk's sketch (`globai.protocol.sketch`, version 2: top-1 and a projection seeded by
  `output_sha256` per token, 200 bytes for 32 tokens), hashed with sha256 into the signed digest.
Signed commitment: 32 + 200 + 65 = 297 bytes per 32 tokens. Commitments in version 1 (top-8, 1,032-byte sketches)
still parse, so records kept before the change still verify.
It signs `signing.commit_digest(...)` for each chunk, and once the task is done, the Merkle root
(`merkle.commitment_leaf` over the commit digests) with `signing.root_digest(...)`.

Wire forms: `to_json()` / `from_json()` dicts with 0x-hex strings (storage, API); on the worker socket a
session's commitments travel as one binary frame (`encode_commitments` / `decode_commitments`), so their number
is bounded only by the frame budget (`max_commitments_bytes`), never by the JSON header limit. Parsing is strict
and raises `MalformedCommitment` only.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address

from globai.errors import GlobaiError
from globai.protocol import merkle, signing
from globai.protocol.signing import ChunkScope
from globai.protocol.sketch import (
    DEFAULT_K,
    DEFAULT_VERSION,
    MAX_K,
    MAX_TOKENS,
    MalformedSketch,
    parse_sketch,
    sketch_chunk,
    sketch_size,
)
from globai.protocol.tensors import tensor_sha256 as tensor_sha256  # re-exported: callers import it from here

CHUNK_TOKENS = 32


class MalformedCommitment(GlobaiError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed commitment: {reason}")
        self.reason = reason


def chunk_id(sequence_index: int, position_chunk: int) -> int:
    """uint64 chunk index in a batched session: sequence in the high 32 bits, position chunk in the low 32."""
    if not (0 <= sequence_index < 2**32 and 0 <= position_chunk < 2**32):
        raise ValueError("sequence_index / position_chunk out of range")
    return (sequence_index << 32) | position_chunk


def chunk_bounds(n_tokens: int, first_position: int = 0) -> list[tuple[int, int, int]]:
    """Split token positions [first_position, first_position+n_tokens) at multiples of CHUNK_TOKENS.

    Returns (chunk_index, start, stop) with start/stop relative to the first position, so a decode step's
    single token maps to the chunk of its absolute position.
    """
    out: list[tuple[int, int, int]] = []
    pos, end = first_position, first_position + n_tokens
    while pos < end:
        index = pos // CHUNK_TOKENS
        stop = min(end, (index + 1) * CHUNK_TOKENS)
        out.append((index, pos - first_position, stop - first_position))
        pos = stop
    return out


@dataclass(frozen=True)
class ChunkCommitment:
    scope: ChunkScope
    chunk_index: int
    output_sha256: bytes
    sketch: bytes

    @property
    def sketch_sha256(self) -> bytes:
        return hashlib.sha256(self.sketch).digest()

    @property
    def digest(self) -> bytes:
        """The domain-separated digest that is signed and is the Merkle leaf's content (evidence hash)."""
        return signing.commit_digest(self.scope, self.chunk_index, self.output_sha256, self.sketch_sha256)

    @property
    def leaf(self) -> bytes:
        return merkle.commitment_leaf(self.digest)


@dataclass(frozen=True)
class SignedCommitment:
    commitment: ChunkCommitment
    signature: bytes

    def signer(self) -> str:
        """Recovered signer; raises `signing.BadSignature`."""
        return signing.recover_signer(self.commitment.digest, self.signature)

    def to_json(self) -> dict[str, Any]:
        c = self.commitment
        return {
            "chain_id": c.scope.chain_id,
            "job_id": "0x" + c.scope.job_id.hex(),
            "task_id": "0x" + c.scope.task_id.hex(),
            "stage": c.scope.stage,
            "job_nonce": "0x" + c.scope.job_nonce.hex(),
            "chunk_index": c.chunk_index,
            "output_sha256": "0x" + c.output_sha256.hex(),
            "sketch": "0x" + c.sketch.hex(),
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: Any, *, hidden: int | None = None) -> SignedCommitment:
        """Strict parse (the sketch too, against `hidden` when given); raises `MalformedCommitment`."""
        if not isinstance(data, dict) or set(data) != set(_FIELDS):
            raise MalformedCommitment("wrong fields")
        try:
            scope = ChunkScope(
                chain_id=_int(data["chain_id"]),
                job_id=_hex(data["job_id"], 32),
                task_id=_hex(data["task_id"], 32),
                stage=_int(data["stage"]),
                job_nonce=_hex(data["job_nonce"], 32),
            )
            sketch = _hex(data["sketch"], None)
            parse_sketch(sketch, hidden=hidden)
            commitment = ChunkCommitment(scope, _int(data["chunk_index"]), _hex(data["output_sha256"], 32), sketch)
            commitment.digest  # noqa: B018 - range-checks chunk_index
            return cls(commitment, _hex(data["signature"], 65))
        except (ValueError, MalformedSketch) as exc:
            raise MalformedCommitment(str(exc)) from exc


_FIELDS = (
    "chain_id",
    "job_id",
    "task_id",
    "stage",
    "job_nonce",
    "chunk_index",
    "output_sha256",
    "sketch",
    "signature",
)


def _int(v: Any) -> int:
    if type(v) is not int:
        raise ValueError("expected an integer")
    return v


def _hex(v: Any, length: int | None) -> bytes:
    if not isinstance(v, str) or not v.startswith("0x"):
        raise ValueError("expected a 0x-hex string")
    raw = bytes.fromhex(v[2:])
    if length is not None and len(raw) != length:
        raise ValueError(f"expected {length} bytes")
    return raw


def commit_chunk(
    scope: ChunkScope, chunk_index: int, chunk: torch.Tensor, k: int = DEFAULT_K, *, version: int = DEFAULT_VERSION
) -> ChunkCommitment:
    """Commitment to one output chunk [tokens, hidden] exactly as it is sent."""
    sha = tensor_sha256(chunk)
    return ChunkCommitment(scope, chunk_index, sha, sketch_chunk(chunk, k, version=version, output_sha256=sha))


def commit_output(
    scope: ChunkScope, output: torch.Tensor, first_position: int = 0, k: int = DEFAULT_K
) -> list[ChunkCommitment]:
    """Commitments for a stage output of one sequence [tokens, hidden] starting at `first_position`.

    A decode step (one token) gives a commitment for a partial chunk; the worker re-commits the chunk when it
    completes, and only the last commitment per chunk index goes into the Merkle root (`task_root`).
    """
    if output.dim() != 2:
        raise ValueError("expected [tokens, hidden]")
    return [
        commit_chunk(scope, index, output[start:stop], k)
        for index, start, stop in chunk_bounds(output.shape[0], first_position)
    ]


def sign_commitment(commitment: ChunkCommitment, account: LocalAccount) -> SignedCommitment:
    return SignedCommitment(commitment, signing.sign_digest(account, commitment.digest))


def verify_commitment(signed: SignedCommitment, expected_signer: str) -> bool:
    """True iff the signature recovers to `expected_signer`.

    The scope inside the commitment must be the one the verifier expects: compare it (or rebuild the
    commitment from the expected scope) before trusting it.
    """
    return signing.verify_signer(signed.commitment.digest, signed.signature, expected_signer)


@dataclass(frozen=True)
class SignedRoot:
    """A worker's signed Merkle root over its chunk commitments for one task."""

    scope: ChunkScope
    chunk_count: int
    root: bytes
    signature: bytes

    @property
    def digest(self) -> bytes:
        return signing.root_digest(self.scope, self.chunk_count, self.root)

    def signer(self) -> str:
        return signing.recover_signer(self.digest, self.signature)


def task_tree(commitments: Sequence[ChunkCommitment]) -> merkle.MerkleTree:
    """Merkle tree over one task's commitments; all must share one scope and have distinct chunk indices."""
    if not commitments:
        raise ValueError("no commitments")
    scope = commitments[0].scope
    if any(c.scope != scope for c in commitments):
        raise ValueError("commitments from different scopes")
    if len({c.chunk_index for c in commitments}) != len(commitments):
        raise ValueError("two commitments for one chunk index")
    return merkle.MerkleTree([c.leaf for c in commitments])


def sign_task_root(commitments: Sequence[ChunkCommitment], account: LocalAccount) -> SignedRoot:
    tree = task_tree(commitments)
    scope = commitments[0].scope
    digest = signing.root_digest(scope, len(commitments), tree.root)
    return SignedRoot(scope, len(commitments), tree.root, signing.sign_digest(account, digest))


def verify_in_root(commitment: ChunkCommitment, proof: Sequence[bytes], signed_root: SignedRoot, signer: str) -> bool:
    """True iff `commitment` is under `signed_root`, same scope, and the root is signed by `signer`."""
    if commitment.scope != signed_root.scope:
        return False
    if not merkle.verify_proof(commitment.leaf, proof, signed_root.root):
        return False
    return signing.verify_signer(signed_root.digest, signed_root.signature, to_checksum_address(signer))


# --- binary wire form of a session's commitments -----------------------------------------------------------------
# Per commitment, little-endian: u64 chunk index, 32 bytes output sha256, 65 bytes signature, u16 sketch length,
# the sketch. The scope is not sent: it is the session's, and the receiver rebuilds every commitment with the
# scope it issued (a worker that signed another scope fails signature verification).
_RECORD = struct.Struct("<Q32s65sH")
MAX_SKETCH_BYTES = max(sketch_size(MAX_TOKENS, MAX_K, version) for version in (1, 2))
MAX_COMMITMENT_BYTES = _RECORD.size + MAX_SKETCH_BYTES


def max_commitments_bytes(batch: int, tokens: int) -> int:
    """Largest legitimate frame for one answer: a prefill of `batch` x `tokens` completes at most
    batch * ceil(tokens / 32) chunks, plus one partial chunk per sequence at close."""
    return batch * (-(-tokens // CHUNK_TOKENS) + 1) * MAX_COMMITMENT_BYTES


def encode_commitments(items: Sequence[SignedCommitment]) -> bytes:
    out = []
    for s in items:
        c = s.commitment
        out.append(_RECORD.pack(c.chunk_index, c.output_sha256, s.signature, len(c.sketch)))
        out.append(c.sketch)
    return b"".join(out)


def decode_commitments(
    raw: bytes, *, scope: ChunkScope, hidden: int | None = None, version: int | None = None
) -> list[SignedCommitment]:
    """Strict parse of `encode_commitments` output under the receiver's `scope`; raises `MalformedCommitment`.

    `version`, when given, is the only sketch version accepted (the market requires the current one of new work,
    docs/verification.md "Sketch version"; records already stored are parsed by `from_json`, any version)."""
    view = memoryview(raw)
    out: list[SignedCommitment] = []
    offset = 0
    while offset < len(view):
        if len(view) - offset < _RECORD.size:
            raise MalformedCommitment("truncated commitment record")
        index, output_sha, signature, sketch_len = _RECORD.unpack_from(view, offset)
        offset += _RECORD.size
        if sketch_len > MAX_SKETCH_BYTES or len(view) - offset < sketch_len:
            raise MalformedCommitment(f"sketch of {sketch_len} bytes does not fit")
        sketch = bytes(view[offset : offset + sketch_len])
        offset += sketch_len
        try:
            parsed = parse_sketch(sketch, hidden=hidden)
            commitment = ChunkCommitment(scope, index, output_sha, sketch)
            commitment.digest  # noqa: B018 - range-checks chunk_index
        except (ValueError, MalformedSketch) as exc:
            raise MalformedCommitment(str(exc)) from exc
        if version is not None and parsed.version != version:
            raise MalformedCommitment(f"obsolete sketch version {parsed.version} (version {version} is required)")
        out.append(SignedCommitment(commitment, signature))
    return out
