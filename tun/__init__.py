"""TUN devices: the kernel's end of a point-to-point IP link, seen as a stream of IP packets.

Theory of operation: a TUN interface is a network interface whose "wire" is a file descriptor held by a user
process. Every IP packet the kernel routes into the interface becomes one ``read()`` of that descriptor, and
every ``write()`` of one IP packet is handed to the kernel's stack as if it had arrived on the interface. wgpy
opens TUN devices without the 4-byte packet-information header (``IFF_NO_PI``), so a read returns exactly one
bare IPv4 or IPv6 packet and the IP version comes from its first nibble; it never returns part of a packet or
two packets at once.

This package owns that descriptor and the few interface-level settings a tunnel needs (MTU, link up); addresses
and routes are left to ip(8) or wg-quick(8), as with wireguard-go. It must never import ``wgpy``: the protocol
core knows nothing about TUN devices, and the driver (``wgpy.drivers``) is what joins the two, in the way
wireguard-go keeps ``tun/`` apart from ``device/``.

``TunDevice`` is the small protocol every backend implements. It mirrors wireguard-go's ``tun.Device`` interface
(``File``, ``Read``, ``Write``, ``MTU``, ``Name``, ``Close``) without its batching and event channel:

- ``fileno()`` is a real file descriptor that becomes readable when a packet is waiting, so a driver can hand it
  to ``selectors`` or ``asyncio``'s ``loop.add_reader`` and call ``read()`` when it fires;
- ``read()`` blocks in blocking mode; in non-blocking mode it raises ``BlockingIOError`` when nothing is ready;
- ``write()`` returns the number of bytes the kernel took, which is the whole packet or an ``OSError``.

Backends: ``tun.linux.LinuxTun`` (``/dev/net/tun``; imported lazily, since it needs ``fcntl``) and
``tun.memory.MemoryTun`` (an in-memory device for tests). ``open_tun`` picks the backend for this platform.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

from tun.memory import MemoryTun

__all__ = ["DEFAULT_MTU", "MemoryTun", "TunDevice", "TunError", "open_tun"]

DEFAULT_MTU: Final = 1420  # wireguard-go device.DefaultMTU: 1500 - 80 bytes of IPv6 + UDP + WireGuard overhead


class TunError(OSError):
    """A TUN device could not be opened or configured.

    It is an ``OSError`` whose ``errno`` is the failing system call's (``EPERM``, ``ENOENT``, ...). ``str()`` of it
    is a sentence meant for the person running the program: what was attempted, why it failed and, where
    possible, what to do about it (for example "creating TUN device 'wg0' needs root or CAP_NET_ADMIN").
    """

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@runtime_checkable
class TunDevice(Protocol):
    """One queue of a TUN interface: IP packets in, IP packets out.

    ``isinstance(x, TunDevice)`` works at run time, but checks only that the members exist.
    """

    @property
    def name(self) -> str:
        """The interface name, for example ``"wg0"``."""
        ...

    @property
    def mtu(self) -> int:
        """The interface MTU in bytes, as the system currently has it."""
        ...

    def fileno(self) -> int:
        """A file descriptor that is readable whenever ``read()`` has a packet to return."""
        ...

    def read(self) -> bytes:
        """Return the next IP packet the kernel sent into the tunnel (one whole packet, no header).

        Raises:
            BlockingIOError: in non-blocking mode, when no packet is waiting.
            ValueError: when the device is closed.
        """
        ...

    def write(self, packet: bytes) -> int:
        """Hand one IP packet to the kernel, as if it had arrived on the interface.

        Returns:
            The number of bytes written, ``len(packet)``.

        Raises:
            OSError: the kernel refused the packet (``EINVAL`` when it is not IPv4/IPv6, ``EIO`` while the link is
                down).
            ValueError: when the device is closed.
        """
        ...

    def read_packets(self) -> list[bytes]:
        """Read once and return the IP packets that one read carried (several with TSO offload), in order.

        Raises:
            BlockingIOError: in non-blocking mode, when nothing is waiting.
            ValueError: when the device is closed.
        """
        ...

    def write_packets(self, packets: Sequence[bytes]) -> None:
        """Hand IP packets to the kernel in order (a backend may glue TCP segments into fewer writes).

        Raises:
            OSError: the first error, after every packet was attempted.
            ValueError: when the device is closed.
        """
        ...

    def set_mtu(self, mtu: int) -> None:
        """Set the interface MTU.

        Raises:
            ValueError: ``mtu`` is outside 68..65535 (the kernel tun driver's range).
            TunError: the system refused the change.
        """
        ...

    def close(self) -> None:
        """Close the device. Calling it again does nothing."""
        ...


def open_tun(name: str, mtu: int = DEFAULT_MTU) -> TunDevice:
    """Create (or attach to) the TUN interface ``name`` with the backend for this platform.

    The link is left down and without addresses, as wireguard-go leaves it: ``ip link set up`` or wg-quick does the
    rest. The device is in blocking mode; drivers that poll ``fileno()`` switch it to non-blocking.

    Args:
        name: the interface name (at most 15 bytes on Linux, no ``/``, ``:`` or whitespace).
        mtu: the MTU to set on the interface.

    Returns:
        The opened device.

    Raises:
        ValueError: ``name`` is not a valid interface name or ``mtu`` is out of range.
        TunError: TUN devices are not supported on this platform, or the system refused (no privilege, no
            ``/dev/net/tun``, name in use by another device...).
    """
    if sys.platform != "linux":
        raise TunError(
            errno.ENOTSUP,
            f"TUN devices are only supported on Linux by this package (this is {sys.platform!r}); "
            "use tun.memory.MemoryTun for tests",
        )
    # Imported here rather than at the top: tun.linux needs fcntl, which exists only on Unix.
    from tun.linux import LinuxTun

    return LinuxTun(name, mtu=mtu)
