"""Two coordinators' `Peers` on one real Redis (private server), in one event loop: a link held by one is seen by
the other, a call relayed through Redis comes back byte for byte, a closed socket is withdrawn, and when a process
stops beating its links go and its runs are taken over exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
import torch

from globai.protocol.tensors import decode_message, encode_message
from market.coordinator.links import LinkRegistry, WorkerGone, WorkerLink
from market.coordinator.peers import PeerConfig, Peers
from market.scheduler.reputation import Reputation


async def _until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.01)


def _link(registry: LinkRegistry) -> WorkerLink:
    async def worker(raw: bytes) -> None:  # answers each request with its tensors and the header's "x"
        msg = decode_message(raw, max_bytes=1 << 20)
        reply = encode_message({"op": "result", "rid": msg.header["rid"], "echo": msg.header["x"]}, msg.tensors)
        asyncio.get_running_loop().call_soon(lambda: link.deliver(decode_message(reply, max_bytes=1 << 20), reply))

    link = WorkerLink(
        link_id=str(uuid.uuid4()),
        address="0x" + "ab" * 20,
        worker_id="w1",
        operator_id="op",
        model="m",
        digest="d",
        layer_start=0,
        layer_end=2,
        max_batch=1,
        max_tokens=8,
        throughput_tokens_s=100.0,
        latency_ms=1.0,
        reputation=Reputation(2.0, 1.0, 1.0),
        send=worker,
    )
    registry.add(link)
    return link


async def _scenario(redis_url: str) -> None:
    config = PeerConfig(redis_url, f"test:{uuid.uuid4().hex}", proc_ttl_s=0.6, beat_s=0.1, call_timeout_s=5)
    here, there = LinkRegistry(), LinkRegistry()
    a, b = Peers(config, here), Peers(config, there)
    await a.start()
    await b.start()
    try:
        link = _link(here)
        await _until(lambda: there.get(link.link_id) is not None)
        remote = there.get(link.link_id)
        assert remote is not None and remote.owner == a.id and not remote.local
        assert remote.reputation == link.reputation and (remote.layer_start, remote.layer_end) == (0, 2)

        rid = remote.next_rid()
        x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        reply = await remote.call(rid, encode_message({"op": "forward", "rid": rid, "x": 7}, [x]), 5.0)
        assert reply.header["echo"] == 7 and reply.header["rid"] == rid and torch.equal(reply.tensors[0], x)

        here.remove(link.link_id, "socket closed")  # withdrawn: the other process drops it
        await _until(lambda: there.get(link.link_id) is None)
        with pytest.raises(WorkerGone):
            await remote.call(rid + 1, encode_message({"op": "forward", "rid": rid + 1, "x": 8}, [x]), 5.0)

        second = _link(here)
        await _until(lambda: there.get(second.link_id) is not None)
        await a.own("runs", "run-1")
        for task in a._tasks:  # a dies: no more heartbeats, no goodbye
            task.cancel()
        assert await b.take_orphans("runs") == []  # still within its TTL
        await asyncio.sleep(0.8)
        await b.sync_links(full=False)
        assert there.get(second.link_id) is None
        assert await b.take_orphans("runs") == ["run-1"]
        assert await b.take_orphans("runs") == []  # taken once
        assert await b.still_mine("runs", ["run-1"]) == {"run-1"}
    finally:
        await b.stop()
        await a.redis.aclose()


def test_links_relay_and_takeover_through_redis(redis_url: str) -> None:
    asyncio.run(_scenario(redis_url))
