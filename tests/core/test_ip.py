"""IP header reads: valid IPv4/IPv6 headers built by hand with struct, every malformed case, and a fuzz contract."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgpy.ip import IPV4_HEADER_SIZE, IPV6_HEADER_SIZE, destination, parse_header, source, source_and_length

V4_SRC = bytes([192, 0, 2, 1])
V4_DST = bytes([198, 51, 100, 2])
V6_SRC = bytes.fromhex("20010db8000000000000000000000001")
V6_DST = bytes.fromhex("20010db8000000010000000000000002")


def ipv4(
    payload: bytes = b"",
    *,
    ihl: int = 5,
    version: int = 4,
    total_length: int | None = None,
    src: bytes = V4_SRC,
    dst: bytes = V4_DST,
) -> bytes:
    """An IPv4 header (RFC 791 §3.1) with ``ihl`` words, options zero-filled, then ``payload``."""
    header_length = max(ihl, 5) * 4
    if total_length is None:
        total_length = header_length + len(payload)
    fixed = struct.pack(
        "!BBHHHBBH4s4s",
        (version << 4) | ihl,
        0,  # DSCP/ECN
        total_length,
        0x1234,  # identification
        0x4000,  # don't fragment
        64,  # TTL
        17,  # UDP
        0,  # checksum, not checked here
        src,
        dst,
    )
    return fixed + b"\x00" * (header_length - IPV4_HEADER_SIZE) + payload


def ipv6(
    payload: bytes = b"",
    *,
    version: int = 6,
    payload_length: int | None = None,
    src: bytes = V6_SRC,
    dst: bytes = V6_DST,
) -> bytes:
    """An IPv6 fixed header (RFC 8200 §3) followed by ``payload``."""
    if payload_length is None:
        payload_length = len(payload)
    first_word = (version << 28) | (0 << 20) | 0x12345  # version, traffic class, flow label
    return struct.pack("!IHBB16s16s", first_word, payload_length, 58, 64, src, dst) + payload


# --- valid headers ------------------------------------------------------------------------------------------


def test_ipv4_minimal() -> None:
    packet = ipv4(b"hello")
    assert parse_header(packet) == (4, 25, V4_SRC, V4_DST)
    assert source(packet) == V4_SRC
    assert destination(packet) == V4_DST


def test_ipv4_header_only() -> None:
    assert parse_header(ipv4()) == (4, 20, V4_SRC, V4_DST)


def test_ipv4_with_options() -> None:
    packet = ipv4(b"x" * 8, ihl=15)  # 60-byte header, the largest
    assert parse_header(packet) == (4, 68, V4_SRC, V4_DST)


def test_ipv4_trailing_padding_is_allowed() -> None:
    # WireGuard pads plaintext to a multiple of 16; the total length says where the packet really ends.
    packet = ipv4(b"abc") + b"\x00" * 9
    assert len(packet) == 32
    assert parse_header(packet) == (4, 23, V4_SRC, V4_DST)


def test_ipv6_minimal() -> None:
    packet = ipv6(b"ping")
    assert parse_header(packet) == (6, 44, V6_SRC, V6_DST)
    assert source(packet) == V6_SRC
    assert destination(packet) == V6_DST


def test_ipv6_header_only() -> None:
    assert parse_header(ipv6()) == (6, 40, V6_SRC, V6_DST)


def test_ipv6_trailing_padding_is_allowed() -> None:
    packet = ipv6(b"\x01" * 10) + b"\x00" * 14
    assert parse_header(packet) == (6, 50, V6_SRC, V6_DST)


def test_ipv6_total_length_is_forty_plus_payload_length() -> None:
    payload = bytes(1380)
    assert parse_header(ipv6(payload)) == (6, IPV6_HEADER_SIZE + 1380, V6_SRC, V6_DST)


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_buffers_other_than_bytes(kind: type[bytearray] | type[memoryview]) -> None:
    for packet, expected in ((ipv4(b"data"), (4, 24, V4_SRC, V4_DST)), (ipv6(b"data"), (6, 44, V6_SRC, V6_DST))):
        buffer = kind(packet)
        result = parse_header(buffer)
        assert result == expected
        assert result is not None
        assert all(type(field) is bytes for field in result[2:])
        assert type(source(buffer)) is bytes
        assert type(destination(buffer)) is bytes
        inner = source_and_length(buffer)
        assert inner is not None and type(inner[0]) is bytes


def test_addresses_are_copies_of_header_bytes() -> None:
    src = bytes(range(1, 5))
    dst = bytes(range(5, 9))
    result = parse_header(ipv4(src=src, dst=dst))
    assert result is not None
    assert result[2:] == (src, dst)


# --- malformed headers --------------------------------------------------------------------------------------

MALFORMED = {
    "empty": b"",
    "one byte v4": b"\x45",
    "truncated v4 header": ipv4()[:19],
    "truncated v6 header": ipv6()[:39],
    "v6 shorter than v4 header": ipv6()[:20],
    "version 0": ipv4(version=0),
    "version 5": ipv4(version=5),
    "version 15": ipv4(version=15),
    "version 4 in a v6 header": ipv6(version=4, payload_length=0),
    "version 6 in a short v4-sized header": ipv4(version=6)[:20],
    "ihl 0": ipv4(ihl=0),
    "ihl 4": ipv4(ihl=4),
    "v4 total below header": ipv4(total_length=19),
    "v4 total zero": ipv4(total_length=0),
    "v4 total below ihl with options": ipv4(b"\x00" * 8, ihl=6, total_length=20),
    "v4 total beyond packet": ipv4(b"abc", total_length=24),
    "v4 total 65535 on a short packet": ipv4(total_length=65535),
    "v4 options longer than packet": ipv4(ihl=15)[:40],
    "v6 payload beyond packet": ipv6(b"abc", payload_length=4),
    "v6 payload 65535 on a short packet": ipv6(payload_length=65535),
}


@pytest.mark.parametrize("packet", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_is_none(packet: bytes) -> None:
    assert parse_header(packet) is None
    assert source(packet) is None
    assert destination(packet) is None


def test_v4_options_longer_than_packet_is_caught_by_total_length() -> None:
    # With IHL 15 the header is 60 bytes; 40 bytes of packet cannot hold it whatever the total length says.
    assert parse_header(ipv4(ihl=15, total_length=40)[:40]) is None
    assert parse_header(ipv4(ihl=15, total_length=60)[:40]) is None


# --- fuzz contract ------------------------------------------------------------------------------------------


@given(st.binary())
def test_parse_header_never_raises(packet: bytes) -> None:
    result = parse_header(packet)
    if result is not None:
        version, total, src, dst = result
        assert version in (4, 6)
        assert total <= len(packet)
        assert len(src) == len(dst) == (4 if version == 4 else 16)
    # The fast helpers agree with parse_header on every input.
    assert source(packet) == (None if result is None else result[2])
    assert destination(packet) == (None if result is None else result[3])
    assert source_and_length(packet) == (None if result is None else (result[2], result[1]))


@given(
    st.integers(0, 15),
    st.integers(0, 15),
    st.integers(0, 0xFFFF),
    st.binary(max_size=80),
)
def test_header_fields_fuzzed(version: int, ihl: int, total_length: int, rest: bytes) -> None:
    """Random version/IHL/length fields over a plausible header: accepted exactly when the rules say so."""
    packet = bytes([(version << 4) | ihl, 0]) + struct.pack("!H", total_length) + rest
    result = parse_header(packet)
    size = len(packet)
    if version == 4:
        valid = size >= 20 and ihl >= 5 and ihl * 4 <= total_length <= size
        assert (result is not None) == valid
        # The IPv4 fast paths (first byte 0x45) of destination and source_and_length follow the same rules.
        assert (destination(packet) is not None) == valid
        assert source_and_length(packet) == ((packet[12:16], total_length) if valid else None)
        if result is not None:
            assert result[:2] == (4, total_length)
            assert result[2:] == (packet[12:16], packet[16:20])
    elif version == 6:
        if size >= 40:
            payload_length = struct.unpack_from("!H", packet, 4)[0]
            assert (result is not None) == (40 + payload_length <= size)
        else:
            assert result is None
    else:
        assert result is None
