"""Kernel-side steering of received datagrams: transport to one socket, handshake messages to others, by source.

Theory of operation: a flood of handshake messages must not delay the transport messages of established sessions
(issue #11 item 2). Sorting them in Python is too late: by the time the driver reads a datagram, it has waited in
the same receive queue as the flood. So the listen port is served by a ``SO_REUSEPORT`` group of sockets with a
classic BPF program attached (``SO_ATTACH_REUSEPORT_CBPF``) that the kernel runs for every datagram before it is
queued, and that returns the index of the socket to queue it on:

- index 0, the *transport* socket, for message type 4 (the first byte of the UDP payload; the device still checks
  the whole le32 and every size): it keeps the large buffer and is read first, in full batches;
- index ``1 + bucket(source)`` otherwise, one of ``HANDSHAKE_SOCKETS`` *handshake* sockets with a small buffer,
  where the bucket is the low bits of the source IPv4 address (or of the /64 of an IPv6 source, as the kernel's
  ratelimiter keys it). One host flooding initiations fills one small queue; the kernel drops the excess for free,
  and a peer at another address is queued on another socket that stays short.

The driver reads the handshake sockets with a budget per wake-up and charges each source before the device computes
anything (``SourceAdmission``, a token bucket per address), so what a flooding address costs is bounded: a few reads
per wake-up and at most its admitted rate of mac1 checks and cookie replies.

Two processes of one user could join the same ``SO_REUSEPORT`` group; ``bind_steered`` therefore checks, after
binding, that every socket on the port (``/proc/net/udp``, ``/proc/net/udp6``) is one of its own, and refuses the
port as in use otherwise. Where any of this is unavailable, ``bind_steered`` raises ``SteeringUnavailable`` and the
driver binds one plain socket per family, as before.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from typing import Final

from ..ratelimiter import RateLimiter

__all__ = [
    "HANDSHAKE_SOCKETS",
    "SourceAdmission",
    "SteeringUnavailable",
    "bind_steered",
    "reuseport_program",
]

HANDSHAKE_SOCKETS: Final = 8  # buckets of source addresses; a power of two (the program masks the address)
SO_ATTACH_REUSEPORT_CBPF: Final = 51  # asm-generic/socket.h
_SKF_NET_OFF: Final = -0x100000  # linux/filter.h: loads relative to the network header
_SOURCE_WORD_OFFSET: Final = 12  # IPv4: the source address; IPv6: bytes 4..7 of the source, inside its /64
_TRANSPORT_TYPE: Final = 4  # MessageType.TRANSPORT, the first byte of the le32 type field
_INSTRUCTION: Final = struct.Struct("=HBBI")  # struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}
_FPROG: Final = struct.Struct("HP")  # struct sock_fprog {unsigned short len; struct sock_filter *filter}, native

# Classic BPF opcodes (linux/bpf_common.h).
_LD_B_ABS: Final = 0x00 | 0x10 | 0x20
_LD_W_ABS: Final = 0x00 | 0x00 | 0x20
_JEQ_K: Final = 0x05 | 0x10 | 0x00
_AND_K: Final = 0x04 | 0x50 | 0x00
_ADD_K: Final = 0x04 | 0x00 | 0x00
_RET_A: Final = 0x06 | 0x10
_RET_K: Final = 0x06 | 0x00


class SteeringUnavailable(Exception):
    """This system cannot steer (no SO_REUSEPORT, no reuseport BPF, no /proc/net/udp): use one plain socket."""


def reuseport_program(handshake_sockets: int = HANDSHAKE_SOCKETS) -> bytes:
    """The classic BPF program: 0 for a transport message, ``1 + (source word & (handshake_sockets - 1))`` else.

    A load beyond the packet (an empty payload) ends the program with 0: the transport socket, where the device
    drops it as too short.
    """
    if handshake_sockets < 1 or handshake_sockets & (handshake_sockets - 1):
        raise ValueError("handshake_sockets must be a power of two")

    def op(code: int, k: int = 0, jt: int = 0, jf: int = 0) -> bytes:
        return _INSTRUCTION.pack(code, jt, jf, k & 0xFFFFFFFF)

    return b"".join(
        (
            op(_LD_B_ABS, 0),  # A = payload[0]
            op(_JEQ_K, _TRANSPORT_TYPE, jt=4),  # transport: to the last instruction
            op(_LD_W_ABS, _SKF_NET_OFF + _SOURCE_WORD_OFFSET),  # A = a word of the source address
            op(_AND_K, handshake_sockets - 1),
            op(_ADD_K, 1),
            op(_RET_A),
            op(_RET_K, 0),
        )
    )


def _attach(sock: socket.socket, program: bytes) -> None:
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _FPROG.pack(len(program) // _INSTRUCTION.size, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)  # the kernel copies the program


def _inodes_on_port(family: socket.AddressFamily, port: int) -> set[int]:
    """The inodes of every UDP socket of this network namespace bound to ``port`` (any address)."""
    path = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
    try:
        with open(path) as table:
            lines = table.read().splitlines()[1:]
    except OSError as exc:
        raise SteeringUnavailable(f"cannot read {path}: {exc.strerror or exc}") from None
    found: set[int] = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and int(fields[1].rpartition(":")[2], 16) == port:
            found.add(int(fields[9]))
    return found


def bind_steered(
    family: socket.AddressFamily,
    port: int,
    configure: Callable[[socket.socket], None],
    handshake_sockets: int = HANDSHAKE_SOCKETS,
) -> list[socket.socket]:
    """Bind the transport socket and ``handshake_sockets`` handshake sockets to ``port`` (0: a free one) as one
    steered ``SO_REUSEPORT`` group; ``configure`` is called on each socket before its bind (V6ONLY, SO_MARK).

    Returns:
        The sockets, transport first, all non-blocking.

    Raises:
        SteeringUnavailable: the system cannot steer; nothing is left open.
        OSError: the port cannot be bound (``EADDRINUSE`` also when a socket of another process is on it).
    """
    if not hasattr(socket, "SO_REUSEPORT"):
        raise SteeringUnavailable("no SO_REUSEPORT")
    program = reuseport_program(handshake_sockets)
    address = "::" if family == socket.AF_INET6 else "0.0.0.0"  # noqa: S104 - a VPN listens everywhere
    sockets: list[socket.socket] = []
    try:
        for index in range(1 + handshake_sockets):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            configure(sock)
            if index == 0:
                try:
                    _attach(sock, program)
                except OSError as exc:
                    raise SteeringUnavailable(f"reuseport BPF refused: {exc.strerror or exc}") from None
            sock.bind((address, port))
            sock.setblocking(False)
            port = sock.getsockname()[1]  # the others join the port the first one got
        ours = {os.fstat(sock.fileno()).st_ino for sock in sockets}
        others = _inodes_on_port(family, port) - ours
        if others:
            raise OSError(errno.EADDRINUSE, f"UDP port {port} is also bound by another socket")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class SourceAdmission:
    """What one source address may cost in handshake messages, charged before any MAC is computed.

    A token bucket per address (``ratelimiter.RateLimiter``: IPv6 keyed by its /64), at a rate well above what
    honest peers behind one address send (each initiates at most once per REKEY_TIMEOUT), and far below a flood.
    """

    __slots__ = ("_limiter", "_packed")

    def __init__(self, packets_per_second: int, burst: int) -> None:
        self._limiter = RateLimiter(packets_per_second, burst)
        self._packed: dict[str, bytes] = {}

    def allow(self, host: str, now: float) -> bool:
        """Charge one handshake message from ``host`` (the endpoint's address string)."""
        packed = self._packed.get(host)
        if packed is None:
            try:
                packed = ipaddress.ip_address(host.partition("%")[0]).packed
            except ValueError:
                return False
            if len(self._packed) >= 4096:
                self._packed.clear()  # bounded: a spoofed-source flood must not grow it
            self._packed[host] = packed
        return self._limiter.allow(packed, now)
