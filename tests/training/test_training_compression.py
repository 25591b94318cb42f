"""Pseudo-gradient codec: round-trip error bounds and refusal of malformed payloads."""

from __future__ import annotations

import math

import pytest
import torch

from globai.protocol.compression import (
    Codec,
    CompressionError,
    compress,
    decode_update,
    encode_update,
    parse_codec,
    payload_digest,
    shapes_of,
)


def _update(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    big_row = torch.randn(16, 32, generator=g)
    big_row[3] *= 1000  # one large row must not wreck the precision of the others
    return {
        "a.weight": big_row,
        "b.weight": torch.randn(8, 4, 3, generator=g) * 1e-4,
        "norm.weight": torch.randn(32, generator=g),
        "zeros": torch.zeros(5, 2),
    }


def test_parse_codec() -> None:
    assert parse_codec("int8") == Codec("int8")
    assert parse_codec("topk:0.01") == Codec("topk", 0.01)
    assert parse_codec("topk:1") == Codec("topk", 1.0)
    for bad in ("int4", "topk:0", "topk:1.5", "topk:", "topk:abc", ""):
        with pytest.raises(CompressionError):
            parse_codec(bad)


def test_none_round_trip_is_exact() -> None:
    u = _update()
    out = decode_update(encode_update(u, Codec("none")), shapes_of(u), Codec("none"))
    assert all(torch.equal(out[n], u[n]) for n in u)


def test_int8_error_is_half_a_step_per_row() -> None:
    u = _update()
    payload = encode_update(u, Codec("int8"))
    out = decode_update(payload, shapes_of(u), Codec("int8"))
    for name, x in u.items():
        rows = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        err = (out[name].reshape(rows.shape) - rows).abs()
        assert bool((err <= step / 2 + 1e-6 * step + 1e-30).all()), name
    # Rows other than the huge one keep ~1% relative precision.
    small = torch.cat([u["a.weight"][:3], u["a.weight"][4:]])
    small_out = torch.cat([out["a.weight"][:3], out["a.weight"][4:]])
    assert float((small_out - small).norm() / small.norm()) < 0.01
    assert torch.equal(out["zeros"], u["zeros"])
    # ~1 byte per value plus one fp32 scale per row and a small header.
    numel = sum(t.numel() for t in u.values())
    assert len(payload) < numel + 4 * 64 + 1200


def test_topk_keeps_largest_entries_exactly() -> None:
    u = _update()
    codec = parse_codec("topk:0.1")
    out = decode_update(encode_update(u, codec), shapes_of(u), codec)
    for name, x in u.items():
        k = max(1, math.ceil(0.1 * x.numel()))
        kept = out[name] != 0
        assert int(kept.sum()) <= k
        assert torch.equal(out[name][kept], x[kept])
        if int(kept.sum()) == k:  # everything dropped is no larger than anything kept
            assert float(x[~kept].abs().max()) <= float(x[kept].abs().min())


@pytest.mark.parametrize("codec", ["none", "int8", "topk:0.1"])
def test_encoding_is_byte_stable(codec: str) -> None:
    # Workers sign the digest of these bytes and replays compare them: equal updates must give equal bytes.
    u = _update()
    digests = {payload_digest(encode_update(u, parse_codec(codec))) for _ in range(10)}
    assert len(digests) == 1


@pytest.mark.parametrize("codec", ["none", "int8", "topk:0.2"])
def test_decode_rejects_mismatches(codec: str) -> None:
    c = parse_codec(codec)
    u = _update()
    payload = encode_update(u, c)
    shapes = shapes_of(u)
    with pytest.raises(CompressionError):
        decode_update(payload, {**shapes, "extra": (2,)}, c)
    with pytest.raises(CompressionError):
        decode_update(payload, {**shapes, "a.weight": (32, 16)} if codec != "topk:0.2" else {"a.weight": (1,)}, c)
    other = parse_codec("int8" if codec != "int8" else "none")
    with pytest.raises(CompressionError):
        decode_update(payload, shapes, other)
    with pytest.raises(CompressionError):
        decode_update(b"\x00" * 3, shapes, c)
    with pytest.raises(CompressionError):
        decode_update(b"garbage" * 20, shapes, c)


def test_decode_rejects_bad_values_and_indices() -> None:
    u = {"w": torch.ones(4, 4)}
    bad = dict(u)
    bad["w"] = bad["w"].clone()
    bad["w"][0, 0] = float("nan")
    with pytest.raises(CompressionError, match="non-finite"):
        decode_update(encode_update(bad, Codec("none")), shapes_of(u), Codec("none"))
    # Forge a top-k payload whose index points past the tensor.
    from safetensors.torch import save

    forged = compress(u, Codec("topk", 0.25))
    forged["w:i"] = torch.tensor([0, 1, 2, 99], dtype=torch.int32)
    meta = {"globai": '{"codec": "topk:0.25", "format": "globai-pseudo-gradient/1"}'}
    with pytest.raises(CompressionError, match="out of range"):
        decode_update(save(forged, metadata=meta), shapes_of(u), Codec("topk", 0.25))
