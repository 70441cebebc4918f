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

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from .store import AuditRow

__all__ = ["AUDIT_LOGGER_NAME", "KINDS", "drop_pending", "emit_pending", "record", "record_many"]

AUDIT_LOGGER_NAME: Final = "wgpy.audit"
_PENDING: Final = "wgpy_audit_lines"
KINDS: Final = frozenset(
    {
        "admin_token_created",
        "setup_key_created",
        "setup_key_revoked",
        "enrol",
        "refresh",
        "refresh_retry",
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
        "dashboard_login",
        "dashboard_logout",
    }
)

_logger = logging.getLogger(AUDIT_LOGGER_NAME)


def _line(now: float, kind: str, actor: str, peer: str | None, detail: dict[str, object]) -> str:
    return json.dumps(
        {"ts": round(now, 3), "kind": kind, "actor": actor, "peer": peer, "detail": detail},
        sort_keys=True,
        separators=(",", ":"),
    )


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
    session.info.setdefault(_PENDING, []).append(_line(now, kind, actor, peer, fields))


async def record_many(
    session: AsyncSession,
    *,
    now: float,
    kind: str,
    actor: str,
    entries: list[tuple[str | None, dict[str, object]]],
) -> None:
    """Like ``record`` for many peers at once, as one bulk INSERT (a push to thousands of peers stays cheap)."""
    if kind not in KINDS:
        raise ValueError(f"unknown audit kind {kind!r}")
    if not entries:
        return
    rows = [{"ts": now, "kind": kind, "actor": actor, "peer": peer, "detail": detail} for peer, detail in entries]
    await session.execute(insert(AuditRow), rows)
    lines = session.info.setdefault(_PENDING, [])
    lines.extend(_line(now, kind, actor, peer, detail) for peer, detail in entries)


def emit_pending(session: AsyncSession) -> None:
    """Write the queued lines of a committed transaction."""
    for line in session.info.pop(_PENDING, []):
        _logger.info("%s", line)


def drop_pending(session: AsyncSession) -> None:
    """Forget the queued lines of a rolled-back transaction."""
    session.info.pop(_PENDING, None)
