"""Wire codec: round trips, every malformed-frame class, and a fuzz proving only FrameError ever escapes."""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from globai.errors import GlobaiError
from globai.protocol.tensors import (
    DTYPE_CODES,
    FrameError,
    decode_message,
    decode_tensor,
    encode_message,
    encode_tensor,
)

MB = 1 << 20


@pytest.mark.parametrize("dtype", list(DTYPE_CODES))
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 5, 7), (1, 1, 1, 1, 1, 1, 1, 2)])
def test_round_trip_is_bit_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    tensor = (torch.randn(shape) * 1000).to(dtype)
    decoded = decode_tensor(encode_tensor(tensor), max_bytes=MB, expected_dtype=dtype, expected_shape=shape)
    assert decoded.dtype == dtype and decoded.shape == tensor.shape
    assert torch.equal(decoded, tensor)


def test_non_contiguous_and_nan_survive() -> None:
    tensor = torch.arange(24, dtype=torch.float32).reshape(4, 6).t()
    tensor[0, 0] = float("nan")
    decoded = decode_tensor(encode_tensor(tensor), max_bytes=MB)
    assert torch.equal(decoded.nan_to_num(-1), tensor.nan_to_num(-1))


def test_frame_error_is_a_globai_error() -> None:
    assert issubclass(FrameError, GlobaiError)


def _frame() -> bytes:
    return encode_tensor(torch.randn(2, 3, 4))


def _reason(buf: bytes, **kwargs: object) -> str:
    with pytest.raises(FrameError) as info:
        decode_tensor(buf, **{"max_bytes": MB, **kwargs})  # type: ignore[arg-type]
    return info.value.reason


def test_bad_magic() -> None:
    assert _reason(b"XXXX" + _frame()[4:]) == "bad_magic"


def test_truncated_anywhere() -> None:
    frame = _frame()
    for cut in (0, 5, 19, 30, len(frame) - 1):
        assert _reason(frame[:cut]) == "truncated"


def test_trailing_bytes() -> None:
    assert _reason(_frame() + b"\0") == "trailing_bytes"


def test_wrong_hash() -> None:
    frame = bytearray(_frame())
    frame[-1] ^= 0x01  # flip one payload bit
    assert _reason(bytes(frame)) == "hash_mismatch"


def test_bad_dtype_code_and_disallowed_dtype() -> None:
    frame = bytearray(_frame())
    frame[5] = 99
    assert _reason(bytes(frame)) == "bad_dtype"
    with pytest.raises(FrameError) as info:
        encode_tensor(torch.zeros(2, dtype=torch.float64))
    assert info.value.reason == "bad_dtype"
    assert _reason(_frame(), expected_dtype=torch.bfloat16) == "bad_dtype"


def test_huge_declared_shape_is_refused_before_allocation() -> None:
    # 2^61 float32 elements declared, a few bytes present: must be refused by size, never allocated.
    shape = (1 << 30, 1 << 31)
    header = struct.pack("<4sBBBBIQ", b"GLBT", 1, 1, 2, 0, 20 + 16 + 32, 4 * (1 << 61))
    buf = header + struct.pack("<2Q", *shape) + hashlib.sha256(b"").digest()
    assert _reason(buf) == "oversized"


def test_shape_not_matching_payload_length() -> None:
    header = struct.pack("<4sBBBBIQ", b"GLBT", 1, 1, 1, 0, 20 + 8 + 32, 8)
    payload = b"\0" * 8
    buf = header + struct.pack("<Q", 3) + hashlib.sha256(payload).digest() + payload  # 3 floats != 8 bytes
    assert _reason(buf) == "shape_mismatch"


def test_oversized_payload() -> None:
    assert _reason(encode_tensor(torch.zeros(1024)), max_bytes=1000) == "oversized"


def test_expected_shape_template_and_predicate() -> None:
    frame = _frame()
    assert decode_tensor(frame, max_bytes=MB, expected_shape=(2, None, 4)).shape == (2, 3, 4)
    assert _reason(frame, expected_shape=(2, 3)) == "shape_mismatch"
    assert _reason(frame, expected_shape=(1, None, 4)) == "shape_mismatch"
    assert _reason(frame, expected_shape=lambda s: s[-1] == 256) == "shape_mismatch"


def test_message_round_trip() -> None:
    header = {"op": "forward", "session": "s-1", "step": 3, "positions": [[4, 5]]}
    tensors = [torch.randn(1, 2, 8), torch.tensor([[4, 5]])]
    msg = decode_message(encode_message(header, tensors), max_bytes=MB)
    assert msg.header == header
    assert all(torch.equal(a, b) for a, b in zip(msg.tensors, tensors, strict=True))
    assert decode_message(encode_message({"op": "ping"}), max_bytes=0).tensors == []


def test_message_malformed() -> None:
    good = encode_message({"op": "x"}, [torch.zeros(4)])
    cases = {
        "bad_magic": b"NOPE" + good[4:],
        "truncated": good[:-1],
        "trailing_bytes": good + b"!",
        "bad_json": good[:21] + b"x" + good[22:],  # the JSON's closing brace
    }
    for reason, buf in cases.items():
        with pytest.raises(FrameError) as info:
            decode_message(buf, max_bytes=MB)
        assert info.value.reason == reason, reason
    array_header = encode_message({"op": "x"})[:8] + struct.pack("<I", 2) + b"[]"
    with pytest.raises(FrameError, match="object"):
        decode_message(array_header, max_bytes=MB)
    with pytest.raises(FrameError) as info:  # the payload budget covers all frames together
        decode_message(encode_message({}, [torch.zeros(100), torch.zeros(100)]), max_bytes=600)
    assert info.value.reason == "oversized"


_GOOD_FRAME = encode_tensor(torch.arange(6, dtype=torch.int32).reshape(2, 3))
_GOOD_MESSAGE = encode_message({"op": "f", "step": 1}, [torch.ones(2, 2)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), st.data()))
def test_fuzz_decode_only_raises_frame_error(blob: bytes | st.DataObject) -> None:
    if not isinstance(blob, bytes):
        buf = bytearray(blob.draw(st.sampled_from([_GOOD_FRAME, _GOOD_MESSAGE])))
        for _ in range(blob.draw(st.integers(1, 4))):
            buf[blob.draw(st.integers(0, len(buf) - 1))] = blob.draw(st.integers(0, 255))
        blob = bytes(buf[: blob.draw(st.integers(0, len(buf)))])
    for decode in (decode_tensor, decode_message):
        try:
            decode(blob, max_bytes=1 << 16)
        except FrameError:
            pass
