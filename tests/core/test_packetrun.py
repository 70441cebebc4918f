"""``PacketRun``: a strided run reads back as the packets it was built from."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgpy.packetrun import PacketRun


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
