"""Spec validation, deterministic tokenisation, windows and shards."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import pytest
import torch
from pydantic import ValidationError

from market.training.data import DatasetError, make_windows, prepare, shard_for, shard_indices, tokenize
from market.training.model import tiny_llama_config
from market.training.spec import BOS_ID, EOS_ID, ConfigModelRef, DatasetRef, TrainingJobSpec, task_seed


def test_spec_validation(make_spec: Callable[..., TrainingJobSpec]) -> None:
    spec = make_spec(compression="topk:0.01")
    assert spec.codec.fraction == 0.01
    assert spec.effective_quorum == spec.workers_per_round
    assert spec.spec_hash() == make_spec(compression="topk:0.01").spec_hash()
    assert spec.spec_hash() != make_spec(compression="int8").spec_hash()
    with pytest.raises(ValidationError):
        make_spec(compression="zip")
    with pytest.raises(ValidationError):
        make_spec(quorum=5, workers_per_round=3)
    with pytest.raises(ValidationError):
        make_spec(model=ConfigModelRef(config=tiny_llama_config(vocab_size=100)))
    # Round-trips through JSON (how it is posted and stored).
    again = TrainingJobSpec.model_validate_json(spec.model_dump_json())
    assert again == spec


def test_tokenize_text_and_jsonl() -> None:
    text = tokenize("héllo".encode(), DatasetRef())
    assert text.tolist() == [BOS_ID, 104, 195, 169, 108, 108, 111, EOS_ID]
    lines = b'{"text": "ab"}\n\n{"text": "c", "x": 1}\n'
    assert tokenize(lines, DatasetRef(format="jsonl")).tolist() == [BOS_ID, 97, 98, EOS_ID, BOS_ID, 99, EOS_ID]
    with pytest.raises(DatasetError):
        tokenize(b'{"body": "x"}\n', DatasetRef(format="jsonl"))
    with pytest.raises(DatasetError):
        tokenize(b"not json\n", DatasetRef(format="jsonl"))
    with pytest.raises(DatasetError, match="sha256"):
        tokenize(b"abc", DatasetRef(sha256="0" * 64))
    assert tokenize(b"abc", DatasetRef(sha256=hashlib.sha256(b"abc").hexdigest())).numel() == 5


def test_windows_overlap_by_one_token() -> None:
    w = make_windows(torch.arange(20), 4)
    assert w.shape == (4, 5)
    assert w[0].tolist() == [0, 1, 2, 3, 4] and w[1].tolist() == [4, 5, 6, 7, 8]


def test_shards_are_deterministic_disjoint_and_cover(make_spec: Callable[..., TrainingJobSpec]) -> None:
    parts = [shard_indices(100, 2, i, 4, seed=5) for i in range(4)]
    assert sorted(torch.cat(parts).tolist()) == list(range(100))
    assert torch.equal(parts[1], shard_indices(100, 2, 1, 4, seed=5))
    assert not torch.equal(parts[1], shard_indices(100, 3, 1, 4, seed=5))  # each round reshuffles
    with pytest.raises(ValueError):
        shard_indices(100, 0, 4, 4, seed=5)


def test_prepare_splits_and_tasks_have_distinct_seeds(make_spec: Callable[..., TrainingJobSpec], corpus: bytes) -> None:
    spec = make_spec()
    a, b = prepare(spec, corpus), prepare(spec, corpus)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval)
    assert a.eval.shape[0] == int((a.train.shape[0] + a.eval.shape[0]) * 0.1)
    assert a.train.shape[1] == spec.seq_len + 1
    assert torch.equal(shard_for(a, spec, 1, 2), shard_for(b, spec, 1, 2))
    seeds = {task_seed(spec, r, i) for r in range(3) for i in range(3)}
    assert len(seeds) == 9
    jsonl = b"\n".join(json.dumps({"text": line}).encode() for line in corpus.decode().splitlines())
    assert prepare(make_spec(dataset=DatasetRef(format="jsonl")), jsonl).train.shape[0] > 100
    with pytest.raises(DatasetError):
        prepare(spec, b"too short")
