"""Dashboard sessions and CSRF tokens: pure functions of a key, the cookie text and ``now``.

Theory of operation: logging in exchanges the admin token for a session cookie. The cookie is the admin token
sealed with XChaCha20-Poly1305 under a key derived from the server's signing key (so every replica that holds the
key files can open it, and the browser never holds the admin token in the clear), together with a random session
id and the expiry. (A new setup key crosses the redirect after its form the same way, in a short-lived cookie
bound to the session: shown by the next page, then gone, so a reload neither shows it again nor creates another.)
Each request opens the cookie and then authenticates the admin token exactly as the API does
(``ManagementServer.authenticate_admin``): a revoked admin token ends its sessions at once; the session's row in
the database (``store.DashboardSessionRow``) says whether it was logged out, on whichever replica. The CSRF token is an HMAC of the
session id, so it needs no storage and differs per session. This module does no I/O and reads no clock.
"""

from __future__ import annotations

import base64
import binascii
import hmac as _std_hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ... import crypto

__all__ = [
    "REVEAL_LIFETIME",
    "SESSION_LIFETIME",
    "Session",
    "SessionKeys",
]

SESSION_LIFETIME: Final = 12 * 3600  # seconds a dashboard session lasts (ours: one working day)
REVEAL_LIFETIME: Final = 120  # seconds a new setup key waits, sealed, for the page that shows it (ours)
_AD: Final = b"wgpy dashboard session v1"
_AD_REVEAL: Final = b"wgpy dashboard reveal v1"
_MAX_COOKIE: Final = 4096  # characters of a cookie we are willing to open (browsers keep at most about 4096)


@dataclass(frozen=True, slots=True)
class Session:
    """An opened session cookie: the admin token it carries, its id and its expiry (Unix seconds)."""

    token: str = field(repr=False)
    sid: str
    expires_at: float


class SessionKeys:
    """Seals and opens session cookies and derives their CSRF tokens from one 32-byte secret."""

    def __init__(self, secret: bytes, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        if len(secret) < 32:
            raise ValueError("the session secret must be at least 32 bytes")
        self._seal_key = crypto.hmac(secret, _AD + b" seal")
        self._csrf_key = crypto.hmac(secret, _AD + b" csrf")
        self._rng = rng

    def __repr__(self) -> str:
        return "SessionKeys(<hidden>)"

    def _seal(self, value: dict[str, object], ad: bytes) -> str:
        nonce = self._rng(crypto.XNONCE_SIZE)
        sealed = crypto.xaead_seal(self._seal_key, nonce, json.dumps(value).encode(), ad)
        return base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")

    def _open(self, cookie: str | None, ad: bytes) -> dict[str, object] | None:
        if not cookie or len(cookie) > _MAX_COOKIE:
            return None
        try:
            raw = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            nonce, sealed = raw[: crypto.XNONCE_SIZE], raw[crypto.XNONCE_SIZE :]
            if len(nonce) != crypto.XNONCE_SIZE:
                return None
            value = json.loads(crypto.xaead_open(self._seal_key, nonce, sealed, ad))
        except (binascii.Error, ValueError, crypto.InvalidTag):
            return None
        return value if isinstance(value, dict) else None

    def seal(self, token: str, now: float) -> tuple[str, Session]:
        """A new session for ``token``: the cookie value and the session it opens to."""
        session = Session(token, self._rng(16).hex(), float(int(now) + SESSION_LIFETIME))
        cookie = self._seal({"t": session.token, "sid": session.sid, "exp": session.expires_at}, _AD)
        return cookie, session

    def seal_reveal(self, session: Session, value: dict[str, object], now: float) -> str:
        """A short-lived cookie carrying a secret to show once (a new setup key) across the redirect after a POST."""
        return self._seal({"v": value, "sid": session.sid, "exp": float(int(now) + REVEAL_LIFETIME)}, _AD_REVEAL)

    def open_reveal(self, session: Session, cookie: str | None, now: float) -> dict[str, object] | None:
        """What ``seal_reveal`` sealed, if the cookie is this session's and fresh."""
        value = self._open(cookie, _AD_REVEAL)
        if value is None or value.get("sid") != session.sid:
            return None
        expires_at, shown = value.get("exp"), value.get("v")
        if not isinstance(expires_at, float) or now >= expires_at or not isinstance(shown, dict):
            return None
        return shown

    def open(self, cookie: str | None, now: float) -> Session | None:
        """The session a cookie carries, or ``None`` if it is missing, forged, tampered with or expired."""
        value = self._open(cookie, _AD)
        if value is None:
            return None
        token, sid, expires_at = value.get("t"), value.get("sid"), value.get("exp")
        if not isinstance(token, str) or not isinstance(sid, str) or not isinstance(expires_at, float):
            return None
        if now >= expires_at:
            return None
        return Session(token, sid, expires_at)

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session (embedded in its forms, sent back with every state change)."""
        return crypto.hmac(self._csrf_key, session.sid.encode("ascii")).hex()

    def check_csrf(self, session: Session, presented: str | None) -> bool:
        return presented is not None and _std_hmac.compare_digest(self.csrf(session), presented)
