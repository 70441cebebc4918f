"""The management plane: the server that enrols devices and hands each one its signed network map.

Pure decisions (``policy``, ``tokens``, ``proof``, ``enrolment``) are functions of their inputs and ``now``; the
server's I/O (database, HTTP, WebSocket) is a thin shell around them. ``docs/management-api.md`` is the contract.

- ``policy``: the policy YAML -> each peer's view and map body (Hypothesis-checked against a naive evaluator).
- ``tokens``: EdDSA JWT access/refresh tokens bound to the WireGuard key; refresh rotation and reuse detection.
- ``enrolment``: setup-key rules, the address pool and its quarantine, ephemeral peers.
- ``proof``: proof of possession of the WireGuard private key on every peer request.
- ``store``: SQLAlchemy models, engines (SQLite/PostgreSQL) and the shipped Alembic migrations.
- ``audit``: audit rows and ``wgpy.audit`` JSON lines, written with the change they describe.
- ``push``: ``PushHub.notify(change)`` -> recompute, sign and push maps to connected peers.
- ``notify``: replicas on PostgreSQL: LISTEN/NOTIFY carries each change to the others; resync on reconnect.
- ``keys``: signing keys shared by replicas (files or environment) and their rotation, announced in the maps.
- ``api``: the aiohttp routes; ``server``: state directory, key files, ``serve`` and ``running_server`` for tests.
"""

from __future__ import annotations
