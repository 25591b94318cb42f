"""Compact locality-sensitive sketch of a hidden-state chunk (TOPLOC-style).

A worker commits, per chunk of at most 32 tokens, to the sha256 of the exact output bytes and to this sketch.
The hash proves what was sent; the sketch lets a verifier check a replay that drifted honestly (other threads,
batching, KV cache) without shipping the whole tensor: the largest-magnitude coordinates of a hidden state are
stable under tiny numerical drift but move under any real change of the computation.

Byte format, version 1 (all integers little-endian, like the tensor codec and torch's in-memory layout)::

    offset  size        field
    0       4           magic b"GSK1"
    4       1           n_tokens        1..32
    5       1           k               1..64, k <= hidden
    6       2           hidden          uint16, 1..65535 (the model's hidden size)
    8       4*k*n       per token t: k indices (uint16) then k values (IEEE fp16)

Total size = 8 + 4*k*n_tokens bytes (1032 bytes for a full chunk at the default k = 8; 520 at k = 4).

Per token the k indices are those of the k largest |h[t, i]| (ties -> lower index), computed on the tensor
upcast to fp32; values are h[t, i] rounded to fp16, saturated at +-65504 so an outlier never becomes inf.
Entries are in canonical order: descending |fp16 value|, ties by ascending index. Canonical order makes the
encoding unique, so the sketch's hash is a commitment to its content; the parser rejects anything else.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import torch

from globai.errors import GlobaiError

MAGIC = b"GSK1"
HEADER = struct.Struct("<4sBBH")
MAX_TOKENS = 32
MAX_K = 64
DEFAULT_K = 8
FP16_MAX = 65504.0


class MalformedSketch(GlobaiError):
    """A sketch's bytes do not follow the format; verification fails closed on it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed sketch: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Sketch:
    """Parsed sketch: `indices[t]` and `values[t]` are the k canonical-order entries of token t."""

    hidden: int
    k: int
    indices: tuple[tuple[int, ...], ...]
    values: tuple[tuple[float, ...], ...]

    @property
    def n_tokens(self) -> int:
        return len(self.indices)

    def index_tensor(self) -> torch.Tensor:
        """Indices as an int64 tensor [n_tokens, k]."""
        return torch.tensor(self.indices, dtype=torch.int64)

    def value_tensor(self) -> torch.Tensor:
        """Values as an fp32 tensor [n_tokens, k] (exact: every fp16 is an fp32)."""
        return torch.tensor(self.values, dtype=torch.float32)


def sketch_size(n_tokens: int, k: int) -> int:
    """Exact byte length of a sketch of `n_tokens` tokens with `k` entries per token."""
    return HEADER.size + 4 * k * n_tokens


def _canonical(entries: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return sorted(entries, key=lambda e: (-abs(e[1]), e[0]))


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """[n, width] -> [n, k]: per row the indices of the k largest |x|, ties broken by lower index, in that order.

    The same as a stable sort of -|x| cut at k, without sorting whole rows (a logits row is 49,152 wide): only the
    entries at or above each row's k-th largest |x| (ties included) are sorted."""
    ax = x.abs()
    threshold = torch.topk(ax, k, dim=1).values[:, -1:]
    rows = []
    for r in range(ax.shape[0]):
        candidates = (ax[r] >= threshold[r]).nonzero().squeeze(1)  # ascending index order
        rows.append(candidates[torch.sort(-ax[r, candidates], stable=True).indices[:k]])
    return torch.stack(rows) if rows else torch.zeros((0, k), dtype=torch.int64)


def compute_sketch(chunk: torch.Tensor, k: int = DEFAULT_K) -> Sketch:
    """Sketch a hidden-state chunk [n_tokens, hidden] (any float dtype).

    Raises `ValueError` on a tensor that cannot be sketched (wrong rank, too many tokens, non-finite values):
    an honest worker never produces those, and a sketch must not hide them.
    """
    if chunk.dim() != 2:
        raise ValueError(f"expected a [tokens, hidden] chunk, got shape {tuple(chunk.shape)}")
    n_tokens, hidden = chunk.shape
    if not 1 <= n_tokens <= MAX_TOKENS:
        raise ValueError(f"chunk has {n_tokens} tokens, expected 1..{MAX_TOKENS}")
    if not 1 <= k <= min(MAX_K, hidden) or hidden > 0xFFFF:
        raise ValueError(f"k={k} invalid for hidden={hidden}")
    x = chunk.detach().to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("chunk contains NaN or inf")
    order = top_indices(x, k)
    vals = x.gather(1, order).clamp(-FP16_MAX, FP16_MAX).to(torch.float16).to(torch.float32)
    indices: list[tuple[int, ...]] = []
    values: list[tuple[float, ...]] = []
    for idx_row, val_row in zip(order.tolist(), vals.tolist(), strict=True):
        entries = _canonical(list(zip(idx_row, val_row, strict=True)))
        indices.append(tuple(i for i, _ in entries))
        values.append(tuple(v for _, v in entries))
    return Sketch(hidden=hidden, k=k, indices=tuple(indices), values=tuple(values))


def encode_sketch(sketch: Sketch) -> bytes:
    """Serialise deterministically (format in the module docstring)."""
    parts = [HEADER.pack(MAGIC, sketch.n_tokens, sketch.k, sketch.hidden)]
    row = struct.Struct(f"<{sketch.k}H{sketch.k}e")
    for idx, val in zip(sketch.indices, sketch.values, strict=True):
        parts.append(row.pack(*idx, *val))
    return b"".join(parts)


def sketch_chunk(chunk: torch.Tensor, k: int = DEFAULT_K) -> bytes:
    """`compute_sketch` then `encode_sketch`: what a worker commits to."""
    return encode_sketch(compute_sketch(chunk, k))


def parse_sketch(
    data: bytes,
    *,
    hidden: int | None = None,
    k: int | None = None,
    n_tokens: int | None = None,
) -> Sketch:
    """Strictly parse sketch bytes; the only exception raised is `MalformedSketch`.

    `hidden`, `k` and `n_tokens`, when given, are what the verifier expects (from the model manifest and the
    chunk being checked); a sketch that disagrees is malformed, not merely wrong.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedSketch("not bytes")
    data = bytes(data)
    if len(data) < HEADER.size:
        raise MalformedSketch(f"too short ({len(data)} bytes)")
    magic, n, kk, hid = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedSketch("bad magic")
    if not 1 <= n <= MAX_TOKENS:
        raise MalformedSketch(f"n_tokens {n} out of range")
    if not 1 <= kk <= MAX_K or kk > hid:
        raise MalformedSketch(f"k {kk} out of range for hidden {hid}")
    for name, want, got in (("hidden", hidden, hid), ("k", k, kk), ("n_tokens", n_tokens, n)):
        if want is not None and want != got:
            raise MalformedSketch(f"{name} is {got}, expected {want}")
    if len(data) != sketch_size(n, kk):
        raise MalformedSketch(f"length {len(data)} != {sketch_size(n, kk)}")
    row = struct.Struct(f"<{kk}H{kk}e")
    indices: list[tuple[int, ...]] = []
    values: list[tuple[float, ...]] = []
    for t in range(n):
        fields = row.unpack_from(data, HEADER.size + t * row.size)
        idx, val = fields[:kk], fields[kk:]
        if any(i >= hid for i in idx):
            raise MalformedSketch(f"token {t}: index out of range")
        if len(set(idx)) != kk:
            raise MalformedSketch(f"token {t}: duplicate index")
        if not all(math.isfinite(v) for v in val):
            raise MalformedSketch(f"token {t}: NaN or inf value")
        entries = list(zip(idx, val, strict=True))
        if entries != _canonical(entries):
            raise MalformedSketch(f"token {t}: entries not in canonical order")
        indices.append(tuple(idx))
        values.append(tuple(val))
    return Sketch(hidden=hid, k=kk, indices=tuple(indices), values=tuple(values))
