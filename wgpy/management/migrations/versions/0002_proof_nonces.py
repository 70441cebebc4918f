"""Proof nonces shared by replicas: a request accepted by one replica is refused as a replay by the others.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "proof_nonces",
        sa.Column("key", sa.LargeBinary(64), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_proof_nonces"),
    )
    op.create_index("ix_proof_nonces_expires_at", "proof_nonces", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_proof_nonces_expires_at", table_name="proof_nonces")
    op.drop_table("proof_nonces")
