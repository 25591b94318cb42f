"""market core schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 10:59:45.298648
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "auth_nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_auth_nonces")),
    )
    with op.batch_alter_table("auth_nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_nonces_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "chain_cursors",
        sa.Column("name", sa.String(length=160), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_chain_cursors")),
    )
    op.create_table(
        "chain_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("chain_id", sa.BigInteger(), nullable=False),
        sa.Column("contract", sa.String(length=42), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=False),
        sa.Column("log_index", sa.Integer(), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_chain_events")),
        sa.UniqueConstraint("chain_id", "tx_hash", "log_index", name="uq_chain_events_log"),
    )
    with op.batch_alter_table("chain_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_chain_events_block_number"), ["block_number"], unique=False)
        batch_op.create_index(batch_op.f("ix_chain_events_event"), ["event"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("chain_job_id", sa.String(length=66), nullable=False),
        sa.Column("requester", sa.String(length=42), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_hash", sa.String(length=66), nullable=False),
        sa.Column("budget", sa.String(length=78), nullable=False),
        sa.Column("price_per_unit", sa.String(length=78), nullable=False),
        sa.Column("max_units", sa.BigInteger(), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=False),
        sa.Column("long_running", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("funded_amount", sa.String(length=78), nullable=True),
        sa.Column("funded_tx", sa.String(length=66), nullable=True),
        sa.Column("funded_block", sa.BigInteger(), nullable=True),
        sa.Column("created_block", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("chain_job_id", name=op.f("uq_jobs_chain_job_id")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_requester"), ["requester"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_status"), ["status"], unique=False)

    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=42), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("throughput_tokens_s", sa.Float(), nullable=False),
        sa.Column("bandwidth_bytes_s", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("reference_layer", sa.String(length=128), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("stake", sa.String(length=78), nullable=False),
        sa.Column("unbonding", sa.String(length=78), nullable=False),
        sa.Column("eligible", sa.Boolean(), nullable=False),
        sa.Column("stake_block", sa.BigInteger(), nullable=False),
        sa.Column("last_slash_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reserved_job_id", sa.String(length=36), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
        sa.UniqueConstraint("address", name=op.f("uq_workers_address")),
    )
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_workers_operator_id"), ["operator_id"], unique=False)

    op.create_table(
        "reputation_events",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True),
        sa.Column("detail", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["workers.id"],
            name=op.f("fk_reputation_events_worker_id_workers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reputation_events")),
    )
    with op.batch_alter_table("reputation_events", schema=None) as batch_op:
        batch_op.create_index("ix_reputation_events_worker_time", ["worker_id", "created_at"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("layer_start", sa.Integer(), nullable=False),
        sa.Column("layer_end", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_sessions_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"], name=op.f("fk_sessions_worker_id_workers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sessions_worker_id"), ["worker_id"], unique=False)

    op.create_table(
        "settlements",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("report_root", sa.String(length=66), nullable=True),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_settlements_job_id_jobs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlements")),
        sa.UniqueConstraint("job_id", name=op.f("uq_settlements_job_id")),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("layer_start", sa.Integer(), nullable=False),
        sa.Column("layer_end", sa.Integer(), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("priority", sa.String(length=78), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("exclude_operator", sa.String(length=64), nullable=True),
        sa.Column("lease_id", sa.String(length=36), nullable=True),
        sa.Column("leased_by", sa.String(length=36), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result_hash", sa.String(length=66), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("submitted_by", sa.String(length=36), nullable=True),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_tasks_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["leased_by"], ["workers.id"], name=op.f("fk_tasks_leased_by_workers")),
        sa.ForeignKeyConstraint(["submitted_by"], ["workers.id"], name=op.f("fk_tasks_submitted_by_workers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
        sa.UniqueConstraint("job_id", "index", name="uq_tasks_job_index"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tasks_job_id"), ["job_id"], unique=False)
        batch_op.create_index(
            "ix_tasks_claim_order",
            ["status", sa.text("priority DESC"), "deadline", "created_at", "id"],
            unique=False,
        )

    op.create_table(
        "worker_profiles",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("throughput_tokens_s", sa.Float(), nullable=False),
        sa.Column("bandwidth_bytes_s", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("reference_layer", sa.String(length=128), nullable=False),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["worker_id"],
            ["workers.id"],
            name=op.f("fk_worker_profiles_worker_id_workers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_profiles")),
    )
    with op.batch_alter_table("worker_profiles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_worker_profiles_worker_id"), ["worker_id"], unique=False)

    op.create_table(
        "leases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_leases_task_id_tasks"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"], name=op.f("fk_leases_worker_id_workers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_leases")),
    )
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.create_index("ix_leases_status_expires", ["status", "expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_leases_task_id"), ["task_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_leases_worker_id"), ["worker_id"], unique=False)
        batch_op.create_index(
            "uq_leases_active_task",
            ["task_id"],
            unique=True,
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )

    op.create_table(
        "settlement_items",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("settlement_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=False),
        sa.Column("payee", sa.String(length=42), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.String(length=78), nullable=False),
        sa.ForeignKeyConstraint(
            ["settlement_id"],
            ["settlements.id"],
            name=op.f("fk_settlement_items_settlement_id_settlements"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_settlement_items_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_settlement_items")),
        sa.UniqueConstraint("task_id", name=op.f("uq_settlement_items_task_id")),
    )
    with op.batch_alter_table("settlement_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_settlement_items_settlement_id"), ["settlement_id"], unique=False)

    op.create_table(
        "verifications",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("task_id", sa.String(length=36), nullable=True),
        sa.Column("worker_id", sa.String(length=36), nullable=False),
        sa.Column("replica_worker_id", sa.String(length=36), nullable=True),
        sa.Column("segment", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_verifications_job_id_jobs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["replica_worker_id"], ["workers.id"], name=op.f("fk_verifications_replica_worker_id_workers")
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name=op.f("fk_verifications_task_id_tasks"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["worker_id"], ["workers.id"], name=op.f("fk_verifications_worker_id_workers")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verifications")),
    )
    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_verifications_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_verifications_worker_id"), ["worker_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("verifications", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verifications_worker_id"))
        batch_op.drop_index(batch_op.f("ix_verifications_job_id"))

    op.drop_table("verifications")
    with op.batch_alter_table("settlement_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_settlement_items_settlement_id"))

    op.drop_table("settlement_items")
    with op.batch_alter_table("leases", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_leases_active_task",
            postgresql_where=sa.text("status = 'active'"),
            sqlite_where=sa.text("status = 'active'"),
        )
        batch_op.drop_index(batch_op.f("ix_leases_worker_id"))
        batch_op.drop_index(batch_op.f("ix_leases_task_id"))
        batch_op.drop_index("ix_leases_status_expires")

    op.drop_table("leases")
    with op.batch_alter_table("worker_profiles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_worker_profiles_worker_id"))

    op.drop_table("worker_profiles")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_claim_order")
        batch_op.drop_index(batch_op.f("ix_tasks_job_id"))

    op.drop_table("tasks")
    op.drop_table("settlements")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_worker_id"))
        batch_op.drop_index(batch_op.f("ix_sessions_job_id"))

    op.drop_table("sessions")
    with op.batch_alter_table("reputation_events", schema=None) as batch_op:
        batch_op.drop_index("ix_reputation_events_worker_time")

    op.drop_table("reputation_events")
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_workers_operator_id"))

    op.drop_table("workers")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_status"))
        batch_op.drop_index(batch_op.f("ix_jobs_requester"))
        batch_op.drop_index(batch_op.f("ix_jobs_created_at"))

    op.drop_table("jobs")
    with op.batch_alter_table("chain_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_chain_events_event"))
        batch_op.drop_index(batch_op.f("ix_chain_events_block_number"))

    op.drop_table("chain_events")
    op.drop_table("chain_cursors")
    with op.batch_alter_table("auth_nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_nonces_expires_at"))

    op.drop_table("auth_nonces")
