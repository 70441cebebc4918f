"""``handle_gro_run`` (the TUN write side's gluing of a run of packets in one buffer) against ``handle_gro`` of the
same packets, byte for byte; and the fast path's super-packets checked independently (every segment comes back
when the record is cut as the kernel cuts it, with valid checksums)."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tun_offload import ACK, FIN, PSH, SYN, TIMESTAMPS, assert_valid, expand, tcp_packet

import tun.offload
from tun.offload import MAX_PACKET_SIZE, VIRTIO_NET_HDR_SIZE, handle_gro, handle_gro_run

pytest.importorskip("numpy", reason="handle_gro_run's fast path needs numpy")

_CHANGES = ["none", "psh", "psh", "gap", "fin", "syn", "ttl", "tos", "window", "ack", "options", "total", "frag"]


def _layout(packets: list[bytes], slack: int, fill: int) -> tuple[bytes, int, int, int, int]:
    """``packets`` (all but the last of one size) in one buffer, ``slack`` bytes apart (0: back to back, so a
    stride of 1,420 bytes, say, as the receive path makes them, and not a multiple of 8)."""
    size, last = len(packets[0]), len(packets[-1])
    stride = size + slack
    buffer = bytearray([fill]) * (stride * len(packets))
    for i, packet in enumerate(packets):
        buffer[i * stride : i * stride + len(packet)] = packet
    return bytes(buffer), len(packets), stride, size, last


def _flow(
    count: int, mss: int, last: int, *, version: int = 4, options: bytes = TIMESTAMPS, seq: int = 0
) -> list[bytes]:
    packets = []
    rng = random.Random(count * 7 + mss)
    for i in range(count):
        size = last if i == count - 1 else mss
        packets.append(
            tcp_packet(version, seq=(seq + i * mss) & 0xFFFFFFFF, payload=rng.randbytes(size), options=options, ip_id=i)
        )
    return packets


def _changed(packet: bytes, change: str) -> bytes:
    """One packet of the flow made different in one way ``handle_gro`` looks at (checksums left as they are)."""
    data = bytearray(packet)
    if change == "psh":
        data[33] |= PSH
    elif change == "fin":
        data[33] |= FIN
    elif change == "syn":
        data[33] = SYN | ACK
    elif change == "gap":
        data[27] ^= 0x10
    elif change == "ttl":
        data[8] ^= 1
    elif change == "tos":
        data[1] ^= 4
    elif change == "window":
        data[35] ^= 1
    elif change == "ack":
        data[31] ^= 1
    elif change == "options" and len(data) > 45:
        data[45] ^= 1
    elif change == "total":
        data[3] ^= 1  # the IP length no longer the packet's
    elif change == "frag":
        data[6] |= 0x20  # MF
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(1, 64),
    half_mss=st.integers(1, 4000),
    last_cut=st.integers(0, 3000),
    changes=st.lists(st.tuples(st.integers(0, 63), st.sampled_from(_CHANGES)), max_size=3),
    options=st.sampled_from([b"", TIMESTAMPS]),
    version=st.sampled_from([4, 4, 4, 6]),
    odd=st.booleans(),
    seq=st.one_of(st.integers(0, 2**32 - 1), st.integers(2**32 - 300_000, 2**32 - 1)),  # often wrapping in a run
    slack=st.sampled_from([0, 4, 12, 16]),
    fill=st.sampled_from([0, 0xEE]),
    needs_csum=st.booleans(),
)
def test_a_run_is_glued_as_its_packets_are(
    count: int,
    half_mss: int,
    last_cut: int,
    changes: list[tuple[int, str]],
    options: bytes,
    version: int,
    odd: bool,
    seq: int,
    slack: int,
    fill: int,
    needs_csum: bool,
) -> None:
    mss = 2 * half_mss + (1 if odd else 0)
    mss = min(mss, MAX_PACKET_SIZE - 100)
    last = max(1, mss - last_cut)
    packets = _flow(count, mss, last, version=version, options=options, seq=seq)
    for row, change in changes:
        packets[row % count] = _changed(packets[row % count], change)
    if len({len(p) for p in packets[:-1]}) > 1 or len(packets[-1]) > len(packets[0]):
        return  # a change that moved a length: not a run's layout
    run = _layout(packets, slack, fill)
    assert handle_gro_run(*run, needs_csum=needs_csum) == handle_gro(packets, needs_csum=needs_csum)


def test_the_fast_path_glues_a_bulk_run_into_valid_super_packets(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 full segments of 1,368 bytes (one UDP GRO read of a bulk flow), the last with PSH: two super-packets under
    64 KiB, each with valid IP and TCP checksums over the whole (RFC 1071, computed here), whose segments come back
    when cut as the kernel cuts them; ``handle_gro`` is never called."""
    packets = _flow(63, 1368, 1368)
    packets.append(tcp_packet(4, seq=63 * 1368, payload=bytes(1368), options=TIMESTAMPS, flags=ACK | PSH, ip_id=63))
    run = _layout(packets, 0, 0)
    monkeypatch.setattr(tun.offload, "handle_gro", lambda *a, **k: pytest.fail("handle_gro called"))
    records = handle_gro_run(*run)
    assert len(records) == 2
    for record in records:
        assert len(record) - VIRTIO_NET_HDR_SIZE <= MAX_PACKET_SIZE
        assert_valid(record[VIRTIO_NET_HDR_SIZE:])
    assert expand(records) == packets


def test_a_corrupted_segment_makes_a_super_packet_the_kernel_refuses() -> None:
    """The glued checksum comes from the segments' own, so one flipped payload bit makes it wrong (as in
    ``handle_gro``): the kernel drops the super-packet instead of delivering corrupt data."""
    packets = _flow(10, 1000, 1000)
    bad = bytearray(packets[4])
    bad[-1] ^= 0x40
    packets[4] = bytes(bad)
    (record,) = handle_gro_run(*_layout(packets, 0, 0))
    with pytest.raises(AssertionError, match="TCP/UDP checksum"):
        assert_valid(record[VIRTIO_NET_HDR_SIZE:])


def test_small_packets_back_to_back_are_glued_as_handle_gro_glues_them() -> None:
    """Segments of 2 bytes behind 52 bytes of headers, 54 bytes apart: the headers read as 64-bit words would run
    past the buffer at the last row, so the run takes the per-packet path (found by the property above)."""
    packets = _flow(3, 2, 2)
    assert {len(p) for p in packets} == {54}
    run = _layout(packets, 0, 0)
    assert handle_gro_run(*run) == handle_gro(packets)


def test_a_bulk_run_cut_by_psh_and_wrapping_seq_is_glued_as_its_packets_are() -> None:
    """Two super-packets from one run (a PSH in the middle), the seq wrapping past 2**32 in the second, and a
    shorter last segment (a part of its own): the checksum terms summed per super-packet from the run's columns and
    the seq sums with their wrap come out as ``handle_gro``'s."""
    mss = 1368
    packets = _flow(30, mss, 1000, seq=2**32 - 20 * mss - 5)
    seq9 = (2**32 - 20 * mss - 5 + 9 * mss) & 0xFFFFFFFF
    packets[9] = tcp_packet(4, seq=seq9, payload=packets[9][52:], options=TIMESTAMPS, flags=ACK | PSH, ip_id=9)
    run = _layout(packets, 0, 0)
    records = tun.offload.gro_run_parts(*run)
    assert [len(parts) for parts in records] == [2, 3]
    assert [b"".join(parts) for parts in records] == handle_gro(packets)
    assert expand([b"".join(parts) for parts in records]) == packets
