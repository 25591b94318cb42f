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
from globai.protocol import secagg
from globai.protocol.bytetokens import file_windows
from globai.protocol.compression import encode_update, parse_codec, payload_digest
from globai.protocol.training import FEDERATED_MODEL, PAYLOAD_KIND, TRAINING_MODEL, UpdateScope, sign_update
from worker.training import InnerMetrics, run_inner_steps

log = logging.getLogger(__name__)
Tensors = dict[str, torch.Tensor]
#: (task payload, honest update) -> what is sent. Only for tests of the market's defences.
Tamper = Callable[[Mapping[str, Any], Tensors], Tensors]


class TensorMismatch(MarketError):
    def __init__(self, sha: str) -> None:
        super().__init__(502, f"tensor {sha} did not match its sha256")


class _Crashed(Exception):
    """`crash_after`: the test worker stops here."""


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
    #: Federated jobs: this worker's own training data (a .txt or .jsonl file); it never leaves the machine.
    local_data: Path | None = None
    #: Only for tests of dropout recovery: stop (as if crashed) right after this secure-aggregation step.
    crash_after: str | None = None
    #: Federated: what this worker put into each round's secure sum (clipped + noised), by (job, round).
    contributions: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    poll_s: float = 0.2
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
            "models": self._models(),
        }
        reg = self._call("POST", "/v1/workers", json=profile).json()
        if not reg.get("eligible", True):
            raise MarketError(
                403,
                f"worker {self.account.address} is not eligible for work (stake "
                f"{int(reg.get('stake') or 0) / 10**18:g} GLB is below the vault minimum): "
                "stake first with `globai worker stake`",
            )

    def _models(self) -> list[str]:
        return [TRAINING_MODEL] + ([FEDERATED_MODEL] if self.local_data is not None else [])

    # -- a task ----------------------------------------------------------------------------------------------------
    def claim(self) -> dict[str, Any] | None:
        body = {
            "kinds": ["train"],
            "models": self._models(),
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

    def _inner_steps(
        self, p: dict[str, Any], tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any], data: torch.Tensor
    ) -> tuple[Tensors, InnerMetrics]:
        """The task's H seeded AdamW steps on `data` (the market's shard, or this worker's own local data)."""
        return run_inner_steps(
            tensors,
            config,
            data,
            int(p["inner_steps"]),
            float(p["inner_lr"]),
            int(p["seed"]),
            batch_size=int(p["batch_size"]),
            weight_decay=float(p["weight_decay"]),
            grad_clip=None if p["grad_clip"] is None else float(p["grad_clip"]),
            num_threads=self.num_threads,
        )

    def run_task(self, lease: dict[str, Any]) -> TaskOutcome:
        if lease["task"]["payload"].get("federated"):
            return self.run_federated_task(lease)
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
            update, metrics = self._inner_steps(p, tensors, config, shard)
        finally:
            stop.set()
        if self.tamper is not None:
            update = self.tamper(p, update)
        payload = encode_update(update, parse_codec(p["compression"]))
        return self._submit(task, lease_id, payload, metrics, self.bytes_down - down0)

    def _submit(
        self, task: dict[str, Any], lease_id: str, payload: bytes, metrics: InnerMetrics, bytes_down: int
    ) -> TaskOutcome:
        """Sign the update's scoped digest and send it."""
        p = task["payload"]
        job_id, r, slot = task["job_id"], int(p["round"]), int(p["slot"])
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
            bytes_down,
            len(payload),
        )

    # -- a federated task ------------------------------------------------------------------------------------------
    def _local(self, seq_len: int) -> torch.Tensor:
        if self.local_data is None:
            raise MarketError(409, "a federated task needs local data (--data)")
        data = self.local_data.read_bytes()
        fmt = "jsonl" if self.local_data.suffix == ".jsonl" else "text"
        windows = file_windows(data, seq_len, fmt)
        if windows.shape[0] < 1:
            raise MarketError(409, f"{self.local_data} has no window of {seq_len + 1} tokens")
        return windows

    def secagg_state(self, job_id: str, round_index: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/v1/training/jobs/{job_id}/rounds/{round_index}/secagg").json())

    def _wait_phase(self, job_id: str, round_index: int, phases: set[str], timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            state = self.secagg_state(job_id, round_index)
            if state["phase"] in phases:
                return state
            if time.monotonic() > end:
                raise MarketError(504, f"round {round_index} stayed in phase {state['phase']} for {timeout:.0f} s")
            time.sleep(self.poll_s)

    def run_federated_task(self, lease: dict[str, Any]) -> TaskOutcome:
        """Train on local data; clip, noise and mask the update (secure aggregation); after the round closes, help
        unmask the sum. Only the masked vector and sealed key shares leave this machine."""
        task, lease_id = lease["task"], lease["lease_id"]
        p, fed = task["payload"], task["payload"]["federated"]
        job_id, r, slot, tid = task["job_id"], int(p["round"]), int(p["slot"]), task["id"]
        t, wait = int(fed["threshold"]), 3 * float(fed["phase_timeout_s"]) + 30.0
        context = secagg.round_context(int(p["chain_id"]), p["chain_job_id"], r, p["base_manifest"])
        me = secagg.Participant.new(slot, context)
        down0 = self.bytes_down
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(tid, lease_id, stop), daemon=True)
        beat.start()
        lease_q = {"lease_id": lease_id}
        try:
            signature = secagg.sign_keys(self.account, context, slot, me.c.public, me.s.public)
            keys_msg = {"c_public": me.c.public.hex(), "s_public": me.s.public.hex(), "signature": signature}
            self._call("POST", f"/v1/training/tasks/{tid}/secagg/keys", params=lease_q, json=keys_msg)
            config, tensors = self.fetch_checkpoint(job_id, int(p["version"]), p["base_manifest"])
            update, metrics = self._inner_steps(p, tensors, config, self._local(int(p["seq_len"])))
            x = secagg.flatten(update)
            x = x * min(1.0, float(fed["clip_norm"]) / max(float(x.norm()), 1e-12))
            if float(fed["noise_std"]) > 0:
                x = x + torch.randn(x.shape, dtype=torch.float64) * float(fed["noise_std"])
            encoded = secagg.encode(x, float(fed["scale"]), float(fed["bound"]))
            self.contributions[(job_id, r)] = x
            state = self._wait_phase(job_id, r, {"shares", "masked", "unmask", "done"}, wait)
            keys = {int(v): k for v, k in state.get("keys", {}).items()}
            if slot not in keys or state["phase"] != "shares":
                raise MarketError(409, f"slot {slot} was left out of round {r}'s secure aggregation")
            c_pub, s_pub = {}, {}
            for v, k in keys.items():
                c, s_ = bytes.fromhex(k["c_public"]), bytes.fromhex(k["s_public"])
                if secagg.keys_signer(context, v, c, s_, k["signature"]) != k["worker"]:
                    raise MarketError(502, f"slot {v}'s keys are not signed by its worker")
                c_pub[v], s_pub[v] = c, s_
            if (c_pub[slot], s_pub[slot]) != (me.c.public, me.s.public):
                raise MarketError(502, "the market lists other keys for this slot")
            sealed = me.shares_for(c_pub, t)
            body = {"shares": {str(v): h.hex() for v, h in sealed.items()}}
            self._call("POST", f"/v1/training/tasks/{tid}/secagg/shares", params=lease_q, json=body)
            if self.crash_after == "shares":
                raise _Crashed()
            state = self._wait_phase(job_id, r, {"masked", "unmask", "done"}, wait)
            shared = [int(v) for v in state["shared"]]
            if slot not in shared or state["phase"] != "masked" or len(shared) < t:
                raise MarketError(409, f"slot {slot} cannot send a masked input for round {r}")
            received = state["sealed_for_me"][str(slot)]
            opened = {u: me.open_share(u, c_pub[u], bytes.fromhex(received[str(u)])) for u in shared}
            y = me.mask(encoded, {u: s_pub[u] for u in shared})
            outcome = self._submit(task, lease_id, secagg.encode_masked(y), metrics, self.bytes_down - down0)
        except _Crashed:
            return TaskOutcome(tid, job_id, r, slot, False, False, "", InnerMetrics(0.0, 0.0, 0.0, 0, 0, 0.0), 0, 0)
        finally:
            stop.set()
        state = self._wait_phase(job_id, r, {"unmask", "done"}, wait)
        if state["phase"] == "unmask":
            survivors, dropped = [int(u) for u in state["survivors"]], [int(u) for u in state["dropped"]]
            # Never both shares of one participant, and never for fewer than t survivors (Bonawitz et al.).
            if set(survivors) & set(dropped) or len(survivors) < t or not set(survivors) | set(dropped) <= set(opened):
                raise MarketError(502, f"inconsistent unmask request for round {r}: refused")
            unmask: dict[str, Any] = {
                "slot": slot,
                "b": {str(u): [opened[u][1][0], opened[u][1][1].hex()] for u in survivors},
                "s": {str(u): [opened[u][0][0], opened[u][0][1].hex()] for u in dropped},
            }
            self._call("POST", f"/v1/training/jobs/{job_id}/rounds/{r}/secagg/unmask", json=unmask)
        return outcome

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
