"""Revocation notices: the management server's signed word that one enrolled peer is removed from the mesh.

Theory of operation: when an administrator revokes (or deletes) a peer, the server tells that peer's agent, which
then drops every peer, denies all traffic and forgets its saved map and refresh token: a step that only a new
enrolment undoes. The word arrives over the map stream (``{"type": "revoked", "notice": ...}``) or in the body of
the 403 that refuses the peer's next request. The stream and the HTTP answers are authenticated only by TLS, and a
management URL may be plain ``http://``; so that nobody on the path (a hostile Wi-Fi, say) can make an agent
destroy its enrolment by forging a frame or a status code, the agent acts only on a notice signed by the
management key it has pinned, naming its own peer id and public key. Anything else (a frame without a notice, a
close code, a 403 without one) only makes it reconnect, and the server's next answer carries the notice.

The document: ``{"revocation": body, "signature": base64}``, with body
``{"version": 1, "peer_id": str, "public_key": base64, "reason": "revoked" | "deleted", "issued_at": int}``.
The Ed25519 signature covers ``CONTEXT`` followed by ``canonical_json(body)``: the context string keeps a notice's
signature from ever being a valid signature of a network map (whose signature covers the canonical body alone),
and the other way round. A notice is not refused for its age: it states a final fact about one enrolment (a
revoked WireGuard key never enrols again, and a new enrolment gets a new peer id), so a replayed notice can only
repeat what is true. ``issued_at`` is there for the log.

Pure, like the rest of ``wgpy.mesh``: no I/O, no clock (the signer passes the time).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .. import crypto
from ..errors import WgpyError
from .netmap import canonical_json

__all__ = [
    "CONTEXT",
    "MAX_NOTICE_SIZE",
    "REASONS",
    "RevocationNotice",
    "RevocationRejected",
    "sign_revocation",
    "verify_revocation",
]

CONTEXT: Final = b"wgpy revocation notice v1\n"  # prefixed to the signed bytes (domain separation from maps)
VERSION: Final = 1
REASONS: Final = frozenset({"revoked", "deleted"})
MAX_NOTICE_SIZE: Final = 1024  # bytes of JSON; a real notice is about 300
_BODY_KEYS: Final = frozenset({"version", "peer_id", "public_key", "reason", "issued_at"})
_MAX_ID: Final = 64  # peer ids are 32 hex digits; room for another server's ids, no more
_SIGNATURE_SIZE: Final = 64


class RevocationRejected(WgpyError):
    """The notice is not a valid revocation of this peer; ``str`` is one line, our own words."""


@dataclass(frozen=True, slots=True)
class RevocationNotice:
    """A verified notice: the peer it removes, why, and when the server issued it (Unix seconds)."""

    peer_id: str
    public_key: str
    reason: str
    issued_at: int


def sign_revocation(
    private_key: crypto.Ed25519PrivateKey, *, peer_id: str, public_key: str, reason: str, issued_at: int
) -> dict[str, object]:
    """The notice for one peer (the management server's side).

    Raises:
        ValueError: ``reason`` is not one of ``REASONS``.
    """
    if reason not in REASONS:
        raise ValueError(f"reason must be one of {sorted(REASONS)}")
    body: dict[str, object] = {
        "version": VERSION,
        "peer_id": peer_id,
        "public_key": public_key,
        "reason": reason,
        "issued_at": int(issued_at),
    }
    signature = crypto.ed25519_sign(private_key, CONTEXT + canonical_json(body))
    return {"revocation": body, "signature": base64.b64encode(signature).decode("ascii")}


def verify_revocation(
    notice: object, keys: Sequence[crypto.Ed25519PublicKey], *, peer_id: str, public_key: str
) -> RevocationNotice:
    """Check a notice received from the server against the pinned key(s) and this peer's identity.

    Args:
        notice: The ``notice`` value as parsed from JSON (any shape: it is remote input).
        keys: The management keys in force (the pinned one, and the next one during a rotation).
        peer_id: This agent's peer id; public_key: its WireGuard public key (base64).

    Raises:
        RevocationRejected: The notice is missing, malformed, not signed by one of ``keys``, or names another peer.
    """
    if not isinstance(notice, Mapping):
        raise RevocationRejected("no signed revocation notice")
    if set(notice) != {"revocation", "signature"}:
        raise RevocationRejected('the notice must have exactly the keys "revocation" and "signature"')
    body, signature_text = notice["revocation"], notice["signature"]
    if not isinstance(body, Mapping) or not isinstance(signature_text, str):
        raise RevocationRejected("the notice is malformed")
    try:
        signed = CONTEXT + canonical_json(body)
        signature = base64.b64decode(signature_text, validate=True)
    except (TypeError, ValueError, RecursionError, binascii.Error):
        raise RevocationRejected("the notice is malformed") from None
    if len(signed) > MAX_NOTICE_SIZE or len(signature) != _SIGNATURE_SIZE:
        raise RevocationRejected("the notice is malformed")
    if not any(crypto.ed25519_verify(key, signature, signed) for key in keys):
        raise RevocationRejected("the notice's signature does not verify with the management key")
    # Signed by the management key: from here on a refusal means a server bug, not an attacker.
    fields = _fields(body)
    if fields.peer_id != peer_id or fields.public_key != public_key:
        raise RevocationRejected("the notice is for another peer")
    return fields


def _fields(body: Mapping[str, object]) -> RevocationNotice:
    version = body.get("version")
    if set(body) != _BODY_KEYS or type(version) is not int or version != VERSION:  # not True, not 1.0
        raise RevocationRejected("the notice's body is not a version 1 revocation")
    peer_id, public_key, reason, issued_at = body["peer_id"], body["public_key"], body["reason"], body["issued_at"]
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= _MAX_ID:
        raise RevocationRejected("the notice's peer_id is malformed")
    if not isinstance(public_key, str) or len(public_key) != 44:
        raise RevocationRejected("the notice's public_key is malformed")
    if not isinstance(reason, str) or reason not in REASONS:
        raise RevocationRejected("the notice's reason is unknown")
    if not isinstance(issued_at, int) or isinstance(issued_at, bool) or not 0 <= issued_at < 2**53:
        raise RevocationRejected("the notice's issued_at is malformed")
    return RevocationNotice(peer_id, public_key, reason, issued_at)
