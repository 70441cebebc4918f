"""An index on peers.released_at: the address allocator looks for released addresses past their quarantine at every
enrolment, which without it scans the whole peers table.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_peers_released_at", "peers", ["released_at"])


def downgrade() -> None:
    op.drop_index("ix_peers_released_at", table_name="peers")
