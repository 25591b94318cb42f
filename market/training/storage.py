"""Where the market keeps a training job's bytes: uploaded datasets, received pseudo-gradients, checkpoints.

All three are content-addressed under one directory (``Settings.training_dir``): datasets and updates in blob
stores keyed by sha256, checkpoints in the `CheckpointStore`. Several API processes and Celery workers may share
the directory (a network filesystem or one machine); every write is atomic and idempotent.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from globai.models.build import build_causal_lm
from market.blobstore import BlobStore
from market.training.checkpoints import CheckpointStore, Manifest
from market.training.data import PreparedDataset, prepare
from market.training.spec import TrainingJobSpec


class TrainingStorage:
    def __init__(self, root: str | Path, master: bytes | None = None) -> None:
        self.root = Path(root)
        self.datasets = BlobStore(self.root / "datasets")
        self.updates = BlobStore(self.root / "updates")
        self.checkpoints = CheckpointStore(self.root / "checkpoints", master)
        self._prepared: OrderedDict[tuple[str, str], PreparedDataset] = OrderedDict()
        self._lock = threading.Lock()

    def prepared(self, spec: TrainingJobSpec, dataset_sha256: str) -> PreparedDataset:
        """The job's tokenised, windowed, split dataset (a pure function of spec + bytes; cached per process)."""
        key = (spec.spec_hash(), dataset_sha256)
        with self._lock:
            if key in self._prepared:
                self._prepared.move_to_end(key)
                return self._prepared[key]
        data = prepare(spec, self.datasets.get(dataset_sha256))
        with self._lock:
            self._prepared[key] = data
            while len(self._prepared) > 8:
                self._prepared.popitem(last=False)
        return data

    def manifest(self, job_id: str, version: int) -> Manifest:
        return self.checkpoints.manifest(job_id, version)


_STORAGES: dict[str, TrainingStorage] = {}
_STORAGES_LOCK = threading.Lock()


def storage_at(root: str | Path, master: bytes | None = None) -> TrainingStorage:
    """One `TrainingStorage` per directory per process (keeps the prepared-dataset cache shared). `master` seals
    the per-job checkpoint keys (`master_key(settings)`)."""
    key = str(Path(root).resolve())
    with _STORAGES_LOCK:
        if key not in _STORAGES:
            _STORAGES[key] = TrainingStorage(key, master)
        elif master is not None and _STORAGES[key].checkpoints.master is None:
            _STORAGES[key].checkpoints.master = master
        return _STORAGES[key]


def master_key(settings: Any) -> bytes:
    """The market's key for sealing per-job checkpoint keys, derived from its auth secret (never stored with
    the checkpoints)."""
    import hashlib

    return hashlib.sha256(b"GLOBAI-CHECKPOINT-MASTER-V1" + settings.auth_secret.get_secret_value().encode()).digest()


@lru_cache(maxsize=32)
def _shapes(config_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # The meta device allocates nothing: shapes of a billion-parameter model cost microseconds.
    with torch.device("meta"):
        model = build_causal_lm(json.loads(config_json))
    return tuple((name, tuple(p.shape)) for name, p in model.named_parameters())


def parameter_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """name → shape of every trainable parameter of the job's model: what a decoded update must match."""
    return dict(_shapes(json.dumps(dict(config), sort_keys=True)))


def estimate_memory_bytes(config: Mapping[str, Any], spec: TrainingJobSpec) -> int:
    """Rough peak memory of a task: fp32 params, grads and two AdamW moments, plus activations."""
    n_params = sum(int(torch.Size(s).numel()) for s in parameter_shapes(config).values())
    hidden = int(config.get("hidden_size", 256))
    layers = int(config.get("num_hidden_layers", 1))
    vocab = int(config.get("vocab_size", 259))
    tokens = spec.batch_size * spec.seq_len
    activations = tokens * (hidden * layers * 16 + vocab * 2) * 4
    return 4 * n_params * 4 + activations
