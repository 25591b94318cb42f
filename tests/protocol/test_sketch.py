"""Sketch: deterministic round trip, size bound, and a parser that fails closed on anything malformed."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from globai.protocol.commitments import tensor_sha256
from globai.protocol.sketch import (
    DEFAULT_K,
    MalformedSketch,
    compute_sketch,
    encode_sketch,
    parse_sketch,
    project,
    sketch_chunk,
    sketch_like,
    sketch_size,
    top_indices,
)


def _chunk(seed: int = 0, tokens: int = 32, hidden: int = 256, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, hidden, generator=g).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_and_size(dtype: torch.dtype) -> None:
    chunk = _chunk(dtype=dtype)
    data = sketch_chunk(chunk)
    # the signed commitment is sha256 (32) + sketch + signature (65): <= 300 bytes per 32 tokens
    assert len(data) == sketch_size(32, DEFAULT_K) == 8 + 32 * (4 * 1 + 2) == 200 <= 300 - 32 - 65
    parsed = parse_sketch(data, hidden=256, k=DEFAULT_K, n_tokens=32, version=2)
    assert encode_sketch(parsed) == data
    assert data == sketch_chunk(chunk.clone())  # deterministic
    want = project(chunk, tensor_sha256(chunk)).float().clamp(-65504, 65504).half().float()
    assert torch.equal(parsed.projection_tensor().float(), want)
    mags = chunk.float().abs()
    for t in range(32):
        chosen = list(parsed.indices[t])
        rest = [i for i in range(256) if i not in chosen]
        assert mags[t, chosen].min() >= mags[t, rest].max()  # a true top-k (ties may pick either)
        for i, v in zip(parsed.indices[t], parsed.values[t], strict=True):
            assert v == float(chunk[t, i].float().half())


def test_version_1_still_parses() -> None:
    """Records written before version 2 (top-8, no projection, 1032 bytes for 32 tokens) keep verifying."""
    chunk = _chunk()
    old = sketch_chunk(chunk, 8, version=1)
    assert old[:4] == b"GSK1" and len(old) == sketch_size(32, 8, version=1) == 1032
    parsed = parse_sketch(old, hidden=256, k=8, n_tokens=32)
    assert parsed.version == 1 and parsed.projections == () and encode_sketch(parsed) == old
    assert sketch_like(old, chunk) == old and sketch_like(sketch_chunk(chunk), chunk) == sketch_chunk(chunk)
    with pytest.raises(MalformedSketch, match="version"):
        parse_sketch(old, version=2)


def test_projection_directions_are_fixed_by_the_output_hash() -> None:
    """Directions come from the chunk's own sha256 (so from its exact bytes): same hash, same directions, on every
    machine (integer-derived); one changed bit of the output gives unrelated directions."""
    chunk = _chunk(tokens=4, hidden=64)
    sha = tensor_sha256(chunk)

    def directions(sha: bytes) -> torch.Tensor:  # row t of each projected basis vector: d_t
        return torch.stack([project(torch.eye(64)[i].expand(4, 64), sha) for i in range(64)], dim=1)

    d = directions(sha)
    assert torch.equal(d, directions(sha)) and d.dtype == torch.float64
    assert abs(float(d.pow(2).sum(dim=1).mean()) - 1.0) < 0.25  # ~unit norm per row
    assert not torch.equal(d[0], d[1])  # each row its own direction
    assert torch.allclose(project(chunk, sha), (chunk.double() * d).sum(dim=1), rtol=1e-12, atol=1e-12)
    flipped = chunk.clone()
    flipped[0, 0] = torch.nextafter(flipped[0, 0], torch.tensor(10.0))
    other = directions(tensor_sha256(flipped))
    assert float((d * other).sum(dim=1).abs().max()) < 0.6
    assert sketch_chunk(chunk) != sketch_chunk(chunk, output_sha256=bytes(32))


def test_ties_and_saturation_are_canonical() -> None:
    chunk = torch.zeros(2, 16)
    chunk[0, [3, 7, 1]] = torch.tensor([2.0, -2.0, 2.0])
    chunk[1, 5] = 1e6  # beyond fp16: saturates, never inf
    s = compute_sketch(chunk, k=4)
    assert s.indices[0][:3] == (1, 3, 7)
    assert s.values[1][0] == 65504.0
    parse_sketch(encode_sketch(s))


def test_rejects_unsketchable_tensors() -> None:
    with pytest.raises(ValueError):
        compute_sketch(torch.zeros(33, 16))
    with pytest.raises(ValueError):
        compute_sketch(torch.full((2, 16), float("nan")))
    with pytest.raises(ValueError):
        compute_sketch(torch.zeros(2, 4), k=8)


def _raw(n: int, k: int, hidden: int, rows: list[tuple[list[int], list[float]]]) -> bytes:
    out = struct.pack("<4sBBH", b"GSK1", n, k, hidden)
    for idx, val in rows:
        out += struct.pack(f"<{k}H{k}e", *idx, *val)
    return out


def _raw2(n: int, k: int, hidden: int, rows: list[tuple[list[int], list[float], float]]) -> bytes:
    out = struct.pack("<4sBBH", b"GSK2", n, k, hidden)
    for idx, val, proj in rows:
        out += struct.pack(f"<{k}H{k}ee", *idx, *val, proj)
    return out


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "too short"),
        (b"XXXX" + bytes(4 + 16), "bad magic"),
        (_raw(1, 2, 16, [([0, 1], [2.0, 1.0])]) + b"\0", "length"),
        (_raw(1, 2, 16, [([0, 1], [2.0, 1.0])])[:-1], "length"),
        (_raw(1, 2, 16, [([0, 16], [2.0, 1.0])]), "out of range"),
        (_raw(1, 2, 16, [([3, 3], [2.0, 1.0])]), "duplicate"),
        (_raw(1, 2, 16, [([0, 1], [float("nan"), 1.0])]), "NaN"),
        (_raw(1, 2, 16, [([0, 1], [float("inf"), 1.0])]), "NaN"),
        (_raw(1, 2, 16, [([0, 1], [1.0, 2.0])]), "canonical"),
        (_raw(0, 2, 16, []), "n_tokens"),
        (_raw(1, 0, 16, [([], [])]), "k 0"),
        (_raw(1, 4, 2, [([0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0])]), "k 4"),
        (_raw2(1, 2, 16, [([0, 1], [2.0, 1.0], 0.5)])[:-2], "length"),
        (_raw2(1, 2, 16, [([0, 1], [2.0, 1.0], float("nan"))]), "NaN"),
        (_raw2(1, 2, 16, [([0, 1], [2.0, 1.0], float("inf"))]), "NaN"),
        (_raw2(1, 2, 16, [([1, 0], [1.0, 2.0], 0.5)]), "canonical"),
    ],
)
def test_malformed(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedSketch, match=reason):
        parse_sketch(data)


def test_expectations_enforced() -> None:
    data = sketch_chunk(_chunk(tokens=4, hidden=64), k=4)
    with pytest.raises(MalformedSketch, match="hidden"):
        parse_sketch(data, hidden=128)
    with pytest.raises(MalformedSketch, match="k is"):
        parse_sketch(data, k=8)
    with pytest.raises(MalformedSketch, match="n_tokens"):
        parse_sketch(data, n_tokens=32)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_typed_error(data: bytes) -> None:
    try:
        parse_sketch(data)
    except MalformedSketch:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_valid_sketch(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from([1, 2]))
    good = bytearray(sketch_chunk(_chunk(tokens=3, hidden=40), k=5, version=version))
    n_edits = data.draw(st.integers(1, 6))
    for _ in range(n_edits):
        pos = data.draw(st.integers(0, len(good) - 1))
        good[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        good = good[: data.draw(st.integers(0, len(good)))]
    try:
        s = parse_sketch(bytes(good))
    except MalformedSketch:
        return
    assert encode_sketch(s) == bytes(good)  # anything accepted is canonical


def test_top_indices_is_a_stable_sort_cut_at_k() -> None:
    """The fast top-k (no whole-row sort) picks exactly what a stable sort of -|x| does, ties included."""
    g = torch.Generator().manual_seed(5)
    for width, k in ((16, 1), (64, 8), (300, 64)):
        x = torch.randint(-4, 5, (32, width), generator=g).float() * 0.5  # many ties, zeros and sign pairs
        want = torch.sort(-x.abs(), dim=1, stable=True).indices[:, :k]
        assert torch.equal(top_indices(x, k), want)
        y = torch.randn(32, width, generator=g)
        assert torch.equal(top_indices(y, k), torch.sort(-y.abs(), dim=1, stable=True).indices[:, :k])
