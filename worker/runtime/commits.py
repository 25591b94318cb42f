"""Per-session chunk commitments a worker signs over the outputs it returns (see globai.protocol.commitments).

Outputs arrive step by step (a prefill block, then one token per decode step). Rows are buffered per sequence
and chunk; a chunk is committed and signed once its last position (32c + 31) has been produced, and whatever is
left is committed at session close, together with the signed Merkle root over all the session's chunks.
Only the rows actually returned are committed: the last stage returns one row (last-token logits) per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from eth_account.signers.local import LocalAccount

from globai.protocol.commitments import (
    CHUNK_TOKENS,
    ChunkCommitment,
    SignedCommitment,
    chunk_id,
    commit_chunk,
    sign_commitment,
    sign_task_root,
    tensor_sha256,
)
from globai.protocol.signing import ChunkScope, sent_digest, sign_digest


def sign_sent(
    scope: ChunkScope, step: int, first_position: int, output: torch.Tensor, account: LocalAccount
) -> dict[str, str]:
    """The signed hash of one forward answer's exact output bytes (`signing.sent_digest`), for its header."""
    sha = tensor_sha256(output)
    signature = sign_digest(account, sent_digest(scope, step, first_position, sha))
    return {"output_sha256": "0x" + sha.hex(), "signature": "0x" + signature.hex()}


@dataclass
class SessionCommitments:
    scope: ChunkScope
    # (sequence, chunk) -> rows [hidden] in position order
    pending: dict[tuple[int, int], list[torch.Tensor]] = field(default_factory=dict)
    done: list[ChunkCommitment] = field(default_factory=list)

    def add(self, output: torch.Tensor, first_position: int, account: LocalAccount) -> list[SignedCommitment]:
        """Buffer a step's output [B, T, H] (rows at positions first_position..); sign the chunks it completes."""
        signed = []
        batch, tokens = output.shape[0], output.shape[1]
        for t in range(tokens):
            position = first_position + t
            chunk, last_in_chunk = divmod(position, CHUNK_TOKENS)
            for seq in range(batch):
                self.pending.setdefault((seq, chunk), []).append(output[seq, t])
                if last_in_chunk == CHUNK_TOKENS - 1:
                    signed.append(self._commit(seq, chunk, account))
        return signed

    def finish(self, account: LocalAccount) -> tuple[list[SignedCommitment], dict[str, Any] | None]:
        """Commit the partial chunks left and sign the session's Merkle root (None if nothing was produced)."""
        signed = [self._commit(seq, chunk, account) for seq, chunk in sorted(self.pending)]
        if not self.done:
            return signed, None
        root = sign_task_root(self.done, account)
        return signed, {
            "chunk_count": root.chunk_count,
            "root": "0x" + root.root.hex(),
            "signature": "0x" + root.signature.hex(),
        }

    def commit_rows(self, index: int, rows: torch.Tensor) -> ChunkCommitment:
        """The commitment to one chunk's rows (the current sketch version, `commit_chunk`'s defaults)."""
        return commit_chunk(self.scope, index, rows)

    def _commit(self, seq: int, chunk: int, account: LocalAccount) -> SignedCommitment:
        rows = self.pending.pop((seq, chunk))
        commitment = self.commit_rows(chunk_id(seq, chunk), torch.stack(rows).contiguous())
        self.done.append(commitment)
        return sign_commitment(commitment, account)
