"""slash records carry the worker's signature over the evidence (the vault checks it on chain)

Revision ID: 0008_slash_signature
Revises: 0007_work_key
Create Date: 2026-12-02 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_slash_signature"
down_revision: str | tuple[str, ...] | None = "0007_work_key"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("slash_records") as batch:
        batch.add_column(sa.Column("signature", sa.String(length=132), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slash_records") as batch:
        batch.drop_column("signature")
