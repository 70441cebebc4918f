"""The four WireGuard wire messages as a strict codec (whitepaper §5.4.2, §5.4.3, §5.4.7, §5.4.6).

Theory of operation: ``unpack(data)`` turns bytes into one of four frozen dataclasses or raises ``MalformedMessage``;
nothing else escapes it. It is strict where the protocol is strict: the first four bytes are read as one
little-endian u32, so a message whose three reserved bytes are not zero has an unknown type; handshake messages
have exact sizes; a transport message carries at least its 16-byte header and a 16-byte tag. ``pack()`` is the
inverse. Fields are named as in the whitepaper and the kernel's ``messages.h``.

The codec checks shape only. It never verifies a MAC or decrypts: that belongs to ``cookie.py`` and ``noise.py``.
The transport hot path (``keypair.py``, ``device.py``) reads the header with the module-level ``struct`` objects
below instead of building a dataclass per packet.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Final

from .errors import MalformedMessage

__all__ = [
    "COOKIE_NONCE_SIZE",
    "ENCRYPTED_COOKIE_SIZE",
    "MAC1_OFFSET_INITIATION",
    "MAC1_OFFSET_RESPONSE",
    "MAC_SIZE",
    "MESSAGE_COOKIE_REPLY_SIZE",
    "MESSAGE_INITIATION_SIZE",
    "MESSAGE_RESPONSE_SIZE",
    "MESSAGE_TRANSPORT_HEADER_SIZE",
    "MESSAGE_TRANSPORT_MIN_SIZE",
    "TRANSPORT_HEADER",
    "CookieReply",
    "Initiation",
    "Message",
    "MessageType",
    "Response",
    "Transport",
    "message_type",
    "unpack",
]


class MessageType(enum.IntEnum):
    """The little-endian u32 at offset 0 of every message (type byte and three reserved zero bytes)."""

    INITIATION = 1
    RESPONSE = 2
    COOKIE_REPLY = 3
    TRANSPORT = 4


MAC_SIZE: Final = 16
COOKIE_NONCE_SIZE: Final = 24
ENCRYPTED_COOKIE_SIZE: Final = 16 + 16  # cookie (16) + Poly1305 tag
ENCRYPTED_STATIC_SIZE: Final = 32 + 16
ENCRYPTED_TIMESTAMP_SIZE: Final = 12 + 16
ENCRYPTED_NOTHING_SIZE: Final = 16

MESSAGE_INITIATION_SIZE: Final = 148  # whitepaper §5.4.2
MESSAGE_RESPONSE_SIZE: Final = 92  # whitepaper §5.4.3
MESSAGE_COOKIE_REPLY_SIZE: Final = 64  # whitepaper §5.4.7
MESSAGE_TRANSPORT_HEADER_SIZE: Final = 16  # whitepaper §5.4.6
MESSAGE_TRANSPORT_MIN_SIZE: Final = MESSAGE_TRANSPORT_HEADER_SIZE + 16  # header + tag of an empty (keepalive) payload

MAC1_OFFSET_INITIATION: Final = MESSAGE_INITIATION_SIZE - 2 * MAC_SIZE  # 116
MAC1_OFFSET_RESPONSE: Final = MESSAGE_RESPONSE_SIZE - 2 * MAC_SIZE  # 60

_TYPE: Final = struct.Struct("<I")
_INITIATION: Final = struct.Struct("<II32s48s28s16s16s")
_RESPONSE: Final = struct.Struct("<III32s16s16s16s")
_COOKIE_REPLY: Final = struct.Struct("<II24s32s")
#: The transport header (type, receiver index, counter), the one definition every module packs and reads it with
#: (the hot path uses it directly, without a ``Transport`` object per packet).
TRANSPORT_HEADER: Final = struct.Struct("<IIQ")

_EXPECTED_SIZE: Final = {
    MessageType.INITIATION: MESSAGE_INITIATION_SIZE,
    MessageType.RESPONSE: MESSAGE_RESPONSE_SIZE,
    MessageType.COOKIE_REPLY: MESSAGE_COOKIE_REPLY_SIZE,
}


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value < 2**32:
        raise ValueError(f"{name} must fit in 32 bits")


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True)
class Initiation:
    """Handshake initiation, 148 bytes (whitepaper §5.4.2)."""

    sender_index: int
    unencrypted_ephemeral: bytes
    encrypted_static: bytes
    encrypted_timestamp: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    def __post_init__(self) -> None:
        _check_u32("sender_index", self.sender_index)
        _check_len("unencrypted_ephemeral", self.unencrypted_ephemeral, 32)
        _check_len("encrypted_static", self.encrypted_static, ENCRYPTED_STATIC_SIZE)
        _check_len("encrypted_timestamp", self.encrypted_timestamp, ENCRYPTED_TIMESTAMP_SIZE)
        _check_len("mac1", self.mac1, MAC_SIZE)
        _check_len("mac2", self.mac2, MAC_SIZE)

    def pack(self) -> bytes:
        return _INITIATION.pack(
            MessageType.INITIATION,
            self.sender_index,
            self.unencrypted_ephemeral,
            self.encrypted_static,
            self.encrypted_timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    """Handshake response, 92 bytes (whitepaper §5.4.3)."""

    sender_index: int
    receiver_index: int
    unencrypted_ephemeral: bytes
    encrypted_nothing: bytes
    mac1: bytes = bytes(MAC_SIZE)
    mac2: bytes = bytes(MAC_SIZE)

    def __post_init__(self) -> None:
        _check_u32("sender_index", self.sender_index)
        _check_u32("receiver_index", self.receiver_index)
        _check_len("unencrypted_ephemeral", self.unencrypted_ephemeral, 32)
        _check_len("encrypted_nothing", self.encrypted_nothing, ENCRYPTED_NOTHING_SIZE)
        _check_len("mac1", self.mac1, MAC_SIZE)
        _check_len("mac2", self.mac2, MAC_SIZE)

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            MessageType.RESPONSE,
            self.sender_index,
            self.receiver_index,
            self.unencrypted_ephemeral,
            self.encrypted_nothing,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply, 64 bytes (whitepaper §5.4.7)."""

    receiver_index: int
    nonce: bytes
    encrypted_cookie: bytes

    def __post_init__(self) -> None:
        _check_u32("receiver_index", self.receiver_index)
        _check_len("nonce", self.nonce, COOKIE_NONCE_SIZE)
        _check_len("encrypted_cookie", self.encrypted_cookie, ENCRYPTED_COOKIE_SIZE)

    def pack(self) -> bytes:
        return _COOKIE_REPLY.pack(MessageType.COOKIE_REPLY, self.receiver_index, self.nonce, self.encrypted_cookie)


@dataclass(frozen=True, slots=True)
class Transport:
    """Transport data, 16-byte header then the encrypted, padded packet and its tag (whitepaper §5.4.6)."""

    receiver_index: int
    counter: int
    encrypted_packet: bytes

    def __post_init__(self) -> None:
        _check_u32("receiver_index", self.receiver_index)
        if not 0 <= self.counter < 2**64:
            raise ValueError("counter must fit in 64 bits")
        if len(self.encrypted_packet) < 16:
            raise ValueError("encrypted_packet must hold at least the 16-byte tag")

    def pack(self) -> bytes:
        return TRANSPORT_HEADER.pack(MessageType.TRANSPORT, self.receiver_index, self.counter) + self.encrypted_packet


Message = Initiation | Response | CookieReply | Transport


def message_type(data: bytes) -> MessageType:
    """The type of ``data`` after the size checks of the whitepaper; raises ``MalformedMessage`` otherwise.

    The first four bytes are one le32, so non-zero reserved bytes make the type unknown (as in the kernel).
    """
    if len(data) < 4:
        raise MalformedMessage("message shorter than its 4-byte type")
    (raw_type,) = _TYPE.unpack_from(data)
    try:
        mtype = MessageType(raw_type)
    except ValueError:
        raise MalformedMessage("unknown message type or non-zero reserved bytes") from None
    expected = _EXPECTED_SIZE.get(mtype)
    if expected is not None:
        if len(data) != expected:
            raise MalformedMessage(f"{mtype.name.lower()} must be {expected} bytes")
    elif len(data) < MESSAGE_TRANSPORT_MIN_SIZE:
        raise MalformedMessage(f"transport must be at least {MESSAGE_TRANSPORT_MIN_SIZE} bytes")
    return mtype


def unpack(data: bytes) -> Message:
    """Parse one datagram into a message. Raises ``MalformedMessage`` and nothing else."""
    data = bytes(data)
    mtype = message_type(data)
    if mtype is MessageType.INITIATION:
        _, sender, ephemeral, static, timestamp, mac1, mac2 = _INITIATION.unpack(data)
        return Initiation(sender, ephemeral, static, timestamp, mac1, mac2)
    if mtype is MessageType.RESPONSE:
        _, sender, receiver, ephemeral, nothing, mac1, mac2 = _RESPONSE.unpack(data)
        return Response(sender, receiver, ephemeral, nothing, mac1, mac2)
    if mtype is MessageType.COOKIE_REPLY:
        _, receiver, nonce, cookie = _COOKIE_REPLY.unpack(data)
        return CookieReply(receiver, nonce, cookie)
    _, receiver, counter = TRANSPORT_HEADER.unpack_from(data)
    return Transport(receiver, counter, data[MESSAGE_TRANSPORT_HEADER_SIZE:])
