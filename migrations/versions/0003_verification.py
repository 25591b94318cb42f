"""verification and settlement: runs, work parts, checks, slash records, published reports (new tables only)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 11:08:03.242859
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job_runs",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_runs_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_job_runs")),
    )
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_job_runs_job_id"), ["job_id"], unique=False)

    op.create_table(
        "settlement_reports",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("report_root", sa.String(length=66), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_settlement_reports_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_settlement_reports")),
    )
    op.create_table(
        "slash_records",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("worker", sa.String(length=42), nullable=False),
        sa.Column("amount", sa.String(length=78), nullable=False),
        sa.Column("evidence", sa.String(length=66), nullable=False),
        sa.Column("finder", sa.String(length=42), nullable=False),
        sa.Column("requester", sa.String(length=42), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tx_hash", sa.String(length=66), nullable=True),
        sa.Column("slashed", sa.String(length=78), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_slash_records_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_slash_records")),
        sa.UniqueConstraint("job_id", "worker", name="uq_slash_records_job_worker"),
    )
    with op.batch_alter_table("slash_records", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_slash_records_job_id"), ["job_id"], unique=False)

    op.create_table(
        "verification_checks",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("work_key", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=42), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.BigInteger(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("replica", sa.String(length=42), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=False),
        sa.Column("evidence", sa.String(length=66), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_verification_checks_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_verification_checks")),
        sa.UniqueConstraint("job_id", "work_key", "chunk_index", "round", name="uq_verification_checks_segment"),
    )
    with op.batch_alter_table("verification_checks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_verification_checks_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_verification_checks_status"), ["status"], unique=False)

    op.create_table(
        "verification_runs",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("secret", sa.String(length=66), nullable=False),
        sa.Column("beacon", sa.String(length=66), nullable=False),
        sa.Column("seed", sa.String(length=66), nullable=True),
        sa.Column("sampled", sa.Integer(), nullable=False),
        sa.Column("detail", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_verification_runs_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_verification_runs")),
    )
    with op.batch_alter_table("verification_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_verification_runs_status"), ["status"], unique=False)

    op.create_table(
        "work_parts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("work_key", sa.String(length=64), nullable=False),
        sa.Column("worker", sa.String(length=42), nullable=False),
        sa.Column("operator_id", sa.String(length=64), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("layer_start", sa.Integer(), nullable=False),
        sa.Column("layer_end", sa.Integer(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("root", sa.String(length=66), nullable=False),
        sa.Column("rate", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_work_parts_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_parts")),
        sa.UniqueConstraint("job_id", "work_key", name="uq_work_parts_job_key"),
    )
    with op.batch_alter_table("work_parts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_work_parts_job_id"), ["job_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_work_parts_worker"), ["worker"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("work_parts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_work_parts_worker"))
        batch_op.drop_index(batch_op.f("ix_work_parts_job_id"))

    op.drop_table("work_parts")
    with op.batch_alter_table("verification_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verification_runs_status"))

    op.drop_table("verification_runs")
    with op.batch_alter_table("verification_checks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_verification_checks_status"))
        batch_op.drop_index(batch_op.f("ix_verification_checks_job_id"))

    op.drop_table("verification_checks")
    with op.batch_alter_table("slash_records", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_slash_records_job_id"))

    op.drop_table("slash_records")
    op.drop_table("settlement_reports")
    with op.batch_alter_table("job_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_runs_job_id"))
    op.drop_table("job_runs")
