"""Paid inference jobs: the requester's generated text (result) and a live stream of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from market.api.deps import CoordinatorDep, JobRunnerDep, PrincipalDep, SessionDep, can_see_everything
from market.db import Job
from market.domain_errors import Forbidden, InvalidRequest
from market.services import audit, jobs
from market.services.inference_jobs import job_outputs
from market.services.job_specs import InferenceSpec

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]


def _job(session: Any, job_id: str, principal: Any) -> Job:
    job = jobs.get_job(session, job_id=job_id)
    if job.requester != principal.address and not can_see_everything(principal):
        raise Forbidden("not your job")
    if job.kind != "inference":
        raise InvalidRequest("only inference jobs have generated text (training: /v1/training)")
    return job


@router.get("/{job_id}/result")
def result(job_id: JobId, coordinator: CoordinatorDep, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    """Status, generated text per prompt, and how verification and settlement went."""
    job = _job(session, job_id, principal)
    spec = InferenceSpec.model_validate(job.spec)
    outputs = job_outputs(
        session,
        job=job,
        encode=lambda p: coordinator.encode_prompts(job.model, None if spec.chat else p, None, spec.messages(p)),
        decode=coordinator.decoder(job.model),
        batch_size=coordinator.config.max_batch,
    )
    run = audit.verification_run(session, job_id=job_id)
    report = audit.settlement_report_or_none(session, job_id=job_id)
    slashes = audit.slashes(session, job_id=job_id)
    return {
        "id": job.id,
        "status": job.status,
        "model": job.model,
        "outputs": outputs,
        "verification": None
        if run is None
        else {"status": run.status, "sampled": run.sampled, "detail": run.detail, "beacon": run.beacon},
        "slashes": [
            {"worker": r.worker, "status": r.status, "amount": str(r.slashed or r.amount), "tx": r.tx_hash}
            for r in slashes
        ],
        "settlement": None
        if report is None
        else {
            "report_root": report.report_root,
            "paid": report.report.get("paid"),
            "fee": report.report.get("fee"),
            "refunded": report.report.get("refunded"),
            "payees": report.report.get("payees"),
        },
    }


@router.get("/{job_id}/stream", response_class=StreamingResponse)
async def stream(
    job_id: JobId,
    coordinator: CoordinatorDep,
    runner: JobRunnerDep,
    principal: PrincipalDep,
    session: SessionDep,
    fmt: Annotated[Literal["sse", "ndjson"], Query(alias="format")] = "ndjson",
) -> StreamingResponse:
    """The job's generation as it happens: per batch the run's events (`token`, `done`, ...) with `batch` and
    `first_prompt` added, then `job_done`. A job that is not running here streams its stored result."""
    job = _job(session, job_id, principal)
    session.commit()

    async def events() -> AsyncIterator[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + 30
        while job_id not in runner.progress:  # funded but not claimed yet
            if job.status not in ("created", "funded", "running") or asyncio.get_running_loop().time() > deadline:
                yield {"event": "job_done", "status": job.status, "live": False}
                return
            await asyncio.sleep(0.2)
        progress = runner.progress[job_id]
        index = 0
        while True:
            run_id = progress.run_ids[index] if index < len(progress.run_ids) else None
            if run_id is not None:
                live = coordinator.runs.get(run_id)
                if live is not None:
                    async for event in live.stream():
                        yield {**event, "batch": index, "first_prompt": index * progress.batch_size, "run_id": run_id}
                    if progress.run_ids[index] != run_id:  # the batch was retried: stream the new run
                        continue
                index += 1
                continue
            if progress.finished and (index >= len(progress.run_ids) or progress.error):
                yield {
                    "event": "job_done",
                    "status": "failed" if progress.error else "completed",
                    "error": progress.error,
                    "live": True,
                }
                return
            waiter = progress.changed
            try:
                await asyncio.wait_for(waiter.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def body() -> AsyncIterator[bytes]:
        async for event in events():
            data = json.dumps(event, separators=(",", ":"))
            yield (data + "\n").encode() if fmt == "ndjson" else f"event: {event['event']}\ndata: {data}\n\n".encode()

    media = "application/x-ndjson" if fmt == "ndjson" else "text/event-stream"
    return StreamingResponse(body(), media_type=media, headers={"Cache-Control": "no-store"})
