"""Persist what a run leaves for verification: recorded stage inputs (blobs + rows) and signed commitments."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from globai.protocol.tensors import encode_message
from market.blobstore import BlobStore
from market.coordinator.pipeline import Evidence
from market.db.inference import InferenceRun, StageCommitment, StageRecord, StageViolation
from market.verifier.compare import project_rows


def save_evidence(
    session: Session, *, run_id: str, evidence: Evidence, blobs: BlobStore, now: datetime, retention_s: float
) -> None:
    """Blobs first (content-addressed, idempotent), then the rows that reference them, in one transaction."""
    retain_until = now + timedelta(seconds=retention_s)
    for hop, link, rec in evidence.records:
        digest = blobs.put(rec.blob(run_id, (hop.start, hop.end)))
        # Hidden states are kept whole (verification compares the whole claimed tensor); logits (vocabulary-wide:
        # last-token rows, or every row of a scoring prefill) as projections of each whole row on secret seeded
        # directions, next to the commitment.
        if rec.last_stage:
            b, t, width = rec.output.shape
            projected = project_rows(rec.output.reshape(b * t, width), evidence.projection_seed).reshape(b, t, -1)
            output = blobs.put(encode_message({"op": "projection", "seed": evidence.projection_seed}, [projected]))
        else:
            output = blobs.put(encode_message({"op": "output"}, [rec.output]))
        session.add(
            StageRecord(
                run_id=run_id,
                layer_start=hop.start,
                layer_end=hop.end,
                step=rec.step,
                worker_address=link.address,
                input_blob=digest,
                output_sha256=rec.output_sha256(),
                created_at=now,
                retain_until=retain_until,
                sent_signature="0x" + rec.sent_signature.hex() if rec.sent_signature else None,
                output_blob=output,
            )
        )
    for v in evidence.violations:
        body = v.evidence()
        if v.rows is not None:
            body["rows_blob"] = blobs.put(encode_message({"op": "rows"}, [v.rows]))
        session.add(
            StageViolation(
                run_id=run_id,
                worker_address=v.address,
                stage=v.signed.commitment.scope.stage,
                layer_end=v.layers[1],
                chunk_index=str(v.signed.commitment.chunk_index),
                reason="unbound",
                digest="0x" + v.signed.commitment.digest.hex(),
                evidence=body,
                created_at=now,
            )
        )
    for address, signed in evidence.commitments:
        body = signed.to_json()
        session.add(
            StageCommitment(
                run_id=run_id,
                worker_address=address,
                stage=signed.commitment.scope.stage,
                chunk_index=str(signed.commitment.chunk_index),
                digest="0x" + signed.commitment.digest.hex(),
                body=body,
                signature=body["signature"],
                created_at=now,
            )
        )
    for address, scope, root in evidence.roots:
        session.add(
            StageCommitment(
                run_id=run_id,
                worker_address=address,
                stage=scope.stage,
                chunk_index=None,
                digest=str(root["root"]),
                body=dict(root),
                signature=str(root["signature"]),
                created_at=now,
            )
        )


def finish_run(
    session: Session,
    *,
    run_id: str,
    status: str,
    tokens: list[list[int]] | None,
    route: list[dict[str, object]],
    failovers: int,
    error: str | None,
    now: datetime,
    finish_reasons: list[str | None] | None = None,
) -> None:
    run = session.get(InferenceRun, run_id)
    if run is None:
        return
    if finish_reasons is not None:  # the result's per-sequence reason, kept next to the request's parameters
        run.params = {**run.params, "finish_reasons": finish_reasons}
    run.status, run.tokens, run.route, run.failovers, run.error, run.finished_at = (
        status,
        tokens,
        route,
        failovers,
        error,
        now,
    )


def purge_expired(session: Session, *, blobs: BlobStore, now: datetime) -> int:
    """Drop records whose verification window has ended, then every blob no remaining record references."""
    session.execute(delete(StageRecord).where(StageRecord.retain_until < now))
    session.commit()
    live = set(session.scalars(select(StageRecord.input_blob).distinct()).all())
    held = select(StageRecord.output_blob).where(StageRecord.output_blob.is_not(None))
    live |= {b for b in session.scalars(held) if b is not None}
    live |= {str(e["rows_blob"]) for e in session.scalars(select(StageViolation.evidence)) if "rows_blob" in e}
    return blobs.sweep(sorted(live))
