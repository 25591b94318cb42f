"""The worker daemon: prepare (probe, sign in, place, download, register), then serve over a dialled-out WebSocket.

`prepare()` is synchronous and runs once; `serve(stop)` keeps one WebSocket to the market open, answering
requests through `StageServer`, and reconnects with exponential backoff (with jitter) when the socket drops or
the market restarts, signing in again when its token is refused. Sessions survive a reconnect on this side.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from eth_account.signers.local import LocalAccount
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from globai.client import MarketError, check, sign_in
from globai.errors import ConfigError, GlobaiError
from globai.protocol.pipeline import WS_PATH
from globai.protocol.tensors import decode_message
from worker import metrics
from worker.runtime.placement import choose_layer_range, parse_layers
from worker.runtime.probe import Hardware, probe
from worker.runtime.server import StageServer
from worker.runtime.shards import download_stage, fetch_manifest
from worker.stage import DEFAULT_MAX_CACHE_BYTES, DEFAULT_SESSION_TTL_S, Stage

log = logging.getLogger(__name__)
INLINE_BYTES = 64 * 1024  # requests up to this size run on the event loop thread


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The daemon's event loop: uvloop where it is installed (it comes with `uvicorn[standard]`, a dependency; the
    market's uvicorn runs on it too), which cuts the loop's share of each hop (docs/inference.md, Performance);
    `GLOBAI_WORKER_LOOP=asyncio` keeps the standard loop. None: asyncio's default."""
    if os.environ.get("GLOBAI_WORKER_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


class NotEligibleError(GlobaiError):
    def __init__(self, address: str, stake: str) -> None:
        super().__init__(
            f"worker {address} is not eligible for work (stake {stake} wei is below the vault minimum); "
            "stake GLB first, e.g. `globai worker stake --key ...`"
        )


class NotAllowedError(GlobaiError):
    def __init__(self, address: str, status: int, tries: int) -> None:
        super().__init__(
            f"the market refused worker {address} {tries} times in a row ({status}: stake below the minimum, "
            "slashed or banned); check `globai worker status`, stake with `globai worker stake`, then start again"
        )


@dataclass
class WorkerConfig:
    market_url: str
    account: LocalAccount
    model: str | None = None
    layers: str | None = None  # "a:b"; default: chosen from memory and coverage
    max_memory: int | None = None  # bytes this worker may use for weights + cache
    threads: int = 1
    device: str = "cpu"
    cache_dir: Path = Path("var/worker-cache")
    operator_id: str | None = None
    session_ttl_s: float = DEFAULT_SESSION_TTL_S
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES
    show_progress: bool = True
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 5.0
    http_timeout_s: float = 30.0
    rpc_url: str | None = None  # when set, the worker also reads its own stake from the chain
    max_auth_refusals: int = 5  # consecutive 401/403 (with backoff) before the daemon exits with the reason


@dataclass
class WorkerState:
    hardware: Hardware | None = None
    token: str | None = None
    model_dir: Path | None = None
    layer_range: tuple[int, int] | None = None
    connects: int = 0
    connected: bool = False
    registration: dict[str, Any] = field(default_factory=dict)


class WorkerDaemon:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.state = WorkerState()
        self.server: StageServer | None = None
        self.ws: ClientConnection | None = None  # the live connection (tests abort its transport)
        # One market URL, a load balancer's, or several market processes' ("a,b,c"): on a lost connection the
        # daemon moves on to the next one (any process of a shared market serves every worker).
        self.markets = [u.strip() for u in config.market_url.split(",") if u.strip()]
        self._market_at = 0
        self.http = httpx.Client(base_url=self.markets[0], timeout=config.http_timeout_s)

    # --- one-time preparation ------------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.config
        torch.set_num_threads(cfg.threads)
        self.state.hardware = hw = probe(threads=cfg.threads, device=cfg.device)
        log.info("probe: %s, %.0f tokens/s on %s", hw.device, hw.throughput_tokens_s, hw.reference_layer)
        self._reachable_market()
        self.sign_in()
        model = cfg.model or self._default_model()
        manifest = fetch_manifest(self.http, model)
        budget = cfg.max_memory or hw.memory_bytes
        if cfg.layers:
            try:
                start, end = parse_layers(cfg.layers, manifest.num_layers)
            except ValueError as exc:
                raise ConfigError(f"{exc} ({manifest.name} has {manifest.num_layers} layers)") from None
        else:
            coverage = check(self.http.get(f"/v1/models/{model}/coverage", headers=self._auth())).json()
            start, end = choose_layer_range(manifest, budget, coverage["layers"])
        profile = {
            "device": hw.device,
            "memory_bytes": budget,
            "throughput_tokens_s": hw.throughput_tokens_s,
            "bandwidth_bytes_s": 0.0,
            "latency_ms": self._ping_ms(),
            "reference_layer": hw.reference_layer,
            "operator_id": cfg.operator_id or cfg.account.address.lower(),
            "models": [manifest.name],
        }
        if cfg.rpc_url:
            from worker.runtime.staking import stake_of

            log.info("on-chain stake of %s: %s wei", cfg.account.address, stake_of(cfg.account.address, cfg.rpc_url))
        # Stake check before any download: the market reads the vault and says whether we may work.
        self._register(profile)
        started = time.perf_counter()
        model_dir, fetched = download_stage(
            self.http, manifest, start, end, cfg.cache_dir, show_progress=cfg.show_progress
        )
        elapsed = time.perf_counter() - started
        stage = Stage(
            model_dir,
            start,
            end,
            device=cfg.device,
            session_ttl_s=cfg.session_ttl_s,
            max_cache_bytes=cfg.max_cache_bytes,
            manifest=manifest,
        )
        self.server = StageServer(stage, cfg.account)
        self.state.model_dir, self.state.layer_range = model_dir, (start, end)
        if fetched and elapsed > 0:  # re-register with the bandwidth the download measured
            self._register({**profile, "bandwidth_bytes_s": fetched / elapsed})
        log.info("serving %s layers [%d, %d) from %s", manifest.name, start, end, model_dir)

    def _register(self, profile: dict[str, Any]) -> None:
        reg = check(self.http.post("/v1/workers", json=profile, headers=self._auth())).json()
        self.state.registration = reg
        if not reg.get("eligible"):
            raise NotEligibleError(self.config.account.address, str(reg.get("stake")))

    def sign_in(self) -> None:
        self.state.token = sign_in(self.http, self.config.account, ["worker"])
        self.http.headers["Authorization"] = f"Bearer {self.state.token}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.state.token}"}

    def _default_model(self) -> str:
        models = check(self.http.get("/v1/models", headers=self._auth())).json()["models"]
        if not models:
            raise MarketError(404, "the market serves no models")
        return str(models[0]["name"])

    def _ping_ms(self) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            self.http.get("/healthz")
            best = min(best, (time.perf_counter() - started) * 1000)
        return best

    # --- serving -------------------------------------------------------------------------------------------
    def _reachable_market(self) -> None:
        """Start with the first listed market process that answers (the others may be down right now)."""
        for _ in range(len(self.markets) - 1):
            try:
                self.http.get("/healthz", timeout=5)
                return
            except httpx.TransportError:
                self.next_market()

    def next_market(self) -> None:
        if len(self.markets) > 1:
            self._market_at = (self._market_at + 1) % len(self.markets)
            self.http.base_url = httpx.URL(self.markets[self._market_at])
            log.info("trying market %s next", self.markets[self._market_at])

    def ws_url(self) -> str:
        base = self.markets[self._market_at].rstrip("/")
        return base.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + WS_PATH

    async def serve(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set; reconnect with backoff on any drop."""
        assert self.server is not None, "prepare() first"
        delay = self.config.reconnect_min_s
        refusals = 0  # consecutive 401/403 answers: a lost stake or a ban ends the daemon, not a retry loop
        while not stop.is_set():
            try:
                await self._connection(stop)
                delay = self.config.reconnect_min_s
                refusals = 0
            except InvalidStatus as exc:
                if exc.response.status_code in (401, 403):
                    refusals += 1
                    if refusals > self.config.max_auth_refusals:
                        raise NotAllowedError(self.config.account.address, exc.response.status_code, refusals) from None
                    log.info("token refused (%s): signing in again", exc.response.status_code)
                    await asyncio.to_thread(self._refresh_token)
                else:
                    log.warning("market refused the WebSocket: %s", exc)
            except (OSError, ConnectionClosed, TimeoutError, httpx.HTTPError, MarketError) as exc:
                log.warning("market connection lost: %s", exc or type(exc).__name__)
            self.state.connected = False
            metrics.CONNECTED.set(0)
            if stop.is_set():
                break
            self.next_market()
            sleep = delay * (0.5 + random.random())
            try:
                await asyncio.wait_for(stop.wait(), timeout=sleep)
            except TimeoutError:
                pass
            delay = min(delay * 2, self.config.reconnect_max_s)

    def _refresh_token(self) -> None:
        try:
            self.sign_in()
        except (httpx.HTTPError, MarketError) as exc:
            log.warning("sign-in failed: %s", exc)

    async def _connection(self, stop: asyncio.Event) -> None:
        assert self.server is not None
        server = self.server
        async with connect(
            self.ws_url(),
            additional_headers=self._auth(),
            max_size=server.limits.max_message_bytes,
            open_timeout=10,
            ping_interval=10,
            ping_timeout=30,
            compression=None,
            close_timeout=1,
        ) as ws:
            await ws.send(server.hello())
            welcome = decode_message(await ws.recv(decode=False), max_bytes=0)
            if welcome.header.get("op") != "welcome":
                raise MarketError(400, str(welcome.header.get("message", "market refused hello")))
            self.state.connects += 1
            self.state.connected = True
            metrics.CONNECTED.set(1)
            self.ws = ws
            log.info("connected to %s as %s", self.ws_url(), welcome.header.get("worker_id"))
            stopper = asyncio.create_task(stop.wait())
            try:
                await self._pump(ws, stop, stopper)
            finally:
                stopper.cancel()

    async def _pump(self, ws: ClientConnection, stop: asyncio.Event, stopper: asyncio.Task[Any]) -> None:
        """Answer what arrives; messages that queued up while a forward ran are answered together (continuous
        batching: concurrent sessions' decode steps become one forward, `StageServer.handle_many`).

        One reader task feeds a queue for the whole connection; the loop only awaits the queue (no task or
        `asyncio.wait` per message: that machinery was a measurable part of each hop, docs/inference.md). A stop
        request or the reader's end puts `None` in the queue."""
        assert self.server is not None
        inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read(ws, inbox))
        wake = lambda _: inbox.put_nowait(None)  # noqa: E731
        stopper.add_done_callback(wake)
        reader.add_done_callback(wake)
        try:
            while True:
                raw = await inbox.get()
                if raw is None or stop.is_set():
                    if reader.done() and not reader.cancelled():
                        reader.result()  # the socket closed or failed: raise it for the reconnect loop
                    await ws.close(1001, "worker shutting down")
                    return
                raws = [raw]
                if inbox.empty():
                    await asyncio.sleep(0)  # let the reader hand over frames already on the socket
                ending = False
                while not inbox.empty():
                    more = inbox.get_nowait()
                    if more is None:
                        ending = True  # answered below, then the next turn stops
                        break
                    raws.append(more)
                if sum(len(r) for r in raws) <= INLINE_BYTES:
                    # Decode steps are small and short: a thread hand-off would cost more than it saves.
                    replies = self.server.handle_many(raws)
                else:  # prefill / replay blocks: keep the loop free for pings while they run
                    replies = await asyncio.to_thread(self.server.handle_many, raws)
                for reply in replies:
                    if reply is not None:
                        await ws.send(reply)
                if ending:
                    inbox.put_nowait(None)
        finally:
            stopper.remove_done_callback(wake)
            reader.remove_done_callback(wake)
            reader.cancel()

    @staticmethod
    async def _read(ws: ClientConnection, inbox: asyncio.Queue[bytes | None]) -> None:
        while True:
            raw = await ws.recv(decode=False)
            inbox.put_nowait(raw.encode() if isinstance(raw, str) else raw)

    def close(self) -> None:
        self.http.close()
