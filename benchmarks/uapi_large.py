"""Forwarding latency during large UAPI operations on a live wgpy daemon (issue #11 items 3 and 4).

Usage (root): ``python benchmarks/uapi_large.py [--peers 100000] [--out benchmarks/results]``

Two network namespaces joined by a veth, wgpy in the first and wireguard-go in the second (built, configured and
torn down by ``tests/interop/interop_lab.py``; names unique to the run, only processes it started are stopped).
wireguard-go pings wgpy through the tunnel every 20 ms while the wgpy daemon gets, over its UAPI socket, a ``set=1``
adding ``--peers`` peers (random keys, one /32 each), two ``get=1`` and a ``set=1`` removing them
(``tests/interop/large_config.py``). Printed and written to ``<out>/uapi-large-<date>.json``: per phase the time of
the request, the pings sent during it, how many were answered, the largest round trip, and the daemon's RSS after it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))

import large_config  # type: ignore[import-not-found,unused-ignore]  # noqa: E402 - helpers of the interop tests
from interop_lab import Lab, missing_prerequisites  # type: ignore[import-not-found,unused-ignore]  # noqa: E402


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("uapi_large: needs " + ", ".join(missing), file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="wgpy-uapi-large-") as tmp:
        lab = Lab(Path(tmp))
        try:
            a, b = lab.pair("wgpy", "wireguard-go")
            lab.wait_for_ping(b, a.inner)
            phases = large_config.measure(lab, a, b, args.peers)
        finally:
            lab.close()
    print(f"{'phase':<10} {'seconds':>8} {'pings':>9} {'max RTT ms':>11} {'RSS MiB':>8}  answer")
    for phase in phases:
        print(
            f"{phase.name:<10} {phase.seconds:>8.2f} {phase.pings_answered:>4}/{phase.pings_sent:<4} "
            f"{phase.max_rtt_ms:>11.1f} {phase.rss_kib_after / 1024:>8.1f}  {phase.errno_line}"
        )
    date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "date": date,
        "peers": args.peers,
        "machine": {"cpu": _cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version()},
        "phases": large_config.as_dicts(phases),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"uapi-large-{date}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
