"""``UdpSocket.send_contiguous`` makes the same system calls as the per-datagram walk it had at e402d1c.

The walk is kept here as the reference (``_Walk.send_contiguous``); both run on a socket that records every
``sendmsg`` (its bytes, its UDP_SEGMENT size, its endpoint) and ``sendto``, and can refuse GSO from a given
``sendmsg`` on, as a kernel without it does. The sizes are arbitrary lists, and lists shaped as ``SealJob.run_into``
returns them for a run (one size, the last one smaller or equal), around the batch limits.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Sequence

from hypothesis import example, given, settings
from hypothesis import strategies as st

from wgpy.drivers.udp import GSO_MAX_BYTES, GSO_MAX_SEGMENTS, SOL_UDP, UDP_SEGMENT, UdpSocket
from wgpy.events import Endpoint

ENDPOINT: Endpoint = ("192.0.2.1", 51820)


class _Recorder:
    """Enough of a socket for ``UdpSocket``: records the sends; ``sendmsg`` number ``refuse_from`` and later fail
    with EIO (no GSO)."""

    def __init__(self, refuse_from: int | None = None) -> None:
        self.calls: list[tuple[str, bytes, int, Endpoint]] = []
        self.sendmsgs = 0
        self.refuse_from = refuse_from

    def setblocking(self, flag: bool) -> None:
        pass

    def setsockopt(self, *args: object) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def sendmsg(
        self, buffers: Sequence[memoryview], ancillary: Sequence[tuple[int, int, bytes]], flags: int, to: Endpoint
    ) -> int:
        self.sendmsgs += 1
        ((level, kind, value),) = ancillary
        assert (level, kind) == (SOL_UDP, UDP_SEGMENT)
        (segment,) = struct.unpack("=H", value)
        data = b"".join(bytes(b) for b in buffers)
        refused = self.refuse_from is not None and self.sendmsgs > self.refuse_from
        self.calls.append(("refused" if refused else "sendmsg", data, segment, to))  # a refused call is a call too
        if refused:
            raise OSError(errno.EIO, "Input/output error")
        return len(data)

    def sendto(self, data: bytes | memoryview, to: Endpoint) -> int:
        self.calls.append(("sendto", bytes(data), 0, to))
        return len(data)


class _Walk(UdpSocket):
    """``send_contiguous`` as it was at e402d1c: a walk over the sizes, datagram by datagram."""

    def send_contiguous(self, buffer: bytearray, sizes: Sequence[int], endpoint: Endpoint) -> None:
        view = memoryview(buffer)
        count = len(sizes)
        start = 0
        offset = 0
        while start < count:
            size = sizes[start]
            end = start + 1
            total = size
            if self.gso:
                while end < count and end - start < GSO_MAX_SEGMENTS:
                    next_size = sizes[end]
                    if next_size > size or total + next_size > GSO_MAX_BYTES:
                        break
                    total += next_size
                    end += 1
                    if next_size < size:
                        break
            chunk = view[offset : offset + total]
            if end - start == 1:
                self._send_one(chunk, endpoint)
            else:
                self._send_view(chunk, size, end - start, endpoint)
            offset += total
            start = end


_Calls = tuple[list[tuple[str, bytes, int, Endpoint]], bool, int]


def _calls(cls: type[UdpSocket], sizes: list[int], refuse_from: int | None, gso: bool) -> _Calls:
    recorder = _Recorder(refuse_from)
    udp = cls(recorder, gso=gso, gro=False)  # type: ignore[arg-type]
    length = sum(sizes) + 7  # a tail that is never sent
    buffer = bytearray((bytes(range(251)) * (length // 251 + 1))[:length])
    udp.send_contiguous(buffer, sizes, ENDPOINT)
    return recorder.calls, udp.gso, udp.send_errors


# Sizes around the limits: 65000 // 1016 == 63 (the byte limit a datagram before the segment limit), a 32-byte
# keepalive, a segment too large to batch at all.
_EDGES = [1, 32, 148, 1000, 1015, 1016, 1017, 1452, 2000, 2031, 32500, 32501, 40000, 65000, 65001]
_SIZE = st.one_of(st.sampled_from(_EDGES), st.integers(1, 70_000))


@st.composite
def _run_sizes(draw: st.DrawFn) -> list[int]:
    """What ``SealJob.run_into`` returns for a run: ``[size] * (n - 1) + [last]``, ``last <= size``."""
    size = draw(_SIZE)
    count = draw(st.one_of(st.integers(1, 3 * GSO_MAX_SEGMENTS + 2), st.sampled_from([62, 63, 64, 65, 128, 129])))
    last = draw(st.one_of(st.just(size), st.integers(1, size)))
    return [size] * (count - 1) + [last]


_SIZES = st.one_of(
    _run_sizes(),
    st.lists(st.sampled_from([32, 1000, 1452, 1452, 1452, 40000]), max_size=150),
    st.lists(_SIZE, max_size=80),
    st.builds(lambda a, b: a + b, _run_sizes(), _run_sizes()),
)


@settings(max_examples=600, deadline=None)
@given(sizes=_SIZES, refuse_from=st.one_of(st.none(), st.integers(0, 3)), gso=st.booleans())
@example(sizes=[2000] * 32 + [1000], refuse_from=None, gso=True)  # 32 of 2000 and the last fill 65000 exactly
@example(sizes=[2000] * 32 + [1001], refuse_from=None, gso=True)  # one byte over: the last goes alone
@example(sizes=[1452] * 100 + [700], refuse_from=1, gso=True)  # refused on the second batch
def test_send_contiguous_makes_the_walks_calls(sizes: list[int], refuse_from: int | None, gso: bool) -> None:
    """Same ``sendmsg``/``sendto`` calls, with the same bytes, segment sizes and order, the same GSO state after a
    refusal, and the same error count, for any list of sizes."""
    assert _calls(UdpSocket, sizes, refuse_from, gso) == _calls(_Walk, sizes, refuse_from, gso)


def test_a_sealed_run_of_44_is_one_sendmsg() -> None:
    """The daemon's case: a 44-segment TSO read sealed to 1452-byte messages, the last shorter, in one GSO send."""
    sizes = [1452] * 43 + [700]
    calls, gso, errors = _calls(UdpSocket, sizes, None, True)
    assert gso and errors == 0
    assert [(kind, len(data), segment) for kind, data, segment, _ in calls] == [("sendmsg", 43 * 1452 + 700, 1452)]
