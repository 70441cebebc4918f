"""Alembic migrations of the management database (run by ``wgpy management init`` and at ``serve`` start)."""
