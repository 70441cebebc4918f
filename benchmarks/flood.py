"""A handshake flood from one host against a live wgpy daemon (issue #11 item 2).

Usage (root): ``python benchmarks/flood.py [--repeat 1] [--out benchmarks/results]``

Three network namespaces on one bridge (``tests/interop/interop_lab.py``; names unique to the run, torn down in
``finally``, only processes it started are stopped): wgpy, its wireguard-go peer, and ``tests/interop/flooder.py``
sending valid-mac1 initiations to wgpy from one address and 64 source ports as fast as one Python process can, for
30 s. During the flood the peer pings through the established session (80 pings, 50 ms apart), then forgets its
session and pings once a second until the new handshake completes (``tests/interop/flood_lab.py``). Printed and
written to ``<out>/flood-<date>.json``.
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

import flood_lab  # type: ignore[import-not-found,unused-ignore]  # noqa: E402 - helpers of the interop tests
from interop_lab import Lab, missing_prerequisites  # type: ignore[import-not-found,unused-ignore]  # noqa: E402


def _cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("flood: needs " + ", ".join(missing), file=sys.stderr)
        return 1
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="wgpy-flood-") as tmp:
            lab = Lab(Path(tmp))
            try:
                result = flood_lab.run(lab)
            finally:
                lab.close()
        print(flood_lab.describe(result))
        runs.append(flood_lab.as_dict(result))
    date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "date": date,
        "machine": {"cpu": _cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version()},
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"flood-{date}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
