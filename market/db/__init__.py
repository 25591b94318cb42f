"""Market database: SQLAlchemy 2 models (Postgres and SQLite) and engine helpers."""

from market.db.base import Base, UtcDateTime, Wei, new_id, utcnow
from market.db.credits import ApiKey, ApiRequest, Credit
from market.db.jobs import JOB_STATUSES, TASK_STATUSES, Job, Lease, Task
from market.db.ledger import AuthNonce, ChainCursor, ChainEvent, Settlement, SettlementItem, Verification
from market.db.training import TrainingJob, TrainingRound, TrainingUpdate
from market.db.verification import JobRun, SettlementReport, SlashRecord, VerificationCheck, VerificationRun, WorkPart
from market.db.workers import InferenceSession, ReputationEvent, Worker, WorkerProfile

__all__ = [
    "ApiKey",
    "ApiRequest",
    "Credit",
    "JOB_STATUSES",
    "TASK_STATUSES",
    "AuthNonce",
    "Base",
    "ChainCursor",
    "ChainEvent",
    "InferenceSession",
    "Job",
    "JobRun",
    "Lease",
    "ReputationEvent",
    "Settlement",
    "SettlementItem",
    "SettlementReport",
    "SlashRecord",
    "Task",
    "TrainingJob",
    "TrainingRound",
    "TrainingUpdate",
    "UtcDateTime",
    "Verification",
    "VerificationCheck",
    "VerificationRun",
    "Wei",
    "Worker",
    "WorkPart",
    "WorkerProfile",
    "new_id",
    "utcnow",
]
