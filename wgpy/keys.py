"""Key value types: ``PrivateKey``, ``PublicKey`` and ``PresharedKey``.

Theory of operation: keys are 32-byte immutable values. They parse from the base64 that ``wg`` prints and from the
lowercase hex that the UAPI speaks, and they raise ``ConfigError`` (never showing the input) when the text is not a
32-byte key. ``repr`` of a secret never shows it. A private key is clamped as X25519 expects (RFC 7748 §5), which is
what ``wg genkey`` stores too, so a key round-trips unchanged through ``wg`` and wgpy.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from typing import ClassVar, Self

from . import crypto
from .errors import ConfigError

__all__ = ["PresharedKey", "PrivateKey", "PublicKey"]

KEY_SIZE = crypto.KEY_SIZE


class _Key:
    """A 32-byte key. Subclasses decide whether the value may be shown."""

    __slots__ = ("_raw",)
    _secret: ClassVar[bool] = True
    _kind: ClassVar[str] = "key"

    def __init__(self, raw: bytes) -> None:
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise TypeError(f"{type(self).__name__} takes bytes")
        raw = bytes(raw)
        if len(raw) != KEY_SIZE:
            raise ConfigError(f"a {self._kind} must be {KEY_SIZE} bytes, got {len(raw)}")
        self._raw = raw

    @classmethod
    def from_base64(cls, text: str) -> Self:
        """Parse the base64 form that ``wg`` reads and prints (44 characters)."""
        text = text.strip()
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"a {cls._kind} must be 32 bytes in base64") from None
        # The last character carries two spare bits that must be zero, as wg's decoder demands; otherwise two
        # different texts would name one key and the text would not round-trip.
        if len(raw) != KEY_SIZE or base64.b64encode(raw).decode("ascii") != text:
            raise ConfigError(f"a {cls._kind} must be 32 bytes in base64")
        return cls(raw)

    @classmethod
    def from_hex(cls, text: str) -> Self:
        """Parse the 64-digit hex form of the cross-platform UAPI."""
        text = text.strip()
        if len(text) != 2 * KEY_SIZE:
            raise ConfigError(f"a {cls._kind} must be {2 * KEY_SIZE} hex digits")
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise ConfigError(f"a {cls._kind} must be {2 * KEY_SIZE} hex digits") from None

    def __bytes__(self) -> bytes:
        return self._raw

    @property
    def raw(self) -> bytes:
        """The 32 key bytes."""
        return self._raw

    def to_base64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def to_hex(self) -> str:
        return self._raw.hex()

    def is_zero(self) -> bool:
        return self._raw == bytes(KEY_SIZE)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self) or not isinstance(other, _Key):
            return NotImplemented
        return crypto.constant_time_equal(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._raw))

    def __repr__(self) -> str:
        if self._secret:
            return f"{type(self).__name__}(<hidden>)"
        return f"{type(self).__name__}({self.to_base64()!r})"

    __str__ = __repr__


class PublicKey(_Key):
    """An X25519 public key (not secret: its repr shows it)."""

    __slots__ = ()
    _secret = False
    _kind = "public key"

    def short(self) -> str:
        """``AbCd…WxYz``: how logs name a peer (as wireguard-go's ``Peer.String`` does)."""
        b64 = self.to_base64()
        return f"{b64[:4]}…{b64[39:43]}"


class PrivateKey(_Key):
    """An X25519 private key, stored clamped."""

    __slots__ = ("_public",)
    _kind = "private key"

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw)
        self._raw = crypto.clamp(self._raw)
        self._public: PublicKey | None = None

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> PrivateKey:
        """A fresh key from ``rng`` (``wg genkey``)."""
        return cls(rng(KEY_SIZE))

    def public_key(self) -> PublicKey:
        """The matching public key (``wg pubkey``)."""
        if self._public is None:
            self._public = PublicKey(crypto.dh_public(self._raw))
        return self._public


class PresharedKey(_Key):
    """The optional symmetric key mixed into the handshake (all zeros when not configured)."""

    __slots__ = ()
    _kind = "preshared key"

    @classmethod
    def generate(cls, rng: Callable[[int], bytes] = os.urandom) -> PresharedKey:
        """A fresh key from ``rng`` (``wg genpsk``)."""
        return cls(rng(KEY_SIZE))

    @classmethod
    def zero(cls) -> PresharedKey:
        return cls(bytes(KEY_SIZE))
