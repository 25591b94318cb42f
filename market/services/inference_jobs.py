"""Paid inference jobs: once an escrowed inference job is funded, run its prompts through the coordinator.

The runner lives in the market API process (the coordinator holds the worker sockets). It polls the DB for
funded inference jobs and claims each with a compare-and-set `funded -> running`, so a job runs once however often
its funding is confirmed (route, indexer). Before the work it opens the job's verification run (the sampling
secret is drawn now); every generation (a batch of at most `max_batch` prompts) is linked to the job in
`job_runs` as soon as it starts; when every batch has a completed run the job is `completed`, which the
verification beat picks up (verify -> slash -> settle).

After a market restart, a job left `running` is resumed: runs that completed are kept (matched to their batch by
their prompt ids), links to unfinished runs are dropped and those batches are generated again. A job that cannot
be run (no route until its deadline, repeated failures) is cancelled, which refunds its escrow.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from globai.logs import JOB_ID
from globai.protocol.sampling import SamplingParams
from market.coordinator.pipeline import RouteUnavailable
from market.coordinator.service import Coordinator
from market.coordinator.stopping import cut_at_stop
from market.db import Job, JobRun
from market.db.inference import InferenceRun
from market.services.job_specs import InferenceSpec
from market.services.jobs import cancel_job
from market.services.verification import open_run

log = logging.getLogger(__name__)

POLL_S = 0.5
ROUTE_WAIT_S = 120.0  # how long a job waits for a route (workers connecting) before it is refunded
BATCH_ATTEMPTS = 3
KEEP_FINISHED_JOBS = 256


def batches(prompts: list[str], size: int) -> list[list[str]]:
    return [prompts[i : i + size] for i in range(0, len(prompts), size)]


@dataclass
class JobProgress:
    """What a live job's stream reads: the run id of each batch as it starts, and whether the job ended."""

    prompts: int
    batch_size: int
    run_ids: list[str | None]
    finished: bool = False
    error: str | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class InferenceJobRunner:
    def __init__(
        self,
        coordinator: Coordinator,
        session_factory: sessionmaker[Session],
        clock: Callable[[], datetime],
        *,
        poll_s: float = POLL_S,
        route_wait_s: float = ROUTE_WAIT_S,
    ) -> None:
        self.coordinator = coordinator
        self._sf = session_factory
        self._clock = clock
        self.poll_s = poll_s
        self.route_wait_s = route_wait_s
        self.progress: dict[str, JobProgress] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        # One runner per app, one start per lifespan: each start begins clean on the loop that runs it (a test
        # client may enter the same app's lifespan again on a new event loop).
        self.progress.clear()
        self._tasks.clear()
        self._loop_task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in [self._loop_task, *self._tasks.values()] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        self._tasks.clear()

    async def _loop(self) -> None:
        first = True
        peers = self.coordinator.peers
        while True:
            try:
                live = {lnk.model for lnk in self.coordinator.links.live()}  # read on the loop that owns the links
                # One process: at start-up, every job left running is this market's to resume. Many processes
                # (`peers`): a job is owned in Redis; only those whose owner died (or that nobody owns) are resumed.
                ids = await asyncio.to_thread(self._claim, live, resume=first and peers is None)
                if peers is not None:
                    for job_id in ids:
                        await peers.own("jobs", job_id)
                    ids += await peers.take_orphans("jobs")
                    if first:
                        left = await asyncio.to_thread(self._running)
                        ids += [j for j in left if j not in self._tasks and await peers.adopt("jobs", j)]
                first = False
                for job_id in ids:
                    if job_id not in self._tasks:
                        task = asyncio.create_task(self._run_job(job_id))
                        self._tasks[job_id] = task
                        task.add_done_callback(self._forget)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inference job poll failed")
            await asyncio.sleep(self.poll_s)

    def _running(self) -> list[str]:
        with self._sf() as s:
            return list(s.scalars(select(Job.id).where(Job.kind == "inference", Job.status == "running")).all())

    def _forget(self, task: asyncio.Task[None]) -> None:
        for job_id, t in list(self._tasks.items()):
            if t is task:
                del self._tasks[job_id]

    def _claim(self, live_models: set[str], *, resume: bool) -> list[str]:
        """Funded inference jobs, moved to running (compare-and-set); at start-up also the ones left running."""
        with self._sf() as s:
            claimed: list[str] = []
            if resume:
                claimed += s.scalars(select(Job.id).where(Job.kind == "inference", Job.status == "running")).all()
            funded = s.execute(
                select(Job.id, Job.model, Job.updated_at).where(Job.kind == "inference", Job.status == "funded")
            ).all()
            now = self._clock()
            for job_id, model, since in funded:
                if model not in live_models:
                    # Queued until a worker serving its model connects; refunded when none came for route_wait_s.
                    if (now - since).total_seconds() > self.route_wait_s:
                        job = s.get(Job, job_id)
                        assert job is not None
                        log.warning(
                            "job %s: no worker serves %s after %.0f s; cancelling (refund)",
                            job_id,
                            model,
                            self.route_wait_s,
                        )
                        cancel_job(s, job_id=job_id, caller=job.requester, is_admin=True, now=now)
                    continue
                moved = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == "funded")
                    .values(status="running", updated_at=self._clock())
                ).rowcount  # type: ignore[attr-defined]
                if moved:
                    claimed.append(job_id)
            s.commit()
            return claimed

    # --- one job ---------------------------------------------------------------------------------------------
    def _prepare(self, job_id: str) -> tuple[Job, InferenceSpec, dict[int, str], dict[int, str]]:
        """Open the verification run; keep completed runs of earlier attempts (by batch), drop the others. With
        many market processes a run still `running` is kept too (returned apart): another process may be
        finishing it (a run outlives the process that started it)."""
        size = self.coordinator.config.max_batch
        shared = self.coordinator.peers is not None
        with self._sf() as s:
            job = s.get(Job, job_id)
            assert job is not None
            spec = InferenceSpec.model_validate(job.spec)
            open_run(s, job_id=job_id, now=self._clock())
            encode = self.coordinator.encode_prompts
            wanted = {
                i: encode(spec.model, None, None, spec.messages(b)) if spec.chat else encode(spec.model, b, None)
                for i, b in enumerate(batches(spec.prompts, size))
            }
            done: dict[int, str] = {}
            going: dict[int, str] = {}
            stale: list[str] = []
            rows = s.execute(
                select(JobRun.run_id, InferenceRun.status, InferenceRun.params)
                .join(InferenceRun, InferenceRun.id == JobRun.run_id)
                .where(JobRun.job_id == job_id)
                .order_by(JobRun.created_at)
            ).all()
            for run_id, status, params in rows:
                ids = params.get("prompt_ids")
                index = next((i for i, want in wanted.items() if want == ids and i not in done), None)
                if status == "completed" and index is not None:
                    done[index] = run_id
                elif status == "running" and index is not None and shared and index not in going:
                    going[index] = run_id
                else:
                    stale.append(run_id)
            if stale:
                s.execute(delete(JobRun).where(JobRun.run_id.in_(stale)))
                log.info("job %s: dropped %d unfinished run(s) of an earlier attempt", job_id, len(stale))
            s.commit()
            s.expunge(job)
            return job, spec, done, going

    async def _run_job(self, job_id: str) -> None:
        JOB_ID.set(job_id)  # this task's context: every log line of the job (and of its runs) carries it
        try:
            job, spec, done, going = await asyncio.to_thread(self._prepare, job_id)
            done |= await self._finish_going(going)
        except Exception:
            log.exception("job %s: could not be prepared", job_id)
            return
        size = self.coordinator.config.max_batch
        parts = batches(spec.prompts, size)
        progress = JobProgress(len(spec.prompts), size, [done.get(i) for i in range(len(parts))])
        self.progress[job_id] = progress
        try:
            for index, prompts in enumerate(parts):
                if index in done:
                    continue
                run_id = await self._run_batch(job, spec, prompts, progress, index)
                progress.run_ids[index] = run_id
                progress.touch()
            await asyncio.to_thread(self._complete, job_id)
            if self.coordinator.peers is not None:
                self.coordinator.peers.release("jobs", job_id)
            log.info("job %s: %d prompts generated in %d run(s)", job_id, len(spec.prompts), len(parts))
        except asyncio.CancelledError:
            raise  # market shutting down: the job stays running and is resumed at the next start
        except Exception as exc:
            progress.error = str(exc)
            log.warning("job %s failed, refunding: %s", job_id, exc)
            await asyncio.to_thread(self._fail, job_id)
            if self.coordinator.peers is not None:
                self.coordinator.peers.release("jobs", job_id)
        finally:
            progress.finished = True
            progress.touch()
            finished = [j for j, p in self.progress.items() if p.finished]
            for old in finished[: max(0, len(finished) - KEEP_FINISHED_JOBS)]:  # late readers get the DB result
                del self.progress[old]

    async def _run_batch(
        self, job: Job, spec: InferenceSpec, prompts: list[str], progress: JobProgress, index: int
    ) -> str:
        waited_since = asyncio.get_running_loop().time()
        attempts = 0
        while True:
            try:
                run = await self.coordinator.start(
                    requester=job.requester,
                    model=spec.model,
                    prompts=None if spec.chat else prompts,
                    prompt_ids=None,
                    messages=spec.messages(prompts),
                    stop=spec.stop,
                    max_new_tokens=spec.max_new_tokens,
                    sampling=SamplingParams(
                        temperature=spec.sampling.temperature,
                        top_p=spec.sampling.top_p,
                        seed=spec.sampling.seed + index,
                    ),
                )
            except RouteUnavailable as exc:
                if asyncio.get_running_loop().time() - waited_since > self.route_wait_s:
                    raise RuntimeError(f"no route for {spec.model}: {exc}") from None
                await asyncio.sleep(1.0)
                continue
            await asyncio.to_thread(self._link, job.id, run.run_id)
            progress.run_ids[index] = run.run_id
            progress.touch()
            status = await self._wait(run.run_id)
            if status == "completed":
                return run.run_id
            attempts += 1
            await asyncio.to_thread(self._unlink, run.run_id)
            if attempts >= BATCH_ATTEMPTS:
                raise RuntimeError(f"batch {index} failed {attempts} times")

    async def _finish_going(self, going: dict[int, str]) -> dict[int, str]:
        """Batches whose run another process (or a successor of a dead one) is still driving: wait for each; a
        completed one counts, any other is unlinked (its batch is generated again)."""
        done: dict[int, str] = {}
        peers = self.coordinator.peers
        for index, run_id in going.items():
            if peers is not None and await peers.is_owned("runs", run_id):
                if await self._wait(run_id) == "completed":
                    done[index] = run_id
                    log.info("job %s: batch %d finished by run %s of another process", JOB_ID.get(), index, run_id)
                    continue
            await asyncio.to_thread(self._unlink, run_id)
        return done

    async def _wait(self, run_id: str) -> str:
        """The run's persisted status once the coordinator has saved its evidence and result."""
        while True:
            status = await asyncio.to_thread(self._status, run_id)
            if status != "running":
                return status
            await asyncio.sleep(0.1)

    def _status(self, run_id: str) -> str:
        with self._sf() as s:
            row = s.get(InferenceRun, run_id)
            return "failed" if row is None else row.status

    def _link(self, job_id: str, run_id: str) -> None:
        with self._sf() as s:
            s.add(JobRun(run_id=run_id, job_id=job_id, created_at=self._clock()))
            s.commit()

    def _unlink(self, run_id: str) -> None:
        with self._sf() as s:
            s.execute(delete(JobRun).where(JobRun.run_id == run_id))
            s.commit()

    def _complete(self, job_id: str) -> None:
        with self._sf() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "running")
                .values(status="completed", updated_at=self._clock())
            )
            s.commit()

    def _fail(self, job_id: str) -> None:
        with self._sf() as s:
            job = s.get(Job, job_id)
            if job is not None and job.status == "running":
                cancel_job(s, job_id=job_id, caller=job.requester, is_admin=True, now=self._clock())
                s.commit()


# --- reading a job's outputs ---------------------------------------------------------------------------------


def job_outputs(
    session: Session,
    *,
    job: Job,
    encode: Callable[[list[str]], list[list[int]]],
    decode: Callable[[list[int]], str] | None,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Per prompt (in the spec's order): the prompt, generated tokens and text, from the job's completed runs
    (each matched to its batch by its prompt ids)."""
    spec = InferenceSpec.model_validate(job.spec)
    runs = (
        session.execute(
            select(InferenceRun)
            .join(JobRun, JobRun.run_id == InferenceRun.id)
            .where(JobRun.job_id == job.id, InferenceRun.status == "completed")
        )
        .scalars()
        .all()
    )
    out = []
    for b, prompts in enumerate(batches(spec.prompts, batch_size)):
        ids = encode(prompts)
        run = next((r for r in runs if r.params.get("prompt_ids") == ids), None)
        for i, prompt in enumerate(prompts):
            toks = run.tokens[i] if run is not None and run.tokens is not None else None
            reasons = (run.params.get("finish_reasons") or []) if run is not None else []
            out.append(
                {
                    "index": b * batch_size + i,
                    "prompt": prompt,
                    "tokens": toks,
                    "run_id": run and run.id,
                    "text": None if toks is None or decode is None else cut_at_stop(decode(toks), spec.stop),
                    "finish_reason": reasons[i] if i < len(reasons) else None,
                }
            )
    return out
