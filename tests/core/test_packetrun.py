"""``PacketRun``: a strided run reads back as the packets it was built from."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgpy import ip
from wgpy.packetrun import PacketRun, uniform_destination, uniform_source


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[bytes], int]:
    size = draw(st.integers(1, 64))
    stride = size + draw(st.integers(0, 20))
    count = draw(st.integers(1, 10))
    last = draw(st.integers(1, size))
    packets = [draw(st.binary(min_size=size, max_size=size)) for _ in range(count - 1)]
    packets.append(draw(st.binary(min_size=last, max_size=last)))
    return packets, stride


@given(runs())
def test_a_run_reads_back_as_its_packets(case: tuple[list[bytes], int]) -> None:
    packets, stride = case
    buffer = bytearray(stride * len(packets))
    for i, packet in enumerate(packets):
        buffer[i * stride : i * stride + len(packet)] = packet
    run = PacketRun(
        buffer, len(packets), stride, len(packets[0]) if len(packets) > 1 else len(packets[-1]), len(packets[-1])
    )
    assert len(run) == len(packets)
    assert list(run) == packets
    assert run.packets() == packets
    assert [run[i] for i in range(len(run))] == packets
    assert run[-1] == packets[-1]
    assert run[1:] == packets[1:]
    assert [bytes(run.view(i)) for i in range(len(run))] == packets
    assert run.total_bytes() == sum(map(len, packets))


@pytest.mark.parametrize(
    ("length", "count", "stride", "size", "last"),
    [(100, 0, 10, 10, 10), (100, 2, 5, 10, 10), (100, 2, 10, 10, 11), (100, 2, 10, 10, 0), (15, 2, 10, 10, 6)],
)
def test_a_shape_that_does_not_fit_is_refused(length: int, count: int, stride: int, size: int, last: int) -> None:
    with pytest.raises(ValueError, match=r"packet|buffer"):
        PacketRun(bytes(length), count, stride, size, last)


def test_an_index_out_of_range_raises() -> None:
    run = PacketRun(bytes(20), 2, 10, 10)
    with pytest.raises(IndexError):
        run[2]


@st.composite
def header_runs(draw: st.DrawFn) -> tuple[bytes | bytearray | memoryview, int, int]:
    """A run of IPv4 (no options) or IPv6 packets of one length, every header a copy of the first, then perhaps a
    few header bytes of some rows changed; the buffer as ``bytes``, ``bytearray`` or a ``memoryview``."""
    version = draw(st.sampled_from([4, 6]))
    header_size = ip.IPV4_HEADER_SIZE if version == 4 else ip.IPV6_HEADER_SIZE
    size = draw(st.integers(header_size, header_size + 40))
    stride = size + draw(st.integers(0, 16))
    count = draw(st.integers(1, 12))
    if version == 4:
        header = bytearray(bytes([0x45, 0]) + size.to_bytes(2, "big") + bytes(16))
    else:
        header = bytearray(bytes([0x60, 0, 0, 0]) + (size - 40).to_bytes(2, "big") + bytes(34))
    header[header_size - 32 if version == 6 else 12 : header_size] = draw(
        st.binary(min_size=32 if version == 6 else 8, max_size=32 if version == 6 else 8)
    )
    row = bytes(header) + draw(st.binary(min_size=size - header_size, max_size=size - header_size))
    buffer = bytearray((row + bytes(stride - size)) * count)
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, count - 1)) * stride + draw(st.integers(0, header_size - 1))  # a header byte
        buffer[at] = draw(st.integers(0, 255))
    kind = draw(st.sampled_from([bytes, bytearray, memoryview]))
    return kind(buffer), count, stride


def _rows(buffer: bytes | bytearray | memoryview, count: int, stride: int) -> list[bytes]:
    return [bytes(buffer[i * stride : (i + 1) * stride]) for i in range(count)]


@given(header_runs())
def test_uniform_source_names_only_what_every_row_has_and_sees_identical_headers(
    case: tuple[bytes | bytearray | memoryview, int, int],
) -> None:
    """Sound: a source and length it gives are those of every row (each read by ``ip.source_and_length``).
    Complete where it matters: a run whose rows all start with the same 40 bytes is always recognised."""
    buffer, count, stride = case
    found = uniform_source(buffer, count, stride)
    rows = _rows(buffer, count, stride)
    if found is not None:
        assert all(ip.source_and_length(row) == found for row in rows)
    first = ip.source_and_length(rows[0])
    if first is not None and all(row[:40] == rows[0][:40] for row in rows) and rows[0][0] in (0x45, 0x60):
        assert found == first


@given(header_runs())
def test_uniform_destination_names_only_what_every_packet_has_and_sees_identical_headers(
    case: tuple[bytes | bytearray | memoryview, int, int],
) -> None:
    buffer, count, stride = case
    rows = _rows(buffer, count, stride)
    size = ip.source_and_length(rows[0])
    if size is None:
        return  # no run of this length to make
    run = PacketRun(buffer, count, stride, size[1], size[1])
    found = uniform_destination(run)
    if found is not None:
        assert all(ip.destination(row) == found for row in rows)
    first = ip.destination(rows[0])
    if first is not None and all(row[:40] == rows[0][:40] for row in rows) and rows[0][0] in (0x45, 0x60):
        assert found == first
