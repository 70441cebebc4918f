"""Minimal IPv4/IPv6 header reads for cryptokey routing and inner-packet validation.

Theory of operation: WireGuard carries bare IP packets. Before encrypting a packet read from the TUN device
the core needs its destination address (to pick the peer through ``allowedips``); after decrypting a
transport message it needs the inner version, total length and source address (to trim padding and to check
that the sender is allowed to use that source, ``DISALLOWED_SOURCE_IP``). That is all this module reads:
it does not check header checksums, options or extension headers, and it never touches the payload.

Everything here is on the per-packet path, so it uses ``struct`` and slicing only, returns addresses as raw
``bytes`` (4 or 16 of them, the form ``AllowedIPs.lookup`` takes) and never builds ``ipaddress`` objects.
Remote input never raises: anything that is not a plausible header yields ``None``.

A header is accepted when (the kernel's ``receive.c`` makes the same length checks on decrypted packets,
a little more loosely for IPv4 where it only asks for a total length of at least 20):

* IPv4 (RFC 791 §3.1): at least 20 bytes, version 4, IHL at least 5 words, and the total length field at
  least the header length and no more than the bytes available;
* IPv6 (RFC 8200 §3): at least 40 bytes, version 6, and 40 + payload length no more than the bytes available.

Bytes after the total length are padding (WireGuard pads to a multiple of 16, whitepaper §5.4.6) and are
allowed; the caller trims them using the returned total length.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "IPV4_HEADER_SIZE",
    "IPV6_HEADER_SIZE",
    "destination",
    "parse_header",
    "source",
    "source_and_length",
]

IPV4_HEADER_SIZE: Final = 20  # RFC 791 §3.1: minimum header, IHL = 5
IPV6_HEADER_SIZE: Final = 40  # RFC 8200 §3: fixed header

_V4_TOTAL_LENGTH_OFFSET: Final = 2  # RFC 791 §3.1
_V4_SRC_OFFSET: Final = 12  # RFC 791 §3.1
_V4_DST_OFFSET: Final = 16  # RFC 791 §3.1
_V6_PAYLOAD_LENGTH_OFFSET: Final = 4  # RFC 8200 §3
_V6_SRC_OFFSET: Final = 8  # RFC 8200 §3
_V6_DST_OFFSET: Final = 24  # RFC 8200 §3
_MIN_IHL: Final = 5  # RFC 791 §3.1: IHL counts 32-bit words and is at least 5
_V4_NO_OPTIONS: Final = 0x45  # RFC 791 §3.1: version 4, IHL 5 (the first byte of nearly every IPv4 packet)


def _total_length(packet: bytes | bytearray | memoryview, size: int) -> tuple[int, int]:
    """Return ``(version, total_length)`` of a valid header, or ``(0, 0)``. ``size`` is ``len(packet)``."""
    if size < IPV4_HEADER_SIZE:
        return 0, 0
    first = packet[0]
    version = first >> 4
    if version == 4:
        header_length = (first & 0x0F) * 4
        if header_length < _MIN_IHL * 4:
            return 0, 0
        total = (packet[_V4_TOTAL_LENGTH_OFFSET] << 8) | packet[_V4_TOTAL_LENGTH_OFFSET + 1]
        if total < header_length or total > size:
            return 0, 0
        return 4, total
    if version == 6 and size >= IPV6_HEADER_SIZE:
        total = IPV6_HEADER_SIZE + ((packet[_V6_PAYLOAD_LENGTH_OFFSET] << 8) | packet[_V6_PAYLOAD_LENGTH_OFFSET + 1])
        if total > size:
            return 0, 0
        return 6, total
    return 0, 0


def parse_header(packet: bytes | bytearray | memoryview) -> tuple[int, int, bytes, bytes] | None:
    """Read the fields of an IP header that WireGuard needs.

    Args:
        packet: An IP packet, possibly followed by padding.

    Returns:
        ``(version, total_length, source, destination)`` with ``version`` 4 or 6, ``total_length`` in bytes
        (for IPv6, 40 plus the payload length) and the addresses as 4- or 16-byte ``bytes``; or ``None`` if
        ``packet`` does not start with a valid IPv4 or IPv6 header.
    """
    version, total = _total_length(packet, len(packet))
    if version == 4:
        return (
            4,
            total,
            bytes(packet[_V4_SRC_OFFSET:_V4_DST_OFFSET]),
            bytes(packet[_V4_DST_OFFSET:IPV4_HEADER_SIZE]),
        )
    if version == 6:
        return (
            6,
            total,
            bytes(packet[_V6_SRC_OFFSET:_V6_DST_OFFSET]),
            bytes(packet[_V6_DST_OFFSET:IPV6_HEADER_SIZE]),
        )
    return None


def destination(packet: bytes | bytearray | memoryview) -> bytes | None:
    """The destination address of a valid IP header, or ``None`` exactly when :func:`parse_header` is."""
    size = len(packet)
    if size >= IPV4_HEADER_SIZE and packet[0] == _V4_NO_OPTIONS:  # the common case, without a second call
        total = (packet[_V4_TOTAL_LENGTH_OFFSET] << 8) | packet[_V4_TOTAL_LENGTH_OFFSET + 1]
        return bytes(packet[_V4_DST_OFFSET:IPV4_HEADER_SIZE]) if IPV4_HEADER_SIZE <= total <= size else None
    version, _total = _total_length(packet, size)
    if version == 4:
        return bytes(packet[_V4_DST_OFFSET:IPV4_HEADER_SIZE])
    if version == 6:
        return bytes(packet[_V6_DST_OFFSET:IPV6_HEADER_SIZE])
    return None


def source_and_length(packet: bytes | bytearray | memoryview) -> tuple[bytes, int] | None:
    """``(source address, total length)`` of a valid IP header, or ``None`` exactly when :func:`parse_header` is.

    The receive path needs only these two fields, once per packet.
    """
    size = len(packet)
    if size >= IPV4_HEADER_SIZE and packet[0] == _V4_NO_OPTIONS:  # the common case, without a second call
        total = (packet[_V4_TOTAL_LENGTH_OFFSET] << 8) | packet[_V4_TOTAL_LENGTH_OFFSET + 1]
        if IPV4_HEADER_SIZE <= total <= size:
            return bytes(packet[_V4_SRC_OFFSET:_V4_DST_OFFSET]), total
        return None
    version, total = _total_length(packet, size)
    if version == 4:
        return bytes(packet[_V4_SRC_OFFSET:_V4_DST_OFFSET]), total
    if version == 6:
        return bytes(packet[_V6_SRC_OFFSET:_V6_DST_OFFSET]), total
    return None


def source(packet: bytes | bytearray | memoryview) -> bytes | None:
    """The source address of a valid IP header, or ``None`` exactly when :func:`parse_header` is."""
    version, _total = _total_length(packet, len(packet))
    if version == 4:
        return bytes(packet[_V4_SRC_OFFSET:_V4_DST_OFFSET])
    if version == 6:
        return bytes(packet[_V6_SRC_OFFSET:_V6_DST_OFFSET])
    return None
