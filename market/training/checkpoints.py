"""Versioned, content-addressed checkpoints of a training job, and exactly-once application of a round.

Layout under the store root::

    tensors/<sha256>.safetensors    one tensor per file, named by the sha256 of the file's bytes
    tensors/<sha256>.<kid>.enc      the same, encrypted at rest (AES-256-GCM) with the job's key (kid: its hash)
    jobs/<job_id>/v000000.json      version manifest: tensor name → sha256, outer momentum, round, metrics
    jobs/<job_id>/key.sealed        an encrypted job's checkpoint key, sealed with the market's master key

A version is *committed* when its manifest exists. Tensor files are written first (temp file + rename, skipped
when the content already exists, so unchanged tensors are stored once), the manifest last, atomically. A crash
in between leaves only unreferenced tensor files; re-running the round rewrites nothing it already has and
then commits. Version v+1 is the result of round v, so "was round r applied?" is "does manifest r+1 exist?".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from globai.errors import GlobaiError
from globai.protocol.aead import AeadError, open_sealed, seal
from market.training.aggregation import aggregate
from market.training.outer import nesterov_step
from market.training.spec import TrainingJobSpec

log = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class CheckpointError(GlobaiError):
    """A checkpoint is missing, corrupt, or a round does not fit the job's history."""


class RoundConflict(CheckpointError):
    def __init__(self, job_id: str, round_index: int) -> None:
        super().__init__(f"job {job_id} round {round_index} was already applied with different updates")
        self.job_id = job_id
        self.round_index = round_index


@dataclass(frozen=True)
class Manifest:
    job_id: str
    version: int
    round: int | None  # the round that produced this version; None for the initial checkpoint
    config: dict[str, Any]
    tensors: dict[str, str]  # name → sha256 of its tensor file
    momentum: dict[str, str]  # outer Nesterov buffers, same names
    parent: str | None  # sha256 of the previous manifest
    updates_digest: str | None
    n_updates: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True, indent=1).encode()

    @property
    def sha256(self) -> str:
        """Digest of the tensor map and lineage: what identifies checkpoint content (metrics/time
        excluded)."""
        core = {
            "job": self.job_id,
            "v": self.version,
            "t": self.tensors,
            "m": self.momentum,
            "p": self.parent,
        }
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Checkpoint:
    manifest: Manifest
    params: Tensors
    momentum: Tensors


@dataclass(frozen=True)
class ApplyResult:
    manifest: Manifest
    applied: bool  # False when the round had already been applied (idempotent repeat)
    tensors_written: int = 0
    tensors_reused: int = 0


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    # fsync the directory so the rename itself survives a power loss, not just the bytes.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def updates_digest(updates: Sequence[Mapping[str, torch.Tensor]]) -> str:
    """sha256 over the updates' names and fp32 bytes, in order: identifies a round's inputs."""
    h = hashlib.sha256()
    for update in updates:
        for name in sorted(update):
            h.update(name.encode() + b"\0")
            h.update(update[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class CheckpointStore:
    """Filesystem checkpoint store (a directory; an object store can implement the same few methods)."""

    def __init__(self, root: str | Path, master: bytes | None = None) -> None:
        self.root = Path(root)
        self.master = master  # seals per-job checkpoint keys; kept outside the store (the market's settings)
        self._keys: dict[str, bytes] = {}
        (self.root / "tensors").mkdir(parents=True, exist_ok=True)
        (self.root / "jobs").mkdir(parents=True, exist_ok=True)

    # -- per-job keys (encryption at rest) ---------------------------------------------------------------------
    def set_job_key(self, job_id: str, key: bytes) -> None:
        """Encrypt this job's checkpoints at rest with `key` (32 bytes, the requester's); call before init_job."""
        if self.master is None:
            raise CheckpointError("this market has no master key to keep a checkpoint key with")
        if len(key) != 32:
            raise CheckpointError("a checkpoint key is 32 bytes")
        self._job_dir(job_id).mkdir(parents=True, exist_ok=True)
        _atomic_write(
            self._job_dir(job_id) / "key.sealed", seal(self.master, key, b"globai-ckpt-key:" + job_id.encode())
        )
        self._keys[job_id] = key

    def job_key(self, job_id: str) -> bytes | None:
        """The job's checkpoint key, or None when its checkpoints are stored in the clear."""
        if job_id in self._keys:
            return self._keys[job_id]
        path = self._job_dir(job_id) / "key.sealed"
        if not path.exists():
            return None
        if self.master is None:
            raise CheckpointError(f"job {job_id}'s checkpoints are encrypted: the market's master key is needed")
        try:
            key = open_sealed(self.master, path.read_bytes(), b"globai-ckpt-key:" + job_id.encode())
        except AeadError as exc:
            raise CheckpointError(f"job {job_id}'s checkpoint key: {exc}") from None
        self._keys[job_id] = key
        return key

    # -- tensors
    # -------------------------------------------------------------------------------------------------
    def _tensor_path(self, sha: str, key: bytes | None) -> Path:
        if key is None:
            return self.root / "tensors" / f"{sha}.safetensors"
        return self.root / "tensors" / f"{sha}.{hashlib.sha256(key).hexdigest()[:16]}.enc"

    def put_tensor(self, tensor: torch.Tensor, key: bytes | None = None) -> tuple[str, bool]:
        """Store a tensor by content (sealed with `key` if given); returns (sha256 of the plain file, newly
        written)."""
        data = st_save({"t": tensor.detach().contiguous()})
        sha = hashlib.sha256(data).hexdigest()
        path = self._tensor_path(sha, key)
        if path.exists():
            return sha, False
        _atomic_write(path, data if key is None else seal(key, data, sha.encode()))
        return sha, True

    def tensor_bytes(self, sha: str, key: bytes | None = None) -> bytes:
        """The plain safetensors file of a tensor (decrypted with `key` if the job's are sealed), hash-checked."""
        try:
            raw = self._tensor_path(sha, key).read_bytes()
        except FileNotFoundError as exc:
            raise CheckpointError(f"tensor {sha} is missing") from exc
        try:
            data = raw if key is None else open_sealed(key, raw, sha.encode())
        except AeadError as exc:
            raise CheckpointError(f"tensor file {sha}: {exc}") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise CheckpointError(f"tensor file {sha} is corrupt (sha256 mismatch)")
        return data

    def get_tensor(self, sha: str, key: bytes | None = None) -> torch.Tensor:
        return st_load(self.tensor_bytes(sha, key))["t"]

    # -- manifests
    # -----------------------------------------------------------------------------------------------
    def _job_dir(self, job_id: str) -> Path:
        if not _JOB_ID.match(job_id):
            raise CheckpointError(f"bad job id {job_id!r}")
        return self.root / "jobs" / job_id

    def _manifest_path(self, job_id: str, version: int) -> Path:
        return self._job_dir(job_id) / f"v{version:06d}.json"

    def _write_manifest(self, manifest: Manifest) -> None:
        _atomic_write(self._manifest_path(manifest.job_id, manifest.version), manifest.to_json())

    def versions(self, job_id: str) -> list[int]:
        d = self._job_dir(job_id)
        if not d.exists():
            return []
        return sorted(int(p.stem[1:]) for p in d.glob("v*.json") if re.fullmatch(r"v\d{6}", p.stem))

    def manifest(self, job_id: str, version: int | None = None) -> Manifest:
        """The manifest of ``version`` (default: the latest committed one)."""
        if version is None:
            versions = self.versions(job_id)
            if not versions:
                raise CheckpointError(f"job {job_id} has no checkpoint")
            version = versions[-1]
        try:
            raw = json.loads(self._manifest_path(job_id, version).read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"job {job_id} has no version {version}") from exc
        return Manifest(**raw)

    def load(self, job_id: str, version: int | None = None) -> Checkpoint:
        m = self.manifest(job_id, version)
        key = self.job_key(job_id)
        params = {name: self.get_tensor(sha, key) for name, sha in m.tensors.items()}
        momentum = {name: self.get_tensor(sha, key) for name, sha in m.momentum.items()}
        return Checkpoint(m, params, momentum)

    def commit(
        self,
        *,
        job_id: str,
        version: int,
        round_index: int | None,
        config: Mapping[str, Any],
        params: Mapping[str, torch.Tensor],
        momentum: Mapping[str, torch.Tensor],
        parent: str | None,
        digest: str | None,
        n_updates: int = 0,
        metrics: Mapping[str, float] | None = None,
    ) -> ApplyResult:
        """Write tensors (skipping known content), then the manifest: the manifest write is the commit."""
        self._job_dir(job_id).mkdir(parents=True, exist_ok=True)
        written = reused = 0
        key = self.job_key(job_id)
        shas: dict[str, dict[str, str]] = {"tensors": {}, "momentum": {}}
        for kind, tensors in (("tensors", params), ("momentum", momentum)):
            for name, tensor in tensors.items():
                sha, new = self.put_tensor(tensor, key)
                shas[kind][name] = sha
                written, reused = written + new, reused + (not new)
        manifest = Manifest(
            job_id=job_id,
            version=version,
            round=round_index,
            config=dict(config),
            tensors=shas["tensors"],
            momentum=shas["momentum"],
            parent=parent,
            updates_digest=digest,
            n_updates=n_updates,
            metrics=dict(metrics or {}),
            created_at=time.time(),
        )
        self._write_manifest(manifest)
        return ApplyResult(manifest, True, written, reused)

    def prune(self, job_id: str, keep_last: int, *, grace_s: float = 3600.0) -> tuple[list[int], int]:
        """Retention: keep version 0, the job's current lineage's last `keep_last` versions, drop the other
        manifests (rolled-back branches, old versions), then delete tensor files no manifest of any job refers
        to and older than `grace_s` (a commit in flight writes its tensors before its manifest). Returns
        (dropped versions, tensor files deleted)."""
        versions = self.versions(job_id)
        if not versions or keep_last < 1:
            return [], 0
        by_sha = {self.manifest(job_id, v).sha256: v for v in versions}
        keep, m = {0}, self.manifest(job_id, versions[-1])
        while len(keep) <= keep_last:
            keep.add(m.version)
            if m.parent is None or m.parent not in by_sha:
                break
            m = self.manifest(job_id, by_sha[m.parent])
        dropped = [v for v in versions if v not in keep]
        for v in dropped:
            self._manifest_path(job_id, v).unlink(missing_ok=True)
        live: set[str] = set()
        for job_dir in (self.root / "jobs").iterdir():
            for path in job_dir.glob("v*.json"):
                raw = json.loads(path.read_text())
                live.update(raw["tensors"].values(), raw["momentum"].values())
        deleted, cutoff = 0, time.time() - grace_s
        for path in (self.root / "tensors").iterdir():
            name = path.name
            if name.startswith(".") or name.split(".", 1)[0] in live or path.stat().st_mtime > cutoff:
                continue
            path.unlink(missing_ok=True)
            deleted += 1
        return dropped, deleted

    def init_job(
        self, job_id: str, config: Mapping[str, Any], params: Mapping[str, torch.Tensor], key: bytes | None = None
    ) -> Manifest:
        """Commit checkpoint 0 (no-op if it exists: job creation may be retried); with `key`, every checkpoint of
        the job is encrypted at rest with it."""
        if self.versions(job_id):
            return self.manifest(job_id, 0)
        if key is not None:
            self.set_job_key(job_id, key)
        return self.commit(
            job_id=job_id,
            version=0,
            round_index=None,
            config=config,
            params=params,
            momentum={},
            parent=None,
            digest=None,
        ).manifest


def apply_round(
    store: CheckpointStore,
    job_id: str,
    round_index: int,
    updates: Sequence[Mapping[str, torch.Tensor]],
    *,
    spec: TrainingJobSpec,
    metrics: Mapping[str, float] | None = None,
    base_version: int | None = None,
) -> ApplyResult:
    """Aggregate round ``round_index``'s decoded updates; commit checkpoint ``round_index + 1`` exactly once.

    The round starts from ``base_version`` (default ``round_index``; an earlier version after a rollback), which
    becomes the new version's parent.

    Idempotent on (job, round): if version ``round_index + 1`` is already committed with the same updates,
    returns it with ``applied=False``; with different updates, raises `RoundConflict` (the round's inputs must
    be fixed before applying, e.g. by persisting the close decision). Rounds must be applied in order.
    """
    if not updates:
        raise CheckpointError("a round needs at least one update")
    digest = updates_digest(updates)
    versions = store.versions(job_id)
    if not versions:
        raise CheckpointError(f"job {job_id} has no checkpoint")
    if versions[-1] > round_index:
        done = store.manifest(job_id, round_index + 1)
        if done.updates_digest != digest:
            raise RoundConflict(job_id, round_index)
        log.info("job %s round %d already applied (version %d)", job_id, round_index, done.version)
        return ApplyResult(done, applied=False)
    if versions[-1] < round_index:
        raise CheckpointError(f"job {job_id} is at version {versions[-1]}; round {round_index} is out of order")
    current = store.load(job_id, round_index if base_version is None else base_version)
    pseudo = aggregate(updates, spec.aggregation, spec.trim_fraction)
    params, momentum = nesterov_step(
        current.params, current.momentum or None, pseudo, spec.outer_lr, spec.outer_momentum
    )
    return store.commit(
        job_id=job_id,
        version=round_index + 1,
        round_index=round_index,
        config=current.manifest.config,
        params=params,
        momentum=momentum,
        parent=current.manifest.sha256,
        digest=digest,
        n_updates=len(updates),
        metrics=metrics,
    )
