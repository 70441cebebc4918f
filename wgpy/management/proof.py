"""Proof of possession: a peer request is signed with a MAC only the holder of the WireGuard private key can make.

Theory of operation: the peer and the management server share ``X25519(peer_private, server_proof_public)``, which
equals ``X25519(server_proof_private, peer_public)``. From it both derive ``proof_key`` and MAC each request's
method, path, timestamp, nonce and body hash (``docs/management-api.md``, "Proof of possession"). A token copied
from the agent's disk or memory is therefore useless without the private key, which never leaves the device.

This module is pure: the caller passes ``now`` and the nonce, and keeps the replay cache (``NonceCache`` is a
plain data structure driven by ``now``). It never logs, and its errors name what failed, never a key or a MAC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .. import crypto
from ..keys import PrivateKey, PublicKey

__all__ = [
    "HEADER_KEY",
    "HEADER_NONCE",
    "HEADER_PROOF",
    "HEADER_TIMESTAMP",
    "NONCE_SIZE",
    "PROOF_WINDOW",
    "NonceCache",
    "ProofError",
    "VerifiedProof",
    "derive_proof_key",
    "proof_headers",
    "proof_message",
    "verify_proof",
]

PROOF_LABEL: Final = b"wgpy management proof v1"  # domain separation of the derived key (ours)
PROOF_WINDOW: Final = 60  # seconds a proof's timestamp may differ from the verifier's clock (ours)
NONCE_SIZE: Final = 16  # random bytes per request (ours)
HEADER_KEY: Final = "X-Wgpy-Key"
HEADER_TIMESTAMP: Final = "X-Wgpy-Timestamp"
HEADER_NONCE: Final = "X-Wgpy-Nonce"
HEADER_PROOF: Final = "X-Wgpy-Proof"
_MAX_NONCES: Final = 1_000_000  # entries the replay cache holds before refusing (bounds memory under a flood)


class ProofError(ValueError):
    """A request's proof is missing, malformed, stale, replayed or wrong. ``code`` is the API error code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def derive_proof_key(shared_secret: bytes) -> bytes:
    """The MAC key both sides derive from their X25519 shared secret."""
    return crypto.hmac(shared_secret, PROOF_LABEL)


def proof_message(method: str, path_and_query: str, timestamp: int, nonce: bytes, body: bytes) -> bytes:
    """The bytes a proof covers: method, path with query, timestamp, nonce and the body's SHA-256, one per line."""
    return b"\n".join(
        (
            method.upper().encode("ascii"),
            path_and_query.encode("utf-8"),
            str(timestamp).encode("ascii"),
            base64.b64encode(nonce),
            hashlib.sha256(body).hexdigest().encode("ascii"),
        )
    )


def proof_headers(
    private_key: PrivateKey,
    server_proof_key: PublicKey,
    method: str,
    path_and_query: str,
    body: bytes,
    *,
    now: float,
    nonce: bytes,
) -> dict[str, str]:
    """The four headers that prove possession of ``private_key`` for one request (the agent's side).

    Raises:
        ProofError: the server's proof key is a low-order point (no shared secret).
    """
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes")
    try:
        shared = crypto.dh(private_key.raw, server_proof_key.raw)
    except crypto.InvalidTag:
        raise ProofError("bad_proof_key", "the server's proof key gives no shared secret") from None
    timestamp = int(now)
    mac = crypto.hmac(derive_proof_key(shared), proof_message(method, path_and_query, timestamp, nonce, body))
    return {
        HEADER_KEY: private_key.public_key().to_base64(),
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: base64.b64encode(nonce).decode("ascii"),
        HEADER_PROOF: base64.b64encode(mac).decode("ascii"),
    }


@dataclass(frozen=True, slots=True)
class VerifiedProof:
    """What a valid proof established: who made it and the nonce to remember until ``expires_at``, the last instant
    at which its timestamp is still accepted (``timestamp + PROOF_WINDOW``: the window includes its edge)."""

    public_key: PublicKey
    nonce: bytes
    expires_at: float


def _b64(value: str, size: int, what: str) -> bytes:
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise ProofError("bad_proof", f"{what} is not base64") from None
    if len(raw) != size:
        raise ProofError("bad_proof", f"{what} must be {size} bytes")
    return raw


def verify_proof(
    headers: Mapping[str, str],
    server_proof_private: PrivateKey,
    method: str,
    path_and_query: str,
    body: bytes,
    *,
    now: float,
    expected_key: PublicKey | None = None,
) -> VerifiedProof:
    """Check a request's proof headers (the server's side). The caller must still check the nonce for replay.

    Args:
        headers: the request headers (case-insensitive mapping, as aiohttp gives).
        server_proof_private: the server's X25519 proof key.
        expected_key: the peer key the credentials belong to (a token's ``wg`` claim); ``None`` at enrolment,
            where the key in the body is compared by the caller.

    Raises:
        ProofError: ``missing_proof``, ``bad_proof`` (malformed, wrong MAC, other key) or ``stale_proof``.
    """
    values = {}
    for name in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_PROOF):
        value = headers.get(name)
        if value is None:
            raise ProofError("missing_proof", f"the {name} header is missing")
        values[name] = value.strip()
    public = PublicKey(_b64(values[HEADER_KEY], 32, HEADER_KEY))
    if expected_key is not None and public != expected_key:
        raise ProofError("bad_proof", "the proof is made with another key than the token's")
    stamp = values[HEADER_TIMESTAMP]
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise ProofError("bad_proof", f"{HEADER_TIMESTAMP} must be decimal Unix seconds")
    timestamp = int(stamp)
    if abs(timestamp - now) > PROOF_WINDOW:
        raise ProofError("stale_proof", f"the proof's timestamp is more than {PROOF_WINDOW} s from the server's clock")
    nonce = _b64(values[HEADER_NONCE], NONCE_SIZE, HEADER_NONCE)
    mac = _b64(values[HEADER_PROOF], 32, HEADER_PROOF)
    try:
        shared = crypto.dh(server_proof_private.raw, public.raw)
    except crypto.InvalidTag:
        raise ProofError("bad_proof", "the peer key is a low-order point") from None
    expected = crypto.hmac(derive_proof_key(shared), proof_message(method, path_and_query, timestamp, nonce, body))
    if not crypto.constant_time_equal(mac, expected):
        raise ProofError("bad_proof", "the proof does not match the request")
    return VerifiedProof(public, nonce, float(timestamp + PROOF_WINDOW))


class NonceCache:
    """Nonces seen within the proof window, so that a captured request cannot be replayed (driven by ``now``)."""

    def __init__(self, max_entries: int = _MAX_NONCES) -> None:
        self._expiry: dict[bytes, float] = {}
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._expiry)

    def remember(self, proof: VerifiedProof, now: float) -> None:
        """Record a verified proof's nonce, or raise ``ProofError('replayed_proof')`` if it was seen already."""
        key = bytes(proof.public_key) + proof.nonce
        seen = self._expiry.get(key)
        if seen is not None and seen >= now:  # still acceptable at ``seen`` itself, so still a replay then
            raise ProofError("replayed_proof", "this request was seen before (replayed nonce)")
        if len(self._expiry) >= self._max_entries:
            self.expire(now)
            if len(self._expiry) >= self._max_entries:
                raise ProofError("busy", "too many requests in the proof window")
        self._expiry[key] = proof.expires_at

    def expire(self, now: float) -> None:
        """Forget nonces whose proofs can no longer be accepted (call it now and then, or let a full cache do it)."""
        for key in [k for k, expires_at in self._expiry.items() if expires_at < now]:
            del self._expiry[key]
