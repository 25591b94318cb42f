"""Claims benchmark: N simulated workers (asyncio + httpx) claim and submit small tasks against a uvicorn market
on Postgres. Reports claims/s, claim latency p50/p99 and double claims (must be 0), and writes the "## Claims"
section of BENCHMARKS.md.

    python bench/claims.py --workers 100 --tasks 6000 --server-procs 2

Setup is not measured: a throwaway Postgres database is created, migrated and seeded directly (N eligible workers,
one funded training job with the tasks); bearer tokens are minted with the server's secret instead of N sign-ins.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from globai.chain.ids import chain_job_id  # noqa: E402
from market.db import Job, Lease, Task, Worker  # noqa: E402
from market.db.engine import make_engine, make_session_factory  # noqa: E402
from market.db.migrate import upgrade  # noqa: E402
from market.services.auth import Principal, encode_token  # noqa: E402
from market.services.jobs import TaskSpec, enqueue_tasks  # noqa: E402

SECRET = "bench-secret-" + "0123456789abcdef" * 3
CLAIM = {
    "kinds": ["train"],
    "models": ["bench-model"],
    "layer_ranges": [{"start": 0, "end": 8}],
    "memory_bytes": 1 << 34,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_database(base_url: str) -> str:
    name = f"globai_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return base_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    base, name = url.rsplit("/", 1)
    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://") + "/postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(url: str, workers: int, tasks: int) -> list[str]:
    """Migrate, create eligible workers and a funded job with `tasks` tasks; return one token per worker."""
    engine = make_engine(url)
    upgrade(engine)
    now = datetime.now(UTC)
    tokens: list[str] = []
    with make_session_factory(engine)() as session:
        for i in range(workers):
            address = "0x" + f"{i + 1:040x}"
            session.add(
                Worker(
                    address=address,
                    operator_id=f"op-{i}",
                    device="cpu",
                    memory_bytes=1 << 34,
                    throughput_tokens_s=1000,
                    bandwidth_bytes_s=1e8,
                    latency_ms=5,
                    reference_layer="ref",
                    models=["bench-model"],
                    stake=10**20,
                    eligible=True,
                    stake_block=1,
                )
            )
            tokens.append(
                encode_token(
                    Principal(address, frozenset({"worker"}), int(now.timestamp()) + 3600), secret=SECRET.encode()
                )
            )
        job_uuid = str(uuid.uuid4())
        job = Job(
            id=job_uuid,
            chain_job_id=chain_job_id(job_uuid),
            requester="0x" + "ff" * 20,
            kind="training",
            model="bench-model",
            spec={},
            spec_hash="0x" + "00" * 32,
            budget=tasks,
            price_per_unit=1,
            max_units=tasks,
            deadline=now + timedelta(hours=2),
            status="funded",
        )
        session.add(job)
        session.flush()
        spec = TaskSpec(kind="train", model="bench-model", layer_start=0, layer_end=4, memory_bytes=0, units=1)
        enqueue_tasks(session, job=job, tasks=[spec] * tasks, now=now)
        session.commit()
    engine.dispose()
    return tokens


def start_server(url: str, port: int, procs: int, async_commit: bool) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GLOBAI_PROFILE": "test",
        "GLOBAI_AUTH_SECRET": SECRET,
        "GLOBAI_DATABASE_URL": url,
        "GLOBAI_DB_ASYNC_COMMIT": "true" if async_commit else "false",
        # Postgres' max_connections is shared (100 by default): 2 processes x (8 + 8 overflow) stays well inside.
        "GLOBAI_DB_POOL_SIZE": "8",
        "GLOBAI_RATE_LIMIT_PER_S": "100000",
        "GLOBAI_RATE_LIMIT_BURST": "100000",
        "GLOBAI_LEASE_TTL_S": "300",
    }
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "market.api.asgi:app_factory",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(procs),
        "--log-level",
        "warning",
        "--no-access-log",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--timeout-keep-alive",
        "60",
        "--backlog",
        "4096",
    ]
    log = open(os.environ.get("GLOBAI_BENCH_SERVER_LOG", os.devnull), "ab")  # noqa: SIM115 (lives with the server)
    server = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 300  # the app imports torch (inference routes): slow on a loaded machine
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("market did not start")


async def run_workers(base: str, tokens: list[str]) -> tuple[list[float], list[tuple[str, int]], float, int]:
    """Each worker loops claim -> submit until the queue is empty. Returns (claim latencies of successful claims,
    (task id, worker) per successful claim, elapsed seconds, errors)."""
    latencies: list[float] = []
    claims: list[tuple[str, int]] = []
    errors = 0
    error_kinds: Counter[str] = Counter()
    # One client (one keep-alive connection) per simulated worker, as real workers would have: a single shared
    # pool of 100 connections costs the client O(pool) work per request and made the client the bottleneck.
    clients = [httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=1)) for _ in tokens]
    try:

        async def worker(i: int, token: str) -> None:
            nonlocal errors
            http = clients[i]
            headers = {"Authorization": f"Bearer {token}"}
            while True:
                t0 = time.perf_counter()
                try:
                    r = await http.post("/v1/tasks/claim", json=CLAIM, headers=headers)
                except httpx.TransportError as exc:  # a real worker retries; counted and reported
                    errors += 1
                    error_kinds[type(exc).__name__] += 1
                    continue
                dt = time.perf_counter() - t0
                if r.status_code == 204:
                    return
                if r.status_code != 200:
                    errors += 1
                    continue
                latencies.append(dt)
                lease = r.json()
                claims.append((lease["task"]["id"], i))
                for _attempt in range(3):  # submit is idempotent, so retrying after a transport error is safe
                    try:
                        s = await http.post(
                            f"/v1/tasks/{lease['task']['id']}/result",
                            headers=headers,
                            json={"lease_id": lease["lease_id"], "result_hash": "0x" + "ab" * 32},
                        )
                    except httpx.TransportError as exc:
                        errors += 1
                        error_kinds[type(exc).__name__] += 1
                        continue
                    if s.status_code != 200:
                        errors += 1
                        error_kinds[f"submit {s.status_code}"] += 1
                    break

        start = time.perf_counter()
        await asyncio.gather(*(worker(i, t) for i, t in enumerate(tokens)))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    if error_kinds:
        print(f"errors: {dict(error_kinds)}", file=sys.stderr)
    return latencies, claims, elapsed, errors


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and its live children (uvicorn's worker processes)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    pids, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in pids:
                pids.add(pid)
                frontier.append(pid)
    return sum(stats[p][1] for p in pids if p in stats)


def _event_loop_runner():  # type: ignore[no-untyped-def]
    """uvloop for the client too when installed (the client shares the cores with the server)."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


def verify(url: str, tasks: int) -> dict[str, int]:
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        leases = session.scalar(select(func.count()).select_from(Lease)) or 0
        per_task = session.execute(select(Lease.task_id, func.count()).group_by(Lease.task_id)).all()
        submitted = session.scalar(select(func.count()).where(Task.status == "submitted")) or 0
    engine.dispose()
    return {
        "leases": int(leases),
        "tasks_with_2plus_leases": sum(1 for _, n in per_task if n > 1),
        "submitted": int(submitted),
        "tasks": tasks,
    }


NOTES = """\
Notes: the claim is one SQL statement on Postgres (CTE: `FOR UPDATE SKIP LOCKED` pick on the claim-order index,
conditional UPDATE, lease INSERT), built once per query shape; py-spy on the server shows it at roughly a tenth of
the server's CPU, the rest being FastAPI/Starlette request handling, dependency resolution and the threadpool hop
of each sync endpoint. The benchmark client, the uvicorn server and Postgres share the same 2 cores, so the load
average above includes the benchmark itself; the CPU-per-cycle figures are the part that does not depend on what
else runs. At ~6 ms of server CPU per claim+submit, 2 cores cannot reach the goal with this request path: it needs
well under 2 ms per request. Ways to the goal not taken yet: async endpoints
with an async driver (no thread hop), fewer middleware layers on the worker routes, batching several claims per
request, and more server processes on a larger machine."""


def write_section(text: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    """Replace only the "## Claims" section (up to the next "## " heading) of BENCHMARKS.md."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Claims\n.*?(?=^## |\Z)", re.S | re.M)
    section = text.rstrip() + "\n\n"
    new = pattern.sub(lambda _m: section, old) if pattern.search(old) else old.rstrip() + "\n\n" + section
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--server-procs", type=int, default=1)  # on 2 shared cores 1 process did better than 2
    parser.add_argument(
        "--pg-url", default=os.environ.get("GLOBAI_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
    )
    parser.add_argument("--async-commit", action="store_true", help="GLOBAI_DB_ASYNC_COMMIT=true on the server")
    parser.add_argument("--no-write", action="store_true", help="don't update BENCHMARKS.md")
    args = parser.parse_args()

    url = create_database(args.pg_url)
    server = None
    try:
        tokens = seed(url, args.workers, args.tasks)
        port = _free_port()
        server = start_server(url, port, args.server_procs, args.async_commit)
        server_cpu0, client_cpu0 = _tree_cpu_seconds(server.pid), time.process_time()
        runner = _event_loop_runner()
        latencies, claims, elapsed, errors = runner(run_workers(f"http://127.0.0.1:{port}", tokens))
        server_cpu = _tree_cpu_seconds(server.pid) - server_cpu0
        client_cpu = time.process_time() - client_cpu0
        checks = verify(url, args.tasks)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        drop_database(url)

    per_task = Counter(task for task, _ in claims)
    double = sum(1 for n in per_task.values() if n > 1)
    q = statistics.quantiles(latencies, n=100)
    rate = len(claims) / elapsed
    load = os.getloadavg()
    lines = [
        "## Claims",
        "",
        f"`python bench/claims.py --workers {args.workers} --tasks {args.tasks} --server-procs {args.server_procs}`"
        f" ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"- machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, Postgres on localhost; load average at the end {load[0]:.1f} "
        "(the benchmark client, the server and Postgres all run on these cores)",
        f"- {args.workers} concurrent workers (asyncio + httpx, keep-alive), each looping claim -> submit; "
        f"uvicorn with {args.server_procs} processes (uvloop, httptools)",
        f"- **{rate:,.0f} claims/s** ({len(claims)} claims in {elapsed:.2f} s; every claim is followed by a "
        f"submit, so the server handled {2 * rate:,.0f} requests/s)",
        f"- claim latency: **p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms** "
        f"(max {max(latencies) * 1000:.1f} ms)",
        f"- double claims: **{double}** (client side); tasks with 2+ leases in the DB: "
        f"{checks['tasks_with_2plus_leases']}; submitted {checks['submitted']}/{checks['tasks']}; "
        f"request errors: {errors}",
        f"- CPU per claim+submit cycle: server (all uvicorn processes) {server_cpu / len(claims) * 1000:.2f} ms, "
        f"benchmark client {client_cpu / len(claims) * 1000:.2f} ms (Postgres runs outside this process namespace "
        f"and is not counted); during the run server + client got {(server_cpu + client_cpu) / elapsed:.2f} of the "
        f"{os.cpu_count()} cores, the rest went to Postgres and anything else running. "
        f"At this CPU cost {os.cpu_count()} "
        f"otherwise idle cores would sustain at most about "
        f"{(os.cpu_count() or 2) * len(claims) / (server_cpu + client_cpu):,.0f} claims/s "
        f"(an upper-bound estimate, not a measurement)",
        f"- goal (>= 500 claims/s with 100 workers, p99 < 100 ms): "
        f"{'met' if rate >= 500 and q[98] < 0.1 else 'NOT met'}",
    ]
    text = "\n".join(lines) + "\n\n" + NOTES
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
