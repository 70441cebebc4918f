"""One UDP GRO read into a device: ``Device.receive_gro`` beside ``receive_datagrams`` on the read's datagrams.

A read is ``ROWS`` (44) transport messages of ``SIZE``-byte (1420) packets from A, one buffer, as one ``recvmsg``
with ``UDP_GRO`` brings them (44 is what fits in one 65,000-byte GSO send at a 1420-byte MTU). Each round takes a
new read, sealed in the setup (not timed), and ends with ``packets_to_tun``:

- ``gro``: ``receive_gro(data, segment, ...)``, the run path (strided header checks, one replay range, every row
  opened from a view of the read).
- ``datagrams``: the read cut into one bytes object per datagram, as ``UdpSocket.receive_batch`` does, then one
  ``receive_datagrams`` call (what the driver did before ``receive_gro``).
- ``decrypt_only``: one ``decrypt`` per message (on a view of it) with the keypair's cipher, nothing else: the
  floor.

``extra_info`` records ``us_per_packet`` and, for ``gro``, ``ratio_to_datagrams`` and ``ratio_to_decrypt_only``
(the per-packet costs of this run). Run as a script (``python benchmarks/bench_receive_gro.py [--rounds 7]``) it
prints the same three with ``timeit`` (best of the repeats, the variants taking turns) and the machine.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_transport
import machineinfo

from wgpy.device import Device
from wgpy.events import Endpoint

ROWS: Final = 44
SIZE: Final = 1420
NOW: Final = bench_transport.NOW
ENDPOINT_A: Final[Endpoint] = bench_transport.ENDPOINT_A
_NONCE_PREFIX: Final = bytes(4)


class Reads:
    """B of a new session, and GRO reads of A's messages sealed on demand."""

    def __init__(self) -> None:
        session = bench_transport.make_session()
        self.a, self.b = session.a, session.b
        self.packets = [bench_transport.ipv4_packet(SIZE)] * ROWS

    def next(self) -> tuple[bytes, int]:
        """A new read: the buffer and its segment size."""
        self.a.send_packets(self.packets, NOW)
        datagrams = [data for data, _ in self.a.datagrams_to_send()]
        segment = len(datagrams[0])
        assert len(datagrams) == ROWS and all(len(d) == segment for d in datagrams)
        return b"".join(datagrams), segment


def receive_gro(b: Device, data: bytes, segment: int) -> int:
    b.receive_gro(data, segment, ENDPOINT_A, NOW)
    return len(b.packets_to_tun())


def receive_datagrams(b: Device, data: bytes, segment: int) -> int:
    b.receive_datagrams([(data[i : i + segment], ENDPOINT_A) for i in range(0, len(data), segment)], NOW)
    return len(b.packets_to_tun())


def decrypt_only(b: Device, data: bytes, segment: int) -> int:
    peer = next(iter(b.peers.values()))
    keypair = peer.keypairs.current
    assert keypair is not None
    decrypt = keypair.recv_aead.decrypt
    view = memoryview(data)
    opened = 0
    for start in range(0, len(data), segment):
        decrypt(_NONCE_PREFIX + data[start + 8 : start + 16], view[start + 16 : start + segment], None)
        opened += 1
    return opened


VARIANTS: Final[dict[str, Callable[[Device, bytes, int], int]]] = {
    "decrypt_only": decrypt_only,
    "datagrams": receive_datagrams,
    "gro": receive_gro,
}
_means: dict[str, float] = {}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_receive_read(benchmark: BenchmarkFixture, variant: str) -> None:
    reads = Reads()
    target = VARIANTS[variant]

    def setup() -> tuple[tuple[Device, bytes, int], dict[str, object]]:
        return (reads.b, *reads.next()), {}

    delivered = benchmark.pedantic(target, setup=setup, rounds=400, iterations=1, warmup_rounds=5)  # type: ignore[no-untyped-call]
    assert delivered == ROWS
    assert not reads.b.stats.drops, reads.b.stats.drops
    benchmark.extra_info["packets_per_round"] = ROWS
    if benchmark.stats is None:
        return
    per_packet: float = benchmark.stats.stats.mean / ROWS
    _means[variant] = per_packet
    benchmark.extra_info["us_per_packet"] = round(per_packet * 1e6, 3)
    if variant == "gro":
        for other in ("datagrams", "decrypt_only"):
            if _means.get(other):
                benchmark.extra_info[f"ratio_to_{other}"] = round(per_packet / _means[other], 3)


def _best(rounds: int, number: int) -> dict[str, float]:
    """Seconds per packet of each variant: the best of ``rounds`` repeats of ``number`` reads, the variants taking
    turns in each repeat (the machine is shared; the sealing is not timed)."""
    sessions = {variant: Reads() for variant in VARIANTS}
    best = dict.fromkeys(VARIANTS, float("inf"))
    for _ in range(rounds):
        for variant, target in VARIANTS.items():
            reads = sessions[variant]
            batch = [reads.next() for _ in range(number)]
            b = reads.b
            started = timeit.default_timer()
            for data, segment in batch:
                target(b, data, segment)
            best[variant] = min(best[variant], (timeit.default_timer() - started) / (number * ROWS))
            assert not b.stats.drops, b.stats.drops
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--number", type=int, default=200, help="reads per repeat")
    args = parser.parse_args()
    print(machineinfo.one_line())
    costs = _best(args.rounds, args.number)
    for variant, cost in costs.items():
        print(f"{variant:>14}: {cost * 1e6:7.3f} us/packet")
    print(f"gro / datagrams:    {costs['gro'] / costs['datagrams']:.3f}")
    print(f"gro / decrypt_only: {costs['gro'] / costs['decrypt_only']:.3f}")


if __name__ == "__main__":
    main()
