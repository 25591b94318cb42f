"""Sketch: deterministic round trip, size bound, and a parser that fails closed on anything malformed."""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from globai.protocol.sketch import (
    DEFAULT_K,
    MalformedSketch,
    compute_sketch,
    encode_sketch,
    parse_sketch,
    sketch_chunk,
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
    assert len(data) == sketch_size(32, DEFAULT_K) == 8 + 32 * 8 * 4 <= 1032
    parsed = parse_sketch(data, hidden=256, k=DEFAULT_K, n_tokens=32)
    assert encode_sketch(parsed) == data
    assert data == sketch_chunk(chunk.clone())  # deterministic
    mags = chunk.float().abs()
    for t in range(32):
        chosen = list(parsed.indices[t])
        rest = [i for i in range(256) if i not in chosen]
        assert mags[t, chosen].min() >= mags[t, rest].max()  # a true top-k (ties may pick either)
        for i, v in zip(parsed.indices[t], parsed.values[t], strict=True):
            assert v == float(chunk[t, i].float().half())


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
    good = bytearray(sketch_chunk(_chunk(tokens=3, hidden=40), k=5))
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
