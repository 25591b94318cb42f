"""pipeline inference: runs, recorded stage inputs, signed chunk commitments

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inference_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("requester", sa.String(length=42), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("model_digest", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("job_nonce", sa.String(length=66), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tokens", sa.JSON(), nullable=True),
        sa.Column("route", sa.JSON(), nullable=False),
        sa.Column("failovers", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_runs")),
    )
    op.create_index(op.f("ix_inference_runs_requester"), "inference_runs", ["requester"], unique=False)
    op.create_table(
        "stage_records",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("layer_start", sa.Integer(), nullable=False),
        sa.Column("layer_end", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("worker_address", sa.String(length=42), nullable=False),
        sa.Column("input_blob", sa.String(length=64), nullable=False),
        sa.Column("output_sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retain_until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["inference_runs.id"], name=op.f("fk_stage_records_run_id_inference_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_records")),
    )
    op.create_index("ix_stage_records_run_stage_step", "stage_records", ["run_id", "layer_start", "step"])
    op.create_index(op.f("ix_stage_records_worker_address"), "stage_records", ["worker_address"])
    op.create_index(op.f("ix_stage_records_retain_until"), "stage_records", ["retain_until"])
    op.create_table(
        "stage_commitments",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("worker_address", sa.String(length=42), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.String(length=20), nullable=True),
        sa.Column("digest", sa.String(length=66), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("signature", sa.String(length=132), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["inference_runs.id"],
            name=op.f("fk_stage_commitments_run_id_inference_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_commitments")),
    )
    op.create_index("ix_stage_commitments_run_worker", "stage_commitments", ["run_id", "worker_address"])


def downgrade() -> None:
    op.drop_table("stage_commitments")
    op.drop_table("stage_records")
    op.drop_table("inference_runs")
