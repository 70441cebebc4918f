"""Linux TUN devices on ``/dev/net/tun`` (``IFF_TUN | IFF_NO_PI``), with optional multi-queue.

Theory of operation: opening ``/dev/net/tun`` gives an unattached descriptor; the ``TUNSETIFF`` ioctl, given an
``ifreq`` with a name and flags, creates the interface (or attaches to an existing one of the same name) and binds
the descriptor to it as one of its queues. From then on one ``read()`` returns one IP packet the kernel routed
into the interface and one ``write()`` injects one packet (``IFF_NO_PI``: no packet-information header).
A multi-queue interface (``IFF_MULTI_QUEUE``) is opened by repeating ``TUNSETIFF`` with the same name on further
descriptors; the kernel spreads outgoing flows over the queues. A non-persistent interface disappears when its
last queue descriptor is closed, so ``LinuxTun.close()`` on the last queue removes it.

Interface-level settings (MTU, IFF_UP) are not ioctls on the TUN descriptor but ``SIOCSIFMTU`` / ``SIOCSIFFLAGS``
on any socket, naming the interface; they apply in the network namespace of that socket, which is this process's.
The name used is read back from the descriptor (``TUNGETIFF``) each time, so a rename by ip(8) is followed.

Why not python-pytun: it was considered and is not used at run time. Its ``TunTapDevice`` does open multi-queue
devices, but (1) it cannot adopt a descriptor passed in by a parent process (wg-quick style ``WG_TUN_FD``), which
needs ``TUNGETIFF``; (2) it opens ``/dev/net/tun`` without ``O_CLOEXEC``, so any child process would inherit the
queue and keep the interface alive; (3) its ``read``/``write`` raise ``pytun.Error`` rather than
``BlockingIOError`` on ``EAGAIN``, so non-blocking use would need an error translation on the per-packet path;
and (4) its read allocates a buffer of the requested size per call, exactly as ``os.read`` does, so it is no faster.
What remained for it (MTU and up/down by name) are two socket ioctls, and mixing two owners of one descriptor is
worse than a single code path. So everything here is ``os.open`` / ``os.read`` / ``os.write`` plus ``fcntl.ioctl``
with ``struct``-packed ``ifreq`` buffers; ``pytun`` only serves the tests, as an oracle for the flag values it
compiles in from ``<linux/if_tun.h>``.

Offload mode (opt-in, ``offload=True``): the interface is opened with ``IFF_VNET_HDR``, the header size is set to
the standard 10-byte ``struct virtio_net_hdr`` (``TUNSETVNETHDRSZ``) and the kernel is told it may hand over TCP
segmentation and checksumming (``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)``), as wireguard-go's
``tun_linux.go`` does. Every read and write then carries a virtio_net_hdr, and one read may be a TCP
"super-packet" of up to 64 KB: ``read_packets()`` returns the IP packets it stands for (cut up by
``tun.offload.handle_virtio_read``) and ``write_packets()`` glues consecutive TCP segments of a flow into
super-packets (``tun.offload.handle_gro``) before writing, so that a 64 KB burst costs one system call either way.
In that mode ``read()`` refuses (one read can be many packets, so a per-packet ``read()`` would have to hold some
back, which a level-triggered poll loop would strand) and ``write()`` writes one packet behind an all-zero header.
``offload=True, tso=False`` keeps the vnet header, so writes are still glued, but sets ``TUNSETOFFLOAD(0)``: the
kernel segments and checksums what it sends into the interface itself, so no read needs a checksum computed in
Python (which a UDP packet with ``TUN_F_CSUM`` would), and ``read()`` works again (one read is one packet).
Without ``offload`` nothing changes: no header, one packet per ``read()``/``write()``, and ``read_packets()`` /
``write_packets()`` are the same calls batched.

Errors: a bad interface name or MTU raises ``ValueError`` before any system call. Refusals by the system raise
``tun.TunError`` with a sentence naming the cause: ``EPERM``/``EACCES`` ("needs root or CAP_NET_ADMIN"), ``ENOENT``
(no ``/dev/net/tun``), ``EBUSY`` (already open), ``EINVAL`` (the name belongs to something else). Per-packet
``read``/``write`` errors are plain ``OSError`` (``BlockingIOError`` in non-blocking mode, ``EIO`` while the link
is down), since a driver handles those without a message for a person.

Mirrors wireguard-go ``tun/tun_linux.go`` (``CreateTUN``, ``CreateTUNFromFile``) and the kernel's
``drivers/net/tun.c`` (``tun_set_iff``, ``tun_get_user``) and ``Documentation/networking/tuntap.rst``.
"""

from __future__ import annotations

import errno
import fcntl
import os
import platform
import socket
import struct
import weakref
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from tun import TunError
from tun.offload import (
    VIRTIO_NET_HDR_SIZE,
    ZERO_VIRTIO_NET_HDR,
    OffloadError,
    SplitRun,
    gro_run_parts,
    handle_gro,
    handle_virtio_read,
    handle_virtio_read_run,
)

_Read = TypeVar("_Read", list[bytes], SplitRun | list[bytes])  # what a read's split gives

__all__ = [
    "DEVICE_PATH",
    "IFF_MULTI_QUEUE",
    "IFF_NO_PI",
    "IFF_TUN",
    "IFF_VNET_HDR",
    "MAX_MTU",
    "MAX_QUEUES",
    "MIN_MTU",
    "OFFLOADS",
    "OFFLOAD_READ_SIZE",
    "READ_SIZE",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "LinuxTun",
    "validate_name",
]

DEVICE_PATH: Final = "/dev/net/tun"  # kernel Documentation/networking/tuntap.rst
IFNAMSIZ: Final = 16  # <linux/if.h>, including the terminating NUL
MIN_MTU: Final = 68  # kernel drivers/net/tun.c MIN_MTU (RFC 791 minimum)
MAX_MTU: Final = 65535  # kernel drivers/net/tun.c MAX_MTU
MAX_QUEUES: Final = 256  # kernel <linux/if_tun.h> MAX_TAP_QUEUES (DEFAULT_MAX_NUM_RSS_QUEUES)
READ_SIZE: Final = 65535  # largest IPv4 packet / IPv6 packet without jumbogram; one read() is one packet

# TUNSETIFF flags, <linux/if_tun.h>.
IFF_TUN: Final = 0x0001
IFF_NO_PI: Final = 0x1000
IFF_MULTI_QUEUE: Final = 0x0100
IFF_ATTACH_QUEUE: Final = 0x0200
IFF_DETACH_QUEUE: Final = 0x0400
IFF_VNET_HDR: Final = 0x4000

# TUNSETOFFLOAD flags, <linux/if_tun.h>: what the kernel may leave undone in packets it sends into the interface.
TUN_F_CSUM: Final = 0x01  # checksums may be left partial (NEEDS_CSUM); required by the TSO flags
TUN_F_TSO4: Final = 0x02  # TCP over IPv4 super-packets (VIRTIO_NET_HDR_GSO_TCPV4)
TUN_F_TSO6: Final = 0x04  # TCP over IPv6 super-packets (VIRTIO_NET_HDR_GSO_TCPV6)
OFFLOADS: Final = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6  # wireguard-go tun_linux.go (without its UDP_L4 / USO)
OFFLOAD_READ_SIZE: Final = VIRTIO_NET_HDR_SIZE + READ_SIZE  # one virtio_net_hdr + the largest super-packet
_IFF_TAP: Final = 0x0002
_IFF_UP: Final = 0x0001  # <linux/if.h> net_device_flags

# ioctl numbers. The TUN ones are built like the kernel's _IOW/_IOR macros because their encoding depends on the
# architecture; the SIOC* ones are plain numbers from <linux/sockios.h>.
_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_SIOCGIFMTU: Final = 0x8921
_SIOCSIFMTU: Final = 0x8922


def _ioc(direction: str, kind: str, number: int, size: int) -> int:
    # <asm-generic/ioctl.h>: 2 direction bits (read = 2, write = 1) above 14 size bits. alpha, mips, powerpc and
    # sparc use 3 direction bits (read = 2, write = 4) and 13 size bits; parisc swaps read (1) and write (2).
    machine = platform.machine()
    if machine.startswith(("alpha", "mips", "ppc", "powerpc", "sparc")):
        bits = {"r": 2, "w": 4}[direction]
        return (bits << 29) | (size << 16) | (ord(kind) << 8) | number
    bits = {"r": 1, "w": 2}[direction] if machine.startswith("parisc") else {"r": 2, "w": 1}[direction]
    return (bits << 30) | (size << 16) | (ord(kind) << 8) | number


_TUNSETIFF: Final = _ioc("w", "T", 202, 4)  # _IOW('T', 202, int)
_TUNGETIFF: Final = _ioc("r", "T", 210, 4)  # _IOR('T', 210, unsigned int)
_TUNSETQUEUE: Final = _ioc("w", "T", 217, 4)  # _IOW('T', 217, int)
_TUNSETOFFLOAD: Final = _ioc("w", "T", 208, 4)  # _IOW('T', 208, unsigned int); the argument is passed by value
_TUNGETVNETHDRSZ: Final = _ioc("r", "T", 215, 4)  # _IOR('T', 215, int)
_TUNSETVNETHDRSZ: Final = _ioc("w", "T", 216, 4)  # _IOW('T', 216, int)
_INT: Final = struct.Struct("i")

# struct ifreq is 40 bytes on 64-bit Linux (16-byte name + a 24-byte union). Passing 40 bytes is also safe on
# 32-bit, where it is 32, because fcntl.ioctl copies the argument into a larger buffer.
_IFREQ_FLAGS: Final = struct.Struct("16sH22x")  # ifr_name, ifr_flags (short)
_IFREQ_INT: Final = struct.Struct("16si20x")  # ifr_name, ifr_mtu (int)

_SPACE_BYTES: Final = frozenset(b" \t\n\v\f\r\xa0")  # the kernel's isspace() (lib/ctype.c also counts 0xA0)


def validate_name(name: str) -> bytes:
    """Check ``name`` the way the kernel's ``dev_valid_name`` does, and return it as bytes.

    A ``%d`` in the name is allowed: the kernel replaces it by the first free number (``"wg%d"`` gives ``"wg0"``).

    Raises:
        ValueError: the name is empty, longer than 15 bytes, ``.`` or ``..``, or contains ``/``, ``:``, a NUL or
            whitespace.
    """
    if not isinstance(name, str):
        raise TypeError(f"interface name must be str, not {type(name).__name__}")
    raw = os.fsencode(name)
    if not raw:
        raise ValueError("interface name must not be empty")
    if len(raw) >= IFNAMSIZ:
        raise ValueError(
            f"interface name {name!r} is {len(raw)} bytes long; Linux allows at most {IFNAMSIZ - 1} (IFNAMSIZ - 1)"
        )
    if raw in (b".", b".."):
        raise ValueError(f"interface name {name!r} is not allowed")
    if any(ch.isspace() for ch in name) or any(b in _SPACE_BYTES or b in b"/:\x00" for b in raw):
        raise ValueError(f"interface name {name!r} must not contain '/', ':', NUL or whitespace")
    return raw


def _check_mtu(mtu: int) -> None:
    if isinstance(mtu, bool) or not isinstance(mtu, int):
        raise TypeError(f"MTU must be int, not {type(mtu).__name__}")
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU {mtu} is outside {MIN_MTU}..{MAX_MTU} (the Linux tun driver's range)")


def _decode_name(raw: bytes) -> str:
    return os.fsdecode(raw.split(b"\x00", 1)[0])


def _open_queue(name: str, flags: int, device_path: str) -> tuple[int, str]:
    """Open ``device_path`` and attach it to interface ``name``; return the descriptor and the kernel's name."""
    raw_name = validate_name(name)
    try:
        fd = os.open(device_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(exc, name, device_path) from None
    try:
        reply = fcntl.ioctl(fd, _TUNSETIFF, _IFREQ_FLAGS.pack(raw_name, flags))
    except OSError as exc:
        os.close(fd)
        raise _setiff_error(exc, name, flags) from None
    except BaseException:
        os.close(fd)
        raise
    return fd, _decode_name(_IFREQ_FLAGS.unpack(reply)[0])


def _enable_offload(fd: int, name: str, tso: bool) -> None:
    """Set the standard 10-byte vnet header and the offloads (``OFFLOADS``, or none) of an ``IFF_VNET_HDR`` queue.

    Raises:
        TunError: the kernel refused (the descriptor is left open: the caller closes it).
    """
    try:
        fcntl.ioctl(fd, _TUNSETVNETHDRSZ, _INT.pack(VIRTIO_NET_HDR_SIZE))
        fcntl.ioctl(fd, _TUNSETOFFLOAD, OFFLOADS if tso else 0)
    except OSError as exc:
        code = exc.errno or errno.EIO
        raise TunError(
            code, f"the kernel refused TUN offloads (vnet header, TSO) on {name!r}: {os.strerror(code)}"
        ) from None


def _open_error(exc: OSError, name: str, device_path: str) -> TunError:
    code = exc.errno or errno.EIO
    if code in (errno.EPERM, errno.EACCES):
        return TunError(code, f"creating TUN device {name!r} needs root or CAP_NET_ADMIN (cannot open {device_path})")
    if code == errno.ENOENT:
        return TunError(
            code,
            f"cannot create TUN device {name!r}: {device_path} is missing; load the tun kernel module "
            "(modprobe tun) or, in a container, pass the device in (docker run --device /dev/net/tun)",
        )
    if code in (errno.ENODEV, errno.ENXIO):
        return TunError(
            code, f"cannot create TUN device {name!r}: the kernel has no TUN driver behind {device_path} (modprobe tun)"
        )
    return TunError(code, f"cannot create TUN device {name!r}: opening {device_path} failed: {os.strerror(code)}")


def _setiff_error(exc: OSError, name: str, flags: int) -> TunError:
    code = exc.errno or errno.EIO
    if code in (errno.EPERM, errno.EACCES):
        return TunError(
            code,
            f"creating TUN device {name!r} needs root or CAP_NET_ADMIN "
            "(or the device exists and belongs to another user or group)",
        )
    if code == errno.EBUSY:
        return TunError(code, f"TUN device {name!r} exists and is already open (it is not multi-queue)")
    if code == errno.EINVAL:
        mode = "multi-queue" if flags & IFF_MULTI_QUEUE else "single-queue"
        return TunError(
            code,
            f"cannot attach to {name!r}: an interface of that name exists but is not a {mode} TUN device "
            "without packet information (or the name is invalid)",
        )
    return TunError(code, f"creating TUN device {name!r} failed: {os.strerror(code)}")


def _interface_ioctl(request: int, ifreq: bytes) -> bytes:
    # Interface ioctls go through any socket; AF_INET/SOCK_DGRAM is what ip(8)'s ancestors and pytun use.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return fcntl.ioctl(sock, request, ifreq)


# rtnetlink (<linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_link.h>): one RTM_NEWLINK that sets one u32
# attribute of a link, answered by an NLMSG_ERROR carrying 0 (the ack) or a negative errno.
_NETLINK_ROUTE: Final = 0
_RTM_NEWLINK: Final = 16
_NLM_F_REQUEST_ACK: Final = 0x01 | 0x04  # NLM_F_REQUEST | NLM_F_ACK
_NLMSG_ERROR: Final = 2
_IFLA_GSO_MAX_SEGS: Final = 40
_NLMSG_HEADER: Final = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG: Final = struct.Struct("=BxHiII")  # family, type, index, flags, change
_RTATTR_U32: Final = struct.Struct("=HHI")  # len, type, value
_NETLINK_TIMEOUT: Final = 2.0  # seconds to wait for the kernel's ack (it answers at once)


def _set_link_u32(index: int, attribute: int, value: int) -> None:
    """Set one u32 link attribute of interface ``index`` with rtnetlink (``ip link set``), in this process's network
    namespace.

    Raises:
        OSError: the kernel refused (its errno), or did not answer.
    """
    body = _IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, 0, 0) + _RTATTR_U32.pack(_RTATTR_U32.size, attribute, value)
    message = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), _RTM_NEWLINK, _NLM_F_REQUEST_ACK, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_ROUTE) as sock:
        sock.settimeout(_NETLINK_TIMEOUT)
        sock.sendto(message, (0, 0))
        reply = sock.recv(4096)
    if len(reply) < _NLMSG_HEADER.size + 4:
        raise OSError(errno.EPROTO, "short rtnetlink reply")
    _length, kind, _flags, _seq, _pid = _NLMSG_HEADER.unpack_from(reply)
    (error,) = struct.unpack_from("=i", reply, _NLMSG_HEADER.size)
    if kind != _NLMSG_ERROR:
        raise OSError(errno.EPROTO, f"unexpected rtnetlink reply type {kind}")
    if error:
        raise OSError(-error, os.strerror(-error))


class LinuxTun:
    """One queue descriptor of a Linux TUN interface; implements ``tun.TunDevice``.

    Create with ``LinuxTun(name, mtu=...)``, ``LinuxTun.open_queues(name, n)`` for multi-queue, or
    ``LinuxTun.from_fd(fd)`` to adopt a descriptor a parent process opened. Use as a context manager or call
    ``close()``: closing the last queue of a non-persistent interface removes the interface.
    """

    __slots__ = (
        "__weakref__",
        "_device_path",
        "_fd",
        "_finalizer",
        "_multi_queue",
        "_name",
        "_offload",
        "_tso",
        "malformed_reads",
    )

    def __init__(
        self,
        name: str,
        *,
        mtu: int | None = None,
        multi_queue: bool = False,
        device_path: str = DEVICE_PATH,
        offload: bool = False,
        tso: bool = True,
    ) -> None:
        """Create the TUN interface ``name``, or attach to it if it already exists as a TUN device.

        Args:
            name: the interface name; may contain one ``%d`` for the kernel to number it.
            mtu: the MTU to set right away; ``None`` leaves the kernel's default (1500).
            multi_queue: open with ``IFF_MULTI_QUEUE`` so ``open_queue()`` can add queues.
            device_path: the TUN clone device, normally ``/dev/net/tun``.
            offload: open with ``IFF_VNET_HDR`` and TSO/checksum offloads (see the module docstring); use
                ``read_packets()`` / ``write_packets()`` then. The flag is interface-wide: every queue of a
                multi-queue interface must agree, which ``open_queue()`` sees to.
            tso: with ``offload``, let the kernel hand over TCP super-packets with partial checksums
                (``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``); ``False`` asks for complete packets (writes are glued
                either way).

        Raises:
            ValueError: bad name or MTU, checked before any system call.
            TunError: the system refused; the message says why.
        """
        validate_name(name)
        if mtu is not None:
            _check_mtu(mtu)
        flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0) | (IFF_VNET_HDR if offload else 0)
        fd, actual_name = _open_queue(name, flags, device_path)
        if offload:
            try:
                _enable_offload(fd, actual_name, tso)
            except BaseException:
                os.close(fd)
                raise
        self._attach(fd, actual_name, multi_queue=multi_queue, device_path=device_path, offload=offload, tso=tso)
        if mtu is not None:
            try:
                self.set_mtu(mtu)
            except BaseException:
                self.close()
                raise

    def _attach(
        self, fd: int, name: str, *, multi_queue: bool, device_path: str, offload: bool = False, tso: bool = False
    ) -> None:
        self._fd = fd
        self._name = name
        self._multi_queue = multi_queue
        self._device_path = device_path
        self._offload = offload
        self._tso = offload and tso
        self.malformed_reads = 0
        self._finalizer = weakref.finalize(self, os.close, fd)

    @classmethod
    def open_queues(
        cls,
        name: str,
        queues: int,
        *,
        mtu: int | None = None,
        device_path: str = DEVICE_PATH,
        offload: bool = False,
        tso: bool = True,
    ) -> list[LinuxTun]:
        """Create a multi-queue TUN interface and open ``queues`` descriptors on it.

        Each returned ``LinuxTun`` is one queue with its own ``fileno()``; all report the same ``name``. The kernel
        spreads packets it sends into the interface over the queues by flow; a packet may be written to any queue.
        ``offload`` and ``tso`` apply to every queue (see ``__init__``).

        Raises:
            ValueError: bad name or MTU, or ``queues`` outside 1..256.
            TunError: the system refused; no descriptor stays open.
        """
        if not 1 <= queues <= MAX_QUEUES:
            raise ValueError(f"queues must be in 1..{MAX_QUEUES}, not {queues}")
        first = cls(name, mtu=mtu, multi_queue=True, device_path=device_path, offload=offload, tso=tso)
        opened = [first]
        try:
            for _ in range(queues - 1):
                opened.append(first.open_queue())
        except BaseException:
            for queue in opened:
                queue.close()
            raise
        return opened

    @classmethod
    def from_fd(cls, fd: int, *, tso: bool = True) -> LinuxTun:
        """Adopt an already attached TUN descriptor, such as one passed in ``WG_TUN_FD``; ``close()`` closes it.

        The descriptor is made non-inheritable, so later child processes do not keep the interface alive. A
        descriptor opened with ``IFF_VNET_HDR`` is adopted in offload mode, since its reads and writes carry a
        virtio_net_hdr, and its offloads are set as ``tso`` says (wireguard-go's ``CreateTUNFromFile`` turns TSO on).

        Raises:
            TunError: ``fd`` is not a TUN descriptor attached to an ``IFF_TUN | IFF_NO_PI`` interface, or has a
                vnet header size other than 10.
        """
        try:
            reply = fcntl.ioctl(fd, _TUNGETIFF, _IFREQ_FLAGS.pack(b"", 0))
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise TunError(code, f"file descriptor {fd} is not an attached TUN device: {os.strerror(code)}") from None
        raw_name, flags = _IFREQ_FLAGS.unpack(reply)
        name = _decode_name(raw_name)
        if flags & (IFF_TUN | _IFF_TAP) != IFF_TUN or not flags & IFF_NO_PI:
            raise TunError(
                errno.EINVAL, f"file descriptor {fd} is attached to {name!r}, which is not IFF_TUN | IFF_NO_PI"
            )
        offload = bool(flags & IFF_VNET_HDR)
        if offload:
            try:
                (size,) = _INT.unpack(fcntl.ioctl(fd, _TUNGETVNETHDRSZ, _INT.pack(0)))
            except OSError as exc:
                code = exc.errno or errno.EIO
                raise TunError(code, f"reading the vnet header size of {name!r} failed: {os.strerror(code)}") from None
            if size != VIRTIO_NET_HDR_SIZE:
                raise TunError(
                    errno.EINVAL,
                    f"file descriptor {fd} is attached to {name!r} with a {size}-byte vnet header; "
                    f"only the {VIRTIO_NET_HDR_SIZE}-byte virtio_net_hdr is supported",
                )
            _enable_offload(fd, name, tso)
        os.set_inheritable(fd, False)
        adopted = cls.__new__(cls)
        adopted._attach(
            fd, name, multi_queue=bool(flags & IFF_MULTI_QUEUE), device_path=DEVICE_PATH, offload=offload, tso=tso
        )
        return adopted

    def open_queue(self) -> LinuxTun:
        """Open one more queue on this multi-queue interface.

        Raises:
            ValueError: the interface was not opened with ``multi_queue=True``, or this queue is closed.
            TunError: the system refused.
        """
        if not self._multi_queue:
            raise ValueError(f"TUN device {self._name!r} was not opened as multi-queue")
        self.fileno()  # raises ValueError when closed
        name = self.name
        # The vnet header flag is interface-wide: attaching a queue without it would turn it off for every queue.
        offload = self._offload
        flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | (IFF_VNET_HDR if offload else 0)
        fd, actual_name = _open_queue(name, flags, self._device_path)
        if offload:
            try:
                _enable_offload(fd, actual_name, self._tso)
            except BaseException:
                os.close(fd)
                raise
        queue = LinuxTun.__new__(LinuxTun)
        queue._attach(fd, actual_name, multi_queue=True, device_path=self._device_path, offload=offload, tso=self._tso)
        return queue

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        extras = ", multi_queue" if self._multi_queue else ""
        if self._offload:
            extras += ", offload" if self._tso else ", offload without tso"
        return f"LinuxTun(name={self._name!r}, {state}{extras})"

    # -- TunDevice ---------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The interface name as the kernel has it now (read back with ``TUNGETIFF``, so renames are seen)."""
        if self._fd >= 0:
            try:
                reply = fcntl.ioctl(self._fd, _TUNGETIFF, _IFREQ_FLAGS.pack(b"", 0))
            except OSError:
                return self._name  # detached (interface deleted): keep the last known name
            self._name = _decode_name(_IFREQ_FLAGS.unpack(reply)[0])
        return self._name

    @property
    def mtu(self) -> int:
        """The interface MTU, asked from the kernel (``SIOCGIFMTU``)."""
        name = self.name
        try:
            reply = _interface_ioctl(_SIOCGIFMTU, _IFREQ_INT.pack(os.fsencode(name), 0))
        except OSError as exc:
            raise self._interface_error(exc, "reading the MTU of") from None
        mtu: int = _IFREQ_INT.unpack(reply)[1]
        return mtu

    def fileno(self) -> int:
        """The queue descriptor; readable when a packet is waiting.

        Raises:
            ValueError: the device is closed.
        """
        fd = self._fd
        if fd < 0:
            raise ValueError("I/O operation on closed TUN device")
        return fd

    def read(self) -> bytes:
        """Return one IP packet the kernel sent into the interface.

        Raises:
            BlockingIOError: in non-blocking mode, when no packet is waiting.
            OSError: other read errors.
            ValueError: the device is closed, or is in offload mode with TSO (use ``read_packets()``).
        """
        fd = self._fd
        if fd < 0:
            raise ValueError("I/O operation on closed TUN device")
        if self._offload:
            if self._tso:
                raise ValueError(
                    f"TUN device {self._name!r} is in offload mode with TSO, where one read can carry many "
                    "packets: use read_packets()"
                )
            # Without offloads the kernel sends whole packets with complete checksums: one record, one packet.
            return handle_virtio_read(os.read(fd, OFFLOAD_READ_SIZE))[0]
        return os.read(fd, READ_SIZE)

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Hand one IPv4 or IPv6 packet to the kernel.

        Returns:
            The number of bytes written (the whole packet).

        Raises:
            OSError: ``EINVAL`` for a packet that is not IPv4/IPv6, ``EIO`` while the link is down,
                ``BlockingIOError`` in non-blocking mode when the kernel cannot take it now.
            ValueError: the device is closed.
        """
        fd = self._fd
        if fd < 0:
            raise ValueError("I/O operation on closed TUN device")
        if self._offload:
            return os.write(fd, ZERO_VIRTIO_NET_HDR + packet) - VIRTIO_NET_HDR_SIZE
        return os.write(fd, packet)

    def read_packets(self) -> list[bytes]:
        """Read once and return the IP packets that read carried, in order.

        In offload mode one read is one virtio_net_hdr record: a TCP super-packet comes back as its MSS-sized
        segments with their checksums filled in, any other packet alone (its checksum completed if the kernel left
        it partial). A record the kernel should never produce (an unsupported GSO type, inconsistent lengths) is
        dropped, counted in ``malformed_reads``, and gives an empty list. Without offload this is ``[read()]``.

        Raises:
            BlockingIOError: in non-blocking mode, when nothing is waiting.
            OSError: other read errors.
            ValueError: the device is closed.
        """
        return self._read_record(handle_virtio_read)

    def read_run(self) -> SplitRun | list[bytes]:
        """``read_packets``, except that a TCP super-packet (TSO) comes back as one ``tun.offload.SplitRun``:
        ``(buffer, count, stride, size, last_size)``, its segments at a 16-rounded stride in one zero-filled buffer
        (``gso_split_into``), where the caller can seal them without a ``bytes`` object each. Every other read is
        ``read_packets``'s list. A malformed record is counted in ``malformed_reads`` and gives an empty list.

        Raises:
            BlockingIOError: in non-blocking mode, when nothing is waiting.
            OSError: other read errors.
            ValueError: the device is closed.
        """
        return self._read_record(handle_virtio_read_run)

    def _read_record(self, split: Callable[[bytes], _Read]) -> _Read | list[bytes]:
        """One read: ``[packet]`` without offload or for a plain complete record, else ``split(record)``, with a
        malformed record counted in ``malformed_reads`` (an empty list)."""
        fd = self._fd
        if fd < 0:
            raise ValueError("I/O operation on closed TUN device")
        if not self._offload:
            return [os.read(fd, READ_SIZE)]
        record = os.read(fd, OFFLOAD_READ_SIZE)
        if len(record) > VIRTIO_NET_HDR_SIZE and not record[0] and not record[1]:
            return [record[VIRTIO_NET_HDR_SIZE:]]  # a plain complete packet, the common case: skip the call
        try:
            return split(record)
        except OffloadError:
            self.malformed_reads += 1
            return []

    def write_packets(self, packets: Sequence[bytes]) -> None:
        """Hand ``packets`` (IP packets, in order) to the kernel, gluing TCP segments into super-packets first.

        In offload mode, ``tun.offload.handle_gro`` turns runs of segments of one TCP flow into one super-packet
        with a complete checksum, and everything else into single records, so a burst of 45 segments is one
        ``write()``. Without offload, each packet is one ``write()``. Every record is attempted even when one fails.

        Raises:
            OSError: the first write error (``EIO`` while the link is down, ``EINVAL`` for a packet that is not
                IPv4/IPv6...), raised after all records were attempted.
            ValueError: the device is closed.
        """
        fd = self._fd
        if fd < 0:
            raise ValueError("I/O operation on closed TUN device")
        self._write_records(fd, handle_gro(packets) if self._offload else packets)

    def write_run(
        self, buffer: bytes | bytearray | memoryview, count: int, stride: int, size: int, last_size: int
    ) -> None:
        """``write_packets`` of the ``count`` packets of a run: packet ``i`` at ``i * stride`` in ``buffer``,
        ``size`` bytes long, the last ``last_size``. In offload mode ``tun.offload.gro_run_parts`` glues them from
        the buffer (byte for byte ``handle_gro`` of the packets) and each record goes out in one ``writev``, with no
        ``bytes`` object per packet.

        Raises:
            OSError: the first write error, after all records were attempted.
            ValueError: the device is closed.
        """
        fd = self._fd
        if fd < 0:
            raise ValueError("I/O operation on closed TUN device")
        if self._offload:  # one writev a record (headers, gathered payloads)
            self._write_records(fd, gro_run_parts(buffer, count, stride, size, last_size), os.writev)
            return
        view = memoryview(buffer)
        lengths = [size] * (count - 1) + [last_size]
        self._write_records(fd, [view[i * stride : i * stride + n] for i, n in enumerate(lengths)])

    @staticmethod
    def _write_records(fd: int, records: Sequence[Any], write: Callable[[int, Any], int] = os.write) -> None:
        """One ``write`` per record (``os.write``, or ``os.writev`` of a record's parts), every one attempted; the
        first error is raised after the last."""
        error: OSError | None = None
        for record in records:
            try:
                write(fd, record)
            except OSError as exc:
                if error is None:
                    error = exc
        if error is not None:
            raise error

    def set_mtu(self, mtu: int) -> None:
        """Set the interface MTU (``SIOCSIFMTU``).

        Raises:
            ValueError: ``mtu`` is outside 68..65535, checked before any system call.
            TunError: the system refused (for example ``EPERM`` without CAP_NET_ADMIN).
        """
        _check_mtu(mtu)
        name = self.name
        try:
            _interface_ioctl(_SIOCSIFMTU, _IFREQ_INT.pack(os.fsencode(name), mtu))
        except OSError as exc:
            raise self._interface_error(exc, f"setting MTU {mtu} on") from None

    def set_gso_max_segs(self, segments: int) -> None:
        """Cap the TCP super-packets the kernel sends into the interface (TSO) at ``segments`` segments
        (``ip link set dev NAME gso_max_segs N``, ``IFLA_GSO_MAX_SEGS``), so that one read's segments fit what the
        reader sends on in one go (a UDP GSO send of at most 64 KB). TCP connections take the value when they
        start.

        Raises:
            ValueError: ``segments`` is outside 1..65535, checked before any system call.
            TunError: the system refused.
        """
        if not 1 <= segments <= 0xFFFF:
            raise ValueError(f"gso_max_segs must be 1..65535, not {segments}")
        name = self.name
        try:
            _set_link_u32(socket.if_nametoindex(name), _IFLA_GSO_MAX_SEGS, segments)
        except OSError as exc:
            raise self._interface_error(exc, f"setting gso_max_segs {segments} on") from None

    def close(self) -> None:
        """Close this queue descriptor; the last close of a non-persistent interface removes it. Idempotent."""
        self._fd = -1
        self._finalizer()

    # -- Linux extras ------------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._fd < 0

    @property
    def offload(self) -> bool:
        """Whether reads and writes carry a virtio_net_hdr (``IFF_VNET_HDR``), so that writes are glued (GRO)."""
        return self._offload

    @property
    def tso(self) -> bool:
        """Whether the kernel may hand over TCP super-packets (offload mode with ``TUN_F_TSO4 | TUN_F_TSO6``)."""
        return self._tso

    @property
    def multi_queue(self) -> bool:
        """Whether the interface was opened with ``IFF_MULTI_QUEUE``."""
        return self._multi_queue

    @property
    def blocking(self) -> bool:
        """Whether ``read()`` and ``write()`` block."""
        return os.get_blocking(self.fileno())

    def set_blocking(self, blocking: bool) -> None:
        """Switch the queue descriptor between blocking and non-blocking mode (``O_NONBLOCK``)."""
        os.set_blocking(self.fileno(), blocking)

    def up(self) -> None:
        """Bring the link up (``IFF_UP``), like ``ip link set NAME up``."""
        self._set_flag(_IFF_UP, on=True)

    def down(self) -> None:
        """Bring the link down."""
        self._set_flag(_IFF_UP, on=False)

    def set_queue_enabled(self, enabled: bool) -> None:
        """Attach (``True``) or detach (``False``) this queue of a multi-queue interface (``TUNSETQUEUE``).

        A detached queue receives no packets; its descriptor stays open.

        Raises:
            ValueError: the interface is not multi-queue, or this queue is closed.
            TunError: the system refused.
        """
        if not self._multi_queue:
            raise ValueError(f"TUN device {self._name!r} is not multi-queue")
        fd = self.fileno()
        flags = IFF_ATTACH_QUEUE if enabled else IFF_DETACH_QUEUE
        try:
            fcntl.ioctl(fd, _TUNSETQUEUE, _IFREQ_FLAGS.pack(b"", flags))
        except OSError as exc:
            code = exc.errno or errno.EIO
            verb = "attaching" if enabled else "detaching"
            raise TunError(code, f"{verb} a queue of {self._name!r} failed: {os.strerror(code)}") from None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _set_flag(self, flag: int, *, on: bool) -> None:
        name = self.name
        raw_name = os.fsencode(name)
        action = "bringing up" if on else "bringing down"
        try:
            flags: int = _IFREQ_FLAGS.unpack(_interface_ioctl(_SIOCGIFFLAGS, _IFREQ_FLAGS.pack(raw_name, 0)))[1]
            wanted = flags | flag if on else flags & ~flag
            if wanted != flags:
                _interface_ioctl(_SIOCSIFFLAGS, _IFREQ_FLAGS.pack(raw_name, wanted))
        except OSError as exc:
            raise self._interface_error(exc, action) from None

    def _interface_error(self, exc: OSError, action: str) -> TunError:
        code = exc.errno or errno.EIO
        if code in (errno.EPERM, errno.EACCES):
            return TunError(code, f"{action} TUN device {self._name!r} needs root or CAP_NET_ADMIN")
        if code == errno.ENODEV:
            return TunError(
                code,
                f"{action} TUN device {self._name!r} failed: no such interface in this network namespace "
                "(deleted, or moved to another namespace)",
            )
        if code == errno.EINVAL:
            return TunError(code, f"{action} TUN device {self._name!r} failed: the kernel refused the value")
        return TunError(code, f"{action} TUN device {self._name!r} failed: {os.strerror(code)}")
