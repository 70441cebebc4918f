"""TCP segmentation (GSO) and coalescing (GRO) for a TUN device opened with ``IFF_VNET_HDR``: pure functions, no I/O.

Theory of operation: a TUN device opened with ``IFF_VNET_HDR`` and told ``TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 |
TUN_F_TSO6)`` prefixes every packet, in both directions, with a ``struct virtio_net_hdr``, and may then carry TCP
"super-packets" of up to 64 KB: one IP header, one TCP header and the payload of many MSS-sized segments, which the
other side is to cut up (or has glued together). One read or write then moves a whole TCP burst instead of one
segment: writing a 64 KB super-packet costs the time of three or four single-segment writes, not of 45, and the
kernel's TCP stack behind the TUN device handles one large packet instead of 45 small ones.

- **Read side** (``handle_virtio_read``, ``gso_split``): the kernel hands us what a TSO-capable NIC would get, with
  ``gso_type`` TCPV4/TCPV6, ``gso_size`` (the MSS) and ``flags = NEEDS_CSUM`` (``CHECKSUM_PARTIAL``: the TCP checksum
  field holds only the pseudo-header sum). We cut it into the segments the kernel's ``tcp_gso_segment`` /
  ``inet_gso_segment`` would have produced: IP total length (IPv4) or payload length (IPv6), IPv4 identification
  incremented per segment and IPv4 header checksum, TCP sequence numbers advanced by ``gso_size``, FIN and PSH only
  on the last segment and CWR only on the first, and a complete TCP checksum over the pseudo-header. A non-GSO
  packet with ``NEEDS_CSUM`` gets its checksum completed (``gso_none_checksum``, like the kernel's
  ``skb_checksum_help``). ``hdr_len`` from the kernel is not trusted (it can be the whole first packet on the
  forwarding path, as wireguard-go notes); the headers end at ``csum_start`` plus the TCP data offset.
- **Write side** (``handle_gro``): consecutive TCP segments of one flow are glued into one super-packet when the
  kernel's own GRO (``tcp_gro_receive``) would have glued them: same addresses and ports, contiguous sequence
  numbers, the same ACK number, flags ACK (PSH allowed on the last one only), the same data offset, window and TCP
  option bytes, the same IP fields (IPv4: TOS, DF/reserved bits, TTL, no IP options, no fragment; IPv6: the first
  word (version, traffic class, flow label), hop limit, TCP directly after the fixed header), every payload the
  same size except a shorter last one, and at most 65535 bytes in all. Everything else (other protocols, SYN, FIN,
  RST, URG, ECE/CWR, pure ACKs, IP options, fragments) is written alone behind an all-zero header, unchanged, and
  ends its flow's open super-packet (an IPv4 fragment, IPv4 options or IPv6 extension headers end all of them,
  since the flow cannot be read cheaply), so that no packet of a flow overtakes another. Unlike the kernel, the
  IPv4 identification is not required to count up: the super-packet keeps the first one's (as wireguard-go).

How the checksum of a glued packet is made (``handle_gro``): two ways, both accepted by the kernel (Linux 6.x,
verified in a network namespace by ``tests/tun/test_tun_offload_linux.py``):

- ``needs_csum=False`` (default): ``flags = 0`` and a *complete* TCP checksum over the whole super-packet, which the
  receiving kernel verifies like any other (``CHECKSUM_NONE``). It costs no pass over the payload here: each segment's
  payload sum is recovered from its own checksum field (valid checksum => header sum + payload sum + pseudo sum is
  0 in one's-complement arithmetic), and the payload sums add up to the super-packet's. So a segment that arrived
  with a wrong checksum makes the super-packet's checksum wrong and the kernel drops it, as it would have dropped
  that segment: end-to-end checking is kept at O(1) Python work per segment.
- ``needs_csum=True``: ``flags = NEEDS_CSUM`` with ``csum_start``/``csum_offset`` and the folded pseudo-header sum
  in the checksum field (what ``CHECKSUM_PARTIAL`` means, and what wireguard-go writes). The kernel then *trusts* the
  payload; wireguard-go pays for that by verifying every segment's checksum before gluing, which in Python costs as
  much as the write it saves, so here it is not verified: use it only where inner checksums need no checking.

Costs (CPython 3.11 on the 2-core test machine): ``handle_gro`` about 0.8 us per segment (64 segments of 1368 bytes,
``benchmarks/engine_micro.py``: a segment continuing the previous packet's flow takes a fast path with the flow's
fields in locals), then one write of about 9-13 us for 45 segments, against 2.3-3.2 us for each single-segment
write, which makes writes cheaper in the daemon and the receiving side of the kernel far cheaper. The read side
needs every segment's TCP checksum, which the kernel would otherwise have computed in C. In pure Python
(``int.from_bytes`` and a reduction, ~2 us per 1448 bytes) the cut cost about 2.5 us per segment, against about
1.1-2 us per plain read. So ``gso_split`` takes the payload sums of all full segments from one numpy row sum over
the super-packet read in place as 16-bit words (``_payload_sums``, about 6 us for 47 segments) and builds each
segment with one ``struct`` pack and one slice: 0.74 us per segment at 47 segments, 1.3 at 8, 2.0 at 4
(``benchmarks/engine_micro.py``; an earlier version built all segments as numpy rows, 0.84 us at 47 but 25 us a
call, and was removed as slower at every size). With ``TUN_F_CSUM`` every plain TCP or UDP packet read comes with
its checksum left partial too (``gso_none_checksum``, one numpy sum from 768 bytes). ``LinuxTun`` also offers
``offload=True, tso=False`` (glued writes, complete packets on reads), which the daemon uses unless ``WGPY_TUN_TSO=1``.

Checksums in Python: the one's-complement sum of 16-bit big-endian words of ``data`` is congruent to
``int.from_bytes(data, "big")`` modulo 0xFFFF (2**16 = 1 mod 0xFFFF), so a checksum is one ``int.from_bytes`` and
one reduction; folding the big integer in halves first (shift + mask + add, at multiples of 16 bits) makes the
reduction cheaper. The folded sum of a nonzero total is the unique value in 1..0xFFFF congruent to it, and the
checksum is its complement, which is ``(-total) % 0xFFFF`` (0..0xFFFE, never 0xFFFF, like the kernel's
``csum_fold``; UDP then maps 0 to 0xFFFF).

``struct virtio_net_hdr`` (``<linux/virtio_net.h>``), 10 bytes, in the *host's* byte order for a legacy (non
``TUNSETVNETLE``/``TUNSETVNETBE``) TUN device, hence struct's ``"="`` (native order, standard sizes, no padding)::

    offset 0  u8   flags        NEEDS_CSUM = 1 (checksum csum_start.. into csum_start+csum_offset), DATA_VALID = 2
    offset 1  u8   gso_type     NONE = 0, TCPV4 = 1, UDP = 3 (UFO), TCPV6 = 4, UDP_L4 = 5 (USO); | ECN = 0x80
    offset 2  u16  hdr_len      bytes of headers (IP + TCP/UDP) in front of the payload
    offset 4  u16  gso_size     payload bytes per segment (the MSS)
    offset 6  u16  csum_start   where checksumming starts: the transport header's offset from the IP header
    offset 8  u16  csum_offset  where the checksum goes, from csum_start: 16 for TCP, 6 for UDP

The 12-byte ``virtio_net_hdr_mrg_rxbuf`` (``+ u16 num_buffers``) is not used: ``TUNSETVNETHDRSZ`` stays 10.

This module never imports ``wgpy`` and does no I/O; ``tun.linux.LinuxTun(offload=True)`` does the reads and writes.
Mirrors wireguard-go ``tun/offload_linux.go`` (``handleVirtioRead``, ``gsoSplit``, ``gsoNoneChecksum``,
``handleGRO``, ``tcpGRO``) and the kernel's ``net/ipv4/tcp_offload.c`` (``tcp_gso_segment``, ``tcp_gro_receive``),
``net/ipv4/af_inet.c`` (``inet_gso_segment``) and ``include/linux/virtio_net.h``.
"""

from __future__ import annotations

import functools
import struct
import sys
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

try:
    import numpy as _np
except ImportError:  # numpy is optional: without it super-packets are split by the pure-Python loop
    _np = None  # type: ignore[assignment]

__all__ = [
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "MAX_PACKET_SIZE",
    "VECTORIZED_SPLIT",
    "VECTOR_SUM_MIN_SEGMENTS",
    "VIRTIO_NET_HDR_F_DATA_VALID",
    "VIRTIO_NET_HDR_F_NEEDS_CSUM",
    "VIRTIO_NET_HDR_GSO_ECN",
    "VIRTIO_NET_HDR_GSO_NONE",
    "VIRTIO_NET_HDR_GSO_TCPV4",
    "VIRTIO_NET_HDR_GSO_TCPV6",
    "VIRTIO_NET_HDR_GSO_UDP",
    "VIRTIO_NET_HDR_GSO_UDP_L4",
    "VIRTIO_NET_HDR_SIZE",
    "ZERO_VIRTIO_NET_HDR",
    "OffloadError",
    "SplitRun",
    "VirtioNetHdr",
    "gro_run_parts",
    "gso_none_checksum",
    "gso_split",
    "gso_split_into",
    "handle_gro",
    "handle_gro_run",
    "handle_virtio_read",
    "handle_virtio_read_run",
]

VIRTIO_NET_HDR_SIZE: Final = 10  # sizeof(struct virtio_net_hdr), <linux/virtio_net.h>
VIRTIO_NET_HDR_F_NEEDS_CSUM: Final = 1  # <linux/virtio_net.h>: CHECKSUM_PARTIAL
VIRTIO_NET_HDR_F_DATA_VALID: Final = 2  # <linux/virtio_net.h>: CHECKSUM_UNNECESSARY
VIRTIO_NET_HDR_GSO_NONE: Final = 0  # <linux/virtio_net.h>
VIRTIO_NET_HDR_GSO_TCPV4: Final = 1  # <linux/virtio_net.h>
VIRTIO_NET_HDR_GSO_UDP: Final = 3  # <linux/virtio_net.h>: UFO (IP fragmentation), never produced since Linux 4.14
VIRTIO_NET_HDR_GSO_TCPV6: Final = 4  # <linux/virtio_net.h>
VIRTIO_NET_HDR_GSO_UDP_L4: Final = 5  # <linux/virtio_net.h>: USO, only with TUN_F_USO4/6 (Linux 6.2)
VIRTIO_NET_HDR_GSO_ECN: Final = 0x80  # <linux/virtio_net.h>: the super-packet carries CWR; only with TUN_F_TSO_ECN

MAX_PACKET_SIZE: Final = 65535  # IPv4 total length / IPv6 payload length field; wireguard-go maxUint16
IPPROTO_TCP: Final = 6  # RFC 793
IPPROTO_UDP: Final = 17  # RFC 768

_TCP_FIN: Final = 0x01  # RFC 793 §3.1
_TCP_PSH: Final = 0x08
_TCP_ACK: Final = 0x10
_TCP_CWR: Final = 0x80  # RFC 3168 §6.1
_TCP_CSUM_OFFSET: Final = 16  # offsetof(struct tcphdr, check)
_UDP_CSUM_OFFSET: Final = 6  # offsetof(struct udphdr, check)
_IPV4_DF_MF_OFFSET_MASK: Final = 0x3FFF  # MF flag and fragment offset: a fragment is never glued
_IPV6_HEADER_SIZE: Final = 40  # RFC 8200 §3

ZERO_VIRTIO_NET_HDR: Final = bytes(VIRTIO_NET_HDR_SIZE)  # gso_type NONE, no flags: "one plain packet"

_VIRTIO_NET_HDR: Final = struct.Struct("=BBHHHH")  # native order: legacy TUN without TUNSETVNETLE/BE
_U16: Final = struct.Struct("!H")
_SEQ: Final = struct.Struct("!I")
_NATIVE_U32: Final = struct.Struct("=I")

#: Whether ``gso_split`` takes the segments' payload sums from one numpy row sum (``_payload_sums``); without
#: numpy, reading super-packets costs more than it saves (see the module docstring) and callers keep TSO off.
VECTORIZED_SPLIT: Final = _np is not None
#: From this many full segments of an even size the payload sums come from numpy (one call costs about 1.5 us).
VECTOR_SUM_MIN_SEGMENTS: Final = 2
# A native 16-bit word sum times this is congruent to the big-endian sum modulo 0xFFFF (2**16 = 1 mod 0xFFFF, so
# swapping a word's bytes multiplies it by 256).
_NATIVE_TO_BIG: Final = 256 if sys.byteorder == "little" else 1


class OffloadError(ValueError):
    """A record read from a ``IFF_VNET_HDR`` TUN device is malformed (bad header, lengths or GSO type)."""


class VirtioNetHdr(NamedTuple):
    """``struct virtio_net_hdr`` (the layout is in the module docstring); all fields are host integers."""

    flags: int = 0
    gso_type: int = VIRTIO_NET_HDR_GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def pack(self) -> bytes:
        """The 10 bytes as the TUN device reads and writes them (host byte order)."""
        return _VIRTIO_NET_HDR.pack(*self)

    @classmethod
    def unpack(cls, data: bytes | bytearray | memoryview) -> VirtioNetHdr:
        """Read the header from the first 10 bytes of ``data``.

        Raises:
            OffloadError: ``data`` is shorter than 10 bytes.
        """
        if len(data) < VIRTIO_NET_HDR_SIZE:
            raise OffloadError(f"a virtio_net_hdr is {VIRTIO_NET_HDR_SIZE} bytes, got {len(data)}")
        return cls(*_VIRTIO_NET_HDR.unpack_from(data))


# -- checksums -------------------------------------------------------------------------------------------------------

_FOLD_TARGET_BITS: Final = 1600  # fold big integers down to about this size before the final % 0xFFFF
# From this size ``_sum_mod`` sums with numpy (int.from_bytes and the folds are cheaper below it; measured on the
# 2-vCPU Xeon of the README: 1400 bytes 1.4 us against 1.9 us, even near 800 bytes, 256 bytes 1.2 against 0.65).
_NUMPY_SUM_MIN_BYTES: Final = 768


@functools.lru_cache(maxsize=256)
def _fold_plan(size: int) -> tuple[tuple[int, int], ...]:
    """Shift/mask pairs that fold the integer of ``size`` bytes (padded to even) to about 1600 bits.

    Each step adds the top part onto the bottom part at a multiple of 16 bits (2**16k = 1 mod 0xFFFF), which keeps
    the residue and halves the size; shifts and masks cost far less than the per-digit division of ``% 0xFFFF``.
    """
    bits = 8 * (size + (size & 1))
    plan = []
    while bits > _FOLD_TARGET_BITS:
        shift = (bits + 31) // 32 * 16
        plan.append((shift, (1 << shift) - 1))
        bits = shift + 1
    return tuple(plan)


def _sum_mod(data: bytes | bytearray | memoryview) -> int:
    """The one's-complement sum of ``data`` as 16-bit big-endian words (odd length padded with 0), modulo 0xFFFF.

    Only the residue matters: every total here is nonzero (it includes the protocol number or the IP version), so
    the folded sum is the residue, or 0xFFFF for residue 0, and the checksum is ``(-total) % 0xFFFF`` either way.
    """
    size = len(data)
    np = _np
    if np is not None and size >= _NUMPY_SUM_MIN_BYTES:
        # One numpy reduction over the even part read as native 16-bit words (see _NATIVE_TO_BIG), about half the
        # cost of int.from_bytes and the folds for a full-MTU packet; an odd last byte is the high byte of a word.
        total = int(np.add.reduce(np.frombuffer(data, np.uint16, size >> 1), dtype=np.uint64)) * _NATIVE_TO_BIG
        return (total + (data[-1] << 8 if size & 1 else 0)) % 0xFFFF
    x = int.from_bytes(data, "big")
    if size & 1:
        x <<= 8  # RFC 1071: pad an odd byte with zero on the right
    for shift, mask in _fold_plan(size):
        x = (x >> shift) + (x & mask)
    return x % 0xFFFF


def _address_sum(packet: bytes | bytearray | memoryview, version: int) -> int:
    """Sum (mod 0xFFFF) of the source and destination addresses, the part of the pseudo-header a flow shares."""
    if version == 4:
        return int.from_bytes(packet[12:20], "big") % 0xFFFF
    return int.from_bytes(packet[8:40], "big") % 0xFFFF


def gso_none_checksum(packet: bytearray, csum_start: int, csum_offset: int) -> None:
    """Complete a ``CHECKSUM_PARTIAL`` packet in place, as the kernel's ``skb_checksum_help`` does.

    The checksum field holds a seed (normally the folded pseudo-header sum); the checksum of ``packet[csum_start:]``
    with that seed in place is written over it, with 0 sent as 0xFFFF (``CSUM_MANGLED_0``).

    Raises:
        OffloadError: the checksum field lies outside the packet.
    """
    at = csum_start + csum_offset
    if csum_start < 0 or at + 2 > len(packet):
        raise OffloadError(f"checksum at {csum_start}+{csum_offset} lies outside a {len(packet)}-byte packet")
    total = _sum_mod(memoryview(packet)[csum_start:])  # the seed sits in the summed range, so it is added in
    packet[at : at + 2] = _U16.pack(((-total) % 0xFFFF) or 0xFFFF)


# -- read side: split ------------------------------------------------------------------------------------------------


def handle_virtio_read(record: bytes | bytearray | memoryview) -> list[bytes]:
    """Turn one read of an ``IFF_VNET_HDR`` TUN device (header + packet) into the IP packets it stands for.

    A GSO super-packet (TCPV4, TCPV6 or UDP_L4) is cut into its segments (``gso_split``); a plain packet comes back
    alone, with its checksum completed when the header says ``NEEDS_CSUM``.

    Raises:
        OffloadError: a short or malformed record, or an unsupported ``gso_type`` (UFO).
    """
    if len(record) <= VIRTIO_NET_HDR_SIZE:
        raise OffloadError(f"a {len(record)}-byte TUN record has no packet behind its virtio_net_hdr")
    if not record[0] and not record[1]:  # no flags, GSO_NONE: the common case of a plain, complete packet
        return [bytes(record[VIRTIO_NET_HDR_SIZE:])]
    fields = _VIRTIO_NET_HDR.unpack_from(record)
    flags, gso_type = fields[0], fields[1]
    if gso_type == VIRTIO_NET_HDR_GSO_NONE:
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
            completed = bytearray(memoryview(record)[VIRTIO_NET_HDR_SIZE:])
            gso_none_checksum(completed, fields[4], fields[5])
            return [bytes(completed)]
        return [bytes(record[VIRTIO_NET_HDR_SIZE:])]  # DATA_VALID: already checked, nothing to do
    return gso_split(bytes(memoryview(record)[VIRTIO_NET_HDR_SIZE:]), VirtioNetHdr(*fields))


def gso_split(packet: bytes, hdr: VirtioNetHdr) -> list[bytes]:
    """Cut a TCP (or UDP_L4) GSO super-packet into the segments the kernel's software GSO would have sent.

    Args:
        packet: the super-packet, starting at its IP header (the bytes after the virtio_net_hdr).
        hdr: its virtio_net_hdr; ``csum_start`` must be the transport header's offset and ``gso_size`` the MSS.

    Returns:
        The segments in order, each a complete IP packet with valid IP (IPv4) and TCP/UDP checksums.

    Raises:
        OffloadError: unsupported gso_type, or headers inconsistent with the lengths.
    """
    gso_type = hdr.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso_type in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6):
        return _split_tcp(packet, hdr, 4 if gso_type == VIRTIO_NET_HDR_GSO_TCPV4 else 6)
    if gso_type == VIRTIO_NET_HDR_GSO_UDP_L4:
        return _split_udp(packet, hdr)
    raise OffloadError(f"unsupported virtio_net_hdr gso_type {hdr.gso_type:#x}")


def _check_gso_headers(packet: bytes | memoryview, hdr: VirtioNetHdr, version: int, protocol: int) -> int:
    """Validate the IP part of a GSO super-packet; return the IP header length (``csum_start``)."""
    ip_len = hdr.csum_start
    if len(packet) > MAX_PACKET_SIZE + _IPV6_HEADER_SIZE:
        raise OffloadError(f"a {len(packet)}-byte GSO packet is larger than any IP packet")
    if packet[0] >> 4 != version:
        raise OffloadError(f"gso_type {hdr.gso_type:#x} on an IPv{packet[0] >> 4} packet")
    if hdr.gso_size == 0:
        raise OffloadError("GSO packet with gso_size 0")
    if not hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        raise OffloadError("GSO packet without NEEDS_CSUM")
    if version == 4:
        if ip_len != (packet[0] & 0x0F) * 4 or ip_len < 20 or packet[9] != protocol:
            raise OffloadError(f"IPv4 GSO packet: csum_start {ip_len} is not the end of an IPv4/{protocol} header")
    elif ip_len < _IPV6_HEADER_SIZE:
        raise OffloadError(f"IPv6 GSO packet: csum_start {ip_len} is inside the IPv6 header")
    return ip_len


def _tcp_gso_layout(packet: bytes | memoryview, hdr: VirtioNetHdr, version: int) -> tuple[int, int, int]:
    """Validate a TCP GSO super-packet's headers (``_check_gso_headers`` and the TCP header); return the IP header
    length, the TCP header length and both together."""
    ip_len = _check_gso_headers(packet, hdr, version, IPPROTO_TCP)
    size = len(packet)
    if hdr[5] != _TCP_CSUM_OFFSET or size < ip_len + 20:
        raise OffloadError("TCP GSO packet: bad csum_offset or no room for a TCP header")
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    hdr_len = ip_len + tcp_len
    if tcp_len < 20 or hdr_len >= size:
        raise OffloadError(f"TCP GSO packet: data offset {tcp_len} leaves no payload in {size} bytes")
    return ip_len, tcp_len, hdr_len


def _tcp_gso_headers(
    packet: bytes | memoryview, hdr: VirtioNetHdr, version: int
) -> tuple[int, int, int, bytes, int, int, int]:
    """Validate a TCP GSO super-packet's headers (``_tcp_gso_layout``); return what ``_split_tcp`` starts from: the
    IP header length, the TCP header length, both together, the headers, the TCP flags and seq, and everything of a
    segment's TCP checksum equation except its payload, seq and flags (the pseudo-header of a full-size segment and
    the header words that every segment copies)."""
    ip_len, tcp_len, hdr_len = _tcp_gso_layout(packet, hdr, version)
    headers = bytes(packet[:hdr_len])
    flags = headers[ip_len + 13]
    (seq,) = _SEQ.unpack_from(headers, ip_len + 4)
    tcp_fixed = (
        _address_sum(headers, version)
        + IPPROTO_TCP
        + tcp_len
        + _sum_mod(headers[ip_len:])
        - (seq >> 16)
        - (seq & 0xFFFF)
        - flags
        - int.from_bytes(headers[ip_len + 16 : ip_len + 18], "big")
    )
    return ip_len, tcp_len, hdr_len, headers, flags, seq, tcp_fixed


def _split_tcp(packet: bytes, hdr: VirtioNetHdr, version: int) -> list[bytes]:
    ip_len, tcp_len, hdr_len, headers, flags, seq, tcp_fixed = _tcp_gso_headers(packet, hdr, version)
    size = len(packet)
    gso_size = hdr.gso_size
    # tcp_gso_segment: FIN and PSH only on the last segment, CWR only on the first.
    last_start = hdr_len + (size - hdr_len - 1) // gso_size * gso_size
    last_size = size - last_start
    if last_start == hdr_len:  # a single segment keeps its flags
        first_flags = last_flags = flags
    else:
        first_flags = flags & ~(_TCP_FIN | _TCP_PSH)
        last_flags = flags & ~_TCP_CWR
    middle_flags = flags & ~(_TCP_FIN | _TCP_PSH | _TCP_CWR)
    ports = headers[ip_len : ip_len + 4]
    ack_offset = headers[ip_len + 8 : ip_len + 13]
    window = headers[ip_len + 14 : ip_len + 16]
    urgent_options = headers[ip_len + 18 : hdr_len]
    # One sum per full segment's payload, congruent (mod 0xFFFF) to its big-endian word sum times ``scale``.
    sums, scale = _payload_sums(packet, hdr_len, gso_size, (size - hdr_len) // gso_size)
    # A full-size last segment (the common case) has its sum in ``sums`` too.
    last_sum = sums.pop() * scale if last_size == gso_size else _sum_mod(packet[last_start:])
    segments: list[bytes] = []
    append = segments.append
    seg_flags = first_flags
    start = hdr_len
    if version == 4:
        ip_front = headers[0:2]
        ip_middle = headers[6:10]
        ip_rest = headers[12:ip_len] + ports  # addresses (and options), then the ports
        (ip_id,) = _U16.unpack_from(headers, 4)
        ip_fixed = _sum_mod(headers[:ip_len]) - int.from_bytes(headers[2:6], "big") - _U16.unpack_from(headers, 10)[0]
        pack = struct.Struct(f"!2sHH4sH{ip_len - 8}sI5sB2sH{tcp_len - 18}s").pack
        total = hdr_len + gso_size
        ip_fixed_full = ip_fixed + total
        tcp_fixed_full = tcp_fixed + gso_size
        for x in sums:
            append(
                pack(
                    ip_front,
                    total,
                    ip_id,
                    ip_middle,
                    (-(ip_fixed_full + ip_id)) % 0xFFFF,
                    ip_rest,
                    seq,
                    ack_offset,
                    seg_flags,
                    window,
                    (-(x * scale + tcp_fixed_full + (seq >> 16) + (seq & 0xFFFF) + seg_flags)) % 0xFFFF,
                    urgent_options,
                )
                + packet[start : start + gso_size]
            )
            start += gso_size
            seq = (seq + gso_size) & 0xFFFFFFFF
            ip_id = (ip_id + 1) & 0xFFFF
            seg_flags = middle_flags
        payload = packet[last_start:]
        total = hdr_len + last_size
        tcp_sum = last_sum + tcp_fixed + last_size + (seq >> 16) + (seq & 0xFFFF) + last_flags
        append(
            pack(
                ip_front,
                total,
                ip_id,
                ip_middle,
                (-(ip_fixed + total + ip_id)) % 0xFFFF,
                ip_rest,
                seq,
                ack_offset,
                last_flags,
                window,
                (-tcp_sum) % 0xFFFF,
                urgent_options,
            )
            + payload
        )
        return segments
    ip_front = headers[0:4]
    ip_rest = headers[6:ip_len] + ports  # next header, hop limit, addresses (and extension headers), then the ports
    pack = struct.Struct(f"!4sH{ip_len - 2}sI5sB2sH{tcp_len - 18}s").pack
    payload_length = hdr_len - _IPV6_HEADER_SIZE + gso_size
    tcp_fixed_full = tcp_fixed + gso_size
    for x in sums:
        append(
            pack(
                ip_front,
                payload_length,
                ip_rest,
                seq,
                ack_offset,
                seg_flags,
                window,
                (-(x * scale + tcp_fixed_full + (seq >> 16) + (seq & 0xFFFF) + seg_flags)) % 0xFFFF,
                urgent_options,
            )
            + packet[start : start + gso_size]
        )
        start += gso_size
        seq = (seq + gso_size) & 0xFFFFFFFF
        seg_flags = middle_flags
    payload = packet[last_start:]
    tcp_sum = last_sum + tcp_fixed + last_size + (seq >> 16) + (seq & 0xFFFF) + last_flags
    append(
        pack(
            ip_front,
            hdr_len - _IPV6_HEADER_SIZE + last_size,
            ip_rest,
            seq,
            ack_offset,
            last_flags,
            window,
            (-tcp_sum) % 0xFFFF,
            urgent_options,
        )
        + payload
    )
    return segments


#: A TCP super-packet cut into one buffer (``gso_split_into``): (buffer, count, stride, size, last_size). Segment
#: ``i`` starts at ``i * stride`` and is ``size`` bytes (the last ``last_size``); the bytes between are zeros.
SplitRun = tuple[bytearray, int, int, int, int]

_RUN_STRIDE_MULTIPLE: Final = 16  # a segment's slot: its length rounded up to this (the WireGuard padding, §5.4.6)


def gso_split_into(packet: bytes | bytearray | memoryview, hdr: VirtioNetHdr) -> SplitRun | None:
    """``gso_split`` of a TCP super-packet into one zero-filled buffer at a fixed stride, without a Python object
    per segment; ``None`` when this shape is not handled here (no numpy, UDP_L4, an odd ``gso_size`` or header
    length, a ``gso_size`` that with the headers is over 65535 bytes): the caller then uses ``gso_split``. The segments are byte for byte those of ``gso_split`` (the tests
    compare them).

    The stride is the full segment length rounded up to 16, so that each segment followed by its zeros is already
    its WireGuard-padded plaintext. The buffer starts as one row repeated: a template of the headers (a middle
    segment's flags and lengths, and in the TCP checksum field the pseudo-header sum of a full segment) and zeros.
    The payloads are one strided copy; the fields that differ per row (TCP seq, IPv4 id and header checksum) are
    written as big-endian columns for all rows at once, the first and last row's flags and lengths are patched, and
    then one row sum over each row's TCP header and payload, read in place as native 16-bit words, is all its
    checksum needs (``_split_layout`` says why the negated sum, written in native order, is the checksum).

    Raises:
        OffloadError: as ``gso_split`` (a malformed super-packet).
    """
    np = _np
    gso_type = hdr[1] & ~VIRTIO_NET_HDR_GSO_ECN
    gso_size = hdr[3]
    if np is None or gso_size & 1:
        return None
    if gso_type == VIRTIO_NET_HDR_GSO_TCPV4:
        version = 4
    elif gso_type == VIRTIO_NET_HDR_GSO_TCPV6:
        version = 6
    else:
        return None
    packet = memoryview(packet)  # read in place: the payloads are copied once, into the rows
    ip_len, tcp_len, hdr_len = _tcp_gso_layout(packet, hdr, version)
    if hdr_len & 1:  # IPv4 and TCP headers are whole words: only a strange IPv6 csum_start
        return None
    payload_total = len(packet) - hdr_len
    full, rest = divmod(payload_total, gso_size)  # ``full`` segments of exactly gso_size bytes of payload
    count = full + (rest > 0)
    last_payload = rest or gso_size
    seg_size = hdr_len + gso_size
    if seg_size > MAX_PACKET_SIZE:  # a gso_size the total length cannot hold: gso_split keeps the shorter lengths
        return None
    stride = (seg_size + _RUN_STRIDE_MULTIPLE - 1) & -_RUN_STRIDE_MULTIPLE
    layout, payloads, seq_steps, padding = _split_layout(version, ip_len, hdr_len, stride, gso_size, count)
    flags = packet[ip_len + 13]
    # tcp_gso_segment: FIN and PSH only on the last segment, CWR only on the first (a single one keeps its flags).
    middle_flags = flags & ~(_TCP_FIN | _TCP_PSH | _TCP_CWR)
    # The template: a middle segment's headers, with the pseudo-header sum of a full segment in the TCP checksum.
    head = bytearray(packet[:hdr_len])
    head[ip_len + 13] = middle_flags
    pseudo = IPPROTO_TCP + tcp_len
    if version == 4:
        _U16.pack_into(head, 2, seg_size)
        pseudo += int.from_bytes(packet[12:20], "big")
    else:
        _U16.pack_into(head, 4, seg_size - _IPV6_HEADER_SIZE)
        pseudo += int.from_bytes(packet[8:40], "big")
    _U16.pack_into(head, ip_len + _TCP_CSUM_OFFSET, (pseudo + gso_size) % 0xFFFF)
    buffer = (head + padding) * count  # every row the template and zeros (one C repeat)
    rows = np.frombuffer(buffer, layout)  # one record per segment, in place
    if full == count:
        rows["payload"] = np.frombuffer(packet, payloads, full, hdr_len)
    elif full:
        rows["payload"][:full] = np.frombuffer(packet, payloads, full, hdr_len)
    last = (count - 1) * stride
    if rest:
        buffer[last + hdr_len : last + hdr_len + rest] = packet[hdr_len + full * gso_size :]
    (seq0,) = _SEQ.unpack_from(packet, ip_len + 4)
    rows["seq"] = np.add(seq_steps, seq0)  # uint32: wraps as a TCP seq does (native, then one byte-swapping copy)
    if count > 1:
        buffer[ip_len + 13] = flags & ~(_TCP_FIN | _TCP_PSH)
        buffer[last + ip_len + 13] = flags & ~_TCP_CWR
    else:
        buffer[ip_len + 13] = flags
    if rest:  # a shorter last segment: its lengths, and its pseudo-header sum with them
        _U16.pack_into(buffer, last + ip_len + _TCP_CSUM_OFFSET, (pseudo + rest) % 0xFFFF)
        _U16.pack_into(buffer, last + (2 if version == 4 else 4), hdr_len + rest - (0 if version == 4 else 40))
    if version == 4:
        # Each row's id and header checksum, as slices of two tables: the ids count up from the first (wrapping at
        # 2**16) and each checksum is -(the header sum without id and checksum + the id) modulo 0xFFFF.
        ids, negated = _ipv4_tables()
        (ip_id0,) = _U16.unpack_from(head, 4)
        ip_fixed = (int.from_bytes(head[:ip_len], "big") - ip_id0 - int.from_bytes(head[10:12], "big")) % 0xFFFF
        rows["id"] = ids[ip_id0 : ip_id0 + count]
        before_wrap = 0x10000 - ip_id0  # rows whose id is ip_id0 + row
        if count <= before_wrap:
            rows["ip_csum"] = negated[ip_fixed + ip_id0 : ip_fixed + ip_id0 + count]
        else:
            ip_csums = rows["ip_csum"]
            ip_csums[:before_wrap] = negated[ip_fixed + ip_id0 : ip_fixed + 0x10000]
            ip_csums[before_wrap:] = negated[ip_fixed : ip_fixed + count - before_wrap]
        if rest:
            ip_last = (ip_id0 + count - 1) & 0xFFFF
            _U16.pack_into(buffer, last + 10, (-(ip_fixed - gso_size + rest + ip_last)) % 0xFFFF)
    sums = np.add.reduce(rows["words"], axis=1, dtype=np.uint32)
    np.subtract(0xFFFF0000, sums, out=sums)  # a multiple of 0xFFFF above any row sum: the negated sum, unsigned
    rows["tcp_csum"] = np.remainder(sums, 0xFFFF, out=sums)  # in place, then one copy (cheaper than out=)
    return buffer, count, stride, seg_size, hdr_len + last_payload


@functools.cache
def _ipv4_tables() -> tuple[Any, Any]:
    """Two read-only big-endian uint16 tables of 2**17 entries for ``gso_split_into``'s IPv4 columns: ``u & 0xFFFF``
    at ``u`` (a run of ids from any first one, wrapping), and ``-k`` modulo 0xFFFF at ``k`` (a run of header
    checksums: ``k`` is the header sum without the checksum, below 2 * 0xFFFF + 1)."""
    np = _np
    index = np.arange(0x20000, dtype=np.int64)
    ids = (index & 0xFFFF).astype(">u2")
    negated = ((-index) % 0xFFFF).astype(">u2")
    ids.flags.writeable = negated.flags.writeable = False
    return ids, negated


@functools.lru_cache(maxsize=256)
def _split_layout(
    version: int, ip_len: int, hdr_len: int, stride: int, gso_size: int, count: int
) -> tuple[Any, Any, Any, bytes]:
    """What ``gso_split_into`` needs of a shape, made once: the numpy record type of one row, the type of one
    payload in the super-packet, every row's seq offset from the first (a read-only uint32 array) and the zeros
    that follow the headers in a row.

    A row's fields: ``payload``, ``seq``, ``id`` and ``ip_csum`` (IPv4) as big-endian numbers, and ``words``, the TCP header and payload as native 16-bit words, whose
    sum gives the TCP checksum: with the pseudo-header sum in the checksum field, the big-endian word sum of the
    row is the checksum's whole sum T. On a little-endian host the native sum S is a byte swap away: 256 * S is
    congruent to T modulo 0xFFFF, and since 256 * 256 = 1 (mod 0xFFFF), the checksum c = -T (mod 0xFFFF) read in
    native order, which is 256 * c (mod 0xFFFF) for any c below 0xFFFF, is -S (mod 0xFFFF): so ``tcp_csum`` is a
    native field that takes -S (mod 0xFFFF). On a big-endian host S is T and the same holds."""
    np = _np
    names = ["payload", "words", "seq", "tcp_csum"]
    formats: list[Any] = [
        ("u1", (gso_size,)),
        ("=u2", ((hdr_len - ip_len + gso_size) // 2,)),
        ">u4",
        "=u2",
    ]
    offsets = [hdr_len, ip_len, ip_len + 4, ip_len + _TCP_CSUM_OFFSET]
    if version == 4:
        names += ["id", "ip_csum"]
        formats += [">u2", ">u2"]
        offsets += [4, 10]
    layout = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": stride})
    seq_steps = np.arange(0, count * gso_size, gso_size, dtype=np.uint32)
    seq_steps.flags.writeable = False
    return layout, np.dtype((np.uint8, (gso_size,))), seq_steps, bytes(stride - hdr_len)


def handle_virtio_read_run(record: bytes | bytearray | memoryview) -> SplitRun | list[bytes]:
    """``handle_virtio_read``, but a TCP super-packet comes back as one ``gso_split_into`` run where it can.

    Raises:
        OffloadError: as ``handle_virtio_read``.
    """
    if len(record) > VIRTIO_NET_HDR_SIZE and record[1]:
        fields = _VIRTIO_NET_HDR.unpack_from(record)
        run = gso_split_into(memoryview(record)[VIRTIO_NET_HDR_SIZE:], VirtioNetHdr(*fields))
        if run is not None:
            return run
    return handle_virtio_read(record)


def _native_row_sums(packet: bytes | memoryview, start: int, size: int, count: int) -> Any:
    """numpy's one row sum over ``count`` payloads of an even ``size`` from an even ``start``, read in place as
    native 16-bit words (times ``_NATIVE_TO_BIG``, congruent to each payload's big-endian word sum; see
    ``_payload_sums``): a uint32 array, which cannot overflow (a row has at most 32767 words below 2**16)."""
    np = _np
    words = np.frombuffer(packet, np.uint16, count * size // 2, start).reshape(count, size // 2)
    return words.sum(axis=1, dtype=np.uint32)


def _payload_sums(packet: bytes, start: int, size: int, count: int) -> tuple[list[int], int]:
    """The word sums of ``count`` payloads of ``size`` bytes from ``packet[start:]``, and the factor that makes
    each congruent (mod 0xFFFF) to its big-endian 16-bit word sum (RFC 1071; an odd size is padded with zero).

    With numpy and an even ``size`` (and ``start``, which a header length always is): one row sum over the payloads
    read in place as native 16-bit words, whose sum on a little-endian host is the byte-swapped one, 256 times the
    big-endian sum modulo 0xFFFF. uint32 cannot overflow: a row has at most 32767 words below 2**16. Otherwise one
    ``int.from_bytes`` and fold per payload.
    """
    if not count:
        return [], 1
    np = _np
    if np is not None and not size & 1 and not start & 1 and count >= VECTOR_SUM_MIN_SEGMENTS:
        return _native_row_sums(packet, start, size, count).tolist(), _NATIVE_TO_BIG
    plan = _fold_plan(size)
    odd = size & 1
    from_bytes = int.from_bytes
    sums = []
    for at in range(start, start + count * size, size):
        x = from_bytes(packet[at : at + size], "big")
        if odd:
            x <<= 8  # RFC 1071: pad an odd byte with zero on the right
        for shift, mask in plan:
            x = (x >> shift) + (x & mask)
        sums.append(x)
    return sums, 1


def _split_udp(packet: bytes, hdr: VirtioNetHdr) -> list[bytes]:
    version = packet[0] >> 4
    ip_len = _check_gso_headers(packet, hdr, version, IPPROTO_UDP)
    size = len(packet)
    hdr_len = ip_len + 8
    if hdr.csum_offset != _UDP_CSUM_OFFSET or hdr_len >= size:
        raise OffloadError("UDP GSO packet: bad csum_offset or no payload")
    gso_size = hdr.gso_size
    headers = packet[:hdr_len]
    ports = headers[ip_len : ip_len + 4]
    # Pseudo-header (addresses, protocol; its length is added per segment) and the ports.
    udp_fixed = _address_sum(headers, version) + IPPROTO_UDP + int.from_bytes(ports, "big") % 0xFFFF
    segments: list[bytes] = []
    if version == 4:
        (ip_id,) = _U16.unpack_from(headers, 4)
        ip_fixed = _sum_mod(headers[:ip_len]) - int.from_bytes(headers[2:6], "big") - _U16.unpack_from(headers, 10)[0]
        pack = struct.Struct(f"!2sHH4sH{ip_len - 8}sHH").pack
        ip_rest = headers[12:ip_len] + ports
        for start in range(hdr_len, size, gso_size):
            payload = packet[start : start + gso_size]
            udp_length = 8 + len(payload)
            total = ip_len + udp_length
            udp_csum = (-(udp_fixed + 2 * udp_length + _sum_mod(payload))) % 0xFFFF or 0xFFFF  # RFC 768: 0 is "none"
            ip_csum = (-(ip_fixed + total + ip_id)) % 0xFFFF
            segments.append(
                pack(headers[0:2], total, ip_id, headers[6:10], ip_csum, ip_rest, udp_length, udp_csum) + payload
            )
            ip_id = (ip_id + 1) & 0xFFFF
        return segments
    pack = struct.Struct(f"!4sH{ip_len - 2}sHH").pack
    ip_rest = headers[6:ip_len] + ports
    for start in range(hdr_len, size, gso_size):
        payload = packet[start : start + gso_size]
        udp_length = 8 + len(payload)
        udp_csum = (-(udp_fixed + 2 * udp_length + _sum_mod(payload))) % 0xFFFF or 0xFFFF
        segments.append(
            pack(headers[0:4], ip_len - _IPV6_HEADER_SIZE + udp_length, ip_rest, udp_length, udp_csum) + payload
        )
    return segments


# -- write side: coalesce --------------------------------------------------------------------------------------------

# IPv4 without options + TCP, in as few fields as the gluing rules need: version|IHL|TOS, total length, flags|fragment
# offset|TTL|protocol (one word), addresses+ports (the flow key), seq, ack|data offset|flags|window (one 64-bit
# word), checksum. The urgent pointer and the options follow at offset 38 and are compared as bytes.
_IPV4_TCP: Final = struct.Struct("!HH2xI2x12sIQH")
# IPv6 with TCP as next header: version|traffic class|flow label, payload length, hop limit, addresses+ports, seq,
# ack|data offset|flags|window, checksum; the urgent pointer and options follow at offset 58.
_IPV6_TCP: Final = struct.Struct("!IHxB36sIQH")
_PSH_IN_WORD: Final = _TCP_PSH << 16  # the PSH bit in the ack|data offset|flags|window word
# IPv6 extension headers that can stand between the fixed header and TCP (RFC 8200 §4): hop-by-hop, routing,
# fragment, authentication, destination options.
_IPV6_EXTENSION_HEADERS: Final = frozenset((0, 43, 44, 51, 60))


class _Flow:
    """A super-packet being glued (wireguard-go ``tcpGROItem``): the first segment and the ones glued after it."""

    __slots__ = (
        "first",
        "glued",
        "gso_size",
        "hdr_len",
        "ip_len",
        "length",
        "match",
        "next_seq",
        "odd_terms",
        "open",
        "psh",
        "terms",
    )

    def __init__(
        self, first: bytes, ip_len: int, hdr_len: int, match: tuple[int, int, bytes], next_seq: int, terms: int
    ) -> None:
        self.first = first
        self.ip_len = ip_len
        self.hdr_len = hdr_len
        self.match = match  # what every segment glued after the first must have equal (see ``handle_gro``)
        self.next_seq = next_seq
        self.gso_size = len(first) - hdr_len  # every glued payload but the last must be this size
        self.length = len(first)  # IP packet length so far
        self.open = True  # False once PSH, a short segment or another packet of the flow has ended it
        self.psh = 0
        self.glued: list[bytes] = []  # the packets glued after the first (their payloads are sliced at the end)
        self.terms = terms  # checksum terms of the segments whose payload starts at an even offset
        self.odd_terms = 0  # ... at an odd offset of the super-packet (odd gso_size only)

    def spill(self, next_seq: int, length: int, terms: int) -> None:
        """Take back what ``handle_gro``'s fast path kept in locals while it glued segments onto this flow."""
        self.next_seq = next_seq
        self.length = length
        self.terms = terms


def handle_gro(packets: Sequence[bytes], *, needs_csum: bool = False) -> list[bytes]:
    """Coalesce TCP segments of one flow into super-packets; return the records to write, header included.

    Every record starts with a 10-byte virtio_net_hdr: all zero for a packet written alone (unchanged), or
    gso_type TCPV4/TCPV6 with ``gso_size`` = the first segment's payload size for a glued one. Records come out in
    the order of their first packet; the packets of one flow keep their order (a segment is only appended to the
    super-packet its flow has open, and any other packet of the flow closes it). The IPv4 identification of glued
    segments after the first is not kept: the super-packet carries the first one's, and the kernel numbers
    segments from it if it ever cuts the super-packet up again (wireguard-go does the same; for the DF packets of
    TCP the field has no meaning, RFC 6864).

    Args:
        packets: IP packets to hand to the kernel, in order.
        needs_csum: how the glued packets' TCP checksum is made (see the module docstring): ``False`` writes a
            complete checksum derived from the segments' own (so a bad one is still caught by the kernel),
            ``True`` writes ``NEEDS_CSUM`` with the pseudo-header seed and the kernel trusts the payload.

    Returns:
        The records, each ready for one ``write()``.
    """
    out: list[bytes | _Flow] = []
    append = out.append
    flows: dict[bytes, _Flow] = {}
    zero = ZERO_VIRTIO_NET_HDR
    # The open IPv4 flow of an even gso_size that the previous packet went to, with the fields a segment that
    # continues it reads and writes held in locals (``hot``) and written back (``_Flow.spill``) before any other
    # packet is looked at: bulk TCP is long runs of one flow, and this path does about half the work per segment.
    hot: _Flow | None = None
    hot_key = b""
    hot_tail = b""
    hot_glued: list[bytes] = []
    hot_next = hot_gso = hot_length = hot_terms = hot_head = hot_fields = hot_word = hot_tcp_len = 0
    not_psh = ~_PSH_IN_WORD
    for packet in packets:
        size = len(packet)
        if size >= 40 and packet[0] == 0x45 and packet[9] == IPPROTO_TCP:
            head, total, fields, key, seq, word, csum = _IPV4_TCP.unpack_from(packet)
            if hot is not None and key == hot_key:
                hdr_len = 20 + ((word >> 26) & 0x3C)
                payload_size = size - hdr_len
                # The flow's match, compared field by field (IP words, the ack|offset|flags|window word but PSH,
                # urgent pointer and options): equal => the same data offset, flags ACK (PSH allowed) and no
                # fragment, as the flow's first packet; the rest is the general path's gluing condition.
                if (
                    seq == hot_next
                    and total == size
                    and 0 < payload_size <= hot_gso
                    and hot_length + payload_size <= MAX_PACKET_SIZE
                    and fields == hot_fields
                    and word & not_psh == hot_word
                    and head == hot_head
                    and packet[38:hdr_len] == hot_tail
                ):
                    flags = (word >> 16) & 0xFF
                    # The general path's terms modulo 0xFFFF, which is all _finish uses: seq = (seq >> 16) +
                    # (seq & 0xFFFF) there (2**16 = 1), and the TCP header length is the flow's.
                    hot_terms += payload_size + hot_tcp_len + seq + flags + csum
                    hot_glued.append(packet)
                    hot_length += payload_size
                    hot_next = (seq + payload_size) & 0xFFFFFFFF
                    if flags & _TCP_PSH or payload_size < hot_gso:
                        hot.spill(hot_next, hot_length, hot_terms)
                        hot.psh = flags & _TCP_PSH
                        hot.open = False  # PSH or a short segment ends a super-packet
                        hot, hot_key = None, b""
                    continue
            if hot is not None:
                hot.spill(hot_next, hot_length, hot_terms)
                hot, hot_key = None, b""
            if (fields >> 16) & _IPV4_DF_MF_OFFSET_MASK:
                _close_all(flows)  # a fragment: its flow cannot be told, so no flow may overtake it
                append(zero + packet)
                continue
            ip_len = 20
            consistent = total == size
            head = (head << 32) | fields  # TOS, DF and reserved bits, TTL: equal in every glued segment
        else:
            if hot is not None:
                hot.spill(hot_next, hot_length, hot_terms)
                hot, hot_key = None, b""
            if size >= 60 and packet[0] >> 4 == 6 and packet[6] == IPPROTO_TCP:
                head, payload_length, hop_limit, key, seq, word, csum = _IPV6_TCP.unpack_from(packet)
                ip_len = _IPV6_HEADER_SIZE
                consistent = payload_length == size - _IPV6_HEADER_SIZE
                head = (head << 8) | hop_limit  # version, traffic class, flow label, hop limit
            else:
                if size >= 20 and (
                    (packet[0] >> 4 == 4 and packet[9] == IPPROTO_TCP)  # IPv4 with options
                    or (packet[0] >> 4 == 6 and packet[6] in _IPV6_EXTENSION_HEADERS)
                ):
                    _close_all(flows)
                append(zero + packet)
                continue
        flags = (word >> 16) & 0xFF
        hdr_len = ip_len + ((word >> 26) & 0x3C)
        payload_size = size - hdr_len
        flow = flows.get(key)
        if flags & ~_TCP_PSH != _TCP_ACK or payload_size <= 0 or hdr_len < ip_len + 20 or not consistent:
            # Not a GRO candidate (SYN, FIN, RST, URG, ECE, CWR, a pure ACK, a length that does not add up): alone,
            # and it ends its flow's open super-packet so that nothing later of that flow can overtake it.
            if flow is not None:
                flow.open = False
            append(zero + packet)
            continue
        # (IP fields, ack|data offset|flags-but-PSH|window, urgent pointer and options): equal in every glued
        # segment, so that with the addresses and ports every header word but seq, flags and checksum is equal.
        match = (head, word & ~_PSH_IN_WORD, packet[ip_len + 18 : hdr_len])
        if (
            flow is not None
            and flow.open
            and seq == flow.next_seq
            and match == flow.match
            and payload_size <= flow.gso_size
            and flow.length + payload_size <= MAX_PACKET_SIZE
        ):
            terms = payload_size + hdr_len - ip_len + (seq >> 16) + (seq & 0xFFFF) + flags + csum
            if (flow.length - hdr_len) & 1:
                flow.odd_terms += terms
            else:
                flow.terms += terms
            flow.glued.append(packet)
            flow.length += payload_size
            flow.next_seq = (seq + payload_size) & 0xFFFFFFFF
            if flags & _TCP_PSH or payload_size < flow.gso_size:
                flow.psh = flags & _TCP_PSH
                flow.open = False  # PSH or a short segment ends a super-packet
                continue
        else:
            flow = _Flow(
                packet,
                ip_len,
                hdr_len,
                match,
                (seq + payload_size) & 0xFFFFFFFF,
                payload_size + hdr_len - ip_len + (seq >> 16) + (seq & 0xFFFF) + flags + csum,
            )
            flows[key] = flow
            append(flow)
            if flags & _TCP_PSH:
                flow.psh = _TCP_PSH
                flow.open = False
                continue
        if ip_len == 20 and not flow.gso_size & 1:  # open, IPv4, even: the next segment may take the fast path
            hot, hot_key, hot_glued = flow, key, flow.glued
            hot_next, hot_gso, hot_length, hot_terms = flow.next_seq, flow.gso_size, flow.length, flow.terms
            first_head, hot_word, hot_tail = flow.match
            hot_head, hot_fields, hot_tcp_len = first_head >> 32, first_head & 0xFFFFFFFF, flow.hdr_len - 20
    if hot is not None:
        hot.spill(hot_next, hot_length, hot_terms)
    return [_finish(item, needs_csum) if isinstance(item, _Flow) else item for item in out]


#: The bytes every segment glued into one IPv4 super-packet has equal to the first (``handle_gro``'s match, the
#: flow key and the IP fields it keeps): version/IHL, TOS, the flags and fragment word, TTL, protocol, addresses,
#: ports, ack, data offset and window; the urgent pointer and options from byte 38 are added per header length.
_RUN_EQUAL_V4: Final = (0, 1, 6, 7, 8, 9, *range(12, 24), *range(28, 33), 34, 35)
_ACK_OR_PSH: Final = bytes((_TCP_ACK, _TCP_ACK | _TCP_PSH))  # the flags a GRO candidate may have


def handle_gro_run(
    buffer: bytes | bytearray | memoryview,
    count: int,
    stride: int,
    size: int,
    last_size: int,
    *,
    needs_csum: bool = False,
) -> list[bytes]:
    """``handle_gro`` of the ``count`` packets of a run (packet ``i`` at ``i * stride`` in ``buffer``, ``size``
    bytes long, the last ``last_size``), byte for byte (the tests compare the two): each record of
    ``gro_run_parts`` joined."""
    return [b"".join(parts) for parts in gro_run_parts(buffer, count, stride, size, last_size, needs_csum=needs_csum)]


def gro_run_parts(
    buffer: bytes | bytearray | memoryview,
    count: int,
    stride: int,
    size: int,
    last_size: int,
    *,
    needs_csum: bool = False,
) -> list[list[bytes | memoryview]]:
    """The records of ``handle_gro_run``, each as the parts that make it, for one ``writev`` each: a glued
    super-packet is its virtio_net_hdr and headers, then its full-size segments' payloads gathered into one
    ``bytes`` (one numpy copy: cheaper than a memoryview of each payload and a writev of 45 parts), then a shorter
    last payload as a view of the buffer.

    The case taken here is bulk TCP over IPv4: every packet a segment of one flow (no IP options, no fragment,
    flags ACK or ACK|PSH, consecutive sequence numbers, an even segment size, every header byte of the match
    equal), checked for all rows at once with numpy. The super-packets are cut where ``handle_gro`` cuts them
    (after a PSH or a short segment, and before 64 KiB), each one's checksum made from its segments' own.
    Anything else goes to ``handle_gro`` packet by packet (one part a record).
    """
    view = memoryview(buffer)
    bulk = _bulk_run(view, count, stride, size, last_size)
    if bulk is None:
        return [[record] for record in _gro_rows(view, count, stride, size, last_size, needs_csum)]
    hdr_len, flags, csum_high, csum_low = bulk
    gso_size = size - hdr_len
    last = (count - 1) * stride
    more = (MAX_PACKET_SIZE - size) // gso_size  # full segments a super-packet takes after its first (64 KiB)
    tcp_len = hdr_len - 20
    (seq0,) = _SEQ.unpack_from(view, 24)
    # Row i's seq is seq0 + i * gso_size modulo 2**32 (checked): from row ``wrap`` on it has wrapped, which takes
    # 2**32 = 1 (mod 0xFFFF) off its sum.
    wrap = -(-(0x100000000 - seq0) // gso_size)
    gathered = count if last_size == size else count - 1  # rows whose payload is gathered with the full ones
    records: list[list[bytes | memoryview]] = []
    start = 0
    while start < count:
        end = start + 1
        if start < count - 1 and flags[start] != _TCP_ACK | _TCP_PSH:
            end = min(start + 1 + more, count - 1)  # the full segments after the first, up to the run's last one
            if end == count - 1 and size + (end - start - 1) * gso_size + last_size - hdr_len <= MAX_PACKET_SIZE:
                end = count  # the run's last segment (perhaps shorter) fits too
            pushed = flags.find(_TCP_ACK | _TCP_PSH, start + 1, end)  # a PSH ends its super-packet
            if pushed >= 0:
                end = pushed + 1
        at = start * stride
        segments = end - start
        if segments == 1:
            records.append([ZERO_VIRTIO_NET_HDR, view[at : at + (size if start < count - 1 else last_size)]])
            start = end
            continue
        payload = (end - start - 1) * gso_size + (last_size if end == count else size) - hdr_len
        psh = flags[end - 1] & _TCP_PSH
        # handle_gro's checksum terms modulo 0xFFFF: payload, TCP header length, flags, seq and checksum of each.
        terms = (
            payload
            + segments * (tcp_len + _TCP_ACK)
            + psh
            + segments * seq0
            + gso_size * (start + end - 1) * segments // 2
            - max(0, end - max(start, wrap))
            + (sum(csum_high[start:end]) << 8)
            + sum(csum_low[start:end])
        )
        front = _bulk_front(view, at, hdr_len, hdr_len + payload, gso_size, psh, segments, terms, needs_csum)
        # The full-size payloads gathered into one bytes object (one copy, which costs less than a view of each and
        # a writev of them all), then a shorter last one as a view.
        full = min(end, gathered) - start
        rows = _np.ndarray((full, gso_size), _np.uint8, view, at + hdr_len, (stride, 1))
        if full == segments:
            records.append([front, rows.tobytes()])
        else:
            records.append([front, rows.tobytes(), view[last + hdr_len : last + last_size]])
        start = end
    return records


def _bulk_run(
    view: memoryview, count: int, stride: int, size: int, last_size: int
) -> tuple[int, bytes, bytes, bytes] | None:
    """The fast path's checks of ``gro_run_parts``: ``None`` unless the run is bulk IPv4 TCP of one flow (see there);
    else the header length, and every row's TCP flags and the high and low bytes of its TCP checksum."""
    np = _np
    if (
        np is None
        or count < 2
        or len(view) < count * stride
        or not 40 <= last_size <= size <= stride
        or view[0] != 0x45
        or view[9] != IPPROTO_TCP
    ):
        return None
    hdr_len = 20 + ((view[32] >> 2) & 0x3C)
    gso_size = size - hdr_len
    if hdr_len < 40 or gso_size <= 0 or gso_size & 1 or last_size <= hdr_len or (view[6] << 8 | view[7]) & 0x3FFF:
        return None
    last = (count - 1) * stride
    flags = bytes(view[33 : count * stride : stride])
    if (
        (view[2] << 8 | view[3]) != size
        or (view[last + 2] << 8 | view[last + 3]) != last_size
        or view[2:last:stride] != bytes((view[2],)) * (count - 1)  # every full row's total length: ``size``
        or view[3:last:stride] != bytes((view[3],)) * (count - 1)
        or flags.translate(None, _ACK_OR_PSH)  # a flag but ACK and PSH: not a GRO candidate
    ):
        return None
    # Every header byte of the match equal to the first row's: the headers as 64-bit words (unaligned when the
    # stride is not a multiple of 8, as a 1,420-byte one is: numpy reads them all the same), masked, as bytes equal
    # to the first row's repeated; and every row's seq the first one's plus its offset in the run.
    words, mask, seq_steps = _match_plan(hdr_len, gso_size, count)
    if last + words * 8 > len(view):  # the last row's words would run past the buffer (a small last packet)
        return None
    masked = np.bitwise_and(np.ndarray((count, words), np.uint64, view, 0, (stride, 8)), mask).tobytes()
    seqs = np.ndarray((count,), ">u4", view, 24, (stride,))
    if (
        masked != masked[: words * 8] * count
        or np.subtract(seqs, seq_steps).tobytes() != _NATIVE_U32.pack(*_SEQ.unpack_from(view, 24)) * count  # wraps
    ):
        return None
    # Each row's checksum as its high and low bytes (summed per super-packet by ``gro_run_parts``).
    return hdr_len, flags, bytes(view[36 : count * stride : stride]), bytes(view[37 : count * stride : stride])


@functools.lru_cache(maxsize=64)
def _match_plan(hdr_len: int, gso_size: int, count: int) -> tuple[int, Any, Any]:
    """The 64-bit words that hold an IPv4 TCP header of ``hdr_len`` bytes, a mask (native byte order, as the words
    are read) that keeps the bytes of ``_RUN_EQUAL_V4`` and the urgent pointer and options, and each of ``count``
    rows' seq offset from the first (read-only uint32)."""
    np = _np
    words = -(-hdr_len // 8)
    keep = bytearray(words * 8)
    for offset in (*_RUN_EQUAL_V4, *range(38, hdr_len)):
        keep[offset] = 0xFF
    seq_steps = np.arange(0, count * gso_size, gso_size, dtype=np.uint32)
    seq_steps.flags.writeable = False
    return words, np.frombuffer(bytes(keep), np.uint64), seq_steps


def _bulk_front(
    view: memoryview,
    at: int,
    hdr_len: int,
    length: int,
    gso_size: int,
    psh: int,
    segments: int,
    terms: int,
    needs_csum: bool,
) -> bytes:
    """``_glued_front`` of a super-packet of ``gro_run_parts``, whose first segment is at ``at`` in ``view`` (IPv4
    without options, flags ACK, an even ``gso_size``): the same bytes, from one unpack of the first segment's
    headers, a few integer sums (``int.from_bytes`` of a header is congruent to its 16-bit word sum modulo 0xFFFF)
    and one pack."""
    layout = _bulk_header(hdr_len)
    ihl_tos, total, id_ttl, ip_csum, addresses, ports, seq, ack, flags, window, csum, tail = layout.unpack_from(
        view, at
    )
    tcp_length = length - 20
    ip_sum = int.from_bytes(view[at : at + 20], "big") - total - ip_csum + length
    if needs_csum:
        hdr = _VIRTIO_NET_HDR.pack(
            VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hdr_len, gso_size, 20, _TCP_CSUM_OFFSET
        )
        csum = (addresses + IPPROTO_TCP + tcp_length) % 0xFFFF or 0xFFFF  # 2**32 = 1: the two addresses' sum
    else:
        # _glued_front's sum for an even gso_size: the segments' payloads sum to -(segments * shared + terms),
        # where "shared" is the TCP header's words but seq, flags and checksum, and the pseudo-header but its
        # length (all modulo 0xFFFF, where a seq counts as itself and a whole header as its int.from_bytes).
        hdr = _VIRTIO_NET_HDR.pack(0, VIRTIO_NET_HDR_GSO_TCPV4, hdr_len, gso_size, 0, 0)
        shared = addresses + IPPROTO_TCP + int.from_bytes(view[at + 20 : at + hdr_len], "big") - seq - flags - csum
        csum = ((segments - 1) * shared + terms - tcp_length - seq - (flags | psh)) % 0xFFFF
    ip_csum = (-ip_sum) % 0xFFFF
    return hdr + layout.pack(
        ihl_tos, length, id_ttl, ip_csum, addresses, ports, seq, ack, flags | psh, window, csum, tail
    )


@functools.lru_cache(maxsize=16)
def _bulk_header(hdr_len: int) -> struct.Struct:
    """The headers of an IPv4 TCP segment of ``hdr_len`` bytes as the fields ``_bulk_front`` reads or changes:
    version to the ports but total length and header checksum (in three pieces), seq, ack to flags, flags, window,
    checksum, and the urgent pointer and options."""
    return struct.Struct(f"!2sH6sHQ4sI5sB2sH{hdr_len - 38}s")


def _gro_rows(view: memoryview, count: int, stride: int, size: int, last_size: int, needs_csum: bool) -> list[bytes]:
    """``handle_gro`` of a run's packets, each copied out of the buffer."""
    packets = [bytes(view[i * stride : i * stride + size]) for i in range(count - 1)]
    packets.append(bytes(view[(count - 1) * stride : (count - 1) * stride + last_size]))
    return handle_gro(packets, needs_csum=needs_csum)


def _close_all(flows: dict[bytes, _Flow]) -> None:
    for flow in flows.values():
        flow.open = False


def _finish(flow: _Flow, needs_csum: bool) -> bytes:
    """The record for one flow: the first packet alone, or the glued super-packet behind its GSO header."""
    first = flow.first
    glued = flow.glued
    if not glued:
        return ZERO_VIRTIO_NET_HDR + first
    hdr_len = flow.hdr_len
    segments = len(glued) + 1
    front = _glued_front(
        first,
        flow.ip_len,
        hdr_len,
        flow.length,
        flow.gso_size,
        flow.psh,
        segments,
        flow.terms,
        flow.odd_terms,
        needs_csum,
    )
    return b"".join([front, first[hdr_len:], *[packet[hdr_len:] for packet in glued]])


def _glued_front(
    first: bytes | bytearray | memoryview,
    ip_len: int,
    hdr_len: int,
    length: int,
    gso_size: int,
    psh: int,
    segments: int,
    terms: int,
    odd_terms: int,
    needs_csum: bool,
) -> bytes:
    """The virtio_net_hdr and the headers of a super-packet of ``segments`` segments glued behind ``first``
    (``length`` bytes of IP packet in all, PSH added if ``psh``): the first segment's headers with the total
    length, the IPv4 header checksum and the TCP checksum made for the whole. ``terms`` and ``odd_terms`` are the
    segments' checksum terms (``handle_gro``), those whose payload starts at an even and at an odd offset."""
    version = 4 if ip_len == 20 else 6
    tcp_length = length - ip_len
    headers = bytearray(first[:hdr_len])
    if psh:
        headers[ip_len + 13] |= _TCP_PSH
    if version == 4:
        headers[2:4] = _U16.pack(length)
        headers[10:12] = b"\x00\x00"
        headers[10:12] = _U16.pack((-_sum_mod(headers[:ip_len])) % 0xFFFF)
        gso_type = VIRTIO_NET_HDR_GSO_TCPV4
    else:
        headers[4:6] = _U16.pack(tcp_length)
        gso_type = VIRTIO_NET_HDR_GSO_TCPV6
    address_sum = _address_sum(first, version)
    if needs_csum:
        # CHECKSUM_PARTIAL: the folded (not complemented) pseudo-header sum, as __tcp_v4_send_check leaves it.
        headers[ip_len + 16 : ip_len + 18] = _U16.pack((address_sum + IPPROTO_TCP + tcp_length) % 0xFFFF or 0xFFFF)
        hdr = _VIRTIO_NET_HDR.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, ip_len, _TCP_CSUM_OFFSET)
    else:
        # A valid segment i satisfies pseudo_i + header_i + payload_i = 0 (mod 0xFFFF), so its payload sums to
        # -(shared + terms_i): "shared" is what all segments of the flow have in common (address sum, protocol,
        # and the TCP header words other than seq, flags and checksum, equal by the rules above) and terms_i is
        # the rest (TCP length, seq, flags, checksum). A payload starting at an odd offset of the super-packet
        # counts 256 times (its bytes fall in the other halves of the 16-bit words; 2**16 = 1 mod 0xFFFF).
        (seq,) = _SEQ.unpack_from(first, ip_len + 4)
        shared = (
            address_sum
            + IPPROTO_TCP
            + _sum_mod(first[ip_len:hdr_len])
            - (seq >> 16)
            - (seq & 0xFFFF)
            - first[ip_len + 13]
            - _U16.unpack_from(first, ip_len + 16)[0]
        )
        odd_segments = segments // 2 if gso_size & 1 else 0
        payload_sum = -((segments - odd_segments) * shared + terms) - 256 * (odd_segments * shared + odd_terms)
        total = shared + tcp_length + (seq >> 16) + (seq & 0xFFFF) + headers[ip_len + 13] + payload_sum
        headers[ip_len + 16 : ip_len + 18] = _U16.pack((-total) % 0xFFFF)
        hdr = _VIRTIO_NET_HDR.pack(0, gso_type, hdr_len, gso_size, 0, 0)
    return hdr + headers
