"""Forwarding latency during large UAPI operations on a live wgpy daemon (issue #11 items 3 and 4).

Usage (root): ``python benchmarks/uapi_large.py [--peers 100000] [--out benchmarks/results]``

Two network namespaces joined by a veth, wgpy in the first and wireguard-go in the second (built, configured and
torn down by ``tests/interop/interop_lab.py``; names unique to the run, only processes it started are stopped).
wireguard-go pings wgpy through the tunnel every 20 ms while the wgpy daemon gets, over its UAPI socket, a ``set=1``
adding ``--peers`` peers (random keys, one /32 each), two ``get=1`` and a ``set=1`` removing them
(``tests/interop/large_config.py``). Printed and written to ``<out>/uapi-large-<date>.json``: per phase the time of
the request, the pings sent during it, how many were answered, the largest round trip, and the daemon's RSS after it;
then the RSS ``SETTLE`` seconds after the removal, by kind of mapping (``harness.memory_map``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness import RESULTS, lab_session, memory_map, write_result

SETTLE = 2.0  # seconds after the removal's answer at which RSS is read again, with its breakdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import large_config  # type: ignore[import-not-found,unused-ignore]  # tests/interop, on the path once harness is imported

    with lab_session("wgpy-uapi-large-", "uapi_large") as lab:
        if lab is None:
            return 1
        a, b = lab.pair("wgpy", "wireguard-go")
        lab.wait_for_ping(b, a.inner)
        phases = large_config.measure(lab, a, b, args.peers)
        time.sleep(SETTLE)
        settled = {"seconds_after_removal": SETTLE, "rss_mib": large_config.rss_kib(a.pid) / 1024}
        settled["by_mapping_mib"] = memory_map(a.pid)
    print(f"{'phase':<10} {'seconds':>8} {'pings':>9} {'max RTT ms':>11} {'RSS MiB':>8}  answer")
    for phase in phases:
        print(
            f"{phase.name:<10} {phase.seconds:>8.2f} {phase.pings_answered:>4}/{phase.pings_sent:<4} "
            f"{phase.max_rtt_ms:>11.1f} {phase.rss_kib_after / 1024:>8.1f}  {phase.errno_line}"
        )
    print(f"{SETTLE:.0f} s after the removal: RSS {settled['rss_mib']:.1f} MiB, {settled['by_mapping_mib']}")
    document = {"peers": args.peers, "phases": large_config.as_dicts(phases), "settled": settled}
    write_result(args.out, "uapi-large", document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
