"""jobs record the chain whose escrow holds them

Revision ID: 0006_job_chain_id
Revises: 0005_binding
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_job_chain_id"
down_revision: str | None = "0005_binding"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: jobs created before this revision were escrowed on the market's configured chain, which a
    # migration cannot know; new jobs always record it.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("chain_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("chain_id")
