"""The OpenAI-compatible, paid API: `/openai/v1/models`, `/chat/completions`, `/completions` (docs/openai.md).

Authentication is an API key (`Authorization: Bearer glb-…`); every request reserves its worst case on the
requester's prepaid credit, runs as an ordinary pipeline generation (recorded, committed, linked to the credit's
job so it is verified, slashable and settled) and is charged its actual usage when it ends. Errors are OpenAI's
shape and statuses (400, 401, 402, 404, 429 + Retry-After, 503), never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from globai.errors import GlobaiError
from globai.protocol.pipeline import StageLimits
from globai.protocol.sampling import SamplingParams
from market.api.context import AppContext
from market.api.deps import context_of
from market.coordinator.catalog import ServedModel
from market.coordinator.pipeline import PipelineRun, RouteUnavailable
from market.coordinator.service import Coordinator
from market.db import ApiKey
from market.db.inference import InferenceRun
from market.domain_errors import AuthError, InsufficientQuota, InvalidRequest, NotFound
from market.oai.choices import Choices, Delta, chat_logprobs, completion_logprobs
from market.oai.errors import OpenAIError
from market.oai.schemas import ChatIn, CompletionIn, parse
from market.services import api_keys, credits

log = logging.getLogger(__name__)
router = APIRouter(prefix="/openai/v1", tags=["openai"])
RUN_WAIT_S = 600.0


def _state(request: Request) -> tuple[AppContext, Coordinator]:
    ctx = context_of(request)
    return ctx, ctx.coordinator


async def _key(request: Request) -> ApiKey:
    """The caller's live API key (401 otherwise), within its rate limit (429 otherwise)."""
    ctx, _ = _state(request)
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        raise OpenAIError(
            401,
            "You didn't provide an API key: use 'Authorization: Bearer <key>' (create one with `globai keys create`).",
        )

    def lookup() -> ApiKey:
        with ctx.session_factory() as session:
            row = api_keys.authenticate(session, key=header[7:].strip())
            session.expunge(row)
            return row

    try:
        key = await asyncio.to_thread(lookup)
    except AuthError as exc:
        raise OpenAIError(401, f"Incorrect API key provided ({exc}).") from None
    wait = ctx.key_limiter.take(key.id, key.rate_limit_per_min)
    if wait > 0:
        retry = max(1, round(wait + 0.49))
        raise OpenAIError(
            429,
            f"Rate limit reached for this key ({key.rate_limit_per_min} requests/min); retry after {retry}s.",
            headers={"Retry-After": str(retry)},
        )
    return key


async def _body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise OpenAIError(400, "the request body is not valid JSON") from None


def _served(coordinator: Coordinator, name: str) -> ServedModel:
    served = coordinator.catalog.get(name)
    if served is None or served.manifest.task != "causal-lm":
        raise OpenAIError(404, f"The model '{name}' does not exist", param="model", code="model_not_found")
    return served


def _model_entry(ctx: AppContext, coordinator: Coordinator, served: ServedModel) -> dict[str, Any]:
    m = served.manifest
    price = credits.price_for(ctx.settings, m.name)
    return {
        "id": m.name,
        "object": "model",
        "created": int(served.directory.stat().st_mtime),
        "owned_by": "globai",
        "context_length": StageLimits.for_manifest(m).max_tokens,
        "pricing": {"prompt": str(price.prompt), "completion": str(price.completion), "unit": "GLB wei per token"},
        "served": bool(coordinator.links.live(m.name)),
    }


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Causal LMs of the catalog with their per-token prices (what a request reserves and is charged)."""
    await _key(request)
    ctx, coordinator = _state(request)
    models = await asyncio.to_thread(coordinator.catalog.all)
    return {
        "object": "list",
        "data": [_model_entry(ctx, coordinator, s) for s in models if s.manifest.task == "causal-lm"],
    }


@router.get("/models/{name}")
async def get_model(name: str, request: Request) -> dict[str, Any]:
    await _key(request)
    ctx, coordinator = _state(request)
    return _model_entry(ctx, coordinator, _served(coordinator, name))


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Any:
    """OpenAI chat completions: `messages` rendered with the model's chat template."""
    key = await _key(request)
    body: ChatIn = parse(ChatIn, await _body(request))
    _, coordinator = _state(request)
    served = _served(coordinator, body.model)
    if served.manifest.generation is None or not served.manifest.generation.chat_template:
        raise OpenAIError(
            400, f"model {body.model} has no chat template; use /completions", param="model", code="no_chat_template"
        )
    # OpenAI's `developer` role is its newer name for `system`.
    conversation = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    ids = _encode(coordinator, served, None, [conversation])
    return await _serve(request, key, body, served, ids, "chat.completions")


@router.post("/completions")
async def completions(request: Request) -> Any:
    """OpenAI (legacy) text completions: the prompt as given."""
    key = await _key(request)
    body: CompletionIn = parse(CompletionIn, await _body(request))
    _, coordinator = _state(request)
    served = _served(coordinator, body.model)
    ids = _encode(coordinator, served, body.prompts(), None)
    return await _serve(request, key, body, served, ids, "completions")


def _encode(
    coordinator: Coordinator, served: ServedModel, texts: list[str] | None, messages: list[list[dict[str, str]]] | None
) -> list[list[int]]:
    """Token ids per prompt: plain text, or a conversation rendered with the model's chat template."""
    try:
        return coordinator.encode_prompts(served.manifest.name, texts, None, messages)
    except (InvalidRequest, NotFound, ValueError) as exc:
        raise OpenAIError(400, str(exc), param="messages" if messages else "prompt") from None


# --- one request -------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    rows: list[list[int]]  # one row per choice (each prompt n times)
    prompt_tokens: int
    max_tokens: int
    top_logprobs: int | None
    sampling: SamplingParams
    echo: list[str] | None = None  # per choice, the prompt text shown in front of its text (`echo`)
    scores_prompt: bool = False  # echo + logprobs: the prompt tokens' logprobs too


def _plan(coordinator: Coordinator, served: ServedModel, body: ChatIn | CompletionIn, ids: list[list[int]]) -> Plan:
    m = served.manifest
    rows = [row for row in ids for _ in range(body.n)]
    if len(rows) > coordinator.config.max_batch:
        raise OpenAIError(
            400,
            f"n x prompts must be at most {coordinator.config.max_batch} (the batch limit); got {len(rows)}",
            param="n",
        )
    if any(not row for row in rows):
        raise OpenAIError(400, "the prompt is empty", param="prompt")
    window = StageLimits.for_manifest(m, max_batch=coordinator.config.max_batch).max_tokens
    longest = max(len(r) for r in rows)
    room = window - longest
    wanted = body.token_limit()
    if room < (0 if wanted == 0 else 1) or (wanted is not None and wanted > room):
        raise OpenAIError(
            400,
            f"This model's maximum context length is {window} tokens; the prompt has {longest} "
            f"and {wanted or 1} more were requested",
            param="max_tokens",
            code="context_length_exceeded",
        )
    max_tokens = wanted if wanted is not None else min(room, coordinator.config.max_new_tokens)
    seed = secrets.randbits(63) if body.seed is None else body.seed % 2**63
    echo = isinstance(body, CompletionIn) and body.echo
    scores = isinstance(body, CompletionIn) and body.scores_prompt()
    if scores:
        try:
            coordinator.check_scoring(m.name, rows)
        except InvalidRequest as exc:
            raise OpenAIError(400, str(exc), param="echo", code="scoring_limit") from None
    return Plan(
        rows=rows,
        prompt_tokens=sum(len(r) for r in ids),
        max_tokens=max_tokens,
        top_logprobs=body.logprob_count(),
        sampling=SamplingParams(temperature=body.temperature, top_p=body.top_p, seed=seed),
        echo=[p for p in body.prompts() for _ in range(body.n)] if echo and isinstance(body, CompletionIn) else None,
        scores_prompt=scores,
    )


async def _serve(
    request: Request, key: ApiKey, body: ChatIn | CompletionIn, served: ServedModel, ids: list[list[int]], endpoint: str
) -> Any:
    ctx, coordinator = _state(request)
    plan = _plan(coordinator, served, body, ids)
    model = served.manifest.name
    price = credits.price_for(ctx.settings, model)
    settings = ctx.settings

    def reserve() -> Any:
        with ctx.session_factory() as session:
            row = credits.reserve(
                session,
                key_id=key.id,
                model=model,
                endpoint=endpoint,
                n=len(plan.rows),
                prompt_tokens=plan.prompt_tokens,
                max_tokens=plan.max_tokens,
                price=price,
                close_margin_s=settings.credit_close_margin_s,
                now=ctx.clock(),
            )
            session.expunge(row)
            return row

    try:
        req = await asyncio.to_thread(reserve)
    except InsufficientQuota as exc:
        raise OpenAIError(402, f"You exceeded your current quota: {exc}") from None
    billing = Billing(ctx, req.id, req.reserved, credits.cheapest_request(settings))
    try:
        run = await coordinator.start(
            requester=key.requester,
            model=model,
            prompts=None,
            prompt_ids=plan.rows,
            max_new_tokens=plan.max_tokens,
            sampling=plan.sampling,
            stop=body.stops(),
            top_logprobs=plan.top_logprobs,
            prompt_logprobs=plan.scores_prompt,
        )
    except RouteUnavailable as exc:
        await billing.release()
        raise OpenAIError(
            503,
            f"No route of workers serves {model} right now ({exc}); retry later",
            code="no_route",
            headers={"Retry-After": "5"},
        ) from None
    except (InvalidRequest, GlobaiError) as exc:
        await billing.release()
        raise OpenAIError(400, str(exc)) from None
    except BaseException:
        await billing.release()
        raise
    await asyncio.to_thread(billing.attach, run.run_id)
    gen = Generation(run, Choices(len(plan.rows)), billing, plan, endpoint, model, served.digest, body.include_usage())
    task = asyncio.create_task(gen.drive())  # runs to the charge even if the client goes away
    coordinator.tasks.add(task)
    task.add_done_callback(coordinator.tasks.discard)
    if body.stream:
        return StreamingResponse(
            gen.sse(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
    outcome = await asyncio.shield(task)
    if isinstance(outcome, OpenAIError):
        raise outcome
    return JSONResponse(gen.whole())


class Billing:
    """The request's reservation: attach the run, then charge actual usage or release it (once)."""

    def __init__(self, ctx: AppContext, request_id: str, reserved: int, min_cost: int) -> None:
        self.ctx, self.request_id, self.reserved, self.min_cost = ctx, request_id, reserved, min_cost
        self.charged: int | None = None

    def attach(self, run_id: str) -> None:
        with self.ctx.session_factory() as session:
            credits.attach_run(session, request_id=self.request_id, run_id=run_id, now=self.ctx.clock())

    def charge(self, completion_tokens: int, finish_reasons: list[Any]) -> int:
        with self.ctx.session_factory() as session:
            row = credits.charge(
                session,
                request_id=self.request_id,
                completion_tokens=completion_tokens,
                finish_reasons=finish_reasons,
                min_request_cost=self.min_cost,
                now=self.ctx.clock(),
            )
            self.charged = row.charged
            return row.charged

    async def release(self) -> None:
        def go() -> None:
            with self.ctx.session_factory() as session:
                credits.release(
                    session, request_id=self.request_id, min_request_cost=self.min_cost, now=self.ctx.clock()
                )

        await asyncio.to_thread(go)
        self.charged = 0


class Generation:
    """Consumes the run's events into choices, feeds the SSE stream, and settles the reservation at the end."""

    def __init__(
        self,
        run: PipelineRun,
        tracker: Choices,
        billing: Billing,
        plan: Plan,
        endpoint: str,
        model: str,
        digest: str,
        include_usage: bool,
    ) -> None:
        self.run, self.tracker, self.billing, self.plan = run, tracker, billing, plan
        self.chat = endpoint == "chat.completions"
        self.model, self.include_usage = model, include_usage
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + run.run_id.replace("-", "")
        self.created = int(time.time())
        self.fingerprint = "fp_" + digest[:12]
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.error: OpenAIError | None = None
        self.token_text = run.decode or (lambda ids: "")

    # --- driving ---------------------------------------------------------------------------------------------
    async def drive(self) -> OpenAIError | None:
        try:
            if self.chat:
                for i in range(len(self.tracker.choices)):
                    self._put_chat(Delta(i, "", [], None), role=True)
            elif self.plan.echo is not None and not self.plan.scores_prompt:  # the prompt comes first
                for i, text in enumerate(self.plan.echo):
                    self._put(Delta(i, text, [], None))
            async for event in self.run.stream():
                if event["event"] == "token":
                    for d in self.tracker.token_event(event):
                        self._put(d)
                elif event["event"] == "prompt" and self.plan.echo is not None:
                    for d in self.tracker.prompt_event(event, self.plan.echo):
                        self._put(d)
                elif event["event"] == "error":
                    raise OpenAIError(503, f"the generation failed: {event.get('detail')}", code="generation_failed")
            for d in self.tracker.finish_unended():
                self._put(d)
            status = await self._persisted()
            if status != "completed":
                raise OpenAIError(503, f"the generation ended {status}", code="generation_failed")
            reasons = [c.finish_reason for c in self.tracker.choices]
            await asyncio.to_thread(self.billing.charge, self.tracker.completion_tokens, reasons)
            if self.include_usage:
                self.queue.put_nowait(self._chunk([], usage=self.usage()))
            return None
        except OpenAIError as exc:
            self.error = exc
        except Exception as exc:  # never a 500: the reservation is released and the client told
            log.exception("api request %s failed", self.billing.request_id)
            self.error = OpenAIError(503, f"the generation failed: {type(exc).__name__}", code="generation_failed")
        finally:
            if self.billing.charged is None:
                try:
                    await self.billing.release()
                except Exception:
                    log.exception("api request %s: releasing its reservation failed", self.billing.request_id)
            self.queue.put_nowait(None)
        return self.error

    async def _persisted(self) -> str:
        """The run's status once the coordinator saved its evidence (so verification sees all of it)."""
        ctx = self.billing.ctx
        deadline = time.monotonic() + RUN_WAIT_S

        def status() -> str:
            with ctx.session_factory() as session:
                row = session.get(InferenceRun, self.run.run_id)
                return "failed" if row is None else row.status

        while time.monotonic() < deadline:
            s = await asyncio.to_thread(status)
            if s != "running":
                return s
            await asyncio.sleep(0.05)
        return "timed out"

    # --- shapes ----------------------------------------------------------------------------------------------
    def usage(self) -> dict[str, Any]:
        c = self.tracker.completion_tokens
        return {
            "prompt_tokens": self.plan.prompt_tokens,
            "completion_tokens": c,
            "total_tokens": self.plan.prompt_tokens + c,
        }

    def _billing(self) -> dict[str, Any]:
        return {
            "run_id": self.run.run_id,
            "request_id": self.billing.request_id,
            "reserved_wei": str(self.billing.reserved),
            "charged_wei": str(self.billing.charged or 0),
        }

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = usage
        if usage is not None:
            body["globai"] = self._billing()
        return body

    def _put_chat(self, d: Delta, *, role: bool = False) -> None:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if d.text:
            delta["content"] = d.text
        lp = chat_logprobs(d.logprobs, self.token_text) if self.plan.top_logprobs is not None and not role else None
        self.queue.put_nowait(
            self._chunk([{"index": d.index, "delta": delta, "logprobs": lp, "finish_reason": d.finish_reason}])
        )

    def _put(self, d: Delta) -> None:
        if not d.text and not d.finish_reason and not d.logprobs:
            return
        if self.chat:
            self._put_chat(d)
            return
        lp = completion_logprobs(d.logprobs, self.token_text) if self.plan.top_logprobs is not None else None
        self.queue.put_nowait(
            self._chunk([{"index": d.index, "text": d.text, "logprobs": lp, "finish_reason": d.finish_reason}])
        )

    async def sse(self) -> AsyncIterator[bytes]:
        while True:
            item = await self.queue.get()
            if item is None:
                break
            yield f"data: {json.dumps(item, separators=(',', ':'))}\n\n".encode()
        if self.error is not None:
            yield f"data: {json.dumps(self.error.body())}\n\n".encode()
            return
        yield b"data: [DONE]\n\n"

    def whole(self) -> dict[str, Any]:
        choices = []
        for c in self.tracker.choices:
            if self.chat:
                lp = chat_logprobs(c.logprobs, self.token_text) if self.plan.top_logprobs is not None else None
                choices.append(
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": c.text, "refusal": None},
                        "logprobs": lp,
                        "finish_reason": c.finish_reason,
                    }
                )
            else:
                items = c.prompt_logprobs + c.logprobs
                lp = completion_logprobs(items, self.token_text) if self.plan.top_logprobs is not None else None
                text = (self.plan.echo[c.index] if self.plan.echo is not None else "") + c.text
                choices.append({"index": c.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
        return {
            "id": self.id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
            "choices": choices,
            "usage": self.usage(),
            "globai": self._billing(),
        }
