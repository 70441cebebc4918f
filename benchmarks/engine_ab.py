"""A/B of engine levers end to end: ``benchmarks/e2e.py`` run in alternating rounds, one run per variant a round.

Usage (root)::

    python benchmarks/engine_ab.py --variant new=. --variant old=/tmp/main-tree --rounds 3 [--tests tcp1]
    python benchmarks/engine_ab.py --variant tso=.:WGPY_TUN_TSO=1 --variant no-tso=.:WGPY_TUN_TSO=0

A variant is ``NAME=TREE[:ENV=VALUE,...]``: ``TREE/benchmarks/e2e.py --repeat 1`` is run (it copies and runs the
wgpy of that tree, so an exported older commit is the baseline) with those environment variables, which the
daemons inherit (``wgpy/cli/daemon.py`` reads ``WGPY_TUN_TSO``). Each round runs every variant once, in an order
rotated every round so that a drift in background load hits all alike, and every run has wireguard-go ->
wireguard-go beside wgpy -> wgpy (``--config``: ``wgpy-wgpy``, or ``wgpym-wgpym`` for mesh mode; ``--reference``: bookworm's ``go-go`` or trixie's ``trixie-trixie``): what is compared is the wgpy / wireguard-go ratio of each run, and the medians
over the rounds. The machine (CPU model, cores, kernel, Python, cryptography and OpenSSL versions) and the load
average before and after every run go into the report, a text file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import machineinfo

HERE: Final = Path(__file__).resolve().parent


def parse_variant(text: str) -> tuple[str, Path, dict[str, str]]:
    """``NAME=TREE[:ENV=VALUE,...]`` as (name, tree, environment)."""
    name, _, rest = text.partition("=")
    tree, _, settings = rest.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return name, Path(tree).resolve(), env


def run_once(tree: Path, extra_env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """One ``TREE/benchmarks/e2e.py --repeat 1`` with ``extra_env``; the parsed JSON report."""
    with tempfile.TemporaryDirectory(prefix="engine-ab-") as out:
        env = dict(os.environ, **extra_env)
        command = [
            sys.executable,
            str(tree / "benchmarks" / "e2e.py"),
            "--repeat",
            "1",
            "--seconds",
            str(args.seconds),
            "--configs",
            f"{args.reference},{args.config}",
            "--tests",
            args.tests,
            "--out",
            out,
        ]
        if args.trixie_wireguard_go is not None:
            command += ["--trixie-wireguard-go", str(args.trixie_wireguard_go)]
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, timeout=600)
        report: dict[str, Any] = json.loads((Path(out) / "latest.json").read_text())
        return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=TREE[:ENV=VALUE,...]")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--tests", default="tcp1")
    parser.add_argument("--out", type=Path, help="append the report to this text file")
    parser.add_argument(
        "--reference", default="go-go", help="the wireguard-go configuration beside wgpy-wgpy (go-go, trixie-trixie)"
    )
    parser.add_argument("--trixie-wireguard-go", type=Path, help="passed on to e2e.py (trixie's binary)")
    parser.add_argument(
        "--config", default="wgpy-wgpy", help="the wgpy configuration of e2e.py to compare (wgpy-wgpy, wgpym-wgpym)"
    )
    args = parser.parse_args(argv)
    tests = args.tests.split(",")
    variants = [parse_variant(v) for v in args.variant]
    rows: dict[str, dict[str, list[tuple[float, float, float, float, float]]]] = {v[0]: {} for v in variants}
    lines = [
        f"engine_ab {args.variant}: {args.rounds} rounds of {args.seconds} s, {args.config}, tests {args.tests}, "
        f"reference ('go' below) {args.reference}",
        machineinfo.one_line(),
    ]
    print("\n".join(lines), flush=True)
    for round_number in range(args.rounds):
        shift = round_number % len(variants)
        for name, tree, env in variants[shift:] + variants[:shift]:
            before = os.getloadavg()[0]
            report = run_once(tree, env, args)
            after = os.getloadavg()[0]
            for test in tests:
                go = report["results"][args.reference]["median"][test]
                py = report["results"][args.config]["median"][test]
                key = "mbit_per_second" if test.startswith("tcp") else "packets_per_second"
                go_value, py_value = float(go[key]), float(py[key])
                cpu = float(py["cpu_seconds_per_gb"])
                sender, receiver = float(py["cpu_seconds_per_gb_sender"]), float(py["cpu_seconds_per_gb_receiver"])
                rows[name].setdefault(test, []).append((py_value, py_value / go_value, cpu, sender, receiver))
                lines.append(
                    f"round {round_number + 1} {name} {test}: wgpy {py_value:.0f} go {go_value:.0f} "
                    f"ratio {py_value / go_value:.3f}; CPU s/GB wgpy {cpu:.2f} (sender {sender:.2f}, receiver "
                    f"{receiver:.2f}), go {float(go['cpu_seconds_per_gb']):.2f}; load {before:.2f} -> {after:.2f}"
                )
                print(lines[-1], flush=True)
    for test in tests:
        for name, _, _ in variants:
            samples = rows[name].get(test, [])
            if samples:
                median = [statistics.median(s[i] for s in samples) for i in range(5)]
                lines.append(
                    f"median {name} {test}: wgpy {median[0]:.0f}, ratio to {args.reference} {median[1]:.3f}, CPU s/GB wgpy "
                    f"{median[2]:.2f} (sender {median[3]:.2f}, receiver {median[4]:.2f})"
                )
                print(lines[-1])
    machineinfo.append_report(args.out, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
