"""Deterministic tokenisation and sharding of a training job's dataset.

Everything here is a pure function of (spec, corpus bytes): the market, every worker and every verifier replay
derive the same windows and the same shard for task (round, worker), so a task is fully named by those
indices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from globai.errors import GlobaiError
from market.training.spec import BOS_ID, EOS_ID, DatasetRef, TrainingJobSpec, derive_seed


class DatasetError(GlobaiError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"bad training dataset: {reason}")
        self.reason = reason


def documents(corpus: bytes, dataset: DatasetRef) -> list[bytes]:
    """Split an upload into documents: the whole text, or one JSONL line's ``dataset.jsonl_field`` each."""
    if dataset.sha256 is not None and hashlib.sha256(corpus).hexdigest() != dataset.sha256:
        raise DatasetError("sha256 of the upload does not match the spec")
    if dataset.format == "text":
        return [corpus]
    docs = []
    for lineno, line in enumerate(corpus.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"line {lineno} is not JSON ({exc.msg})") from exc
        text = record.get(dataset.jsonl_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise DatasetError(f"line {lineno} has no string field {dataset.jsonl_field!r}")
        docs.append(text.encode("utf-8"))
    return docs


def tokenize(corpus: bytes, dataset: DatasetRef) -> torch.Tensor:
    """Byte-level token stream: ``BOS doc EOS`` for each document, concatenated (int64)."""
    parts = []
    for doc in documents(corpus, dataset):
        body = torch.frombuffer(bytearray(doc), dtype=torch.uint8).to(torch.int64)
        parts += [torch.tensor([BOS_ID]), body, torch.tensor([EOS_ID])]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)


def make_windows(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Non-overlapping windows of ``seq_len + 1`` tokens (inputs + next-token targets); drops the tail."""
    n = (tokens.numel() - 1) // seq_len
    if n < 1:
        return torch.zeros(0, seq_len + 1, dtype=torch.int64)
    # Windows share their boundary token: window j covers tokens[j*T : j*T + T + 1].
    return tokens[: n * seq_len + 1].unfold(0, seq_len + 1, seq_len).contiguous()


@dataclass(frozen=True)
class PreparedDataset:
    """Training and held-out windows of a job, each ``[N, seq_len + 1]`` int64."""

    train: torch.Tensor
    eval: torch.Tensor


def prepare(spec: TrainingJobSpec, corpus: bytes) -> PreparedDataset:
    """Tokenise, window and split (seeded) into train / eval windows."""
    windows = make_windows(tokenize(corpus, spec.dataset), spec.seq_len)
    n = windows.shape[0]
    n_eval = int(n * spec.dataset.eval_fraction)
    if n - n_eval < spec.workers_per_round:
        raise DatasetError(f"{n - n_eval} training windows of {spec.seq_len + 1} tokens; need >= W")
    g = torch.Generator().manual_seed(derive_seed(spec.seed, "split"))
    order = torch.randperm(n, generator=g)
    return PreparedDataset(train=windows[order[n_eval:]], eval=windows[order[:n_eval]])


def shard_indices(n_train: int, round_index: int, worker_index: int, workers: int, seed: int) -> torch.Tensor:
    """Rows of the training windows that task (round, worker) trains on.

    Each round reshuffles the training windows with its own seed and cuts them into W disjoint contiguous
    shards, so workers of a round see different data and every round covers the whole training set.
    """
    if not 0 <= worker_index < workers:
        raise ValueError("worker_index out of range")
    g = torch.Generator().manual_seed(derive_seed(seed, "round", round_index))
    order = torch.randperm(n_train, generator=g)
    return torch.tensor_split(order, workers)[worker_index]


def shard_for(data: PreparedDataset, spec: TrainingJobSpec, round_index: int, worker_index: int) -> torch.Tensor:
    """The ``[n, seq_len + 1]`` token windows of task (round, worker)."""
    idx = shard_indices(data.train.shape[0], round_index, worker_index, spec.workers_per_round, spec.seed)
    return data.train[idx]
