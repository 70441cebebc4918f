"""Per-packet cost of the transport round trip against its crypto-only floor, side by side with ``timeit``.

Usage: ``python benchmarks/ratios.py [--size 1420] [--number 2000] [--repeat 5]``

It builds the same two in-memory devices as ``bench_transport.py`` (a real handshake, then A sends to B) and times,
alternately in each of ``--repeat`` repetitions so that both see the same machine state:

- the round trip: ``A.send_packet`` → ``A.datagrams_to_send`` → ``B.receive_datagram`` → ``B.packets_to_tun``;
- crypto only: one ChaCha20-Poly1305 ``encrypt`` and one ``decrypt`` of the same padded packet with prebuilt
  ``cryptography`` objects (what the round trip cannot avoid);

and prints the medians in microseconds per packet and their ratio. A ratio of 1.0 would mean that the Python
around the AEAD costs nothing; what lies above it is the protocol engine's own overhead.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import machineinfo
from bench_transport import CryptoOnly, ipv4_packet, make_session, round_trip


def measure(size: int, number: int, repeat: int) -> tuple[list[float], list[float]]:
    """Seconds per packet for the round trip and for crypto only, ``repeat`` samples each."""
    session = make_session()
    packet = ipv4_packet(size)
    job = CryptoOnly(size)
    if round_trip(session.a, session.b, packet, 100) != 100:
        raise RuntimeError("the round trip does not deliver packets")
    job.run(100)
    trip: list[float] = []
    floor: list[float] = []
    for _ in range(repeat):
        trip.append(timeit.timeit(lambda: round_trip(session.a, session.b, packet, number), number=1) / number)
        floor.append(timeit.timeit(lambda: job.run(number), number=1) / number)
    if session.b.stats.drops:
        raise RuntimeError(f"the receiver dropped packets: {dict(session.b.stats.drops)}")
    return trip, floor


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, action="append", help="inner packet size in bytes (default 1420 and 64)")
    parser.add_argument("--number", type=int, default=2000, help="packets per sample (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="samples of each (default 5); medians are reported")
    args = parser.parse_args(argv)
    sizes: list[int] = args.size or [1420, 64]
    print(f"machine: {machineinfo.one_line()}")
    print(f"{'size':>6} {'round trip µs/pkt':>18} {'crypto only µs/pkt':>19} {'ratio':>6} {'round trip pkt/s':>17}")
    for size in sizes:
        trip, floor = measure(size, args.number, args.repeat)
        trip_median, floor_median = statistics.median(trip), statistics.median(floor)
        print(
            f"{size:>6} {trip_median * 1e6:>18.2f} {floor_median * 1e6:>19.2f} "
            f"{trip_median / floor_median:>6.2f} {1 / trip_median:>17,.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
