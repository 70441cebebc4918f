"""Dashboard sessions in the database: a session logged out (or expired) on one replica is refused by every one.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "dashboard_sessions",
        sa.Column("sid", sa.String(32), nullable=False),
        sa.Column("admin_token_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["admin_token_id"], ["admin_tokens.id"], name="fk_dashboard_sessions_admin_token_id_admin_tokens"
        ),
        sa.PrimaryKeyConstraint("sid", name="pk_dashboard_sessions"),
    )
    op.create_index("ix_dashboard_sessions_admin_token_id", "dashboard_sessions", ["admin_token_id"])
    op.create_index("ix_dashboard_sessions_expires_at", "dashboard_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_sessions_expires_at", table_name="dashboard_sessions")
    op.drop_index("ix_dashboard_sessions_admin_token_id", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
