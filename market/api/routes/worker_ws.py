"""`/v1/workers/ws`: the WebSocket workers dial out to (bearer token), carrying binary pipeline messages.

The first message must be the worker's `hello` (model, digest, layer range); the market checks the model and
the worker's eligibility (registered, staked, not banned), answers `welcome`, and from then on matches the
worker's `result`/`error` answers to the coordinator's requests. The link becomes routable once it has answered
the coordinator's join challenge (`Coordinator.admit`). A malformed or oversized frame gets an `error`
answer and the connection stays up; only the socket closing removes the worker (its runs fail over).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from globai.protocol.pipeline import WS_PATH, ProtocolError, StageLimits, error_header, field
from globai.protocol.tensors import FrameError, Message, decode_message, encode_message
from market.api.context import AppContext
from market.api.deps import CtxDep
from market.coordinator.links import WorkerLink
from market.coordinator.service import Coordinator
from market.domain_errors import AuthError, NotEligible, NotFound
from market.services import workers
from market.services.auth import decode_token

log = logging.getLogger(__name__)
router = APIRouter(tags=["workers"])

HELLO_TIMEOUT_S = 10.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_REFUSED = 4403
LINK_CHECK_S = 0.25  # how soon a dropped link's socket is closed


def _token(ws: WebSocket) -> str | None:
    """Only from the Authorization header: a token in the URL ends up in proxy and access logs."""
    header = ws.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


@router.websocket(WS_PATH)
async def worker_socket(ws: WebSocket, ctx: CtxDep) -> None:
    coordinator = ctx.coordinator
    token = _token(ws)
    try:
        if token is None:
            raise AuthError("missing bearer token")
        principal = decode_token(token, secret=ctx.policy.secret, now=ctx.clock())
        if "worker" not in principal.roles:
            raise AuthError("this needs the worker role")
    except AuthError as exc:
        log.info("worker socket refused: %s", exc)
        await ws.close(code=CLOSE_UNAUTHORIZED, reason=str(exc)[:100])
        return
    await ws.accept()
    lock = asyncio.Lock()

    async def send(raw: bytes) -> None:
        async with lock:
            await ws.send_bytes(raw)

    try:
        link = await _handshake(ws, ctx, coordinator, principal.address, send)
    except (FrameError, NotFound, NotEligible, TimeoutError) as exc:
        await send(encode_message(error_header(None, "refused", str(exc))))
        await ws.close(code=CLOSE_REFUSED, reason=str(exc)[:100])
        return
    except WebSocketDisconnect:
        return

    async def admit() -> None:
        # The join challenge runs over this socket (its answers come through the loop below); only an admitted
        # link is routable. One that failed stays connected and unrouted: reconnecting would only challenge it again.
        try:
            admitted = await coordinator.admit(link)
        except Exception:  # the market's own fault: logged, the link stays unrouted
            log.exception("admitting worker %s failed", link.address)
            return
        if admitted and link.alive:
            coordinator.links.add(link)
            log.info("worker %s admitted: %s [%d, %d)", link.address, link.model, link.layer_start, link.layer_end)

    admission = asyncio.create_task(admit())

    async def expire() -> None:
        # The socket lives no longer than the token that opened it (the worker signs in again and reconnects), nor
        # than its standing: a ban or a lost stake drops the link (`Coordinator.watch_standing`) and closes it.
        while True:
            left = principal.expires_at - ctx.clock().timestamp()
            if left <= 0:
                coordinator.links.remove(link.link_id, "token expired")
                await ws.close(code=CLOSE_UNAUTHORIZED, reason="token expired")
                return
            if link.disconnect:
                await ws.close(code=CLOSE_REFUSED, reason=link.closed_reason[:100])
                return
            await asyncio.sleep(min(left, LINK_CHECK_S))

    expiry = asyncio.create_task(expire())
    limits = StageLimits.for_manifest(
        coordinator.catalog.get(link.model).manifest,  # type: ignore[union-attr]
        max_batch=coordinator.config.max_batch,
    )
    log.info("worker %s connected: %s [%d, %d)", link.address, link.model, link.layer_start, link.layer_end)
    try:
        while True:
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                break
            data = raw.get("bytes")
            if data is None:
                await send(encode_message(error_header(None, "bad_frame:text", "send binary frames only")))
                continue
            try:
                message = decode_message(data, max_bytes=limits.max_payload_bytes)
                _dispatch(link, message, data)
            except FrameError as exc:
                await send(encode_message(error_header(None, f"bad_frame:{exc.reason}", str(exc))))
    except WebSocketDisconnect:
        pass
    except RuntimeError:  # receive after our own close (token expired)
        pass
    finally:
        expiry.cancel()
        admission.cancel()
        link.close("socket closed")
        coordinator.links.remove(link.link_id, "socket closed")
        log.info("worker %s disconnected", link.address)


def _dispatch(link: WorkerLink, message: Message, raw: bytes) -> None:
    op = message.header.get("op")
    if op not in ("result", "error"):
        raise ProtocolError(f"unexpected op {op!r} from a worker")
    if not link.deliver(message, raw):
        raise ProtocolError(f"no request is waiting for rid {message.header.get('rid')!r}")


async def _handshake(ws: WebSocket, ctx: AppContext, coordinator: Coordinator, address: str, send) -> WorkerLink:  # type: ignore[no-untyped-def]
    raw = await asyncio.wait_for(ws.receive_bytes(), HELLO_TIMEOUT_S)
    hello = decode_message(raw, max_bytes=0)
    if hello.header.get("op") != "hello":
        raise ProtocolError("the first message must be hello")
    model = field(hello, "model", str)
    served = coordinator.catalog.get(model)
    if served is None:
        raise NotFound("model", model)
    if field(hello, "digest", str) != served.digest:
        raise ProtocolError(f"worker has another version of {model} (manifest digest differs)")
    start, end = field(hello, "layer_start", int), field(hello, "layer_end", int)
    if not 0 <= start < end <= served.manifest.num_layers:
        raise ProtocolError(f"layers [{start}, {end}) are not inside {model}")

    def lookup() -> tuple[str, str, float, float, object]:
        with ctx.session_factory() as session:
            worker = workers.require_eligible(session, address=address, min_stake=ctx.settings.min_stake_wei)
            rep = workers.worker_reputation(session, worker_id=worker.id, now=ctx.clock())
            return worker.id, worker.operator_id, worker.throughput_tokens_s, worker.latency_ms, rep

    worker_id, operator_id, throughput, latency, rep = await asyncio.to_thread(lookup)
    link = WorkerLink(
        link_id=str(uuid.uuid4()),
        address=address,
        worker_id=worker_id,
        operator_id=operator_id,
        model=model,
        digest=served.digest,
        layer_start=start,
        layer_end=end,
        max_batch=int(hello.header.get("max_batch", 1)),
        max_tokens=int(hello.header.get("max_tokens", 1)),
        throughput_tokens_s=throughput,
        latency_ms=latency,
        reputation=rep,  # type: ignore[arg-type]
        send=send,
    )
    await send(encode_message({"op": "welcome", "worker_id": worker_id, "link_id": link.link_id}))
    return link
