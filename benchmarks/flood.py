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
import sys
from pathlib import Path

from harness import RESULTS, lab_session, write_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import flood_lab  # type: ignore[import-not-found,unused-ignore]  # tests/interop, on the path once harness is imported

    runs = []
    for _ in range(args.repeat):
        with lab_session("wgpy-flood-", "flood") as lab:
            if lab is None:
                return 1
            result = flood_lab.run(lab)
        print(flood_lab.describe(result))
        runs.append(flood_lab.as_dict(result))
    write_result(args.out, "flood", {"runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
