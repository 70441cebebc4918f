"""UDP sockets for the driver: batched, non-blocking receive and UDP GSO send where the kernel offers it.

Theory of operation: the per-datagram cost of a Python ``sendto`` (a system call and an object or two) is of the
order of the AEAD itself, so the driver sends in batches. Consecutive datagrams for the same endpoint with the same
size (the last one may be shorter) are joined into one buffer and handed to the kernel in a single ``sendmsg`` with
the ``UDP_SEGMENT`` control message (UDP generic segmentation offload, Linux 4.18+): the kernel cuts it back into
datagrams, as wireguard-go does with its ``StdNetBind``. When the kernel refuses GSO (older kernels, or a route
whose device cannot checksum), the socket falls back to one ``sendto`` per datagram for good.

Receiving reads every datagram that is waiting, up to a bound, in one readiness callback. The socket asks for UDP
generic receive offload (``UDP_GRO``, Linux 5.0+), the mirror of GSO: a run of same-size datagrams of one flow (a
GSO send from a peer on the same host or across a veth, or datagrams the NIC's GRO merged) arrives as one buffer with
a ``UDP_GRO`` control message giving the segment size. ``receive_runs`` hands such a read on whole with its segment
size (for ``Device.receive_gro``, which opens a run of transport messages as one), ``receive_batch`` cuts it back
into datagrams. One ``recvmsg`` then brings up to 64 datagrams, where a plain ``recvfrom`` brings one. Nothing here knows WireGuard: the
driver hands the datagrams to the ``Device`` and the device's output back to ``send_batch``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Sequence
from typing import Final

from ..events import Endpoint

__all__ = ["UdpSocket"]

logger = logging.getLogger("wgpy")

SOL_UDP: Final = getattr(socket, "SOL_UDP", 17)
UDP_SEGMENT: Final = getattr(socket, "UDP_SEGMENT", 103)  # linux/udp.h
UDP_GRO: Final = getattr(socket, "UDP_GRO", 104)  # linux/udp.h
GSO_MAX_SEGMENTS: Final = 64  # linux/udp.h UDP_MAX_SEGMENTS
GSO_MAX_BYTES: Final = 65000  # stays under the 65,507-byte limit of one UDP payload over IPv4
SOCKET_BUFFER: Final = 7 << 20  # wireguard-go asks for 7 MiB of socket buffer each way
RECEIVE_SIZE: Final = 65535
_SEGMENT_SIZE: Final = struct.Struct("=H")
_GRO_SIZE: Final = struct.Struct("=i")  # the kernel reports the segment size of a GRO buffer as an int
_CMSG_SPACE: Final = socket.CMSG_SPACE(_GRO_SIZE.size) if hasattr(socket, "CMSG_SPACE") else 0
# As a plain int: ``socket.MSG_TRUNC`` is an ``enum.IntFlag`` member, and ``int & IntFlag`` runs the enum's Python
# ``__rand__`` (about 1.2 us a read here, against 55 ns for two ints).
_MSG_TRUNC: Final = int(socket.MSG_TRUNC)


def _size_buffers(sock: socket.socket, receive_buffer: int) -> None:
    sizes = ((socket.SO_RCVBUF, 33, receive_buffer), (socket.SO_SNDBUF, 32, SOCKET_BUFFER))  # SO_*BUFFORCE
    for option, forced, size in sizes:
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)  # needs CAP_NET_ADMIN; beats rmem_max
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, option, size)


def _enable_gro(sock: socket.socket) -> bool:
    """Ask the kernel to coalesce received datagrams (``UDP_GRO``); ``False`` where it cannot."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


class UdpSocket:
    """One bound, non-blocking UDP socket of the tunnel."""

    def __init__(
        self, sock: socket.socket, *, gso: bool = True, gro: bool = True, receive_buffer: int = SOCKET_BUFFER
    ) -> None:
        """
        Args:
            sock: the bound socket.
            gso: send runs of datagrams with UDP_SEGMENT where the kernel takes it.
            gro: ask for UDP_GRO on receive.
            receive_buffer: SO_RCVBUF in bytes (the kernel doubles it for its bookkeeping). A handshake socket
                keeps it small: what waits in it is latency, and a flood beyond it is dropped by the kernel.
        """
        self.sock = sock
        self.gso = gso and hasattr(sock, "sendmsg")
        self.gro = gro and _CMSG_SPACE > 0 and _enable_gro(sock)
        self.send_errors = 0
        self.receive_errors = 0
        sock.setblocking(False)
        _size_buffers(sock, receive_buffer)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def receive_batch(self, limit: int) -> list[tuple[bytes, Endpoint]]:
        """The datagrams waiting on the socket: reads stop once ``limit`` datagrams are in (a GRO read may bring
        up to 64 at once, so a batch can pass ``limit`` by less than that)."""
        if self.gro:
            return self._receive_gro(limit)
        received: list[tuple[bytes, Endpoint]] = []
        recvfrom = self.sock.recvfrom
        for _ in range(limit):
            try:
                data, address = recvfrom(RECEIVE_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # e.g. ICMP errors surfaced as ECONNREFUSED: not fatal for a UDP socket
                logger.debug("UDP receive error: %s", exc)
                continue
            received.append((data, address))
        return received

    def receive_runs(self, limit: int) -> list[tuple[bytes, int, Endpoint]]:
        """The reads waiting on the socket, each as it came: ``(data, segment, address)``. With GRO ``data`` holds
        the datagrams ``data[i : i + segment]`` (the last may be shorter) of one sender; ``segment`` is 0 when the
        read is one datagram (always so without GRO). Reads stop once ``limit`` datagrams are in, as in
        ``receive_batch``."""
        if not self.gro:
            return [(data, 0, address) for data, address in self.receive_batch(limit)]
        runs: list[tuple[bytes, int, Endpoint]] = []
        recvmsg = self.sock.recvmsg
        count = 0
        while count < limit:
            try:
                data, ancillary, flags, address = recvmsg(RECEIVE_SIZE, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                logger.debug("UDP receive error: %s", exc)
                continue
            if flags & _MSG_TRUNC:
                self.receive_errors += 1  # longer than any datagram WireGuard sends: nothing of it is usable
                continue
            segment = 0
            for level, kind, value in ancillary:
                if level == SOL_UDP and kind == UDP_GRO and len(value) >= _GRO_SIZE.size:
                    segment = _GRO_SIZE.unpack_from(value)[0]
            if segment <= 0 or segment >= len(data):
                runs.append((data, 0, address))
                count += 1
            else:
                runs.append((data, segment, address))
                count += -(-len(data) // segment)
        return runs

    def _receive_gro(self, limit: int) -> list[tuple[bytes, Endpoint]]:
        received: list[tuple[bytes, Endpoint]] = []
        for data, segment, address in self.receive_runs(limit):
            if segment:
                received += [(data[i : i + segment], address) for i in range(0, len(data), segment)]
            else:
                received.append((data, address))
        return received

    def send_batch(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        """Send ``datagrams`` in order, coalescing runs for one endpoint with GSO when available."""
        if not self.gso:
            for data, endpoint in datagrams:
                self._send_one(data, endpoint)
            return
        count = len(datagrams)
        start = 0
        while start < count:
            data, endpoint = datagrams[start]
            size = len(data)
            end = start + 1
            total = size
            # Extend the run: same endpoint, same size; a shorter datagram may close it.
            while end < count and end - start < GSO_MAX_SEGMENTS:
                next_data, next_endpoint = datagrams[end]
                next_size = len(next_data)
                if next_endpoint != endpoint or next_size > size or total + next_size > GSO_MAX_BYTES:
                    break
                total += next_size
                end += 1
                if next_size < size:
                    break
            if end - start == 1:
                self._send_one(data, endpoint)
            else:
                self._send_segmented(datagrams[start:end], size, endpoint)
            start = end

    def send_contiguous(self, buffer: bytearray, sizes: Sequence[int], endpoint: Endpoint) -> None:
        """Send datagrams that lie back to back in ``buffer`` (their ``sizes`` in order) to one endpoint.

        ``send_batch`` without the join: runs of equal sizes (a shorter one may close a run) go out as one GSO
        ``sendmsg`` of a slice of ``buffer`` itself, the others one ``sendto`` each. The sizes of a sealed run
        (``SealJob.run_into``: one size, the last one smaller or equal) are recognised with two C-level looks at
        the list and cut into batches by arithmetic (``_send_uniform``), the same batches as the walk below.
        """
        view = memoryview(buffer)
        count = len(sizes)
        start = 0
        offset = 0
        if count > 1 and self.gso:
            size = sizes[0]
            same = sizes.count(size)
            last = sizes[-1]
            if size > 0 and (same == count or (same == count - 1 and last < size)):
                start, offset = self._send_uniform(view, size, count, last, endpoint)
        while start < count:
            size = sizes[start]
            end = start + 1
            total = size
            if self.gso:
                while end < count and end - start < GSO_MAX_SEGMENTS:
                    next_size = sizes[end]
                    if next_size > size or total + next_size > GSO_MAX_BYTES:
                        break
                    total += next_size
                    end += 1
                    if next_size < size:
                        break
            chunk = view[offset : offset + total]
            if end - start == 1:
                self._send_one(chunk, endpoint)
            else:
                self._send_view(chunk, size, end - start, endpoint)
            offset += total
            start = end

    def _send_uniform(self, view: memoryview, size: int, count: int, last: int, endpoint: Endpoint) -> tuple[int, int]:
        """``send_contiguous``'s batches for ``count`` datagrams of ``size`` bytes, the last ``last`` bytes (at
        most ``size``): as many as fit a batch (``per``) in each, and the last datagram into the batch before it
        when it still fits there, as the walk does. Returns where it stopped (datagram, byte): the end, or the
        batch after the one on which the kernel refused GSO, which the walk then sends one by one."""
        per = min(GSO_MAX_SEGMENTS, max(1, GSO_MAX_BYTES // size))
        start = 0
        offset = 0
        while start < count and self.gso:
            remaining = count - start
            taken = per if remaining > per else remaining
            if remaining == per + 1 and per < GSO_MAX_SEGMENTS and per * size + last <= GSO_MAX_BYTES:
                taken = remaining  # the shorter last datagram still fits this batch
            total = taken * size if taken < remaining else (taken - 1) * size + last
            chunk = view[offset : offset + total]
            if taken == 1:
                self._send_one(chunk, endpoint)
            else:
                self._send_view(chunk, size, taken, endpoint)
            offset += total
            start += taken
        return start, offset

    def _send_view(self, chunk: memoryview, size: int, count: int, endpoint: Endpoint) -> None:
        """One GSO ``sendmsg`` of ``count`` datagrams of ``size`` bytes (the last may be shorter) in ``chunk``."""
        try:
            self.sock.sendmsg([chunk], [(SOL_UDP, UDP_SEGMENT, _SEGMENT_SIZE.pack(size))], 0, endpoint)
        except OSError as exc:
            if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                logger.info("UDP GSO refused by the kernel (%s): sending datagrams one by one", exc.strerror)
                self.gso = False
                for at in range(0, len(chunk), size):
                    self._send_one(chunk[at : at + size], endpoint)
            else:
                self.send_errors += 1
                logger.debug("send to %s failed: %s", endpoint[0], exc)

    def _send_one(self, data: bytes | memoryview, endpoint: Endpoint) -> None:
        try:
            self.sock.sendto(data, endpoint)
        except (OSError, ValueError) as exc:  # a full buffer drops the datagram, as a router would
            self.send_errors += 1
            logger.debug("send to %s failed: %s", endpoint[0], exc)

    def _send_segmented(self, run: Sequence[tuple[bytes, Endpoint]], size: int, endpoint: Endpoint) -> None:
        """One GSO ``sendmsg`` of the datagrams of ``run`` (all ``size`` bytes but the last, which may be shorter)."""
        self._send_view(memoryview(b"".join(data for data, _ in run)), size, len(run), endpoint)
