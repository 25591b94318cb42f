"""The chunk scope a worker signs under, derived from a pipeline run (one formula, used by the coordinator that
issues it, the verification source that checks it, and replays, which look like ordinary runs): the job is
keccak256(run id), the task keccak256("<run id>/stage/<stage>").
"""

from __future__ import annotations

from eth_utils import keccak

from globai.protocol.signing import ChunkScope


def stage_scope(chain_id: int, run_id: str, stage: int, job_nonce: bytes) -> ChunkScope:
    """Stage `stage` (its first layer) of run `run_id`: task keccak256("<run id>/stage/<stage>")."""
    return ChunkScope(chain_id, keccak(text=run_id), keccak(text=f"{run_id}/stage/{stage}"), stage, job_nonce)
