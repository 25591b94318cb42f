"""Pipeline inference for requesters: start a generation, stream its tokens (SSE or NDJSON), read the result."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from globai.protocol.sampling import SamplingParams
from market.api.context import AppContext
from market.api.deps import CoordinatorDep, CtxDep, RequesterDep, SessionDep, can_see_everything
from market.api.schemas.inference import InferenceIn, InferenceOut
from market.coordinator.pipeline import RouteUnavailable
from market.coordinator.service import Coordinator
from market.coordinator.stopping import cut_at_stop
from market.db.inference import InferenceRun, StageCommitment, StageRecord
from market.domain_errors import Conflict, Forbidden, NotFound

router = APIRouter(prefix="/v1/inference", tags=["inference"])
RunId = Annotated[str, Path(pattern=r"^[0-9a-f-]{36}$")]


def _events(events: AsyncIterator[dict[str, Any]], fmt: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for event in events:
            data = json.dumps(event, separators=(",", ":"))
            if fmt == "ndjson":
                yield (data + "\n").encode()
            else:
                yield f"event: {event['event']}\ndata: {data}\n\n".encode()

    media = "application/x-ndjson" if fmt == "ndjson" else "text/event-stream"
    return StreamingResponse(body(), media_type=media, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


EVENT_STREAM: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}, "application/x-ndjson": {}},
        "description": "the run's events (SSE by default, NDJSON with ?format=ndjson)",
    }
}


@router.post("", response_model=InferenceOut, status_code=202, responses=EVENT_STREAM)
async def start(
    body: InferenceIn,
    coordinator: CoordinatorDep,
    principal: RequesterDep,
    fmt: Annotated[Literal["sse", "ndjson"], Query(alias="format")] = "sse",
) -> Any:
    """Start generating through a route of workers; with `stream: true` the answer is the event stream."""
    try:
        run = await coordinator.start(
            requester=principal.address,
            model=body.model,
            prompts=body.prompts,
            prompt_ids=body.prompt_ids,
            messages=[[m.model_dump() for m in conv] for conv in body.messages] if body.messages else None,
            stop=body.stop,
            ignore_eos=body.ignore_eos,
            max_new_tokens=body.max_new_tokens,
            sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed),
        )
    except RouteUnavailable as exc:
        raise Conflict(str(exc)) from None
    if body.stream:
        return _events(run.stream(), fmt)
    return InferenceOut(
        id=run.run_id,
        model=body.model,
        status="running",
        route=run.route(),
        stream_url=f"/v1/inference/{run.run_id}/stream",
    )


def _requester(coordinator: Coordinator, ctx: AppContext, run_id: str) -> str | None:
    """Who asked for the run: from this process's live run, else (another process drives it) from the database."""
    run = coordinator.runs.get(run_id)
    if run is not None:
        return getattr(run, "requester", None)
    with ctx.session_factory() as session:
        row = session.get(InferenceRun, run_id)
        return row.requester if row is not None else None


@router.get("/{run_id}/stream", response_class=StreamingResponse, responses=EVENT_STREAM)
async def stream(
    run_id: RunId,
    coordinator: CoordinatorDep,
    principal: RequesterDep,
    ctx: CtxDep,
    fmt: Annotated[Literal["sse", "ndjson"], Query(alias="format")] = "sse",
) -> StreamingResponse:
    """Server-Sent Events (default) or NDJSON: route (or resumed), token (per step, per sequence), failover,
    done | error. Any market process streams any run (its events are shared when the market runs many)."""
    requester = _requester(coordinator, ctx, run_id)
    if requester is None:
        raise NotFound("live inference run", run_id)
    if requester != principal.address and not can_see_everything(principal):
        raise Forbidden("not your inference run")
    return _events(await coordinator.follow(run_id), fmt)


@router.get("/{run_id}", response_model=InferenceOut)
def get_run(run_id: RunId, coordinator: CoordinatorDep, principal: RequesterDep, session: SessionDep) -> InferenceOut:
    row = session.get(InferenceRun, run_id)
    if row is None:
        raise NotFound("inference run", run_id)
    if row.requester != principal.address and not can_see_everything(principal):
        raise Forbidden("not your inference run")
    live = coordinator.runs.get(run_id)
    tokens = row.tokens if row.tokens is not None else (live.tokens if live else None)
    decode = coordinator.decoder(row.model)
    reasons = row.params.get("finish_reasons") or (live.finish_reasons if live else None)
    text = None
    if live is not None and live.decode is not None:
        text = live.texts
    elif tokens is not None and decode:
        text = [cut_at_stop(decode(t), row.params.get("stop") or []) for t in tokens]
    count = lambda model: len(session.scalars(select(model.id).where(model.run_id == run_id)).all())  # noqa: E731
    return InferenceOut(
        id=row.id,
        model=row.model,
        status=row.status,
        route=row.route or (live.route() if live else []),
        tokens=tokens,
        text=text,
        finish_reason=reasons,
        failovers=row.failovers if row.status != "running" or live is None else live.failovers,
        error=row.error,
        records=count(StageRecord),
        commitments=count(StageCommitment),
        stream_url=f"/v1/inference/{run_id}/stream",
    )
