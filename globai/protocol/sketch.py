"""Compact locality-sensitive sketch of a hidden-state chunk (TOPLOC-style), what a worker commits to per chunk.

A worker commits, per chunk of at most 32 tokens, to the sha256 of the exact output bytes and to this sketch.
The hash proves what was sent; the sketch lets a verifier check a replay that drifted honestly (other threads,
batching, KV cache) without shipping the whole tensor.

Two versions parse (the magic says which); workers write version 2, and the coordinator refuses commitments of
new work in version 1 (`decode_commitments(version=...)`); stored version-1 records still parse and verify.

Version 2 (default, k = 1: 200 bytes for a full chunk; the signed commitment is 297 bytes per 32 tokens)::

    offset  size          field (little-endian)
    0       4             magic b"GSK2"
    4       1             n_tokens        1..32
    5       1             k               1..64, k <= hidden
    6       2             hidden          uint16, 1..65535 (the row width: hidden size, or vocabulary for logits)
    8       (4k+2)*n      per token t: k indices (uint16), k values (IEEE fp16), then 1 projection (IEEE fp16)

Version 1 (what records written before 2026-12-02 hold; 1032 bytes at its k = 8): the same header with magic
b"GSK1" and 4*k*n bytes of per-token indices and values, no projection.

Top-k part: per token the k indices of the largest |h[t, i]| (ties -> lower index), computed on the tensor upcast
to fp32; values are h[t, i] rounded to fp16, saturated at +-65504 so an outlier never becomes inf; entries in
canonical order (descending |fp16 value|, ties by ascending index), so the encoding is unique and the parser
rejects anything else. The largest coordinates are stable under tiny numerical drift but move under a real change.

Projection (version 2): each whole row projected on its own direction drawn from SHAKE-256 of the chunk's own
`output_sha256` (`project`): the directions are fixed only once the output bytes are, so a change
cannot be shaped to be orthogonal to them without re-hashing (Fiat-Shamir); a change of relative L2 size rho
anywhere in a row moves its projection by ~rho x RMS(row), where the top-k values only see their own k
coordinates. Computed in float64 from integer-derived directions (the same value on every machine up to ~1e-16
relative, far below an fp16 step), then rounded to fp16 like the values.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch

from globai.errors import GlobaiError
from globai.protocol.tensors import tensor_sha256

MAGICS = {1: b"GSK1", 2: b"GSK2"}
VERSIONS = {magic: version for version, magic in MAGICS.items()}
HEADER = struct.Struct("<4sBBH")
MAX_TOKENS = 32
MAX_K = 64
DEFAULT_VERSION = 2  # what workers write, and the only version the market takes for new work
DEFAULT_K = 1
FP16_MAX = 65504.0
PROJECTION_TAG = b"GLOBAI-SKETCH-PROJECTION-V2"


class MalformedSketch(GlobaiError):
    """A sketch's bytes do not follow the format; verification fails closed on it."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed sketch: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class Sketch:
    """Parsed sketch: `indices[t]` and `values[t]` are the k canonical-order entries of token t; `projections[t]`
    the fp16 projection of row t (version 2; empty in version 1)."""

    hidden: int
    k: int
    indices: tuple[tuple[int, ...], ...]
    values: tuple[tuple[float, ...], ...]
    version: int = DEFAULT_VERSION
    projections: tuple[float, ...] = ()

    @property
    def n_tokens(self) -> int:
        return len(self.indices)

    def index_tensor(self) -> torch.Tensor:
        """Indices as an int64 tensor [n_tokens, k]."""
        return torch.tensor(self.indices, dtype=torch.int64)

    def value_tensor(self) -> torch.Tensor:
        """Values as an fp32 tensor [n_tokens, k] (exact: every fp16 is an fp32)."""
        return torch.tensor(self.values, dtype=torch.float32)

    def projection_tensor(self) -> torch.Tensor:
        """Projections as a float64 tensor [n_tokens] (version 2)."""
        return torch.tensor(self.projections, dtype=torch.float64)


def sketch_size(n_tokens: int, k: int, version: int = DEFAULT_VERSION) -> int:
    """Exact byte length of a sketch of `n_tokens` tokens with `k` entries per token."""
    per_token = 4 * k + (2 if version == 2 else 0)
    return HEADER.size + per_token * n_tokens


def _canonical(entries: list[tuple[int, float]]) -> list[tuple[int, float]]:
    return sorted(entries, key=lambda e: (-abs(e[1]), e[0]))


def top_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """[n, width] -> [n, k]: per row the indices of the k largest |x|, ties broken by lower index, in that order.

    The same as a stable sort of -|x| cut at k, without sorting whole rows (a logits row is 49,152 wide): only the
    entries at or above each row's k-th largest |x| (ties included) are sorted."""
    ax = x.abs()
    if k == 1:  # the committed sketch's k: argmax returns the first (lowest) index of the row's maximum
        return ax.argmax(dim=1, keepdim=True)
    threshold = torch.topk(ax, k, dim=1).values[:, -1:]
    rows = []
    for r in range(ax.shape[0]):
        candidates = (ax[r] >= threshold[r]).nonzero().squeeze(1)  # ascending index order
        rows.append(candidates[torch.sort(-ax[r, candidates], stable=True).indices[:k]])
    return torch.stack(rows) if rows else torch.zeros((0, k), dtype=torch.int64)


def project(rows: torch.Tensor, output_sha256: bytes) -> torch.Tensor:
    """[n, width] -> [n] float64 (unrounded): row t projected on its direction d_t, whose entries are
    d_ti = ((b_ti + 0.5) / 128 - 1) * sqrt(3 / width) for the bytes b of SHAKE-256(tag || output_sha256), one byte
    per entry, row after row: zero mean, ~unit norm, continuous enough that no two coordinates cancel exactly,
    and integer-derived, so every machine draws the same. Computed as sqrt(3 / width) / 128 * (sum_i x_i b_i
    - 127.5 sum_i x_i) in float64 (one pass over the bytes: a logits chunk is 32 x 49,152)."""
    if len(output_sha256) != 32:
        raise ValueError("output_sha256 must be 32 bytes")
    n, width = int(rows.shape[0]), int(rows.shape[-1])
    raw = hashlib.shake_256(PROJECTION_TAG + output_sha256).digest(n * width)
    b = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(n, width).to(torch.float64)
    x = rows.detach().to(torch.float64)
    weighted = torch.bmm(x.unsqueeze(1), b.unsqueeze(2)).reshape(n)
    return (weighted - 127.5 * x.sum(dim=1)) * (math.sqrt(3.0 / width) / 128.0)


def _fp16_values(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP16_MAX, FP16_MAX).to(torch.float16).to(torch.float32)


def compute_sketch(
    chunk: torch.Tensor,
    k: int = DEFAULT_K,
    *,
    version: int = DEFAULT_VERSION,
    output_sha256: bytes | None = None,
) -> Sketch:
    """Sketch a hidden-state chunk [n_tokens, hidden] (any float dtype).

    Version 2 needs the chunk's `output_sha256` (`tensors.tensor_sha256(chunk)`, computed here when not given).
    Raises `ValueError` on a tensor that cannot be sketched (wrong rank, too many tokens, non-finite values):
    an honest worker never produces those, and a sketch must not hide them.
    """
    if version not in MAGICS:
        raise ValueError(f"unknown sketch version {version}")
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
    vals = _fp16_values(x.gather(1, order))
    indices: list[tuple[int, ...]] = []
    values: list[tuple[float, ...]] = []
    for idx_row, val_row in zip(order.tolist(), vals.tolist(), strict=True):
        entries = _canonical(list(zip(idx_row, val_row, strict=True)))
        indices.append(tuple(i for i, _ in entries))
        values.append(tuple(v for _, v in entries))
    projections: tuple[float, ...] = ()
    if version == 2:
        if output_sha256 is None:
            output_sha256 = tensor_sha256(chunk)
        projections = tuple(_fp16_values(project(chunk, output_sha256).to(torch.float32)).tolist())
    return Sketch(hidden, k, tuple(indices), tuple(values), version, projections)


def encode_sketch(sketch: Sketch) -> bytes:
    """Serialise deterministically (format in the module docstring)."""
    parts = [HEADER.pack(MAGICS[sketch.version], sketch.n_tokens, sketch.k, sketch.hidden)]
    row = struct.Struct(f"<{sketch.k}H{sketch.k}e" + ("e" if sketch.version == 2 else ""))
    for t, (idx, val) in enumerate(zip(sketch.indices, sketch.values, strict=True)):
        extra = (sketch.projections[t],) if sketch.version == 2 else ()
        parts.append(row.pack(*idx, *val, *extra))
    return b"".join(parts)


def sketch_chunk(
    chunk: torch.Tensor, k: int = DEFAULT_K, *, version: int = DEFAULT_VERSION, output_sha256: bytes | None = None
) -> bytes:
    """`compute_sketch` then `encode_sketch`: what a worker commits to."""
    return encode_sketch(compute_sketch(chunk, k, version=version, output_sha256=output_sha256))


def sketch_like(data: bytes, chunk: torch.Tensor, output_sha256: bytes | None = None) -> bytes | None:
    """The canonical sketch of `chunk` in the version and k that `data` declares (None if `data` has no valid
    header): a claimed sketch of rows the verifier holds must equal it byte for byte."""
    if len(data) < HEADER.size:
        return None
    magic, _, k, _ = HEADER.unpack_from(data)
    version = VERSIONS.get(magic)
    if version is None or not 1 <= k <= min(MAX_K, chunk.shape[-1]):
        return None
    return sketch_chunk(chunk, k, version=version, output_sha256=output_sha256)


def parse_sketch(
    data: bytes,
    *,
    hidden: int | None = None,
    k: int | None = None,
    n_tokens: int | None = None,
    version: int | None = None,
) -> Sketch:
    """Strictly parse sketch bytes (either version); the only exception raised is `MalformedSketch`.

    `hidden`, `k`, `n_tokens` and `version`, when given, are what the verifier expects (from the model manifest,
    the job and the chunk being checked); a sketch that disagrees is malformed, not merely wrong.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedSketch("not bytes")
    data = bytes(data)
    if len(data) < HEADER.size:
        raise MalformedSketch(f"too short ({len(data)} bytes)")
    magic, n, kk, hid = HEADER.unpack_from(data)
    ver = VERSIONS.get(magic)
    if ver is None:
        raise MalformedSketch("bad magic")
    if not 1 <= n <= MAX_TOKENS:
        raise MalformedSketch(f"n_tokens {n} out of range")
    if not 1 <= kk <= MAX_K or kk > hid:
        raise MalformedSketch(f"k {kk} out of range for hidden {hid}")
    for name, want, got in (
        ("hidden", hidden, hid),
        ("k", k, kk),
        ("n_tokens", n_tokens, n),
        ("version", version, ver),
    ):
        if want is not None and want != got:
            raise MalformedSketch(f"{name} is {got}, expected {want}")
    if len(data) != sketch_size(n, kk, ver):
        raise MalformedSketch(f"length {len(data)} != {sketch_size(n, kk, ver)}")
    row = struct.Struct(f"<{kk}H{kk}e" + ("e" if ver == 2 else ""))
    indices: list[tuple[int, ...]] = []
    values: list[tuple[float, ...]] = []
    projections: list[float] = []
    for t in range(n):
        fields = row.unpack_from(data, HEADER.size + t * row.size)
        idx, val = fields[:kk], fields[kk : 2 * kk]
        if any(i >= hid for i in idx):
            raise MalformedSketch(f"token {t}: index out of range")
        if len(set(idx)) != kk:
            raise MalformedSketch(f"token {t}: duplicate index")
        if not all(math.isfinite(v) for v in fields[kk:]):
            raise MalformedSketch(f"token {t}: NaN or inf value")
        entries = list(zip(idx, val, strict=True))
        if entries != _canonical(entries):
            raise MalformedSketch(f"token {t}: entries not in canonical order")
        indices.append(tuple(idx))
        values.append(tuple(val))
        projections.extend(fields[2 * kk :])
    return Sketch(hid, kk, tuple(indices), tuple(values), ver, tuple(projections))
