"""Alembic environment: migrations run on the connection ``store.upgrade`` hands over (async engines included)."""

from __future__ import annotations

from alembic import context

from wgpy.management.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the migrations through wgpy.management.store.upgrade (wgpy management init)")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
