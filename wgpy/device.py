"""The sans-I/O WireGuard engine: configuration, the three inputs and outputs, the timer heap (kernel device.c;
wireguard-go device.go). The send path is ``send.py`` (send.c) and the receive path ``receive.py`` (receive.c).

Theory of operation: a ``Device`` is a state machine with three inputs and four outputs, in aioquic's shape.

Inputs: ``receive_datagram(data, endpoint, now)`` for every UDP datagram (``receive.py``), ``send_packet(ip_packet,
now)`` / ``send_packets`` for the IP packets read from the TUN device (``send.py``), and ``handle_timer(now)`` when
``get_timer()`` says so (or on any periodic tick). Outputs, drained by the driver after each input (``transmit.py``
holds the one drain loop every driver uses): ``datagrams_to_send()``, ``packets_to_tun()`` (and ``seal_jobs()``
when sealing is offloaded), ``get_timer()`` and ``next_event()``. The device never reads a clock, never draws
randomness except through the injected ``rng``, and never touches a socket: ``now`` is monotonic seconds that count
through suspend, and ``wall_ns`` (optional on every input, needed for the TAI64N timestamps of initiations) is the
Unix time in nanoseconds. The sockets (their port, their fwmark) are the driver's: the device has no socket state.

Transport messages are sealed by the device's ``sealer``: ``InlineSealer`` (the default) encrypts here and queues
the datagrams; ``OffloadSealer`` (``seal_offload = True``) only reserves the counters and hands the driver
``SealJob``s to run wherever it likes, with ``SealJob.run`` doing exactly what the device would have done.

Timers: each peer's ``PeerTimers`` is only deadlines. The device keeps a heap of the peers' next deadlines so that
``get_timer()`` does not walk every peer after every input; a peer's timers mark the peer as changed themselves
whenever a deadline moves (``PeerTimers.watch``), and the heap looks at those peers only. Stale heap entries are
skipped lazily. ``handle_timer`` runs the ``expired_*`` actions of kernel timers.c for every peer that is due.
"""

from __future__ import annotations

import collections
import enum
import functools
import heapq
import ipaddress
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from .allowedips import AllowedIPs
from .constants import MAX_TIMER_HANDSHAKES, REJECT_AFTER_MESSAGES, REKEY_AFTER_MESSAGES
from .cookie import CookieChecker
from .errors import ConfigError, DropReason
from .events import Endpoint, Event, KeypairExpired, PeerRemoved
from .indextable import IndexTable
from .keylog import KeyLogWriter
from .keypair import Keypair
from .keys import PresharedKey, PrivateKey, PublicKey
from .noise import Handshake, StaticIdentity
from .packetrun import PacketRun, flat_packets
from .peer import Peer
from .ratelimiter import RateLimiter
from .receive import HANDSHAKE_LOAD_THRESHOLD, LoadMeter, Receiver, endpoint_bytes
from .send import InlineSealer, KeypairRetired, OffloadSealer, PlaintextFilter, Sealer, SealJob
from .timers import TimerName

__all__ = [
    "DEFAULT_MTU",
    "HANDSHAKE_LOAD_THRESHOLD",
    "KEEP",
    "ConfigurationChange",
    "Device",
    "DeviceStats",
    "Endpoint",
    "IPNetwork",
    "KeypairRetired",
    "PlaintextFilter",
    "SealJob",
    "endpoint_bytes",
]

logger = logging.getLogger("wgpy.device")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MTU: Final = 1420  # wg-quick's default for a 1500-byte link
MAX_EVENTS: Final = 1024  # events kept if the driver never drains them (ours)
_DROP_LOG_INTERVAL: Final = 1.0  # at most one debug line per reason and second
_HEAP_SLACK: Final = 64  # stale timer-heap entries tolerated beyond twice the live ones before a rebuild (ours)


class _Keep(enum.Enum):
    KEEP = enum.auto()


KEEP: Final = _Keep.KEEP  # ``begin_change(private_key=KEEP)``: leave the private key as it is


@dataclass(slots=True)
class DeviceStats:
    """Counters of the device as a whole; per-peer byte counters live on each ``Peer``."""

    drops: collections.Counter[DropReason] = field(default_factory=collections.Counter)
    handshakes_completed: int = 0
    cookie_replies_sent: int = 0
    packets_received: int = 0
    packets_sent: int = 0
    _drop_logged_at: dict[DropReason, float] = field(default_factory=dict, repr=False, compare=False)

    def drop(self, reason: DropReason, now: float) -> None:
        """Count a dropped datagram or packet (drops are counted, never raised), with a rate-limited debug line."""
        self.drops[reason] += 1
        if logger.isEnabledFor(logging.DEBUG):
            last = self._drop_logged_at.get(reason)
            if last is None or now - last >= _DROP_LOG_INTERVAL:
                self._drop_logged_at[reason] = now
                logger.debug("dropped a datagram or packet: %s", reason.name)


class Device(Receiver):
    """A WireGuard interface without I/O: feed it datagrams, IP packets and a clock; take datagrams and packets out."""

    def __init__(
        self,
        private_key: PrivateKey | None = None,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        mtu: int = DEFAULT_MTU,
        handshake_load_threshold: float = HANDSHAKE_LOAD_THRESHOLD,
        listen_port: int | None = None,
    ) -> None:
        """
        Args:
            private_key: the static key; ``None`` until ``set_private_key``.
            rng: the only source of randomness (indices, ephemeral keys, jitter).
            mtu: the TUN MTU, which bounds the padding of transport plaintexts.
            handshake_load_threshold: handshake messages per second above which mac2 is demanded.
            listen_port: ignored, kept so that old callers still construct a device: the UDP port is the
                driver's (``Tunnel.listen_port``), not the engine's.
        """
        del listen_port
        self._rng = rng
        self.mtu = mtu
        self.identity: StaticIdentity | None = None
        self.peers: dict[PublicKey, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.index_table: IndexTable[Peer, Handshake | Keypair] = IndexTable(rng)
        self.cookie_checker = CookieChecker(None, rng)
        self.ratelimiter = RateLimiter()
        self.stats = DeviceStats()
        #: An optional ACL on plaintext packets (``wgpy.mesh``); ``None`` lets everything through.
        self.packet_filter: PlaintextFilter | None = None
        #: Set to a ``KeyLogWriter`` to export session secrets for Wireshark (``--keylog``); ``None`` by default.
        self.keylog: KeyLogWriter | None = None
        # Test hooks: the limits are attributes so a test can lower them without editing the constants.
        self.rekey_after_messages = REKEY_AFTER_MESSAGES
        self.reject_after_messages = REJECT_AFTER_MESSAGES
        self._load = LoadMeter(handshake_load_threshold)
        self._wall_offset_ns = 0
        self._datagrams: list[tuple[bytes, Endpoint]] = []
        self._packets: list[bytes] = []
        #: Runs of decrypted packets kept in their buffer (``receive_gro``), each with its place in ``_packets``.
        self._runs: list[tuple[int, PacketRun]] = []
        self._jobs: list[SealJob | KeypairRetired] = []
        self._events: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        self._inline_sealer = InlineSealer(self._datagrams)
        self._offload_sealer = OffloadSealer(self._jobs)
        #: Where transport plaintexts are sealed (``InlineSealer`` unless ``seal_offload`` is set).
        self.sealer: Sealer = self._inline_sealer
        # Timer bookkeeping, so that get_timer() does not walk every peer after every input: the peers whose timers
        # changed since the last look (each peer's timers add it, see add_peer), each peer's deadline as last seen,
        # and a heap of those deadlines (entries that no longer match a peer's deadline are skipped lazily).
        self._touched: set[Peer] = set()
        self._deadline_of: dict[Peer, float] = {}
        self._deadlines: list[tuple[float, int, Peer]] = []
        # Bumped by every change to the peers, their allowed IPs or the private key made through this API, so that a
        # ConfigurationChange built beside the device can tell that its starting point moved under it.
        self._generation = 0
        if private_key is not None:
            self.set_private_key(private_key)

    def __repr__(self) -> str:
        me = self.identity.public_key.short() if self.identity else "no key"
        return f"Device({me}, {len(self.peers)} peers)"

    @property
    def seal_offload(self) -> bool:
        """Whether transport messages come out of ``seal_jobs()`` unsealed (``OffloadSealer``) instead of out of
        ``datagrams_to_send()``. Setting it swaps ``sealer``; jobs already queued stay in ``seal_jobs()``."""
        return self.sealer is self._offload_sealer

    @seal_offload.setter
    def seal_offload(self, offload: bool) -> None:
        self.sealer = self._offload_sealer if offload else self._inline_sealer

    # ------------------------------------------------------------------------------------------------------------
    # Configuration (local API: misuse raises ConfigError)
    # ------------------------------------------------------------------------------------------------------------

    @property
    def private_key(self) -> PrivateKey | None:
        return self.identity.private_key if self.identity else None

    @property
    def public_key(self) -> PublicKey | None:
        return self.identity.public_key if self.identity else None

    def set_private_key(self, private_key: PrivateKey | None) -> None:
        """Change (or clear) the static private key. Every session is dropped; the peers will re-handshake.

        A peer whose public key equals our new public key is removed, as the kernel does.
        """
        if private_key is not None and self.identity is not None and private_key == self.identity.private_key:
            return
        self._generation += 1
        self.identity = StaticIdentity(private_key) if private_key is not None else None
        self.cookie_checker.set_public_key(self.public_key)
        own = self.public_key
        if own is not None and own in self.peers:
            self.remove_peer(own)
        for peer in self.peers.values():
            self.reset_sessions(peer)
            peer.handshake.set_identity(self.identity)

    def reset_sessions(self, peer: Peer) -> None:
        """Forget the peer's handshake in progress and all its keypairs, so that the next packet to it starts a new
        handshake at once. What a key change does to every peer; a conformance tester or a driver that knows the
        other side restarted can ask for it alone. Staged packets and timers other than the keys' are kept.
        """
        self._clear_sessions(peer)
        # Kernel wg_noise_expire_current_peer_keypairs resets last_sent_handshake, so that the next packet
        # starts the new handshake at once instead of waiting out the REKEY_TIMEOUT rate limit (with no
        # retransmission timer armed to retry it).
        peer.last_sent_handshake_at = None

    def add_peer(
        self,
        public_key: PublicKey,
        *,
        preshared_key: PresharedKey | None = None,
        endpoint: Endpoint | None = None,
        allowed_ips: Iterable[IPNetwork | str] = (),
        persistent_keepalive_interval: int | None = None,
        now: float = 0.0,
    ) -> Peer:
        """Add a peer, or update it if it exists. Allowed IPs are added to those it has.

        Settings left as ``None`` keep their current value (a new peer starts with none), so an update never
        resets a persistent keepalive it did not mention.
        """
        if not isinstance(public_key, PublicKey):
            raise ConfigError("a peer is identified by a PublicKey")
        if self.public_key is not None and public_key == self.public_key:
            raise ConfigError("a peer cannot have the device's own public key")
        # Validate everything before touching the peer table, so a ConfigError leaves no half-added peer.
        networks = [_network(n) for n in allowed_ips]
        if persistent_keepalive_interval is not None and not 0 <= persistent_keepalive_interval <= 65535:
            raise ConfigError("persistent keepalive interval must be between 0 and 65535 seconds")
        self._generation += 1
        peer = self.peers.get(public_key)
        if peer is None:
            peer = Peer(public_key, self.identity)
            self._watch(peer)
            self.peers[public_key] = peer
        if preshared_key is not None:
            self.set_preshared_key(peer, preshared_key)
        if endpoint is not None:
            peer.endpoint = endpoint
        for network in networks:
            self.allowed_ips.insert(network, peer)
        if persistent_keepalive_interval is not None:
            self.set_persistent_keepalive(peer, persistent_keepalive_interval, now)
        return peer

    def peer(self, public_key: PublicKey) -> Peer | None:
        return self.peers.get(public_key)

    def remove_peer(self, public_key: PublicKey) -> bool:
        """Remove a peer: its keys are zeroed, its sessions dropped and its allowed IPs freed."""
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return False
        self._generation += 1
        self.allowed_ips.remove_by_peer(peer)
        self._retire_peer(peer)
        return True

    def _retire_peer(self, peer: Peer) -> None:
        """What removing a peer does besides taking it out of ``peers`` and ``allowed_ips``."""
        self._clear_sessions(peer)
        peer.timers.stop()  # its heap entry becomes stale
        peer.timers.unwatch()  # no reference cycle: the peer is freed as soon as the last reference goes
        peer.staged.clear()
        self._events.append(PeerRemoved(peer.public_key))

    def clear_peers(self) -> None:
        for public_key in list(self.peers):
            self.remove_peer(public_key)

    def set_preshared_key(self, peer: Peer, preshared_key: PresharedKey | None) -> None:
        peer.handshake.preshared_key = preshared_key if preshared_key is not None else PresharedKey.zero()

    def set_persistent_keepalive(self, peer: Peer, interval: int, now: float) -> None:
        """Set the persistent keepalive interval in seconds (0 disables). A new interval sends a keepalive at once."""
        if not 0 <= interval <= 65535:
            raise ConfigError("persistent keepalive interval must be between 0 and 65535 seconds")
        changed = interval != peer.timers.persistent_keepalive_interval
        peer.timers.set_persistent_keepalive_interval(interval)
        if interval and changed and peer.endpoint is not None and self.identity is not None:
            self._send_keepalive(peer, now)

    def set_allowed_ips(self, peer: Peer, networks: Iterable[IPNetwork | str]) -> None:
        """Replace the peer's allowed IPs (``replace_allowed_ips``); a prefix owned by another peer moves."""
        parsed = [_network(n) for n in networks]
        self._generation += 1
        self.allowed_ips.remove_by_peer(peer)
        for network in parsed:
            self.allowed_ips.insert(network, peer)

    # ------------------------------------------------------------------------------------------------------------
    # Outputs
    # ------------------------------------------------------------------------------------------------------------

    # The output lists are emptied in place, not replaced: the sealers append to them.

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        """UDP datagrams to send, with their destinations, since the last call."""
        queued = self._datagrams
        out = queued.copy()
        queued.clear()
        return out

    def packets_to_tun(self) -> list[bytes]:
        """Decrypted IP packets to write to the TUN device, since the last call."""
        out, self._packets = self._packets, []
        if self._runs:
            runs, self._runs = self._runs, []
            return flat_packets(_spliced(out, runs))
        return out

    @property
    def runs_pending(self) -> bool:
        """Whether the packets waiting for ``packet_items_to_tun`` include a ``PacketRun``."""
        return bool(self._runs)

    def packet_items_to_tun(self) -> Sequence[bytes | PacketRun]:
        """``packets_to_tun``, except that a run of packets decrypted into one buffer (``receive_gro``) stays a
        ``PacketRun``, in its place among the others, for a sink that writes it from the buffer (``transmit.drain``
        hands it to ``write_run``)."""
        out, self._packets = self._packets, []
        if self._runs:
            runs, self._runs = self._runs, []
            return _spliced(out, runs)
        return out

    def seal_jobs(self) -> list[SealJob | KeypairRetired]:
        """With ``seal_offload``: transport messages to seal and send, and keypairs retired, in order, since the
        last call. Run the jobs in order per keypair; the counters in them are already spent."""
        queued = self._jobs
        out = queued.copy()
        queued.clear()
        return out

    def get_timer(self) -> float | None:
        """The earliest time at which ``handle_timer`` must be called, or ``None``."""
        self._refresh_deadlines()
        heap = self._deadlines
        while heap:
            deadline, _, peer = heap[0]
            if self._deadline_of.get(peer) == deadline:
                return deadline
            heapq.heappop(heap)  # stale: the peer's deadline moved, or the peer is gone
        return None

    def _refresh_deadlines(self) -> None:
        for peer in self._touched:
            deadline = peer.timers.next_deadline() if self.peers.get(peer.public_key) is peer else None
            if deadline is None:
                self._deadline_of.pop(peer, None)
            elif self._deadline_of.get(peer) != deadline:
                self._deadline_of[peer] = deadline
                heapq.heappush(self._deadlines, (deadline, id(peer), peer))
        self._touched.clear()
        if len(self._deadlines) > 2 * len(self._deadline_of) + _HEAP_SLACK:
            # Mostly stale entries (peers removed, deadlines moved): each holds its peer until it reaches the top,
            # which for a zeroing deadline is minutes away. Rebuild from the live deadlines instead.
            self._deadlines = [(deadline, id(peer), peer) for peer, deadline in self._deadline_of.items()]
            heapq.heapify(self._deadlines)
            self._deadline_of = dict(self._deadline_of)  # it never shrinks by itself once its peers are gone

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------------------------------------------------
    # Input: timers
    # ------------------------------------------------------------------------------------------------------------

    def handle_timer(self, now: float, wall_ns: int | None = None) -> None:
        """Run every timer that is due at ``now``."""
        if wall_ns is not None:
            self._note_wall(now, wall_ns)
        due: list[Peer] = []
        while (deadline := self.get_timer()) is not None and deadline <= now:
            _, _, peer = heapq.heappop(self._deadlines)
            del self._deadline_of[peer]
            due.append(peer)
        for peer in due:
            self._touched.add(peer)  # its heap entry is gone: look at it again whatever the timers do
            for name in peer.timers.due(now):
                if self.peers.get(peer.public_key) is not peer:
                    break
                self._expire(peer, name, now)

    def _expire(self, peer: Peer, name: TimerName, now: float) -> None:
        if name is TimerName.RETRANSMIT_HANDSHAKE:
            self.expired_retransmit_handshake(peer, now)
        elif name is TimerName.SEND_KEEPALIVE:
            self.expired_send_keepalive(peer, now)
        elif name is TimerName.NEW_HANDSHAKE:
            self.expired_new_handshake(peer, now)
        elif name is TimerName.ZERO_KEY_MATERIAL:
            self.expired_zero_key_material(peer, now)
        else:
            self.expired_send_persistent_keepalive(peer, now)

    def expired_retransmit_handshake(self, peer: Peer, now: float) -> None:
        """The initiation got no response within REKEY_TIMEOUT: resend it, or give up after 18 attempts."""
        if peer.timers.handshake_attempts > MAX_TIMER_HANDSHAKES:
            logger.debug("%r: handshake did not complete after %d attempts, giving up", peer, MAX_TIMER_HANDSHAKES + 2)
            peer.timers.on_handshake_gave_up(now)
            peer.staged.clear()
            return
        peer.timers.handshake_attempts += 1
        self._send_initiation(peer, now, is_retry=True)

    def expired_send_keepalive(self, peer: Peer, now: float) -> None:
        """We received data and sent nothing back for KEEPALIVE_TIMEOUT: send an empty packet."""
        self._send_keepalive(peer, now)
        peer.timers.rearm_send_keepalive(now)

    def expired_new_handshake(self, peer: Peer, now: float) -> None:
        """We sent data and heard nothing for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT: start a new handshake."""
        self._send_initiation(peer, now, is_retry=False)

    def expired_zero_key_material(self, peer: Peer, now: float) -> None:
        """No new session for 3 × REJECT_AFTER_TIME: erase every key of the peer."""
        self._clear_sessions(peer)
        self._events.append(KeypairExpired(peer.public_key))

    def expired_send_persistent_keepalive(self, peer: Peer, now: float) -> None:
        """The persistent keepalive interval passed with no authenticated packet either way."""
        if peer.timers.persistent_keepalive_interval:
            self._send_keepalive(peer, now)

    # ------------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------------

    def _clear_sessions(self, peer: Peer) -> None:
        handshake = peer.handshake
        if handshake.local_index:
            self.index_table.remove(handshake.local_index, handshake)
        handshake.clear()
        for keypair in peer.keypairs.clear():
            self._retire(keypair)

    def wall_ns_at(self, now_then: float) -> int:
        """The wall-clock time (ns) of a past ``now`` value, from the latest ``wall_ns`` the driver gave."""
        return self._wall_ns(now_then)

    def _watch(self, peer: Peer) -> None:
        peer.timers.watch(functools.partial(self._touched.add, peer))

    def begin_change(
        self, *, private_key: PrivateKey | _Keep | None = KEEP, replace_peers: bool = False
    ) -> ConfigurationChange:
        """Start a configuration change built beside the running device and swapped in by its ``commit``.

        Args:
            private_key: the new static key, ``None`` to clear it, or ``KEEP`` (the default).
            replace_peers: start from no peers at all (UAPI ``replace_peers``) instead of the current ones.
        """
        return ConfigurationChange(self, private_key, replace_peers)


@dataclass(slots=True)
class _Settings:
    """What a change sets on a peer that is live on the device: applied at the commit, not before."""

    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None


class ConfigurationChange:
    """A configuration change built beside a running ``Device`` and swapped in at once (issue #11 item 3).

    Theory of operation: a 100,000-peer ``set`` takes seconds to apply, and a driver applies it in slices so that
    its data plane keeps running. Applied to the device slice by slice, the data plane would route with half of
    the new configuration (half the peers added, half the old ones gone). Instead the change starts from a copy of
    the device's peer table (a dict of the same ``Peer`` objects) and of its allowed-IPs table, and every step
    writes only to those copies: a new peer is a new ``Peer`` object that nothing on the device can reach, a
    setting of a peer that is live (preshared key, endpoint, keepalive) is noted and applied at the commit. The data
    plane meanwhile keeps using the device's own tables, and the sessions, counters and endpoints it updates on the
    live peers are those very objects, so nothing it does is lost at the swap.

    ``commit`` then swaps the two tables in with a few assignments, applies the noted settings and the key change,
    and makes the removed peers unreachable (their handshake and keypair indices leave the index table);
    ``finish_steps`` does the remaining work in slices after the swap (the removed peers' timers and events, the
    keepalives that a new persistent keepalive sends at once). Until ``commit`` the device is exactly as it was: a
    change that is dropped, ``abandon``ed or fails half-way leaves the old configuration working. A change to the
    device through its own API while this one is built makes ``commit`` refuse (``ConfigError``), since the copies
    would overwrite it; a driver serialises its configuration requests.

    Costs: the copies are made at the start (about 30 ms for 100,000 peers) and the old and new tables exist
    together until the commit. The commit is O(peers with settings noted + removed peers); with a new private key
    it also resets every kept peer (``Device.set_private_key``).
    """

    __slots__ = (
        "_committed",
        "_device",
        "_generation",
        "_identity",
        "_identity_changes",
        "_keepalives",
        "_new",
        "_old_table",
        "_removed",
        "_replace_peers",
        "_settings",
        "allowed_ips",
        "peers",
    )

    def __init__(self, device: Device, private_key: PrivateKey | _Keep | None, replace_peers: bool) -> None:
        self._device = device
        self._generation = device._generation
        self._committed = False
        self._replace_peers = replace_peers
        #: The new peer table and allowed-IPs table (what ``commit`` swaps in).
        self.peers: dict[PublicKey, Peer] = {} if replace_peers else dict(device.peers)
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs() if replace_peers else device.allowed_ips.copy()
        self._new: dict[Peer, None] = {}  # peers created by this change (ordered, compared by identity)
        self._removed: dict[Peer, None] = {}  # live peers that this change removes (replace_peers: see commit)
        self._settings: dict[Peer, _Settings] = {}
        self._keepalives: dict[Peer, None] = {}  # peers whose keepalive interval became non-zero
        self._old_table: AllowedIPs[Peer] | None = None  # freed by finish_steps, not in the commit's step
        current = device.private_key
        self._identity_changes = private_key is not KEEP and private_key != current
        if isinstance(private_key, PrivateKey) and self._identity_changes:
            self._identity: StaticIdentity | None = StaticIdentity(private_key)
        elif private_key is None:
            self._identity = None
        else:
            self._identity = device.identity
        own = self.public_key
        if self._identity_changes and own is not None and own in self.peers:
            self.remove_peer(own)  # as Device.set_private_key does

    @property
    def public_key(self) -> PublicKey | None:
        """The device's public key once the change is committed."""
        return self._identity.public_key if self._identity is not None else None

    def peer(self, public_key: PublicKey) -> Peer | None:
        return self.peers.get(public_key)

    def add_peer(self, public_key: PublicKey) -> Peer:
        """The peer with this key, created (with nothing set) if the change does not have it yet."""
        peer = self.peers.get(public_key)
        if peer is not None:
            return peer
        if public_key == self.public_key:
            raise ConfigError("a peer cannot have the device's own public key")
        peer = Peer(public_key, self._identity)
        self._device._watch(peer)  # its deadlines are looked at only once it is on the device
        self.peers[public_key] = peer
        self._new[peer] = None
        return peer

    def remove_peer(self, public_key: PublicKey) -> bool:
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return False
        self.allowed_ips.remove_by_peer(peer)
        self._settings.pop(peer, None)
        self._keepalives.pop(peer, None)
        if peer in self._new:
            del self._new[peer]
            peer.timers.unwatch()
        else:
            self._removed[peer] = None
        return True

    def set_preshared_key(self, peer: Peer, preshared_key: PresharedKey) -> None:
        if peer in self._new:
            peer.handshake.preshared_key = preshared_key
        else:
            self._noted(peer).preshared_key = preshared_key

    def set_endpoint(self, peer: Peer, endpoint: Endpoint) -> None:
        if peer in self._new:
            peer.endpoint = endpoint
        else:
            self._noted(peer).endpoint = endpoint

    def set_persistent_keepalive(self, peer: Peer, interval: int) -> None:
        """As ``Device.set_persistent_keepalive``: a new non-zero interval sends a keepalive (after the commit)."""
        if not 0 <= interval <= 65535:
            raise ConfigError("persistent keepalive interval must be between 0 and 65535 seconds")
        if peer in self._new:
            if interval != peer.timers.persistent_keepalive_interval:
                peer.timers.set_persistent_keepalive_interval(interval)
                self._note_keepalive(peer, interval)
        else:
            self._noted(peer).persistent_keepalive_interval = interval

    def insert_allowed_ip(self, network: IPNetwork, peer: Peer) -> None:
        self.allowed_ips.insert(network, peer)

    def set_allowed_ips(self, peer: Peer, networks: Iterable[IPNetwork]) -> None:
        self.allowed_ips.remove_by_peer(peer)
        for network in networks:
            self.allowed_ips.insert(network, peer)

    def abandon(self) -> None:
        """Drop the change (the device never saw it); its new peers are freed without the cyclic collector."""
        if not self._committed:
            for peer in self._new:
                peer.timers.unwatch()
            self._new.clear()
            self.peers = {}
            self.allowed_ips = AllowedIPs()

    def commit(self, now: float) -> None:
        """Swap the change in: from here on the data plane sees the whole new configuration.

        Raises:
            ConfigError: the device was configured through its own API since the change began (nothing is
                changed; the change is abandoned), or the change was committed already.
        """
        device = self._device
        if self._committed:
            raise ConfigError("this configuration change was committed already")
        if device._generation != self._generation:
            self.abandon()
            raise ConfigError("the device's configuration changed while this change was being built")
        self._committed = True
        # With replace_peers every peer of the device goes (a key that comes back is a new Peer, as in the kernel).
        removed = dict.fromkeys(device.peers.values()) if self._replace_peers else self._removed
        if self._identity_changes:
            device.identity = self._identity
            device.cookie_checker.set_public_key(self.public_key)
            for peer in self.peers.values():
                if peer not in self._new:
                    device.reset_sessions(peer)
                    peer.handshake.set_identity(self._identity)
        for peer, settings in self._settings.items():
            if settings.preshared_key is not None:
                peer.handshake.preshared_key = settings.preshared_key
            if settings.endpoint is not None:
                peer.endpoint = settings.endpoint
            interval = settings.persistent_keepalive_interval
            if interval is not None and interval != peer.timers.persistent_keepalive_interval:
                peer.timers.set_persistent_keepalive_interval(interval)
                self._note_keepalive(peer, interval)
        self._removed = removed
        self._old_table = device.allowed_ips
        # The old table is never changed again (it goes in finish_steps), so the sets it shares are this one's.
        self.allowed_ips.release_copies()
        if len(removed) > len(self.peers):
            # Copies that lost most of their entries keep the size they had (a dict never shrinks on deletion):
            # after 100,000 peers were removed that was 10 MB of empty slots. Cheap here: few entries are left.
            self.peers = dict(self.peers)
            self.allowed_ips.compact()
        device.peers = self.peers
        device.allowed_ips = self.allowed_ips
        device._generation += 1
        # The removed peers are now out of both tables; what still leads to them is the index table (a response to
        # their initiation, a transport message of one of their sessions): close that now, the rest comes later.
        # Walking the index table costs O(sessions), not O(removed peers).
        for peer in device.index_table.peers():
            if self.peers.get(peer.public_key) is not peer:
                device._clear_sessions(peer)
        # A new peer's deadlines were looked at while it was off the device (and found to be none); the only timer a
        # change arms on a new peer is the persistent keepalive's, so those are the peers to look at again (not all
        # 100,000 new ones: that look took 0.4 s in one step). A live peer's settings called its watcher above.
        device._touched.update(self._keepalives)
        self._settings = {}

    def finish_steps(self, now: float, peers_per_step: int) -> Iterator[int]:
        """The work after ``commit``, in steps of at most ``peers_per_step`` peers (a generator, like
        ``uapi.apply_set_steps``): the removed peers' timers are stopped and ``PeerRemoved`` queued, and a peer
        whose persistent keepalive became non-zero sends its keepalive now (a handshake first, if it has none)."""
        if not self._committed:
            raise ConfigError("finish_steps before commit")
        device = self._device
        self._old_table = None
        done = 0
        removed = self._removed
        while removed:
            peer, _ = removed.popitem()  # freed here, a slice at a time, not all at the end
            device._retire_peer(peer)
            del peer
            done += 1
            if done % peers_per_step == 0:
                yield done
        sending = device.identity is not None
        for peer in self._keepalives:
            if sending and peer.endpoint is not None and device.peers.get(peer.public_key) is peer:
                device._send_keepalive(peer, now)
                done += 1
                if done % peers_per_step == 0:
                    yield done
        self._keepalives = {}
        self._new = {}
        yield done

    def _noted(self, peer: Peer) -> _Settings:
        settings = self._settings.get(peer)
        if settings is None:
            settings = self._settings[peer] = _Settings()
        return settings

    def _note_keepalive(self, peer: Peer, interval: int) -> None:
        if interval:
            self._keepalives[peer] = None
        else:
            self._keepalives.pop(peer, None)


def _network(value: IPNetwork | str) -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except (ValueError, AttributeError):
        raise ConfigError(f"not an IP network: {value!r}") from None


def _spliced(packets: list[bytes], runs: list[tuple[int, PacketRun]]) -> list[bytes | PacketRun]:
    """``packets`` with each run put back at its place (the number of packets before it)."""
    out: list[bytes | PacketRun] = []
    at = 0
    for place, run in runs:
        out += packets[at:place]
        out.append(run)
        at = place
    out += packets[at:]
    return out
