"""Keccak Merkle trees compatible with OpenZeppelin's `MerkleProof` and `@openzeppelin/merkle-tree`.

Conventions (the same as OpenZeppelin's `StandardMerkleTree`, so its JS library and `MerkleProof.verify`
reproduce our roots and accept our proofs):

- leaf = keccak256(bytes.concat(keccak256(abi.encode(values...)))) - the double hash keeps a 64-byte inner
  node from ever being accepted as a leaf (second-preimage attack);
- inner node = keccak256(sorted(a, b)) (commutative: a proof is a list of sibling hashes, no left/right bits);
- leaves are sorted by hash, placed right-to-left at the bottom of a complete binary tree stored as an array
  (`tree[0]` is the root, children of i are 2i+1 and 2i+2), exactly as `makeMerkleTree` does.

Two kinds of leaves live here: a worker's chunk commitments (leaf over the signed commit digest) and the
settlement report's per-task records (jobId, taskId, payee, units, amount).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import encode as abi_encode
from eth_utils import keccak, to_checksum_address

from globai.errors import GlobaiError

COMMITMENT_LEAF_TYPES = ("bytes32",)
SETTLEMENT_LEAF_TYPES = ("bytes32", "bytes32", "address", "uint256", "uint256")


class MerkleError(GlobaiError):
    """A tree could not be built or a proof is malformed."""


def leaf_hash(types: Sequence[str], values: Sequence[Any]) -> bytes:
    """OpenZeppelin standard leaf: keccak256(bytes.concat(keccak256(abi.encode(values))))."""
    return keccak(keccak(abi_encode(list(types), list(values))))


def hash_pair(a: bytes, b: bytes) -> bytes:
    """Commutative inner node, as `MerkleProof._hashPair`: keccak256 of the two hashes in ascending order."""
    return keccak(a + b) if a < b else keccak(b + a)


def commitment_leaf(commit_digest: bytes) -> bytes:
    """Leaf for one chunk commitment; the signed digest already binds job, task, stage, chunk and hashes."""
    return leaf_hash(COMMITMENT_LEAF_TYPES, [commit_digest])


@dataclass(frozen=True)
class SettlementRecord:
    """One per-task line of a job's settlement report; `amount` is GLB wei paid for `units` verified units."""

    job_id: bytes
    task_id: bytes
    payee: str
    units: int
    amount: int

    def values(self) -> list[Any]:
        return [self.job_id, self.task_id, to_checksum_address(self.payee), self.units, self.amount]


def settlement_leaf(record: SettlementRecord) -> bytes:
    """Leaf over abi.encode(bytes32 jobId, bytes32 taskId, address payee, uint256 units, uint256 amount)."""
    return leaf_hash(SETTLEMENT_LEAF_TYPES, record.values())


class MerkleTree:
    """A tree over already-hashed leaves (use `leaf_hash`, `commitment_leaf` or `settlement_leaf`).

    Duplicate leaves are rejected: the report and commitment sets are sets, and a duplicate would make
    `proof(leaf)` ambiguous.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise MerkleError("a Merkle tree needs at least one leaf")
        if any(not isinstance(leaf, bytes) or len(leaf) != 32 for leaf in leaves):
            raise MerkleError("leaves must be 32-byte hashes")
        if len(set(leaves)) != len(leaves):
            raise MerkleError("duplicate leaf")
        ordered = sorted(leaves)
        size = 2 * len(ordered) - 1
        tree: list[bytes] = [b""] * size
        for i, leaf in enumerate(ordered):
            tree[size - 1 - i] = leaf
        for i in range(size - 1 - len(ordered), -1, -1):
            tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
        self._tree = tree
        self._position = {leaf: size - 1 - i for i, leaf in enumerate(ordered)}

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def leaves(self) -> list[bytes]:
        """Leaves in tree order (sorted by hash)."""
        return sorted(self._position)

    def __len__(self) -> int:
        return len(self._position)

    def proof(self, leaf: bytes) -> list[bytes]:
        """Sibling hashes from `leaf` up to the root (the `proof` argument of `MerkleProof.verify`)."""
        try:
            i = self._position[leaf]
        except KeyError:
            raise MerkleError("leaf not in tree") from None
        path: list[bytes] = []
        while i > 0:
            sibling = i - 1 if i % 2 == 0 else i + 1
            path.append(self._tree[sibling])
            i = (i - 1) // 2
        return path


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """Root implied by `leaf` and `proof` (as `MerkleProof.processProof`)."""
    computed = leaf
    for node in proof:
        if not isinstance(node, bytes) or len(node) != 32:
            raise MerkleError("proof nodes must be 32-byte hashes")
        computed = hash_pair(computed, node)
    return computed


def verify_proof(leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """True iff `proof` shows `leaf` is in the tree with `root`; a malformed proof is False, not an error."""
    try:
        return process_proof(leaf, proof) == root
    except MerkleError:
        return False


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Root of `MerkleTree(leaves)`."""
    return MerkleTree(leaves).root
