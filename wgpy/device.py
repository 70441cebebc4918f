"""The sans-I/O WireGuard engine (kernel device.c + receive.c + send.c; wireguard-go device/).

Theory of operation: a ``Device`` is a state machine with three inputs and four outputs, in aioquic's shape.

Inputs: ``receive_datagram(data, endpoint, now)`` for every UDP datagram, ``send_packet(ip_packet, now)`` for every
IP packet read from the TUN device, and ``handle_timer(now)`` when ``get_timer()`` says so (or on any periodic tick).
Outputs, drained by the driver after each input: ``datagrams_to_send()``, ``packets_to_tun()``, ``get_timer()`` and
``next_event()``. The device never reads a clock, never draws randomness except through the injected ``rng``, and
never touches a socket: ``now`` is monotonic seconds that count through suspend, and ``wall_ns`` (optional on every
input, needed for the TAI64N timestamps of initiations) is the Unix time in nanoseconds.

With ``seal_offload`` set, transport messages are not encrypted here: the device reserves their counters and hands
the driver ``SealJob``s (``seal_jobs()``) to run wherever it likes, on another core for instance, with
``SealJob.run`` (``keypair.seal_run``) doing exactly what the device would have done.

Remote input is checked cheapest first (style rule 5): length and type, then mac1 (one BLAKE2s) before any X25519,
then the cookie (mac2) when the device is under load, then the per-source rate limit, then the Noise handshake; for
transport, the index lookup, the keypair's age and limits, the replay pre-check, the AEAD, the replay commit, and
last the inner IP header and the cryptokey routing source check. Whatever fails is dropped and counted in
``stats.drops`` under one ``DropReason``; nothing from the network raises out of ``receive_datagram`` or changes
state before it authenticates. Only cookie replies answer unauthenticated datagrams.

"Under load" is decided from the rate of handshake messages seen (a sans-I/O core has no queue to measure, which is
what the kernel and wireguard-go look at): above ``handshake_load_threshold`` per second, the device demands mac2 and
stays under load for one more second after the rate falls.
"""

from __future__ import annotations

import collections
import heapq
import ipaddress
import logging
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Protocol

from . import crypto, ip, noise
from .allowedips import AllowedIPs
from .constants import (
    KEEPALIVE_TIMEOUT,
    MAX_TIMER_HANDSHAKES,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
    REPLAY_WINDOW_SIZE,
)
from .cookie import CookieChecker, MacState
from .errors import ConfigError, DropReason
from .events import EndpointChanged, Event, HandshakeCompleted, KeypairExpired, PeerRemoved
from .indextable import IndexTable
from .keylog import KeyLogWriter
from .keypair import MESSAGE_PADDING_MULTIPLE, Keypair, padded_length, seal_run
from .keys import PresharedKey, PrivateKey, PublicKey
from .messages import (
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT_MIN_SIZE,
    CookieReply,
    Initiation,
    MessageType,
    Response,
    unpack,
)
from .noise import Handshake, HandshakeRejected, StaticIdentity
from .peer import Endpoint, Peer
from .ratelimiter import RateLimiter
from .timers import TimerName

__all__ = [
    "DEFAULT_MTU",
    "Device",
    "DeviceStats",
    "Endpoint",
    "IPNetwork",
    "KeypairRetired",
    "PacketFilter",
    "SealJob",
    "endpoint_bytes",
]

logger = logging.getLogger("wgpy.device")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_MTU: Final = 1420  # wg-quick's default for a 1500-byte link
HANDSHAKE_LOAD_THRESHOLD: Final = 128.0  # handshake messages per second before mac2 is demanded (ours)
UNDER_LOAD_AFTER_TIME: Final = 1.0  # kernel/wireguard-go: stay under load for 1 s after the pressure ends
MAX_EVENTS: Final = 1024  # events kept if the driver never drains them (ours)
_DROP_LOG_INTERVAL: Final = 1.0  # at most one debug line per reason and second

_TYPE: Final = struct.Struct("<I")
_ZEROS: Final = tuple(bytes(n) for n in range(MESSAGE_PADDING_MULTIPLE))  # padding, by length
_TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
_TRANSPORT_OVERHEAD: Final = _TRANSPORT_HEADER.size + 16  # header and Poly1305 tag around each plaintext
_INITIATION: Final = int(MessageType.INITIATION)
_RESPONSE: Final = int(MessageType.RESPONSE)
_COOKIE_REPLY: Final = int(MessageType.COOKIE_REPLY)
_TRANSPORT: Final = int(MessageType.TRANSPORT)


@dataclass(slots=True)
class DeviceStats:
    """Counters of the device as a whole; per-peer byte counters live on each ``Peer``."""

    drops: collections.Counter[DropReason] = field(default_factory=collections.Counter)
    handshakes_completed: int = 0
    cookie_replies_sent: int = 0
    packets_received: int = 0
    packets_sent: int = 0


@dataclass(slots=True)
class SealJob:
    """Transport messages to seal and send, with their counters already taken (``Device.seal_offload``).

    The job keeps the key it was made with: if the keypair is retired before the job runs, the job still seals
    what the device committed to while the key was valid, and nothing more.
    """

    local_index: int  # which keypair (stable while it lives; a ``KeypairRetired`` with it ends its use)
    remote_index: int
    first_counter: int
    plaintexts: list[bytes]  # padded; an empty one is a keepalive
    endpoint: Endpoint
    aead: crypto.Aead = field(repr=False)
    send_key: bytes = field(repr=False)

    def run(self) -> list[bytes]:
        """The transport messages, exactly as ``Keypair.seal_many`` would have made them."""
        return seal_run(self.aead, self.remote_index, self.first_counter, self.plaintexts)


@dataclass(frozen=True, slots=True)
class KeypairRetired:
    """In ``seal_jobs()``: the keypair with this index is gone; whoever holds its key must drop it."""

    local_index: int


class PacketFilter(Protocol):
    """A filter on plaintext IP packets (``wgpy.mesh.PacketFilter`` implements it): ``True`` lets a packet pass.

    ``check_outbound`` sees each packet before it is encrypted (a refused one never starts a handshake);
    ``check_inbound`` sees each decrypted packet after the cryptokey-routing source check. Keepalives and handshake
    messages never reach it.
    """

    def check_outbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool: ...

    def check_inbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool: ...


class _LoadMeter:
    """Estimates the handshake message rate over a sliding second from ``now`` values."""

    __slots__ = ("_bucket", "_count", "_previous", "_threshold", "_under_load_until")

    def __init__(self, threshold: float) -> None:
        self._threshold = threshold
        self._bucket = 0
        self._count = 0
        self._previous = 0
        self._under_load_until: float | None = None

    def note(self, now: float) -> bool:
        """Count one handshake message at ``now``; return whether the device is under load."""
        bucket = int(now)
        if bucket != self._bucket:
            self._previous = self._count if bucket == self._bucket + 1 else 0
            self._bucket, self._count = bucket, 0
        self._count += 1
        rate = self._count + self._previous * (1.0 - (now - bucket))
        if rate > self._threshold:
            self._under_load_until = now + UNDER_LOAD_AFTER_TIME
        return self._under_load_until is not None and now < self._under_load_until


def _pad(packet: bytes, mtu: int) -> bytes:
    """``packet`` with zeros up to a multiple of 16 bytes, never past the MTU (whitepaper §5.4.6)."""
    padding = -len(packet) % MESSAGE_PADDING_MULTIPLE
    if not padding:
        return packet
    if len(packet) + padding > mtu:
        padding = padded_length(len(packet), mtu) - len(packet)
    return packet + _ZEROS[padding] if padding else packet


def _packed_address(host: str) -> bytes:
    """An endpoint's IP address as 4 or 16 bytes (a host that is no IP address, only seen in tests, hashes to 16)."""
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return crypto.hash(str(host).encode())[:16]


def endpoint_bytes(endpoint: Endpoint) -> bytes:
    """The endpoint's address packed as IP || big-endian port: what cookies bind to (wireguard-go ``DstToBytes``)."""
    return _packed_address(endpoint[0]) + (endpoint[1] & 0xFFFF).to_bytes(2, "big")


class Device:
    """A WireGuard interface without I/O: feed it datagrams, IP packets and a clock; take datagrams and packets out."""

    def __init__(
        self,
        private_key: PrivateKey | None = None,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        mtu: int = DEFAULT_MTU,
        listen_port: int = 0,
        handshake_load_threshold: float = HANDSHAKE_LOAD_THRESHOLD,
    ) -> None:
        self._rng = rng
        self.mtu = mtu
        self.listen_port = listen_port
        self.fwmark = 0
        self.identity: StaticIdentity | None = None
        self.peers: dict[PublicKey, Peer] = {}
        self.allowed_ips: AllowedIPs[Peer] = AllowedIPs()
        self.index_table: IndexTable[Peer, Handshake | Keypair] = IndexTable(rng)
        self.cookie_checker = CookieChecker(None, rng)
        self.ratelimiter = RateLimiter()
        self.stats = DeviceStats()
        # Test hooks: the limits are attributes so a test can lower them without editing the constants.
        #: An optional ACL on plaintext packets (``wgpy.mesh``); ``None`` lets everything through.
        self.packet_filter: PacketFilter | None = None
        #: Set to a ``KeyLogWriter`` to export session secrets for Wireshark (``--keylog``); ``None`` by default.
        self.keylog: KeyLogWriter | None = None
        #: When ``True``, transport messages come out of ``seal_jobs()`` unencrypted instead of ``datagrams_to_send()``.
        self.seal_offload = False
        self.rekey_after_messages = REKEY_AFTER_MESSAGES
        self.reject_after_messages = REJECT_AFTER_MESSAGES
        self._load = _LoadMeter(handshake_load_threshold)
        self._wall_offset_ns = 0
        self._datagrams: list[tuple[bytes, Endpoint]] = []
        self._packets: list[bytes] = []
        self._jobs: list[SealJob | KeypairRetired] = []
        self._events: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)
        # Timer bookkeeping, so that get_timer() does not walk every peer after every input: the peers whose timers
        # may have changed since the last look, each peer's deadline as last seen, and a heap of those deadlines
        # (entries that no longer match a peer's deadline are skipped lazily).
        self._touched: set[Peer] = set()
        self._deadline_of: dict[Peer, float] = {}
        self._deadlines: list[tuple[float, int, Peer]] = []
        self._drop_logged_at: dict[DropReason, float] = {}
        if private_key is not None:
            self.set_private_key(private_key)

    def __repr__(self) -> str:
        me = self.identity.public_key.short() if self.identity else "no key"
        return f"Device({me}, {len(self.peers)} peers)"

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
        self._touch(peer)
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
        peer = self.peers.get(public_key)
        if peer is None:
            peer = Peer(public_key, self.identity)
            self.peers[public_key] = peer
        if preshared_key is not None:
            self.set_preshared_key(peer, preshared_key)
        if endpoint is not None:
            peer.endpoint = endpoint
        for network in networks:
            self.allowed_ips.insert(network, peer)
        if persistent_keepalive_interval is not None:
            self.set_persistent_keepalive(peer, persistent_keepalive_interval, now)
        self._touch(peer)
        return peer

    def peer(self, public_key: PublicKey) -> Peer | None:
        return self.peers.get(public_key)

    def remove_peer(self, public_key: PublicKey) -> bool:
        """Remove a peer: its keys are zeroed, its sessions dropped and its allowed IPs freed."""
        peer = self.peers.pop(public_key, None)
        if peer is None:
            return False
        self._clear_sessions(peer)
        peer.timers.stop()
        self._touch(peer)  # its heap entry becomes stale
        peer.staged.clear()
        self.allowed_ips.remove_by_peer(peer)
        self._events.append(PeerRemoved(public_key))
        return True

    def clear_peers(self) -> None:
        for public_key in list(self.peers):
            self.remove_peer(public_key)

    def set_preshared_key(self, peer: Peer, preshared_key: PresharedKey | None) -> None:
        peer.handshake.preshared_key = preshared_key if preshared_key is not None else PresharedKey.zero()

    def set_persistent_keepalive(self, peer: Peer, interval: int, now: float) -> None:
        """Set the persistent keepalive interval in seconds (0 disables). A new interval sends a keepalive at once."""
        if not 0 <= interval <= 65535:
            raise ConfigError("persistent keepalive interval must be between 0 and 65535 seconds")
        self._touch(peer)
        changed = interval != peer.timers.persistent_keepalive_interval
        peer.timers.persistent_keepalive_interval = interval
        if not interval:
            peer.timers.persistent_keepalive_at = None
        elif changed and peer.endpoint is not None and self.identity is not None:
            self._send_keepalive(peer, now)

    def set_allowed_ips(self, peer: Peer, networks: Iterable[IPNetwork | str]) -> None:
        """Replace the peer's allowed IPs (``replace_allowed_ips``); a prefix owned by another peer moves."""
        parsed = [_network(n) for n in networks]
        self.allowed_ips.remove_by_peer(peer)
        for network in parsed:
            self.allowed_ips.insert(network, peer)

    # ------------------------------------------------------------------------------------------------------------
    # Outputs
    # ------------------------------------------------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        """UDP datagrams to send, with their destinations, since the last call."""
        out, self._datagrams = self._datagrams, []
        return out

    def packets_to_tun(self) -> list[bytes]:
        """Decrypted IP packets to write to the TUN device, since the last call."""
        out, self._packets = self._packets, []
        return out

    def seal_jobs(self) -> list[SealJob | KeypairRetired]:
        """With ``seal_offload``: transport messages to seal and send, and keypairs retired, in order, since the
        last call. Run the jobs in order per keypair; the counters in them are already spent."""
        out, self._jobs = self._jobs, []
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

    def _touch(self, peer: Peer) -> None:
        """Note that ``peer``'s timers may have changed (every path that calls a timer hook passes here)."""
        self._touched.add(peer)

    def _refresh_deadlines(self) -> None:
        for peer in self._touched:
            deadline = peer.timers.next_deadline() if self.peers.get(peer.public_key) is peer else None
            if deadline is None:
                self._deadline_of.pop(peer, None)
            elif self._deadline_of.get(peer) != deadline:
                self._deadline_of[peer] = deadline
                heapq.heappush(self._deadlines, (deadline, id(peer), peer))
        self._touched.clear()

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------------------------------------------------
    # Input: timers
    # ------------------------------------------------------------------------------------------------------------

    def handle_timer(self, now: float, wall_ns: int | None = None) -> None:
        """Run every timer that is due at ``now``."""
        self._note_wall(now, wall_ns)
        due: list[Peer] = []
        while (deadline := self.get_timer()) is not None and deadline <= now:
            _, _, peer = heapq.heappop(self._deadlines)
            del self._deadline_of[peer]
            due.append(peer)
        for peer in due:
            self._touch(peer)
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
        if peer.timers.need_another_keepalive:
            peer.timers.need_another_keepalive = False
            peer.timers.send_keepalive_at = now + KEEPALIVE_TIMEOUT

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
    # Input: IP packets from the TUN device
    # ------------------------------------------------------------------------------------------------------------

    def send_packet(self, ip_packet: bytes, now: float, wall_ns: int | None = None) -> None:
        """Encrypt an IP packet to the peer whose allowed IPs hold its destination (``send_packets`` for batches)."""
        if wall_ns is not None:
            self._wall_offset_ns = wall_ns - int(now * 1e9)
        peer = self._route(ip_packet, now)
        if peer is None:
            return
        self._touch(peer)
        keypair = peer.keypairs.current
        endpoint = peer.endpoint
        if (
            not peer.staged
            and endpoint is not None
            and keypair is not None
            and self._usable_for_sending(keypair, now)
            and self._seal_and_queue(peer, keypair, endpoint, ip_packet)
        ):
            self._after_sending(peer, now, data_sent=True)
            return
        self._stage_and_send(peer, ip_packet, now)

    def send_packets(self, ip_packets: Iterable[bytes], now: float, wall_ns: int | None = None) -> None:
        """Encrypt a batch of IP packets read from the TUN device (same as ``send_packet`` on each, in order).

        Consecutive packets for one peer with a usable session form a run that ``Keypair.seal_many`` seals in one
        call, and the timer hooks and rekey check run once per run: what lets a driver that reads many packets
        per wake-up approach the cost of the AEAD alone.
        """
        if wall_ns is not None:
            self._wall_offset_ns = wall_ns - int(now * 1e9)
        route = self._route
        mtu = self.mtu
        run_peer: Peer | None = None
        run: list[bytes] = []
        for ip_packet in ip_packets:
            peer = route(ip_packet, now)
            if peer is None:
                continue
            if peer is run_peer:
                run.append(_pad(ip_packet, mtu))
                continue
            if run_peer is not None:
                self._send_run(run_peer, run, now)
                run_peer, run = None, []
            keypair = peer.keypairs.current
            if (
                not peer.staged
                and peer.endpoint is not None
                and keypair is not None
                and self._usable_for_sending(keypair, now)
            ):
                run_peer, run = peer, [_pad(ip_packet, mtu)]
            else:
                self._stage_and_send(peer, ip_packet, now)
        if run_peer is not None:
            self._send_run(run_peer, run, now)

    def _route(self, ip_packet: bytes, now: float) -> Peer | None:
        """The peer an outgoing packet goes to, or ``None`` after counting why it cannot be sent."""
        destination = ip.destination(ip_packet)
        if destination is None:
            self._drop(DropReason.INVALID_IP_PACKET, now)
            return None
        peer = self.allowed_ips.lookup(destination)
        if peer is None:
            self._drop(DropReason.NO_ROUTE, now)
            return None
        if self.identity is None:
            self._drop(DropReason.NO_PRIVATE_KEY, now)
            return None
        packet_filter = self.packet_filter
        if packet_filter is not None and not packet_filter.check_outbound(ip_packet, peer.public_key, now):
            self._drop(DropReason.FILTERED, now)
            return None
        return peer

    def _stage_and_send(self, peer: Peer, ip_packet: bytes, now: float) -> None:
        """Queue a packet until a session is usable, then send what can be sent (or start a handshake)."""
        self._touch(peer)
        if not peer.stage(bytes(ip_packet)):
            self._drop(DropReason.QUEUE_FULL, now)
        self._send_staged(peer, now)

    def _send_run(self, peer: Peer, padded_packets: list[bytes], now: float) -> None:
        """Seal a run of padded packets on the peer's current keypair; stage what the counter could not take."""
        self._touch(peer)
        keypair = peer.keypairs.current
        endpoint = peer.endpoint
        if keypair is None or endpoint is None:  # unreachable: the run started with both
            return
        if self.seal_offload:
            sent = self._queue_job(peer, keypair, endpoint, padded_packets)
        else:
            messages = keypair.seal_many(padded_packets, self.reject_after_messages)
            self._datagrams.extend([(message, endpoint) for message in messages])
            sent = len(messages)
            if sent:
                peer.tx_bytes += sum(map(len, messages))
        if sent:
            self.stats.packets_sent += sent
            self._after_sending(peer, now, data_sent=True)
        if sent < len(padded_packets):
            for packet in padded_packets[sent:]:
                if not peer.stage(packet):
                    self._drop(DropReason.QUEUE_FULL, now)
            self._send_staged(peer, now)

    def _usable_for_sending(self, keypair: Keypair, now: float) -> bool:
        """Whether new packets may be sealed with ``keypair`` (kernel: sending.is_valid, age and counter limits)."""
        return (
            keypair.valid
            and now - keypair.created_at < REJECT_AFTER_TIME
            and keypair.send_counter < self.reject_after_messages
        )

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _seal_and_queue(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, packet: bytes) -> bool:
        """Pad, encrypt and queue one packet for ``endpoint``. Returns ``False`` if the keypair refused it."""
        if self.seal_offload:
            if not self._queue_job(peer, keypair, endpoint, [_pad(packet, self.mtu)]):
                return False
            self.stats.packets_sent += 1
            return True
        message = keypair.seal(_pad(packet, self.mtu))
        if message is None:
            return False
        self._datagrams.append((message, endpoint))
        peer.tx_bytes += len(message)
        self.stats.packets_sent += 1
        return True

    def _queue_job(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, padded: list[bytes]) -> int:
        """Reserve counters for ``padded`` and queue them as a ``SealJob`` (or extend the last job when they follow
        on). Counts the bytes the messages will have. Returns how many packets the keypair took."""
        first, count = keypair.reserve(len(padded), self.reject_after_messages)
        if not count:
            return 0
        taken = padded if count == len(padded) else padded[:count]
        jobs = self._jobs
        last = jobs[-1] if jobs else None
        if (
            isinstance(last, SealJob)
            and last.local_index == keypair.local_index
            and last.endpoint == endpoint
            and last.first_counter + len(last.plaintexts) == first
        ):
            last.plaintexts.extend(taken)
        else:
            jobs.append(
                SealJob(
                    keypair.local_index,
                    keypair.remote_index,
                    first,
                    list(taken),
                    endpoint,
                    keypair.send_aead,
                    keypair.export_send_key(),
                )
            )
        peer.tx_bytes += sum(map(len, taken)) + count * _TRANSPORT_OVERHEAD
        return count

    def _after_sending(self, peer: Peer, now: float, *, data_sent: bool) -> None:
        """Timer hooks and rekey check after authenticated transport packets went out (kernel send.c)."""
        timers = peer.timers
        if timers.persistent_keepalive_interval:  # the hook does nothing otherwise
            timers.on_any_authenticated_packet_traversal(now)
        timers.on_any_authenticated_packet_sent()
        if data_sent and timers.new_handshake_at is None:  # draw jitter only when the timer gets armed
            timers.on_data_sent(now, self._jitter())
        keypair = peer.keypairs.current
        if keypair is not None and (
            keypair.send_counter > self.rekey_after_messages
            or (keypair.is_initiator and now - keypair.created_at >= REKEY_AFTER_TIME)
        ):
            self._keep_key_fresh_after_send(peer, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
        """Send the staged packets on the current keypair, or start a handshake if there is none usable."""
        keypair = peer.keypairs.current
        endpoint = peer.endpoint
        if endpoint is None or keypair is None or not self._usable_for_sending(keypair, now):
            self._send_initiation(peer, now, is_retry=False)
            return
        data_sent = False
        sent_any = False
        while peer.staged:
            if keypair.send_counter >= self.reject_after_messages:
                # Only the sending half is used up (kernel: sending.is_valid = false); ``_usable_for_sending``
                # refuses the keypair from now on, while packets the peer sends on it still decrypt.
                self._send_initiation(peer, now, is_retry=False)
                break
            packet = peer.staged.popleft()
            if not self._seal_and_queue(peer, keypair, endpoint, packet):
                peer.staged.appendleft(packet)
                self._send_initiation(peer, now, is_retry=False)
                break
            sent_any = True
            data_sent = data_sent or len(packet) > 0
        if sent_any:
            self._after_sending(peer, now, data_sent=data_sent)

    def _keep_key_fresh_after_send(self, peer: Peer, now: float) -> None:
        keypair = peer.keypairs.current
        if (
            keypair is not None
            and keypair.valid
            and (
                keypair.send_counter > self.rekey_after_messages
                or (keypair.is_initiator and now - keypair.created_at >= REKEY_AFTER_TIME)
            )
        ):
            self._send_initiation(peer, now, is_retry=False)

    def _send_initiation(self, peer: Peer, now: float, *, is_retry: bool) -> None:
        """Send a handshake initiation, at most one per REKEY_TIMEOUT (kernel ``wg_packet_send_handshake_initiation``)."""
        if not is_retry:
            peer.timers.handshake_attempts = 0
        # Written as the kernel's wg_birthdate_has_expired (birthday + expiration <= now) on purpose: the
        # retransmission deadline is (sent_at + REKEY_TIMEOUT) + jitter, and with a jitter of 0 the float
        # ``now - sent_at`` can come out a hair under REKEY_TIMEOUT, which would stop retransmitting for good.
        if peer.last_sent_handshake_at is not None and now < peer.last_sent_handshake_at + REKEY_TIMEOUT:
            return
        identity = self.identity
        if identity is None or peer.endpoint is None:
            return
        handshake = peer.handshake
        if handshake.local_index:
            self.index_table.remove(handshake.local_index, handshake)
        index = self.index_table.insert(peer, handshake)
        try:
            message = noise.create_initiation(handshake, identity, index, self._wall_ns(now), self._rng)
        except HandshakeRejected:
            self.index_table.remove(index, handshake)
            return
        if self.keylog is not None:
            self.keylog.on_ephemeral(
                identity.private_key, handshake.remote_static, handshake.ephemeral_private, handshake.preshared_key
            )
        peer.last_sent_handshake_at = now
        packet = peer.cookie.add_macs(message.pack(), now)
        self._datagrams.append((packet, peer.endpoint))
        peer.tx_bytes += len(packet)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_sent()
        peer.timers.on_handshake_initiated(now, self._jitter())

    # ------------------------------------------------------------------------------------------------------------
    # Input: datagrams from the network
    # ------------------------------------------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None) -> None:
        """Process one UDP datagram from ``endpoint``. Never raises for any ``data``; bad input is counted."""
        if wall_ns is not None:
            self._wall_offset_ns = wall_ns - int(now * 1e9)
        length = len(data)
        if length < 4:
            self._drop(DropReason.BAD_LENGTH, now)
            return
        (message_type,) = _TYPE.unpack_from(data)
        if message_type == _TRANSPORT:
            if length < MESSAGE_TRANSPORT_MIN_SIZE:
                self._drop(DropReason.BAD_LENGTH, now)
            else:
                self._receive_transport(data, endpoint, now)
        elif message_type == _INITIATION or message_type == _RESPONSE:
            expected = MESSAGE_INITIATION_SIZE if message_type == _INITIATION else MESSAGE_RESPONSE_SIZE
            if length != expected:
                self._drop(DropReason.BAD_LENGTH, now)
            else:
                self._receive_handshake(bytes(data), endpoint, now)
        elif message_type == _COOKIE_REPLY:
            if length != MESSAGE_COOKIE_REPLY_SIZE:
                self._drop(DropReason.BAD_LENGTH, now)
            else:
                self._receive_cookie_reply(bytes(data), now)
        else:
            self._drop(DropReason.BAD_TYPE, now)

    def _receive_handshake(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        under_load = self._load.note(now)
        identity = self.identity
        if identity is None:
            self._drop(DropReason.NO_PRIVATE_KEY, now)
            return
        source = endpoint_bytes(endpoint) if under_load else b""
        mac_state = self.cookie_checker.check(data, source, under_load, now)
        if mac_state is MacState.INVALID_MAC:
            self._drop(DropReason.INVALID_MAC, now)
            return
        message = unpack(data)  # cannot fail: size and type were checked
        if not isinstance(message, Initiation | Response):
            return  # unreachable: the caller only passes handshake messages
        if under_load:
            if mac_state is not MacState.VALID_MAC_WITH_COOKIE:
                reply = self.cookie_checker.create_reply(data, message.sender_index, source, now)
                self._datagrams.append((reply.pack(), endpoint))
                self.stats.cookie_replies_sent += 1
                self._drop(DropReason.COOKIE_SENT, now)
                return
            if not self.ratelimiter.allow(_packed_address(endpoint[0]), now):
                self._drop(DropReason.RATE_LIMITED, now)
                return
        try:
            if isinstance(message, Initiation):
                peer = self._consume_initiation(message, identity, endpoint, now)
            else:
                peer = self._consume_response(message, identity, endpoint, now)
        except HandshakeRejected as rejected:
            self._drop(rejected.reason, now)
            return
        self._touch(peer)
        peer.rx_bytes += len(data)
        peer.timers.on_any_authenticated_packet_received()
        peer.timers.on_any_authenticated_packet_traversal(now)

    def _lookup_peer_handshake(self, public_key: PublicKey) -> Handshake | None:
        peer = self.peers.get(public_key)
        return peer.handshake if peer is not None else None

    def _consume_initiation(
        self, message: Initiation, identity: StaticIdentity, endpoint: Endpoint, now: float
    ) -> Peer:
        handshake = noise.consume_initiation(message, identity, self._lookup_peer_handshake, now)
        peer = self.peers[handshake.remote_static]
        self._set_endpoint(peer, endpoint)
        # Send the response (kernel wg_packet_send_handshake_response).
        if handshake.local_index:
            self.index_table.remove(handshake.local_index, handshake)
        index = self.index_table.insert(peer, handshake)
        response = noise.create_response(handshake, index, self._rng)
        if self.keylog is not None:  # before begin_session zeroes the ephemeral key
            self.keylog.on_ephemeral(
                identity.private_key, handshake.remote_static, handshake.ephemeral_private, handshake.preshared_key
            )
        packet = peer.cookie.add_macs(response.pack(), now)
        self._begin_session(peer, now)
        self._datagrams.append((packet, endpoint))
        peer.tx_bytes += len(packet)
        peer.last_sent_handshake_at = now
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_sent()
        return peer

    def _consume_response(self, message: Response, identity: StaticIdentity, endpoint: Endpoint, now: float) -> Peer:
        entry = self.index_table.lookup(message.receiver_index)
        if entry is None:
            raise HandshakeRejected(DropReason.UNKNOWN_INDEX)
        peer, handshake = entry
        if not isinstance(handshake, Handshake):
            raise HandshakeRejected(DropReason.UNKNOWN_INDEX)
        noise.consume_response(message, identity, lambda _index: handshake)
        self._set_endpoint(peer, endpoint)
        self._begin_session(peer, now)
        peer.timers.on_handshake_complete()
        peer.last_handshake_at = now
        self._events.append(HandshakeCompleted(peer.public_key, is_initiator=True))
        # Flush what waited for the session, or send a keepalive to confirm the session to the responder.
        self._send_keepalive(peer, now)
        return peer

    def _begin_session(self, peer: Peer, now: float) -> None:
        handshake = peer.handshake
        keypair = noise.begin_session(handshake, now)
        self.index_table.replace(keypair.local_index, peer, keypair)
        for retired in peer.keypairs.add(keypair):
            self._retire(retired)
        self.stats.handshakes_completed += 1
        peer.timers.on_session_derived(now)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        message = unpack(data)
        if not isinstance(message, CookieReply):
            return  # unreachable: the caller only passes cookie replies
        entry = self.index_table.lookup(message.receiver_index)
        if entry is None:
            self._drop(DropReason.UNKNOWN_INDEX, now)
            return
        peer = entry[0]
        if not peer.cookie.consume_reply(message, now):
            self._drop(DropReason.INVALID_COOKIE_REPLY, now)

    def _receive_transport(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        _, receiver_index, counter = _TRANSPORT_HEADER.unpack_from(data)
        entry = self.index_table.lookup(receiver_index)
        if entry is None:
            self._drop(DropReason.UNKNOWN_INDEX, now)
            return
        peer, keypair = entry
        if not isinstance(keypair, Keypair):
            self._drop(DropReason.UNKNOWN_INDEX, now)
            return
        replay = keypair.replay
        if not keypair.valid or now - keypair.created_at >= REJECT_AFTER_TIME or counter >= self.reject_after_messages:
            self._drop(DropReason.KEYPAIR_EXPIRED, now)
            return
        if not replay.would_accept(counter):
            top = replay.greatest
            too_old = top is not None and counter + REPLAY_WINDOW_SIZE < top
            self._drop(DropReason.COUNTER_OUT_OF_WINDOW if too_old else DropReason.REPLAYED_COUNTER, now)
            return
        try:
            plaintext = keypair.open(counter, data)
        except crypto.InvalidTag:
            self._drop(DropReason.INVALID_AEAD_TAG, now)
            return
        replay.commit(counter)
        # Authenticated from here on.
        self._touched.add(peer)
        peer.rx_bytes += len(data)
        self.stats.packets_received += 1
        timers = peer.timers
        if keypair is peer.keypairs.next:
            self._confirm_keypair(peer, keypair, now)
        if keypair.is_initiator or peer.keypairs.current is not keypair:
            self._keep_key_fresh_after_receive(peer, now)
        timers.on_any_authenticated_packet_received()
        if timers.persistent_keepalive_interval:
            timers.on_any_authenticated_packet_traversal(now)
        if peer.endpoint != endpoint:
            self._set_endpoint(peer, endpoint)
        if not plaintext:
            return  # keepalive
        timers.on_data_received(now)
        inner = ip.source_and_length(plaintext)
        if inner is None:
            self._drop(DropReason.INVALID_IP_PACKET, now)
            return
        source, total_length = inner
        if self.allowed_ips.lookup(source) is not peer:
            self._drop(DropReason.DISALLOWED_SOURCE_IP, now)
            return
        packet = plaintext if total_length == len(plaintext) else plaintext[:total_length]
        if self.packet_filter is not None and not self.packet_filter.check_inbound(packet, peer.public_key, now):
            self._drop(DropReason.FILTERED, now)
            return
        self._packets.append(packet)

    def _confirm_keypair(self, peer: Peer, keypair: Keypair, now: float) -> None:
        """First data on a responder's ``next`` keypair: the initiator has the keys, so it becomes current."""
        confirmed, retired = peer.keypairs.received_with(keypair)
        if not confirmed:
            return
        for old in retired:
            self._retire(old)
        peer.timers.on_handshake_complete()
        # Like the kernel's wg_timers_handshake_complete: a responder's handshake counts once it is confirmed.
        peer.last_handshake_at = now
        self._events.append(HandshakeCompleted(peer.public_key, is_initiator=False))
        if peer.staged:
            self._send_staged(peer, now)

    def _keep_key_fresh_after_receive(self, peer: Peer, now: float) -> None:
        keypair = peer.keypairs.current
        if (
            keypair is not None
            and keypair.is_initiator
            and not peer.timers.sent_lastminute_handshake
            and now - keypair.created_at >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        ):
            peer.timers.sent_lastminute_handshake = True
            self._send_initiation(peer, now, is_retry=False)

    # ------------------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------------------

    def _set_endpoint(self, peer: Peer, endpoint: Endpoint) -> None:
        if peer.endpoint != endpoint:
            peer.endpoint = endpoint
            self._events.append(EndpointChanged(peer.public_key, endpoint))

    def _clear_sessions(self, peer: Peer) -> None:
        handshake = peer.handshake
        if handshake.local_index:
            self.index_table.remove(handshake.local_index, handshake)
        handshake.clear()
        for keypair in peer.keypairs.clear():
            self._retire(keypair)

    def _retire(self, keypair: Keypair) -> None:
        """A keypair left the peer (already zeroed): forget its index, and tell whoever seals for us."""
        self.index_table.remove(keypair.local_index, keypair)
        if self.seal_offload:
            self._jobs.append(KeypairRetired(keypair.local_index))

    def _jitter(self) -> float:
        """Up to 333 ms of jitter from the injected rng (kernel: get_random_u32_below(HZ / 3))."""
        return (int.from_bytes(self._rng(4), "little") % 1000) / 1000.0 * REKEY_TIMEOUT_JITTER_MAX

    def _note_wall(self, now: float, wall_ns: int | None) -> None:
        if wall_ns is not None:
            self._wall_offset_ns = wall_ns - int(now * 1e9)

    def _wall_ns(self, now: float) -> int:
        return self._wall_offset_ns + int(now * 1e9)

    def wall_ns_at(self, now_then: float) -> int:
        """The wall-clock time (ns) of a past ``now`` value, from the latest ``wall_ns`` the driver gave."""
        return self._wall_ns(now_then)

    def _drop(self, reason: DropReason, now: float) -> None:
        self.stats.drops[reason] += 1
        if logger.isEnabledFor(logging.DEBUG):
            last = self._drop_logged_at.get(reason)
            if last is None or now - last >= _DROP_LOG_INTERVAL:
                self._drop_logged_at[reason] = now
                logger.debug("dropped a datagram or packet: %s", reason.name)


def _network(value: IPNetwork | str) -> IPNetwork:
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return value
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except (ValueError, AttributeError):
        raise ConfigError(f"not an IP network: {value!r}") from None
