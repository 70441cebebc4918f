"""``wgpy.drivers.steering``: the kernel queues transport messages on one socket and handshake messages, by source
address, on others (issue #11 item 2), and a port shared with a socket that is not ours is refused."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Iterator

import pytest

from wgpy.drivers.steering import HANDSHAKE_SOCKETS, SourceAdmission, SteeringUnavailable, bind_steered


def _nothing(sock: socket.socket) -> None:
    pass


@pytest.fixture
def group() -> Iterator[list[socket.socket]]:
    try:
        sockets = bind_steered(socket.AF_INET, 0, _nothing)
    except SteeringUnavailable as exc:
        pytest.skip(f"no steering here: {exc}")
    try:
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def _read_all(sock: socket.socket) -> list[tuple[bytes, str]]:
    got: list[tuple[bytes, str]] = []
    while True:
        try:
            data, address = sock.recvfrom(2048)
        except BlockingIOError:
            return got
        got.append((data, address[0]))


def test_transport_to_the_first_socket_handshakes_by_source(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    assert len(group) == 1 + HANDSHAKE_SOCKETS
    assert {sock.getsockname()[1] for sock in group} == {port}
    sources = [f"127.0.0.{host}" for host in range(1, 1 + HANDSHAKE_SOCKETS)]
    for source in sources:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind((source, 0))
            for message_type in (1, 2, 3, 4):
                sender.sendto(bytes([message_type, 0, 0, 0]) + b"x" * 28, ("127.0.0.1", port))
            sender.sendto(b"", ("127.0.0.1", port))  # an empty datagram goes to the transport socket too
    time.sleep(0.05)
    transport = _read_all(group[0])
    assert sorted(source for _, source in transport) == sorted(sources * 2)
    assert all(data[:1] in (b"\x04", b"") for data, _ in transport)
    seen: dict[str, int] = {}
    for index, sock in enumerate(group[1:], start=1):
        for data, source in _read_all(sock):
            assert data[0] in (1, 2, 3)
            assert seen.setdefault(source, index) == index  # one source, one socket
    # Consecutive addresses land on different sockets: one flooding host fills only its own queue.
    assert sorted(seen.values()) == list(range(1, 1 + HANDSHAKE_SOCKETS))


def test_a_port_shared_with_another_socket_is_refused(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    # Another socket of this user joins the group by setting SO_REUSEPORT too: a second group on the port is refused.
    with pytest.raises(OSError) as refused:
        bind_steered(socket.AF_INET, port, _nothing)
    assert refused.value.errno == errno.EADDRINUSE
    # A plain socket cannot bind the port at all, and the group still works.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain, pytest.raises(OSError):
        plain.bind(("0.0.0.0", port))  # noqa: S104 - the test binds what the tunnel binds


def test_source_admission_charges_each_address() -> None:
    admission = SourceAdmission(packets_per_second=10, burst=5)
    now = 100.0
    assert [admission.allow("10.0.0.1", now) for _ in range(7)] == [True] * 5 + [False] * 2
    assert admission.allow("10.0.0.2", now)  # another address has its own bucket
    assert admission.allow("10.0.0.1", now + 0.1)  # 10/s: one token back after 0.1 s
    assert not admission.allow("not an address", now)
    # IPv6 is keyed by its /64.
    assert [admission.allow(f"fd00::{i}", now) for i in range(1, 7)] == [True] * 5 + [False]


def test_a_flooding_host_does_not_spend_the_admission_of_a_host_in_its_steering_bucket() -> None:
    """Issue #11: the BPF program queues 192.0.2.1 and 192.0.2.9 on the same handshake socket (equal low bits
    of the source address, ``HANDSHAKE_SOCKETS`` = 8), but what a source may cost is charged per address, as the
    kernel's ratelimiter.c (an exact IPv4 address or IPv6 /64 per entry) and wireguard-go's ratelimiter.go (one
    map entry per address) do: 10 s of a 10,000/s flood (40 times the admitted rate) from one never refuse the other, which sends one
    initiation per REKEY_TIMEOUT (5 s). The two still share that socket's kernel queue, which this cannot see."""
    from wgpy.drivers.asyncio_udp import HANDSHAKE_SOURCE_BURST, HANDSHAKE_SOURCE_RATE

    flooder, honest = "192.0.2.1", "192.0.2.9"
    assert int(flooder.rsplit(".")[-1]) % HANDSHAKE_SOCKETS == int(honest.rsplit(".")[-1]) % HANDSHAKE_SOCKETS
    admission = SourceAdmission(HANDSHAKE_SOURCE_RATE, HANDSHAKE_SOURCE_BURST)
    flood_admitted = 0
    honest_answers = []
    for step in range(1000):  # 10 ms steps, 100 flood messages each
        now = 1000.0 + step / 100
        flood_admitted += sum(admission.allow(flooder, now) for _ in range(100))
        if step % 500 == 0:
            honest_answers.append(admission.allow(honest, now))
    assert honest_answers == [True, True]
    # The flooder got its burst and its rate, not more (the kernel's bucket arithmetic, ratelimiter.c).
    assert flood_admitted <= HANDSHAKE_SOURCE_BURST + HANDSHAKE_SOURCE_RATE * 10 + 1
