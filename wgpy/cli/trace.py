"""``wgpy trace [--golden CASE | --random [--psk]] [--json] [--vectors PATH] [--color WHEN]``.

Replays one WireGuard handshake token by token (``wgpy.tools.trace``) and prints it, as text (coloured on a
terminal) or as JSON. Exit status: 0 on success, 1 (one line on stderr) if the golden file is missing or corrupted or
the trace disagrees with ``wgpy.noise``, 2 for bad arguments (argparse's usage message).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..tools.trace import (
    GOLDEN_FILE_NAME,
    GoldenCaseError,
    TraceMismatch,
    check_against_golden,
    format_trace,
    golden_inputs,
    load_golden_document,
    random_inputs,
    trace_inputs,
    trace_to_json,
)
from ._streams import write_stdout

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wgpy trace",
        description="Replay a WireGuard handshake token by token (whitepaper §5.4), checked against wgpy.noise.",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--golden",
        metavar="CASE",
        default=None,
        help="trace a golden transcript (no_psk or psk) and check it against the recorded values "
        "(the default is --golden no_psk)",
    )
    source.add_argument("--random", action="store_true", help="trace a handshake between fresh random keys")
    parser.add_argument("--psk", action="store_true", help="with --random: configure a random preshared key too")
    parser.add_argument("--json", action="store_true", help="print the steps as JSON")
    parser.add_argument(
        "--vectors",
        type=Path,
        default=None,
        metavar="PATH",
        help=f"a {GOLDEN_FILE_NAME} (or the folder holding it) to read instead of the one shipped with wgpy",
    )
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the text output (default: when writing to a terminal)",
    )
    return parser


def main(argv: Sequence[str] | None = None, rng: Callable[[int], bytes] = os.urandom) -> int:
    """``wgpy trace ...``; returns the exit status (0, 1 with one line on stderr, or 2 for bad arguments)."""
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    if args.psk and not args.random:
        parser.print_usage(sys.stderr)
        print("wgpy trace: error: --psk goes with --random (golden cases carry their own)", file=sys.stderr)
        return 2
    try:
        if args.random:
            trace = trace_inputs(random_inputs(rng, preshared=args.psk))
        else:
            name = args.golden if args.golden is not None else "no_psk"
            source, document = load_golden_document(args.vectors)
            try:
                trace = trace_inputs(golden_inputs(document, name))
                check_against_golden(trace, document, name)
            except GoldenCaseError as error:
                raise GoldenCaseError(f"{source}: case {name!r}: {error}") from None
    except (GoldenCaseError, TraceMismatch) as error:
        print(f"wgpy trace: {error}", file=sys.stderr)
        return 1
    if args.json:
        write_stdout(json.dumps(trace_to_json(trace), indent=2, ensure_ascii=False) + "\n")
    else:
        color = args.color == "always" or (args.color == "auto" and sys.stdout is not None and sys.stdout.isatty())
        write_stdout(format_trace(trace, color=color))
    return 0
