"""Binary wire codec for tensors and for messages that carry tensors (no pickle anywhere).

Tensor frame (all integers little-endian)::

    offset  size  field
    0       4     magic b"GLBT"
    4       1     version (1)
    5       1     dtype code (see DTYPE_CODES)
    6       1     ndim (0..8)
    7       1     reserved, must be 0
    8       4     header length in bytes = 56 + 8 * ndim
    12      8     payload length in bytes = prod(shape) * itemsize
    20      8*n   shape, one u64 per dimension
    ..      32    sha256 of the payload
    ..      ...   payload: the tensor's bytes, C-contiguous, little-endian

Message envelope (one WebSocket binary message = one JSON header + N tensor frames)::

    0       4     magic b"GLBM"
    4       1     version (1)
    5       1     number of tensor frames (0..MAX_FRAMES)
    6       2     reserved, must be 0
    8       4     JSON length in bytes
    12      ...   JSON object, UTF-8 (op, session id, step, positions, ...)
    ..      ...   tensor frames, back to back (each is self-delimiting)

Every size is checked against the caller's limit *before* anything is allocated, so a hostile peer cannot make
the receiver allocate more than `max_bytes`; every failure is a `FrameError` with a machine-readable `reason`.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from globai.errors import GlobaiError

TENSOR_MAGIC = b"GLBT"
MESSAGE_MAGIC = b"GLBM"
VERSION = 1
MAX_NDIM = 8
MAX_FRAMES = 16
DEFAULT_MAX_JSON_BYTES = 64 * 1024

# Codes are part of the wire format: never renumber, only append.
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
    torch.int64: 4,
    torch.int32: 5,
    torch.uint8: 6,  # opaque byte strings (a session's binary commitments)
}
CODE_DTYPES: dict[int, torch.dtype] = {code: dtype for dtype, code in DTYPE_CODES.items()}
DTYPE_NAMES: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in DTYPE_CODES}

_FIXED = struct.Struct("<4sBBBBIQ")  # magic, version, dtype, ndim, reserved, header_len, payload_len
_HASH_LEN = 32
_ENVELOPE = struct.Struct("<4sBBHI")  # magic, version, n_frames, reserved, json_len

# A shape is checked either against a template (None = any size on that axis) or by a predicate.
ShapeSpec = Sequence[int | None] | Callable[[tuple[int, ...]], bool]


class FrameError(GlobaiError):
    """A tensor frame or message was refused; `reason` is stable and safe to send back to the peer."""

    REASONS = (
        "bad_magic",
        "bad_version",
        "bad_header",
        "truncated",
        "trailing_bytes",
        "oversized",
        "bad_dtype",
        "shape_mismatch",
        "hash_mismatch",
        "bad_json",
    )

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"bad frame ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The exact bytes of a tensor: C-contiguous, native little-endian, its own dtype (bf16 included)."""
    flat = t.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_sha256(t: torch.Tensor) -> bytes:
    """sha256 of `tensor_bytes(t)`: the output hash a worker signs for an answer and commits for a chunk."""
    return hashlib.sha256(tensor_bytes(t)).digest()


def dtype_from_name(name: str) -> torch.dtype:
    """Map a manifest dtype name ("float32", "bfloat16", ...) to a wire-allowed torch dtype."""
    try:
        return DTYPE_NAMES[name]
    except KeyError:
        raise FrameError("bad_dtype", f"dtype {name!r} is not allowed on the wire") from None


def encode_tensor(tensor: torch.Tensor) -> bytes:
    """Serialise `tensor` (any device, any strides) into one frame."""
    code = DTYPE_CODES.get(tensor.dtype)
    if code is None:
        raise FrameError("bad_dtype", f"dtype {tensor.dtype} is not allowed on the wire")
    if tensor.dim() > MAX_NDIM:
        raise FrameError("bad_header", f"{tensor.dim()} dimensions, at most {MAX_NDIM}")
    if sys.byteorder != "little":  # the payload is the host's memory; the format says little-endian
        raise FrameError("bad_header", "big-endian hosts are not supported")
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    # View as bytes (uint8) so bfloat16 needs no numpy; this is a zero-copy view of the contiguous storage.
    payload = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    header_len = _FIXED.size + 8 * tensor.dim() + _HASH_LEN
    head = _FIXED.pack(TENSOR_MAGIC, VERSION, code, tensor.dim(), 0, header_len, len(payload))
    shape = struct.pack(f"<{tensor.dim()}Q", *tensor.shape)
    return b"".join((head, shape, hashlib.sha256(payload).digest(), payload))


def decode_tensor(
    buf: bytes | bytearray | memoryview,
    *,
    max_bytes: int,
    expected_dtype: torch.dtype | None = None,
    expected_shape: ShapeSpec | None = None,
) -> torch.Tensor:
    """Parse exactly one frame from `buf`; the payload may be at most `max_bytes` bytes.

    `expected_shape` is a template (`(1, None, 256)`: None matches any size) or a predicate on the shape.
    Raises `FrameError` and nothing else for any input.
    """
    view = memoryview(buf).cast("B")
    tensor, end = read_frame(view, 0, max_bytes=max_bytes)
    if end != len(view):
        raise FrameError("trailing_bytes", f"{len(view) - end} bytes after the frame")
    validate_tensor(tensor, expected_dtype=expected_dtype, expected_shape=expected_shape)
    return tensor


def read_frame(view: memoryview, offset: int, *, max_bytes: int) -> tuple[torch.Tensor, int]:
    """Parse the frame starting at `offset`; return the tensor and the offset just past it."""
    if len(view) - offset < _FIXED.size:
        raise FrameError("truncated", f"{len(view) - offset} bytes, a frame header needs {_FIXED.size}")
    magic, version, code, ndim, reserved, header_len, payload_len = _FIXED.unpack_from(view, offset)
    if magic != TENSOR_MAGIC:
        raise FrameError("bad_magic", f"magic {bytes(magic)!r}, expected {TENSOR_MAGIC!r}")
    if version != VERSION:
        raise FrameError("bad_version", f"version {version}, this side speaks {VERSION}")
    dtype = CODE_DTYPES.get(code)
    if dtype is None:
        raise FrameError("bad_dtype", f"dtype code {code} is not allowed")
    if ndim > MAX_NDIM or reserved != 0:
        raise FrameError("bad_header", f"ndim {ndim} (max {MAX_NDIM}), reserved {reserved}")
    if header_len != _FIXED.size + 8 * ndim + _HASH_LEN:
        raise FrameError("bad_header", f"header length {header_len} does not match ndim {ndim}")
    if payload_len > max_bytes:
        raise FrameError("oversized", f"payload of {payload_len} bytes, limit {max_bytes}")
    if len(view) - offset < header_len:
        raise FrameError("truncated", f"header needs {header_len} bytes")
    shape = struct.unpack_from(f"<{ndim}Q", view, offset + _FIXED.size)
    itemsize = torch.empty((), dtype=dtype).element_size()
    # Python ints: a hostile shape cannot overflow the product.
    if math.prod(shape) * itemsize != payload_len:
        raise FrameError("shape_mismatch", f"shape {list(shape)} of {dtype} is not {payload_len} bytes")
    start = offset + header_len
    end = start + payload_len
    if len(view) < end:
        raise FrameError("truncated", f"payload needs {payload_len} bytes, {len(view) - start} present")
    digest = bytes(view[start - _HASH_LEN : start])
    payload = view[start:end]
    if hashlib.sha256(payload).digest() != digest:
        raise FrameError("hash_mismatch", "payload sha256 does not match the header")
    # bytearray copy: the tensor owns writable memory and does not pin the receive buffer.
    raw = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload_len else torch.empty(0, dtype=torch.uint8)
    return raw.view(dtype).reshape(shape), end


def validate_tensor(
    tensor: torch.Tensor,
    *,
    expected_dtype: torch.dtype | None = None,
    expected_shape: ShapeSpec | None = None,
) -> None:
    """Check a decoded tensor against what the manifest/session says it must be."""
    if expected_dtype is not None and tensor.dtype != expected_dtype:
        raise FrameError("bad_dtype", f"got {tensor.dtype}, expected {expected_dtype}")
    if expected_shape is None:
        return
    shape = tuple(tensor.shape)
    if callable(expected_shape):
        if not expected_shape(shape):
            raise FrameError("shape_mismatch", f"shape {list(shape)} rejected")
        return
    template = tuple(expected_shape)
    if len(template) != len(shape) or any(t is not None and t != s for t, s in zip(template, shape, strict=True)):
        raise FrameError("shape_mismatch", f"shape {list(shape)}, expected {list(template)}")


@dataclass(frozen=True)
class Message:
    """One binary message: a JSON object header plus zero or more tensors, in order."""

    header: dict[str, Any]
    tensors: list[torch.Tensor] = field(default_factory=list)


def encode_message(header: dict[str, Any], tensors: Sequence[torch.Tensor] = ()) -> bytes:
    """Serialise a JSON-able `header` and `tensors` into one binary message."""
    if len(tensors) > MAX_FRAMES:
        raise FrameError("bad_header", f"{len(tensors)} tensors, at most {MAX_FRAMES}")
    body = json.dumps(header, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    head = _ENVELOPE.pack(MESSAGE_MAGIC, VERSION, len(tensors), 0, len(body))
    return b"".join([head, body, *(encode_tensor(t) for t in tensors)])


def decode_message(
    buf: bytes | bytearray | memoryview,
    *,
    max_bytes: int,
    max_json_bytes: int = DEFAULT_MAX_JSON_BYTES,
) -> Message:
    """Parse one message; `max_bytes` bounds the sum of all tensor payloads. Raises only `FrameError`."""
    view = memoryview(buf).cast("B")
    if len(view) < _ENVELOPE.size:
        raise FrameError("truncated", f"{len(view)} bytes, a message header needs {_ENVELOPE.size}")
    magic, version, n_frames, reserved, json_len = _ENVELOPE.unpack_from(view, 0)
    if magic != MESSAGE_MAGIC:
        raise FrameError("bad_magic", f"magic {bytes(magic)!r}, expected {MESSAGE_MAGIC!r}")
    if version != VERSION:
        raise FrameError("bad_version", f"version {version}, this side speaks {VERSION}")
    if n_frames > MAX_FRAMES or reserved != 0:
        raise FrameError("bad_header", f"{n_frames} frames (max {MAX_FRAMES}), reserved {reserved}")
    if json_len > max_json_bytes:
        raise FrameError("oversized", f"JSON header of {json_len} bytes, limit {max_json_bytes}")
    offset = _ENVELOPE.size + json_len
    if len(view) < offset:
        raise FrameError("truncated", f"JSON header needs {json_len} bytes")
    try:
        header = json.loads(bytes(view[_ENVELOPE.size : offset]).decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise FrameError("bad_json", str(exc)[:200]) from None
    if not isinstance(header, dict):
        raise FrameError("bad_json", f"header is a {type(header).__name__}, expected an object")
    tensors = []
    budget = max_bytes
    for _ in range(n_frames):
        tensor, end = read_frame(view, offset, max_bytes=budget)
        budget -= tensor.numel() * tensor.element_size()
        offset = end
        tensors.append(tensor)
    if offset != len(view):
        raise FrameError("trailing_bytes", f"{len(view) - offset} bytes after the last frame")
    return Message(header=header, tensors=tensors)
