"""STUN on the WireGuard socket: telling STUN from WireGuard, and server-reflexive discovery (RFC 8489).

Theory of operation: the driver's UDP socket carries both protocols, so the reflexive address a STUN server reports
is the very mapping the WireGuard traffic uses. ``classify`` decides, from the first bytes alone, which of the two a
datagram is: a STUN message has its two top bits zero and the magic cookie ``0x2112A442`` at offset 4 (RFC 8489
§5); a WireGuard message starts with the le32 type 1..4, i.e. a first byte 1..4 and three zero bytes. The two
cannot both hold for a STUN Binding message (its second byte is 0x01 or 0x11 for responses, 0x01 for requests),
so a datagram that looks like WireGuard always goes to the device, whatever its bytes 4..8 hold.

``BindingDiscovery`` owns the client transactions (sans-I/O, driven by ``now``): ``create_request`` gives the bytes
to send to a STUN server, ``receive`` takes a STUN datagram and either learns the server-reflexive address or drops
it with a ``StunDrop`` counted in ``stats``. A response changes the reflexive address only if it answers a
transaction we started, to the server we sent it to, before the transaction expired, and carries a well-formed
XOR-MAPPED-ADDRESS; anything else is dropped and changes nothing (style guide §0 rule 3). Nothing here ever
touches a peer's endpoint: STUN datagrams never reach the device.

The message codec is aioice's (``aioice.stun``: ``Message``, ``parse_message``), a maintained implementation of
RFC 5389/8489 framing, XOR addresses and FINGERPRINT, reached through the ``StunCodec`` interface: its
implementation, ``wgpy.nat.io.stun_codec.AioiceStunCodec``, lives in the I/O layer because importing anything of
aioice runs its package ``__init__``, which imports ``aioice.ice`` and with it asyncio, socket, ssl, subprocess,
dnspython and ifaddr (aioice 0.13; ``tests/core/test_layering.py`` checks that this module pulls in none of them).
aioice's ``Transaction`` (asyncio timers) is not used: retransmission is driven by ``now`` (``handle_timer``).
"""

from __future__ import annotations

import collections
import enum
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

__all__ = [
    "MAGIC_COOKIE",
    "BindingDiscovery",
    "DatagramKind",
    "StunCodec",
    "StunDrop",
    "StunStats",
    "classify",
]

MAGIC_COOKIE: Final = 0x2112A442  # RFC 8489 §5
STUN_HEADER_SIZE: Final = 20  # RFC 8489 §5
STUN_RTO: Final = 0.5  # seconds, initial retransmission timeout (RFC 8489 §6.2.1: 500 ms is RECOMMENDED)
STUN_MAX_TRANSMISSIONS: Final = 7  # RFC 8489 §6.2.1 Rc
STUN_TRANSACTION_TIMEOUT: Final = 8.0  # seconds a transaction stays answerable (ours: under Rm*RTO = 16 x 0.5 s)
MAX_TRANSACTIONS: Final = 16  # outstanding transactions kept (ours: a bound against a local runaway)
BINDING_REFRESH_TIME: Final = 25.0  # seconds between discoveries, under a typical 30 s UDP NAT timeout (RFC 4787 §4.3)

_HEADER: Final = struct.Struct("!HHI12s")
# RFC 8489 §5: the class is bits C1 (0x0100) and C0 (0x0010) of the message type; the method is the other 12 bits.
_CLASS_MASK: Final = 0x0110
_CLASS_SUCCESS: Final = 0x0100
_CLASS_ERROR: Final = 0x0110
_METHOD_MASK: Final = 0x3EEF
_METHOD_BINDING: Final = 0x0001


class StunCodec(Protocol):
    """The STUN message codec ``BindingDiscovery`` uses (``wgpy.nat.io.stun_codec.AioiceStunCodec``)."""

    def binding_request(self, transaction_id: bytes) -> bytes:
        """A Binding request with this 96-bit transaction id and a FINGERPRINT."""
        ...

    def mapped_address(self, data: bytes) -> object:
        """The XOR-MAPPED-ADDRESS of a response as the codec decoded it (``None`` if absent).

        Raises:
            ValueError: ``data`` is not a well-formed STUN message (framing, attributes, FINGERPRINT). Any other
                exception from the codec is treated the same way.
        """
        ...


class DatagramKind(enum.Enum):
    """What a datagram on the WireGuard socket is."""

    WIREGUARD = enum.auto()
    STUN = enum.auto()


def classify(data: bytes) -> DatagramKind:
    """Which protocol ``data`` belongs to, from its first 8 bytes (cheap: the hot path calls it per datagram).

    A WireGuard-shaped header (le32 type 1..4) always wins, so no transport message is ever diverted; everything
    else with the magic cookie at offset 4 and the two top bits zero is STUN. The rest goes to the device, which
    drops what it cannot use with its own counters.
    """
    if len(data) < STUN_HEADER_SIZE or data[0] & 0xC0:
        return DatagramKind.WIREGUARD
    if 1 <= data[0] <= 4 and data[1] == 0 and data[2] == 0 and data[3] == 0:
        return DatagramKind.WIREGUARD
    if data[4] == 0x21 and data[5] == 0x12 and data[6] == 0xA4 and data[7] == 0x42:
        return DatagramKind.STUN
    return DatagramKind.WIREGUARD


class StunDrop(enum.Enum):
    """Why a STUN datagram was dropped (counted in ``StunStats.drops``)."""

    MALFORMED = enum.auto()  # not parseable as STUN (length, attributes, fingerprint)
    NOT_A_RESPONSE = enum.auto()  # a request or indication: we are not a STUN server
    WRONG_METHOD = enum.auto()  # not Binding
    UNKNOWN_TRANSACTION = enum.auto()  # no outstanding transaction with this id (forged, late or replayed)
    WRONG_SOURCE = enum.auto()  # the transaction was sent to another address
    ERROR_RESPONSE = enum.auto()  # the server refused (counted; the transaction ends)
    NO_MAPPED_ADDRESS = enum.auto()  # success without a usable XOR-MAPPED-ADDRESS
    LIMIT = enum.auto()  # too many transactions outstanding: a request was not created


@dataclass(slots=True)
class StunStats:
    drops: collections.Counter[StunDrop] = field(default_factory=collections.Counter)
    requests_sent: int = 0
    responses_accepted: int = 0


@dataclass(slots=True)
class _Transaction:
    server: tuple[str, int]
    data: bytes
    started_at: float
    next_send_at: float
    interval: float
    sent: int = 1


def _same_address(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return len(a) >= 2 and len(b) >= 2 and a[0] == b[0] and a[1] == b[1]


class BindingDiscovery:
    """Client side of STUN Binding transactions on one socket (sans-I/O).

    Args:
        codec: encodes requests and decodes responses (``StunCodec``).
        rng: randomness for the 96-bit transaction ids (RFC 8489 §5: uniformly random).
    """

    def __init__(self, codec: StunCodec, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        self._codec = codec
        self._rng = rng
        self._transactions: dict[bytes, _Transaction] = {}
        self._outbox: list[tuple[bytes, tuple[str, int]]] = []
        #: The server-reflexive address learnt last, per STUN server.
        self.reflexive: dict[tuple[str, int], tuple[str, int]] = {}
        #: When ``reflexive`` last changed or was confirmed, per server.
        self.confirmed_at: dict[tuple[str, int], float] = {}
        self.stats = StunStats()

    # --- inputs ---------------------------------------------------------------------------------------------------

    def start(self, server: tuple[str, int], now: float) -> bool:
        """Start a Binding transaction to ``server``; its first request is in ``datagrams_to_send()``.

        Returns ``False`` (and counts ``LIMIT``) when too many transactions are outstanding.
        """
        self._expire(now)
        if len(self._transactions) >= MAX_TRANSACTIONS:
            self.stats.drops[StunDrop.LIMIT] += 1
            return False
        transaction_id = self._rng(12)
        data = self._codec.binding_request(transaction_id)
        self._transactions[transaction_id] = _Transaction(server, data, now, now + STUN_RTO, STUN_RTO)
        self._outbox.append((data, server))
        self.stats.requests_sent += 1
        return True

    def receive(self, data: bytes, source: tuple[object, ...], now: float) -> tuple[str, int] | None:
        """Consume a datagram ``classify`` called STUN. Returns the reflexive address it taught us, or ``None``.

        Never raises on remote input: every refusal is a counted ``StunDrop`` and leaves all state unchanged.
        """
        self._expire(now)
        if len(data) < STUN_HEADER_SIZE:
            self._drop(StunDrop.MALFORMED)
            return None
        type_, _length, _cookie, transaction_id = _HEADER.unpack_from(data)
        # Cheap checks first: class and method from the header, the transaction id, the source; only then parse.
        message_class = type_ & _CLASS_MASK
        if message_class not in (_CLASS_SUCCESS, _CLASS_ERROR):
            self._drop(StunDrop.NOT_A_RESPONSE)
            return None
        if type_ & _METHOD_MASK != _METHOD_BINDING:
            self._drop(StunDrop.WRONG_METHOD)
            return None
        transaction = self._transactions.get(transaction_id)
        if transaction is None:
            self._drop(StunDrop.UNKNOWN_TRANSACTION)
            return None
        if not _same_address(transaction.server, source):
            self._drop(StunDrop.WRONG_SOURCE)
            return None
        try:
            mapped = self._codec.mapped_address(bytes(data))
        except Exception:  # aioice raises ValueError, but struct/ipaddress/unicode errors are possible too
            self._drop(StunDrop.MALFORMED)
            return None
        if message_class == _CLASS_ERROR:
            del self._transactions[transaction_id]
            self._drop(StunDrop.ERROR_RESPONSE)
            return None
        if not (
            isinstance(mapped, tuple)
            and len(mapped) == 2
            and isinstance(mapped[0], str)
            and isinstance(mapped[1], int)
            and 0 < mapped[1] < 65536
        ):
            self._drop(StunDrop.NO_MAPPED_ADDRESS)
            return None
        # Authenticated as far as STUN Binding allows (the id is 96 random bits, the source is the server): commit.
        del self._transactions[transaction_id]
        address = (mapped[0], mapped[1])
        self.reflexive[transaction.server] = address
        self.confirmed_at[transaction.server] = now
        self.stats.responses_accepted += 1
        return address

    def handle_timer(self, now: float) -> None:
        """Retransmit what is due (RFC 8489 §6.2.1: doubling intervals), forget what expired."""
        self._expire(now)
        for transaction in self._transactions.values():
            if transaction.next_send_at <= now and transaction.sent < STUN_MAX_TRANSMISSIONS:
                transaction.sent += 1
                transaction.interval *= 2
                transaction.next_send_at = now + transaction.interval
                self._outbox.append((transaction.data, transaction.server))

    # --- outputs --------------------------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, tuple[str, int]]]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        deadlines = [
            t.next_send_at if t.sent < STUN_MAX_TRANSMISSIONS else t.started_at + STUN_TRANSACTION_TIMEOUT
            for t in self._transactions.values()
        ]
        return min(deadlines, default=None)

    @property
    def outstanding(self) -> int:
        return len(self._transactions)

    # --- internals ------------------------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for tid in [t for t, tr in self._transactions.items() if now - tr.started_at >= STUN_TRANSACTION_TIMEOUT]:
            del self._transactions[tid]

    def _drop(self, reason: StunDrop) -> None:
        self.stats.drops[reason] += 1
        return None
