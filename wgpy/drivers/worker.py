"""The data-plane worker: a second process that seals transport messages and writes decrypted packets to the TUN
device, so that a tunnel uses two cores.

Theory of operation: CPython runs one thread of Python at a time, and ``cryptography``'s AEAD holds that lock while
it encrypts (two threads sealing go no faster than one), so a second core needs a second process. The split follows
the kernel's and wireguard-go's: the work that needs state stays serial in the main process (routing, counters,
the replay window, timers, handshakes), and the work that needs none runs beside it. Here that is:

- sealing: the main ``Device`` runs with ``seal_offload``; it reserves the counters and hands out ``SealJob``s,
  and the worker runs ``keypair.seal_run`` on them (the core's own code) and sends the messages from the tunnel's
  UDP socket (the same socket: its descriptor is inherited), with UDP GSO;
- TUN writes: the packets the device decrypted and checked go to the worker, which glues TCP segments into
  super-packets (``tun.offload``) and writes them to the same TUN descriptor.

The main process keeps the reads (TUN and UDP), the decryption (it must finish before the replay window and the
source check can decide), and everything else. A worker that is not there changes nothing: the driver then runs the
jobs itself.

The two talk over one ``AF_UNIX``/``SOCK_SEQPACKET`` socket pair, main to worker only. A message holds records:

    KEY     u8 1, u32 local_index, 32 bytes key         install the sending key of a keypair
    FORGET  u8 2, u32 local_index                       the keypair is retired: drop its key
    SEAL    u8 3, u32 local_index, u32 remote_index, u64 first_counter, u16 count, u8 host length, host, u16 port,
            u32 flowinfo, u32 scope_id, count x u16 lengths, the padded plaintexts
    TUN     u8 4, u16 count, count x u16 lengths, the packets

(little-endian). Records are gathered with ``sendmsg`` (no copy in Python), one message per flush, more if it is
large. The channel is ordered, so a keypair's jobs always come before its FORGET. Sending keys cross the socket
pair, which only these two processes hold, and are never logged; the static private key never leaves the main
process. When the channel closes (the main process stopped, or died), the worker exits.

Relayed endpoints (NAT traversal, ``wgpy.nat``): a datagram to a peer's relayed address must go through our TURN
allocation, whose socket and channel bindings live in the main process's event loop (aioice), not out of the
WireGuard socket. The tunnel therefore keeps the seal jobs for relayed endpoints (``split_jobs``) and seals them
itself, so their messages take the same ``send_datagrams`` path (and the relay diversion) as without a worker; the
device never knows which endpoints are relayed. The relayed path is bounded by the TURN server anyway; direct
peers keep the second core.

Multi-queue TUN does not fit this split: the kernel spreads flows over every attached queue for reading, and a
queue that only writes would strand the packets sent to it, so the worker writes on the main process's own queue.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

from .. import crypto
from ..events import Endpoint, endpoint_is_ipv6
from ..keypair import seal_run
from ..send import KeypairRetired, SealJob
from .udp import UdpSocket

__all__ = ["DataPlaneWorker", "WorkerError", "main", "split_jobs"]

logger = logging.getLogger("wgpy")

OP_KEY: Final = 1
OP_FORGET: Final = 2
OP_SEAL: Final = 3
OP_TUN: Final = 4

_KEY: Final = struct.Struct("<BI32s")
_FORGET: Final = struct.Struct("<BI")
_SEAL: Final = struct.Struct("<BIIQHB")
_ENDPOINT_TAIL: Final = struct.Struct("<HII")
_TUN: Final = struct.Struct("<BH")
_RECORD_BYTES: Final = 96 << 10  # payload bytes per SEAL or TUN record (one packet more if a packet is larger)
_RECORD_PACKETS: Final = 256  # packets per record

CHANNEL_BUFFER: Final = 8 << 20  # socket buffer each way (with CAP_NET_ADMIN; else the system's cap, ~200 KiB)
MESSAGE_LIMIT: Final = 160 << 10  # bytes per message: a SOCK_SEQPACKET message must fit in the socket buffer
IOV_LIMIT: Final = 1000  # buffers per sendmsg (the kernel takes at most IOV_MAX = 1024)
SEND_TIMEOUT: Final = 2.0  # seconds the main process waits on a full channel before it gives the worker up
STOP_TIMEOUT: Final = 2.0  # seconds a stopping worker gets before it is killed


class WorkerError(Exception):
    """The worker is gone or stuck; the driver falls back to doing its work itself."""


def _endpoint_record(endpoint: Endpoint) -> bytes:
    host = endpoint[0].encode()
    flowinfo = endpoint[2] if len(endpoint) > 2 else 0
    scope_id = endpoint[3] if len(endpoint) > 3 else 0
    return bytes([len(host)]) + host + _ENDPOINT_TAIL.pack(endpoint[1], flowinfo, scope_id)


class _Batch:
    """Records of one flush, cut into messages of at most MESSAGE_LIMIT bytes and IOV_LIMIT buffers."""

    def __init__(self) -> None:
        self.messages: list[list[bytes]] = []
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, parts: list[bytes]) -> None:
        size = sum(map(len, parts))
        if self._parts and (self._size + size > MESSAGE_LIMIT or len(self._parts) + len(parts) > IOV_LIMIT):
            self.close()
        self._parts += parts
        self._size += size

    def close(self) -> None:
        if self._parts:
            self.messages.append(self._parts)
            self._parts, self._size = [], 0


def _chunks(packets: Sequence[bytes]) -> list[tuple[int, Sequence[bytes]]]:
    """``packets`` cut into runs of at most _RECORD_PACKETS packets and about _RECORD_BYTES: (offset, run)."""
    if len(packets) <= 32 and sum(map(len, packets)) <= _RECORD_BYTES:
        return [(0, packets)]  # the common case: one flush, one record
    runs: list[tuple[int, Sequence[bytes]]] = []
    start = size = 0
    for i, packet in enumerate(packets):
        if i > start and (i - start >= _RECORD_PACKETS or size + len(packet) > _RECORD_BYTES):
            runs.append((start, packets[start:i]))
            start, size = i, 0
        size += len(packet)
    runs.append((start, packets[start:]))
    return runs


def _packets_records(op_header: bytes, packets: Sequence[bytes], batch: _Batch) -> None:
    """Add one record: ``op_header`` (its count already filled in), the lengths, then the packets."""
    batch.add([op_header, struct.pack(f"<{len(packets)}H", *map(len, packets)), *packets])


def encode(
    jobs: Sequence[SealJob | KeypairRetired], packets: Sequence[bytes], installed: set[int]
) -> list[list[bytes]]:
    """The channel messages (each a list of buffers for one ``sendmsg``) that carry ``jobs`` and ``packets``.

    ``installed`` holds the keypair indices whose keys the worker has; it is updated (KEY before a keypair's first
    job, FORGET when it is retired).
    """
    batch = _Batch()
    for job in jobs:
        if isinstance(job, KeypairRetired):
            if job.local_index in installed:
                installed.discard(job.local_index)
                batch.add([_FORGET.pack(OP_FORGET, job.local_index)])
            continue
        if job.local_index not in installed:
            installed.add(job.local_index)
            batch.add([_KEY.pack(OP_KEY, job.local_index, job.send_key)])
        endpoint = _endpoint_record(job.endpoint)
        for start, chunk in _chunks(job.plaintexts):
            header = _SEAL.pack(
                OP_SEAL, job.local_index, job.remote_index, job.first_counter + start, len(chunk), endpoint[0]
            )
            _packets_records(header + endpoint[1:], chunk, batch)
    for _, tun_chunk in _chunks(packets):
        _packets_records(_TUN.pack(OP_TUN, len(tun_chunk)), tun_chunk, batch)
    batch.close()
    return batch.messages


def split_jobs(
    jobs: Sequence[SealJob | KeypairRetired], kept: Callable[[Endpoint], bool]
) -> tuple[list[SealJob | KeypairRetired], list[SealJob | KeypairRetired]]:
    """``jobs`` cut in two, in order: those for the worker, and the seal jobs whose endpoint ``kept`` claims (the
    main process runs them). A ``KeypairRetired`` always goes to the worker (only it may hold the key)."""
    to_worker: list[SealJob | KeypairRetired] = []
    here: list[SealJob | KeypairRetired] = []
    for job in jobs:
        (here if isinstance(job, SealJob) and kept(job.endpoint) else to_worker).append(job)
    return to_worker, here


class DataPlaneWorker:
    """The main process's handle on the worker: starts it, feeds it, stops it."""

    def __init__(self, udp_sockets: dict[int, socket.socket], tun_fd: int | None) -> None:
        """
        Args:
            udp_sockets: the tunnel's bound UDP sockets by address family; the worker sends from the same sockets.
            tun_fd: the TUN descriptor the worker writes decrypted packets to, or ``None`` (no TUN: the main process
                keeps delivering packets itself).
        """
        self._installed: set[int] = set()
        self.has_tun = tun_fd is not None
        self.jobs_sent = 0
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            for sock in (ours, theirs):
                for option, forced in ((socket.SO_SNDBUF, 32), (socket.SO_RCVBUF, 33)):  # SO_*BUFFORCE: root only
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, forced, CHANNEL_BUFFER)
                    except OSError:
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, option, CHANNEL_BUFFER)
            ours.settimeout(SEND_TIMEOUT)
            command = [sys.executable, "-m", "wgpy.drivers.worker", "--channel", str(theirs.fileno())]
            fds = [theirs.fileno()]
            for family, sock in udp_sockets.items():
                command += ["--udp6" if family == socket.AF_INET6 else "--udp4", str(sock.fileno())]
                fds.append(sock.fileno())
            if tun_fd is not None:
                command += ["--tun", str(tun_fd)]
                fds.append(tun_fd)
            # The worker imports the same wgpy as this process, wherever it was loaded from.
            package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                command, pass_fds=fds, stdin=subprocess.DEVNULL, env=env
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._channel = ours
        logger.info("data-plane worker started (pid %d)", self.process.pid)

    def fileno(self) -> int:
        """The channel: readable (end of file) once the worker has gone."""
        return self._channel.fileno()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and self._channel.fileno() >= 0

    def submit(self, jobs: Sequence[SealJob | KeypairRetired], packets: Sequence[bytes] = ()) -> None:
        """Hand the worker the device's sealing jobs and the packets for the TUN device, in order.

        Raises:
            WorkerError: the worker is gone or has not drained its channel for SEND_TIMEOUT seconds. Nothing of this
                call's work can be assumed done.
        """
        messages = encode(jobs, packets, self._installed)
        self.jobs_sent += sum(isinstance(job, SealJob) for job in jobs)
        try:
            for message in messages:
                self._channel.sendmsg(message)
        except OSError as exc:  # socket.timeout is an OSError too
            raise WorkerError(f"data-plane worker is not taking work ({exc})") from None

    def close(self) -> None:
        """Stop the worker: close the channel (it exits on end of file), then wait, then kill it if it must."""
        self._installed.clear()
        with contextlib.suppress(OSError):
            self._channel.close()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the worker process ------------------------------------------------------------------------------------------


class _Worker:
    def __init__(self, channel: socket.socket, udp: dict[socket.AddressFamily, UdpSocket], tun: object | None) -> None:
        self.channel = channel
        self.udp = udp
        self.tun = tun
        self.aeads: dict[int, crypto.Aead] = {}
        self.endpoints: dict[bytes, Endpoint] = {}
        self.tun_errors = 0
        self.bad_records = 0

    def run(self) -> None:
        buffer = bytearray(MESSAGE_LIMIT + (1 << 20))  # room for one oversized record (a 64 KiB packet)
        view = memoryview(buffer)
        while True:
            try:
                size = self.channel.recv_into(buffer)
            except InterruptedError:
                continue
            except OSError:
                return
            if size == 0:
                return
            self.handle(view[:size])

    def handle(self, message: memoryview) -> None:
        """Carry out every record of one message; a message that does not parse is dropped (and counted)."""
        try:
            self._handle(message)
        except (struct.error, ValueError, IndexError, UnicodeDecodeError):
            self.bad_records += 1

    def _handle(self, message: memoryview) -> None:
        offset = 0
        end = len(message)
        datagrams: dict[socket.AddressFamily, list[tuple[bytes, Endpoint]]] = {}
        packets: list[bytes] = []
        while offset < end:
            op = message[offset]
            if op == OP_SEAL:
                _, local_index, remote_index, first, count, host_length = _SEAL.unpack_from(message, offset)
                offset += _SEAL.size
                raw_endpoint = bytes(message[offset : offset + host_length + _ENDPOINT_TAIL.size])
                offset += host_length + _ENDPOINT_TAIL.size
                lengths = struct.unpack_from(f"<{count}H", message, offset)
                offset += 2 * count
                if offset + sum(lengths) > end:
                    raise ValueError("truncated SEAL record")
                plaintexts: list[memoryview] = []
                for length in lengths:
                    plaintexts.append(message[offset : offset + length])
                    offset += length
                aead = self.aeads.get(local_index)
                if aead is None:
                    self.bad_records += 1  # cannot happen with the main process's ordering: drop, as a lost packet
                    continue
                endpoint = self._endpoint(raw_endpoint, host_length)
                family = socket.AF_INET6 if endpoint_is_ipv6(endpoint) else socket.AF_INET
                datagrams.setdefault(family, []).extend(
                    (m, endpoint) for m in seal_run(aead, remote_index, first, plaintexts)
                )
            elif op == OP_TUN:
                _, count = _TUN.unpack_from(message, offset)
                offset += _TUN.size
                lengths = struct.unpack_from(f"<{count}H", message, offset)
                offset += 2 * count
                if offset + sum(lengths) > end:
                    raise ValueError("truncated TUN record")
                for length in lengths:
                    packets.append(bytes(message[offset : offset + length]))
                    offset += length
            elif op == OP_KEY:
                _, local_index, key = _KEY.unpack_from(message, offset)
                offset += _KEY.size
                self.aeads[local_index] = crypto.Aead(key)
            elif op == OP_FORGET:
                _, local_index = _FORGET.unpack_from(message, offset)
                offset += _FORGET.size
                self.aeads.pop(local_index, None)
            else:
                self.bad_records += 1
                return  # unknown record: the rest of the message cannot be framed
        for family, batch in datagrams.items():
            udp = self.udp.get(family)
            if udp is not None:
                udp.send_batch(batch)
        if packets and self.tun is not None:
            try:
                self.tun.write_packets(packets)  # type: ignore[attr-defined]
            except OSError:
                self.tun_errors += 1

    def _endpoint(self, raw: bytes, host_length: int) -> Endpoint:
        endpoint = self.endpoints.get(raw)
        if endpoint is None:
            host = raw[:host_length].decode()
            port, flowinfo, scope_id = _ENDPOINT_TAIL.unpack_from(raw, host_length)
            endpoint = (host, port)
            if endpoint_is_ipv6(endpoint):
                endpoint = (host, port, flowinfo, scope_id)
            if len(self.endpoints) > 4096:
                self.endpoints.clear()
            self.endpoints[raw] = endpoint
        return endpoint


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the worker process (``python -m wgpy.drivers.worker``); started by ``DataPlaneWorker``."""
    parser = argparse.ArgumentParser(prog="wgpy-worker", description="wgpy data-plane worker (started by wgpy)")
    parser.add_argument("--channel", type=int, required=True)
    parser.add_argument("--udp4", type=int)
    parser.add_argument("--udp6", type=int)
    parser.add_argument("--tun", type=int)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when we stop: it closes the channel
    logging.basicConfig(level=logging.WARNING, format="wgpy-worker: %(message)s")
    channel = socket.socket(fileno=args.channel)
    channel.setblocking(True)
    udp: dict[socket.AddressFamily, UdpSocket] = {}
    for family, fd in ((socket.AF_INET, args.udp4), (socket.AF_INET6, args.udp6)):
        if fd is not None:
            udp[family] = UdpSocket(socket.socket(fileno=fd), gro=False)
    tun = None
    if args.tun is not None:
        from tun.linux import LinuxTun

        tun = LinuxTun.from_fd(args.tun, tso=False)
    worker = _Worker(channel, udp, tun)
    started = time.monotonic()
    try:
        worker.run()
    finally:
        # The sockets and the TUN descriptor are shared with the main process: closing our copies changes nothing
        # for it (the descriptors are ours to close).
        for sock in udp.values():
            with contextlib.suppress(OSError):
                os.close(sock.sock.detach())
        if tun is not None:
            with contextlib.suppress(OSError):
                tun.close()
        logger.debug("worker ran %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
