"""Market processes that share one swarm through Redis: links, relayed calls, run ownership and progress.

Every process that shares (GLOBAI_SHARED_COORDINATOR) has a random id and keeps `{prefix}:proc:{id}` alive with
a short TTL. It announces the worker sockets it holds (`{prefix}:links`, a hash, and an "up"/"down" message on
`{prefix}:events`); the others add them to their own `LinkRegistry` as remote links (`WorkerLink.owner` set), so
any process plans routes over every connected worker. A call on a remote link is published to the owner's
channel `{prefix}:relay:{owner}` as one message (a JSON line, then the encoded request), the owner sends it down
the socket and publishes the worker's answer, byte for byte, back to the caller's channel.

A run is owned by the process that drives it (`{prefix}:runs`: run id -> process id) and every event it emits is
appended to `{prefix}:run:{run_id}` (a Redis stream), which is what any process streams to a requester and what a
successor reads when the owner dies: the tokens already streamed, step by step. When a process's key expires
(kill -9, a lost host), the others drop its links and one of them (compare-and-set on the owner) takes each of its
runs over (`Coordinator.resume`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from globai.protocol.tensors import FrameError, decode_message
from market.coordinator.links import LinkRegistry, WorkerGone, WorkerLink
from market.scheduler.reputation import Reputation

log = logging.getLogger(__name__)

MAX_RELAYED_BYTES = 1 << 30  # the owner already bounded the worker's answer by the model's limits
EVENTS_KEPT_S = 3600  # a finished run's events stay readable this long (its result is in the database)

# Owner compare-and-set: run ARGV[1] moves to ARGV[3] only if ARGV[2] still owns it.
_TAKE = (
    "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) return 1 end return 0"
)


@dataclass(frozen=True)
class PeerConfig:
    redis_url: str
    prefix: str = "globai:coord"
    proc_ttl_s: float = 3.0  # a process silent this long is dead: its links go, its runs are taken over
    beat_s: float = 0.5
    call_timeout_s: float = 60.0


def link_json(link: WorkerLink) -> dict[str, Any]:
    rep = link.reputation
    return {
        "link_id": link.link_id,
        "address": link.address,
        "worker_id": link.worker_id,
        "operator_id": link.operator_id,
        "model": link.model,
        "digest": link.digest,
        "layers": [link.layer_start, link.layer_end],
        "max_batch": link.max_batch,
        "max_tokens": link.max_tokens,
        # What the owning process measured (its join challenge at least) caps what the others route it on.
        "throughput_tokens_s": link.effective_tokens_s,
        "latency_ms": link.effective_latency_ms,
        "reputation": [rep.alpha, rep.beta, rep.evidence],
    }


def _frame(meta: dict[str, Any], raw: bytes = b"") -> bytes:
    return json.dumps(meta, separators=(",", ":")).encode() + b"\n" + raw


def _unframe(data: bytes) -> tuple[dict[str, Any], bytes]:
    head, _, raw = data.partition(b"\n")
    return json.loads(head), raw


class Peers:
    def __init__(self, config: PeerConfig, links: LinkRegistry) -> None:
        self.config = config
        self.links = links
        self.id = secrets.token_hex(8)
        self.redis: Any = aioredis.from_url(config.redis_url)  # bytes in, bytes out (binary frames)
        p = config.prefix
        self.k_links, self.k_events = f"{p}:links", f"{p}:events"
        self._outbox: asyncio.Queue[tuple[str, tuple[Any, ...]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[Any]] = []
        self._relays: set[asyncio.Task[Any]] = set()
        links.on_local = self._local_changed

    def proc_key(self, process: str) -> str:
        return f"{self.config.prefix}:proc:{process}"

    def relay_channel(self, process: str) -> str:
        return f"{self.config.prefix}:relay:{process}"

    def run_key(self, run_id: str) -> str:
        return f"{self.config.prefix}:run:{run_id}"

    # --- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self._beat_once()
        pubsub = self.redis.pubsub()
        await pubsub.subscribe(self.relay_channel(self.id), self.k_events)
        self._tasks = [
            asyncio.create_task(self._listen(pubsub)),
            asyncio.create_task(self._publish_loop()),
            asyncio.create_task(self._beat_loop()),
        ]
        await self.sync_links()
        log.info("market process %s shares the swarm through %s", self.id, self.config.prefix)

    async def stop(self) -> None:
        for task in [*self._tasks, *self._relays]:
            task.cancel()
        await asyncio.gather(*self._tasks, *self._relays, return_exceptions=True)
        try:
            own = [lid for lid, lnk in self._all_links().items() if lnk.local]
            if own:
                await self.redis.hdel(self.k_links, *own)
            await self.redis.delete(self.proc_key(self.id))
        except Exception:  # Redis gone at shutdown: the keys expire on their own
            log.warning("could not withdraw this process from %s", self.config.prefix)
        await self.redis.aclose()

    def _all_links(self) -> dict[str, WorkerLink]:
        return {lnk.link_id: lnk for lnk in self.links.live()}

    async def _beat_once(self) -> None:
        about = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time()})
        await self.redis.set(self.proc_key(self.id), about, px=int(self.config.proc_ttl_s * 1000))

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.beat_s)
            try:
                await self._beat_once()
            except Exception:
                log.exception("heartbeat to Redis failed")

    async def alive(self, processes: set[str]) -> set[str]:
        if not processes:
            return set()
        ordered = sorted(processes)
        values = await self.redis.mget([self.proc_key(p) for p in ordered])
        return {p for p, v in zip(ordered, values, strict=True) if v is not None}

    # --- links -----------------------------------------------------------------------------------------------
    def _local_changed(self, event: str, link: WorkerLink) -> None:
        if event == "up":
            body = {**link_json(link), "owner": self.id}
            self._outbox.put_nowait(("hset", (self.k_links, link.link_id, json.dumps(body))))
            self._outbox.put_nowait(("publish", (self.k_events, _frame({"k": "up", "link": body}))))
        else:
            self._outbox.put_nowait(("hdel", (self.k_links, link.link_id)))
            self._outbox.put_nowait(("publish", (self.k_events, _frame({"k": "down", "link": link.link_id}))))

    def _remote(self, body: dict[str, Any]) -> WorkerLink:
        owner = str(body["owner"])
        link = WorkerLink(
            link_id=str(body["link_id"]),
            address=str(body["address"]),
            worker_id=str(body["worker_id"]),
            operator_id=str(body["operator_id"]),
            model=str(body["model"]),
            digest=str(body["digest"]),
            layer_start=int(body["layers"][0]),
            layer_end=int(body["layers"][1]),
            max_batch=int(body["max_batch"]),
            max_tokens=int(body["max_tokens"]),
            throughput_tokens_s=float(body["throughput_tokens_s"]),
            latency_ms=float(body["latency_ms"]),
            reputation=Reputation(*map(float, body["reputation"])),
            send=_never,
            owner=owner,
        )
        link.transmit = lambda rid, raw: self._relay(link, rid, raw)  # type: ignore[method-assign]
        return link

    async def sync_links(self, *, full: bool = True) -> None:
        """Drop the links of dead processes; `full`: also reconcile with `{prefix}:links` (links announced while we
        missed the message). The full read is O(connected workers), so the watcher does it only now and then."""
        if not full:
            owners = {lnk.owner for lnk in self.links.live() if lnk.owner is not None}
            alive = await self.alive(owners)
            for lnk in self.links.live():
                if lnk.owner is not None and lnk.owner not in alive:
                    self.links.remove(lnk.link_id, f"market process {lnk.owner} is gone")
            return
        entries = {k.decode(): json.loads(v) for k, v in (await self.redis.hgetall(self.k_links)).items()}
        owners = {str(b["owner"]) for b in entries.values()} | {
            lnk.owner for lnk in self.links.live() if lnk.owner is not None
        }
        alive = await self.alive(owners - {self.id}) | {self.id}
        dead = [lid for lid, b in entries.items() if b["owner"] not in alive]
        if dead:
            await self.redis.hdel(self.k_links, *dead)
        for lnk in self.links.live():
            if lnk.owner is not None and (lnk.owner not in alive or lnk.link_id not in entries):
                self.links.remove(lnk.link_id, f"market process {lnk.owner} is gone")
        for lid, body in entries.items():
            if body["owner"] in alive and body["owner"] != self.id and self.links.get(lid) is None:
                self.links.add(self._remote(body))

    # --- relay -----------------------------------------------------------------------------------------------
    async def _relay(self, link: WorkerLink, rid: int, raw: bytes) -> None:
        assert link.owner is not None
        meta = {"k": "call", "link": link.link_id, "rid": rid, "from": self.id}
        receivers = await self.redis.publish(self.relay_channel(link.owner), _frame(meta, raw))
        if not receivers:
            self.links.remove(link.link_id, f"market process {link.owner} is gone")
            raise WorkerGone(link.address, f"market process {link.owner} is gone")

    async def _serve_call(self, meta: dict[str, Any], raw: bytes) -> None:
        """A call another process relays to a worker whose socket we hold; the answer goes back as it came."""
        rid, caller = int(meta["rid"]), str(meta["from"])
        link = self.links.get(str(meta["link"]))
        answer: bytes | None = None
        reason = "not connected here"
        if link is not None and link.local and link.alive:
            future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            link.relayed[rid] = future
            try:
                await link.send(raw)
                answer = await asyncio.wait_for(future, self.config.call_timeout_s)
            except WorkerGone as exc:
                reason = exc.reason
            except TimeoutError:
                reason = "no answer in time"
            except Exception as exc:
                reason = f"send failed: {type(exc).__name__}"
            finally:
                link.relayed.pop(rid, None)
        reply = {"k": "reply" if answer is not None else "gone", "link": meta["link"], "rid": rid, "reason": reason}
        await self.redis.publish(self.relay_channel(caller), _frame(reply, answer or b""))

    def _take_reply(self, meta: dict[str, Any], raw: bytes) -> None:
        link = self.links.get(str(meta["link"]))
        if link is None:
            return
        rid = int(meta["rid"])
        if meta["k"] == "gone":
            link.fail(rid, str(meta.get("reason")))
            return
        try:
            message = decode_message(raw, max_bytes=MAX_RELAYED_BYTES)
        except FrameError as exc:
            link.fail(rid, f"relayed answer unreadable: {exc}")
            return
        link.deliver(message)

    # --- the listener ----------------------------------------------------------------------------------------
    async def _listen(self, pubsub: Any) -> None:
        while True:
            try:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                await pubsub.aclose()
                raise
            except Exception:
                log.exception("Redis subscription failed; resubscribing")
                await asyncio.sleep(0.5)
                continue
            if msg is None:
                continue
            try:
                meta, raw = _unframe(msg["data"])
                kind = meta["k"]
                if kind == "call":
                    task = asyncio.create_task(self._serve_call(meta, raw))
                    self._relays.add(task)
                    task.add_done_callback(self._relays.discard)
                elif kind in ("reply", "gone"):
                    self._take_reply(meta, raw)
                elif kind == "up" and meta["link"]["owner"] != self.id:
                    self.links.add(self._remote(meta["link"]))
                elif kind == "down":
                    lnk = self.links.get(str(meta["link"]))
                    if lnk is not None and not lnk.local:
                        self.links.remove(lnk.link_id, "worker disconnected from its market process")
            except Exception:
                log.exception("bad message on %s", msg.get("channel"))

    async def _publish_loop(self) -> None:
        """This process's announcements and run events, in order, pipelined in batches."""
        while True:
            first = await self._outbox.get()
            batch = [first]
            while not self._outbox.empty() and len(batch) < 256:
                batch.append(self._outbox.get_nowait())
            pipe = self.redis.pipeline(transaction=False)
            for op, args in batch:
                getattr(pipe, op)(*args)
            try:
                await pipe.execute()
            except Exception:
                log.exception("writing %d coordinator updates to Redis failed", len(batch))

    # --- ownership of runs and jobs ----------------------------------------------------------------------------
    # `kind` is "runs" (generations, `Coordinator`) or "jobs" (paid inference jobs, `InferenceJobRunner`): a hash
    # `{prefix}:{kind}` of id -> owning process. A dead owner's items are taken by compare-and-set.
    def _owners(self, kind: str) -> str:
        return f"{self.config.prefix}:{kind}"

    async def own(self, kind: str, item_id: str) -> None:
        await self.redis.hset(self._owners(kind), item_id, self.id)

    async def adopt(self, kind: str, item_id: str) -> bool:
        """Own an item nobody owns (e.g. left running before Redis lost its keys); False if someone does."""
        return bool(await self.redis.hsetnx(self._owners(kind), item_id, self.id))

    async def is_owned(self, kind: str, item_id: str) -> bool:
        return bool(await self.redis.hexists(self._owners(kind), item_id))

    def release(self, kind: str, item_id: str) -> None:
        self._outbox.put_nowait(("hdel", (self._owners(kind), item_id)))

    async def still_mine(self, kind: str, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        owners = await self.redis.hmget(self._owners(kind), ids)
        return {r for r, o in zip(ids, owners, strict=True) if o is not None and o.decode() == self.id}

    async def take_orphans(self, kind: str) -> list[str]:
        """Items whose owner died, each moved to this process by compare-and-set (one taker per item)."""
        key = self._owners(kind)
        owned = {k.decode(): v.decode() for k, v in (await self.redis.hgetall(key)).items()}
        alive = await self.alive(set(owned.values()) - {self.id}) | {self.id}
        taken = []
        for item_id, owner in owned.items():
            if owner not in alive and await self.redis.eval(_TAKE, 1, key, item_id, owner, self.id):
                log.warning("%s %s: its market process %s is gone; taking it over", kind, item_id, owner)
                taken.append(item_id)
        return taken

    # --- a run's events --------------------------------------------------------------------------------------
    def record_event(self, run_id: str, event: dict[str, Any]) -> None:
        self._outbox.put_nowait(("xadd", (self.run_key(run_id), {"e": json.dumps(event, separators=(",", ":"))})))

    def release_run(self, run_id: str) -> None:
        self.release("runs", run_id)
        self._outbox.put_nowait(("expire", (self.run_key(run_id), EVENTS_KEPT_S)))

    async def events(self, run_id: str) -> list[dict[str, Any]]:
        return [json.loads(fields[b"e"]) for _id, fields in await self.redis.xrange(self.run_key(run_id))]

    async def has_run(self, run_id: str) -> bool:
        return bool(await self.redis.exists(self.run_key(run_id)))

    async def follow(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """A run's events from the first, then live ones as any process appends them, until done or error."""
        last = "0-0"
        key = self.run_key(run_id)
        while True:
            got = await self.redis.xread({key: last}, block=1000, count=512)
            for _key, entries in got or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    event = json.loads(fields[b"e"])
                    yield event
                    if event["event"] in ("done", "error"):
                        return


async def _never(_raw: bytes) -> None:
    raise WorkerGone("?", "a remote link is reached through its owner")
