"""Exceptions and drop reasons.

Theory of operation: local misuse of the API raises (``ConfigError``, ``ValueError``); bytes from the network never do.
The codec and crypto helpers raise ``MalformedMessage`` (or ``cryptography``'s ``InvalidTag``) and the device turns
those into a ``DropReason`` at one boundary, ``Device.receive_datagram``, in the way h11 turns a ``LocalProtocolError``
into a ``RemoteProtocolError``. No exception text ever carries key bytes.
"""

from __future__ import annotations

import enum

__all__ = ["ConfigError", "DropReason", "MalformedMessage", "UapiError", "WgpyError"]


class WgpyError(Exception):
    """Base class of every exception wgpy raises on purpose."""


class ConfigError(WgpyError, ValueError):
    """A configuration value given by the local user is invalid (bad key, bad CIDR, bad port...)."""


class MalformedMessage(WgpyError, ValueError):
    """Bytes received from the network do not form a valid WireGuard message."""


class UapiError(WgpyError):
    """A UAPI request failed; ``errno`` is the positive errno value (wg(8) reads it back negated)."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


class DropReason(enum.Enum):
    """Why a datagram or packet was dropped. One flat enum, counted in ``Device.stats.drops``."""

    BAD_LENGTH = enum.auto()
    BAD_TYPE = enum.auto()
    INVALID_MAC = enum.auto()
    COOKIE_SENT = enum.auto()
    RATE_LIMITED = enum.auto()
    UNKNOWN_INDEX = enum.auto()
    UNKNOWN_PEER = enum.auto()
    STALE_TIMESTAMP = enum.auto()
    HANDSHAKE_FLOOD = enum.auto()
    HANDSHAKE_FAILED = enum.auto()
    INVALID_COOKIE_REPLY = enum.auto()
    KEYPAIR_EXPIRED = enum.auto()
    REPLAYED_COUNTER = enum.auto()
    COUNTER_OUT_OF_WINDOW = enum.auto()
    INVALID_AEAD_TAG = enum.auto()
    INVALID_IP_PACKET = enum.auto()
    DISALLOWED_SOURCE_IP = enum.auto()
    NO_ROUTE = enum.auto()
    NO_PRIVATE_KEY = enum.auto()
    QUEUE_FULL = enum.auto()
    FILTERED = enum.auto()  # refused by the device's packet filter (the mesh ACL)
