"""Transport keypairs and their rotation (whitepaper §5.4.6, §6.1; kernel noise.c keypair half, send.c, receive.c).

Theory of operation: a completed handshake yields one ``Keypair``: a sending and a receiving ChaCha20-Poly1305 key,
the two 32-bit indices that route transport messages to it, the sending counter and a ``ReplayWindow``. One AEAD
object is built per direction when the keypair is born, so that encrypting a packet builds no cipher.

A peer holds up to three keypairs in ``Keypairs``: ``current`` (used to send), ``previous`` (still accepted on receive
while packets in flight drain) and ``next`` (a responder's new keypair, which it may not send with until the
initiator has proved it has the keys by sending data on it: whitepaper §5.4.5 key confirmation). Methods that retire
keypairs return them, so the device can drop their indices from its index table; retired keypairs are zeroed.

Sealing is split in two so that the AEAD can run elsewhere (a worker process on another core): ``reserve`` hands
out a block of consecutive counters, the one piece of state, and ``seal_run`` turns a key, a receiver index, a first
counter and plaintexts into transport messages with no state at all. ``Keypair.seal_many`` is the two in a row.

Nothing here reads a clock: birth times arrive as ``now``.
"""

from __future__ import annotations

import collections
import itertools
import operator
import struct
from collections.abc import Callable, Sequence
from typing import Final

from . import crypto
from .constants import REJECT_AFTER_MESSAGES
from .messages import MESSAGE_TRANSPORT_HEADER_SIZE, TRANSPORT_HEADER, MessageType
from .replay import ReplayWindow

__all__ = [
    "MESSAGE_PADDING_MULTIPLE",
    "NONCE",
    "TRANSPORT_OVERHEAD",
    "Keypair",
    "Keypairs",
    "aead_rows",
    "padded_length",
    "seal_run",
]

MESSAGE_PADDING_MULTIPLE: Final = 16  # whitepaper §5.4.6: plaintext padded to a multiple of 16 bytes
NONCE: Final = struct.Struct("<4xQ")  # whitepaper §5.4.6: 32 zero bits, then the 64-bit counter little-endian
TRANSPORT_OVERHEAD: Final = MESSAGE_TRANSPORT_HEADER_SIZE + 16  # the header and the Poly1305 tag around a plaintext
_TRANSPORT_TYPE: Final = int(MessageType.TRANSPORT)


def padded_length(length: int, mtu: int | None) -> int:
    """Length of a plaintext of ``length`` bytes after padding to 16, never padding past the MTU."""
    padded = -(-length // MESSAGE_PADDING_MULTIPLE) * MESSAGE_PADDING_MULTIPLE
    if mtu is not None and padded > mtu:
        padded = max(mtu, length)
    return padded


def aead_rows(
    operation: Callable[[bytes, memoryview, None, memoryview], object],
    first_counter: int,
    sources: Sequence[memoryview],
    targets: Sequence[memoryview],
) -> int:
    """``operation(nonce, source, None, target)`` (an AEAD's ``encrypt_into`` or ``decrypt_into``) for each pair of
    ``sources`` and ``targets`` in order, the nonces those of counters ``first_counter``, +1, ... (``NONCE``). Stops
    at the first ``crypto.InvalidTag``; returns how many calls succeeded (``len(sources)`` when all did).

    The loop runs in C: ``map`` drives the calls and a ``deque`` of length 0 drains it, so a run of 44 messages costs
    44 AEAD calls and no Python bytecode between them. When a call fails, ``map`` has taken one item per call from
    ``sources`` so far, failing call included: what is left there tells how many came before it.
    """
    rows = len(sources)
    nonces = map(NONCE.pack, range(first_counter, first_counter + rows))
    remaining = iter(sources)
    try:
        collections.deque(map(operation, nonces, remaining, itertools.repeat(None), targets), maxlen=0)
    except crypto.InvalidTag:
        return rows - operator.length_hint(remaining) - 1
    return rows


def seal_run(
    aead: crypto.Aead, remote_index: int, first_counter: int, padded_plaintexts: Sequence[bytes | memoryview]
) -> list[bytes]:
    """Transport messages (whitepaper §5.4.6) for ``padded_plaintexts`` under counters ``first_counter``, +1, ...

    Pure: the caller owns the counters (``Keypair.reserve``) and must never pass the same one twice for a key.
    """
    encrypt = aead.encrypt
    header = TRANSPORT_HEADER.pack
    nonce = NONCE.pack
    return [
        header(_TRANSPORT_TYPE, remote_index, n) + encrypt(nonce(n), plaintext, None)
        for n, plaintext in enumerate(padded_plaintexts, first_counter)
    ]


class Keypair:
    """One session's keys in both directions (kernel ``struct noise_keypair``)."""

    __slots__ = (
        "_recv_aead",
        "_send_aead",
        "_send_key",
        "created_at",
        "is_initiator",
        "local_index",
        "remote_index",
        "replay",
        "send_counter",
        "valid",
    )

    def __init__(
        self,
        *,
        send_key: bytes,
        recv_key: bytes,
        local_index: int,
        remote_index: int,
        is_initiator: bool,
        now: float,
    ) -> None:
        self._send_aead = crypto.Aead(send_key)
        self._send_key = send_key
        self._recv_aead = crypto.Aead(recv_key)
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.created_at = now
        self.send_counter = 0
        self.replay = ReplayWindow()
        self.valid = True

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"Keypair(local_index={self.local_index:#010x}, {role}, sent={self.send_counter})"

    def seal(self, padded_plaintext: bytes, limit: int = REJECT_AFTER_MESSAGES) -> bytes | None:
        """The transport message carrying ``padded_plaintext``, or ``None`` once the counter reaches ``limit``
        (REJECT_AFTER_MESSAGES; lower in tests) or the keypair is retired.

        Each call uses a new counter, so no (keypair, counter) pair is ever sent twice.
        """
        counter = self.send_counter
        if not self.valid or counter >= limit or counter >= REJECT_AFTER_MESSAGES:
            return None  # only the sending half is used up: received packets still decrypt
        self.send_counter = counter + 1
        header = TRANSPORT_HEADER.pack(_TRANSPORT_TYPE, self.remote_index, counter)
        return header + self._send_aead.encrypt(NONCE.pack(counter), padded_plaintext, None)

    def seal_many(self, padded_plaintexts: Sequence[bytes], limit: int = REJECT_AFTER_MESSAGES) -> list[bytes]:
        """Transport messages for the plaintexts in order, as many as the counter allows (``seal`` of a batch).

        Args:
            padded_plaintexts: already padded packets (an empty one is a keepalive).
            limit: the counter this keypair must not reach (REJECT_AFTER_MESSAGES; lower in tests).

        Returns:
            One message per plaintext, fewer (possibly none) when the counter runs out: only the sending half is
            then used up, and packets the peer sends on this keypair still decrypt.
        """
        first, count = self.reserve(len(padded_plaintexts), limit)
        if count < len(padded_plaintexts):
            padded_plaintexts = padded_plaintexts[:count]
        return seal_run(self._send_aead, self.remote_index, first, padded_plaintexts) if count else []

    def reserve(self, count: int, limit: int = REJECT_AFTER_MESSAGES) -> tuple[int, int]:
        """Take up to ``count`` consecutive sending counters: returns the first and how many were granted.

        Fewer than asked (possibly none) once the counter nears ``limit`` or the keypair is retired. What is
        granted is spent, sealed or not: a counter is never handed out twice.
        """
        counter = self.send_counter
        if not self.valid:
            return counter, 0
        granted = max(0, min(count, min(limit, REJECT_AFTER_MESSAGES) - counter))
        self.send_counter = counter + granted
        return counter, granted

    @property
    def send_aead(self) -> crypto.Aead:
        """The sending cipher (for a ``seal_run`` done later, after the counters were reserved)."""
        return self._send_aead

    @property
    def recv_aead(self) -> crypto.Aead:
        """The receiving cipher, for the receive path's run of messages opened in place (``Keypair.open`` of each,
        without the slicing); the caller checks the counters and the replay window, as ``open``'s callers do."""
        return self._recv_aead

    def export_send_key(self) -> bytes:
        """The raw sending key, for a worker process that seals on another core; empty once zeroed. Secret."""
        return self._send_key

    def open(self, counter: int, message: bytes | memoryview) -> bytes:
        """Decrypt the payload of a transport message. Raises ``crypto.InvalidTag``; does not touch the replay window."""
        return self._recv_aead.decrypt(NONCE.pack(counter), message[MESSAGE_TRANSPORT_HEADER_SIZE:], None)

    def zero(self) -> None:
        """Forget the keys (whitepaper §6.1: key material is erased when no longer needed).

        Python cannot scrub memory reliably; dropping the only references to the AEAD objects and marking the
        keypair invalid is the best it offers, and it guarantees nothing more is sealed or opened with it.
        """
        self.valid = False
        self._send_key = b""
        self._send_aead = _DEAD_AEAD
        self._recv_aead = _DEAD_AEAD


_DEAD_AEAD: Final = crypto.Aead(bytes(32))


class Keypairs:
    """``current`` / ``previous`` / ``next`` of one peer (kernel ``struct noise_keypairs``)."""

    __slots__ = ("current", "next", "previous")

    def __init__(self) -> None:
        self.current: Keypair | None = None
        self.previous: Keypair | None = None
        self.next: Keypair | None = None

    def all(self) -> list[Keypair]:
        return [k for k in (self.current, self.previous, self.next) if k is not None]

    def add(self, new: Keypair) -> list[Keypair]:
        """Install the keypair of a just-finished handshake; returns the keypairs retired.

        An initiator has confirmation already (it received the response), so the new keypair becomes ``current``
        at once. A responder parks it in ``next`` until the initiator sends data with it (``received_with``).
        """
        retired: list[Keypair] = []
        if new.is_initiator:
            if self.next is not None:
                # A responder-side keypair that was never confirmed: keep it as previous so its packets still
                # decrypt, and retire the current one instead.
                retired += [k for k in (self.previous, self.current) if k is not None]
                self.previous, self.next = self.next, None
            else:
                if self.previous is not None:
                    retired.append(self.previous)
                self.previous = self.current
            self.current = new
        else:
            retired += [k for k in (self.next, self.previous) if k is not None]
            self.next = new
            self.previous = None
        for k in retired:
            k.zero()
        return retired

    def received_with(self, keypair: Keypair) -> tuple[bool, list[Keypair]]:
        """Note that authenticated data arrived on ``keypair``.

        Returns whether that confirmed ``next`` (which then becomes ``current``) and the keypairs retired.
        """
        if keypair is not self.next:
            return False, []
        retired = [self.previous] if self.previous is not None else []
        self.previous, self.current, self.next = self.current, self.next, None
        for k in retired:
            k.zero()
        return True, retired

    def clear(self) -> list[Keypair]:
        """Retire every keypair (peer removed, key changed, or key material expired)."""
        retired = self.all()
        self.current = self.previous = self.next = None
        for k in retired:
            k.zero()
        return retired
