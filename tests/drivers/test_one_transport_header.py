"""``one_transport_header``, the tunnel's test of whether a GRO read goes whole to ``Device.receive_gro``, agrees with
the expression it replaced (kept here as the reference: eight strided byte columns) on any read.

The reads are rows of ``segment`` bytes that mostly share one 8-byte head, with a byte of some heads changed, and a
shorter last datagram or none; segments of every residue mod 4, tiny ones, and the daemon's 1452.
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from wgpy.drivers.asyncio_udp import one_transport_header


def _reference(data: bytes, segment: int) -> bool:
    """The check of ``Tunnel._on_socket_readable`` at e402d1c."""
    full = len(data) - len(data) % segment
    head = data[:8]
    return (
        head[:1] == b"\x04"
        and all(data[j:full:segment] == head[j : j + 1] * (full // segment) for j in range(8))
        and (full == len(data) or data[full : full + 8] == head)
    )


@st.composite
def _reads(draw: st.DrawFn) -> tuple[bytes, int]:
    segment = draw(st.one_of(st.integers(1, 40), st.sampled_from([1452, 1453, 1454, 1455, 1424, 148])))
    rows = draw(st.integers(1, 50))
    head = draw(st.one_of(st.just(b"\x04\x00\x00\x00\x11\x22\x33\x44"), st.binary(min_size=8, max_size=8)))
    filler = draw(st.binary(min_size=segment, max_size=segment))
    row = (head + filler)[:segment] if segment >= 8 else filler
    data = bytearray(row * rows + (head + filler)[: draw(st.integers(0, segment - 1))])
    for _ in range(draw(st.integers(0, 2))):  # change a byte of a head now and then
        at = draw(st.integers(0, len(data) - 1)) // segment * segment + draw(st.integers(0, 7))
        if at < len(data):
            data[at] ^= draw(st.integers(1, 255))
    return bytes(data), segment


@settings(max_examples=1500, deadline=None)
@given(read=_reads())
@example(read=(b"\x04\x00\x00\x00\x11\x22\x33\x44" * 2 * 44, 16))
@example(read=((b"\x04\x00\x00\x00\x11\x22\x33\x44" + bytes(1444)) * 43 + b"\x04\x00\x00\x00\x11\x22\x33\x44", 1452))
@example(read=((b"\x04\x00\x00\x00\x11\x22\x33\x44" + bytes(1444)) * 43 + b"\x04\x00\x00\x00\x11\x22\x33\x45", 1452))
@example(read=((b"\x04\x00\x00\x00\x11\x22\x33\x44" + bytes(1444)) * 3 + b"\x04\x00\x00\x00\x11\x22\x33", 1452))
def test_one_transport_header_is_the_bytewise_check(read: tuple[bytes, int]) -> None:
    data, segment = read
    assert one_transport_header(data, segment) == _reference(data, segment)


def test_the_daemons_read_takes_the_word_columns() -> None:
    """A read of 44 messages of 1452 bytes passes, and fails for a changed byte in any head (the word path)."""
    head = b"\x04\x00\x00\x00\x11\x22\x33\x44"
    data = bytearray((head + bytes(range(200)) * 8)[:1452] * 43 + head + bytes(692))
    assert one_transport_header(bytes(data), 1452)
    for row in (0, 1, 42, 43):
        for byte in range(8):
            changed = bytearray(data)
            changed[row * 1452 + byte] ^= 0x80
            assert not one_transport_header(bytes(changed), 1452), (row, byte)
