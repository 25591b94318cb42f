"""Signed chunk commitments: the signer recovers; no replay across chain, job, task, stage, chunk, nonce."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from eth_account import Account

from globai.protocol.commitments import (
    CHUNK_TOKENS,
    MalformedCommitment,
    SignedCommitment,
    chunk_bounds,
    chunk_id,
    commit_chunk,
    commit_output,
    sign_commitment,
    sign_task_root,
    task_tree,
    tensor_sha256,
    verify_commitment,
    verify_in_root,
)
from globai.protocol.signing import BadSignature, ChunkScope, commit_digest, recover_signer

WORKER = Account.from_key("0x" + "11" * 32)
OTHER = Account.from_key("0x" + "22" * 32)
SCOPE = ChunkScope(chain_id=31337, job_id=b"\x01" * 32, task_id=b"\x02" * 32, stage=1, job_nonce=b"\x03" * 32)


def _output(tokens: int = 70, hidden: int = 64) -> torch.Tensor:
    return torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(7))


def test_sign_and_recover() -> None:
    c = commit_chunk(SCOPE, 0, _output()[:32])
    signed = sign_commitment(c, WORKER)
    assert signed.signer() == WORKER.address
    assert verify_commitment(signed, WORKER.address)
    assert not verify_commitment(signed, OTHER.address)


@pytest.mark.parametrize(
    "change",
    [
        {"chain_id": 1},
        {"job_id": b"\x09" * 32},
        {"task_id": b"\x09" * 32},
        {"stage": 2},
        {"job_nonce": b"\x09" * 32},
    ],
)
def test_signature_does_not_replay_to_another_scope(change: dict) -> None:
    signed = sign_commitment(commit_chunk(SCOPE, 3, _output()[:32]), WORKER)
    moved = dataclasses.replace(signed.commitment, scope=dataclasses.replace(SCOPE, **change))
    assert not verify_commitment(SignedCommitment(moved, signed.signature), WORKER.address)


@pytest.mark.parametrize("field", ["chunk_index", "output_sha256", "sketch"])
def test_signature_does_not_replay_to_another_chunk_or_content(field: str) -> None:
    out = _output()
    signed = sign_commitment(commit_chunk(SCOPE, 0, out[:32]), WORKER)
    other = commit_chunk(SCOPE, 1, out[32:64])
    moved = dataclasses.replace(signed.commitment, **{field: getattr(other, field)})
    assert not verify_commitment(SignedCommitment(moved, signed.signature), WORKER.address)


def test_malformed_and_high_s_signatures() -> None:
    digest = commit_chunk(SCOPE, 0, _output()[:32]).digest
    sig = sign_commitment(commit_chunk(SCOPE, 0, _output()[:32]), WORKER).signature
    with pytest.raises(BadSignature):
        recover_signer(digest, sig[:64])
    with pytest.raises(BadSignature):
        recover_signer(digest, sig[:64] + b"\x05")
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (n - s).to_bytes(32, "big") + bytes([55 - sig[64]])  # the malleable twin
    with pytest.raises(BadSignature, match="non-canonical"):
        recover_signer(digest, flipped)


def test_digest_is_abi_encoded_with_tag() -> None:
    # Pinned so a Solidity verifier and other clients can be checked against the same value.
    d = commit_digest(SCOPE, 5, b"\x0a" * 32, b"\x0b" * 32)
    from eth_abi import encode
    from eth_utils import keccak

    body = encode(
        ["uint256", "bytes32", "bytes32", "uint32", "uint64", "bytes32", "bytes32", "bytes32"],
        [31337, b"\x01" * 32, b"\x02" * 32, 1, 5, b"\x03" * 32, b"\x0a" * 32, b"\x0b" * 32],
    )
    assert d == keccak(b"GLOBAI-COMMIT-V1" + body)


def test_chunking() -> None:
    assert chunk_bounds(70) == [(0, 0, 32), (1, 32, 64), (2, 64, 70)]
    assert chunk_bounds(1, first_position=70) == [(2, 0, 1)]
    assert chunk_bounds(40, first_position=20) == [(0, 0, 12), (1, 12, 40)]
    assert chunk_id(3, 2) == (3 << 32) + 2
    out = _output()
    cs = commit_output(SCOPE, out)
    assert [c.chunk_index for c in cs] == [0, 1, 2]
    assert cs[2].output_sha256 == tensor_sha256(out[64:70])
    assert CHUNK_TOKENS == 32


def test_bf16_bytes_hash() -> None:
    out = _output().to(torch.bfloat16)
    assert tensor_sha256(out) != tensor_sha256(out.float())
    assert len(commit_chunk(SCOPE, 0, out[:32]).output_sha256) == 32


def test_json_round_trip_and_strictness() -> None:
    signed = sign_commitment(commit_chunk(SCOPE, 1, _output()[32:64]), WORKER)
    data = signed.to_json()
    assert SignedCommitment.from_json(data, hidden=64) == signed
    for bad in (
        {**data, "stage": "1"},
        {**data, "job_id": "0x00"},
        {**data, "sketch": "0x" + "00" * 12},
        {**data, "extra": 1},
        {**data, "chunk_index": 2**64},
        {**data, "signature": "zz"},
    ):
        with pytest.raises(MalformedCommitment):
            SignedCommitment.from_json(bad)
    with pytest.raises(MalformedCommitment):
        SignedCommitment.from_json(data, hidden=128)


def test_task_root_signed_and_proves_each_chunk() -> None:
    cs = commit_output(SCOPE, _output(tokens=200))
    root = sign_task_root(cs, WORKER)
    assert root.signer() == WORKER.address
    tree = task_tree(cs)
    for c in cs:
        assert verify_in_root(c, tree.proof(c.leaf), root, WORKER.address)
    assert not verify_in_root(cs[0], tree.proof(cs[0].leaf), root, OTHER.address)
    other_scope = dataclasses.replace(cs[0], scope=dataclasses.replace(SCOPE, job_id=b"\x07" * 32))
    assert not verify_in_root(other_scope, tree.proof(cs[0].leaf), root, WORKER.address)
    with pytest.raises(ValueError):
        task_tree([cs[0], cs[0]])


def test_binary_frame_round_trip_any_length_and_strictness() -> None:
    """A session's commitments travel as one frame whatever their number (a 16x512-token prefill is 256 of them,
    ~0.3 MB: far over the 64 KiB JSON header limit); the receiver rebuilds them under the scope it issued."""
    from globai.protocol.commitments import decode_commitments, encode_commitments, max_commitments_bytes
    from globai.protocol.pipeline import attach_commitments, take_commitments
    from globai.protocol.tensors import decode_message, encode_message

    out = _output(tokens=512)
    chunks = commit_output(SCOPE, out)
    signed = [
        sign_commitment(dataclasses.replace(c, chunk_index=chunk_id(s, c.chunk_index)), WORKER)
        for s in range(16)
        for c in chunks
    ]
    raw = encode_commitments(signed)
    assert len(raw) > 64 * 1024 and len(raw) <= max_commitments_bytes(16, 512)
    assert decode_commitments(raw, scope=SCOPE, hidden=64) == signed
    # Another scope parses but no signature verifies under it.
    other = decode_commitments(raw, scope=dataclasses.replace(SCOPE, stage=2), hidden=64)
    assert not any(verify_commitment(s, WORKER.address) for s in other[:4])
    for bad in (raw[:-1], raw + b"\x00", raw[:100]):
        with pytest.raises(MalformedCommitment):
            decode_commitments(bad, scope=SCOPE, hidden=64)
    with pytest.raises(MalformedCommitment):
        decode_commitments(raw, scope=SCOPE, hidden=128)
    # Through a real message: the header stays tiny, the output tensor is separated from the frame.
    header: dict = {"op": "result", "rid": 1}
    tensors = [out[None]]
    attach_commitments(header, tensors, signed)
    message = decode_message(encode_message(header, tensors), max_bytes=10**8)
    outputs, got = take_commitments(message, scope=SCOPE, width=64)
    assert got == signed and len(outputs) == 1 and torch.equal(outputs[0], out[None])
    header["commitments"] = len(signed) + 1
    with pytest.raises(MalformedCommitment):
        take_commitments(decode_message(encode_message(header, tensors), max_bytes=10**8), scope=SCOPE, width=64)


def test_commitment_is_under_300_bytes_per_32_tokens_and_old_records_parse() -> None:
    """Signed commitment = sha256 (32) + version-2 sketch (200) + signature (65) = 297 bytes per 32 tokens; a
    version-1 (top-8) commitment, as records kept before the change hold it, still parses and verifies."""
    from globai.protocol.commitments import decode_commitments, encode_commitments

    chunk = _output(tokens=32, hidden=576)
    new = sign_commitment(commit_chunk(SCOPE, 0, chunk), WORKER)
    assert len(new.commitment.output_sha256) + len(new.commitment.sketch) + len(new.signature) == 297
    old = sign_commitment(commit_chunk(SCOPE, 1, chunk, 8, version=1), WORKER)
    assert len(old.commitment.sketch) == 1032
    for signed in (new, old):
        assert SignedCommitment.from_json(signed.to_json(), hidden=576) == signed
        assert verify_commitment(signed, WORKER.address)
    assert decode_commitments(encode_commitments([new, old]), scope=SCOPE, hidden=576) == [new, old]


def test_signatures_are_eth_accounts_own() -> None:
    """`sign_digest` / `recover_signer` call libsecp256k1 directly: byte-identical to eth-account's EIP-191."""
    import hashlib

    from eth_account import Account
    from eth_account.messages import encode_defunct

    from globai.protocol.signing import sign_digest

    for i in range(20):
        account = Account.from_key(hashlib.sha256(b"key%d" % i).digest())
        digest = hashlib.sha256(b"digest%d" % i).digest()
        expected = bytes(account.sign_message(encode_defunct(primitive=digest)).signature)
        assert sign_digest(account, digest) == expected
        assert recover_signer(digest, expected) == account.address
        assert Account.recover_message(encode_defunct(primitive=digest), signature=expected) == account.address
