"""DiLoCo training: dataset upload, job posting, progress and loss per round, checkpoints, shards, updates, model.

Requesters upload a dataset, post a job (funded like any job through /v1/jobs/{id}/escrow + confirm-funding),
watch progress and download the final model as a tar of a Hugging Face directory. Workers holding a lease on one
of the job's tasks read checkpoint manifests, tensors (content-addressed: a worker fetches only tensors it does
not have) and their task's data shard, and submit the compressed pseudo-gradient with a signed digest.
"""

from __future__ import annotations

import io
import logging
import math
import tarfile
import tempfile
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from safetensors.torch import save as st_save
from sqlalchemy import select
from sqlalchemy.orm import Session

from market.api.deps import CtxDep, NowDep, PrincipalDep, RequesterDep, SessionDep, WorkerDep, can_see_everything
from market.api.routes.jobs import escrow_params, job_out
from market.api.schemas.jobs import JobCreatedOut
from market.api.schemas.training import (
    DatasetOut,
    ManifestOut,
    PrivacyOut,
    RollbackIn,
    RollbackOut,
    RoundOut,
    SecAggMessageIn,
    SecAggReceiptOut,
    TrainingJobIn,
    TrainingProgressOut,
    UnmaskIn,
    UpdateReceiptOut,
    VerdictOut,
)
from market.config import Settings
from market.db import Job, Task
from market.db.training import TrainingJob
from market.domain_errors import Forbidden, InvalidRequest, NotFound
from market.services import workers
from market.tasks.producer import TaskProducer
from market.training import federated
from market.training import jobs as training
from market.training.checkpoints import CheckpointError
from market.training.data import shard_for
from market.training.export import export_hf, seal_model
from market.training.storage import parameter_shapes
from market.training.verify import training_verdicts

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/training", tags=["training"])

JobId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]
TaskId = Annotated[str, Path(min_length=1, max_length=36, pattern=r"^[0-9a-f-]+$")]
Sha = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
Version = Annotated[int, Path(ge=0, le=1_000_000)]
ADVANCE_TASK = "market.tasks.training.advance_training_job"
#: A job whose initial model is bigger than this is refused: the market builds checkpoint 0 itself.
MAX_INIT_PARAMS = 200_000_000

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_BINARY_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/octet-stream": _BINARY}}}


def upload_limits(settings: Settings) -> dict[str, int]:
    """Body size limits of the bulk uploads, for `BodySizeLimit`'s per-path overrides."""
    return {
        "/v1/training/datasets": settings.training_max_dataset_bytes,
        "/v1/training/tasks/": settings.training_max_update_bytes,
    }


def kick_aggregator(tasks: TaskProducer, job_id: str) -> None:
    """Ask Celery to advance the job now; if Redis is unreachable the beat tick does it later."""
    try:
        tasks.send(ADVANCE_TASK, job_id)
    except Exception as exc:  # the broker being down must never fail a worker's accepted submission
        log.warning("could not enqueue %s for %s: %s", ADVANCE_TASK, job_id, exc)


def _training_job(session: Session, job_id: str) -> tuple[Job, TrainingJob]:
    job, tj = session.get(Job, job_id), session.get(TrainingJob, job_id)
    if job is None or tj is None:
        raise NotFound("training job", job_id)
    return job, tj


def _owner_or_auditor(job: Job, principal: Any) -> bool:
    return bool(job.requester == principal.address or can_see_everything(principal))


def _require_reader(session: Session, job: Job, principal: Any, round_slot: tuple[int, int] | None = None) -> None:
    """The requester, auditors/admins, or a worker holding a live lease on a task of this job (of that round and
    slot, for shard data)."""
    if _owner_or_auditor(job, principal):
        return
    worker_id = session.scalar(workers.select_worker_id(principal.address))
    leased = (
        []
        if worker_id is None
        else session.scalars(
            select(Task).where(Task.job_id == job.id, Task.leased_by == worker_id, Task.status == "leased")
        ).all()
    )
    if leased and round_slot is None:
        return
    if any((t.payload.get("round"), t.payload.get("slot")) == round_slot for t in leased):
        return
    raise Forbidden("only the requester or a worker leasing a task of this job may read this")


# -- requester -----------------------------------------------------------------------------------------------------


@router.post("/datasets", response_model=DatasetOut, status_code=status.HTTP_201_CREATED, openapi_extra=_BINARY_BODY)
async def upload_dataset(request: Request, principal: RequesterDep, ctx: CtxDep) -> DatasetOut:
    """Upload training text (UTF-8 text or JSONL) as the raw body; returns its sha256 to name it in a job."""
    data = await request.body()
    if not data:
        raise InvalidRequest("empty dataset")
    if len(data) > ctx.settings.training_max_dataset_bytes:
        raise InvalidRequest(f"dataset over {ctx.settings.training_max_dataset_bytes} bytes")
    sha = await run_in_threadpool(ctx.training_storage.datasets.put, data)
    return DatasetOut(sha256=sha, bytes=len(data))


def _check_model_size(body: TrainingJobIn) -> None:
    config = getattr(body.spec.model, "config", None)
    if config is None:
        raise InvalidRequest("over the API a model is a config + init seed")
    try:
        n = sum(math.prod(s) for s in parameter_shapes(config).values())
    except Exception as exc:  # transformers raises many types on a bad config; the requester gets one line
        raise InvalidRequest(f"model config is not a valid Llama config ({type(exc).__name__}: {exc})"[:300]) from exc
    if n > MAX_INIT_PARAMS:
        raise InvalidRequest(f"model has {n} parameters; this market builds at most {MAX_INIT_PARAMS}")


@router.post("/jobs", response_model=JobCreatedOut, status_code=status.HTTP_201_CREATED)
def post_training_job(
    body: TrainingJobIn, principal: RequesterDep, session: SessionDep, ctx: CtxDep, now: NowDep
) -> JobCreatedOut:
    """Post a DiLoCo job on an uploaded dataset. Fund it with the returned escrow parameters, then
    POST /v1/jobs/{id}/confirm-funding: round 0's tasks are queued then."""
    _check_model_size(body)
    created_block = ctx.chain.latest_block() if ctx.chain is not None else 0
    job = training.create_training_job(
        session,
        storage=ctx.training_storage,
        requester=principal.address,
        spec=body.spec,
        dataset_sha256=body.dataset_sha256,
        budget=int(body.budget),
        price_per_unit=int(body.price_per_unit),
        deadline=body.deadline,
        verify_rate=body.verify_rate,
        chain_id=ctx.settings.chain_id,
        created_block=created_block,
        checkpoint_key=None if body.checkpoint_key is None else bytes.fromhex(body.checkpoint_key),
        now=now,
    )
    return JobCreatedOut(job=job_out(job), escrow=escrow_params(job, ctx))


@router.get("/jobs/{job_id}", response_model=TrainingProgressOut)
def get_progress(job_id: JobId, principal: PrincipalDep, session: SessionDep) -> TrainingProgressOut:
    """Progress and loss per round (held-out loss of each checkpoint, mean last-step worker loss)."""
    job, tj, rounds = training.progress(session, job_id)
    if not _owner_or_auditor(job, principal):
        raise Forbidden("not your job")
    spec = training.job_spec(tj)
    per_round = []
    for r in rounds:
        ids = r.aggregated if r.aggregated is not None else r.accepted
        excluded = 0
        if r.aggregated is not None:
            excluded = len(set(r.accepted) - set(r.aggregated))
        per_round.append(
            RoundOut(
                round=r.round,
                status=r.status,
                close_state=r.close_state,
                opened_at=r.opened_at,
                deadline_at=r.deadline_at,
                closed_at=r.closed_at,
                applied_at=r.applied_at,
                reopened=r.reopened,
                updates=len(ids),
                excluded=excluded,
                eval_loss=r.eval_loss,
                worker_loss=r.worker_loss,
                bytes_up=r.bytes_up,
                manifest_sha256=r.manifest_sha256,
                epsilon=_epsilon(spec, r.round + 1) if r.status == "applied" else None,
            )
        )
    losses = [tj.initial_eval_loss] + [r.eval_loss for r in rounds if r.status == "applied"]
    return TrainingProgressOut(
        job_id=job.id,
        status=tj.status,
        job_status=job.status,
        round=tj.round,
        rounds=spec.rounds,
        workers_per_round=spec.workers_per_round,
        version=tj.version,
        dataset_sha256=tj.dataset_sha256,
        spec_sha256=tj.spec_sha256,
        beacon=tj.beacon,
        verify_rate=tj.verify_rate,
        eval_loss=losses,
        per_round=per_round,
        privacy=_privacy(spec, sum(r.status == "applied" for r in rounds)),
    )


def _epsilon(spec: Any, rounds: int) -> float | None:
    from market.training.privacy import epsilon

    fed = spec.federated
    if fed is None or fed.noise_multiplier <= 0:
        return None
    return epsilon(fed.noise_multiplier, rounds, fed.delta)


def _privacy(spec: Any, rounds: int) -> PrivacyOut | None:
    fed = spec.federated
    if fed is None:
        return None
    return PrivacyOut(
        mode="federated",
        secure_aggregation=True,
        threshold=spec.secagg_threshold,
        clip_norm=fed.clip_norm,
        noise_multiplier=fed.noise_multiplier,
        delta=fed.delta,
        epsilon=_epsilon(spec, rounds),
        rounds_accounted=rounds,
    )


@router.get("/jobs/{job_id}/verdicts", response_model=list[VerdictOut])
def get_verdicts(job_id: JobId, principal: PrincipalDep, session: SessionDep) -> list[VerdictOut]:
    """Every slot update with its verification verdict and evidence hash (the signed update digest)."""
    job, _ = _training_job(session, job_id)
    if not _owner_or_auditor(job, principal):
        raise Forbidden("not your job")
    return [VerdictOut(**v.__dict__) for v in training_verdicts(session, job_id)]


def _tar_of(directory: FsPath) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(directory.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()


@router.get(
    "/jobs/{job_id}/model",
    response_class=Response,
    responses={200: {"content": {"application/x-tar": _BINARY}, "description": "HF model directory"}},
)
def download_model(
    job_id: JobId,
    principal: PrincipalDep,
    session: SessionDep,
    ctx: CtxDep,
    version: Annotated[int | None, Query(ge=0, le=1_000_000)] = None,
) -> Response:
    """The checkpoint (default: the latest) as a tar of a Hugging Face directory: config.json, model.safetensors,
    tokenizer files; `LlamaForCausalLM.from_pretrained(dir)` loads it."""
    job, tj = _training_job(session, job_id)
    if not _owner_or_auditor(job, principal):
        raise Forbidden("not your job")
    v = tj.version if version is None else version
    if v not in ctx.training_storage.checkpoints.versions(job_id):
        raise NotFound("checkpoint version", str(v))
    session.rollback()  # no transaction (SQLite: write lock) while exporting
    key = ctx.training_storage.checkpoints.job_key(job_id)
    with tempfile.TemporaryDirectory() as tmp:
        out = export_hf(ctx.training_storage.checkpoints, job_id, FsPath(tmp) / "model", v)
        if key is not None:  # the weights travel sealed with the requester's key: decrypted on its machine
            seal_model(out, key, job_id)
        data = _tar_of(out)
    return Response(
        data,
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="globai-{job_id}-v{v}.tar"'},
    )


# -- workers -------------------------------------------------------------------------------------------------------


@router.get("/jobs/{job_id}/checkpoints/{version}", response_model=ManifestOut)
def get_manifest(
    job_id: JobId, version: Version, principal: PrincipalDep, session: SessionDep, ctx: CtxDep
) -> ManifestOut:
    """Checkpoint manifest: tensor name → sha256 (fetch only the tensors you don't have), config, shapes."""
    job, tj = _training_job(session, job_id)
    _require_reader(session, job, principal)
    session.rollback()
    try:
        m = ctx.training_storage.manifest(job_id, version)
    except CheckpointError as exc:
        raise NotFound("checkpoint version", str(version)) from exc
    shapes = parameter_shapes(m.config)
    return ManifestOut(
        job_id=job_id,
        version=m.version,
        round=m.round,
        sha256=m.sha256,
        parent=m.parent,
        config=m.config,
        tensors=m.tensors,
        shapes={k: list(v) for k, v in shapes.items()},
        metrics=m.metrics,
    )


@router.get(
    "/jobs/{job_id}/tensors/{sha256}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": _BINARY},
            "description": "one tensor as a safetensors file (key 't'); its sha256 is the name",
        }
    },
)
def get_tensor(job_id: JobId, sha256: Sha, principal: PrincipalDep, session: SessionDep, ctx: CtxDep) -> Response:
    job, tj = _training_job(session, job_id)
    _require_reader(session, job, principal)
    versions = tj.version
    session.rollback()
    storage = ctx.training_storage
    # Only tensors of this job's checkpoints are served (newest first: workers ask for the current one).
    if not any(sha256 in storage.manifest(job_id, v).tensors.values() for v in range(versions, -1, -1)):
        raise NotFound("tensor", sha256)
    data = storage.checkpoints.tensor_bytes(sha256, storage.checkpoints.job_key(job_id))
    return Response(data, media_type="application/octet-stream")


@router.get(
    "/jobs/{job_id}/shards/{round_index}/{slot}",
    response_class=Response,
    responses={
        200: {
            "content": {"application/octet-stream": _BINARY},
            "description": "the task's token windows: safetensors, key 'windows', int64 [n, T+1]",
        }
    },
)
def get_shard(
    job_id: JobId,
    round_index: Annotated[int, Path(ge=0, le=1_000_000)],
    slot: Annotated[int, Path(ge=0, le=100_000)],
    principal: PrincipalDep,
    session: SessionDep,
    ctx: CtxDep,
) -> Response:
    job, tj = _training_job(session, job_id)
    _require_reader(session, job, principal, (round_index, slot))
    spec, dataset = training.job_spec(tj), tj.dataset_sha256
    session.rollback()
    if round_index >= spec.rounds or slot >= spec.workers_per_round:
        raise NotFound("shard", f"{round_index}/{slot}")
    data = ctx.training_storage.prepared(spec, dataset)
    windows = shard_for(data, spec, round_index, slot).contiguous()
    return Response(st_save({"windows": windows}), media_type="application/octet-stream")


@router.post("/tasks/{task_id}/update", response_model=UpdateReceiptOut, openapi_extra=_BINARY_BODY)
async def submit_update(
    task_id: TaskId,
    request: Request,
    principal: WorkerDep,
    ctx: CtxDep,
    now: NowDep,
    background: BackgroundTasks,
    lease_id: Annotated[str, Query(min_length=1, max_length=36)],
    signature: Annotated[str, Query(pattern=r"^0x[0-9a-fA-F]{130}$", description="EIP-191 over the update digest")],
    loss_start: Annotated[float, Query(description="loss of the first inner step")],
    loss_end: Annotated[float, Query(description="loss of the last inner step")],
) -> UpdateReceiptOut:
    """Submit the lease holder's compressed pseudo-gradient (raw body: the codec's safetensors blob) with its
    signature over the scoped digest (globai.protocol.training). The same update again is accepted=false."""
    if not (math.isfinite(loss_start) and math.isfinite(loss_end)):
        raise InvalidRequest("losses must be finite")
    payload = await request.body()
    if not payload:
        raise InvalidRequest("empty update")

    def run() -> training.Received:
        with ctx.session_factory() as session:
            return training.submit_update(
                session,
                storage=ctx.training_storage,
                task_id=task_id,
                worker_address=principal.address,
                lease_id=lease_id,
                payload=payload,
                signature=signature.lower(),
                loss_start=loss_start,
                loss_end=loss_end,
                now=now,
            )

    received = await run_in_threadpool(run)
    if received.created:
        background.add_task(kick_aggregator, ctx.tasks, received.update.job_id)
    return UpdateReceiptOut(
        task_id=task_id,
        accepted=received.created,
        update_sha256=received.update.payload_sha256,
        digest=received.update.digest,
    )


# -- federated rounds: the secure-aggregation relay ------------------------------------------------------------------


@router.post("/tasks/{task_id}/secagg/{phase}", response_model=SecAggReceiptOut)
def post_secagg(
    task_id: TaskId,
    phase: Annotated[str, Path(pattern=r"^(keys|shares)$")],
    body: SecAggMessageIn,
    principal: WorkerDep,
    ctx: CtxDep,
    session: SessionDep,
    now: NowDep,
    lease_id: Annotated[str, Query(min_length=1, max_length=36)],
) -> SecAggReceiptOut:
    """A federated task's lease holder sends its round keys (signed X25519 public keys) or its sealed Shamir
    shares for the other participants (globai.protocol.secagg)."""
    stored = federated.post_phase_message(
        session,
        root=ctx.training_storage.root,
        task_id=task_id,
        worker_address=principal.address,
        lease_id=lease_id,
        phase=phase,
        body=body.model_dump(exclude_none=True),
        now=now,
    )
    return SecAggReceiptOut(stored=stored)


@router.get("/jobs/{job_id}/rounds/{round_index}/secagg")
def get_secagg(
    job_id: JobId,
    round_index: Annotated[int, Path(ge=0, le=1_000_000)],
    principal: PrincipalDep,
    ctx: CtxDep,
    session: SessionDep,
    now: NowDep,
) -> dict[str, Any]:
    """The round's secure-aggregation state for a participant: phase, everyone's keys, the shares sealed for it,
    and once the round closed, the survivors and the dropped."""
    return federated.round_state(
        session,
        root=ctx.training_storage.root,
        job_id=job_id,
        round_index=round_index,
        address=principal.address,
        now=now,
    )


@router.post("/jobs/{job_id}/rounds/{round_index}/secagg/unmask", response_model=SecAggReceiptOut)
def post_unmask(
    job_id: JobId,
    round_index: Annotated[int, Path(ge=0, le=1_000_000)],
    body: UnmaskIn,
    principal: WorkerDep,
    ctx: CtxDep,
    session: SessionDep,
) -> SecAggReceiptOut:
    """A survivor's shares of the survivors' self-mask seeds and of the dropped participants' mask keys."""
    stored = federated.post_unmask(
        session,
        root=ctx.training_storage.root,
        job_id=job_id,
        round_index=round_index,
        address=principal.address,
        body=body.model_dump(),
    )
    if stored:
        kick_aggregator(ctx.tasks, job_id)
    return SecAggReceiptOut(stored=stored)


@router.post("/jobs/{job_id}/rollback", response_model=RollbackOut)
def rollback_job(
    job_id: JobId, body: RollbackIn, principal: RequesterDep, ctx: CtxDep, session: SessionDep, now: NowDep
) -> RollbackOut:
    """Roll the job back to checkpoint `version`: the open round restarts from it (`globai job train rollback`)."""
    rnd = training.rollback(
        session,
        storage=ctx.training_storage,
        job_id=job_id,
        requester=principal.address,
        version=body.version,
        now=now,
    )
    return RollbackOut(job_id=job_id, version=body.version, round=rnd.round, base_manifest=rnd.base_manifest)
