"""Sentence-embedding pooling (sentence-transformers semantics): last encoder stage and reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from globai.models.manifest import Pooling


def pool_embeddings(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: Pooling) -> torch.Tensor:
    """[batch, tokens, hidden] token states -> [batch, hidden] sentence embeddings."""
    if pooling.mode == "cls":
        pooled = hidden[:, 0]
    else:
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=hidden.device)
        weights = attention_mask.unsqueeze(-1).expand(hidden.size()).to(hidden.dtype)
        # same order of operations as sentence-transformers' Pooling, so results match it bit for bit
        pooled = torch.sum(hidden * weights, 1) / torch.clamp(weights.sum(1), min=1e-9)
    return F.normalize(pooled, p=2, dim=1) if pooling.normalize else pooled
