"""Pseudo-gradient compression and its binary wire encoding.

Codecs (chosen per training job, see `market.training.spec.TrainingJobSpec.compression`):

- ``"none"``: fp32 tensors as they are.
- ``"int8"``: symmetric int8 with one fp32 scale per row (dim 0) of every tensor of rank >= 2, one per
  tensor for vectors. Row scales keep one large row (e.g. a frequent token's embedding) from crushing the
  others to zero.
- ``"topk:<frac>"``: per tensor, keep the ``ceil(frac * numel)`` entries of largest magnitude as int32 flat
  indices and fp32 values; everything else is zero.

The encoding is a safetensors blob (a JSON header + raw little-endian bytes, parsed without executing
anything, so it is safe on bytes from the network; never pickle). Its metadata carries the codec;
`decode_update` checks every name, shape, dtype and index against what the receiver expects before use.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from globai.errors import GlobaiError

FORMAT = "globai-pseudo-gradient/1"
META_KEY = "globai"
_TOPK = re.compile(r"^topk:(0(\.\d+)?|1(\.0+)?|\d?\.\d+(e-?\d+)?)$")


class CompressionError(GlobaiError):
    """A payload is malformed, does not match the tensors the receiver expects, or a codec name is unknown."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"pseudo-gradient compression: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Codec:
    """A parsed compression setting: ``kind`` is "none", "int8" or "topk"; ``fraction`` only for top-k."""

    kind: str
    fraction: float = 1.0

    @property
    def name(self) -> str:
        return f"topk:{self.fraction:g}" if self.kind == "topk" else self.kind


def parse_codec(text: str) -> Codec:
    """Parse ``"none" | "int8" | "topk:<frac>"`` (0 < frac <= 1)."""
    if text in ("none", "int8"):
        return Codec(text)
    if _TOPK.match(text):
        fraction = float(text.split(":", 1)[1])
        if 0.0 < fraction <= 1.0:
            return Codec("topk", fraction)
    raise CompressionError(f"unknown compression {text!r} (expected none, int8 or topk:<0<frac<=1>)")


def _int8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
    scale = rows.abs().amax(dim=1) / 127.0
    # An all-zero row would divide by zero; any positive scale decodes it back to exact zeros.
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(rows / safe[:, None]), -127, 127).to(torch.int8)
    return q, scale.to(torch.float32)


def compress(update: Mapping[str, torch.Tensor], codec: Codec) -> dict[str, torch.Tensor]:
    """Compress fp32 tensors into the flat tensor dict that `encode_update` serialises."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in update.items():
        x = tensor.detach().to(torch.float32).contiguous()
        if codec.kind == "none":
            out[f"{name}:v"] = x
        elif codec.kind == "int8":
            q, scale = _int8_rows(x)
            out[f"{name}:q"], out[f"{name}:s"] = q.contiguous(), scale.contiguous()
        else:
            flat = x.reshape(-1)
            k = max(1, math.ceil(codec.fraction * flat.numel()))
            # topk ties are broken by index order on CPU, so honest replays pick the same entries.
            idx = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
            out[f"{name}:i"] = idx.to(torch.int32).contiguous()
            out[f"{name}:v"] = flat[idx].contiguous()
    return out


def encode_update(update: Mapping[str, torch.Tensor], codec: Codec) -> bytes:
    """Compress and serialise a pseudo-gradient into wire bytes."""
    # A single metadata key: safetensors writes a multi-key metadata map in hash order, which would make the bytes
    # (and so the signed digest) differ between two encodings of the same update.
    header = {"format": FORMAT, "codec": codec.name}
    return st_save(compress(update, codec), metadata={META_KEY: json.dumps(header, sort_keys=True)})


def payload_digest(payload: bytes) -> str:
    """sha256 hex of the exact wire bytes: what a worker signs and a verifier compares."""
    return hashlib.sha256(payload).hexdigest()


def _expect(tensors: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    t = tensors.get(key)
    if t is None:
        raise CompressionError(f"missing {key}")
    if t.dtype != dtype or tuple(t.shape) != shape:
        raise CompressionError(f"{key} is {t.dtype}{tuple(t.shape)}, expected {dtype}{shape}")
    return t


def decode_update(
    payload: bytes, expected: Mapping[str, tuple[int, ...]], codec: Codec | None = None
) -> dict[str, torch.Tensor]:
    """Parse wire bytes back into dense fp32 tensors.

    ``expected`` maps every tensor name to its shape (from the checkpoint manifest); ``codec``, when given, is
    the one the job requires. Anything else (extra or missing names, wrong shapes, out-of-range indices,
    non-finite values) raises `CompressionError` rather than reaching the aggregator.
    """
    try:
        tensors = st_load(payload)
        meta = _metadata(payload)
    except CompressionError:
        raise
    except Exception as exc:  # safetensors raises several exception types on garbage
        raise CompressionError(f"not a safetensors blob ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CompressionError(f"format {meta.get('format')!r}")
    got = parse_codec(meta.get("codec", ""))
    if codec is not None and got != codec:
        raise CompressionError(f"codec {got.name}, job requires {codec.name}")
    suffixes = {"none": (":v",), "int8": (":q", ":s"), "topk": (":i", ":v")}[got.kind]
    wanted = {f"{n}{s}" for n in expected for s in suffixes}
    if set(tensors) != wanted:
        raise CompressionError(f"tensor names differ: {sorted(set(tensors) ^ wanted)[:4]}")
    out: dict[str, torch.Tensor] = {}
    for name, shape in expected.items():
        numel = math.prod(shape)
        if got.kind == "none":
            dense = _expect(tensors, f"{name}:v", torch.float32, tuple(shape))
        elif got.kind == "int8":
            rows = shape[0] if len(shape) >= 2 else 1
            q = _expect(tensors, f"{name}:q", torch.int8, (rows, numel // max(rows, 1)))
            s = _expect(tensors, f"{name}:s", torch.float32, (rows,))
            dense = (q.to(torch.float32) * s[:, None]).reshape(shape)
        else:
            idx = tensors[f"{name}:i"]
            if idx.dtype != torch.int32 or idx.dim() != 1:
                raise CompressionError(f"{name}:i must be a 1-D int32 tensor")
            val = _expect(tensors, f"{name}:v", torch.float32, (idx.numel(),))
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= numel):
                raise CompressionError(f"{name}: index out of range")
            flat = torch.zeros(numel, dtype=torch.float32)
            flat[idx.to(torch.int64)] = val
            dense = flat.reshape(shape)
        if not torch.isfinite(dense).all():
            raise CompressionError(f"{name}: non-finite values")
        out[name] = dense
    return out


def _metadata(payload: bytes) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then a JSON header whose "__metadata__" holds
    # strings.
    if len(payload) < 8:
        raise CompressionError("payload too short")
    n = int.from_bytes(payload[:8], "little")
    if n > len(payload) - 8:
        raise CompressionError("header length past the end")
    header = json.loads(payload[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    try:
        ours = json.loads(meta[META_KEY])
    except (KeyError, TypeError, ValueError) as exc:
        raise CompressionError("no globai metadata") from exc
    if not isinstance(ours, dict):
        raise CompressionError("metadata is not a map")
    return {str(k): str(v) for k, v in ours.items()}


def shapes_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name → shape map, the ``expected`` argument of `decode_update`."""
    return {name: tuple(t.shape) for name, t in tensors.items()}
