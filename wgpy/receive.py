"""The receiving half of the engine: dispatch by type, consume each message, keep the key fresh (kernel receive.c;
wireguard-go receive.go).

Theory of operation: ``receive_datagram`` is the one boundary where remote input enters, and nothing raises out of
it. It reads the first four bytes as one le32 (so the reserved bytes must be zero), checks the exact size of the
type, and hands the datagram to the consumer of its type. Every check is ordered cheapest first (style rule 5):

- handshake messages (``_receive_handshake``): mac1 (one BLAKE2s) before any X25519; when the device is under load,
  mac2 or else one cookie reply, then the per-source rate limit; then ``noise.consume_initiation`` or
  ``consume_response``, which commit nothing until the message authenticates. An initiation is answered with a
  response; a response makes the new keypair current and flushes what waited for it.
- cookie replies (``_receive_cookie_reply``): the index, then the XChaCha20-Poly1305 open.
- transport (``_receive_transport``): the index, the keypair's age and limits, the replay pre-check, the AEAD, the
  replay commit; only then the timers, key confirmation (a responder's ``next`` keypair becomes current on its
  first authenticated packet), keep-key-fresh on receive and the endpoint update; last the inner IP header, the
  cryptokey-routing source check and the plaintext filter.

``receive_datagrams`` is the same for a batch (what one socket read brings): consecutive transport messages of one
receiver index from one endpoint are one run, whose keypair is looked up and checked once, whose messages each get
the counter, replay and AEAD checks, and whose bookkeeping (timers, key confirmation, keep-key-fresh, endpoint,
counters) runs once with the result of running it per message; a single message is a run of one.

``receive_gro`` is the same for one UDP GRO read (up to 64 datagrams of one sender at one segment size in one
buffer). When the full-size rows are one receiver index's consecutive counters ahead of the replay window, the
per-message work is done once for the read: the headers and counters are compared as strided arrays, the replay
window is checked and committed for the whole range (``ReplayWindow.ahead`` / ``commit_run``) and each row is
opened where it lies in the read (a memoryview: no bytes object per message); any other read is cut into datagrams
for ``receive_datagrams``.

Whatever fails is counted in ``stats.drops`` under one ``DropReason``. "Under load" is decided from the rate of
handshake messages seen (a sans-I/O core has no queue to measure, which is what the kernel and wireguard-go look
at): above ``handshake_load_threshold`` per second the device demands mac2, and stays under load for one more
second after the rate falls.
"""

from __future__ import annotations

import functools
import ipaddress
import struct
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import numpy as np

from . import crypto, ip, noise
from .constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT, REPLAY_WINDOW_SIZE
from .cookie import CookieChecker, MacState
from .errors import DropReason
from .events import Endpoint, EndpointChanged, HandshakeCompleted
from .keypair import NONCE, TRANSPORT_OVERHEAD, Keypair, aead_rows
from .messages import (
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    MESSAGE_TRANSPORT_MIN_SIZE,
    TRANSPORT_HEADER,
    CookieReply,
    Initiation,
    MessageType,
    Response,
    unpack,
)
from .noise import Handshake, HandshakeRejected, StaticIdentity
from .packetrun import PacketRun, uniform_source
from .send import Sender

if TYPE_CHECKING:
    from .keys import PublicKey
    from .peer import Peer
    from .ratelimiter import RateLimiter

__all__ = ["HANDSHAKE_LOAD_THRESHOLD", "UNDER_LOAD_AFTER_TIME", "LoadMeter", "Receiver", "endpoint_bytes"]

HANDSHAKE_LOAD_THRESHOLD: Final = 128.0  # handshake messages per second before mac2 is demanded (ours)
UNDER_LOAD_AFTER_TIME: Final = 1.0  # kernel/wireguard-go: stay under load for 1 s after the pressure ends

_TYPE: Final = struct.Struct("<I")
_INITIATION: Final = int(MessageType.INITIATION)
_RESPONSE: Final = int(MessageType.RESPONSE)
_COOKIE_REPLY: Final = int(MessageType.COOKIE_REPLY)
_TRANSPORT: Final = int(MessageType.TRANSPORT)
_TRANSPORT_TYPE: Final = _TYPE.pack(_TRANSPORT)  # the first four bytes of every transport message
_COUNTER: Final = struct.Struct("<Q")  # the transport message's counter, at offset 8
_LE64: Final = np.dtype("<u8")
#: Rows a GRO read needs before its plaintexts are handed on as one ``PacketRun``: gluing a run on the TUN side
#: has a fixed cost of some 15-20 us (numpy checks, headers), which pays from about 16 segments on (measured in
#: process on an AMD EPYC, 2026-12-02: 1.1x handle_gro's cost per segment at 16 rows, 0.6x at 44).
RUN_MIN_ROWS: Final = 16


class LoadMeter:
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


def _packed_address(host: str) -> bytes:
    """An endpoint's IP address as 4 or 16 bytes (a host that is no IP address, only seen in tests, hashes to 16)."""
    try:
        return ipaddress.ip_address(host).packed
    except ValueError:
        return crypto.hash(str(host).encode())[:16]


def endpoint_bytes(endpoint: Endpoint) -> bytes:
    """The endpoint's address packed as IP || big-endian port: what cookies bind to (wireguard-go ``DstToBytes``)."""
    return _packed_address(endpoint[0]) + (endpoint[1] & 0xFFFF).to_bytes(2, "big")


@functools.lru_cache(maxsize=64)
def _row_offsets(rows: int) -> bytes:
    """``rows`` pairs of little-endian 64-bit words (0, i): what a GRO read's headers less its first row's read in a
    run (``Receiver._receive_rows``)."""
    offsets = np.zeros((rows, 2), _LE64)
    offsets[:, 1] = np.arange(rows)
    return offsets.tobytes()


class Receiver(Sender):
    """The receive path of ``Device`` (a mixin over the send path, which it answers through)."""

    # The device state this half uses beyond the send path's (``Device.__init__`` sets it).
    peers: dict[PublicKey, Peer]
    cookie_checker: CookieChecker
    ratelimiter: RateLimiter
    _load: LoadMeter
    _packets: list[bytes]
    _runs: list[tuple[int, PacketRun]]

    def receive_datagram(self, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None) -> None:
        """Process one UDP datagram from ``endpoint``. Never raises for any ``data``; bad input is counted."""
        if wall_ns is not None:
            self._note_wall(now, wall_ns)
        length = len(data)
        if length < 4:
            self.stats.drop(DropReason.BAD_LENGTH, now)
            return
        (message_type,) = _TYPE.unpack_from(data)
        if message_type == _TRANSPORT:
            if length < MESSAGE_TRANSPORT_MIN_SIZE:
                self.stats.drop(DropReason.BAD_LENGTH, now)
            else:
                self._receive_transport(data, endpoint, now)
        elif message_type == _INITIATION or message_type == _RESPONSE:
            expected = MESSAGE_INITIATION_SIZE if message_type == _INITIATION else MESSAGE_RESPONSE_SIZE
            if length != expected:
                self.stats.drop(DropReason.BAD_LENGTH, now)
            else:
                self._receive_handshake(bytes(data), endpoint, now)
        elif message_type == _COOKIE_REPLY:
            if length != MESSAGE_COOKIE_REPLY_SIZE:
                self.stats.drop(DropReason.BAD_LENGTH, now)
            else:
                self._receive_cookie_reply(bytes(data), now)
        else:
            self.stats.drop(DropReason.BAD_TYPE, now)

    # --- handshake messages ------------------------------------------------------------------------------------

    def _receive_handshake(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        under_load = self._load.note(now)
        identity = self.identity
        if identity is None:
            self.stats.drop(DropReason.NO_PRIVATE_KEY, now)
            return
        source = endpoint_bytes(endpoint) if under_load else b""
        mac_state = self.cookie_checker.check(data, source, under_load, now)
        if mac_state is MacState.INVALID_MAC:
            self.stats.drop(DropReason.INVALID_MAC, now)
            return
        message = unpack(data)  # cannot fail: size and type were checked
        if not isinstance(message, Initiation | Response):
            return  # unreachable: the caller only passes handshake messages
        if under_load:
            if mac_state is not MacState.VALID_MAC_WITH_COOKIE:
                self._send_cookie_reply(data, message.sender_index, source, endpoint, now)
                self.stats.drop(DropReason.COOKIE_SENT, now)
                return
            if not self.ratelimiter.allow(_packed_address(endpoint[0]), now):
                self.stats.drop(DropReason.RATE_LIMITED, now)
                return
        try:
            if isinstance(message, Initiation):
                peer = self._consume_initiation(message, identity, endpoint, now)
            else:
                peer = self._consume_response(message, identity, endpoint, now)
        except HandshakeRejected as rejected:
            self.stats.drop(rejected.reason, now)
            return
        peer.rx_bytes += len(data)
        peer.timers.on_any_authenticated_packet_received()
        peer.timers.on_any_authenticated_packet_traversal(now)

    def _send_cookie_reply(self, data: bytes, sender_index: int, source: bytes, endpoint: Endpoint, now: float) -> None:
        """Answer a handshake message with a cookie instead of a handshake (kernel
        ``wg_packet_send_handshake_cookie``): the one reply to an unauthenticated datagram."""
        reply = self.cookie_checker.create_reply(data, sender_index, source, now)
        self._datagrams.append((reply.pack(), endpoint))
        self.stats.cookie_replies_sent += 1

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
        peer.last_sent_handshake_at = now
        self._send_handshake_message(peer, packet, endpoint, now)
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
            self.stats.drop(DropReason.UNKNOWN_INDEX, now)
            return
        peer = entry[0]
        if not peer.cookie.consume_reply(message, now):
            self.stats.drop(DropReason.INVALID_COOKIE_REPLY, now)

    # --- transport ---------------------------------------------------------------------------------------------

    def receive_datagrams(
        self, datagrams: Iterable[tuple[bytes, Endpoint]], now: float, wall_ns: int | None = None
    ) -> None:
        """Process a batch of datagrams in order: the same as ``receive_datagram`` on each (and never raises).

        Consecutive transport messages with one receiver index from one endpoint form a run (what one socket read
        brings from a busy peer): the index and the keypair are checked once per run, each message then gets its
        own counter, replay and AEAD checks, and the bookkeeping of an authenticated packet (timers, key
        confirmation, keep-key-fresh, endpoint, byte counters) runs once per run with what the per-message path
        would have left (``_after_transport``). Every other datagram goes to ``receive_datagram``.
        """
        if type(self).receive_datagram is not Receiver.receive_datagram:
            # A subclass that wraps receive_datagram (tests, tools) still sees every datagram through it.
            for data, endpoint in datagrams:
                self.receive_datagram(data, endpoint, now, wall_ns)
            return
        if wall_ns is not None:
            self._note_wall(now, wall_ns)
        run: list[bytes] = []
        run_key = b""  # the receiver index bytes of the run (b"" matches none)
        run_endpoint: Endpoint = ("", 0)
        for data, endpoint in datagrams:
            if len(data) >= MESSAGE_TRANSPORT_MIN_SIZE and data[:4] == _TRANSPORT_TYPE:
                key = data[4:8]
                if key == run_key and endpoint == run_endpoint:
                    run.append(data)
                    continue
                if run:
                    self._receive_transport_run(run, run_endpoint, now)
                run, run_key, run_endpoint = [data], key, endpoint
                continue
            if run:
                self._receive_transport_run(run, run_endpoint, now)
                run, run_key = [], b""
            self.receive_datagram(data, endpoint, now)
        if run:
            self._receive_transport_run(run, run_endpoint, now)

    def receive_gro(
        self, data: bytes, segment: int, endpoint: Endpoint, now: float, wall_ns: int | None = None
    ) -> None:
        """Process one UDP GRO read from ``endpoint``: the datagrams ``data[i : i + segment]`` (the last may be
        shorter), with what ``receive_datagrams`` on them leaves (and never raises). A ``segment`` of 0 or of at
        least ``len(data)`` means one datagram.

        The common read, a run of full-size transport messages of one receiver index with consecutive counters
        ahead of the replay window, is checked as a whole (``_receive_rows``) and opened in place; every
        other read is cut into datagrams for ``receive_datagrams``.
        """
        length = len(data)
        if segment <= 0 or segment >= length:
            self.receive_datagrams(((data, endpoint),), now, wall_ns)
            return
        if type(self).receive_datagram is not Receiver.receive_datagram:
            for start in range(0, length, segment):  # a wrapping subclass sees every datagram (receive_datagrams)
                self.receive_datagram(data[start : start + segment], endpoint, now, wall_ns)
            return
        if wall_ns is not None:
            self._note_wall(now, wall_ns)
        rows = length // segment
        if (
            rows < 2
            or segment < MESSAGE_TRANSPORT_MIN_SIZE
            or not self._receive_rows(data, segment, rows, endpoint, now)
        ):
            self.receive_datagrams(
                [(data[start : start + segment], endpoint) for start in range(0, length, segment)], now
            )

    def _receive_rows(self, data: bytes, segment: int, rows: int, endpoint: Endpoint, now: float) -> bool:
        """The run path of ``receive_gro`` for the ``rows`` full datagrams of ``data`` (at least two) and the shorter
        one after them, if any. Returns ``False``, having changed nothing, unless every row starts with the first
        row's type and receiver index, that index is a usable keypair, and the counters run ``first`` ..
        ``first + rows - 1`` below the limit and ahead of the replay window (``ReplayWindow.ahead``).

        Then no row can fail a counter or replay check, so each is only opened, from a view of the read, and the
        window takes the counters at once (``commit_run``). A read of ``RUN_MIN_ROWS`` rows or more, with no
        plaintext filter, is opened into one buffer (``_open_rows_into``) and, when its inner packets are one
        source and length the peer may use, handed on as one ``PacketRun``; a smaller read is opened with
        ``decrypt`` of a view of each row (which beats ``decrypt_into`` plus copying each packet out). From the
        first row whose tag fails, the rest of the run (and the short last datagram when it belongs to the run)
        goes through ``_open_each`` on the same keypair: the result is one run, as ``receive_datagrams`` makes of
        the read, with one bookkeeping step (``_authenticated``).
        """
        if data[:4] != _TRANSPORT_TYPE:
            return False
        # Each row's header as two words: type and receiver index, then the counter. Less the first row's, modulo
        # 2**64, they must read (0, i) in row i: the same index, and counters first + i (first + rows - 1 < 2**64).
        heads = np.ndarray((rows, 2), _LE64, data, 0, (segment, 8))
        first = int(heads[0, 1])
        if first + rows > self.reject_after_messages or (heads - heads[0]).tobytes() != _row_offsets(rows):
            return False
        entry = self.index_table.lookup(TRANSPORT_HEADER.unpack_from(data)[1])
        if entry is None:
            return False
        peer, keypair = entry
        if not isinstance(keypair, Keypair) or not keypair.valid or now - keypair.created_at >= REJECT_AFTER_TIME:
            return False
        replay = keypair.replay
        if not replay.ahead(first, rows):
            return False
        source = memoryview(data)
        nonce = NONCE.pack
        opened: list[bytes] = []
        start = MESSAGE_TRANSPORT_HEADER_SIZE
        end = segment
        run = None
        if rows >= RUN_MIN_ROWS and segment - TRANSPORT_OVERHEAD >= ip.IPV4_HEADER_SIZE:
            out, good, run = self._open_rows_into(peer, keypair, source, segment, rows, first)
            if run is not None and not self._filter_passes_run("check_inbound_run", run, peer, now):
                opened = run.packets()  # each through the filter in _deliver
                run = None
            elif run is None:  # not a run of one inner source and length: the packets one by one, as below
                size = segment - TRANSPORT_OVERHEAD
                opened = [bytes(out[at : at + size]) for at in range(0, good * size, size)]
        else:
            decrypt = keypair.recv_aead.decrypt  # Keypair.open, on a view of the row: no copy of the message
            append = opened.append
            try:
                for counter in range(first, first + rows):
                    append(decrypt(nonce(counter), source[start:end], None))
                    start += segment
                    end += segment
            except crypto.InvalidTag:
                pass  # this row and the ones after it go one by one (below)
            good = len(opened)
        if good:
            replay.commit_run(first, good)
        rest = [data[at : at + segment] for at in range(good * segment, rows * segment, segment)]
        tail = data[rows * segment :]
        after = b""  # the short last datagram when it is not part of the run
        if len(tail) >= MESSAGE_TRANSPORT_MIN_SIZE and tail[:8] == data[:8]:
            rest.append(tail)
        else:
            after = tail
        received_bytes = good * segment
        if rest:
            received_bytes += self._open_each(keypair, rest, opened, now)
        if run is not None:
            # Every row a data packet from one allowed source, none filtered: the run goes on whole, then the rest.
            self._authenticated(peer, keypair, endpoint, run.packets_in + len(opened), received_bytes, now)
            peer.timers.on_data_received(now)
            peer.timers.on_data_received(now)  # twice, as for the first two of the run's packets
            self._runs.append((len(self._packets), run))
            self._deliver(peer, opened, run.packets_in, now)
        elif opened:
            self._after_transport(peer, keypair, endpoint, opened, received_bytes, now)
        if after:
            self.receive_datagrams(((after, endpoint),), now)
        return True

    def _open_rows_into(
        self, peer: Peer, keypair: Keypair, source: memoryview, segment: int, rows: int, first: int
    ) -> tuple[bytearray, int, PacketRun | None]:
        """Open the ``rows`` messages of a GRO read (counters ``first``...) into one buffer, each plaintext in a slot
        of ``segment - 32`` bytes (``decrypt_into``): returns the buffer, how many opened (the first that fails
        ends it) and the run of their inner packets, ``None`` unless all opened and every one is an IP packet of
        one length from one source ``peer`` may use (``uniform_source``). A run goes to the TUN device as it lies
        (``LinuxTun.write_run`` glues it from the buffer)."""
        size = segment - TRANSPORT_OVERHEAD
        out = bytearray(rows * size)
        target = memoryview(out)
        sealed = segment - MESSAGE_TRANSPORT_HEADER_SIZE  # ciphertext and tag
        end = rows * segment
        messages = [source[at : at + sealed] for at in range(MESSAGE_TRANSPORT_HEADER_SIZE, end, segment)]
        plaintexts = [target[at : at + size] for at in range(0, rows * size, size)]
        good = aead_rows(keypair.recv_aead.decrypt_into, first, messages, plaintexts)
        if good < rows:
            return out, good, None
        inner = uniform_source(out, rows, size)
        if inner is None or self.allowed_ips.lookup(inner[0]) is not peer:
            return out, good, None
        return out, good, PacketRun(out, rows, size, inner[1])

    def _receive_transport(self, data: bytes, endpoint: Endpoint, now: float) -> None:
        self._receive_transport_run([data], endpoint, now)

    def _receive_transport_run(self, messages: list[bytes], endpoint: Endpoint, now: float) -> None:
        """Transport messages of one receiver index from one endpoint (at least one; the size is checked)."""
        stats = self.stats
        receiver_index = TRANSPORT_HEADER.unpack_from(messages[0])[1]
        entry = self.index_table.lookup(receiver_index)
        keypair = entry[1] if entry is not None else None
        if entry is None or not isinstance(keypair, Keypair):
            for _ in messages:
                stats.drop(DropReason.UNKNOWN_INDEX, now)
            return
        peer = entry[0]
        if not keypair.valid or now - keypair.created_at >= REJECT_AFTER_TIME:
            for _ in messages:
                stats.drop(DropReason.KEYPAIR_EXPIRED, now)
            return
        opened: list[bytes] = []
        received_bytes = self._open_each(keypair, messages, opened, now)
        if opened:
            self._after_transport(peer, keypair, endpoint, opened, received_bytes, now)

    def _open_each(self, keypair: Keypair, messages: Iterable[bytes], opened: list[bytes], now: float) -> int:
        """The counter, replay and AEAD checks of each transport message of a run in order (the keypair is checked):
        appends the plaintexts to ``opened``; returns the bytes of the messages opened."""
        stats = self.stats
        replay = keypair.replay
        limit = self.reject_after_messages
        unpack_counter = _COUNTER.unpack_from
        received_bytes = 0
        for data in messages:
            (counter,) = unpack_counter(data, 8)
            if counter >= limit:
                stats.drop(DropReason.KEYPAIR_EXPIRED, now)
                continue
            if not replay.would_accept(counter):
                top = replay.greatest
                too_old = top is not None and counter + REPLAY_WINDOW_SIZE < top
                stats.drop(DropReason.COUNTER_OUT_OF_WINDOW if too_old else DropReason.REPLAYED_COUNTER, now)
                continue
            try:
                plaintext = keypair.open(counter, data)
            except crypto.InvalidTag:
                stats.drop(DropReason.INVALID_AEAD_TAG, now)
                continue
            replay.commit(counter)
            received_bytes += len(data)
            opened.append(plaintext)
        return received_bytes

    def _after_transport(
        self, peer: Peer, keypair: Keypair, endpoint: Endpoint, opened: list[bytes], received_bytes: int, now: float
    ) -> None:
        """What authenticated transport messages (``opened``, in order, at least one) leave behind: the bookkeeping
        once for all of them (``_authenticated``), then each inner packet checked and delivered in order."""
        self._authenticated(peer, keypair, endpoint, len(opened), received_bytes, now)
        self._deliver(peer, opened, 0, now)

    def _authenticated(
        self, peer: Peer, keypair: Keypair, endpoint: Endpoint, count: int, received_bytes: int, now: float
    ) -> None:
        """The bookkeeping of ``count`` authenticated transport messages at one ``now``: each hook gives for n
        messages what n calls give (``on_data_received``, called per data packet by ``_deliver``, only twice at
        most: a second call only raises ``need_another_keepalive``, and so do all later ones)."""
        peer.rx_bytes += received_bytes
        self.stats.packets_received += count
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

    def _deliver(self, peer: Peer, opened: list[bytes], data_packets: int, now: float) -> None:
        """Check each inner packet of ``opened`` (keepalives skipped) and queue it for the TUN device, in order;
        ``data_packets`` data packets of the same messages came before (``on_data_received`` is due for two)."""
        stats = self.stats
        timers = peer.timers
        allowed_peer = self.allowed_ips.lookup
        packet_filter = self.packet_filter
        packets = self._packets
        source_and_length = ip.source_and_length
        checked_source: object = None  # the last inner source address found to be the peer's
        for plaintext in opened:
            if not plaintext:
                continue  # keepalive
            if data_packets < 2:
                timers.on_data_received(now)
            data_packets += 1
            inner = source_and_length(plaintext)
            if inner is None:
                stats.drop(DropReason.INVALID_IP_PACKET, now)
                continue
            source, total_length = inner
            if source != checked_source:
                if allowed_peer(source) is not peer:
                    stats.drop(DropReason.DISALLOWED_SOURCE_IP, now)
                    continue
                checked_source = source
            packet = plaintext if total_length == len(plaintext) else plaintext[:total_length]
            if packet_filter is not None and not packet_filter.check_inbound(packet, peer.public_key, now):
                stats.drop(DropReason.FILTERED, now)
                continue
            packets.append(packet)

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
        """Start a handshake when the initiator's session nears REJECT_AFTER_TIME and nothing else will (kernel
        ``keep_key_fresh`` in receive.c), once per session."""
        keypair = peer.keypairs.current
        if (
            keypair is not None
            and keypair.is_initiator
            and not peer.timers.sent_lastminute_handshake
            and now - keypair.created_at >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
        ):
            peer.timers.sent_lastminute_handshake = True
            self._send_initiation(peer, now, is_retry=False)

    def _set_endpoint(self, peer: Peer, endpoint: Endpoint) -> None:
        if peer.endpoint != endpoint:
            peer.endpoint = endpoint
            self._events.append(EndpointChanged(peer.public_key, endpoint))
