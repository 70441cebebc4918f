"""Access and refresh tokens: JWTs signed with the management key (EdDSA), bound to the peer's WireGuard key.

Theory of operation (``docs/management-api.md``, "Tokens"): an *access* token (1 h) authorises peer requests; a
*refresh* token (7 days, single use) buys a new pair. Both carry ``iss``, ``sub`` (peer id), ``wg`` (the peer's
WireGuard public key, base64), ``typ``, ``iat``, ``exp`` and ``jti``; a refresh token also ``fam``, the family id
shared by every refresh token descended from one enrolment. Every request also carries a proof of possession of the
``wg`` key (``proof.py``), so a token alone is useless.

``verify_token`` checks signature, structure, type, key binding and expiry against the caller's ``now`` (PyJWT's
own clock checks are off, so this module reads no clock). ``decide_refresh`` is the rotation rule as a function of
the stored row and ``now``: a used token presented again means a copy was stolen, and the answer is to revoke the
family, with one exception, ``within_retry_grace``: the token used last, presented again within ``RETRY_GRACE``
seconds while the pair issued for it has not been used, is the device asking again after an answer it never got (a
dropped connection). The request's proof shows it holds the peer's WireGuard key, so it gets a new pair, and the
unused one is retired as used (one live refresh token per family still): presented later, it is reuse. The
database applies the decision with a guarded update (``store.py``), so two replicas cannot both accept the same
refresh token.

Errors carry a code (``TokenError.code``) and a detail in our own words, never the token.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import jwt

from .. import crypto

__all__ = [
    "ACCESS_LIFETIME",
    "ISSUER",
    "REFRESH_LIFETIME",
    "RETRY_GRACE",
    "RefreshDecision",
    "RefreshRow",
    "TokenClaims",
    "TokenError",
    "decide_refresh",
    "issue_token",
    "verify_token",
    "within_retry_grace",
]

ISSUER: Final = "wgpy"
ACCESS_LIFETIME: Final = 3600  # seconds (security model: access tokens live 1 hour)
REFRESH_LIFETIME: Final = 7 * 86400  # seconds (security model: refresh tokens live 7 days)
RETRY_GRACE: Final = 60.0  # seconds after its use that a refresh token may be presented again for a lost answer (ours)
MAX_TOKEN_SIZE: Final = 4096  # characters of a token accepted before parsing (ours)
_ALGORITHM: Final = "EdDSA"  # RFC 8037
_CLAIMS: Final = frozenset({"iss", "sub", "wg", "typ", "iat", "exp", "jti"})

TokenType = Literal["access", "refresh"]


class TokenError(ValueError):
    """A token is refused. ``code``: ``malformed``, ``bad_signature``, ``expired``, ``wrong_type``, ``other_key``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """The claims of a verified token."""

    sub: str
    wg: str
    typ: TokenType
    iat: int
    exp: int
    jti: str
    fam: str | None = None


def issue_token(
    signing_key: crypto.Ed25519PrivateKey,
    *,
    peer_id: str,
    public_key: str,
    typ: TokenType,
    now: float,
    jti: str,
    family: str | None = None,
) -> tuple[str, TokenClaims]:
    """Sign a token; returns the token text and its claims (``family`` is required for a refresh token)."""
    if (typ == "refresh") != (family is not None):
        raise ValueError("a refresh token, and only a refresh token, has a family")
    iat = int(now)
    exp = iat + (ACCESS_LIFETIME if typ == "access" else REFRESH_LIFETIME)
    payload: dict[str, object] = {
        "iss": ISSUER,
        "sub": peer_id,
        "wg": public_key,
        "typ": typ,
        "iat": iat,
        "exp": exp,
        "jti": jti,
    }
    if family is not None:
        payload["fam"] = family
    token = jwt.encode(payload, signing_key, algorithm=_ALGORITHM)
    return token, TokenClaims(peer_id, public_key, typ, iat, exp, jti, family)


def verify_token(
    token: str,
    verify_key: crypto.Ed25519PublicKey | Sequence[crypto.Ed25519PublicKey],
    *,
    expected_type: TokenType,
    now: float,
    expected_key: str | None = None,
) -> TokenClaims:
    """Verify a token's signature, claims, type, key binding (``expected_key``, base64) and expiry.

    Raises:
        TokenError: with the first code that applies (signature before anything the token says).
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_SIZE or not token.isascii():
        raise TokenError("malformed", "not a token")
    # During a signing-key rotation several keys are valid (``keys.py``); the signature must verify with one.
    keys = (verify_key,) if isinstance(verify_key, crypto.Ed25519PublicKey) else tuple(verify_key)
    payload: object = None
    for index, key in enumerate(keys):
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[_ALGORITHM],
                issuer=ISSUER,
                options={"verify_exp": False, "verify_iat": False, "verify_nbf": False, "verify_aud": False},
            )
            break
        except jwt.InvalidSignatureError:
            if index == len(keys) - 1:
                raise TokenError(
                    "bad_signature", "the token's signature does not verify with the management key"
                ) from None
        except jwt.InvalidIssuerError:
            raise TokenError("malformed", "the token was not issued by this server") from None
        except jwt.PyJWTError:
            raise TokenError("malformed", "not a token of this server") from None
    if not isinstance(payload, dict) or not _CLAIMS <= set(payload):
        raise TokenError("malformed", "the token lacks claims")
    sub, wg, typ, iat, exp, jti = (payload[name] for name in ("sub", "wg", "typ", "iat", "exp", "jti"))
    fam = payload.get("fam")
    if not (isinstance(sub, str) and isinstance(wg, str) and isinstance(jti, str)):
        raise TokenError("malformed", "the token's claims have the wrong types")
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in (iat, exp)):
        raise TokenError("malformed", "the token's times are not integers")
    if typ not in ("access", "refresh") or (fam is not None and not isinstance(fam, str)):
        raise TokenError("malformed", "the token's type is unknown")
    if typ != expected_type:
        raise TokenError("wrong_type", f"a {typ} token where an {expected_type} token is needed")
    if typ == "refresh" and fam is None:
        raise TokenError("malformed", "a refresh token without a family")
    if expected_key is not None and not crypto.constant_time_equal(wg.encode(), expected_key.encode()):
        raise TokenError("other_key", "the token belongs to another WireGuard key")
    if now >= exp:
        raise TokenError("expired", "the token has expired")
    return TokenClaims(sub, wg, "access" if typ == "access" else "refresh", iat, exp, jti, fam)


@dataclass(frozen=True, slots=True)
class RefreshRow:
    """What the store keeps of a refresh token (never the token itself)."""

    jti: str
    family: str
    peer_id: str
    expires_at: float
    used_at: float | None
    revoked: bool


class RefreshDecision(enum.Enum):
    """What to do with a presented refresh token. The value is the API error code (``ok`` for success)."""

    OK = "ok"  # rotate: mark this one used and issue a new pair in the same family
    UNKNOWN = "invalid_token"  # no such token stored (or for another peer)
    EXPIRED = "expired"
    REVOKED = "revoked"  # its family was revoked already
    REUSED = "token_reuse"  # used before: revoke the family and audit


def decide_refresh(row: RefreshRow | None, claims: TokenClaims, now: float) -> RefreshDecision:
    """The rotation rule for one presented (signature-checked) refresh token."""
    if row is None or row.jti != claims.jti or row.peer_id != claims.sub or row.family != claims.fam:
        return RefreshDecision.UNKNOWN
    if row.revoked:
        return RefreshDecision.REVOKED
    if row.used_at is not None:
        return RefreshDecision.REUSED
    if now >= row.expires_at:
        return RefreshDecision.EXPIRED
    return RefreshDecision.OK


def within_retry_grace(row: RefreshRow, now: float) -> bool:
    """Whether a used token presented again may be a retry (the caller also checks that the pair issued for it is
    unused): it was used at most ``RETRY_GRACE`` seconds ago, its family is alive and it has not expired."""
    used_at = row.used_at
    return used_at is not None and not row.revoked and 0 <= now - used_at <= RETRY_GRACE and now < row.expires_at
