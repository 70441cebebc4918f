"""The asyncio driver: one ``Device``, its UDP sockets (IPv4 and IPv6), an optional TUN device and one timer.

Theory of operation: the driver follows aioquic's ``transmit()`` pattern. Every input (a datagram from a socket, a
packet read from the TUN device, the timer firing, a UAPI ``set``) is handed to the device with the current time,
then ``flush()`` drains the device through ``wgpy.transmit.drain`` (the one drain loop every driver shares): the
tunnel is the datagram sink (its sockets) and the packet sink (the TUN device, or ``on_packet``), and the worker,
when there is one, is offered the seal jobs first. Then it re-arms the one timer at ``device.get_timer()``.
Nothing else here knows the protocol.

The sockets are the tunnel's state, not the device's: ``listen_port`` (the port actually bound) and ``fwmark``
(SO_MARK on every socket) live here, and the UAPI server reads and changes them here (``uapi.SocketSettings``).

Endpoints are the socket addresses as asyncio reports them: ``(host, port)`` from the IPv4 socket and
``(host, port, flowinfo, scope_id)`` from the IPv6 socket (which is ``IPV6_V6ONLY``, so the two never overlap, as in
wireguard-go). A datagram to an endpoint goes out of the socket of its family.

Handshake messages never wait behind a flood of them in the transport queue (issue #11 item 2): each family's port
is a steered ``SO_REUSEPORT`` group (``steering.py``) where the kernel puts transport messages on the transport
socket and handshake messages on one of ``steering.HANDSHAKE_SOCKETS`` small sockets by source address. The
transport socket is read in full batches; a handshake socket ``HANDSHAKE_READ_BUDGET`` messages at a time, then
left alone for ``HANDSHAKE_PAUSE`` if it had more; and every handshake message is charged to its source address
(``HANDSHAKE_SOURCE_RATE``) before the device computes a MAC, on an unsteered socket too. Sends all go out of the
transport socket.

Without a worker the device runs with ``seal_offload`` too, and the tunnel seals its jobs itself (``_SealInPlace``):
every message is sealed with ``encrypt_into`` straight into one reused send buffer and runs of them go to the socket
from there in one GSO ``sendmsg``, with no bytes object per message (``SealJob.run_into``, byte for byte
``SealJob.run``); with a NAT layer, the jobs of endpoints it relays are left to it. A TSO read from the TUN device
goes to ``Device.send_run`` as it lies in its buffer (``LinuxTun.read_run``). A UDP GRO read of one sender's
transport messages goes whole to ``Device.receive_gro`` (``UdpSocket.receive_runs``), whose decrypted run comes
back to ``write_run`` and is glued from its buffer (``LinuxTun.write_run``); the other datagrams of a socket read
go to the device in one ``receive_datagrams`` call.

With ``worker=True`` the tunnel starts a data-plane worker process (``worker.py``) and turns on the device's
``seal_offload``: flushing then hands the sealing jobs and the decrypted packets to the worker, which encrypts, sends
and writes to the TUN device on the second core. If the worker dies or stalls, the tunnel says so in the log and
goes on in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from tun import TunDevice, TunError

from ..device import Device
from ..errors import UapiError
from ..events import Endpoint, EndpointChanged, Event, HandshakeCompleted, KeypairExpired, endpoint_is_ipv6
from ..messages import MESSAGE_TRANSPORT_MIN_SIZE
from ..packetrun import PacketRun, flat_packets
from ..send import KeypairRetired, SealJob
from ..transmit import drain
from .clock import monotonic_now, wall_ns
from .steering import SourceAdmission, SteeringUnavailable, bind_steered
from .udp import GSO_MAX_BYTES, UdpSocket
from .worker import DataPlaneWorker, WorkerError, split_jobs

__all__ = ["NatHook", "Tunnel", "one_transport_header"]

logger = logging.getLogger("wgpy")

TUN_READ_BATCH: Final = 64  # packets read per readiness callback, so that sockets and timers get their turn
UDP_READ_BATCH: Final = 64  # datagrams read per readiness callback
SEAL_BUFFER_SIZE: Final = 256 * 1024  # the send buffer messages are sealed into (grown for a larger job)
HOUSEKEEPING_INTERVAL: Final = 1.0  # seconds between MTU refreshes
# Handshake messages (issue #11 item 2): the kernel queues them apart from transport (``steering.py``).
HANDSHAKE_READ_BUDGET: Final = 16  # datagrams read from one handshake socket per wake-up
HANDSHAKE_PAUSE: Final = 0.002  # s a handshake socket is not read after a wake-up that used the whole budget
HANDSHAKE_SOCKET_BUFFER: Final = 512 * 1024  # SO_RCVBUF of a handshake socket: about 1000 messages, ~0.1 s of reads
# Handshake messages per second one address may have processed (ours), and at once after it was quiet. Above the
# device's handshake_load_threshold (128/s) on purpose: one address can still put the device under load (mac2
# demanded, cookie replies: the protocol's own defence, which `wgpy probe` checks with a burst of up to 4000
# initiations from one address, its own among them); it cannot cost more than a burst and then 256/s.
HANDSHAKE_SOURCE_RATE: Final = 256
HANDSHAKE_SOURCE_BURST: Final = 4096


MAX_FWMARK: Final = 2**32 - 1  # SO_MARK is a u32 in the kernel


def _set_mark(sock: socket.socket, fwmark: int) -> None:
    """SO_MARK as the kernel reads it, a 32-bit value: passed as bytes, since ``setsockopt`` with a Python int
    takes a C int and refuses marks from 2**31 up (``wg set IF fwmark 0x80000000`` is valid)."""
    if not 0 <= fwmark <= MAX_FWMARK:
        raise ValueError(f"fwmark {fwmark} is not a 32-bit value")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, struct.pack("=I", fwmark))


def _configure(sock: socket.socket, family: socket.AddressFamily, fwmark: int) -> None:
    """What every socket of the tunnel gets before its bind: IPv6 only for IPv6, and the mark."""
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if fwmark and hasattr(socket, "SO_MARK"):
        _set_mark(sock, fwmark)


def _bind(family: socket.AddressFamily, port: int, fwmark: int = 0) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _configure(sock, family, fwmark)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))  # noqa: S104 - a VPN listens everywhere
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def one_transport_header(data: bytes, segment: int) -> bool:
    """Whether every datagram ``data[i : i + segment]`` of a GRO read begins with the first one's 8 bytes and that
    is a transport message's type (the shorter last one too, with 8 bytes at least). With ``segment`` a multiple
    of 4 (a 1452-byte message at MTU 1420, every padded one) the heads are read as two strided columns of 32-bit
    words, one ``bytes`` each; otherwise as eight strided byte columns (``_one_header_bytewise``)."""
    full = len(data) - len(data) % segment  # the bytes of the full-size datagrams
    head = data[:8]
    if head[:1] != b"\x04" or (full != len(data) and data[full : full + 8] != head):
        return False
    if segment % 4:
        return _one_header_bytewise(data, segment, full, head)
    words = memoryview(data)[:full].cast("I")
    step = segment // 4
    rows = full // segment
    return bytes(words[::step]) == head[:4] * rows and bytes(words[1::step]) == head[4:] * rows


def _one_header_bytewise(data: bytes, segment: int, full: int, head: bytes) -> bool:
    rows = full // segment
    return all(data[j:full:segment] == head[j : j + 1] * rows for j in range(8))


class Tunnel:
    """Runs a ``Device`` on real sockets and (optionally) a TUN device inside an asyncio event loop."""

    def __init__(
        self,
        device: Device,
        *,
        tun: TunDevice | None = None,
        on_packet: Callable[[bytes], None] | None = None,
        bind_address: str | None = None,
        on_event: Callable[[Event], None] | None = None,
        worker: bool = False,
        listen_port: int = 0,
        fwmark: int = 0,
        steer_handshakes: bool = True,
        seal_in_place: bool = True,
    ) -> None:
        """
        Args:
            device: the engine to drive.
            tun: where decrypted packets go and plaintext packets come from; ``None`` for a socket-only tunnel.
            on_packet: called with each decrypted packet when there is no TUN (the demo and tests use it).
            bind_address: bind only this IPv4 address (for example ``127.0.0.1`` in the demo) instead of all.
            on_event: called with each event drained from the device, after it is logged (the mesh agent audits
                handshakes with it). The device has one event queue, so this is the only place that drains it.
            worker: seal and write to the TUN device in a second process (a second core); see ``worker.py``.
            listen_port: the UDP port to bind at ``start`` (0: any free port; ``listen_port`` then says which).
            fwmark: the SO_MARK of the sockets (0: none).
            steer_handshakes: let the kernel queue handshake messages apart from transport, by source address
                (``steering.py``; not with ``bind_address``, and only where the kernel can).
            seal_in_place: without a worker, seal transport messages straight into one send buffer and hand runs
                of them to the socket as they lie there (``_SealInPlace``), instead of a bytes object per message.
        """
        self.device = device
        self.tun = tun
        self.on_packet = on_packet
        self.on_event = on_event
        self.bind_address = bind_address
        #: The UDP port the sockets are bound to (after ``start``; the requested one before).
        self.listen_port = listen_port
        #: The SO_MARK of the sockets; 0 for none.
        self.fwmark = fwmark
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: dict[int, UdpSocket] = {}  # per family: the socket for transport, and all sends
        self._handshake_sockets: dict[int, list[UdpSocket]] = {}  # per family: steered handshake sockets
        self._resume_timers: dict[UdpSocket, asyncio.TimerHandle] = {}
        self.steer_handshakes = steer_handshakes and bind_address is None
        self._admission = SourceAdmission(HANDSHAKE_SOURCE_RATE, HANDSHAKE_SOURCE_BURST)
        #: Handshake messages dropped before the device saw them, their source being over its rate.
        self.handshakes_refused = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._housekeeping: asyncio.TimerHandle | None = None
        self._closed = asyncio.Event()
        self.tun_errors = 0
        self.use_worker = worker
        self._worker: DataPlaneWorker | None = None
        self._worker_sink = _WorkerSink(self)
        #: Whether transport messages are sealed into the send buffer here when no worker runs (``_SealInPlace``).
        self.seal_in_place = seal_in_place
        self._seal_sink = _SealInPlace(self)
        self.worker_failures = 0
        #: NAT hook (``wgpy.nat.io.handler.NatHandler``): sees each received datagram first and claims the STUN/TURN
        #: ones; may divert datagrams for relayed endpoints. ``None``: every datagram is the device's.
        self.nat: NatHook | None = None

    # --- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._open_sockets(self.listen_port, self.fwmark)
        if self.tun is not None:
            import os

            os.set_blocking(self.tun.fileno(), False)
            self.device.mtu = self.tun.mtu
            self._fit_tso(self.device.mtu)
            self._loop.add_reader(self.tun.fileno(), self._on_tun_readable)
        self.device.seal_offload = self.seal_in_place
        if self.use_worker:
            self._start_worker()
        self._schedule_housekeeping()
        self.flush()

    def _start_worker(self) -> None:
        """Start the data-plane worker on the current sockets; on failure, go on without it."""
        try:
            worker = DataPlaneWorker(
                {family: udp.sock for family, udp in self._sockets.items()},
                self.tun.fileno() if self.tun is not None else None,
            )
        except OSError as exc:
            logger.error("cannot start the data-plane worker (%s): running in one process", exc)
            self.worker_failures += 1
            return
        self._worker = worker
        self.device.seal_offload = True
        if self._loop is not None:
            self._loop.add_reader(worker.fileno(), self._on_worker_gone)

    def _stop_worker(self) -> None:
        """Stop the worker and seal in this process again (jobs still queued in the device are run by ``flush``)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        self.device.seal_offload = self.seal_in_place
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(worker.fileno())
        worker.close()

    def _on_worker_gone(self) -> None:
        """The channel turned readable: the worker exited (it never writes to it)."""
        if self._worker is not None:
            logger.error("the data-plane worker (pid %d) stopped: running in one process", self._worker.process.pid)
            self.worker_failures += 1
            self._stop_worker()
            self.flush()

    @property
    def worker_pid(self) -> int | None:
        """The worker process's PID while one runs."""
        return self._worker.process.pid if self._worker is not None else None

    async def _open_sockets(self, port: int, fwmark: int) -> None:
        """Bind the IPv4 socket (and the IPv6 one on the same port), each with its steered handshake sockets
        where the kernel can, and register them with the loop."""
        loop = asyncio.get_running_loop()
        handshake: dict[int, list[socket.socket]] = {}
        socks: dict[int, socket.socket]
        if self.bind_address is not None:
            sock4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock4.bind((self.bind_address, port))
                sock4.setblocking(False)
            except BaseException:
                sock4.close()
                raise
            socks = {socket.AF_INET: sock4}
        else:
            socks, handshake = self._bind_families(port, fwmark)
        bound = int(socks[socket.AF_INET].getsockname()[1])
        for family, sock in socks.items():
            udp = UdpSocket(sock)
            group = handshake.get(family, [])
            loop.add_reader(udp.fileno(), self._on_socket_readable, udp, bool(group))
            self._sockets[family] = udp
            steered = []
            for extra in group:
                handshake_udp = UdpSocket(extra, gso=False, gro=False, receive_buffer=HANDSHAKE_SOCKET_BUFFER)
                loop.add_reader(handshake_udp.fileno(), self._on_handshake_readable, handshake_udp)
                steered.append(handshake_udp)
            self._handshake_sockets[family] = steered
        self.listen_port = bound

    def _bind_families(self, port: int, fwmark: int) -> tuple[dict[int, socket.socket], dict[int, list[socket.socket]]]:
        """The IPv4 and IPv6 sockets on one port (IPv6 only where it works): the transport socket of each family
        and its handshake sockets. Nothing is left open if it fails."""
        socks: dict[int, socket.socket] = {}
        handshake: dict[int, list[socket.socket]] = {}
        try:
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    group = self._bind_group(family, port, fwmark)
                except OSError as exc:
                    if family == socket.AF_INET6 and exc.errno != errno.EADDRINUSE:
                        logger.info("no IPv6 socket: %s", exc)
                        break
                    raise
                socks[family], handshake[family] = group[0], group[1:]
                port = int(group[0].getsockname()[1])  # IPv6 takes the port IPv4 got
        except BaseException:
            for sock in [*socks.values(), *(extra for group in handshake.values() for extra in group)]:
                sock.close()
            raise
        return socks, handshake

    def _bind_group(self, family: socket.AddressFamily, port: int, fwmark: int) -> list[socket.socket]:
        if self.steer_handshakes:
            try:
                return bind_steered(family, port, lambda sock: _configure(sock, family, fwmark))
            except SteeringUnavailable as exc:
                logger.info("handshake messages are not steered (%s): one socket per family", exc)
                self.steer_handshakes = False
        return [_bind(family, port, fwmark)]

    def _all_sockets(self) -> list[UdpSocket]:
        return [*self._sockets.values(), *(udp for group in self._handshake_sockets.values() for udp in group)]

    def _close_sockets(
        self, sockets: dict[int, UdpSocket] | None = None, handshake: dict[int, list[UdpSocket]] | None = None
    ) -> None:
        closing = self._sockets if sockets is None else sockets
        closing_handshake = self._handshake_sockets if sockets is None else (handshake or {})
        for udp in [*closing.values(), *(udp for group in closing_handshake.values() for udp in group)]:
            resume = self._resume_timers.pop(udp, None)
            if resume is not None:
                resume.cancel()
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(udp.fileno())
            udp.close()
        closing.clear()
        closing_handshake.clear()

    async def rebind(self, port: int, fwmark: int | None = None) -> None:
        """Move to a new listen port (a UAPI ``listen_port``). Raises ``UapiError(EADDRINUSE)`` and keeps the old one.

        The new sockets get ``fwmark`` when given (a request that sets both), else the current one; ``fwmark``
        itself changes only through ``set_fwmark``. Transactional: whatever fails, the old sockets stay open and
        in use, and nothing of the tunnel changed.
        """
        mark = self.fwmark if fwmark is None else fwmark
        if not 0 <= mark <= MAX_FWMARK:
            raise UapiError(errno.EINVAL, f"fwmark {mark} is not a 32-bit value")
        if port == self.listen_port and port != 0 and self._sockets:
            return
        old, old_handshake = dict(self._sockets), dict(self._handshake_sockets)
        self._sockets.clear()
        self._handshake_sockets = {}
        try:
            await self._open_sockets(port, mark)
        except Exception as exc:
            self._close_sockets()  # whatever of the new ones was registered already
            self._sockets, self._handshake_sockets = old, old_handshake
            reported = exc.errno if isinstance(exc, OSError) else None
            code = reported if reported in (errno.EADDRINUSE, errno.EPERM) else errno.EIO
            raise UapiError(code, f"cannot bind port {port}: {exc}") from None
        if self._worker is not None:  # it holds the old sockets: a new one takes the new ones
            self.flush()
            self._stop_worker()
            self._start_worker()
        self._close_sockets(old, old_handshake)

    def set_fwmark(self, fwmark: int) -> None:
        """Mark the packets of the open sockets with ``fwmark`` (SO_MARK; 0 clears it), as wireguard-go's
        ``BindSetMark`` does: wg-quick sets the mark after the port and relies on it to keep the tunnel's own
        datagrams out of a default route through the tunnel. Raises ``UapiError(EPERM/EIO)`` and keeps the old mark.
        """
        if not 0 <= fwmark <= MAX_FWMARK:
            raise UapiError(errno.EINVAL, f"fwmark {fwmark} is not a 32-bit value")
        if fwmark == self.fwmark:
            return
        if self.bind_address is None and hasattr(socket, "SO_MARK"):
            try:
                for udp in self._all_sockets():
                    _set_mark(udp.sock, fwmark)
            except OSError as exc:
                for udp in self._all_sockets():  # best effort: put the old mark back
                    with contextlib.suppress(OSError):
                        _set_mark(udp.sock, self.fwmark)
                raise UapiError(exc.errno or errno.EIO, f"cannot set fwmark: {exc.strerror or exc}") from None
        self.fwmark = fwmark

    def close(self) -> None:
        """Stop everything this tunnel started: timer, sockets, TUN reader and device (the interface goes away)."""
        if self._timer is not None:
            self._timer.cancel()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        self._stop_worker()
        self._close_sockets()
        if self.tun is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self.tun.fileno())
            with contextlib.suppress(OSError):
                self.tun.close()
            self.tun = None
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    @property
    def local_port(self) -> int:
        """The UDP port the tunnel listens on (``listen_port``)."""
        return self.listen_port

    # --- inputs -----------------------------------------------------------------------------------------------

    def _on_socket_readable(self, udp: UdpSocket, steered: bool = False) -> None:
        """A transport socket is readable. ``steered``: the kernel queues only transport messages here; otherwise
        handshake messages come too, and each is charged to its source before the device sees it.

        A GRO read whose datagrams all begin with the same 8 bytes, a transport message's type and receiver index,
        goes to the device whole (``Device.receive_gro``, which opens a run of them as one): none of its datagrams
        is charged (they are transport messages), and the NAT layer looks at the first one only, as it tells STUN
        from WireGuard by the first 8 bytes (``stun.classify``). Every other datagram goes through the NAT filter
        and the admission check one by one, and consecutive ones to the device in one ``receive_datagrams`` call
        (runs of transport messages share the per-run work there), all in the order they came.
        """
        runs = udp.receive_runs(UDP_READ_BATCH)
        if not runs:
            return
        now, wall = monotonic_now(), wall_ns()
        device = self.device
        nat = self.nat  # STUN on the WireGuard socket: the NAT layer's, never the device's
        allow = None if steered else self._admission.allow
        batch: list[tuple[bytes, Endpoint]] = []
        handed = False  # whether a read went to receive_gro
        for data, segment, address in runs:
            if not segment:
                datagrams = [data]
            else:
                start = 0
                if one_transport_header(data, segment):
                    if nat is None or not nat.datagram_received(data[:segment], address):
                        if batch:
                            device.receive_datagrams(batch, now, wall)
                            batch = []
                        device.receive_gro(data, segment, address, now, wall)
                        handed = True
                        continue
                    start = segment  # the NAT layer took the first datagram: the rest one by one
                datagrams = [data[i : i + segment] for i in range(start, len(data), segment)]
            for datagram in datagrams:
                if nat is not None and nat.datagram_received(datagram, address):
                    continue
                if allow is not None and datagram[:1] != b"\x04" and not allow(address[0], now):
                    self.handshakes_refused += 1
                    continue
                batch.append((datagram, address))
        if batch or not handed:  # the device sees the clock even when the filters took everything
            device.receive_datagrams(batch, now, wall)
        self.flush()

    def _on_handshake_readable(self, udp: UdpSocket) -> None:
        """A handshake socket is readable: read at most ``HANDSHAKE_READ_BUDGET`` messages, charge each to its
        source address before the device computes anything, and if the queue had more, leave it alone for
        ``HANDSHAKE_PAUSE`` (a queue that is always full belongs to a flood: the kernel drops what does not fit)."""
        batch = udp.receive_batch(HANDSHAKE_READ_BUDGET)
        if batch:
            now, wall = monotonic_now(), wall_ns()
            allow = self._admission.allow
            receive = self.device.receive_datagram
            nat = self.nat
            for data, address in batch:
                # STUN shares the port and, not being a transport message, is steered to these sockets.
                if nat is not None and nat.datagram_received(data, address):
                    continue
                if allow(address[0], now):
                    receive(data, address, now, wall)
                else:
                    self.handshakes_refused += 1
            self.flush()
        if len(batch) >= HANDSHAKE_READ_BUDGET and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(udp.fileno())
            self._resume_timers[udp] = self._loop.call_later(HANDSHAKE_PAUSE, self._resume_handshake_reader, udp)

    def _resume_handshake_reader(self, udp: UdpSocket) -> None:
        if self._resume_timers.pop(udp, None) is not None and self._loop is not None:
            self._loop.add_reader(udp.fileno(), self._on_handshake_readable, udp)

    def send_packet(self, packet: bytes) -> None:
        """Hand the device a plaintext IP packet (what a TUN read gives), then flush."""
        self.device.send_packet(packet, monotonic_now(), wall_ns())
        self.flush()

    def _on_tun_readable(self) -> None:
        tun = self.tun
        if tun is None:
            return
        # A TSO read comes back as a run (``LinuxTun.read_run``): it goes to the device as it lies in its buffer,
        # after the packets read before it, so the order of the reads is the order of the sends.
        read = getattr(tun, "read_run", None) or tun.read_packets
        device = self.device
        packets: list[bytes] = []
        taken = 0
        clock: tuple[float, int] | None = None
        while taken < TUN_READ_BATCH:  # packets, not reads: one offload read can carry ~45 segments
            try:
                got = read()
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as exc:
                logger.error("TUN device %s failed (%s): shutting down", tun.name, exc.strerror or exc)
                self.close()
                return
            if isinstance(got, list):
                packets += got
                taken += len(got)
                continue
            buffer, count, stride, size, last_size = got
            clock = clock or (monotonic_now(), wall_ns())
            if packets:
                device.send_packets(packets, *clock)
                packets = []
            device.send_run(PacketRun(buffer, count, stride, size, last_size, zero_padded=True), *clock)
            taken += count
        if packets:
            device.send_packets(packets, *(clock or (monotonic_now(), wall_ns())))
        self.flush()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.device.handle_timer(monotonic_now(), wall_ns())
        self.flush()

    def _schedule_housekeeping(self) -> None:
        if self._loop is not None:
            self._housekeeping = self._loop.call_later(HOUSEKEEPING_INTERVAL, self._on_housekeeping)

    def _on_housekeeping(self) -> None:
        if self.tun is not None:
            with contextlib.suppress(OSError):
                mtu = self.tun.mtu
                if mtu != self.device.mtu:
                    self.device.mtu = mtu
                    self._fit_tso(mtu)
        self._schedule_housekeeping()

    def _fit_tso(self, mtu: int) -> None:
        """Cap the TUN device's TCP super-packets at what one UDP GSO send carries once sealed (``GSO_MAX_BYTES``
        of messages of ``mtu`` + 32 bytes): one TSO read is then one ``sendmsg``, and the peer's GRO read holds the
        whole of it (uncapped, a 47-segment read went out as 44 + 3, and the 3 cost the receiver a read of their
        own). Only for a TUN device with TSO reads (``LinuxTun``); a refusal is logged and changes nothing else."""
        tun = self.tun
        set_segments = getattr(tun, "set_gso_max_segs", None)
        if set_segments is None or not getattr(tun, "tso", False):
            return
        segments = max(1, GSO_MAX_BYTES // (mtu + MESSAGE_TRANSPORT_MIN_SIZE))  # a full-MTU packet: no padding
        try:
            set_segments(segments)
        except (TunError, ValueError) as exc:
            logger.info("TUN device: gso_max_segs %d not set (%s)", segments, exc)

    # --- outputs ----------------------------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what the device wants sent, deliver its packets, re-arm its timer and log its events."""
        drain(self.device, self, self, self._worker_sink if self._worker is not None else self._seal_sink)
        self._drain_events()
        self._arm_timer()

    def send_datagrams(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        """Hand each datagram to the socket of its address family, keeping their order per socket (the tunnel
        is the ``transmit.DatagramSink`` of its device)."""
        if self.nat is not None:
            datagrams = self.nat.divert(datagrams)  # those to relayed endpoints go through the TURN allocation
        v4 = [d for d in datagrams if not endpoint_is_ipv6(d[1])]
        v6 = [d for d in datagrams if endpoint_is_ipv6(d[1])] if len(v4) != len(datagrams) else []
        for family, batch in ((socket.AF_INET, v4), (socket.AF_INET6, v6)):
            udp = self._sockets.get(family)
            if batch and udp is not None:
                udp.send_batch(batch)

    def write_packets(self, packets: Sequence[bytes]) -> None:
        """Deliver decrypted packets to the TUN device, or to ``on_packet`` without one (``transmit.PacketSink``)."""
        if self.tun is not None:
            try:
                self.tun.write_packets(packets)  # TCP segments of one flow may go as one offload write
            except OSError:
                self.tun_errors += 1
        elif self.on_packet is not None:
            for packet in packets:
                self.on_packet(packet)

    def write_run(self, run: PacketRun) -> None:
        """``write_packets`` of a run of decrypted packets in one buffer (``transmit.RunSink``): a TUN device with
        ``write_run`` (``LinuxTun``) glues it from the buffer."""
        write_run = getattr(self.tun, "write_run", None)
        if write_run is None:
            self.write_packets(run.packets())
            return
        try:
            write_run(run.buffer, run.packets_in, run.stride, run.size, run.last_size)
        except OSError:
            self.tun_errors += 1

    def _arm_timer(self) -> None:
        """Have ``_on_timer`` called by the device's next deadline. A timer armed for an earlier time is left as it
        is: it wakes the device early, which finds nothing due and re-arms (``flush``). Under traffic the deadline
        moves later on nearly every read (a send arms the new-handshake timer that the next received ACK disarmed),
        and cancelling and making an asyncio timer for each of them cost more than one early wake-up in ten seconds.
        """
        deadline = self.device.get_timer()
        armed = self._timer_at
        if deadline == armed or self._loop is None or (deadline is not None and armed is not None and armed < deadline):
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_later(max(0.0, deadline - monotonic_now()), self._on_timer)

    def _drain_events(self) -> None:
        while (event := self.device.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                logger.info("peer(%s): handshake completed", event.peer.short())
            elif isinstance(event, EndpointChanged):
                logger.info("peer(%s): endpoint is now %s", event.peer.short(), event.endpoint[0])
            elif isinstance(event, KeypairExpired):
                logger.info("peer(%s): session keys erased", event.peer.short())
            if self.on_event is not None:
                self.on_event(event)


class NatHook(Protocol):
    """What the tunnel asks of the NAT layer (``wgpy.nat.io.handler.NatHandler``); see ``Tunnel.nat``."""

    def datagram_received(self, data: bytes, address: Endpoint) -> bool:
        """``True`` if the datagram is the NAT layer's (STUN), and the device must not see it."""
        ...

    def divert(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> Sequence[tuple[bytes, Endpoint]]:
        """Send what goes to relayed endpoints; return the rest, for the sockets."""
        ...

    def relays(self, endpoint: Endpoint) -> bool:
        """Whether datagrams to ``endpoint`` go through the NAT layer (a relayed endpoint): neither the worker
        (``worker.split_jobs``) nor the in-place sealer (``_SealInPlace``) may send them from the socket itself."""
        ...


class _SealInPlace:
    """The ``transmit.SealJobSink`` of a tunnel without a worker: it seals each job straight into one reused send
    buffer (``SealJob.run_into``, byte for byte ``SealJob.run``) and sends the messages from there
    (``UdpSocket.send_contiguous``: runs of equal sizes in one GSO ``sendmsg``), so no bytes object is made per
    message and none is copied again to be joined.

    With a NAT layer it takes the jobs of every endpoint the layer does not relay (``NatHook.relays``) and leaves
    the relayed ones, in order, to the drain, which seals them and hands them to ``Tunnel.send_datagrams`` and so
    to ``NatHook.divert`` (the TURN allocation, and the occasional direct probe copy). ``divert`` sends a transport
    message to any other endpoint as it is, out of the socket, so nothing it does is skipped here; the initiation
    copies it makes are handshake datagrams, never seal jobs."""

    __slots__ = ("_buffer", "_tunnel")

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel
        self._buffer = bytearray(SEAL_BUFFER_SIZE)

    def submit(
        self, jobs: list[SealJob | KeypairRetired], packets: Sequence[bytes | PacketRun]
    ) -> tuple[list[SealJob | KeypairRetired], Sequence[bytes | PacketRun]]:
        tunnel = self._tunnel
        if not jobs:
            return jobs, packets
        nat = tunnel.nat
        relays = nat.relays if nat is not None else None
        kept: list[SealJob | KeypairRetired] = []
        sockets = tunnel._sockets
        for job in jobs:
            if not isinstance(job, SealJob):
                continue  # KeypairRetired: the key lives only in the jobs, which are gone once sent
            if relays is not None and relays(job.endpoint):
                kept.append(job)  # through the TURN allocation: ``run_seal_jobs`` and ``NatHook.divert``
                continue
            udp = sockets.get(socket.AF_INET6 if endpoint_is_ipv6(job.endpoint) else socket.AF_INET)
            if udp is None:
                continue  # no socket of that family: dropped, as ``send_datagrams`` drops it
            if job.sealed_size() > len(self._buffer):
                self._buffer = bytearray(job.sealed_size())
            udp.send_contiguous(self._buffer, job.run_into(self._buffer), job.endpoint)
        return kept, packets


class _WorkerSink:
    """The tunnel's worker as the ``transmit.SealJobSink``: it takes the jobs, and the packets when it writes to the
    TUN device itself; if it fails, the tunnel goes on in one process and the drain does everything here."""

    __slots__ = ("_tunnel",)

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def submit(
        self, jobs: list[SealJob | KeypairRetired], packets: Sequence[bytes | PacketRun]
    ) -> tuple[list[SealJob | KeypairRetired], Sequence[bytes | PacketRun]]:
        tunnel = self._tunnel
        worker = tunnel._worker
        if worker is None:
            return jobs, packets
        to_tun = flat_packets(packets) if worker.has_tun and tunnel.tun is not None else []
        offered, kept = jobs, list[SealJob | KeypairRetired]()
        if tunnel.nat is not None and jobs:  # relayed endpoints: sealed here, sent through the relay
            offered, kept = split_jobs(jobs, tunnel.nat.relays)
        if not offered and not to_tun:
            return jobs, packets
        try:
            worker.submit(offered, to_tun)
        except WorkerError as exc:
            logger.error("%s: running in one process", exc)
            tunnel.worker_failures += 1
            tunnel._stop_worker()
            return jobs, packets
        return kept, [] if to_tun else packets
