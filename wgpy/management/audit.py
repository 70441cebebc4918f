"""The management audit trail: one ``audit`` row and one JSON line on the ``wgpy.audit`` logger per event.

Theory of operation: a handler calls ``record(session, ...)`` inside its transaction, so the row commits or rolls
back with the change it describes. The JSON line is written only after the commit (``Transaction`` in ``api.py``
calls ``emit_pending``), so a refused request leaves neither. Lines are ``{"ts", "kind", "actor", "peer",
"detail"}`` (``docs/management-api.md``, "Audit"). Callers put only identifiers, names, counts and serials in
``detail``: no setup key, token, proof or private key ever reaches this module, and ``tests/management`` scans the
rows and lines of a whole flow for them.
"""

from __future__ import annotations

import json
import logging
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession

from .store import AuditRow

__all__ = ["AUDIT_LOGGER_NAME", "KINDS", "emit_pending", "record"]

AUDIT_LOGGER_NAME: Final = "wgpy.audit"
_PENDING: Final = "wgpy_audit_lines"
KINDS: Final = frozenset(
    {
        "admin_token_created",
        "setup_key_created",
        "setup_key_revoked",
        "enrol",
        "refresh",
        "token_reuse",
        "peer_approved",
        "peer_revoked",
        "peer_updated",
        "peer_logout",
        "peer_endpoint",
        "peer_expired",
        "policy_set",
        "map_push",
        "stream_connected",
        "stream_closed",
    }
)

_logger = logging.getLogger(AUDIT_LOGGER_NAME)


def record(
    session: AsyncSession,
    *,
    now: float,
    kind: str,
    actor: str,
    peer: str | None = None,
    detail: dict[str, object] | None = None,
) -> None:
    """Add an audit row to ``session``'s transaction and queue its JSON line until the commit."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit kind {kind!r}")
    fields = dict(detail or {})
    session.add(AuditRow(ts=now, kind=kind, actor=actor, peer=peer, detail=fields))
    line = json.dumps(
        {"ts": round(now, 3), "kind": kind, "actor": actor, "peer": peer, "detail": fields},
        sort_keys=True,
        separators=(",", ":"),
    )
    session.info.setdefault(_PENDING, []).append(line)


def emit_pending(session: AsyncSession) -> None:
    """Write the queued lines of a committed transaction."""
    for line in session.info.pop(_PENDING, []):
        _logger.info("%s", line)


def drop_pending(session: AsyncSession) -> None:
    """Forget the queued lines of a rolled-back transaction."""
    session.info.pop(_PENDING, None)
