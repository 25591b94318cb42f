"""`WorkSource` over the inference runtime: what the coordinator recorded, and replays through the market.

- parts: per escrowed job, its inference runs (`job_runs`); per run, one part per (worker, stage) that signed a
  task root (`stage_commitments` with no chunk index). The expected scope is the one the coordinator issued:
  (chain, keccak256(run id), keccak256("<run id>/stage/<first layer>"), first layer, the run's job nonce).
  Units = output rows the worker committed to (one token position through one stage).
- commitments: the stored signed chunk commitments; Merkle proofs from the tree over all of the part's chunks.
- replicas and replays: the market's `/v1/verification/*` endpoints (the coordinator holds the workers'
  sockets); one replay per sampled sequence (a session of it up to its last committed chunk on the replica),
  whose rows answer every chunk of that sequence (kept in a small LRU while its chunks are compared).

A job's parts and each part's parsed commitments + Merkle tree are cached (bounded LRU): a completed job's
evidence never changes, and a long job has hundreds of sampled chunks, each its own check.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import httpx
import torch
from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from globai.client import MarketError, check, sign_in
from globai.errors import GlobaiError
from globai.models.manifest import Manifest, load_manifest
from globai.protocol import merkle
from globai.protocol.commitments import SignedCommitment, SignedRoot, tensor_sha256
from globai.protocol.scopes import stage_scope
from globai.protocol.signing import ChunkScope, sent_digest, verify_signer
from globai.protocol.tensors import Message, decode_message
from market.blobstore import BlobNotFound, BlobStore
from market.coordinator.verify_replay import with_claimed_padding
from market.db import JobRun, Worker
from market.db.inference import InferenceRun, StageCommitment, StageRecord, StageViolation
from market.domain_errors import NotFound
from market.services.verification import (
    BindingFault,
    ClaimedPart,
    HopRerun,
    ReplayReceipt,
    Replica,
    ReplicaUnavailable,
)
from market.verifier.disputes import ProjectedRows

MAX_REPLAY_BYTES = 1 << 30


class MarketVerifierClient:
    """The verifier's HTTP client to the market (signed in as admin with the operator key)."""

    def __init__(self, market_url: str, account: LocalAccount, *, timeout: float = 120.0) -> None:
        # One URL (a load balancer's) or several market processes' ("a,b"): an unreachable one hands over to the
        # next, and the caller's retry goes there.
        self.urls = [u.strip().rstrip("/") for u in market_url.split(",") if u.strip()]
        self.http = httpx.Client(base_url=self.urls[0], timeout=timeout)
        self.account = account
        self._token: str | None = None
        self._lock = threading.Lock()

    def _headers(self, fresh: bool = False) -> dict[str, str]:
        with self._lock:
            if self._token is None or fresh:
                try:
                    self._token = sign_in(self.http, self.account, ["admin"])
                except httpx.HTTPError as exc:
                    self._next_market(exc)
                    raise ReplicaUnavailable(f"market unreachable: {type(exc).__name__}") from None
            return {"Authorization": f"Bearer {self._token}"}

    def _next_market(self, exc: Exception) -> None:
        if isinstance(exc, httpx.TransportError) and len(self.urls) > 1:
            here = str(self.http.base_url).rstrip("/")
            at = self.urls.index(here) if here in self.urls else 0
            self.http.base_url = httpx.URL(self.urls[(at + 1) % len(self.urls)])

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, headers=self._headers(), **kw)
            if response.status_code == 401:
                response = self.http.request(method, path, headers=self._headers(fresh=True), **kw)
        except httpx.HTTPError as exc:
            self._next_market(exc)
            raise ReplicaUnavailable(f"market unreachable: {type(exc).__name__}") from None
        if response.status_code in (409, 500, 502, 503, 504):  # the market busy or restarting: retried
            raise ReplicaUnavailable(f"{path}: HTTP {response.status_code} {response.text[:200]}")
        return check(response)

    def replicas(self, model: str, layer_start: int, layer_end: int, worker: str | None = None) -> list[Replica]:
        params: dict[str, Any] = {"model": model, "layer_start": layer_start, "layer_end": layer_end}
        if worker is not None:
            params["worker"] = worker  # a chain is offered only of workers of other operators than its
        rows = self._request("GET", "/v1/verification/replicas", params=params).json()
        return [
            Replica(
                to_checksum_address(r["address"]),
                r["operator_id"],
                float(r.get("weight", 1.0)),
                tuple(
                    (
                        to_checksum_address(h["address"]),
                        str(h["operator_id"]),
                        int(h["layer_start"]),
                        int(h["layer_end"]),
                    )
                    for h in r.get("chain") or []
                ),
            )
            for r in rows
        ]

    def replay(
        self, run_id: str, layer_start: int, worker: str, replica: str, chunk_index: int
    ) -> tuple[torch.Tensor, list[int], ReplayReceipt]:
        """(the replica's rows of the chunk [n, width], the committed positions they are at (padding excluded),
        its receipt: the digest it signed over the answer holding them, its signature, the positions it ran)."""
        body = {"run_id": run_id, "layer_start": layer_start, "worker": worker, "chunk_index": chunk_index}
        message = self._on_replica("/v1/verification/replay", body, replica)
        receipt = ReplayReceipt(
            str(message.header.get("sent_digest") or ""),
            str(message.header.get("sent_signature") or ""),
            int(message.header.get("units") or 0),
            str(message.header.get("replay_id") or ""),
            str(message.header.get("transcript") or ""),
        )
        positions = [int(p) for p in message.header.get("positions") or []]
        return message.tensors[0][0], positions, receipt

    def _on_replica(self, path: str, body: dict[str, Any], replica: str) -> Message:
        """POST `body` naming `replica` (an address, or a chain's addresses joined by "+", in layer order); the
        market's binary answer."""
        hops = replica.split("+")
        body = {**body, "replica": hops[0], **({"chain": hops} if len(hops) > 1 else {})}
        try:
            raw = self._request("POST", path, json=body).content
        except MarketError as exc:
            raise ReplicaUnavailable(str(exc)) from None
        return decode_message(raw, max_bytes=MAX_REPLAY_BYTES)

    def rerun(self, transcript: str, hop: int, replica: str) -> HopRerun:
        """Hop `hop` of a chain replay's transcript re-run alone on `replica` (an address, or a chain's joined by
        "+"): the hop's own answers and the replica's, at the same rows."""
        message = self._on_replica("/v1/verification/rerun", {"transcript": transcript, "hop": hop}, replica)
        h = message.header
        return HopRerun(
            claimed=message.tensors[0],
            rerun=message.tensors[1][0],
            input_bound=bool(h.get("input_bound")),
            digest=str(h.get("sent_digest") or ""),
            signature=str(h.get("sent_signature") or ""),
            units=int(h.get("units") or 0),
            replay_id=str(h.get("replay_id") or ""),
        )


class InferenceWorkSource:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        client: MarketVerifierClient,
        *,
        chain_id: int,
        models_dir: Path,
        blob_dir: Path | None = None,
        cache_size: int = 64,
    ) -> None:
        self.sessions = sessions
        self.client = client
        self.chain_id = chain_id
        self.models_dir = Path(models_dir)
        self._manifests: dict[str, Manifest] = {}
        # per (run, stage, worker, replica, sequence): the replica's rows, their positions and its receipt (signed
        # digest, units, replay id); a sequence's chunks are compared one after the other (`run_check`), so a few
        # are enough
        self._replays: OrderedDict[tuple[str, int, str, str, int], tuple[torch.Tensor, list[int], ReplayReceipt]] = (
            OrderedDict()
        )
        self._replay_cache_size = 4
        self._parts: OrderedDict[str, list[ClaimedPart]] = OrderedDict()
        self._trees: OrderedDict[str, tuple[dict[int, SignedCommitment], merkle.MerkleTree]] = OrderedDict()
        self._cache_size = cache_size
        self._held: OrderedDict[tuple[str, int, str], tuple[dict[tuple[int, int], torch.Tensor], int | None]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()
        self.blobs = BlobStore(Path(blob_dir)) if blob_dir is not None else None

    # --- helpers -------------------------------------------------------------------------------------------
    def _manifest(self, model: str) -> Manifest:
        if model not in self._manifests:
            # By manifest name, as the market's catalog serves it (the folder may be named differently).
            from market.coordinator.catalog import ModelCatalog

            served = ModelCatalog(self.models_dir).get(model)
            self._manifests[model] = served.manifest if served is not None else load_manifest(self.models_dir / model)
        return self._manifests[model]

    @staticmethod
    def _key(run_id: str, stage: int, worker: str) -> str:
        return f"{run_id}/{stage}/{worker}"

    @staticmethod
    def _split(work_key: str) -> tuple[str, int, str]:
        run_id, stage, worker = work_key.split("/")
        return run_id, int(stage), worker

    def _scope(self, run: InferenceRun, stage: int) -> ChunkScope:
        # The scope the coordinator issued (market.coordinator.service.Coordinator.start, scope_for).
        return stage_scope(self.chain_id, run.id, stage, bytes.fromhex(run.job_nonce.removeprefix("0x")))

    def _width(self, manifest: Manifest, layer_end: int) -> int:
        return manifest.vocab_size if layer_end == manifest.num_layers else manifest.hidden_size

    def _chunks(self, session: Session, run_id: str, stage: int, worker: str, width: int) -> list[SignedCommitment]:
        rows = session.scalars(
            select(StageCommitment).where(
                StageCommitment.run_id == run_id,
                StageCommitment.stage == stage,
                StageCommitment.worker_address == worker,
                StageCommitment.chunk_index.is_not(None),
            )
        ).all()
        return [SignedCommitment.from_json(r.body, hidden=width) for r in rows]

    def _cached(self, cache: OrderedDict[Any, Any], key: Any, make: Any) -> Any:
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        value = make()
        with self._lock:
            cache[key] = value
            while len(cache) > self._cache_size:
                cache.popitem(last=False)
        return value

    # --- WorkSource ----------------------------------------------------------------------------------------
    def parts(self, job_id: str) -> list[ClaimedPart]:
        return list(self._cached(self._parts, job_id, lambda: self._load_parts(job_id)))

    def _load_parts(self, job_id: str) -> list[ClaimedPart]:
        out: list[ClaimedPart] = []
        with self.sessions() as session:
            run_ids = session.scalars(select(JobRun.run_id).where(JobRun.job_id == job_id)).all()
            operators = {w.address: w.operator_id for w in session.scalars(select(Worker))}
            for run_id in sorted(run_ids):
                run = session.get(InferenceRun, run_id)
                if run is None:
                    raise NotFound("inference run", run_id)
                manifest = self._manifest(run.model)
                ends = {
                    (r.layer_start, r.worker_address): r.layer_end
                    for r in session.scalars(select(StageRecord).where(StageRecord.run_id == run_id))
                }
                roots = session.scalars(
                    select(StageCommitment).where(
                        StageCommitment.run_id == run_id, StageCommitment.chunk_index.is_(None)
                    )
                ).all()
                for root in sorted(roots, key=lambda r: (r.stage, r.worker_address)):
                    worker, stage = to_checksum_address(root.worker_address), root.stage
                    layer_end = ends.get((stage, root.worker_address), stage + 1)
                    scope = self._scope(run, stage)
                    chunks = self._chunks(session, run_id, stage, root.worker_address, self._width(manifest, layer_end))
                    signed_root = SignedRoot(
                        scope,
                        int(root.body["chunk_count"]),
                        bytes.fromhex(str(root.body["root"])[2:]),
                        bytes.fromhex(str(root.body["signature"])[2:]),
                    )
                    out.append(
                        ClaimedPart(
                            work_key=self._key(run_id, stage, root.worker_address),
                            worker=worker,
                            operator_id=operators.get(worker, worker.lower()),
                            stage=stage,
                            layer_start=stage,
                            layer_end=layer_end,
                            units=sum(c.commitment.sketch[4] for c in chunks),
                            dtype=manifest.precision,  # quantised formats have their own tolerances
                            scope=scope,
                            signed_root=signed_root,
                            model=manifest.name,
                            chunk_indices=tuple(sorted(c.commitment.chunk_index for c in chunks)),
                        )
                    )
        return out

    def commitment(self, job_id: str, work_key: str, chunk_index: int) -> tuple[SignedCommitment, list[bytes]]:
        by_index, tree = self._cached(self._trees, work_key, lambda: self._load_tree(work_key))
        signed = by_index[chunk_index]
        return signed, tree.proof(signed.commitment.leaf)

    def _load_tree(self, work_key: str) -> tuple[dict[int, SignedCommitment], merkle.MerkleTree]:
        run_id, stage, worker = self._split(work_key)
        with self.sessions() as session:
            run = session.get(InferenceRun, run_id)
            if run is None:
                raise NotFound("inference run", run_id)
            manifest = self._manifest(run.model)
            end = session.scalar(
                select(StageRecord.layer_end)
                .where(
                    StageRecord.run_id == run_id, StageRecord.layer_start == stage, StageRecord.worker_address == worker
                )
                .limit(1)
            )
            chunks = self._chunks(session, run_id, stage, worker, self._width(manifest, end or stage + 1))
        tree = merkle.MerkleTree([c.commitment.leaf for c in chunks])
        return {c.commitment.chunk_index: c for c in chunks}, tree

    def replicas(self, job_id: str, part: ClaimedPart) -> list[Replica]:
        run_id, _, _ = self._split(part.work_key)
        with self.sessions() as session:
            run = session.get(InferenceRun, run_id)
            model = run.model if run is not None else ""
        return self.client.replicas(model, part.layer_start, part.layer_end, part.worker)

    def _sequence_replay(
        self, part: ClaimedPart, chunk_index: int, replica: str
    ) -> tuple[torch.Tensor, list[int], ReplayReceipt]:
        """The replica's replay of the chunk's whole sequence (up to its last committed chunk), once per sequence:
        (rows, the committed position of each, evidence)."""
        run_id, stage, worker = self._split(part.work_key)
        seq = chunk_index >> 32
        last = max((c for c in part.chunk_indices if c >> 32 == seq), default=chunk_index)
        key = (run_id, stage, worker, replica, seq)
        with self._lock:
            if key in self._replays:
                self._replays.move_to_end(key)
                return self._replays[key]
        value = self.client.replay(run_id, stage, worker, replica, max(last, chunk_index))
        with self._lock:
            self._replays[key] = value
            while len(self._replays) > self._replay_cache_size:
                self._replays.popitem(last=False)
        return value

    def replay(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> torch.Tensor:
        """The replica's rows of the chunk, from the replay of its whole sequence. A replay leaves out the
        sequence's left padding (ordinary work never pads a batch of 1): rows at padding positions are outputs no
        real token reads, and are taken as the worker sent them (not compared)."""
        rows, positions, _ = self._sequence_replay(part, chunk_index, replica)
        lo = (chunk_index & 0xFFFFFFFF) * 32
        idx = [i for i, p in enumerate(positions) if lo <= p < lo + 32]
        return self._with_padding(part, chunk_index, rows[idx].contiguous(), [positions[i] for i in idx])

    def _with_padding(
        self, part: ClaimedPart, chunk_index: int, rows: torch.Tensor, positions: list[int]
    ) -> torch.Tensor:
        if self.blobs is None:
            return rows
        kept, seed = self._kept(part)
        seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
        committed = [p for p in range(pc * 32, pc * 32 + 32) if (seq, p) in kept]
        if seed is not None:  # logits rows: never at padding positions
            return rows
        claimed = torch.stack([kept[(seq, p)] for p in committed])
        return with_claimed_padding(rows, positions, committed, claimed)

    def replay_evidence(self, job_id: str, part: ClaimedPart, chunk_index: int, replica: str) -> ReplayReceipt:
        return self._sequence_replay(part, chunk_index, replica)[2]

    def rerun_hop(self, job_id: str, part: ClaimedPart, transcript: str, hop: int, replica: str) -> HopRerun:
        return self.client.rerun(transcript, hop, replica)

    def held(self, job_id: str, part: ClaimedPart, chunk_index: int) -> torch.Tensor | ProjectedRows | None:
        if self.blobs is None:
            return None
        rows, seed = self._kept(part)
        seq, pc = chunk_index >> 32, chunk_index & 0xFFFFFFFF
        got = [rows[(seq, p)] for p in range(pc * 32, pc * 32 + 32) if (seq, p) in rows]
        if not got:
            return None
        stacked = torch.stack(got).contiguous()
        return stacked if seed is None else ProjectedRows(stacked, seed)

    def _kept(self, part: ClaimedPart) -> tuple[dict[tuple[int, int], torch.Tensor], int | None]:
        """Every row the worker sent on the part's stage by (sequence, position), and the projection seed."""
        run_id, stage, worker = self._split(part.work_key)
        key = (run_id, stage, worker)
        with self._lock:
            cached = self._held.get(key)
        if cached is None:
            try:
                cached = self._load_held(part, run_id, stage, worker)
            except BlobNotFound as exc:  # the verifier must share the market's blob store (GLOBAI_BLOB_DIR)
                raise ReplicaUnavailable(f"recorded output missing: {exc}") from None
            with self._lock:
                self._held[key] = cached
                while len(self._held) > self._cache_size:
                    self._held.popitem(last=False)
        return cached

    def _load_held(
        self, part: ClaimedPart, run_id: str, stage: int, worker: str
    ) -> tuple[dict[tuple[int, int], torch.Tensor], int | None]:
        """Every row the worker sent on this stage, by (sequence, position), each answer checked against the
        hash the worker signed for it (`signing.sent_digest`); for last-token logits the market's projections
        of those rows and their seed."""
        with self.sessions() as session:
            records = session.scalars(
                select(StageRecord)
                .where(
                    StageRecord.run_id == run_id,
                    StageRecord.layer_start == stage,
                    StageRecord.worker_address == worker,
                    StageRecord.output_blob.is_not(None),
                )
                .order_by(StageRecord.step)
            ).all()
        rows: dict[tuple[int, int], torch.Tensor] = {}
        seed: int | None = None
        for rec in records:
            assert self.blobs is not None
            request = decode_message(self.blobs.get(rec.input_blob), max_bytes=MAX_REPLAY_BYTES)
            kept = decode_message(self.blobs.get(str(rec.output_blob)), max_bytes=MAX_REPLAY_BYTES)
            output = kept.tensors[0]
            first = int(request.header["first_position"])
            if kept.header.get("op") == "projection":  # logits: the last position of the step
                seed = int(kept.header["seed"])
                first += int(request.tensors[0].shape[1]) - int(output.shape[1])
            else:
                sha = tensor_sha256(output)
                signed = rec.sent_signature is not None and verify_signer(
                    sent_digest(part.scope, rec.step, int(request.header["first_position"]), sha),
                    bytes.fromhex(rec.sent_signature[2:]),
                    part.worker,
                )
                if sha.hex() != rec.output_sha256 or not signed:
                    raise GlobaiError(f"stage record {rec.id}: stored output does not match the worker's signed hash")
            for seq in range(output.shape[0]):
                for t in range(output.shape[1]):
                    rows[(seq, first + t)] = output[seq, t]
        return rows, seed

    def violations(self, job_id: str) -> list[BindingFault]:
        with self.sessions() as session:
            run_ids = session.scalars(select(JobRun.run_id).where(JobRun.job_id == job_id)).all()
            operators = {w.address: w.operator_id for w in session.scalars(select(Worker))}
            rows = session.scalars(select(StageViolation).where(StageViolation.run_id.in_(run_ids))).all()
            return [
                BindingFault(
                    work_key=self._key(v.run_id, v.stage, v.worker_address),
                    worker=to_checksum_address(v.worker_address),
                    operator_id=operators.get(to_checksum_address(v.worker_address), v.worker_address.lower()),
                    stage=v.stage,
                    layer_start=v.stage,
                    layer_end=v.layer_end,
                    chunk_index=int(v.chunk_index),
                    evidence=v.digest,
                    detail=str(v.evidence.get("detail", "")),
                    signature=str((v.evidence.get("commitment") or {}).get("signature", "")),
                )
                for v in rows
            ]


def source_from_settings(settings: Any) -> InferenceWorkSource:
    from eth_account import Account

    from globai.errors import ConfigError
    from market.db.engine import make_engine, make_session_factory

    if settings.operator_private_key is None:
        raise ConfigError("GLOBAI_OPERATOR_PRIVATE_KEY is needed to sign in to the market for replays")
    account = Account.from_key(settings.operator_private_key.get_secret_value())
    sessions = make_session_factory(make_engine(settings.database_url, pool_size=2))
    return InferenceWorkSource(
        sessions,
        MarketVerifierClient(settings.market_url, account),
        chain_id=settings.chain_id,
        models_dir=Path(settings.models_dir),
        blob_dir=Path(settings.blob_dir),
    )
