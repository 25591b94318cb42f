"""Where a pipeline hop's time goes on loopback: the transport stacks the market and a worker use, piece by piece.

    python bench/hop.py [--calls 2000] [--rounds 2]

A decode-sized request (a [1, 1, 576] float32 hidden state + positions, SmolLM2's width) goes from a "market" to a
"worker" process and a same-sized answer comes back, `--calls` times in a row; the figure is the round trip p50
minus the worker's own handling time (what the coordinator's hop overhead measures). Variants, each a pair of
processes, alternating over `--rounds`:
- `tcp`: asyncio streams both ends, length-prefixed frames (the floor of two Python processes on loopback);
- `websockets`: the `websockets` library at both ends (no uvicorn, no Starlette);
- `market+daemon`: the market's side as it runs (uvicorn + Starlette WebSocket route: `receive()`, a send lock,
  `decode_message`, a future per request) against the worker daemon's own loop (`WorkerDaemon._pump`, the
  `websockets` client) answering through the real codec (`decode_message` / `encode_message`);
- the same pair with the daemon's loop as it was before this work (`market+daemon-before`: a task and an
  `asyncio.wait` per message), and with the worker on uvloop (`market+daemon/uvloop`, what `globai worker run`
  uses now).
`--compute-ms 10`: the worker sleeps 10 ms per call (inside its reported time, so not in the overhead): both
processes sit idle between messages as they do in a real pipeline, where a hop waits while other stages compute;
the overhead then includes waking idle processes (and, on a VM, idle virtual CPUs).
In-process costs (encode, decode) are timed separately with `timeit`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import struct
import subprocess
import sys
import time
import timeit
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

HIDDEN = 576
COMPUTE_S = float(os.environ.get("HOP_COMPUTE_MS", "0")) / 1000
VARIANTS = ("tcp", "websockets", "market+daemon-before", "market+daemon", "market+daemon/uvloop")


def request(rid: int) -> bytes:
    import torch

    from globai.protocol.tensors import encode_message

    header = {"op": "forward", "rid": rid, "session": "s", "step": 1, "first_position": 42, "last_token_only": False}
    return encode_message(header, [torch.zeros(1, 1, HIDDEN), torch.tensor([[42]])])


def answer(raw: bytes) -> bytes:
    """The worker's side of one call: decode (sha256 checks), "compute" (`$HOP_COMPUTE_MS` of sleep, default 0),
    encode (sha256). As in `StageServer`, `elapsed_ms` (what the coordinator subtracts) starts after the decode and
    ends before the encode."""
    from globai.protocol.tensors import decode_message, encode_message

    message = decode_message(raw, max_bytes=1 << 24)
    started = time.perf_counter()
    if COMPUTE_S:
        time.sleep(COMPUTE_S)  # both processes idle meanwhile, as in a pipeline while another stage computes
    out = message.tensors[0] + 0
    header = {"op": "result", "rid": message.header.get("rid"), "elapsed_ms": (time.perf_counter() - started) * 1e3}
    return encode_message(header, [out])


def elapsed(reply: bytes) -> float:
    from globai.protocol.tensors import decode_message

    return float(decode_message(reply, max_bytes=1 << 24).header["elapsed_ms"])


# --- the "market" side of each variant: drive `calls` round trips, print the overheads as JSON -------------------
async def market_tcp(port: int, calls: int, ready: Any) -> list[float]:
    done: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        out = []
        for rid in range(calls):
            raw = request(rid)
            sent = time.perf_counter()
            writer.write(struct.pack("<I", len(raw)) + raw)
            (n,) = struct.unpack("<I", await reader.readexactly(4))
            reply = await reader.readexactly(n)
            out.append((time.perf_counter() - sent) * 1e3 - elapsed(reply))
        writer.close()
        done.set_result(out)

    server = await asyncio.start_server(conn, "127.0.0.1", port)
    ready()
    result = await done
    server.close()
    return result


async def market_websockets(port: int, calls: int, ready: Any) -> list[float]:
    from websockets.asyncio.server import serve

    done: asyncio.Future[list[float]] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        out = []
        for rid in range(calls):
            raw = request(rid)
            sent = time.perf_counter()
            await ws.send(raw)
            reply = await ws.recv(decode=False)
            out.append((time.perf_counter() - sent) * 1e3 - elapsed(reply))
        done.set_result(out)

    async with serve(handler, "127.0.0.1", port, compression=None):
        ready()
        return await done


def market_uvicorn(port: int, calls: int, ready: Any) -> list[float]:
    """uvicorn + Starlette as `globai market serve` runs them, the route shaped like `worker_ws.worker_socket`."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    from globai.protocol.tensors import decode_message

    result: list[float] = []

    async def route(ws: WebSocket) -> None:
        await ws.accept()
        lock = asyncio.Lock()
        pending: dict[int, asyncio.Future[Any]] = {}

        async def send(raw: bytes) -> None:
            async with lock:
                await ws.send_bytes(raw)

        async def drive() -> None:
            for rid in range(calls):
                raw = request(rid)
                sent = time.perf_counter()
                future = asyncio.get_running_loop().create_future()
                pending[rid] = future
                await send(raw)
                reply = await asyncio.wait_for(future, 60)
                pending.pop(rid)
                result.append((time.perf_counter() - sent) * 1e3 - float(reply.header["elapsed_ms"]))
            server.should_exit = True

        driver = asyncio.create_task(drive())
        while not driver.done():
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            decoded = decode_message(message["bytes"], max_bytes=1 << 24)
            pending[decoded.header["rid"]].set_result(decoded)
        await driver

    app = Starlette(routes=[WebSocketRoute("/ws", route)])  # FastAPI's websocket routes are Starlette's
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    ready()
    server.run()
    return result


# --- the "worker" side ------------------------------------------------------------------------------------------
async def worker_tcp(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while True:
            (n,) = struct.unpack("<I", await reader.readexactly(4))
            reply = answer(await reader.readexactly(n))
            writer.write(struct.pack("<I", len(reply)) + reply)
    except asyncio.IncompleteReadError:
        return


async def worker_websockets(port: int, path: str = "") -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(f"ws://127.0.0.1:{port}{path}", compression=None) as ws:
        try:
            while True:
                await ws.send(answer(await ws.recv(decode=False)))
        except ConnectionClosed:
            return


async def pump_before(server: Any, ws: Any, stop: asyncio.Event, stopper: asyncio.Task[Any]) -> None:
    """`WorkerDaemon._pump` as it was before the hop work (a task and an `asyncio.wait` per message), kept here
    to measure it side by side with the current one."""
    inbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def read() -> None:
        while True:
            raw = await ws.recv(decode=False)
            await inbox.put(raw)

    reader = asyncio.create_task(read())
    try:
        while not stop.is_set():
            receive = asyncio.ensure_future(inbox.get())
            done, _ = await asyncio.wait({receive, stopper, reader}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                if reader in done:
                    reader.result()
                return
            raws = [receive.result()]
            await asyncio.sleep(0)
            while not inbox.empty():
                raws.append(inbox.get_nowait())
            for reply in server.handle_many(raws):
                await ws.send(reply)
    finally:
        reader.cancel()


async def worker_daemon(port: int, before: bool = False) -> None:
    """The daemon's own receive/answer loop (`WorkerDaemon._pump`) with the codec-only handler."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from worker.runtime.daemon import WorkerDaemon

    class Server:
        def handle_many(self, raws: list[bytes]) -> list[bytes]:
            return [answer(r) for r in raws]

    daemon = WorkerDaemon.__new__(WorkerDaemon)
    daemon.server = Server()  # type: ignore[assignment]
    stop = asyncio.Event()
    async with connect(f"ws://127.0.0.1:{port}/ws", compression=None) as ws:
        stopper = asyncio.create_task(stop.wait())
        try:
            if before:
                await pump_before(daemon.server, ws, stop, stopper)
            else:
                await daemon._pump(ws, stop, stopper)
        except ConnectionClosed:
            return


def child(variant: str, role: str, port: int, calls: int) -> None:
    if role == "worker":
        if variant in ("tcp", "websockets"):
            coro = {"tcp": worker_tcp, "websockets": worker_websockets}[variant](port)
        else:
            coro = worker_daemon(port, before="before" in variant)
        if variant.endswith("/uvloop"):
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
        return

    def ready() -> None:
        print("ready", flush=True)

    if variant == "tcp":
        out = asyncio.run(market_tcp(port, calls, ready))
    elif variant == "websockets":
        out = asyncio.run(market_websockets(port, calls, ready))
    else:
        out = market_uvicorn(port, calls, ready)
    print(json.dumps(out), flush=True)


def run_pair(variant: str, calls: int) -> list[float]:
    from globai.dev.services import free_port

    port = free_port()
    me = [sys.executable, __file__, "--child", variant]
    market = subprocess.Popen([*me, "market", str(port), str(calls)], stdout=subprocess.PIPE, text=True)
    assert market.stdout is not None
    assert market.stdout.readline().strip() == "ready"
    time.sleep(0.5 if "market" in variant else 0.1)  # uvicorn binds after "ready"
    worker = subprocess.Popen([*me, "worker", str(port), str(calls)])
    lines = market.stdout.read().strip().splitlines()
    market.wait(timeout=60)
    worker.wait(timeout=60)
    return list(json.loads(lines[-1]))[100:]  # the first 100 calls warm up


def in_process() -> dict[str, float]:
    """Per call, µs: the codec and checks on both sides (no network)."""
    import torch

    from globai.protocol.tensors import decode_message, encode_message

    raw = request(1)
    out = torch.zeros(1, 1, HIDDEN)
    reply = encode_message({"op": "result", "rid": 1, "elapsed_ms": 0.1}, [out])
    n = 2000
    return {
        "encode request": timeit.timeit(lambda: request(1), number=n) / n * 1e6,
        "decode request": timeit.timeit(lambda: decode_message(raw, max_bytes=1 << 24), number=n) / n * 1e6,
        "encode answer": timeit.timeit(
            lambda: encode_message({"op": "result", "rid": 1, "elapsed_ms": 0.1}, [out]), number=n
        )
        / n
        * 1e6,
        "decode answer": timeit.timeit(lambda: decode_message(reply, max_bytes=1 << 24), number=n) / n * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--compute-ms", type=float, default=0.0, help="the worker sleeps this long per call")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["HOP_COMPUTE_MS"] = str(args.compute_ms)  # for the child processes
    if args.child:
        variant, role, port, calls = args.child
        child(variant, role, int(port), int(calls))
        return 0
    load_start = os.getloadavg()[0]
    print(f"load average at start {load_start:.2f}", flush=True)
    costs = in_process()
    print("in-process, µs per call: " + ", ".join(f"{k} {v:.0f}" for k, v in costs.items()), flush=True)
    variants = args.variants.split(",")
    results: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants if round_ % 2 == 0 else variants[::-1]:
            overheads = run_pair(variant, args.calls)
            results[variant].append(statistics.median(overheads))
            q = statistics.quantiles(overheads, n=10)
            print(
                f"{variant}: overhead p50 {statistics.median(overheads):.3f} ms, p10 {q[0]:.3f}, p90 {q[-1]:.3f}",
                flush=True,
            )
    print(f"load average at end {os.getloadavg()[0]:.2f}", flush=True)
    for variant, p50s in results.items():
        print(f"| {variant} | " + ", ".join(f"{p:.3f}" for p in p50s) + " ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
