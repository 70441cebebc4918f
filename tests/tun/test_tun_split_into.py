"""``gso_split_into`` (a TCP super-packet cut into one buffer at a fixed stride) against ``gso_split``, byte for byte."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tun_offload import ACK, CWR, FIN, PSH, TIMESTAMPS, URG, VNET, tcp_packet, tso_record

import tun.offload
from tun.offload import (
    MAX_PACKET_SIZE,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_SIZE,
    VirtioNetHdr,
    gso_split,
    gso_split_into,
    handle_virtio_read,
    handle_virtio_read_run,
)

pytest.importorskip("numpy", reason="gso_split_into needs numpy")


def _unpack(run: tun.offload.SplitRun) -> list[bytes]:
    buffer, count, stride, size, last_size = run
    assert len(buffer) == count * stride and stride % 16 == 0 and size <= stride and 1 <= last_size <= size
    segments = [bytes(buffer[i * stride : i * stride + size]) for i in range(count - 1)]
    segments.append(bytes(buffer[(count - 1) * stride : (count - 1) * stride + last_size]))
    for i in range(count):  # zero-filled from each segment's end to the next stride
        end = i * stride + (size if i < count - 1 else last_size)
        assert not any(buffer[end : (i + 1) * stride])
    return segments


def _record_parts(record: bytes) -> tuple[bytes, VirtioNetHdr]:
    return record[VIRTIO_NET_HDR_SIZE:], VirtioNetHdr.unpack(record)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    version=st.sampled_from([4, 6]),
    size=st.integers(1, 65_000),
    half_mss=st.integers(1, 4500),
    flags=st.sampled_from([ACK, ACK | PSH, ACK | FIN, ACK | PSH | FIN, ACK | CWR, ACK | CWR | PSH, ACK | URG | PSH]),
    options=st.sampled_from([b"", TIMESTAMPS, b"\x01\x01\x04\x02", bytes(40)]),
    seq=st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 100_000, 2**32 - 1)),  # often wrapping
    ip_id=st.one_of(st.integers(0, 0xFFFF), st.integers(0xFF40, 0xFFFF)),  # often wrapping in the run
    seed=st.integers(0, 2**32),
)
def test_split_into_is_gso_split_byte_for_byte(
    version: int, size: int, half_mss: int, flags: int, options: bytes, seq: int, ip_id: int, seed: int
) -> None:
    mss = 2 * max(half_mss, -(-size // 400))  # at most 200 segments
    size = min(size, MAX_PACKET_SIZE - 60 - 20 - len(options))
    payload = random.Random(seed).randbytes(size)
    packet = tcp_packet(version, payload=payload, options=options, flags=flags, seq=seq, ip_id=ip_id, seed=True)
    data, hdr = _record_parts(tso_record(packet, mss))
    run = gso_split_into(data, hdr)
    assert run is not None
    assert _unpack(run) == gso_split(data, hdr)
    assert run[2] == -(-run[3] // 16) * 16  # the stride: the full segment rounded up to 16


@pytest.mark.parametrize("version", [4, 6])
def test_full_super_packet_with_wrapping_seq_and_id(version: int) -> None:
    payload = random.Random(7).randbytes(47 * 1368 + 1001)
    packet = tcp_packet(
        version,
        payload=payload,
        options=TIMESTAMPS,
        flags=ACK | CWR | PSH | FIN,
        seq=0xFFFF0000,
        ip_id=0xFFF0,
        seed=True,
    )
    record = tso_record(packet, 1368)
    run = handle_virtio_read_run(record)
    assert isinstance(run, tuple)
    assert run[1] == 48
    assert _unpack(run) == handle_virtio_read(record)


def test_unusual_shapes_fall_back() -> None:
    packet = tcp_packet(4, payload=bytes(5000), seed=True)
    data, hdr = _record_parts(tso_record(packet, 1367))  # odd gso_size
    assert gso_split_into(data, hdr) is None
    record = tso_record(packet, 1367)
    assert handle_virtio_read_run(record) == handle_virtio_read(record)
    plain = bytes(VIRTIO_NET_HDR_SIZE) + packet  # not a super-packet: the list of handle_virtio_read
    assert handle_virtio_read_run(plain) == handle_virtio_read(plain)


def test_without_numpy_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    packet = tcp_packet(6, payload=bytes(5000), seed=True)
    record = tso_record(packet, 1368)
    monkeypatch.setattr(tun.offload, "_np", None)
    assert gso_split_into(*_record_parts(record)) is None
    assert handle_virtio_read_run(record) == handle_virtio_read(record)


def test_malformed_raises_like_gso_split() -> None:
    packet = tcp_packet(4, payload=bytes(3000), seed=True)
    data, hdr = _record_parts(tso_record(packet, 1368))
    bad = hdr._replace(csum_offset=6)
    with pytest.raises(tun.offload.OffloadError):
        gso_split(data, bad)
    with pytest.raises(tun.offload.OffloadError):
        gso_split_into(data, bad)


@pytest.mark.parametrize("stray", [1, 2, 8])
def test_stray_bytes_before_tcp_are_split_as_gso_split_does(stray: int) -> None:
    """An IPv6 ``csum_start`` past the fixed header (bytes before TCP that are not parsed): 42 or 48 is cut into a
    run byte for byte as ``gso_split`` cuts it; an odd 41 falls back to ``gso_split``'s list."""
    packet = tcp_packet(6, payload=bytes(range(256)) * 20, options=TIMESTAMPS, seed=True)
    shifted = bytearray(packet[:40] + bytes(stray) + packet[40:])
    shifted[4:6] = (len(shifted) - 40).to_bytes(2, "big")
    record = VNET.pack(1, VIRTIO_NET_HDR_GSO_TCPV6, 40 + stray + 32, 1368, 40 + stray, 16) + bytes(shifted)
    data, hdr = _record_parts(record)
    run = gso_split_into(data, hdr)
    if stray & 1:
        assert run is None
        assert handle_virtio_read_run(record) == gso_split(data, hdr)
    else:
        assert run is not None
        assert _unpack(run) == gso_split(data, hdr)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("payload_size", [1000, 65_400])
def test_a_gso_size_too_large_for_a_full_segment_falls_back(version: int, payload_size: int) -> None:
    """A ``gso_size`` of 65,534 (the headers and it over 65,535 bytes): ``gso_split`` cuts one or two segments of
    what there is, and the run path gives the same list instead of a numpy overflow (found by hand: the template's
    total length cannot hold a full segment)."""
    packet = tcp_packet(version, payload=bytes(payload_size), options=TIMESTAMPS, seed=True)
    record = tso_record(packet, 65_534)
    assert gso_split_into(*_record_parts(record)) is None
    assert handle_virtio_read_run(record) == handle_virtio_read(record)
