"""tun.offload: TCP segmentation of kernel super-packets (read side) and coalescing of segments (write side).

The oracles here are independent of the module: packets are built with ``struct`` and checksummed by a plain RFC 1071
routine, and ``_reference_split`` cuts a super-packet the way the kernel's ``tcp_gso_segment``/``inet_gso_segment``
do, written the slow and obvious way (fresh headers per segment). ``gso_split`` must produce exactly its bytes, and
everything ``handle_gro`` writes must expand (through the same reference) back to exactly the packets it was given.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tun.offload
from tun.offload import (
    MAX_PACKET_SIZE,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VIRTIO_NET_HDR_SIZE,
    ZERO_VIRTIO_NET_HDR,
    OffloadError,
    VirtioNetHdr,
    gso_none_checksum,
    gso_split,
    handle_gro,
    handle_virtio_read,
)

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
TCP, UDP, ICMP = 6, 17, 1
SRC4, DST4 = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
SRC6, DST6 = socket.inet_pton(socket.AF_INET6, "fd00::1"), socket.inet_pton(socket.AF_INET6, "fd00::2")
TIMESTAMPS = struct.pack("!BBBBII", 1, 1, 8, 10, 0x01020304, 0x05060708)  # NOP, NOP, TS (RFC 7323)
VNET = struct.Struct("=BBHHHH")  # struct virtio_net_hdr in host order, written out independently of the module


# -- independent oracles ---------------------------------------------------------------------------------------


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), the slow and obvious way."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_header_length(packet: bytes) -> int:
    return (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40


def pseudo_header(packet: bytes, protocol: int, length: int) -> bytes:
    if packet[0] >> 4 == 4:
        return packet[12:20] + struct.pack("!xBH", protocol, length)
    return packet[8:40] + struct.pack("!I3xB", length, protocol)


def transport_checksum_ok(packet: bytes) -> bool:
    ip_len = ip_header_length(packet)
    protocol = packet[9] if packet[0] >> 4 == 4 else packet[6]
    return checksum(pseudo_header(packet, protocol, len(packet) - ip_len) + packet[ip_len:]) == 0


def assert_valid(packet: bytes) -> None:
    ip_len = ip_header_length(packet)
    if packet[0] >> 4 == 4:
        assert struct.unpack_from("!H", packet, 2)[0] == len(packet)
        assert checksum(packet[:ip_len]) == 0, "IPv4 header checksum"
    else:
        assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40
    assert transport_checksum_ok(packet), "TCP/UDP checksum"


def fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def tcp_packet(
    version: int = 4,
    *,
    seq: int = 1000,
    ack: int = 7,
    flags: int = ACK,
    payload: bytes = b"",
    options: bytes = b"",
    window: int = 502,
    ip_id: int = 0x1234,
    ttl: int = 64,
    tos: int = 0,
    ip_flags: int = 0x4000,
    ports: tuple[int, int] = (40000, 80),
    addresses: tuple[bytes, bytes] | None = None,
    ip_options: bytes = b"",
    urgent: int = 0,
    seed: bool = False,
) -> bytes:
    """An IPv4/IPv6 + TCP packet. ``seed=True`` leaves the TCP checksum as CHECKSUM_PARTIAL does: the folded
    (not complemented) pseudo-header sum; otherwise the checksum is complete."""
    tcp_len = 20 + len(options)
    tcp = struct.pack("!HHIIBBHHH", *ports, seq, ack, (tcp_len // 4) << 4, flags, window, 0, urgent) + options + payload
    if version == 4:
        src, dst = addresses or (SRC4, DST4)
        ip_len = 20 + len(ip_options)
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x40 | ip_len // 4, tos, ip_len + len(tcp), ip_id, ip_flags, ttl, TCP, 0, src, dst
        )
        header += ip_options
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    else:
        src, dst = addresses or (SRC6, DST6)
        header = struct.pack("!IHBB16s16s", 0x60000000 | tos << 20, len(tcp), TCP, ttl, src, dst)
    pseudo = pseudo_header(header, TCP, len(tcp))
    if seed:
        value = fold(sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo)))
    else:
        value = checksum(pseudo + tcp)
    return header + tcp[:16] + struct.pack("!H", value) + tcp[18:]


def udp_packet(version: int, payload: bytes, *, seed: bool = False, ip_id: int = 0x2222) -> bytes:
    udp = struct.pack("!HHHH", 5353, 9999, 8 + len(payload), 0) + payload
    if version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ip_id, 0, 64, UDP, 0, SRC4, DST4)
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    else:
        header = struct.pack("!IHBB16s16s", 0x60000000, len(udp), UDP, 64, SRC6, DST6)
    pseudo = pseudo_header(header, UDP, len(udp))
    value = fold(sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo))) if seed else (checksum(pseudo + udp) or 0xFFFF)
    return header + udp[:6] + struct.pack("!H", value) + udp[8:]


def tso_record(packet: bytes, mss: int) -> bytes:
    """What the kernel hands an offload TUN reader: NEEDS_CSUM, TCPV4/6, the MSS, then the seeded super-packet."""
    ip_len = ip_header_length(packet)
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if packet[0] >> 4 == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    return VNET.pack(1, gso_type, ip_len + tcp_len, mss, ip_len, 16) + packet


def reference_split(packet: bytes, mss: int) -> list[bytes]:
    """tcp_gso_segment + inet_gso_segment, slowly: one fresh header per segment."""
    version = packet[0] >> 4
    ip_len = ip_header_length(packet)
    tcp_len = (packet[ip_len + 12] >> 4) * 4
    headers, payload = packet[: ip_len + tcp_len], packet[ip_len + tcp_len :]
    chunks = [payload[at : at + mss] for at in range(0, len(payload), mss)]
    flags = headers[ip_len + 13]
    (seq,) = struct.unpack_from("!I", headers, ip_len + 4)
    (ip_id,) = struct.unpack_from("!H", headers, 4)
    segments = []
    for index, chunk in enumerate(chunks):
        ip = bytearray(headers[:ip_len])
        tcp = bytearray(headers[ip_len:])
        segment_flags = flags
        if index < len(chunks) - 1:
            segment_flags &= ~(FIN | PSH)
        if index > 0:
            segment_flags &= ~CWR
        if version == 4:
            ip[2:4] = struct.pack("!H", ip_len + tcp_len + len(chunk))
            ip[4:6] = struct.pack("!H", (ip_id + index) & 0xFFFF)
            ip[10:12] = b"\x00\x00"
            ip[10:12] = struct.pack("!H", checksum(bytes(ip)))
        else:
            ip[4:6] = struct.pack("!H", tcp_len + len(chunk))
        tcp[4:8] = struct.pack("!I", (seq + index * mss) & 0xFFFFFFFF)
        tcp[13] = segment_flags
        tcp[16:18] = b"\x00\x00"
        tcp[16:18] = struct.pack("!H", checksum(pseudo_header(bytes(ip), TCP, tcp_len + len(chunk)) + tcp + chunk))
        segments.append(bytes(ip + tcp + chunk))
    return segments


def expand(records: Sequence[bytes]) -> list[bytes]:
    """The packets the kernel sees from ``records``: each plain one, and each super-packet re-cut by the reference."""
    packets = []
    for record in records:
        flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(record)
        packet = record[VIRTIO_NET_HDR_SIZE:]
        if gso_type == VIRTIO_NET_HDR_GSO_NONE:
            assert (flags, hdr_len, gso_size, csum_start, csum_offset) == (0, 0, 0, 0, 0)
            packets.append(packet)
            continue
        ip_len = ip_header_length(packet)
        assert gso_type == (VIRTIO_NET_HDR_GSO_TCPV4 if packet[0] >> 4 == 4 else VIRTIO_NET_HDR_GSO_TCPV6)
        assert hdr_len == ip_len + (packet[ip_len + 12] >> 4) * 4
        assert len(packet) - hdr_len > gso_size, "a GSO record must hold more than one segment"
        assert len(packet) <= MAX_PACKET_SIZE
        assert flags == 0 and csum_start == csum_offset == 0
        assert_valid(packet)  # the complete checksum over the whole super-packet
        packets.extend(reference_split(packet, gso_size))
    return packets


# -- virtio_net_hdr --------------------------------------------------------------------------------------------


def test_virtio_net_hdr_layout_is_ten_bytes_in_host_order() -> None:
    hdr = VirtioNetHdr(1, 4, 0x0102, 0x0304, 0x0506, 0x0708)
    order = sys.byteorder
    expected = bytes([1, 4]) + b"".join(v.to_bytes(2, order) for v in (0x0102, 0x0304, 0x0506, 0x0708))
    assert hdr.pack() == expected
    assert VIRTIO_NET_HDR_SIZE == len(expected) == 10
    assert VirtioNetHdr.unpack(expected + b"rest") == hdr
    assert ZERO_VIRTIO_NET_HDR == VirtioNetHdr().pack() == bytes(10)
    with pytest.raises(OffloadError):
        VirtioNetHdr.unpack(expected[:9])


# -- read side -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("options", [b"", TIMESTAMPS], ids=["no-options", "timestamps"])
@pytest.mark.parametrize(
    "flags", [ACK, ACK | PSH, ACK | PSH | FIN, ACK | CWR, ACK | CWR | PSH | FIN], ids=["A", "AP", "APF", "AC", "ACPF"]
)
def test_split_matches_the_kernel_rules(version: int, options: bytes, flags: int) -> None:
    payload = bytes(range(256)) * 40 + b"tail"  # 10244 bytes: 7 full segments of 1448 and a short one
    packet = tcp_packet(version, payload=payload, options=options, flags=flags, seq=0xFFFFF000, ip_id=0xFFFE, seed=True)
    segments = handle_virtio_read(tso_record(packet, 1448))
    assert segments == reference_split(packet, 1448)
    assert len(segments) == 8
    for index, segment in enumerate(segments):
        assert_valid(segment)
        ip_len = ip_header_length(segment)
        segment_flags = segment[ip_len + 13]
        last = index == len(segments) - 1
        assert bool(segment_flags & PSH) == (last and bool(flags & PSH))
        assert bool(segment_flags & FIN) == (last and bool(flags & FIN))
        assert bool(segment_flags & CWR) == (index == 0 and bool(flags & CWR))
        assert segment[ip_len + 20 : ip_len + 20 + len(options)] == options
    seqs = [struct.unpack_from("!I", s, ip_header_length(s) + 4)[0] for s in segments]
    assert seqs == [(0xFFFFF000 + i * 1448) & 0xFFFFFFFF for i in range(8)]  # wraps past 2**32
    if version == 4:
        assert [struct.unpack_from("!H", s, 4)[0] for s in segments] == [(0xFFFE + i) & 0xFFFF for i in range(8)]
    hdr_len = ip_header_length(packet) + 20 + len(options)
    assert b"".join(s[hdr_len:] for s in segments) == payload


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([4, 6]),
    size=st.integers(1, 20_000),
    mss=st.integers(1, 3000),
    flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR, ACK | URG | PSH]),
    options=st.sampled_from([b"", TIMESTAMPS, b"\x01\x01\x04\x02", bytes(40)]),
    seq=st.integers(0, 2**32 - 1),
    ip_id=st.integers(0, 0xFFFF),
    data=st.data(),
)
def test_split_property(
    version: int, size: int, mss: int, flags: int, options: bytes, seq: int, ip_id: int, data: st.DataObject
) -> None:
    mss = max(mss, -(-size // 200))  # at most 200 segments, to keep the example fast
    payload = random.Random(data.draw(st.integers(0, 2**32))).randbytes(size)
    packet = tcp_packet(version, payload=payload, options=options, flags=flags, seq=seq, ip_id=ip_id, seed=True)
    segments = handle_virtio_read(tso_record(packet, mss))
    assert segments == reference_split(packet, mss)
    for segment in segments:
        assert_valid(segment)


def test_numpy_is_there_for_the_row_sums() -> None:
    # numpy is a dev dependency: without it TSO stays off in the daemon, and this test says so.
    pytest.importorskip("numpy", reason="numpy is not installed: gso_split has only its pure-Python sums")
    assert tun.offload.VECTORIZED_SPLIT


def _split_both_ways(packet: bytes, mss: int, monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], list[bytes]]:
    """``handle_virtio_read`` of the TSO record with numpy's row sums, then with numpy hidden (int.from_bytes)."""
    record = tso_record(packet, mss)
    with_numpy = handle_virtio_read(record)
    monkeypatch.setattr(tun.offload, "_np", None)
    without_numpy = handle_virtio_read(record)
    return with_numpy, without_numpy


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("options", [b"", TIMESTAMPS], ids=["no-options", "timestamps"])
@pytest.mark.parametrize("flags", [ACK, ACK | PSH | FIN, ACK | CWR | PSH | FIN], ids=["A", "APF", "ACPF"])
def test_full_super_packet_split_with_and_without_numpy(
    version: int, options: bytes, flags: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a 1420-byte-MTU tunnel reads: 47 segments of 1368 bytes and a short odd one, seq and id wrapping."""
    pytest.importorskip("numpy", reason="numpy is not installed: there are no row sums to test")
    payload = random.Random(7).randbytes(47 * 1368 + 1001)
    packet = tcp_packet(version, payload=payload, options=options, flags=flags, seq=0xFFFF0000, ip_id=0xFFF0, seed=True)
    with_numpy, without_numpy = _split_both_ways(packet, 1368, monkeypatch)
    assert with_numpy == reference_split(packet, 1368) == without_numpy
    for segment in with_numpy:
        assert_valid(segment)  # RFC 1071, computed by the test's own routine


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([4, 6]),
    size=st.integers(2, 65_000),
    half_mss=st.integers(1, 1500),
    flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR, ACK | URG | PSH]),
    options=st.sampled_from([b"", TIMESTAMPS, b"\x01\x01\x04\x02", bytes(40)]),
    seq=st.integers(0, 2**32 - 1),
    ip_id=st.integers(0, 0xFFFF),
    seed=st.integers(0, 2**32),
)
def test_split_with_numpy_row_sums_property(
    version: int, size: int, half_mss: int, flags: int, options: bytes, seq: int, ip_id: int, seed: int
) -> None:
    """Any even MSS and payload (a short or odd-length last segment, one segment only...): the cut with numpy's row
    sums is the reference's, byte for byte, and every segment checks out under RFC 1071."""
    pytest.importorskip("numpy", reason="numpy is not installed: there are no row sums to test")
    mss = 2 * max(half_mss, -(-size // 400))  # at most 200 segments, to keep the example fast
    header_room = 60 + 20 + len(options)
    size = min(size, MAX_PACKET_SIZE - header_room)
    payload = random.Random(seed).randbytes(size)
    packet = tcp_packet(version, payload=payload, options=options, flags=flags, seq=seq, ip_id=ip_id, seed=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        with_numpy, without_numpy = _split_both_ways(packet, mss, monkeypatch)
    assert with_numpy == reference_split(packet, mss) == without_numpy
    for segment in with_numpy:
        assert_valid(segment)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([4, 6]),
    segments=st.integers(1, 48),
    mss=st.sampled_from([1, 2, 3, 536, 1367, 1368, 1348, 1448, 9000]),
    short=st.integers(0, 1500),
    flags=st.sampled_from([ACK, ACK | PSH | FIN, ACK | CWR | PSH]),
    options=st.sampled_from([b"", TIMESTAMPS]),
    seq=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**32),
    numpy=st.booleans(),
)
def test_split_with_and_without_numpy_row_sums(
    version: int,
    segments: int,
    mss: int,
    short: int,
    flags: int,
    options: bytes,
    seq: int,
    seed: int,
    numpy: bool,
) -> None:
    """The loop takes its payload sums from one numpy row sum (even MSS, two full segments or more) or from
    int.from_bytes per segment (odd MSS, or numpy absent: forced here by hiding it); a full-size last segment shares
    the row sum. Either way the segments are the reference's, byte for byte, and valid under the test's RFC 1071."""
    if numpy:
        pytest.importorskip("numpy", reason="numpy is not installed: there is no row-sum path to test")
    size = min(segments * mss + short % mss, MAX_PACKET_SIZE - 60 - 20 - len(options))
    payload = random.Random(seed).randbytes(max(size, 1))
    packet = tcp_packet(version, payload=payload, options=options, flags=flags, seq=seq, seed=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        if not numpy:
            monkeypatch.setattr(tun.offload, "_np", None)
        segments_cut = handle_virtio_read(tso_record(packet, mss))
    assert segments_cut == reference_split(packet, mss)
    for segment in segments_cut:
        assert_valid(segment)


@pytest.mark.parametrize("size", [0, 1, 2, 767, 768, 769, 1400, 1401, 65535])
def test_needs_csum_with_and_without_numpy_sums(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """gso_none_checksum over packets either side of the size where its sum moves to numpy, odd and even, against
    the test's own RFC 1071 routine, with numpy and with it hidden."""
    payload = random.Random(size).randbytes(size)
    partial = udp_packet(4, payload, seed=True) if size <= 65507 else udp_packet(6, payload[:65000], seed=True)
    ip_len = ip_header_length(partial)
    for hide in (False, True):
        if hide:
            monkeypatch.setattr(tun.offload, "_np", None)
        packet = bytearray(partial)
        gso_none_checksum(packet, ip_len, 6)
        assert transport_checksum_ok(bytes(packet))
        assert packet == udp_packet(4 if size <= 65507 else 6, payload if size <= 65507 else payload[:65000])


@settings(max_examples=150, deadline=None)
@given(
    version=st.sampled_from([4, 6]),
    segments=st.integers(1, 45),
    mss=st.integers(1, 1448),
    short=st.integers(0, 1447),
    psh=st.booleans(),
    options=st.sampled_from([b"", TIMESTAMPS]),
    seq=st.integers(0, 2**32 - 1),
)
def test_coalesce_of_split_is_the_super_packet(
    version: int, segments: int, mss: int, short: int, psh: bool, options: bytes, seq: int
) -> None:
    short %= mss
    payload = bytes((i * 7) & 0xFF for i in range(segments * mss + short))
    flags = ACK | (PSH if psh else 0)
    packet = tcp_packet(version, payload=payload, options=options, flags=flags, seq=seq, seed=True)
    record = tso_record(packet, mss)
    split = handle_virtio_read(record)
    if len(split) == 1:
        assert handle_gro(split) == [ZERO_VIRTIO_NET_HDR + split[0]]
        return
    # NEEDS_CSUM mode writes exactly what the kernel hands a reader.
    assert handle_gro(split, needs_csum=True) == [record]
    # The default mode writes the same super-packet with a complete checksum and no NEEDS_CSUM.
    (glued,) = handle_gro(split)
    hdr = VirtioNetHdr.unpack(glued)
    ip_len = ip_header_length(packet)
    assert hdr == VirtioNetHdr(0, record[1], ip_len + 20 + len(options), mss, 0, 0)
    body = glued[VIRTIO_NET_HDR_SIZE:]
    assert_valid(body)
    assert body[: ip_len + 16] == packet[: ip_len + 16]
    assert body[ip_len + 18 :] == packet[ip_len + 18 :]
    assert expand([glued]) == split


def test_non_gso_record_is_returned_as_is() -> None:
    packet = tcp_packet(4, payload=b"hello")
    assert handle_virtio_read(ZERO_VIRTIO_NET_HDR + packet) == [packet]
    data_valid = VNET.pack(2, 0, 0, 0, 0, 0)  # VIRTIO_NET_HDR_F_DATA_VALID: the checksum was already verified
    assert handle_virtio_read(data_valid + packet) == [packet]
    assert handle_virtio_read(bytearray(ZERO_VIRTIO_NET_HDR + packet)) == [packet]
    assert handle_virtio_read(memoryview(ZERO_VIRTIO_NET_HDR + packet)) == [packet]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("size", [0, 1, 2, 1399, 1400])
def test_needs_csum_without_gso_completes_the_checksum(version: int, size: int) -> None:
    payload = bytes((i * 7 + 3) & 0xFF for i in range(size))
    complete = tcp_packet(version, payload=payload)
    partial = tcp_packet(version, payload=payload, seed=True)
    ip_len = ip_header_length(partial)
    record = VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, ip_len, 16) + partial
    assert handle_virtio_read(record) == [complete]

    udp_complete = udp_packet(version, b"x" * size)
    udp_partial = udp_packet(version, b"x" * size, seed=True)
    record = VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, ip_header_length(udp_partial), 6) + udp_partial
    assert handle_virtio_read(record) == [udp_complete]


def test_needs_csum_sends_a_zero_checksum_as_ffff() -> None:
    # Pick the last two payload bytes so that the one's-complement sum is 0xFFFF: the checksum is then 0, which
    # skb_checksum_help (and RFC 768 for UDP) sends as 0xFFFF.
    base = udp_packet(4, b"ab" + b"\x00\x00", seed=True)
    ip_len = ip_header_length(base)
    pseudo = pseudo_header(base, UDP, len(base) - ip_len)
    body = base[ip_len:ip_len + 6] + b"\x00\x00" + base[ip_len + 8 :]  # fmt: skip
    total = fold(sum(struct.unpack(f"!{(len(pseudo) + len(body)) // 2}H", pseudo + body)))
    filler = (0xFFFF - total).to_bytes(2, "big")
    partial = udp_packet(4, b"ab" + filler, seed=True)
    packet = bytearray(partial)
    gso_none_checksum(packet, ip_len, 6)
    assert packet[ip_len + 6 : ip_len + 8] == b"\xff\xff"
    assert transport_checksum_ok(bytes(packet))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("size", [1, 1000, 4000, 4001])
def test_udp_l4_super_packets_are_split(version: int, size: int) -> None:
    payload = bytes((i * 13) & 0xFF for i in range(size))
    packet = udp_packet(version, payload, seed=True, ip_id=0xFFFF)
    ip_len = ip_header_length(packet)
    record = VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_UDP_L4, ip_len + 8, 1000, ip_len, 6) + packet
    segments = handle_virtio_read(record)
    assert len(segments) == -(-size // 1000)
    for index, segment in enumerate(segments):
        assert_valid(segment)
        assert struct.unpack_from("!H", segment, ip_len + 4)[0] == len(segment) - ip_len  # UDP length
        if version == 4:
            assert struct.unpack_from("!H", segment, 4)[0] == (0xFFFF + index) & 0xFFFF
    assert b"".join(s[ip_len + 8 :] for s in segments) == payload


def _malformed_records() -> list[tuple[str, bytes]]:
    packet = tcp_packet(4, payload=bytes(3000), seed=True)
    good = tso_record(packet, 1000)

    def with_hdr(**changes: int) -> bytes:
        return VirtioNetHdr.unpack(good)._replace(**changes).pack() + packet

    no_payload = tcp_packet(4, seed=True)
    bad_offset = bytearray(packet)
    bad_offset[32] = 0x40  # TCP data offset 4 words
    return [
        ("empty", b""),
        ("header only", ZERO_VIRTIO_NET_HDR),
        ("ufo", with_hdr(gso_type=VIRTIO_NET_HDR_GSO_UDP)),
        ("unknown gso type", with_hdr(gso_type=9)),
        ("gso size 0", with_hdr(gso_size=0)),
        ("tcpv6 on ipv4", with_hdr(gso_type=VIRTIO_NET_HDR_GSO_TCPV6)),
        ("no needs_csum", with_hdr(flags=0)),
        ("csum_start inside the ip header", with_hdr(csum_start=16)),
        ("csum_offset not tcp", with_hdr(csum_offset=6)),
        ("no payload", tso_record(no_payload, 1000)),
        ("tcp data offset < 5", good[:VIRTIO_NET_HDR_SIZE] + bytes(bad_offset)),
        ("checksum outside the packet", VNET.pack(1, 0, 0, 0, 60, 16) + packet[:50]),
    ]


@pytest.mark.parametrize(("why", "record"), _malformed_records(), ids=[w for w, _ in _malformed_records()])
def test_malformed_records_raise_offload_error(why: str, record: bytes) -> None:
    with pytest.raises(OffloadError):
        handle_virtio_read(record)


def test_gso_split_refuses_an_unknown_type() -> None:
    with pytest.raises(OffloadError, match="gso_type"):
        gso_split(tcp_packet(4, payload=b"x" * 100), VirtioNetHdr(1, 42, 40, 10, 20, 16))


# -- write side ------------------------------------------------------------------------------------------------


def stream(
    count: int,
    size: int = 1000,
    *,
    version: int = 4,
    seq: int = 5000,
    ip_id: int = 100,
    last_psh: bool = True,
    **kw: int,
) -> list[bytes]:
    """``count`` contiguous data segments of one flow, ``size`` bytes each, PSH on the last."""
    return [
        tcp_packet(
            version,
            seq=(seq + i * size) & 0xFFFFFFFF,
            ip_id=(ip_id + i) & 0xFFFF,
            flags=ACK | (PSH if last_psh and i == count - 1 else 0),
            payload=bytes([i & 0xFF]) * size,
            **kw,  # type: ignore[arg-type]
        )
        for i in range(count)
    ]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("needs_csum", [False, True])
def test_contiguous_segments_glue_into_one_super_packet(version: int, needs_csum: bool) -> None:
    segments = stream(20, version=version, options=TIMESTAMPS)  # type: ignore[arg-type]
    (record,) = handle_gro(segments, needs_csum=needs_csum)
    hdr = VirtioNetHdr.unpack(record)
    ip_len = 20 if version == 4 else 40
    gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    body = record[VIRTIO_NET_HDR_SIZE:]
    assert len(body) == ip_len + 32 + 20 * 1000
    assert body[ip_len + 13] == ACK | PSH
    if needs_csum:
        assert hdr == VirtioNetHdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, ip_len + 32, 1000, ip_len, 16)
        pseudo = pseudo_header(body, TCP, len(body) - ip_len)
        seed = fold(sum(struct.unpack(f"!{len(pseudo) // 2}H", pseudo)))
        assert struct.unpack_from("!H", body, ip_len + 16)[0] == seed
        if version == 4:
            assert checksum(body[:20]) == 0
        complete = bytearray(body)
        gso_none_checksum(complete, ip_len, 16)  # what the kernel's checksum offload will do
        assert_valid(bytes(complete))
    else:
        assert hdr == VirtioNetHdr(0, gso_type, ip_len + 32, 1000, 0, 0)
        assert expand([record]) == segments


def test_a_corrupted_segment_makes_the_glued_checksum_wrong() -> None:
    segments = stream(10)
    corrupt = bytearray(segments[4])
    corrupt[-1] ^= 0x01
    segments[4] = bytes(corrupt)
    (record,) = handle_gro(segments)
    assert not transport_checksum_ok(record[VIRTIO_NET_HDR_SIZE:])


def test_odd_segment_sizes_glue_with_a_valid_checksum() -> None:
    for size in (1, 3, 1447):
        segments = [
            *stream(7, size, last_psh=False),
            tcp_packet(seq=5000 + 7 * size, ip_id=107, payload=b"z", flags=ACK | PSH),
        ]
        (record,) = handle_gro(segments)
        assert expand([record]) == segments


def test_super_packets_stop_at_64_kilobytes() -> None:
    segments = stream(50, 1448, last_psh=False)
    records = handle_gro(segments)
    assert [VirtioNetHdr.unpack(r).gso_type for r in records] == [VIRTIO_NET_HDR_GSO_TCPV4] * 2
    assert all(len(r) - VIRTIO_NET_HDR_SIZE <= MAX_PACKET_SIZE for r in records)
    assert len(records[0]) - VIRTIO_NET_HDR_SIZE == 40 + 45 * 1448
    assert expand(records) == segments


def test_psh_ends_a_super_packet() -> None:
    first = stream(5, ip_id=100)  # PSH on the fifth
    second = stream(5, seq=5000 + 5000, ip_id=105)
    records = handle_gro(first + second)
    assert len(records) == 2
    assert expand(records) == first + second
    assert records[0][VIRTIO_NET_HDR_SIZE + 33] == ACK | PSH


def test_a_short_segment_ends_a_super_packet_and_a_larger_one_is_not_glued() -> None:
    segments = [
        *stream(3, 1000, last_psh=False),
        tcp_packet(seq=8000, ip_id=103, payload=b"s" * 500),
        tcp_packet(seq=8500, ip_id=104, payload=b"t" * 1000),
        tcp_packet(seq=9500, ip_id=105, payload=b"u" * 1200),
    ]
    records = handle_gro(segments)
    assert [VirtioNetHdr.unpack(r).gso_type for r in records] == [VIRTIO_NET_HDR_GSO_TCPV4, 0, 0]
    assert expand(records) == segments


def alone(packet: bytes) -> bytes:
    return ZERO_VIRTIO_NET_HDR + packet


@pytest.mark.parametrize(
    ("why", "second"),
    [
        ("sequence gap", {"seq": 6001}),
        ("other ack", {"ack": 8}),
        ("other window", {"window": 503}),
        ("other ttl", {"ttl": 63}),
        ("other tos", {"tos": 4}),
        ("df cleared", {"ip_flags": 0}),
        ("other timestamp", {"options": TIMESTAMPS[:-1] + b"\x09"}),
        ("other ports", {"ports": (40001, 80)}),
        ("other address", {"addresses": (SRC4, socket.inet_aton("10.0.0.3"))}),
        ("ip options", {"ip_options": b"\x01\x01\x01\x00"}),
        ("more fragments", {"ip_flags": 0x2000}),
        ("fragment offset", {"ip_flags": 0x0001}),
        ("syn", {"flags": SYN | ACK}),
        ("fin", {"flags": FIN | ACK}),
        ("rst", {"flags": RST | ACK}),
        ("urg", {"flags": URG | ACK}),
        ("ece", {"flags": ECE | ACK}),
        ("cwr", {"flags": CWR | ACK}),
        ("no ack", {"flags": PSH}),
        ("other urgent pointer", {"urgent": 5}),
    ],
)
def test_segments_that_the_kernel_would_not_glue_stay_alone(why: str, second: dict[str, object]) -> None:
    base: dict[str, object] = {"seq": 5000, "payload": b"a" * 1000, "options": TIMESTAMPS}
    first = tcp_packet(**base)  # type: ignore[arg-type]
    other = tcp_packet(**{**base, "seq": 6000, "ip_id": 0x1235, **second})  # type: ignore[arg-type]
    assert handle_gro([first, other]) == [alone(first), alone(other)], why


def test_mixed_traffic_keeps_order_and_content() -> None:
    udp = udp_packet(4, b"dns?")
    icmp = bytes.fromhex("4500001c0000000040010000") + SRC4 + DST4 + bytes(8)
    udp6 = udp_packet(6, b"v6")
    pure_ack = tcp_packet(seq=1, ack=99)
    syn = tcp_packet(flags=SYN)
    junk = b"\x00\x01\x02"
    a = stream(4, ports=(1, 2))  # type: ignore[arg-type]
    b = stream(3, ports=(3, 4), version=6)  # type: ignore[arg-type]
    fin = tcp_packet(seq=5000 + 4000, ip_id=104, flags=FIN | ACK, ports=(1, 2))
    after_fin = stream(2, seq=5000 + 4000 + 1, ip_id=105, ports=(1, 2))  # type: ignore[arg-type]
    packets = [udp, a[0], b[0], icmp, a[1], pure_ack, b[1], a[2], udp6, syn, b[2], a[3], junk, fin, *after_fin]
    records = handle_gro(packets)
    assert records == [
        alone(udp),
        *handle_gro(a),
        *handle_gro(b),
        alone(icmp),
        alone(pure_ack),
        alone(udp6),
        alone(syn),
        alone(junk),
        alone(fin),
        *handle_gro(after_fin),
    ]
    assert sorted(expand(records)) == sorted(packets)


def test_a_packet_that_is_no_candidate_closes_its_flow() -> None:
    segments = stream(4, last_psh=False)
    window_update = tcp_packet(seq=5000 + 2000, ip_id=150)  # a pure ACK of the same flow, no payload
    records = handle_gro([segments[0], segments[1], window_update, segments[2], segments[3]])
    assert records == [*handle_gro(segments[:2]), alone(window_update), *handle_gro(segments[2:])]
    # An IPv4 fragment closes every flow (its ports cannot be read).
    fragment = tcp_packet(ip_flags=0x2000, ports=(9, 9))
    records = handle_gro([segments[0], segments[1], fragment, segments[2], segments[3]])
    assert records == [*handle_gro(segments[:2]), alone(fragment), *handle_gro(segments[2:])]


def test_a_packet_whose_length_does_not_add_up_stays_alone_and_closes_its_flow() -> None:
    segments = stream(4, last_psh=False)
    padded = segments[2] + b"\x00\x00"  # IP length smaller than the packet (trailing bytes)
    six = stream(3, version=6, last_psh=False)
    six_padded = six[1] + b"\x00"
    records = handle_gro([segments[0], segments[1], padded, segments[3], six[0], six_padded, six[2]])
    assert records == [
        *handle_gro(segments[:2]),
        alone(padded),
        alone(segments[3]),
        alone(six[0]),
        alone(six_padded),
        alone(six[2]),
    ]


def test_empty_batch() -> None:
    assert handle_gro([]) == []


# -- write side, property --------------------------------------------------------------------------------------

_EVENTS = st.lists(
    st.tuples(
        st.integers(0, 2),  # which flow
        st.sampled_from(["full", "full", "full", "short", "psh", "gap", "ack", "fin", "ttl", "udp"]),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(events=_EVENTS, mss=st.integers(1, 1448), needs_csum=st.booleans())
def test_gro_property(events: list[tuple[int, str]], mss: int, needs_csum: bool) -> None:
    """Whatever the mix, the kernel gets back exactly the packets given, and each flow's packets in their order."""
    state = [{"seq": 1000 * i, "id": 100 * i, "ttl": 64} for i in range(3)]
    packets: list[bytes] = []
    flow_of: dict[bytes, int] = {}
    for flow, kind in events:
        s = state[flow]
        version = 6 if flow == 2 else 4
        if kind == "udp":
            packet = udp_packet(version, bytes([flow]) * 10)
            packets.append(packet)
            flow_of[packet] = 3 + flow  # a flow of its own: TCP segments may overtake it, not it them
            continue
        common = {"ports": (1000 + flow, 80), "ip_id": s["id"] & 0xFFFF, "ttl": s["ttl"]}
        s["id"] += 1  # a sender numbers its segments one by one
        if kind == "ack":
            packet = tcp_packet(version, seq=s["seq"], **common)  # type: ignore[arg-type]
        elif kind == "fin":
            packet = tcp_packet(version, seq=s["seq"], flags=ACK | FIN, **common)  # type: ignore[arg-type]
            s["seq"] += 1
        else:
            if kind == "gap":
                s["seq"] += 7
            if kind == "ttl":
                s["ttl"] = common["ttl"] = 128 if s["ttl"] == 64 else 64
            size = (mss // 2 or 1) if kind == "short" else mss
            flags = ACK | (PSH if kind == "psh" else 0)
            payload = bytes([(s["seq"] + i) & 0xFF for i in range(size)])
            packet = tcp_packet(version, seq=s["seq"], flags=flags, payload=payload, **common)  # type: ignore[arg-type]
            s["seq"] += size
        packets.append(packet)
        flow_of[packet] = flow
    records = handle_gro(packets, needs_csum=needs_csum)
    if needs_csum:
        # Complete the checksums as the kernel would, then check like the default mode.
        completed = []
        for record in records:
            hdr = VirtioNetHdr.unpack(record)
            body = bytearray(record[VIRTIO_NET_HDR_SIZE:])
            if hdr.flags:
                gso_none_checksum(body, hdr.csum_start, hdr.csum_offset)
            completed.append(VNET.pack(0, hdr.gso_type, hdr.hdr_len, hdr.gso_size, 0, 0) + bytes(body))
        records = completed
    delivered = expand(records)
    assert sorted(delivered) == sorted(packets)
    for flow in range(6):
        assert [p for p in delivered if flow_of.get(p) == flow] == [p for p in packets if flow_of[p] == flow]
    assert len(records) <= len(packets)
