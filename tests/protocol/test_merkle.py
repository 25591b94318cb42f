"""Merkle trees: OpenZeppelin conventions, every leaf proves, any tampering fails."""

from __future__ import annotations

import pytest
from eth_abi import encode
from eth_utils import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from globai.protocol.merkle import (
    MerkleError,
    MerkleTree,
    SettlementRecord,
    hash_pair,
    leaf_hash,
    merkle_root,
    process_proof,
    settlement_leaf,
    verify_proof,
)

leaves_st = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=40, unique=True)


@settings(max_examples=150, deadline=None)
@given(leaves_st)
def test_every_leaf_proves(leaves: list[bytes]) -> None:
    tree = MerkleTree(leaves)
    for leaf in leaves:
        assert verify_proof(leaf, tree.proof(leaf), tree.root)
    assert merkle_root(list(reversed(leaves))) == tree.root  # order-independent (leaves are sorted)


@settings(max_examples=150, deadline=None)
@given(leaves_st, st.data())
def test_tampering_fails(leaves: list[bytes], data: st.DataObject) -> None:
    tree = MerkleTree(leaves)
    leaf = data.draw(st.sampled_from(leaves))
    proof = tree.proof(leaf)
    flip = data.draw(st.integers(0, 255))
    bit = 1 << data.draw(st.integers(0, 7))
    bad_leaf = bytearray(leaf)
    bad_leaf[flip % 32] ^= bit
    assert not verify_proof(bytes(bad_leaf), proof, tree.root)
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        node = bytearray(proof[i])
        node[flip % 32] ^= bit
        assert not verify_proof(leaf, proof[:i] + [bytes(node)] + proof[i + 1 :], tree.root)
        assert not verify_proof(leaf, proof[:-1], tree.root) or len(leaves) == 1
    assert not verify_proof(leaf, proof + [b"\x00" * 32], tree.root)


def test_small_trees_by_hand() -> None:
    a, b, c = (keccak(bytes([i])) for i in range(3))
    assert merkle_root([a]) == a
    assert merkle_root([a, b]) == keccak(min(a, b) + max(a, b))
    # Three leaves, OpenZeppelin layout: sorted s0<s1<s2 go to tree[4], tree[3], tree[2].
    s0, s1, s2 = sorted([a, b, c])
    assert merkle_root([a, b, c]) == hash_pair(hash_pair(s1, s0), s2)
    assert process_proof(s2, MerkleTree([a, b, c]).proof(s2)) == merkle_root([a, b, c])


def test_standard_leaf_and_settlement_leaf() -> None:
    rec = SettlementRecord(b"\x01" * 32, b"\x02" * 32, "0x" + "ab" * 20, 96, 10**18)
    expected = keccak(
        keccak(
            encode(
                ["bytes32", "bytes32", "address", "uint256", "uint256"],
                [b"\x01" * 32, b"\x02" * 32, "0x" + "ab" * 20, 96, 10**18],
            )
        )
    )
    assert (
        settlement_leaf(rec)
        == expected
        == leaf_hash(["bytes32", "bytes32", "address", "uint256", "uint256"], rec.values())
    )


def test_openzeppelin_reference_vectors() -> None:
    # Roots and proof printed by @openzeppelin/merkle-tree 1.0.8 (npm) for the same values:
    # StandardMerkleTree.of([["1"],["2"],["3"]], ["uint256"]).root
    leaves = [leaf_hash(["uint256"], [i]) for i in (1, 2, 3)]
    assert merkle_root(leaves).hex() == "6115218373392d12cc18a3d50ad2a53a2c99b391060070dfc0ebbbbe158ec944"
    # ... and two settlement records, with getProof(1)
    recs = [
        SettlementRecord(b"\x01" * 32, b"\x02" * 32, "0x" + "ab" * 20, 96, 10**18),
        SettlementRecord(b"\x01" * 32, b"\x03" * 32, "0x" + "cd" * 20, 5, 7),
    ]
    tree = MerkleTree([settlement_leaf(r) for r in recs])
    assert tree.root.hex() == "eb2b09e2d03085d9ebc4093c9c744f84e273475b691a665b06f4009a1ceeb3a3"
    assert [p.hex() for p in tree.proof(settlement_leaf(recs[1]))] == [
        "6052b7469b56421e4ddb6c3bc2dfe697682bb565db74783e9608230d7eb2aa97"
    ]


def test_errors() -> None:
    with pytest.raises(MerkleError):
        MerkleTree([])
    with pytest.raises(MerkleError):
        MerkleTree([b"\x00" * 31])
    with pytest.raises(MerkleError):
        MerkleTree([b"\x00" * 32, b"\x00" * 32])
    with pytest.raises(MerkleError):
        MerkleTree([b"\x00" * 32]).proof(b"\x01" * 32)
    assert not verify_proof(b"\x00" * 32, [b"\x00"], b"\x00" * 32)
