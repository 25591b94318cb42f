"""binding: the signed hash of every answer a stage sent, the stage's output blob, and binding violations

Revision ID: 0005_binding
Revises: 0004
Create Date: 2026-12-02 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_binding"
down_revision: str | tuple[str, ...] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stage_records") as batch:
        batch.add_column(sa.Column("sent_signature", sa.String(length=132), nullable=True))
        batch.add_column(sa.Column("output_blob", sa.String(length=64), nullable=True))
    op.create_table(
        "stage_violations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("worker_address", sa.String(length=42), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("layer_end", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=66), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["inference_runs.id"],
            name=op.f("fk_stage_violations_run_id_inference_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stage_violations")),
    )
    op.create_index(op.f("ix_stage_violations_run_id"), "stage_violations", ["run_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_stage_violations_run_id"), table_name="stage_violations")
    op.drop_table("stage_violations")
    with op.batch_alter_table("stage_records") as batch:
        batch.drop_column("output_blob")
        batch.drop_column("sent_signature")
