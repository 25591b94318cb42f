"""One forward for the decode steps of several sessions: their KV caches side by side, left-padded to one length.

Continuous batching on one stage: whichever sessions have a step waiting are run together, and each keeps its
own cache between steps (sessions join and leave freely). A step's rows are the sessions' rows stacked; every
session's cache is left-padded with zeros to the longest one, and the padding is masked out (the session's own
mask, with zeros in front), so attention sees exactly each sequence's own keys. Positions are each sequence's
own. After the forward, each session's cache is the slice of the merged one that is its own (a view: no copy).

Only full-attention layers are merged (a sliding-window cache drops old keys at its own pace per session).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from worker.models.sessions import Session


@dataclass
class Rows:
    """Where one session sits in the merged step: rows [start, stop) of the batch, `length` cached tokens."""

    start: int
    stop: int
    length: int


def layout(sessions: Sequence[Session], batches: Sequence[int]) -> tuple[list[Rows], int]:
    """Each session's rows (`batches`: its step's sequences) and cached length, and the longest cached length."""
    rows, at = [], 0
    for session, batch in zip(sessions, batches, strict=True):
        rows.append(Rows(at, at + batch, session.seen_tokens))
        at += batch
    return rows, max(r.length for r in rows)


def merge_caches(
    sessions: Sequence[Session], rows: Sequence[Rows], longest: int, layers: range, merged: DynamicCache
) -> DynamicCache:
    """Fill `merged` (an empty cache of the family) with the sessions' caches of `layers`, left-padded."""
    if longest == 0:
        return merged  # nothing cached yet: the forward initialises the merged cache itself
    total = rows[-1].stop
    for index in layers:
        parts = [_layer(s.cache, index) for s in sessions]
        sample = next(p for p, r in zip(parts, rows, strict=True) if r.length)
        heads, key_dim, value_dim = sample.keys.shape[1], sample.keys.shape[-1], sample.values.shape[-1]
        keys = sample.keys.new_zeros((total, heads, longest, key_dim))
        values = sample.values.new_zeros((total, heads, longest, value_dim))
        for part, r in zip(parts, rows, strict=True):
            if r.length:
                keys[r.start : r.stop, :, longest - r.length :] = part.keys
                values[r.start : r.stop, :, longest - r.length :] = part.values
        layer = _layer(merged, index)
        layer.device, layer.keys, layer.values, layer.is_initialized = keys.device, keys, values, True
    return merged


def split_caches(
    merged: DynamicCache, sessions: Sequence[Session], rows: Sequence[Rows], longest: int, layers: range
) -> None:
    """Give each session its own rows of the merged cache back, without the padding in front (views)."""
    for index in layers:
        source = _layer(merged, index)
        for session, r in zip(sessions, rows, strict=True):
            layer = _layer(session.cache, index)
            pad = longest - r.length
            layer.device, layer.is_initialized = source.device, True
            layer.keys = source.keys[r.start : r.stop, :, pad:]
            layer.values = source.values[r.start : r.stop, :, pad:]


def merged_mask(
    sessions: Sequence[Session], rows: Sequence[Rows], longest: int, new: Sequence[torch.Tensor]
) -> torch.Tensor:
    """0/1 [rows, longest + T]: each session's history mask (zeros in front for the padding) and its new tokens."""
    parts = []
    for session, r, fresh in zip(sessions, rows, new, strict=True):
        own = fresh if session.mask is None else torch.cat([session.mask, fresh], dim=1)
        pad = own.new_zeros((r.stop - r.start, longest - r.length))
        parts.append(torch.cat([pad, own], dim=1))
    return torch.cat(parts, dim=0)


def _layer(cache: DynamicCache | None, index: int) -> Any:
    """Layer `index` of a decoder session's cache (a `DynamicLayer`: keys/values [batch, heads, tokens, dim])."""
    assert cache is not None  # decoder sessions always have a cache (internal invariant)
    return cache.layers[index]
