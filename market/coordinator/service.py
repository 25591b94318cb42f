"""The coordinator inside the market process: connected workers, route planning and running generations.

Built once per app (`create_app`, on its `AppContext`); routes reach it through `CoordinatorDep`. It never raises
HTTP errors.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from globai.logs import RUN_ID
from globai.protocol.pipeline import StageLimits
from globai.protocol.sampling import SamplingParams
from globai.protocol.scopes import stage_scope
from globai.protocol.signing import ChunkScope
from market import metrics
from market.blobstore import BlobStore
from market.coordinator.catalog import ModelCatalog, ServedModel
from market.coordinator.challenge import (
    REFERENCE_MAX_BYTES,
    ChallengeFailed,
    References,
    build_challenge,
    judge,
    run_challenge,
)
from market.coordinator.chat import render_chat
from market.coordinator.links import LinkRegistry, StageFailed, WorkerGone, WorkerLink
from market.coordinator.peers import PeerConfig, Peers
from market.coordinator.pipeline import GenerationFailed, PipelineRun, RouteUnavailable
from market.coordinator.records import finish_run, save_evidence
from market.coordinator.routing import RouteCandidate, plan_route, plan_span
from market.coordinator.stopping import validate_stops
from market.db import Worker
from market.db.inference import InferenceRun
from market.domain_errors import InvalidRequest, NotFound
from market.scheduler.reputation import Reputation
from market.services.verification import VerifierConfig
from market.services.workers import record_outcome, worker_reputation
from market.verifier.compare import load_tolerances

log = logging.getLogger(__name__)
KEEP_FINISHED_RUNS = 256


@dataclass(frozen=True)
class CoordinatorConfig:
    models_dir: Path
    blob_dir: Path
    chain_id: int
    call_timeout_s: float = 60.0
    retention_s: float = 7 * 24 * 3600.0
    standbys: int = 1
    max_batch: int = 8
    max_new_tokens: int = 512
    join_challenge: bool = True  # a challenge forward before a new link is routable (`challenge.py`)
    reference_max_bytes: int = REFERENCE_MAX_BYTES  # models up to this size are checked against the market's own run
    tolerances_path: str = ""  # the verifier's calibration (empty: shipped defaults)


Messages = Sequence[Mapping[str, str]]  # one conversation: [{"role": "user", "content": "..."}, ...]


@dataclass(frozen=True)
class Completion:
    """A finished generation, per sequence: new tokens (up to and including the one that stopped it), the text
    (without a stop string), why it ended ("stop": EOS or a stop string; "length": max_new_tokens) and the
    prompt's length in tokens."""

    run_id: str
    tokens: list[list[int]]
    text: list[str]
    finish_reason: list[str]
    prompt_tokens: list[int]


class Coordinator:
    def __init__(
        self, config: CoordinatorConfig, session_factory: sessionmaker[Session], clock: Callable[[], datetime]
    ) -> None:
        self.config = config
        self.catalog = ModelCatalog(config.models_dir)
        self.blobs = BlobStore(config.blob_dir)
        self.links = LinkRegistry()
        self.peers: Peers | None = None  # set by `share`: other market processes serve the same swarm
        self.runs: dict[str, PipelineRun] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self._session_factory = session_factory
        self._clock = clock
        self._rng = random.Random(secrets.randbits(64))
        self._standing_at = 0.0
        self.references = References(config.reference_max_bytes)
        self.verifier = VerifierConfig(tolerances=load_tolerances(config.tolerances_path or None))

    # --- standing of live links (a slash or a ban takes effect at once, not at the next reconnect) ------------
    def read_standing(self, addresses: set[str]) -> dict[str, tuple[str | None, Reputation | None]]:
        """Per address: why its links must close (None: still fine) and its current reputation. DB only."""
        now = self._clock()
        out: dict[str, tuple[str | None, Reputation | None]] = {}
        with self._session_factory() as session:
            rows = {w.address: w for w in session.scalars(select(Worker).where(Worker.address.in_(addresses)))}
            for address in addresses:
                w = rows.get(address)
                if w is None:
                    out[address] = (None, None)
                elif w.status == "banned":
                    out[address] = ("banned", None)
                elif not w.eligible:
                    out[address] = ("no longer eligible (stake)", None)
                else:
                    out[address] = (None, worker_reputation(session, worker_id=w.id, now=now))
        return out

    def apply_standing(self, standing: dict[str, tuple[str | None, Reputation | None]]) -> None:
        """In the event loop: close the links of banned / ineligible workers, update everyone's reputation."""
        for link in self.links.live():
            closing, rep = standing.get(link.address, (None, None))
            if closing is not None:
                log.warning("closing link of %s: %s", link.address, closing)
                link.disconnect = True  # its socket closes too: a banned or unstaked worker cannot reconnect
                self.links.remove(link.link_id, closing)
            elif rep is not None:
                link.reputation = rep

    async def refresh_standing_async(self, *, max_age_s: float = 0.5) -> None:
        """Refresh (at most every `max_age_s`) before a route is planned or replicas are listed, with the DB read
        off the event loop: on SQLite a read waits for the write lock (BEGIN IMMEDIATE, up to 30 s while the
        Celery verifier writes), which must not stall every socket."""
        at = time.monotonic()
        if at - self._standing_at < max_age_s:
            return
        self._standing_at = at
        addresses = {lnk.address for lnk in self.links.live()}
        if addresses:
            self.apply_standing(await asyncio.to_thread(self.read_standing, addresses))

    async def watch_standing(self, interval_s: float = 1.0) -> None:
        """Background loop: slashes and bans reach live links within `interval_s` even with no new routes."""
        while True:
            await asyncio.sleep(interval_s)
            addresses = {lnk.address for lnk in self.links.live()}
            if not addresses:
                continue
            try:
                standing = await asyncio.to_thread(self.read_standing, addresses)
            except Exception:  # a DB hiccup must not end the loop
                log.exception("reading worker standing failed")
                continue
            self.apply_standing(standing)
            self._standing_at = time.monotonic()

    # --- admission: the challenge forward at join ---------------------------------------------------------------
    async def admit(self, link: WorkerLink) -> bool:
        """Challenge a new link before it becomes routable (`challenge.py`); True: add it to the registry.

        Its timed answer is its first observed speed, so its declared figures are capped before any route uses
        it. A wrong answer keeps it out of every route and counts as a failed check on its reputation: against
        the market's own reference, or when two replicas of other operators disagree with it. One disagreeing
        replica with no second opinion decides nothing (it may be the liar: an incumbent cheater must not keep
        honest newcomers off its layers): the link is admitted, and as a new worker its work is sampled at the
        new-worker rate. Unanswered: kept out."""
        served = self.catalog.get(link.model)
        if not self.config.join_challenge or served is None or served.manifest.task != "causal-lm":
            return True
        layers = (link.layer_start, link.layer_end)
        seed = secrets.randbits(62)
        try:
            challenge = await asyncio.to_thread(build_challenge, served, layers, seed=seed, references=self.references)
        except Exception:  # the market's own fault (e.g. its copy of the model): not held against the worker
            log.exception("join challenge for %s could not be built; admitted on its declared figures", link.address)
            return True
        timeout, chain_id = self.config.call_timeout_s, self.config.chain_id
        try:
            answer = await run_challenge(link, challenge, chain_id=chain_id, timeout=timeout)
        except (WorkerGone, StageFailed, ChallengeFailed) as exc:
            log.warning("worker %s not admitted: the join challenge failed: %s", link.address, exc)
            return False
        for positions, wall_ms, compute_ms in answer.timings:
            link.observe(positions, wall_ms, compute_ms)
        tol = self.verifier.tolerance(served.manifest.name, served.manifest.precision)
        if challenge.expected is not None:
            verdict = judge(answer, challenge.expected, tol)
            if not verdict.ok:
                await asyncio.to_thread(self._challenge_failed, link, f"the market's reference: {verdict.reason}")
            return verdict.ok
        against: list[str] = []
        for replica in self._challenge_replicas(link):
            try:
                other = await run_challenge(replica, challenge, chain_id=chain_id, timeout=timeout)
            except (WorkerGone, StageFailed, ChallengeFailed) as exc:
                log.info("join challenge of %s: replica %s did not answer: %s", link.address, replica.address, exc)
                continue
            verdict = judge(answer, other.rows, tol)
            if verdict.ok:
                return True
            against.append(replica.address)
            if len(against) >= 2:
                detail = f"replicas {', '.join(against)} ({verdict.reason})"
                await asyncio.to_thread(self._challenge_failed, link, detail)
                return False
        if against:
            log.warning(
                "worker %s admitted: replica %s disagrees with it and no second replica could decide",
                link.address,
                against[0],
            )
            return True
        log.info("worker %s admitted on its timed challenge alone (no reference, no replica)", link.address)
        return True

    def _challenge_replicas(self, link: WorkerLink, n: int = 2) -> list[WorkerLink]:
        """Up to `n` live links of other operators serving exactly the same layers, in random order."""
        same = [
            lnk
            for lnk in self.links.live(link.model)
            if (lnk.layer_start, lnk.layer_end) == (link.layer_start, link.layer_end)
            and lnk.operator_id != link.operator_id
            and lnk.address != link.address
        ]
        self._rng.shuffle(same)
        picked: list[WorkerLink] = []
        for lnk in same:
            if lnk.operator_id not in {p.operator_id for p in picked}:
                picked.append(lnk)
        return picked[:n]

    def _challenge_failed(self, link: WorkerLink, detail: str) -> None:
        log.warning("worker %s not admitted: wrong answer to the join challenge (%s)", link.address, detail)
        with self._session_factory() as session:
            record_outcome(
                session,
                worker_id=link.worker_id,
                kind="fail",
                now=self._clock(),
                detail=f"wrong answer to the join challenge on [{link.layer_start}, {link.layer_end}): {detail}",
            )
            session.commit()

    # --- routing ---------------------------------------------------------------------------------------------
    def candidates(self, model: str) -> list[RouteCandidate]:
        return [lnk.candidate() for lnk in self.links.live(model)]

    def plan(self, served: ServedModel) -> list[tuple[WorkerLink, list[WorkerLink]]]:
        hops = plan_route(
            served.manifest.num_layers,
            self.candidates(served.manifest.name),
            standbys=self.config.standbys,
            rng=self._rng,
        )
        if hops is None:
            coverage = self.links.coverage(served.manifest.name, served.manifest.num_layers)
            gaps = [i for i, c in enumerate(coverage) if c == 0]
            detail = f"layers {gaps} have no worker" if gaps else "connected ranges do not chain"
            raise RouteUnavailable(f"{served.manifest.name}: {detail}")
        return [(self._link(h.primary), [self._link(s) for s in h.standbys]) for h in hops]

    def replan(
        self, model: str, start: int, end: int, exclude: set[str]
    ) -> list[tuple[WorkerLink, list[WorkerLink]]] | None:
        path = plan_span(start, end, self.candidates(model), exclude=exclude)
        return None if path is None else [(self._link(c.link_id), []) for c in path]

    def _link(self, link_id: str) -> WorkerLink:
        link = self.links.get(link_id)
        assert link is not None  # candidates come from live links in the same event-loop turn
        return link

    # --- generations -----------------------------------------------------------------------------------------
    def encode_prompts(
        self,
        model: str,
        prompts: list[str] | None,
        prompt_ids: list[list[int]] | None,
        messages: Sequence[Messages] | None = None,
    ) -> list[list[int]]:
        """Token ids per sequence from exactly one of: ids, plain prompts, or conversations (chat template)."""
        if prompt_ids is not None:
            return prompt_ids
        tokenizer = self.catalog.tokenizer(model)
        if tokenizer is None:
            raise InvalidRequest(f"model {model} has no tokenizer: send prompt_ids")
        if messages is not None:
            served = self.catalog.get(model)
            if served is None:
                raise NotFound("model", model)
            return [render_chat(tokenizer, served.manifest, conversation) for conversation in messages]
        return [tokenizer.encode(p).ids for p in prompts or []]

    def check_scoring(self, model: str, ids: Sequence[Sequence[int]]) -> None:
        """A scoring prefill's logits (every prompt row of every sequence) must fit one answer: at most
        `StageLimits.max_scoring_rows` rows in all; and the prompts must be of one length (a padded row's logits
        are no token's, and the verifier leaves padding out of its replays). InvalidRequest naming the limit."""
        served = self.catalog.get(model)
        if served is None:
            raise NotFound("model", model)
        limit = StageLimits.for_manifest(served.manifest, max_batch=self.config.max_batch).max_scoring_rows
        rows = sum(len(r) for r in ids)
        if rows > limit:
            raise InvalidRequest(
                f"scoring a prompt (echo with logprobs) is limited to {limit} prompt tokens in all for {model} "
                f"(n x prompt tokens); got {rows}"
            )
        if len({len(r) for r in ids}) > 1:
            raise InvalidRequest("scoring prompts (echo with logprobs): every prompt must have the same token count")

    def decoder(self, model: str) -> Callable[[list[int]], str] | None:
        tokenizer = self.catalog.tokenizer(model)
        if tokenizer is None:
            return None
        return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)

    async def start(
        self,
        *,
        requester: str,
        model: str,
        prompts: list[str] | None,
        prompt_ids: list[list[int]] | None,
        max_new_tokens: int,
        sampling: SamplingParams,
        messages: Sequence[Messages] | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
        top_logprobs: int | None = None,
        prompt_logprobs: bool = False,
    ) -> PipelineRun:
        """Plan a route and start generating in the background; the run's events stream as it goes.

        Give exactly one of `prompts` (text), `prompt_ids` or `messages` (one conversation per sequence, rendered
        with the model's chat template). Each sequence stops at the model's EOS ids (unless `ignore_eos`), at
        the first of the `stop` strings, or after `max_new_tokens` (0: only with `prompt_logprobs`).
        `prompt_logprobs` (with `top_logprobs`): score the prompt too (`check_scoring`), a `prompt` event.
        """
        if sum(x is not None for x in (prompts, prompt_ids, messages)) != 1:
            raise InvalidRequest("give exactly one of prompts, prompt_ids and messages")
        try:
            stops = validate_stops(stop)
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        served = self.catalog.get(model)
        if served is None:
            raise NotFound("model", model)
        manifest = served.manifest
        if manifest.task != "causal-lm":
            raise InvalidRequest(f"{model} is an embedding model; generation needs a causal LM")
        ids = self.encode_prompts(model, prompts, prompt_ids, messages)
        if not ids or len(ids) > self.config.max_batch or any(not row for row in ids):
            raise InvalidRequest(f"give 1 to {self.config.max_batch} non-empty prompts")
        if any(t < 0 or t >= manifest.vocab_size for row in ids for t in row):
            raise InvalidRequest(f"token ids must be in [0, {manifest.vocab_size})")
        limits = StageLimits.for_manifest(manifest, max_batch=self.config.max_batch)
        if max(len(r) for r in ids) + max_new_tokens > limits.max_tokens:
            raise InvalidRequest(f"prompt + max_new_tokens exceeds the model's {limits.max_tokens} positions")
        if prompt_logprobs:
            if top_logprobs is None:
                raise InvalidRequest("prompt_logprobs needs top_logprobs")
            self.check_scoring(model, ids)
        elif max_new_tokens < 1:
            raise InvalidRequest("max_new_tokens must be at least 1 unless the prompt is scored")
        gen = manifest.generation
        eos_ids = frozenset() if ignore_eos or gen is None else frozenset(gen.eos_token_ids)
        await self.refresh_standing_async()  # a slash or ban decided a moment ago already counts for this route
        hops = self.plan(served)
        now = self._clock()
        job_nonce = secrets.token_bytes(32)
        params: dict[str, Any] = {
            "prompt_ids": ids,
            "max_new_tokens": max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
            "stop": list(stops),
            "eos_token_ids": sorted(eos_ids),
        }
        if top_logprobs is not None:
            params["top_logprobs"] = top_logprobs
        if prompt_logprobs:
            params["prompt_logprobs"] = True
        row = InferenceRun(
            requester=requester,
            model=model,
            model_digest=served.digest,
            job_nonce="0x" + job_nonce.hex(),
            params=params,
            status="running",
            route=[],
            failovers=0,
            created_at=now,
        )
        run_id = await asyncio.to_thread(self._insert, row)
        if self.peers is not None:
            await self.peers.own("runs", run_id)
        return self._launch(run_id, served, hops, params, job_nonce, requester)

    def _launch(
        self,
        run_id: str,
        served: ServedModel,
        hops: list[tuple[WorkerLink, list[WorkerLink]]],
        params: Mapping[str, Any],
        job_nonce: bytes,
        requester: str,
        forced: list[list[int | None]] | None = None,
    ) -> PipelineRun:
        """A run from its stored parameters (a new one, or one taken over with the tokens it already streamed)."""
        manifest = served.manifest
        limits = StageLimits.for_manifest(manifest, max_batch=self.config.max_batch)
        gen = manifest.generation
        pad_id = gen.pad_token_id if gen is not None and gen.pad_token_id is not None else None
        pad_id = int(pad_id if pad_id is not None else manifest.config.get("pad_token_id") or 0)
        prompt, mask = left_pad(params["prompt_ids"], pad_id)

        def scope_for(stage: int) -> ChunkScope:
            return stage_scope(self.config.chain_id, run_id, stage, job_nonce)

        run = PipelineRun(
            run_id=run_id,
            manifest=manifest,
            limits=limits,
            hops=hops,
            prompt_ids=prompt,
            attention_mask=mask,
            max_new_tokens=int(params["max_new_tokens"]),
            sampling=SamplingParams(
                temperature=float(params["temperature"]), top_p=float(params["top_p"]), seed=int(params["seed"])
            ),
            scope_for=scope_for,
            replan=lambda a, b, ex: self.replan(manifest.name, a, b, ex),
            call_timeout_s=self.config.call_timeout_s,
            decode=self.decoder(manifest.name),
            eos_ids=frozenset(params["eos_token_ids"]),
            stop=tuple(params["stop"]),
            pad_id=pad_id,
            top_logprobs=params.get("top_logprobs"),
            prompt_logprobs=bool(params.get("prompt_logprobs")),
            forced=forced,
        )
        run.requester = requester  # type: ignore[attr-defined]
        if self.peers is not None:
            peers = self.peers
            run.on_emit = lambda event: peers.record_event(run_id, event)
        self.runs[run_id] = run
        task = asyncio.create_task(self._drive(run), name=f"run-{run_id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return run

    async def complete(
        self,
        *,
        requester: str,
        model: str,
        max_new_tokens: int,
        sampling: SamplingParams | None = None,
        prompts: list[str] | None = None,
        prompt_ids: list[list[int]] | None = None,
        messages: Sequence[Messages] | None = None,
        stop: Sequence[str] = (),
        ignore_eos: bool = False,
    ) -> Completion:
        """Generate and wait for the end: `start` (same arguments) then the finished run's result.

        Raises `RouteUnavailable` when no chain of workers serves the model and `GenerationFailed` when the
        run fails (e.g. failovers exhausted); bad requests raise `InvalidRequest`/`NotFound`.
        """
        run = await self.start(
            requester=requester,
            model=model,
            prompts=prompts,
            prompt_ids=prompt_ids,
            messages=messages,
            max_new_tokens=max_new_tokens,
            sampling=sampling or SamplingParams(),
            stop=stop,
            ignore_eos=ignore_eos,
        )
        async for event in run.stream():
            if event["event"] == "error":
                raise GenerationFailed(str(event.get("detail")))
        return Completion(
            run_id=run.run_id,
            tokens=[list(t) for t in run.tokens],
            text=run.texts,
            finish_reason=[str(r) for r in run.finish_reasons],
            prompt_tokens=run.prompt_tokens,
        )

    def _insert(self, row: InferenceRun) -> str:
        with self._session_factory() as session:
            session.add(row)
            session.commit()
            return row.id

    async def _drive(self, run: PipelineRun) -> None:
        RUN_ID.set(run.run_id)  # this task's context: every log line of the generation carries the run id
        model = run.manifest.name
        metrics.SESSIONS_ACTIVE.labels(model).inc()
        status, error, tokens = "completed", None, None
        log.info(
            "run %s: %s, %d sequence(s), route %s",
            run.run_id,
            model,
            len(run.tokens),
            " -> ".join(f"[{h['layers'][0]}, {h['layers'][1]}) {h['worker']}" for h in run.route()),
        )
        try:
            tokens = await run.run()
            log.info(
                "run %s completed: %d tokens, %d failover(s), %.2f s",
                run.run_id,
                sum(map(len, tokens)),
                run.failovers,
                run.timings.get("total_s", 0.0),
            )
        except Exception as exc:
            status, error = "failed", str(exc)
            log.warning("run %s failed: %s", run.run_id, exc)
        finally:
            metrics.SESSIONS_ACTIVE.labels(model).dec()
            metrics.SESSIONS.labels(model, status if tokens is not None or error else "cancelled").inc()
        try:
            await asyncio.to_thread(self._persist, run, status, tokens, error)
        except Exception:
            log.exception("run %s: saving its evidence failed", run.run_id)
        if self.peers is not None:
            self.peers.release_run(run.run_id)
        for address in {v.address for v in run.evidence.violations}:  # its other runs fail over, re-run elsewhere
            for link in [lnk for lnk in self.links.live() if lnk.address == address]:
                self.links.remove(link.link_id, "signed commitment contradicts the rows it sent")
        # Finished runs stay streamable for late readers, within a bound; their results are in the database.
        finished = [rid for rid, r in self.runs.items() if r.done]
        for rid in finished[: max(0, len(finished) - KEEP_FINISHED_RUNS)]:
            del self.runs[rid]

    def _persist(self, run: PipelineRun, status: str, tokens: list[list[int]] | None, error: str | None) -> None:
        now = self._clock()
        with self._session_factory() as session:
            save_evidence(
                session,
                run_id=run.run_id,
                evidence=run.evidence,
                blobs=self.blobs,
                now=now,
                retention_s=self.config.retention_s,
            )
            finish_run(
                session,
                run_id=run.run_id,
                status=status,
                tokens=tokens,
                route=run.route(),
                failovers=run.failovers,
                error=error,
                now=now,
                finish_reasons=run.finish_reasons,
            )
            # A provable binding violation counts against the worker now (its slash comes with the job's
            # verification): reputation first, so routes and replica draws avoid it from this moment.
            for address in {v.address for v in run.evidence.violations}:
                worker = session.scalar(select(Worker).where(Worker.address == address))
                if worker is not None:
                    record_outcome(
                        session,
                        worker_id=worker.id,
                        kind="fail",
                        now=now,
                        detail=f"signed commitment contradicts its sent rows in run {run.run_id}",
                    )
            session.commit()

    # --- many market processes (peers.py) ---------------------------------------------------------------------
    def share(self, config: PeerConfig) -> Peers:
        """Serve the swarm together with the other market processes on the same Redis prefix."""
        self.peers = Peers(config, self.links)
        return self.peers

    async def watch_peers(self, interval_s: float = 0.5) -> None:
        """Background loop: links of dead processes go, their runs are taken over, runs taken from us stop."""
        assert self.peers is not None
        tick = 0
        while True:
            await asyncio.sleep(interval_s)
            tick += 1
            try:
                await self.peers.sync_links(full=tick % 10 == 0)
                for run_id in await self.peers.take_orphans("runs"):
                    task = asyncio.create_task(self.resume(run_id))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                running = [rid for rid, r in self.runs.items() if not r.done]
                mine = await self.peers.still_mine("runs", running)
                for rid in set(running) - mine:  # we were thought dead (a long stall): the successor drives it
                    log.warning("run %s was taken over by another market process; stopping here", rid)
                    self.runs[rid].done = True
                    for task in list(self.tasks):
                        if task.get_name() == f"run-{rid}":
                            task.cancel()
            except Exception:  # Redis hiccup: try again next turn
                log.exception("watching the other market processes failed")

    async def resume(self, run_id: str, *, route_wait_s: float = 60.0) -> None:
        """Drive a run whose market process died: same parameters, nonce and sampler, the streamed tokens replayed
        through a route planned now (prefill and every decode step again), then on from where it stopped."""
        assert self.peers is not None
        row = await asyncio.to_thread(self._load, run_id)
        served = self.catalog.get(row.model) if row is not None else None
        if row is None or row.status != "running" or served is None:
            self.peers.release_run(run_id)
            return
        forced: dict[int, list[int | None]] = {}
        for event in await self.peers.events(run_id):
            if event["event"] == "token":
                forced[int(event["step"])] = event["tokens"]
        steps = [forced[i] for i in range(len(forced)) if i in forced]
        deadline = time.monotonic() + route_wait_s
        while True:  # the dead process's workers are reconnecting elsewhere
            try:
                await self.refresh_standing_async(max_age_s=0.0)
                hops = self.plan(served)
                break
            except RouteUnavailable as exc:
                if time.monotonic() > deadline:
                    log.warning("run %s: no route to resume it on: %s", run_id, exc)
                    await asyncio.to_thread(self._give_up, run_id, str(exc))
                    self.peers.release_run(run_id)
                    return
                await asyncio.sleep(0.25)
        log.info("run %s resumed here after %d streamed step(s)", run_id, len(steps))
        self._launch(
            run_id, served, hops, row.params, bytes.fromhex(row.job_nonce.removeprefix("0x")), row.requester, steps
        )

    def _give_up(self, run_id: str, error: str) -> None:
        now = self._clock()
        with self._session_factory() as s:
            finish_run(s, run_id=run_id, status="failed", tokens=None, route=[], failovers=0, error=error, now=now)
            s.commit()

    def _load(self, run_id: str) -> InferenceRun | None:
        with self._session_factory() as session:
            return session.get(InferenceRun, run_id)

    async def follow(self, run_id: str) -> AsyncIterator[dict[str, Any]]:
        """A run's events wherever it runs: this process's own run, else its shared events (NotFound if none)."""
        run = self.runs.get(run_id)
        if run is not None:
            return run.stream()
        if self.peers is None or not await self.peers.has_run(run_id):
            raise NotFound("live inference run", run_id)
        return self.peers.follow(run_id)

    async def shutdown(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for link in self.links.live():
            self.links.remove(link.link_id, "market shutting down")


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T] left-padded ids and their 0/1 mask, as `generate` expects a batch of unequal prompts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.int64)
        mask[i, width - len(row) :] = 1
    return ids, mask
