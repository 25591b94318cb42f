"""Checkpoint store: content addressing, exactly-once rounds, crash between tensors and manifest."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from market.training.checkpoints import (
    CheckpointError,
    CheckpointStore,
    RoundConflict,
    apply_round,
)
from market.training.spec import TrainingJobSpec


def _params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g), "frozen": torch.ones(3)}


def _updates(n: int = 3, seed: int = 4) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    # "frozen" gets a zero update: its tensor must not be stored again.
    return [
        {"w": torch.randn(6, 4, generator=g), "b": torch.randn(4, generator=g), "frozen": torch.zeros(3)}
        for _ in range(n)
    ]


def _tensor_files(store: CheckpointStore) -> set[str]:
    return {p.name for p in (store.root / "tensors").iterdir() if not p.name.startswith(".tmp")}


def test_init_apply_and_repeat_is_a_no_op(tmp_path: Path, make_spec: Callable[..., TrainingJobSpec]) -> None:
    spec = make_spec()
    store = CheckpointStore(tmp_path)
    m0 = store.init_job("job-1", {"kind": "test"}, _params())
    assert store.init_job("job-1", {"kind": "other"}, _params()) == m0  # retried creation
    first = apply_round(store, "job-1", 0, _updates(), spec=spec, metrics={"loss": 1.5})
    assert first.applied and first.manifest.version == 1 and first.manifest.round == 0
    assert first.manifest.parent == m0.sha256 and first.manifest.metrics == {"loss": 1.5}
    # Unchanged tensor ("frozen": zero update) is not written again.
    assert first.manifest.tensors["frozen"] == m0.tensors["frozen"]
    assert first.tensors_reused >= 1
    files = _tensor_files(store)
    again = apply_round(store, "job-1", 0, _updates(), spec=spec)
    assert not again.applied and again.manifest == first.manifest
    assert _tensor_files(store) == files and store.versions("job-1") == [0, 1]
    with pytest.raises(RoundConflict):
        apply_round(store, "job-1", 0, _updates(seed=99), spec=spec)
    with pytest.raises(CheckpointError, match="out of order"):
        apply_round(store, "job-1", 2, _updates(), spec=spec)
    ckpt = store.load("job-1")
    assert ckpt.manifest.version == 1 and set(ckpt.momentum) == {"w", "b", "frozen"}


def test_corrupt_tensor_is_detected(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    m0 = store.init_job("job", {}, _params())
    path = tmp_path / "tensors" / f"{m0.tensors['w']}.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        store.load("job")
    with pytest.raises(CheckpointError):
        store.manifest("no-such-job")
    with pytest.raises(CheckpointError):
        store.manifest("../escape")


def test_crash_before_manifest_then_resume_applies_once(
    tmp_path: Path, make_spec: Callable[..., TrainingJobSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    clean = CheckpointStore(tmp_path / "clean")
    clean.init_job("j", {}, _params())
    expected = apply_round(clean, "j", 0, _updates(), spec=spec).manifest

    store = CheckpointStore(tmp_path / "crashy")
    store.init_job("j", {}, _params())

    def killed(self: CheckpointStore, manifest: object) -> None:
        raise KeyboardInterrupt("aggregator killed after writing tensors")

    with monkeypatch.context() as m:
        m.setattr(CheckpointStore, "_write_manifest", killed)
        with pytest.raises(KeyboardInterrupt):
            apply_round(store, "j", 0, _updates(), spec=spec)
    assert store.versions("j") == [0]  # not committed
    orphans = _tensor_files(store)
    resumed = apply_round(store, "j", 0, _updates(), spec=spec)
    assert resumed.applied and resumed.tensors_written == 0  # everything was already there
    assert resumed.manifest.tensors == expected.tensors and resumed.manifest.momentum == expected.momentum
    assert not apply_round(store, "j", 0, _updates(), spec=spec).applied
    assert _tensor_files(store) == orphans and store.versions("j") == [0, 1]


def test_real_process_killed_before_manifest(tmp_path: Path, make_spec: Callable[..., TrainingJobSpec]) -> None:
    """SIGKILL-like exit (os._exit: no cleanup, no finally) in a separate process, then resume here."""
    spec = make_spec()
    store = CheckpointStore(tmp_path)
    store.init_job("j", {}, _params())
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from market.training.checkpoints import CheckpointStore, apply_round
        from market.training.spec import TrainingJobSpec
        from test_training_checkpoints import _updates
        CheckpointStore._write_manifest = lambda self, m: os._exit(137)
        spec = TrainingJobSpec.model_validate_json({spec.model_dump_json()!r})
        apply_round(CheckpointStore({str(tmp_path)!r}), "j", 0, _updates(), spec=spec)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 137, proc.stderr.decode()[-2000:]
    assert store.versions("j") == [0] and len(_tensor_files(store)) > 3
    assert apply_round(store, "j", 0, _updates(), spec=spec).applied
    assert not apply_round(store, "j", 0, _updates(), spec=spec).applied
    assert store.versions("j") == [0, 1]


def test_encrypted_job_rollback_lineage_and_retention(
    tmp_path: Path, make_spec: Callable[..., TrainingJobSpec]
) -> None:
    """A job sealed with its key: no plain tensor on disk, reads need the market's master key; a round applied
    from an earlier base gets that base as parent; retention keeps v0 and the current lineage's last versions
    and deletes tensor files nothing refers to."""
    spec = make_spec(aggregation="mean")
    store = CheckpointStore(tmp_path, master=b"m" * 32)
    key = bytes(range(32))
    store.init_job("job", {"n": 1}, _params(), key=key)
    for r in range(3):
        apply_round(store, "job", r, _updates(seed=r), spec=spec)
    assert store.versions("job") == [0, 1, 2, 3]
    assert not any(name.endswith(".safetensors") for name in _tensor_files(store))  # all sealed
    assert torch.equal(CheckpointStore(tmp_path, master=b"m" * 32).load("job", 0).params["w"], _params()["w"])
    with pytest.raises(CheckpointError, match="master key"):
        CheckpointStore(tmp_path).load("job", 1)
    with pytest.raises(CheckpointError):
        CheckpointStore(tmp_path, master=b"x" * 32).load("job", 1)
    # Roll back two versions: round 3 from version 1.
    v4 = apply_round(store, "job", 3, _updates(seed=9), spec=spec, base_version=1).manifest
    assert v4.parent == store.manifest("job", 1).sha256 != store.manifest("job", 3).sha256
    before = len(_tensor_files(store))
    dropped, deleted = store.prune("job", keep_last=2, grace_s=0)
    assert dropped == [2, 3] and store.versions("job") == [0, 1, 4]  # v2, v3: the rolled-back branch
    assert deleted > 0 and len(_tensor_files(store)) == before - deleted
    for v in (0, 1, 4):
        store.load("job", v)  # every kept version still loads in full
