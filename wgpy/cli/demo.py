"""``wgpy demo [--seconds N] [--size BYTES] [--worker]``: two wgpy peers over UDP on 127.0.0.1 (``wgpy.tools.demo``).

Prints a line every half second and a summary; exit status 0 when echoes came back, 1 otherwise or for bad options
(one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ..tools.demo import run_demo

__all__ = ["main"]


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="wgpy demo", description="two wgpy peers over UDP on 127.0.0.1")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=1000, help="UDP payload bytes per packet")
    parser.add_argument(
        "--worker", action="store_true", help="give each peer a data-plane worker process (sealing on a second core)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600 or not 0 <= args.size <= 1400:
        print("wgpy demo: --seconds must be in (0, 3600] and --size in [0, 1400]", file=sys.stderr)
        return 1
    result = asyncio.run(run_demo(args.seconds, args.size, print, worker=args.worker))
    return 0 if result["echoed_to_a"] > 0 else 1
