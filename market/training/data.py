"""Deterministic tokenisation and sharding of a training job's dataset.

Everything here is a pure function of (spec, corpus bytes): the market, every worker and every verifier replay
derive the same windows and the same shard for task (round, worker), so a task is fully named by those
indices.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from globai.protocol import bytetokens
from globai.protocol.bytetokens import DatasetError, make_windows, tokenize_documents
from market.training.spec import DatasetRef, TrainingJobSpec, derive_seed

__all__ = ["DatasetError", "PreparedDataset", "make_windows", "prepare", "shard_for", "shard_indices", "tokenize"]


def documents(corpus: bytes, dataset: DatasetRef) -> list[bytes]:
    """Split an upload into documents (`globai.protocol.bytetokens.documents`), checking its sha256 first."""
    if dataset.sha256 is not None and hashlib.sha256(corpus).hexdigest() != dataset.sha256:
        raise DatasetError("sha256 of the upload does not match the spec")
    return bytetokens.documents(corpus, dataset.format, dataset.jsonl_field)


def tokenize(corpus: bytes, dataset: DatasetRef) -> torch.Tensor:
    """Byte-level token stream: ``BOS doc EOS`` for each document, concatenated (int64)."""
    return tokenize_documents(documents(corpus, dataset))


@dataclass(frozen=True)
class PreparedDataset:
    """Training and held-out windows of a job, each ``[N, seq_len + 1]`` int64."""

    train: torch.Tensor
    eval: torch.Tensor


def prepare(spec: TrainingJobSpec, corpus: bytes) -> PreparedDataset:
    """Tokenise, window and split (seeded) into train / eval windows."""
    windows = make_windows(tokenize(corpus, spec.dataset), spec.seq_len)
    n = windows.shape[0]
    if spec.federated is not None:  # workers train on their own data: the upload is only the held-out set
        if n < 1:
            raise DatasetError(f"no evaluation window of {spec.seq_len + 1} tokens")
        return PreparedDataset(train=windows[:0], eval=windows)
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
