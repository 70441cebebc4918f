"""The driver's UDP socket on loopback: GSO sends and GRO receives give back exactly the datagrams sent, in order.

No root needed: two sockets on 127.0.0.1 in this process.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from wgpy.drivers.udp import UdpSocket


def _pair(*, gso: bool = True, gro: bool = True) -> tuple[UdpSocket, UdpSocket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    return UdpSocket(a, gso=gso, gro=gro), UdpSocket(b, gso=gso, gro=gro)


@pytest.fixture
def pair() -> Iterator[tuple[UdpSocket, UdpSocket]]:
    a, b = _pair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def _drain(udp: UdpSocket, expected: int, limit: int = 64) -> tuple[list[bytes], int]:
    """Read until ``expected`` datagrams arrived (or 2 s passed); returns them and the number of batches read."""
    got: list[bytes] = []
    batches = 0
    deadline = time.monotonic() + 2.0
    while len(got) < expected and time.monotonic() < deadline:
        batch = udp.receive_batch(limit)
        if batch:
            batches += 1
            got += [data for data, _ in batch]
        else:
            time.sleep(0.001)
    return got, batches


def _datagrams(count: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(count)]


def test_gso_run_comes_back_whole_and_in_order(pair: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = pair
    sent = [*_datagrams(40, 1000), os.urandom(300)]  # a shorter last datagram closes a GSO run
    endpoint = b.sock.getsockname()
    a.send_batch([(d, endpoint) for d in sent])
    got, _ = _drain(b, len(sent))
    assert got == sent


def test_gro_brings_a_gso_run_in_one_read(pair: tuple[UdpSocket, UdpSocket]) -> None:
    a, b = pair
    if not (a.gso and b.gro):
        pytest.skip("this kernel offers no UDP GSO/GRO (needs Linux 5.0+)")
    sent = _datagrams(30, 1200)
    a.send_batch([(d, b.sock.getsockname()) for d in sent])
    time.sleep(0.05)
    batch = b.receive_batch(1)  # one read
    assert [data for data, _ in batch] == sent
    assert {address for _, address in batch} == {a.sock.getsockname()}


def test_mixed_sizes_and_senders_without_offload() -> None:
    a, b = _pair(gso=False, gro=False)
    c, _unused = _pair(gso=False, gro=False)
    try:
        assert not b.gro
        endpoint = b.sock.getsockname()
        first = _datagrams(5, 700)
        second = [b"", b"x", os.urandom(1420)]
        a.send_batch([(d, endpoint) for d in first])
        c.send_batch([(d, endpoint) for d in second])
        got, _ = _drain(b, len(first) + len(second))
        assert sorted(got) == sorted(first + second)
        assert [d for d in got if d in first] == first  # one sender's order is kept
    finally:
        for s in (a, b, c, _unused):
            s.close()


def test_gro_and_plain_receive_agree(pair: tuple[UdpSocket, UdpSocket]) -> None:
    """The same stream of runs read with GRO and without gives the same datagrams."""
    a, b = pair
    plain_sender, plain = _pair(gro=False)
    try:
        sent: list[bytes] = []
        for size in (64, 1420, 148, 1420, 32):
            sent += _datagrams(7, size)
        a.send_batch([(d, b.sock.getsockname()) for d in sent])
        plain_sender.send_batch([(d, plain.sock.getsockname()) for d in sent])
        with_gro, _ = _drain(b, len(sent))
        without, _ = _drain(plain, len(sent))
        assert with_gro == sent
        assert without == sent
    finally:
        plain_sender.close()
        plain.close()


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
def test_contiguous_datagrams_come_back_as_they_lie_in_the_buffer(gso: bool) -> None:
    """``send_contiguous``: datagrams back to back in one buffer arrive as if each had been sent alone."""
    a, b = _pair(gso=gso)
    try:
        sent: list[bytes] = []
        for count, size in ((70, 1452), (1, 32), (3, 148), (5, 1452), (1, 1000), (2, 1452)):
            sent += _datagrams(count, size)  # 70 > 64 segments, and shorter ones closing runs
        buffer = bytearray(b"".join(sent) + b"tail that is not sent")
        a.send_contiguous(buffer, [len(d) for d in sent], b.sock.getsockname())
        got, _ = _drain(b, len(sent))
        time.sleep(0.05)
        assert got == sent
        assert b.receive_batch(64) == []  # nothing more: the tail of the buffer stayed
        assert a.send_errors == 0
    finally:
        a.close()
        b.close()


class _GsoRefused:
    """A socket whose ``sendmsg`` fails as on a kernel or device without UDP GSO (EIO); everything else is the real
    socket's."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.refusals = 0

    def sendmsg(self, *args: object) -> int:
        self.refusals += 1
        raise OSError(errno.EIO, "Input/output error")

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


@pytest.mark.parametrize("contiguous", [False, True])
def test_a_kernel_refusing_gso_gets_the_datagrams_one_by_one(contiguous: bool) -> None:
    """The first refused GSO send turns GSO off and sends that run's datagrams singly: nothing is lost, in order,
    with the shorter last one intact; later sends go one by one without trying GSO again."""
    a, b = _pair()
    try:
        if not a.gso:
            pytest.skip("this kernel offers no UDP GSO (needs Linux 5.0+)")
        refusing = _GsoRefused(a.sock)
        a.sock = refusing  # type: ignore[assignment]
        sent = [*_datagrams(10, 900), os.urandom(200)]
        endpoint = b.sock.getsockname()
        if contiguous:
            a.send_contiguous(bytearray(b"".join(sent)), [len(d) for d in sent], endpoint)
        else:
            a.send_batch([(d, endpoint) for d in sent])
        assert refusing.refusals == 1 and not a.gso and a.send_errors == 0
        again = _datagrams(5, 900)
        a.send_batch([(d, endpoint) for d in again])
        assert refusing.refusals == 1
        got, _ = _drain(b, len(sent) + len(again))
        assert got == sent + again
    finally:
        a.sock = a.sock._sock if isinstance(a.sock, _GsoRefused) else a.sock
        a.close()
        b.close()
