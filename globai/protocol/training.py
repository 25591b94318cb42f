"""What a training worker signs over its pseudo-gradient, and the names the market and workers share.

The worker signs (EIP-191, like every other commitment) the domain-separated digest::

    keccak256(bytes.concat("GLOBAI-TRAIN-UPDATE-V1", abi.encode(uint256 chainId, bytes32 jobId, bytes32 taskId,
        uint64 round, uint32 slot, bytes32 jobNonce, bytes32 baseCheckpoint, bytes32 updateSha256)))

``jobId`` is the escrow's job id (`globai.chain.ids.job_id_bytes`: bound to the requester), ``taskId``
keccak256 of the task UUID (the same ids the settlement report uses), ``baseCheckpoint`` the manifest sha256 of
checkpoint v the update starts from, ``updateSha256`` the sha256 of the exact wire bytes
(`globai.protocol.compression.payload_digest`). Every field that scopes the update is inside the hash, so a
signature can't be replayed for another job, round, task or base checkpoint, and a wrong update plus its signature
is provable evidence for slashing.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils import keccak

from globai.protocol.signing import recover_signer, sign_digest

TRAIN_UPDATE_TAG = b"GLOBAI-TRAIN-UPDATE-V1"
#: `Task.model` of every DiLoCo training task: any worker with the training runtime can run it.
TRAINING_MODEL = "llama-train"
#: Marks a task payload as a DiLoCo task (vs. the generic training tasks of `market.services.jobs`).
PAYLOAD_KIND = "diloco"
#: `Task.model` of federated training tasks: only workers with local data of their own (`--data`) claim them.
FEDERATED_MODEL = "llama-train-federated"


def task_key_bytes(task_uuid: str) -> bytes:
    """bytes32 id of a market task: keccak256 of its UUID string (as in settlement reports)."""
    return keccak(text=task_uuid)


def _b32(name: str, hex_or_bytes: str | bytes) -> bytes:
    raw = bytes.fromhex(hex_or_bytes.removeprefix("0x")) if isinstance(hex_or_bytes, str) else hex_or_bytes
    if len(raw) != 32:
        raise ValueError(f"{name} must be 32 bytes")
    return raw


@dataclass(frozen=True)
class UpdateScope:
    """Where an update belongs; all of it is signed. Hex strings may carry a 0x prefix."""

    chain_id: int
    chain_job_id: str  # 0x bytes32
    task_id: str  # market task UUID
    round: int
    slot: int
    job_nonce: str  # 0x bytes32
    base_checkpoint: str  # manifest sha256 hex

    def digest(self, update_sha256: str) -> bytes:
        body = abi_encode(
            ["uint256", "bytes32", "bytes32", "uint64", "uint32", "bytes32", "bytes32", "bytes32"],
            [
                self.chain_id,
                _b32("chain_job_id", self.chain_job_id),
                task_key_bytes(self.task_id),
                self.round,
                self.slot,
                _b32("job_nonce", self.job_nonce),
                _b32("base_checkpoint", self.base_checkpoint),
                _b32("update_sha256", update_sha256),
            ],
        )
        return keccak(TRAIN_UPDATE_TAG + body)


def sign_update(scope: UpdateScope, update_sha256: str, account: LocalAccount) -> str:
    """0x-hex EIP-191 signature over the update digest."""
    return "0x" + sign_digest(account, scope.digest(update_sha256)).hex()


def update_signer(scope: UpdateScope, update_sha256: str, signature: str) -> str:
    """Checksummed signer of ``signature``; raises `globai.protocol.signing.BadSignature`."""
    return recover_signer(scope.digest(update_sha256), bytes.fromhex(signature.removeprefix("0x")))
