"""one head again (credits + job chain id), and work keys long enough for inference stages

Inference work keys are `run_id/stage/worker` (36 + 1 + digits + 1 + 42 characters): more than the 64 that
String(64) allows. SQLite never enforced the length; Postgres refuses the row.

Revision ID: 0007_work_key
Revises: 0006_credits, 0006_job_chain_id
Create Date: 2026-12-02 12:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_work_key"
down_revision: str | tuple[str, ...] | None = ("0006_credits", "0006_job_chain_id")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("work_parts", "verification_checks")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "work_key", type_=sa.String(length=128), existing_type=sa.String(length=64), existing_nullable=False
            )


def downgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(
                "work_key", type_=sa.String(length=64), existing_type=sa.String(length=128), existing_nullable=False
            )
