"""Runs of IP packets laid out at a fixed stride in one buffer, so that the bulk paths make no object per packet.

Theory of operation: a TCP flow in bulk moves as runs of equal-sized packets. A TUN read with TSO brings a
super-packet that cuts into up to 64 KiB / MSS segments of one flow; one UDP GRO read brings up to 64 datagrams of
one size from one sender. Turning each of them into a ``bytes`` object, and handing the engine a list of them,
costs more Python per packet than the sealing itself. A ``PacketRun`` keeps such a run where it lies: packet ``i``
starts at ``i * stride`` in ``buffer`` and is ``size`` bytes long, except the last, which is ``last_size`` (at most
``size``). The bytes between a packet's end and the next stride are zeros when the producer promises so
(``zero_padded``): the send path then seals a padded plaintext (whitepaper §5.4.6) straight from the buffer.

It is a ``Sequence[bytes]``, so whatever takes a list of packets also takes a run (indexing copies that packet
out); the fast paths (``Sender.send_packets``, ``SealJob.run_into``, the TUN driver) read ``buffer`` through
``memoryview`` slices instead, and numpy can view the whole run as a ``(packets_in, stride)`` array. Nothing here does
I/O, and a run owns nothing but its buffer reference: whoever made it must not change the buffer while the run is
in use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from . import ip

__all__ = ["PacketRun", "flat_packets", "uniform_destination", "uniform_source"]

_V4_NO_OPTIONS = 0x45  # RFC 791 §3.1: version 4, IHL 5


class PacketRun(Sequence[bytes]):
    """``packets_in`` IP packets at ``stride`` bytes from each other in ``buffer`` (see the module docstring)."""

    __slots__ = ("buffer", "last_size", "packets_in", "size", "stride", "zero_padded")

    def __init__(
        self,
        buffer: bytes | bytearray | memoryview,
        packets_in: int,
        stride: int,
        size: int,
        last_size: int | None = None,
        *,
        zero_padded: bool = False,
    ) -> None:
        """
        Args:
            buffer: the packets; at least ``(packets_in - 1) * stride + last_size`` bytes.
            packets_in: how many packets (at least one).
            stride: the distance from one packet's first byte to the next one's (at least ``size``).
            size: the length of every packet but the last.
            last_size: the last packet's length (``size`` when omitted); 1 to ``size``.
            zero_padded: every byte from a packet's end to its next stride (or, for the last, to ``packets_in *
                stride`` where the buffer reaches that far) is zero.

        Raises:
            ValueError: the shape does not fit the buffer.
        """
        if last_size is None:
            last_size = size
        if packets_in < 1 or size < 1 or stride < size or not 1 <= last_size <= size:
            raise ValueError(f"bad packet run: {packets_in} packets of {size} (last {last_size}) every {stride} bytes")
        if len(buffer) < (packets_in - 1) * stride + last_size:
            raise ValueError(f"a {len(buffer)}-byte buffer cannot hold {packets_in} packets every {stride} bytes")
        self.buffer = buffer
        self.packets_in = packets_in
        self.stride = stride
        self.size = size
        self.last_size = last_size
        self.zero_padded = zero_padded

    def __repr__(self) -> str:
        return f"PacketRun({self.packets_in} x {self.size} B, last {self.last_size} B, stride {self.stride})"

    def __len__(self) -> int:
        return self.packets_in

    def length(self, index: int) -> int:
        """The length of packet ``index`` (0 <= index < packets_in)."""
        return self.last_size if index == self.packets_in - 1 else self.size

    def total_bytes(self) -> int:
        """The bytes of all packets together (strides not counted)."""
        return (self.packets_in - 1) * self.size + self.last_size

    def view(self, index: int) -> memoryview:
        """Packet ``index`` as a memoryview into the buffer (no copy)."""
        start = index * self.stride
        return memoryview(self.buffer)[start : start + self.length(index)]

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...

    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.packets_in))]
        if index < 0:
            index += self.packets_in
        if not 0 <= index < self.packets_in:
            raise IndexError("packet run index out of range")
        start = index * self.stride
        return bytes(self.buffer[start : start + self.length(index)])

    def __iter__(self) -> Iterator[bytes]:
        buffer, stride, size = self.buffer, self.stride, self.size
        last = self.packets_in - 1
        for i in range(last):
            yield bytes(buffer[i * stride : i * stride + size])
        yield bytes(buffer[last * stride : last * stride + self.last_size])

    def head(self, count: int) -> PacketRun:
        """The first ``count`` packets (1 to ``packets_in``) as a run over the same buffer."""
        if not 1 <= count <= self.packets_in:
            raise ValueError(f"a run of {self.packets_in} packets has no head of {count}")
        if count == self.packets_in:
            return self
        return PacketRun(self.buffer, count, self.stride, self.size, zero_padded=self.zero_padded)

    def with_lengths(self, size: int, last_size: int) -> PacketRun:
        """The same slots with other lengths (a padded run of a ``zero_padded`` one: the added bytes are zeros)."""
        return PacketRun(self.buffer, self.packets_in, self.stride, size, last_size, zero_padded=self.zero_padded)

    def packets(self) -> list[bytes]:
        """Every packet as its own ``bytes`` (what the per-packet paths take)."""
        return list(self)


def flat_packets(items: Sequence[bytes | PacketRun]) -> list[bytes]:
    """``items`` with every run replaced by its packets, in place."""
    out: list[bytes] = []
    for item in items:
        if isinstance(item, PacketRun):
            out += item.packets()
        else:
            out.append(item)
    return out


def uniform_destination(run: PacketRun) -> bytes | None:
    """The destination address every packet of ``run`` has, each with a header ``ip.destination`` accepts; ``None``
    when that is not so, or not shown cheaply (the caller then takes the packets one by one).

    The packets before the last must each fill their ``size`` exactly (total length = ``size``), with the first
    row's version byte (IPv4: 0x45, no options) and destination; the last is read with ``ip.destination``. Each
    column of those bytes is compared as one strided slice of the buffer, so the check is a few C calls per run
    whatever its length: what lets the send path route a whole TSO read once, on its first packet, without ever
    sending a packet to a peer its own destination would not pick.
    """
    first = ip.destination(run.view(0))
    if first is None:
        return None
    count = run.packets_in
    if count == 1:
        return first
    if ip.destination(run.view(count - 1)) != first:
        return None
    if not _columns_equal(run.buffer, run.stride, count - 1, first, 16, 24, run.size):
        return None
    return first


def uniform_source(buffer: bytes | bytearray | memoryview, count: int, stride: int) -> tuple[bytes, int] | None:
    """``(source, total length)`` that the IP header at the start of every one of ``count`` slots of ``stride``
    bytes has (``ip.source_and_length`` of each, equal in all), or ``None`` when that is not so or not shown cheaply:
    what lets the receive path hand on a run of decrypted packets whole, with one cryptokey-routing source check.
    The same strided compares as ``uniform_destination``."""
    view = memoryview(buffer)
    inner = ip.source_and_length(view[:stride])
    if inner is None or count < 2:
        return inner
    source, total = inner
    if not _columns_equal(view, stride, count, source, 12, 8, total):
        return None
    return inner


def _columns_equal(
    buffer: bytes | bytearray | memoryview, stride: int, rows: int, address: bytes, v4: int, v6: int, total: int
) -> bool:
    """Whether the first ``rows`` slots all start with the first one's version byte (IPv4: 0x45, no options), the
    IP total length ``total`` and ``address`` at byte ``v4`` (IPv4) or ``v6`` (IPv6) of the header.

    Each byte of those is one column, taken as one strided slice and compared with that byte repeated. A ``bytes``
    or ``bytearray`` buffer (what the split and the receive path hand over) is sliced as it is: about two thirds of
    the cost of slicing a ``memoryview`` of it."""
    data = buffer if isinstance(buffer, (bytes, bytearray)) else memoryview(buffer)
    end = rows * stride
    version = data[0]
    if len(address) == 4:
        if version != _V4_NO_OPTIONS:
            return False
        length_at, address_at = 2, v4
        length = total
    else:
        length_at, address_at = 4, v6
        length = total - ip.IPV6_HEADER_SIZE
        if length < 0:
            return False
    columns: tuple[tuple[int, int], ...] = ((0, version), (length_at, length >> 8), (length_at + 1, length & 0xFF))
    columns += tuple(enumerate(address, address_at))
    return all(data[offset:end:stride] == bytes((value,)) * rows for offset, value in columns)
