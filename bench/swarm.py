"""Swarm benchmark: thousands of simulated workers hold real WebSockets to 1-N market processes.

    python bench/swarm.py --workers 1000,5000,10000 --procs 1,2

Each simulated worker is one `websockets` connection from this process that signs in with a bearer token (minted
with the server's secret, as bench/claims.py does), sends the worker `hello` for a tiny model's layers and waits for
`welcome`, then stays idle. Per step it reports how fast they connect, the market's resident memory per connected
worker (all server processes, RSS after minus before), the server CPU while they sit idle (the standing loop and,
with several processes, the shared-link bookkeeping) and, with several processes, whether every process sees
every worker. The simulated workers do not compute (no forward calls are made): this measures the connection and
coordination cost, not generation. Writes the "## Swarm" section of BENCHMARKS.md.

With --procs > 1 the market runs `--workers N` uvicorn processes sharing the swarm through a private Redis
(GLOBAI_SHARED_COORDINATOR). Setup (DB, tokens, the tiny model) is not measured.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.claims import _free_port, _tree_cpu_seconds, seed_workers, start_server  # noqa: E402
from globai.dev.services import redis_service  # noqa: E402
from globai.models.tiny import build_tiny_llama  # noqa: E402
from globai.protocol.pipeline import WS_PATH  # noqa: E402
from globai.protocol.tensors import decode_message, encode_message  # noqa: E402
from market.db.engine import make_engine, make_session_factory  # noqa: E402
from market.db.migrate import upgrade  # noqa: E402

MODEL = "tiny-llama-h64-l4-s0"


def _tree_rss_kb(root: int) -> int:
    """Resident memory (KiB) of a process and its children (uvicorn's worker processes)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    pids, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in pids:
                pids.add(pid)
                frontier.append(pid)
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


async def hold(
    url: str, tokens: list[str], hello: bytes, *, concurrency: int, idle_s: float, server: int, base: str
) -> Any:
    sockets: list[Any] = []
    errors = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(token: str) -> None:
        nonlocal errors
        async with gate:
            try:
                ws = await connect(
                    url, additional_headers={"Authorization": f"Bearer {token}"}, ping_interval=None, open_timeout=60
                )
                await ws.send(hello)
                reply = decode_message(await ws.recv(decode=False), max_bytes=0)
                if reply.header.get("op") != "welcome":
                    raise RuntimeError(str(reply.header))
                sockets.append(ws)
            except Exception:
                errors += 1

    rss0 = _tree_rss_kb(server)
    t0 = time.perf_counter()
    await asyncio.gather(*(one(t) for t in tokens))
    connect_s = time.perf_counter() - t0
    await asyncio.sleep(2.0)  # announcements settle
    cpu0 = _tree_cpu_seconds(server)
    await asyncio.sleep(idle_s)
    idle_cpu = (_tree_cpu_seconds(server) - cpu0) / idle_s
    rss1 = _tree_rss_kb(server)
    seen = await asyncio.to_thread(coverage_counts, base, tokens[0], 6)
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return len(sockets), errors, connect_s, rss0, rss1, idle_cpu, seen


def coverage_counts(base: str, token: str, tries: int) -> list[int]:
    """Workers each answering process reports for the model (several requests land on different processes)."""
    seen = []
    for _ in range(tries):
        with httpx.Client(base_url=base, timeout=60) as http:  # a new connection each: maybe another process
            r = http.get(f"/v1/models/{MODEL}/coverage", headers={"Authorization": f"Bearer {token}"})
            seen.append(len(r.json()["workers"]) if r.status_code == 200 else -1)
    return seen


def run_step(var: Path, workers: int, procs: int, redis_url: str | None, idle_s: float) -> dict[str, Any]:
    db = var / f"swarm-{workers}-{procs}.db"
    url = f"sqlite:///{db}"
    engine = make_engine(url)
    upgrade(engine)
    with make_session_factory(engine)() as session:
        tokens = seed_workers(session, workers, datetime.now(UTC))
        session.commit()
    engine.dispose()
    port = _free_port()
    # The simulated workers compute nothing: no join challenge (it would keep them unrouted, uncounted).
    env = {
        "GLOBAI_MODELS_DIR": str(var / "models"),
        "GLOBAI_BLOB_DIR": str(var / "blobs"),
        "GLOBAI_JOIN_CHALLENGE": "false",
    }
    if procs > 1:
        assert redis_url is not None
        env |= {
            "GLOBAI_SHARED_COORDINATOR": "true",
            "GLOBAI_REDIS_URL": redis_url,
            "GLOBAI_COORDINATOR_PREFIX": f"swarm:{workers}:{procs}:{time.time()}",
        }
    server = start_server(url, port, procs, False, env)
    try:
        from globai.models.manifest import load_manifest

        manifest = load_manifest(var / "models" / MODEL)
        hello = encode_message(
            {
                "op": "hello",
                "model": MODEL,
                "digest": manifest.digest(),
                "layer_start": 0,
                "layer_end": 2,
                "max_batch": 8,
                "max_tokens": 256,
            }
        )
        ws_url = f"ws://127.0.0.1:{port}{WS_PATH}"
        rss_idle = _tree_rss_kb(server.pid)
        connected, errors, connect_s, rss0, rss1, idle_cpu, seen = asyncio.run(
            hold(
                ws_url,
                tokens,
                hello,
                concurrency=200,
                idle_s=idle_s,
                server=server.pid,
                base=f"http://127.0.0.1:{port}",
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        db.unlink(missing_ok=True)
    return {
        "workers": workers,
        "procs": procs,
        "connected": connected,
        "errors": errors,
        "connect_s": connect_s,
        "rss_server_mb": rss_idle / 1024,
        "per_worker_kb": (rss1 - rss0) / max(connected, 1),
        "idle_cpu": idle_cpu,
        "seen": seen,
    }


def write_section(text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    old = path.read_text()
    pattern = re.compile(r"^## Swarm\n.*?(?=^## |\Z)", re.S | re.M)
    section = text.rstrip() + "\n\n"
    new = pattern.sub(lambda _m: section, old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1000,5000,10000", help="simulated workers per step, comma-separated")
    parser.add_argument("--procs", default="1", help="market processes per step, comma-separated")
    parser.add_argument("--idle-s", type=float, default=5.0, help="seconds the workers sit idle (server CPU)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    started, load0 = datetime.now(UTC), os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="globai-swarm-") as tmp:
        var = Path(tmp)
        build_tiny_llama(var / "models" / MODEL, hidden=64, layers=4, seed=0)
        procs_list = [int(p) for p in args.procs.split(",")]
        redis = redis_service(None) if max(procs_list) > 1 else None
        try:
            for procs in procs_list:
                for n in [int(w) for w in args.workers.split(",")]:
                    row = run_step(var, n, procs, redis.url if redis else None, args.idle_s)
                    print(row, file=sys.stderr)
                    rows.append(row)
        finally:
            if redis is not None:
                redis.stop()
    load1 = os.getloadavg()
    lines = [
        "## Swarm",
        "",
        f"`python bench/swarm.py --workers {args.workers} --procs {args.procs}` ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"- machine: {os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, SQLite; load "
        f"average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end (shared with other work; the simulated "
        "workers run in the benchmark's own process on the same cores)",
        "- each simulated worker: one real WebSocket, bearer token, `hello` -> `welcome`, then idle (no compute, no "
        "forward calls: connection and coordination cost only)",
        "",
        "| market processes | workers | connected | errors | connect s | connects/s | market RSS before (MB) | "
        "RSS per connected worker (KB) | idle server CPU (cores) | workers each answering process lists |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['procs']} | {r['workers']} | {r['connected']} | {r['errors']} | {r['connect_s']:.1f} | "
            f"{r['connected'] / max(r['connect_s'], 1e-9):,.0f} | {r['rss_server_mb']:.0f} | "
            f"**{r['per_worker_kb']:.1f}** | {r['idle_cpu']:.2f} | {sorted(set(r['seen']))} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
