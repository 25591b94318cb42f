"""api credits: API keys (hashes), prepaid credits (escrowed jobs of kind credit), per-request usage (new tables)

Revision ID: 0006_credits
Revises: 0005_binding
Create Date: 2026-12-02 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_credits"
down_revision: str | tuple[str, ...] | None = "0005_binding"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WEI = sa.String(length=78)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("requester", sa.String(length=42), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("spend_cap", WEI, nullable=True),
        sa.Column("rate_limit_per_min", sa.Integer(), nullable=False),
        sa.Column("spent", WEI, nullable=False),
        sa.Column("reserved", WEI, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_requester"), ["requester"], unique=False)

    op.create_table(
        "credits",
        sa.Column("job_id", sa.String(length=36), nullable=False),
        sa.Column("requester", sa.String(length=42), nullable=False),
        sa.Column("spent", WEI, nullable=False),
        sa.Column("reserved", WEI, nullable=False),
        sa.Column("fee_bps", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("close_reason", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_credits_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_credits")),
    )
    with op.batch_alter_table("credits", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credits_requester"), ["requester"], unique=False)
        batch_op.create_index(batch_op.f("ix_credits_status"), ["status"], unique=False)

    op.create_table(
        "api_requests",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("credit_id", sa.String(length=36), nullable=False),
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("max_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("prompt_price", WEI, nullable=False),
        sa.Column("completion_price", WEI, nullable=False),
        sa.Column("reserved", WEI, nullable=False),
        sa.Column("charged", WEI, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("finish_reasons", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["credit_id"], ["credits.job_id"], name=op.f("fk_api_requests_credit_id_credits"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_api_requests_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_requests")),
    )
    with op.batch_alter_table("api_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_requests_credit_id"), ["credit_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_api_requests_key_id"), ["key_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_api_requests_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_table("api_requests")
    op.drop_table("credits")
    op.drop_table("api_keys")
