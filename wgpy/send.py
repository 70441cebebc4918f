"""The sending half of the engine: route -> stage -> send staged -> seal (kernel send.c; wireguard-go send.go).

Theory of operation: an IP packet read from the TUN device is routed by its destination through the cryptokey
routing table to one peer (``_route``), checked by the optional plaintext filter, and then either sealed at once on
the peer's current keypair or staged on the peer until a keypair is usable (``_stage_and_send``, ``_send_staged``).
There is one send path. ``send_packets`` takes a batch: consecutive packets for one peer with a usable session form
a run that is sealed in one call, with the timer hooks and the rekey check once per run. ``send_packet`` is the
same path for one packet, written out without the batching loop because a driver without batched reads calls it
once per packet; every decision in it is one of the helpers the batch path uses:

- ``_sending_keypair``: is there a session we may seal new packets with now (the keypair is valid, younger than
  REJECT_AFTER_TIME, its counter below the limit; and the peer has an endpoint);
- ``_send_run``: seal a run and handle what the counter could not take (staged, and a handshake started);
- ``_after_sending``: the timer hooks of send.c and keep-key-fresh, the one rekey condition on send
  (REKEY_AFTER_MESSAGES, or REKEY_AFTER_TIME for the initiator).

Sealing itself goes through a ``Sealer``: ``InlineSealer`` encrypts here and queues the datagrams;
``OffloadSealer`` only reserves the counters and queues ``SealJob``s for the driver to run elsewhere (a worker on
another core), with ``KeypairRetired`` markers when a keypair goes away. The device holds one of them
(``Device.sealer``); the path above does not know which.

Handshake messages are sent from here too: the initiation (``_send_initiation``, at most one per REKEY_TIMEOUT,
kernel ``wg_packet_send_handshake_initiation``), the response and the cookie reply. Nothing here does I/O: every
message is appended to the device's outputs.
"""

from __future__ import annotations

import collections
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from . import crypto, ip, noise
from .constants import REJECT_AFTER_TIME, REKEY_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from .errors import DropReason
from .events import Endpoint, Event
from .keypair import MESSAGE_PADDING_MULTIPLE, NONCE, TRANSPORT_OVERHEAD, Keypair, aead_rows, padded_length, seal_run
from .messages import MESSAGE_TRANSPORT_HEADER_SIZE, TRANSPORT_HEADER, MessageType
from .noise import HandshakeRejected
from .packetrun import PacketRun, uniform_destination

if TYPE_CHECKING:
    import collections

    from .allowedips import AllowedIPs
    from .device import DeviceStats
    from .indextable import IndexTable
    from .keylog import KeyLogWriter
    from .keys import PublicKey
    from .noise import Handshake, StaticIdentity
    from .peer import Peer

__all__ = ["InlineSealer", "KeypairRetired", "OffloadSealer", "PlaintextFilter", "SealJob", "Sealer", "Sender"]

logger = logging.getLogger("wgpy.device")

_ZEROS: Final = tuple(bytes(n) for n in range(MESSAGE_PADDING_MULTIPLE))  # padding, by length
_TRANSPORT_TYPE: Final = int(MessageType.TRANSPORT)


@dataclass(slots=True)
class SealJob:
    """Transport messages to seal and send, with their counters already taken (``OffloadSealer``).

    The job keeps the key it was made with: if the keypair is retired before the job runs, the job still seals
    what the device committed to while the key was valid, and nothing more.
    """

    local_index: int  # which keypair (stable while it lives; a ``KeypairRetired`` with it ends its use)
    remote_index: int
    first_counter: int
    plaintexts: list[bytes] | PacketRun  # padded; an empty one is a keepalive (never in a run)
    endpoint: Endpoint
    aead: crypto.Aead = field(repr=False)
    send_key: bytes = field(repr=False)

    def run(self) -> list[bytes]:
        """The transport messages, exactly as ``Keypair.seal_many`` would have made them."""
        return seal_run(self.aead, self.remote_index, self.first_counter, self.plaintexts)

    def sealed_size(self) -> int:
        """The bytes of all the job's messages together (``run_into`` needs a buffer at least this large)."""
        plaintexts = self.plaintexts
        size = plaintexts.total_bytes() if isinstance(plaintexts, PacketRun) else sum(map(len, plaintexts))
        return size + len(plaintexts) * TRANSPORT_OVERHEAD

    def run_into(self, buffer: bytearray) -> list[int]:
        """``run()``, written back to back into ``buffer`` from its start: returns the messages' sizes.

        The same bytes as ``b"".join(self.run())`` (the tests compare them), made without a bytes object per
        message: each header is packed in place and ChaCha20-Poly1305 seals the plaintext straight behind it
        (``encrypt_into``; the nonce is the counter, little-endian after four zero bytes, and there is no associated
        data: whitepaper §5.4.6), so that a driver can hand runs of them to one UDP GSO ``sendmsg`` as they are.
        A run's plaintexts are read where they lie in its buffer.
        """
        if isinstance(self.plaintexts, PacketRun):
            return self._run_into_from_run(buffer, self.plaintexts)
        view = memoryview(buffer)
        encrypt_into = self.aead.encrypt_into
        pack_header = TRANSPORT_HEADER.pack_into
        nonce = NONCE.pack
        remote_index = self.remote_index
        sizes: list[int] = []
        at = 0
        for counter, plaintext in enumerate(self.plaintexts, self.first_counter):
            size = len(plaintext) + TRANSPORT_OVERHEAD
            pack_header(buffer, at, _TRANSPORT_TYPE, remote_index, counter)
            encrypt_into(nonce(counter), plaintext, None, view[at + MESSAGE_TRANSPORT_HEADER_SIZE : at + size])
            sizes.append(size)
            at += size
        return sizes

    def _run_into_from_run(self, buffer: bytearray, run: PacketRun) -> list[int]:
        """``run_into`` for plaintexts that are a ``PacketRun``: every message but the last has one size, so the
        headers are packed and the plaintexts sealed by C-driven loops over precomputed slices (``aead_rows``)."""
        view = memoryview(buffer)
        source = memoryview(run.buffer)
        count, stride, size, last_size = run.packets_in, run.stride, run.size, run.last_size
        sealed = size + TRANSPORT_OVERHEAD
        end = (count - 1) * sealed  # where the last message starts
        first = self.first_counter
        headers = map(
            TRANSPORT_HEADER.pack_into,
            itertools.repeat(buffer),
            range(0, end + 1, sealed),
            itertools.repeat(_TRANSPORT_TYPE),
            itertools.repeat(self.remote_index),
            range(first, first + count),
        )
        collections.deque(headers, maxlen=0)
        plaintexts = [source[at : at + size] for at in range(0, (count - 1) * stride, stride)]
        plaintexts.append(source[(count - 1) * stride : (count - 1) * stride + last_size])
        ciphertext = size + TRANSPORT_OVERHEAD - MESSAGE_TRANSPORT_HEADER_SIZE  # and its tag
        bodies = [view[at : at + ciphertext] for at in range(MESSAGE_TRANSPORT_HEADER_SIZE, end, sealed)]
        bodies.append(view[end + MESSAGE_TRANSPORT_HEADER_SIZE : end + last_size + TRANSPORT_OVERHEAD])
        aead_rows(self.aead.encrypt_into, first, plaintexts, bodies)
        sizes = [sealed] * (count - 1)
        sizes.append(last_size + TRANSPORT_OVERHEAD)
        return sizes


@dataclass(frozen=True, slots=True)
class KeypairRetired:
    """In ``seal_jobs()``: the keypair with this index is gone; whoever holds its key must drop it."""

    local_index: int


class PlaintextFilter(Protocol):
    """A filter on plaintext IP packets (``wgpy.mesh.PacketFilter`` implements it): ``True`` lets a packet pass.

    ``check_outbound`` sees each packet before it is encrypted (a refused one never starts a handshake);
    ``check_inbound`` sees each decrypted packet after the cryptokey-routing source check. Keepalives and handshake
    messages never reach it.
    """

    def check_outbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool: ...

    def check_inbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool: ...


class RunFilter(PlaintextFilter, Protocol):
    """A ``PlaintextFilter`` that can also pass a whole ``PacketRun`` at once (``wgpy.mesh.PacketFilter`` does).

    ``check_outbound_run`` / ``check_inbound_run`` return ``True`` only when the per-packet check of every packet
    of the run, in order, would pass, having left the filter as those checks would; ``False`` means "not shown
    cheaply" and must change nothing: the device then checks the packets one by one. A filter without these
    methods gets every packet one by one.
    """

    def check_outbound_run(self, run: PacketRun, peer_public_key: PublicKey | None, now: float) -> bool: ...

    def check_inbound_run(self, run: PacketRun, peer_public_key: PublicKey | None, now: float) -> bool: ...


class Sealer(Protocol):
    """Turns padded plaintexts into transport messages on their way out (inline, or handed to a worker)."""

    def seal(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, padded: Sequence[bytes], limit: int) -> int:
        """Take as many of ``padded`` as the keypair's counter allows below ``limit``; return how many it took.

        What it took is on its way to ``endpoint`` (the counters are spent) and counted in ``peer.tx_bytes``.
        """
        ...

    def seal_one(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, padded: bytes, limit: int) -> bool:
        """``seal`` of one plaintext (the single-packet path, without a list): whether it was taken."""
        ...

    def retire(self, keypair: Keypair) -> None:
        """``keypair`` left its peer (already zeroed): nothing more is sealed with it."""
        ...


class InlineSealer:
    """Seals in this process: the messages go straight to the device's ``datagrams_to_send()``."""

    __slots__ = ("_datagrams",)

    def __init__(self, datagrams: list[tuple[bytes, Endpoint]]) -> None:
        self._datagrams = datagrams

    def seal(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, padded: Sequence[bytes], limit: int) -> int:
        messages = keypair.seal_many(padded, limit)
        if messages:
            self._datagrams.extend([(message, endpoint) for message in messages])
            peer.tx_bytes += sum(map(len, messages))
        return len(messages)

    def seal_one(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, padded: bytes, limit: int) -> bool:
        message = keypair.seal(padded, limit)
        if message is None:
            return False
        self._datagrams.append((message, endpoint))
        peer.tx_bytes += len(message)
        return True

    def retire(self, keypair: Keypair) -> None:
        return None  # nothing holds its key but the keypair itself


class OffloadSealer:
    """Reserves the counters here and queues ``SealJob``s (and ``KeypairRetired``) for ``Device.seal_jobs()``."""

    __slots__ = ("_jobs",)

    def __init__(self, jobs: list[SealJob | KeypairRetired]) -> None:
        self._jobs = jobs

    def seal(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, padded: Sequence[bytes], limit: int) -> int:
        first, count = keypair.reserve(len(padded), limit)
        if not count:
            return 0
        jobs = self._jobs
        if isinstance(padded, PacketRun):
            run = padded.head(count)  # a run is a job of its own: it is sealed from its buffer
            peer.tx_bytes += run.total_bytes() + count * TRANSPORT_OVERHEAD  # the bytes the messages will have
            jobs.append(self._job(keypair, first, run, endpoint))
            return count
        taken = padded if count == len(padded) else padded[:count]
        last = jobs[-1] if jobs else None
        if (
            isinstance(last, SealJob)
            and isinstance(last.plaintexts, list)
            and last.local_index == keypair.local_index
            and last.endpoint == endpoint
            and last.first_counter + len(last.plaintexts) == first
        ):
            last.plaintexts.extend(taken)  # the same keypair goes on: one job
        else:
            jobs.append(self._job(keypair, first, list(taken), endpoint))
        peer.tx_bytes += sum(map(len, taken)) + count * TRANSPORT_OVERHEAD  # the bytes the messages will have
        return count

    def seal_one(self, peer: Peer, keypair: Keypair, endpoint: Endpoint, padded: bytes, limit: int) -> bool:
        return self.seal(peer, keypair, endpoint, [padded], limit) == 1

    @staticmethod
    def _job(keypair: Keypair, first: int, plaintexts: list[bytes] | PacketRun, endpoint: Endpoint) -> SealJob:
        return SealJob(
            keypair.local_index,
            keypair.remote_index,
            first,
            plaintexts,
            endpoint,
            keypair.send_aead,
            keypair.export_send_key(),
        )

    def retire(self, keypair: Keypair) -> None:
        self._jobs.append(KeypairRetired(keypair.local_index))


def pad(packet: bytes, mtu: int) -> bytes:
    """``packet`` with zeros up to a multiple of 16 bytes, never past the MTU (whitepaper §5.4.6). Idempotent."""
    length = len(packet)
    padding = -length % MESSAGE_PADDING_MULTIPLE
    if not padding or length >= mtu:  # a full-MTU packet, the common case of bulk TCP, is never padded
        return packet
    if length + padding > mtu:
        padding = mtu - length  # ``padded_length``: up to the MTU, not past it
    return packet + _ZEROS[padding]


class Sender:
    """The send path of ``Device`` (a mixin: the state it uses is the device's, set up in ``Device.__init__``)."""

    # The device state this half reads and writes (declared for the type checker; ``Device.__init__`` sets it).
    mtu: int
    identity: StaticIdentity | None
    allowed_ips: AllowedIPs[Peer]
    index_table: IndexTable[Peer, Handshake | Keypair]
    stats: DeviceStats
    packet_filter: PlaintextFilter | None
    keylog: KeyLogWriter | None
    sealer: Sealer
    rekey_after_messages: int
    reject_after_messages: int
    _rng: Callable[[int], bytes]
    _wall_offset_ns: int
    _datagrams: list[tuple[bytes, Endpoint]]
    _events: collections.deque[Event]

    # --- input: IP packets from the TUN device -----------------------------------------------------------------

    def send_packet(self, ip_packet: bytes, now: float, wall_ns: int | None = None) -> None:
        """Encrypt an IP packet to the peer whose allowed IPs hold its destination: ``send_packets([ip_packet])``,
        without the batching loop (every decision is the batch path's: ``_route``, ``_sending_keypair``, the
        sealer, ``_after_sending``, and ``_stage_and_send`` for what cannot go now)."""
        if wall_ns is not None:
            self._note_wall(now, wall_ns)
        peer = self._route(ip_packet, now)
        if peer is None:
            return
        keypair = None if peer.staged else self._sending_keypair(peer, now)
        endpoint = peer.endpoint
        if (
            keypair is not None
            and endpoint is not None
            and self.sealer.seal_one(peer, keypair, endpoint, pad(ip_packet, self.mtu), self.reject_after_messages)
        ):
            self.stats.packets_sent += 1
            self._after_sending(peer, now, data_sent=True)
        else:
            self._stage_and_send(peer, ip_packet, now)

    def send_packets(self, ip_packets: Iterable[bytes], now: float, wall_ns: int | None = None) -> None:
        """Encrypt a batch of IP packets read from the TUN device (same as ``send_packet`` on each, in order).

        Consecutive packets for one peer with a usable session form a run that the sealer seals in one call, and
        the timer hooks and rekey check run once per run: what lets a driver that reads many packets per wake-up
        approach the cost of the AEAD alone.
        """
        if wall_ns is not None:
            self._note_wall(now, wall_ns)
        route = self._route
        mtu = self.mtu
        run_peer: Peer | None = None
        run_keypair: Keypair | None = None
        run: list[bytes] = []
        for ip_packet in ip_packets:
            peer = route(ip_packet, now)
            if peer is None:
                continue
            if peer is run_peer:
                run.append(pad(ip_packet, mtu))
                continue
            if run_peer is not None and run_keypair is not None:
                self._send_run(run_peer, run_keypair, run, now)
                run_peer, run_keypair, run = None, None, []
            keypair = None if peer.staged else self._sending_keypair(peer, now)
            if keypair is None:
                self._stage_and_send(peer, ip_packet, now)
            else:
                run_peer, run_keypair, run = peer, keypair, [pad(ip_packet, mtu)]
        if run_peer is not None and run_keypair is not None:
            self._send_run(run_peer, run_keypair, run, now)

    def send_run(self, run: PacketRun, now: float, wall_ns: int | None = None) -> None:
        """``send_packets(run)``: the packets of one TSO read, sealed where they lie in the run's buffer.

        The outputs are those of ``send_packets(run.packets())`` (the tests compare two devices). The fast path
        takes a run whose packets share one destination (``uniform_destination``), a peer with a usable session,
        a plaintext filter that passes the run whole (``RunFilter``) or none, and a ``zero_padded`` layout whose
        stride holds each padded packet: the whole run is then routed once, on its first packet, and handed to the
        sealer as one padded ``PacketRun`` (``SealJob.run_into`` seals it from the buffer). Anything else goes
        packet by packet through
        ``send_packets``, which makes every decision (and counts every drop) for each one.
        """
        if wall_ns is not None:
            self._note_wall(now, wall_ns)
        padded = self._padded_run(run)
        peer = None
        if padded is not None and self.identity is not None:
            destination = uniform_destination(run)
            peer = self.allowed_ips.lookup(destination) if destination is not None else None
        keypair = self._sending_keypair(peer, now) if peer is not None and not peer.staged else None
        if (
            peer is None
            or keypair is None
            or padded is None
            or not self._filter_passes_run("check_outbound_run", run, peer, now)
        ):
            self.send_packets(run.packets(), now)
            return
        self._send_run(peer, keypair, padded, now)

    def _filter_passes_run(self, check: str, run: PacketRun, peer: Peer, now: float) -> bool:
        """Whether the plaintext filter (if any) passes every packet of ``run`` to or from ``peer`` at once through
        its ``RunFilter`` method ``check`` ("check_outbound_run" or "check_inbound_run"); a filter without it
        passes no run. Called last on a fast path, since a pass has already counted the packets in the filter."""
        packet_filter = self.packet_filter
        if packet_filter is None:
            return True
        check_run = getattr(packet_filter, check, None)
        return check_run is not None and bool(check_run(run, peer.public_key, now))

    def _padded_run(self, run: PacketRun) -> PacketRun | None:
        """``run`` with each packet padded as ``pad`` pads it, over the same buffer, when the run's layout already
        holds that padding (zeros up to each padded length)."""
        if not run.zero_padded:
            return None
        mtu = self.mtu
        size = padded_length(run.size, mtu)
        last = padded_length(run.last_size, mtu)
        if size > run.stride or (run.packets_in - 1) * run.stride + last > len(run.buffer):
            return None
        return run.with_lengths(size, last)

    def _route(self, ip_packet: bytes, now: float) -> Peer | None:
        """The peer an outgoing packet goes to, or ``None`` after counting why it cannot be sent."""
        destination = ip.destination(ip_packet)
        if destination is None:
            self.stats.drop(DropReason.INVALID_IP_PACKET, now)
            return None
        peer = self.allowed_ips.lookup(destination)
        if peer is None:
            self.stats.drop(DropReason.NO_ROUTE, now)
            return None
        if self.identity is None:
            self.stats.drop(DropReason.NO_PRIVATE_KEY, now)
            return None
        packet_filter = self.packet_filter
        if packet_filter is not None and not packet_filter.check_outbound(ip_packet, peer.public_key, now):
            self.stats.drop(DropReason.FILTERED, now)
            return None
        return peer

    def _sending_keypair(self, peer: Peer, now: float) -> Keypair | None:
        """The keypair new packets to ``peer`` may be sealed with at ``now``, or ``None``: they must wait for a
        handshake. The one "is this session usable for sending" decision (kernel: ``sending.is_valid``, the age
        limit REJECT_AFTER_TIME and the counter limit), and an endpoint to send to. ``Keypair.seal`` and
        ``reserve`` guard the counter again, so that no counter is ever handed out twice."""
        keypair = peer.keypairs.current
        if (
            keypair is None
            or peer.endpoint is None
            or not keypair.valid
            or now - keypair.created_at >= REJECT_AFTER_TIME
            or keypair.send_counter >= self.reject_after_messages
        ):
            return None
        return keypair

    def _send_run(self, peer: Peer, keypair: Keypair, padded: Sequence[bytes], now: float) -> None:
        """Seal padded packets (none of them a keepalive) on ``keypair``; stage what the counter could not take."""
        endpoint = peer.endpoint
        if endpoint is None:  # unreachable: ``_sending_keypair`` checked it
            return
        sent = self.sealer.seal(peer, keypair, endpoint, padded, self.reject_after_messages)
        if sent:
            self.stats.packets_sent += sent
            self._after_sending(peer, now, data_sent=True)
        if sent < len(padded):
            for packet in padded[sent:]:
                if not peer.stage(packet):
                    self.stats.drop(DropReason.QUEUE_FULL, now)
            self._send_staged(peer, now)

    def _stage_and_send(self, peer: Peer, ip_packet: bytes, now: float) -> None:
        """Queue a packet until a session is usable, then send what can be sent (or start a handshake)."""
        if not peer.stage(bytes(ip_packet)):
            self.stats.drop(DropReason.QUEUE_FULL, now)
        self._send_staged(peer, now)

    def _send_staged(self, peer: Peer, now: float) -> None:
        """Send the staged packets on the current keypair, or start a handshake if there is none usable
        (kernel ``wg_packet_send_staged_packets``)."""
        keypair = self._sending_keypair(peer, now)
        endpoint = peer.endpoint
        if keypair is None or endpoint is None:
            self._send_initiation(peer, now, is_retry=False)
            return
        staged = peer.staged
        mtu = self.mtu
        packets = list(staged)
        staged.clear()
        sent = self.sealer.seal(peer, keypair, endpoint, [pad(p, mtu) for p in packets], self.reject_after_messages)
        if sent < len(packets):
            # The counter ran out (kernel: sending.is_valid = false): only the sending half is used up, and
            # packets the peer sends on this keypair still decrypt. What is left waits for the new session.
            staged.extendleft(reversed(packets[sent:]))
            self._send_initiation(peer, now, is_retry=False)
        if sent:
            self.stats.packets_sent += sent
            self._after_sending(peer, now, data_sent=any(packets[:sent]))

    def _send_keepalive(self, peer: Peer, now: float) -> None:
        """Send an empty transport message, unless data waits to go anyway (kernel ``wg_packet_send_keepalive``)."""
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now)

    def _after_sending(self, peer: Peer, now: float, *, data_sent: bool) -> None:
        """Timer hooks and keep-key-fresh after authenticated transport packets went out (kernel send.c): the one
        rekey condition on send. A new handshake starts when the current keypair sent more than
        REKEY_AFTER_MESSAGES, or when we initiated it REKEY_AFTER_TIME ago (kernel ``keep_key_fresh``)."""
        timers = peer.timers
        if timers.persistent_keepalive_interval:  # the hook does nothing otherwise
            timers.on_any_authenticated_packet_traversal(now)
        timers.on_any_authenticated_packet_sent()
        if data_sent and timers.new_handshake_at is None:  # draw jitter only when the timer gets armed
            timers.on_data_sent(now, self._jitter())
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

    # --- handshake messages ------------------------------------------------------------------------------------

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
        endpoint = peer.endpoint
        if identity is None or endpoint is None:
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
        self._send_handshake_message(peer, peer.cookie.add_macs(message.pack(), now), endpoint, now)
        peer.timers.on_handshake_initiated(now, self._jitter())

    def _send_handshake_message(self, peer: Peer, packet: bytes, endpoint: Endpoint, now: float) -> None:
        """Queue an initiation or a response (macs added) and run the hooks of an authenticated packet sent."""
        self._datagrams.append((packet, endpoint))
        peer.tx_bytes += len(packet)
        peer.timers.on_any_authenticated_packet_traversal(now)
        peer.timers.on_any_authenticated_packet_sent()

    # --- helpers shared with the rest of the device ------------------------------------------------------------

    def _retire(self, keypair: Keypair) -> None:
        """A keypair left the peer (already zeroed): forget its index, and tell the sealer."""
        self.index_table.remove(keypair.local_index, keypair)
        self.sealer.retire(keypair)

    def _jitter(self) -> float:
        """Up to 333 ms of jitter from the injected rng (kernel: get_random_u32_below(HZ / 3))."""
        return (int.from_bytes(self._rng(4), "little") % 1000) / 1000.0 * REKEY_TIMEOUT_JITTER_MAX

    def _note_wall(self, now: float, wall_ns: int) -> None:
        """Remember how the wall clock relates to ``now`` (every input may carry ``wall_ns``)."""
        self._wall_offset_ns = wall_ns - int(now * 1e9)

    def _wall_ns(self, now: float) -> int:
        return self._wall_offset_ns + int(now * 1e9)
