"""``wgpy demo [--seconds N] [--size BYTES] [--worker]``: two wgpy peers over UDP on 127.0.0.1 (``wgpy.tools.demo``);
``wgpy demo --mesh``: a management server, the security model's policy and three enrolled peers (``wgpy.tools.mesh_demo``).

Prints a line every half second and a summary; exit status 0 when echoes came back, 1 otherwise or for bad options
(one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from ..tools.demo import run_demo

__all__ = ["main"]


def main(argv: Sequence[str]) -> int:
    if "--mesh" in argv:
        return mesh_main([arg for arg in argv if arg != "--mesh"])
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


def mesh_main(argv: Sequence[str]) -> int:
    """``wgpy demo --mesh [--verbose]``: the security model's mesh in one process (``wgpy.tools.mesh_demo``)."""
    from ..tools.mesh_demo import run_mesh_demo

    parser = argparse.ArgumentParser(
        prog="wgpy demo --mesh", description="the security model's mesh: server, policy, three peers, revocation"
    )
    parser.add_argument("--verbose", action="store_true", help="also show the daemons' and the audit log's lines")
    args = parser.parse_args(list(argv))
    wgpy_logger = logging.getLogger("wgpy")
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("    log %(name)s: %(message)s"))
        wgpy_logger.handlers[:] = [handler]
        wgpy_logger.setLevel(logging.INFO)
    else:
        wgpy_logger.setLevel(logging.CRITICAL + 10)  # the demo's own lines say what happens
        wgpy_logger.propagate = False

    def say(line: str) -> None:
        print(line, flush=True)

    try:
        return asyncio.run(asyncio.wait_for(run_mesh_demo(say), timeout=60.0))
    except KeyboardInterrupt:
        return 130
    except TimeoutError:
        print("wgpy demo --mesh: did not finish within 60 s", file=sys.stderr)
    except Exception as exc:  # a demo reports in one line, never with a traceback
        print(f"wgpy demo --mesh: failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", file=sys.stderr)
    return 1
