"""Transport data path between two in-memory ``Device`` objects (wireguard-go BenchmarkThroughput, without sockets).

A session is set up once per module with a real handshake over ``wgpy.testing.MemoryNetwork``; after that the
benchmarks drive the two devices directly (no ``MemoryNetwork``, whose trace list grows with every datagram):

- ``test_crypto_only``: the floor at the same size, measured in the same run: one ``encrypt`` and one
  ``decrypt`` of the padded packet with prebuilt ``cryptography`` ChaCha20Poly1305 objects, nothing else.
- ``test_round_trip``: ``A.send_packet`` → ``A.datagrams_to_send`` → ``B.receive_datagram`` →
  ``B.packets_to_tun``: everything the core does per packet, both sides, crypto included.
- ``test_round_trip_batched``: the same, but A gets the whole batch in one ``send_packets`` call, as the asyncio
  driver hands it what one TUN wake-up read.
- ``test_send_only`` / ``test_receive_only``: the two halves of the round trip, to see which side costs what.

Each round moves ``BATCH`` packets; ``extra_info`` records ``packets_per_second``, ``MB_per_second`` (of inner
packet bytes) and, for the round trip, ``ratio_to_crypto_only`` (per-packet cost / crypto-only cost, both from this
run's means). ``benchmarks/ratios.py`` computes the same ratio with ``timeit`` outside pytest.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wgpy import crypto
from wgpy.device import Device
from wgpy.events import Endpoint
from wgpy.keypair import padded_length
from wgpy.keys import PrivateKey
from wgpy.testing import MemoryNetwork

BATCH: Final = 100
SIZES: Final = (1420, 64)
MTU: Final = 1420
ENDPOINT_A: Final[Endpoint] = ("192.0.2.1", 51820)
ENDPOINT_B: Final[Endpoint] = ("192.0.2.2", 51820)
ADDR_A: Final = bytes([10, 0, 0, 1])
ADDR_B: Final = bytes([10, 0, 0, 2])
NOW: Final = 10.0  # the clock stands still during a benchmark: far from every rekey and reject limit

_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")

_crypto_only_mean: dict[int, float] = {}


def ipv4_packet(size: int, src: bytes = ADDR_A, dst: bytes = ADDR_B) -> bytes:
    """A UDP-in-IPv4 packet of exactly ``size`` bytes (checksum left zero: the core does not check it)."""
    header = _IPV4.pack(0x45, 0, size, 0, 0, 64, 17, 0, src, dst)
    return header + bytes(i & 0xFF for i in range(size - len(header)))


@dataclass
class Session:
    """Two devices with a confirmed session: A (10.0.0.1) sends to B (10.0.0.2)."""

    a: Device
    b: Device


def make_session() -> Session:
    """Two devices that know each other, with a handshake done and confirmed (A initiated)."""
    a = Device(PrivateKey(random.Random("a").randbytes(32)), rng=random.Random(1).randbytes, mtu=MTU)
    b = Device(PrivateKey(random.Random("b").randbytes(32)), rng=random.Random(2).randbytes, mtu=MTU)
    assert a.public_key is not None and b.public_key is not None
    a.add_peer(b.public_key, endpoint=ENDPOINT_B, allowed_ips=["10.0.0.2/32"])
    b.add_peer(a.public_key, endpoint=ENDPOINT_A, allowed_ips=["10.0.0.1/32"])
    net = MemoryNetwork()
    node_a = net.attach(a, ENDPOINT_A)
    node_b = net.attach(b, ENDPOINT_B)
    net.now = NOW - 1.0
    net.send_packet(a, ipv4_packet(64))
    net.send_packet(b, ipv4_packet(64, ADDR_B, ADDR_A))  # confirms B's keypair (key confirmation)
    assert len(node_b.delivered) == 1 and len(node_a.delivered) == 1, "handshake did not complete"
    return Session(a, b)


def send_batch(a: Device, packet: bytes, count: int, now: float = NOW) -> list[tuple[bytes, Endpoint]]:
    """What ``A`` sends for ``count`` copies of ``packet``."""
    send = a.send_packet
    for _ in range(count):
        send(packet, now)
    return a.datagrams_to_send()


def receive_variants(size: int, batch: int, batches: int) -> tuple[Device, Callable[[], None], Callable[[], None]]:
    """B of a new session, with ``batches`` batches of ``batch`` datagrams of ``size``-byte packets from A, and two
    ways to take the next batch: one ``receive_datagram`` call a datagram, or one ``receive_datagrams`` call."""
    session = make_session()
    packet = ipv4_packet(size)
    queued = iter([send_batch(session.a, packet, batch) for _ in range(batches)])
    device = session.b

    def one_by_one() -> None:
        receive = device.receive_datagram
        for data, endpoint in next(queued):
            receive(data, endpoint, NOW)
        device.packets_to_tun()

    def batched() -> None:
        device.receive_datagrams(next(queued), NOW)
        device.packets_to_tun()

    return device, one_by_one, batched


def round_trip(a: Device, b: Device, packet: bytes, count: int, now: float = NOW) -> int:
    """Move ``count`` packets from A's TUN to B's TUN, one at a time, as a driver would. Returns packets delivered."""
    send = a.send_packet
    drain_a = a.datagrams_to_send
    receive = b.receive_datagram
    drain_b = b.packets_to_tun
    delivered = 0
    for _ in range(count):
        send(packet, now)
        for data, _endpoint in drain_a():
            receive(data, ENDPOINT_A, now)
        delivered += len(drain_b())
    return delivered


def round_trip_batched(a: Device, b: Device, packets: list[bytes], now: float = NOW) -> int:
    """The same with the batch input a driver uses after one TUN wake-up: ``send_packets`` of the whole batch."""
    a.send_packets(packets, now)
    receive = b.receive_datagram
    for data, _endpoint in a.datagrams_to_send():
        receive(data, ENDPOINT_A, now)
    return len(b.packets_to_tun())


class CryptoOnly:
    """The same AEAD work as one packet of the round trip (seal then open of the padded packet), nothing else."""

    def __init__(self, size: int) -> None:
        key = random.Random(size).randbytes(32)
        self.send = crypto.Aead(key)
        self.recv = crypto.Aead(key)
        self.plaintext = ipv4_packet(size).ljust(padded_length(size, MTU), b"\0")
        self.counter = 0

    def run(self, count: int) -> int:
        encrypt, decrypt, plaintext = self.send.encrypt, self.recv.decrypt, self.plaintext
        nonce = crypto.aead_nonce
        opened = 0
        counter = self.counter
        for _ in range(count):
            n = nonce(counter)
            opened += len(decrypt(n, encrypt(n, plaintext, None), None))
            counter += 1
        self.counter = counter
        return opened


def _record(benchmark: BenchmarkFixture, size: int) -> float:
    benchmark.extra_info["packet_size"] = size
    benchmark.extra_info["packets_per_round"] = BATCH
    stats = benchmark.stats
    if stats is None:
        return 0.0
    per_packet: float = stats.stats.mean / BATCH
    benchmark.extra_info["us_per_packet"] = round(per_packet * 1e6, 3)
    benchmark.extra_info["packets_per_second"] = round(1.0 / per_packet)
    benchmark.extra_info["MB_per_second"] = round(size / per_packet / 1e6, 2)
    return per_packet


@pytest.fixture
def session() -> Session:
    return make_session()


@pytest.mark.parametrize("size", SIZES)
def test_crypto_only(benchmark: BenchmarkFixture, size: int) -> None:
    job = CryptoOnly(size)
    opened = benchmark(job.run, BATCH)
    assert opened == BATCH * padded_length(size, MTU)
    _crypto_only_mean[size] = _record(benchmark, size)


@pytest.mark.parametrize("size", SIZES)
def test_round_trip(benchmark: BenchmarkFixture, session: Session, size: int) -> None:
    packet = ipv4_packet(size)
    delivered = benchmark(round_trip, session.a, session.b, packet, BATCH)
    assert delivered == BATCH
    assert not session.b.stats.drops, session.b.stats.drops
    per_packet = _record(benchmark, size)
    if _crypto_only_mean.get(size):
        benchmark.extra_info["ratio_to_crypto_only"] = round(per_packet / _crypto_only_mean[size], 2)


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_batched(benchmark: BenchmarkFixture, session: Session, size: int) -> None:
    packets = [ipv4_packet(size)] * BATCH
    delivered = benchmark(round_trip_batched, session.a, session.b, packets)
    assert delivered == BATCH
    assert not session.b.stats.drops, session.b.stats.drops
    per_packet = _record(benchmark, size)
    if _crypto_only_mean.get(size):
        benchmark.extra_info["ratio_to_crypto_only"] = round(per_packet / _crypto_only_mean[size], 2)


@pytest.mark.parametrize("size", SIZES)
def test_send_only(benchmark: BenchmarkFixture, session: Session, size: int) -> None:
    packet = ipv4_packet(size)
    out = benchmark(send_batch, session.a, packet, BATCH)
    assert len(out) == BATCH and len(out[0][0]) == 32 + padded_length(size, MTU)
    _record(benchmark, size)


@pytest.mark.parametrize("size", SIZES)
def test_receive_only(benchmark: BenchmarkFixture, session: Session, size: int) -> None:
    packet = ipv4_packet(size)
    a, b = session.a, session.b

    def setup() -> tuple[tuple[list[tuple[bytes, Endpoint]]], dict[str, object]]:
        return (send_batch(a, packet, BATCH),), {}

    def receive(datagrams: list[tuple[bytes, Endpoint]]) -> int:
        receive_datagram = b.receive_datagram
        for data, _endpoint in datagrams:
            receive_datagram(data, ENDPOINT_A, NOW)
        return len(b.packets_to_tun())

    delivered = benchmark.pedantic(receive, setup=setup, rounds=300, iterations=1, warmup_rounds=5)  # type: ignore[no-untyped-call]
    assert delivered == BATCH
    assert not b.stats.drops, b.stats.drops
    _record(benchmark, size)


_encrypt_only_mean: dict[int, float] = {}


class EncryptOnly:
    """The AEAD work of the encrypt path alone: one seal of the padded packet, nothing else."""

    def __init__(self, size: int) -> None:
        self.aead = crypto.Aead(random.Random(size).randbytes(32))
        self.plaintext = ipv4_packet(size).ljust(padded_length(size, MTU), b"\0")
        self.counter = 0

    def run(self, count: int) -> int:
        encrypt, plaintext, nonce = self.aead.encrypt, self.plaintext, crypto.aead_nonce
        sealed = 0
        counter = self.counter
        for _ in range(count):
            sealed += len(encrypt(nonce(counter), plaintext, None))
            counter += 1
        self.counter = counter
        return sealed


@pytest.mark.parametrize("size", SIZES)
def test_encrypt_only(benchmark: BenchmarkFixture, size: int) -> None:
    job = EncryptOnly(size)
    sealed = benchmark(job.run, BATCH)
    assert sealed == BATCH * (padded_length(size, MTU) + 16)
    _encrypt_only_mean[size] = _record(benchmark, size)


@pytest.mark.parametrize("size", SIZES)
def test_send_batched(benchmark: BenchmarkFixture, session: Session, size: int) -> None:
    """The encrypt path as the driver drives it: one ``send_packets`` per TUN wake-up, then the drain."""
    packets = [ipv4_packet(size)] * BATCH

    def send() -> list[tuple[bytes, Endpoint]]:
        session.a.send_packets(packets, NOW)
        return session.a.datagrams_to_send()

    out = benchmark(send)
    assert len(out) == BATCH and len(out[0][0]) == 32 + padded_length(size, MTU)
    per_packet = _record(benchmark, size)
    if size in _encrypt_only_mean:
        benchmark.extra_info["ratio_to_encrypt_only"] = round(per_packet / _encrypt_only_mean[size], 2)
