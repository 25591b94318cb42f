"""Worker side of DiLoCo training over the market's HTTP API.

One task: claim a ``train`` task through the lease API; fetch checkpoint v's manifest and only the tensors not
already in the local content-addressed cache (each checked against its sha256); fetch the task's data shard; run
`worker.training.run_inner_steps` (H AdamW steps, seeded) while heartbeating the lease; compress the
pseudo-gradient with the job's codec; sign the scoped digest over its sha256 (`globai.protocol.training`); submit.

Imports only `globai` (the shared protocol and the market client), never `market`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from eth_account.signers.local import LocalAccount
from safetensors.torch import load as st_load

from globai.client import MarketError, check, sign_in
from globai.protocol.compression import encode_update, parse_codec, payload_digest
from globai.protocol.training import PAYLOAD_KIND, TRAINING_MODEL, UpdateScope, sign_update
from worker.training import InnerMetrics, run_inner_steps

log = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]
#: (task payload, honest update) -> what is sent. Only for tests of the market's defences.
Tamper = Callable[[Mapping[str, Any], Tensors], Tensors]


class TensorMismatch(MarketError):
    def __init__(self, sha: str) -> None:
        super().__init__(502, f"tensor {sha} did not match its sha256")


@dataclass
class TaskOutcome:
    task_id: str
    job_id: str
    round: int
    slot: int
    replay: bool
    accepted: bool
    update_sha256: str
    metrics: InnerMetrics
    bytes_down: int
    bytes_up: int


@dataclass
class TrainingClient:
    http: httpx.Client
    account: LocalAccount
    cache_dir: Path
    operator_id: str = "op-local"
    memory_bytes: int = 8 << 30
    num_threads: int = 1
    heartbeat_s: float = 10.0
    tamper: Tamper | None = None
    bytes_down: int = 0
    tensors_fetched: int = 0
    tensors_cached: int = 0
    _token_roles: list[str] = field(default_factory=lambda: ["worker"])

    # -- session ---------------------------------------------------------------------------------------------------
    def sign_in(self) -> None:
        token = sign_in(self.http, self.account, self._token_roles)
        self.http.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, url, **kwargs)
        if response.status_code == 401:  # token expired: sign in again once
            self.sign_in()
            response = self.http.request(method, url, **kwargs)
        return check(response)

    def register(self) -> None:
        """Register as a worker that runs training tasks (CPU profile measured by a short matmul)."""
        started = time.perf_counter()
        a = torch.randn(256, 256)
        for _ in range(8):
            a = torch.tanh(a @ a)
        tokens_s = 8 * 256 / max(time.perf_counter() - started, 1e-6)
        profile = {
            "device": "cpu",
            "memory_bytes": self.memory_bytes,
            "throughput_tokens_s": round(tokens_s, 1),
            "bandwidth_bytes_s": 1e8,
            "latency_ms": 1.0,
            "reference_layer": "matmul-256",
            "operator_id": self.operator_id,
            "models": [TRAINING_MODEL],
        }
        reg = self._call("POST", "/v1/workers", json=profile).json()
        if not reg.get("eligible", True):
            raise MarketError(
                403,
                f"worker {self.account.address} is not eligible for work (stake "
                f"{int(reg.get('stake') or 0) / 10**18:g} GLB is below the vault minimum): "
                "stake first with `globai worker stake`",
            )

    # -- a task ----------------------------------------------------------------------------------------------------
    def claim(self) -> dict[str, Any] | None:
        body = {
            "kinds": ["train"],
            "models": [TRAINING_MODEL],
            "layer_ranges": [{"start": 0, "end": 1024}],
            "memory_bytes": self.memory_bytes,
        }
        response = self._call("POST", "/v1/tasks/claim", json=body)
        if response.status_code == 204:
            return None
        lease: dict[str, Any] = response.json()
        if lease["task"]["payload"].get("kind") != PAYLOAD_KIND:
            log.warning("leased task %s is not a DiLoCo task; letting its lease expire", lease["task"]["id"])
            return None
        return lease

    def _tensor(self, job_id: str, sha: str) -> torch.Tensor:
        path = self.cache_dir / "tensors" / f"{sha}.safetensors"
        if path.exists():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == sha:
                self.tensors_cached += 1
                return st_load(data)["t"]
        data = self._call("GET", f"/v1/training/jobs/{job_id}/tensors/{sha}").content
        if hashlib.sha256(data).hexdigest() != sha:
            raise TensorMismatch(sha)
        self.bytes_down += len(data)
        self.tensors_fetched += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return st_load(data)["t"]

    def fetch_checkpoint(self, job_id: str, version: int, expected_manifest: str) -> tuple[dict[str, Any], Tensors]:
        """Checkpoint v: fetch only the tensors missing from the cache; every tensor checked by its sha256."""
        manifest = self._call("GET", f"/v1/training/jobs/{job_id}/checkpoints/{version}").json()
        if manifest["sha256"] != expected_manifest:
            raise MarketError(409, f"checkpoint {version} is {manifest['sha256']}, the task names {expected_manifest}")
        tensors = {name: self._tensor(job_id, sha) for name, sha in manifest["tensors"].items()}
        for name, shape in manifest["shapes"].items():
            if list(tensors[name].shape) != shape:
                raise MarketError(502, f"tensor {name} has shape {list(tensors[name].shape)}, manifest {shape}")
        return manifest["config"], tensors

    def fetch_shard(self, job_id: str, round_index: int, slot: int) -> torch.Tensor:
        data = self._call("GET", f"/v1/training/jobs/{job_id}/shards/{round_index}/{slot}").content
        self.bytes_down += len(data)
        windows = st_load(data)["windows"]
        if windows.dtype != torch.int64 or windows.dim() != 2:
            raise MarketError(502, "shard is not int64 [n, T+1] windows")
        return windows

    def _heartbeat(self, task_id: str, lease_id: str, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                self._call("POST", f"/v1/tasks/{task_id}/heartbeat", json={"lease_id": lease_id})
            except (MarketError, httpx.HTTPError) as exc:
                log.warning("heartbeat for %s failed: %s", task_id, exc)
                return

    def run_task(self, lease: dict[str, Any]) -> TaskOutcome:
        task, lease_id = lease["task"], lease["lease_id"]
        p = task["payload"]
        job_id, r, slot = task["job_id"], int(p["round"]), int(p["slot"])
        down0 = self.bytes_down
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(task["id"], lease_id, stop), daemon=True)
        beat.start()
        try:
            config, tensors = self.fetch_checkpoint(job_id, int(p["version"]), p["base_manifest"])
            shard = self.fetch_shard(job_id, r, slot)
            update, metrics = run_inner_steps(
                tensors,
                config,
                shard,
                int(p["inner_steps"]),
                float(p["inner_lr"]),
                int(p["seed"]),
                batch_size=int(p["batch_size"]),
                weight_decay=float(p["weight_decay"]),
                grad_clip=None if p["grad_clip"] is None else float(p["grad_clip"]),
                num_threads=self.num_threads,
            )
        finally:
            stop.set()
        if self.tamper is not None:
            update = self.tamper(p, update)
        payload = encode_update(update, parse_codec(p["compression"]))
        sha = payload_digest(payload)
        scope = UpdateScope(
            chain_id=int(p["chain_id"]),
            chain_job_id=p["chain_job_id"],
            task_id=task["id"],
            round=r,
            slot=slot,
            job_nonce=p["job_nonce"],
            base_checkpoint=p["base_manifest"],
        )
        params = {
            "lease_id": lease_id,
            "signature": sign_update(scope, sha, self.account),
            "loss_start": metrics.loss_start,
            "loss_end": metrics.loss_end,
        }
        receipt = self._call(
            "POST",
            f"/v1/training/tasks/{task['id']}/update",
            params=params,
            content=payload,
            headers={"Content-Type": "application/octet-stream"},
        ).json()
        return TaskOutcome(
            task["id"],
            job_id,
            r,
            slot,
            p.get("replay_of") is not None,
            bool(receipt["accepted"]),
            sha,
            metrics,
            self.bytes_down - down0,
            len(payload),
        )

    def run_once(self) -> TaskOutcome | None:
        lease = self.claim()
        return None if lease is None else self.run_task(lease)

    def run(
        self,
        stop: threading.Event,
        *,
        idle_s: float = 1.0,
        max_tasks: int | None = None,
        on_task: Callable[[TaskOutcome], None] | None = None,
        max_refusals: int = 4,
    ) -> int:
        """Claim and run tasks until `stop` is set (or `max_tasks` done); returns how many were done."""
        done = 0
        refusals = 0  # consecutive 401/403: a lost stake or a ban ends the loop (with the reason), not a retry
        while not stop.is_set() and (max_tasks is None or done < max_tasks):
            try:
                outcome = self.run_once()
            except (MarketError, httpx.HTTPError) as exc:
                if isinstance(exc, MarketError) and exc.status in (401, 403):
                    refusals += 1
                    if refusals > max_refusals:
                        raise MarketError(
                            exc.status, f"refused {refusals} times in a row, giving up: {exc.detail}"
                        ) from None
                    stop.wait(min(idle_s * 2 ** (refusals - 1), 10.0))
                    continue
                log.warning("training task failed: %s", exc)
                stop.wait(idle_s)
                continue
            refusals = 0
            if outcome is None:
                stop.wait(idle_s)
                continue
            done += 1
            if on_task is not None:
                on_task(outcome)
        return done
