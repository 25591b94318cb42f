"""Pipeline inference for requesters: start a generation, stream its tokens (SSE or NDJSON), read the result."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import select

from globai.protocol.sampling import SamplingParams
from market.api.deps import RequesterDep, SessionDep, can_see_everything
from market.api.schemas.common import Input
from market.coordinator.pipeline import PipelineRun, RouteUnavailable
from market.coordinator.service import Coordinator
from market.coordinator.stopping import cut_at_stop
from market.db.inference import InferenceRun, StageCommitment, StageRecord
from market.domain_errors import Conflict, Forbidden, NotFound

router = APIRouter(prefix="/v1/inference", tags=["inference"])
RunId = Annotated[str, Path(pattern=r"^[0-9a-f-]{36}$")]


class ChatMessage(Input):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=20_000)


class InferenceIn(Input):
    model: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@+-]+$")
    prompts: list[Annotated[str, Field(min_length=1, max_length=20_000)]] | None = Field(default=None, max_length=8)
    prompt_ids: list[list[Annotated[int, Field(ge=0)]]] | None = Field(default=None, max_length=8)
    messages: list[Annotated[list[ChatMessage], Field(min_length=1, max_length=64)]] | None = Field(
        default=None, max_length=8,
        description="one conversation per sequence, rendered with the model's chat template")
    stop: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        default_factory=list, max_length=4, description="stop strings (not included in the text)")
    ignore_eos: bool = Field(default=False, description="generate max_new_tokens even past end-of-sequence")
    max_new_tokens: int = Field(default=32, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0, le=10)
    top_p: float = Field(default=1.0, gt=0, le=1)
    seed: int = Field(default=0, ge=0, lt=2**63)
    stream: bool = Field(default=False, description="answer with the event stream instead of the run id")

    @model_validator(mode="after")
    def _one_prompt_kind(self) -> InferenceIn:
        if sum(x is not None for x in (self.prompts, self.prompt_ids, self.messages)) != 1:
            raise ValueError("give exactly one of prompts (text), prompt_ids (token ids) and messages (chat)")
        return self


class InferenceOut(BaseModel):
    id: str
    model: str
    status: str
    route: list[dict[str, Any]]
    tokens: list[list[int]] | None = None
    text: list[str] | None = None
    finish_reason: list[str | None] | None = None
    failovers: int = 0
    error: str | None = None
    records: int | None = None
    commitments: int | None = None
    stream_url: str


def _coordinator(request: Request) -> Coordinator:
    coordinator: Coordinator = request.app.state.coordinator
    return coordinator


def _events(run: PipelineRun, fmt: str) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        async for event in run.stream():
            data = json.dumps(event, separators=(",", ":"))
            if fmt == "ndjson":
                yield (data + "\n").encode()
            else:
                yield f"event: {event['event']}\ndata: {data}\n\n".encode()

    media = "application/x-ndjson" if fmt == "ndjson" else "text/event-stream"
    return StreamingResponse(body(), media_type=media, headers={"Cache-Control": "no-store",
                                                                  "X-Accel-Buffering": "no"})


EVENT_STREAM: dict[int | str, dict[str, Any]] = {200: {
    "content": {"text/event-stream": {}, "application/x-ndjson": {}},
    "description": "the run's events (SSE by default, NDJSON with ?format=ndjson)"}}


@router.post("", response_model=InferenceOut, status_code=202, responses=EVENT_STREAM)
async def start(
    body: InferenceIn, request: Request, principal: RequesterDep,
    fmt: Annotated[Literal["sse", "ndjson"], Query(alias="format")] = "sse",
) -> Any:
    """Start generating through a route of workers; with `stream: true` the answer is the event stream."""
    coordinator = _coordinator(request)
    try:
        run = await coordinator.start(
            requester=principal.address, model=body.model, prompts=body.prompts, prompt_ids=body.prompt_ids,
            messages=[[m.model_dump() for m in conv] for conv in body.messages] if body.messages else None,
            stop=body.stop, ignore_eos=body.ignore_eos, max_new_tokens=body.max_new_tokens,
            sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=body.seed),
        )
    except RouteUnavailable as exc:
        raise Conflict(str(exc)) from None
    if body.stream:
        return _events(run, fmt)
    return InferenceOut(id=run.run_id, model=body.model, status="running", route=run.route(),
                        stream_url=f"/v1/inference/{run.run_id}/stream")


def _live_run(request: Request, run_id: str, principal: Any) -> PipelineRun:
    run = _coordinator(request).runs.get(run_id)
    if run is None:
        raise NotFound("live inference run", run_id)
    if getattr(run, "requester", None) != principal.address and not can_see_everything(principal):
        raise Forbidden("not your inference run")
    return run


@router.get("/{run_id}/stream", response_class=StreamingResponse, responses=EVENT_STREAM)
async def stream(
    run_id: RunId, request: Request, principal: RequesterDep,
    fmt: Annotated[Literal["sse", "ndjson"], Query(alias="format")] = "sse",
) -> StreamingResponse:
    """Server-Sent Events (default) or NDJSON: route, token (per step, per sequence), failover, done | error."""
    return _events(_live_run(request, run_id, principal), fmt)


@router.get("/{run_id}", response_model=InferenceOut)
def get_run(run_id: RunId, request: Request, principal: RequesterDep, session: SessionDep) -> InferenceOut:
    row = session.get(InferenceRun, run_id)
    if row is None:
        raise NotFound("inference run", run_id)
    if row.requester != principal.address and not can_see_everything(principal):
        raise Forbidden("not your inference run")
    coordinator = _coordinator(request)
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
        id=row.id, model=row.model, status=row.status, route=row.route or (live.route() if live else []),
        tokens=tokens, text=text, finish_reason=reasons,
        failovers=row.failovers if row.status != "running" or live is None else live.failovers, error=row.error,
        records=count(StageRecord), commitments=count(StageCommitment), stream_url=f"/v1/inference/{run_id}/stream",
    )


def install(app: Any, responses: dict[int | str, dict[str, Any]] | None = None) -> None:
    """Build the app's coordinator and mount the inference, model and worker-socket routes (called by create_app).

    `responses` documents the shared error responses on every operation.
    """
    from pathlib import Path as FsPath

    from market.api.routes import models, worker_summary, worker_ws
    from market.coordinator.service import CoordinatorConfig

    ctx = app.state.ctx
    s = ctx.settings
    config = CoordinatorConfig(
        models_dir=FsPath(s.models_dir), blob_dir=FsPath(s.blob_dir), chain_id=s.chain_id,
        call_timeout_s=s.stage_timeout_s, retention_s=s.blob_retention_s,
    )
    app.state.coordinator = Coordinator(config, ctx.session_factory, ctx.clock)
    for module in (models, worker_ws, worker_summary):
        app.include_router(module.router, responses=responses)
    app.include_router(router, responses=responses)
