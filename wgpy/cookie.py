"""mac1, mac2 and cookie replies: WireGuard's DoS layer (whitepaper §5.3, §5.4.4, §5.4.7; kernel cookie.c).

Theory of operation: every handshake message ends with two MACs.

- ``mac1 = MAC(HASH(LABEL_MAC1 || Spub_receiver), msg[:mac1])`` proves the sender knows the receiver's public key.
  It costs one BLAKE2s, so the device checks it before spending any X25519 on a message.
- ``mac2 = MAC(cookie, msg[:mac2])`` is zero unless the sender holds a fresh cookie from the receiver. A receiver
  under load answers a handshake without a valid mac2 with one 64-byte cookie reply and nothing else; the sender
  stores the cookie and its retry carries mac2. The cookie is ``MAC(secret, source address)`` with a secret that
  changes every two minutes, so it proves the sender owns its source address (a round trip was made).
- The cookie reply encrypts the cookie with XChaCha20-Poly1305 under ``HASH(LABEL_COOKIE || Spub_sender_of_reply)``
  and uses the triggering message's mac1 as associated data, so only the peer who sent that message can use it.

``CookieChecker`` is the receiving side (one per device, keyed by our public key); ``CookieGenerator`` is the sending
side (one per peer, keyed by the peer's public key). Times are ``now`` arguments; randomness is an injected ``rng``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from . import crypto
from .constants import COOKIE_REFRESH_TIME, LABEL_COOKIE, LABEL_MAC1, REKEY_TIMEOUT
from .keys import PublicKey
from .messages import (
    COOKIE_NONCE_SIZE,
    MAC_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    CookieReply,
)

__all__ = ["CookieChecker", "CookieGenerator", "MacState", "mac_offsets"]

COOKIE_SECRET_MAX_AGE: Final = COOKIE_REFRESH_TIME  # whitepaper §6.6: the secret changes every 2 minutes
COOKIE_SECRET_LATENCY: Final = REKEY_TIMEOUT  # kernel: a received cookie is used for 2 min minus 5 s
_ZERO_MAC: Final = bytes(MAC_SIZE)


class MacState(enum.Enum):
    """Result of checking a handshake message's MACs (kernel ``enum cookie_mac_state``)."""

    INVALID_MAC = enum.auto()
    VALID_MAC_BUT_NO_COOKIE = enum.auto()
    VALID_MAC_WITH_COOKIE = enum.auto()


def mac_offsets(message_length: int) -> tuple[int, int]:
    """Offsets of mac1 and mac2 in a handshake message of ``message_length`` bytes."""
    if message_length not in (MESSAGE_INITIATION_SIZE, MESSAGE_RESPONSE_SIZE):
        raise ValueError("only handshake initiations and responses carry MACs")
    mac2_offset = message_length - MAC_SIZE
    return mac2_offset - MAC_SIZE, mac2_offset


def _mac1_key(public: PublicKey) -> bytes:
    return crypto.hash(LABEL_MAC1 + public.raw)


def _cookie_key(public: PublicKey) -> bytes:
    return crypto.hash(LABEL_COOKIE + public.raw)


class CookieChecker:
    """Checks MACs on handshake messages sent to us and makes cookie replies (kernel ``struct cookie_checker``)."""

    __slots__ = ("_cookie_encryption_key", "_mac1_key", "_rng", "_secret", "_secret_born_at")

    def __init__(self, public_key: PublicKey | None, rng: Callable[[int], bytes]) -> None:
        self._rng = rng
        self._secret = b""
        self._secret_born_at: float | None = None
        self._mac1_key = b""
        self._cookie_encryption_key = b""
        self.set_public_key(public_key)

    def set_public_key(self, public_key: PublicKey | None) -> None:
        """Rekey after the device's private key changed (kernel ``wg_cookie_checker_precompute_device_keys``)."""
        if public_key is None:
            self._mac1_key = self._cookie_encryption_key = b""
        else:
            self._mac1_key = _mac1_key(public_key)
            self._cookie_encryption_key = _cookie_key(public_key)

    def _cookie(self, source: bytes, now: float) -> bytes:
        """τ = MAC(Rm, source): the cookie for ``source``, with Rm renewed every two minutes."""
        if self._secret_born_at is None or now - self._secret_born_at >= COOKIE_SECRET_MAX_AGE:
            self._secret = self._rng(crypto.KEY_SIZE)
            self._secret_born_at = now
        return crypto.mac(self._secret, source)

    def check_mac1(self, message: bytes) -> bool:
        """Whether mac1 of the handshake ``message`` is right for our public key. Costs one BLAKE2s."""
        if not self._mac1_key:
            return False
        mac1_offset, mac2_offset = mac_offsets(len(message))
        expected = crypto.mac(self._mac1_key, message[:mac1_offset])
        return crypto.constant_time_equal(expected, message[mac1_offset:mac2_offset])

    def check(self, message: bytes, source: bytes, check_cookie: bool, now: float) -> MacState:
        """Check mac1 and, when ``check_cookie`` (under load), mac2 against the cookie of ``source``.

        Args:
            message: a whole initiation or response.
            source: the sender's address as bytes (IP || port), what the cookie binds to.
            check_cookie: whether mac2 must be checked (the device is under load).
            now: monotonic seconds, to age the cookie secret.
        """
        if not self.check_mac1(message):
            return MacState.INVALID_MAC
        if not check_cookie:
            return MacState.VALID_MAC_BUT_NO_COOKIE
        _, mac2_offset = mac_offsets(len(message))
        expected = crypto.mac(self._cookie(source, now), message[:mac2_offset])
        if crypto.constant_time_equal(expected, message[mac2_offset:]):
            return MacState.VALID_MAC_WITH_COOKIE
        return MacState.VALID_MAC_BUT_NO_COOKIE

    def create_reply(self, message: bytes, sender_index: int, source: bytes, now: float) -> CookieReply:
        """The cookie reply to a handshake ``message`` from ``source`` whose sender index is ``sender_index``."""
        mac1_offset, mac2_offset = mac_offsets(len(message))
        nonce = self._rng(COOKIE_NONCE_SIZE)
        cookie = self._cookie(source, now)
        encrypted = crypto.xaead_seal(self._cookie_encryption_key, nonce, cookie, message[mac1_offset:mac2_offset])
        return CookieReply(sender_index, nonce, encrypted)


class CookieGenerator:
    """Adds MACs to the handshake messages we send to one peer and keeps its cookie (kernel ``struct cookie``)."""

    __slots__ = (
        "_cookie",
        "_cookie_born_at",
        "_cookie_decryption_key",
        "_last_mac1_sent",
        "_mac1_key",
    )

    def __init__(self, peer_public_key: PublicKey) -> None:
        self._mac1_key = _mac1_key(peer_public_key)
        self._cookie_decryption_key = _cookie_key(peer_public_key)
        self._cookie = b""
        self._cookie_born_at: float | None = None
        self._last_mac1_sent: bytes | None = None

    def has_fresh_cookie(self, now: float) -> bool:
        return (
            self._cookie_born_at is not None
            and now - self._cookie_born_at < COOKIE_SECRET_MAX_AGE - COOKIE_SECRET_LATENCY
        )

    def add_macs(self, message: bytes, now: float) -> bytes:
        """``message`` with mac1 and mac2 filled in (mac2 stays zero without a fresh cookie)."""
        mac1_offset, _ = mac_offsets(len(message))
        body = message[:mac1_offset]
        mac1 = crypto.mac(self._mac1_key, body)
        self._last_mac1_sent = mac1
        mac2 = crypto.mac(self._cookie, body + mac1) if self.has_fresh_cookie(now) else _ZERO_MAC
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> bool:
        """Decrypt and store the cookie of a cookie reply. Returns ``False`` (changing nothing) if it is not valid.

        A reply is valid only for the last message we sent to this peer: its mac1 is the associated data.
        """
        if self._last_mac1_sent is None:
            return False
        try:
            cookie = crypto.xaead_open(
                self._cookie_decryption_key, reply.nonce, reply.encrypted_cookie, self._last_mac1_sent
            )
        except crypto.InvalidTag:
            return False
        self._cookie = cookie
        self._cookie_born_at = now
        self._last_mac1_sent = None  # one reply per message sent
        return True
