"""training: DiLoCo job state, persisted round close decisions, received pseudo-gradients (new tables only)

Revision ID: 0004
Revises: 0002, 0003
Create Date: 2026-11-22 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | tuple[str, ...] | None = ("0002", "0003")  # merges the inference and verification heads
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "training_jobs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_sha256", sa.String(length=64), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=False),
        sa.Column("job_nonce", sa.String(length=66), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("sample_secret", sa.String(length=66), nullable=False),
        sa.Column("beacon", sa.String(length=66), nullable=False),
        sa.Column("verify_rate", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("initial_eval_loss", sa.Float(), nullable=True),
        sa.Column("detail", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_training_jobs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_training_jobs")),
    )
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_jobs_status"), ["status"], unique=False)

    op.create_table(
        "training_rounds",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("base_manifest", sa.String(length=64), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reopened", sa.Integer(), nullable=False),
        sa.Column("close_state", sa.String(length=24), nullable=True),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("accepted", sa.JSON(), nullable=False),
        sa.Column("aggregated", sa.JSON(), nullable=True),
        sa.Column("verify_deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=True),
        sa.Column("eval_loss", sa.Float(), nullable=True),
        sa.Column("worker_loss", sa.Float(), nullable=True),
        sa.Column("bytes_up", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_training_rounds_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_rounds")),
        sa.UniqueConstraint("job_id", "round", name="uq_training_rounds_job_round"),
    )
    with op.batch_alter_table("training_rounds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_rounds_job_id"), ["job_id"], unique=False)

    op.create_table(
        "training_updates",
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=42), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("payload_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("digest", sa.String(length=66), nullable=False),
        sa.Column("signature", sa.String(length=132), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("loss_start", sa.Float(), nullable=False),
        sa.Column("loss_end", sa.Float(), nullable=False),
        sa.Column("replay_of", sa.String(length=36), nullable=True),
        sa.Column("check", sa.String(length=16), nullable=False),
        sa.Column("check_task_id", sa.String(length=36), nullable=True),
        sa.Column("check_reason", sa.String(length=160), nullable=False),
        sa.Column("check_metrics", sa.JSON(), nullable=False),
        sa.Column("aggregated", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_training_updates_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_training_updates_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_training_updates")),
    )
    with op.batch_alter_table("training_updates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_training_updates_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_training_updates_replay_of"), ["replay_of"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("training_updates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_updates_replay_of"))
        batch_op.drop_index(batch_op.f("ix_training_updates_job_id"))
    op.drop_table("training_updates")
    with op.batch_alter_table("training_rounds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_rounds_job_id"))
    op.drop_table("training_rounds")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_training_jobs_status"))
    op.drop_table("training_jobs")
