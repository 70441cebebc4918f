"""An in-memory TUN device for tests: the test plays the kernel.

Theory of operation: ``MemoryTun`` holds two queues. ``inject(packet)`` queues a packet that "the kernel" routed
into the tunnel, which is what the engine's next ``read()`` returns; every ``write(packet)`` by the engine is
appended to ``written``, where the test picks it up (``take_written()`` returns the packets and empties the list).
Reading with nothing queued raises ``BlockingIOError``, as a non-blocking ``/dev/net/tun`` descriptor does, so the
device never blocks.

Readiness: ``fileno()`` returns the read end of a real ``os.pipe``, so a ``MemoryTun`` can be registered with
``selectors`` or ``asyncio``'s ``loop.add_reader`` exactly like a real TUN descriptor. The pipe holds one byte
while at least one injected packet is waiting and none otherwise, so the descriptor is readable exactly when
``read()`` would succeed (level-triggered, as a TUN descriptor is). The pipe is only created on the first
``fileno()`` call, so tests that never poll use no descriptors. The caller must not read from the descriptor.

Kernel likeness: by default ``write()`` refuses, with ``OSError(EINVAL)``, a packet that is empty or is not IPv4 or
IPv6 by its first nibble, as the Linux tun driver does for an ``IFF_NO_PI`` device; ``strict=False`` turns that
off. The MTU is recorded and range-checked like Linux's, but packets are not checked against it (the kernel does not
check writes against it either).

``inject``, ``read`` and ``write`` take a lock, so a test may inject from another thread while the engine reads.
This module never imports ``wgpy`` and does no other I/O than its own pipe.
"""

from __future__ import annotations

import collections
import errno
import os
import threading
import weakref
from collections.abc import Sequence
from types import TracebackType
from typing import Final, Self

__all__ = ["MemoryTun"]

# The same limits as tun.linux (kernel drivers/net/tun.c MIN_MTU / MAX_MTU); kept here because tun/__init__.py
# imports this module, so it cannot import them back.
_MIN_MTU: Final = 68  # kernel drivers/net/tun.c MIN_MTU (RFC 791 minimum)
_MAX_MTU: Final = 65535  # kernel drivers/net/tun.c MAX_MTU
_DEFAULT_MTU: Final = 1420  # tun.DEFAULT_MTU, wireguard-go device.DefaultMTU
_READY_BYTE: Final = b"\x00"


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()


class MemoryTun:
    """An in-memory TUN device: ``inject`` what the kernel sends, inspect ``written`` for what the engine wrote.

    Attributes:
        written: every packet the engine wrote, oldest first. Tests may read or clear it directly.
    """

    def __init__(self, name: str = "memtun0", mtu: int = _DEFAULT_MTU, *, strict: bool = True) -> None:
        """Create the device.

        Args:
            name: what ``name`` reports; no interface is created, so any string is accepted.
            mtu: the initial MTU (68..65535).
            strict: refuse to ``write`` packets the Linux tun driver would refuse (empty, or not IPv4/IPv6).

        Raises:
            ValueError: ``mtu`` is out of range.
        """
        _check_mtu(mtu)
        self._name = name
        self._mtu = mtu
        self._strict = strict
        self._closed = False
        self._lock = threading.Lock()
        self._inbound: collections.deque[bytes] = collections.deque()
        self.written: list[bytes] = []
        # [read end, write end] once fileno() was called; shared with the finalizer, which closes them if the
        # device is garbage-collected without close().
        self._pipe: list[int] = []
        self._finalizer = weakref.finalize(self, _close_fds, self._pipe)

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._inbound)} pending, {len(self.written)} written"
        return f"MemoryTun(name={self._name!r}, {state})"

    @property
    def name(self) -> str:
        """The name given at construction."""
        return self._name

    @property
    def mtu(self) -> int:
        """The MTU last set."""
        return self._mtu

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        return self._closed

    @property
    def pending(self) -> int:
        """How many injected packets ``read()`` has not returned yet."""
        return len(self._inbound)

    def set_mtu(self, mtu: int) -> None:
        """Record a new MTU.

        Raises:
            ValueError: ``mtu`` is outside 68..65535.
        """
        _check_mtu(mtu)
        self._mtu = mtu

    def fileno(self) -> int:
        """Return a descriptor that is readable exactly while a packet is waiting (the read end of a pipe).

        Raises:
            ValueError: the device is closed.
        """
        with self._lock:
            self._check_open()
            if not self._pipe:
                read_fd, write_fd = os.pipe()
                os.set_blocking(read_fd, False)
                os.set_blocking(write_fd, False)
                self._pipe.extend((read_fd, write_fd))
                if self._inbound:
                    os.write(write_fd, _READY_BYTE)
            return self._pipe[0]

    def inject(self, packet: bytes | bytearray | memoryview) -> None:
        """Queue ``packet`` as if the kernel had routed it into the tunnel; ``read()`` returns it in FIFO order.

        Raises:
            ValueError: the device is closed.
        """
        data = bytes(packet)
        with self._lock:
            self._check_open()
            self._inbound.append(data)
            if len(self._inbound) == 1 and self._pipe:
                os.write(self._pipe[1], _READY_BYTE)

    def read(self) -> bytes:
        """Return the oldest injected packet.

        Raises:
            BlockingIOError: no packet is waiting (``errno.EAGAIN``).
            ValueError: the device is closed.
        """
        with self._lock:
            self._check_open()
            if not self._inbound:
                raise BlockingIOError(errno.EAGAIN, "no packet waiting in MemoryTun")
            packet = self._inbound.popleft()
            if not self._inbound and self._pipe:
                os.read(self._pipe[0], 1)
            return packet

    def write(self, packet: bytes | bytearray | memoryview) -> int:
        """Record ``packet`` in ``written``, as if the kernel had accepted it.

        Returns:
            ``len(packet)``.

        Raises:
            OSError: with ``strict``, ``EINVAL`` for an empty or non-IP packet (what the Linux tun driver does).
            ValueError: the device is closed.
        """
        data = bytes(packet)
        with self._lock:
            self._check_open()
            if self._strict and (not data or data[0] >> 4 not in (4, 6)):
                raise OSError(errno.EINVAL, "not an IPv4 or IPv6 packet; a Linux TUN device refuses it")
            self.written.append(data)
        return len(data)

    def read_packets(self) -> list[bytes]:
        """``[read()]``: an in-memory device has no offloads, so one read is one packet."""
        return [self.read()]

    def write_packets(self, packets: Sequence[bytes]) -> None:
        """``write()`` each packet in order; the first error is raised after all were attempted."""
        error: OSError | None = None
        for packet in packets:
            try:
                self.write(packet)
            except OSError as exc:
                error = error or exc
        if error is not None:
            raise error

    def take_written(self) -> list[bytes]:
        """Return the packets written so far, oldest first, and empty ``written``. Works after ``close()`` too."""
        with self._lock:
            packets = self.written
            self.written = []
        return packets

    def close(self) -> None:
        """Close the pipe (if any) and drop the packets still queued. ``written`` stays readable."""
        with self._lock:
            self._closed = True
            self._inbound.clear()
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("I/O operation on closed MemoryTun")


def _check_mtu(mtu: int) -> None:
    if not _MIN_MTU <= mtu <= _MAX_MTU:
        raise ValueError(f"MTU {mtu} is outside {_MIN_MTU}..{_MAX_MTU}")
