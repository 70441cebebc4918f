"""A configured peer: its handshake, keypairs, timers, cookie state, staged packets and counters (kernel peer.c).

Theory of operation: a ``Peer`` is plain state. It never sends anything itself; the ``Device`` reads and updates it
at each input. Its allowed IPs live in the device's routing table (``allowedips.py``), not here, so that a prefix
can move between peers atomically.
"""

from __future__ import annotations

from collections import deque

from .constants import MAX_STAGED_PACKETS
from .cookie import CookieGenerator
from .events import Endpoint
from .keypair import Keypairs
from .keys import PresharedKey, PublicKey
from .noise import Handshake, StaticIdentity
from .timers import PeerTimers

__all__ = ["Peer"]


class Peer:
    """One remote WireGuard peer as the device knows it."""

    __slots__ = (
        "cookie",
        "endpoint",
        "handshake",
        "keypairs",
        "last_handshake_at",
        "last_sent_handshake_at",
        "public_key",
        "rx_bytes",
        "staged",
        "timers",
        "tx_bytes",
    )

    def __init__(
        self,
        public_key: PublicKey,
        local: StaticIdentity | None,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        persistent_keepalive_interval: int = 0,
    ) -> None:
        self.public_key = public_key
        self.handshake = Handshake(local, public_key, preshared_key)
        self.keypairs = Keypairs()
        self.timers = PeerTimers(persistent_keepalive_interval)
        self.cookie = CookieGenerator(public_key)
        self.endpoint: Endpoint | None = endpoint
        self.staged: deque[bytes] = deque()
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake_at: float | None = None  # device monotonic clock; None = never
        self.last_sent_handshake_at: float | None = None

    def __repr__(self) -> str:
        return f"peer({self.public_key.short()})"

    @property
    def preshared_key(self) -> PresharedKey:
        return self.handshake.preshared_key

    @property
    def persistent_keepalive_interval(self) -> int:
        return self.timers.persistent_keepalive_interval

    def stage(self, packet: bytes) -> bool:
        """Queue a packet until a session exists. Returns ``False`` if the oldest one had to be dropped."""
        full = len(self.staged) >= MAX_STAGED_PACKETS
        if full:
            self.staged.popleft()
        self.staged.append(packet)
        return not full
