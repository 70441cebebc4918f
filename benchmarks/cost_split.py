"""Where a wgpy daemon's time per packet goes: Python, AEAD, system calls, kernel (issue #12).

Two parts, both printed with the machine (``machineinfo``) and, with ``--out``, written as JSON:

``python benchmarks/cost_split.py micro [--number 20000] [--repeat 7]``
    The AEAD floor on this machine: ``cryptography``'s ``ChaCha20Poly1305`` ``encrypt``/``decrypt`` and
    ``encrypt_into``/``decrypt_into`` at 64 and 1420 bytes (one call, a fixed 12-byte nonce, no associated data, as
    WireGuard's transport uses it), X25519 (one ``exchange``), and wgpy's own ``Keypair.seal``/``Keypair.open`` at
    the same sizes (the AEAD plus header and counter work in Python). Median of ``--repeat`` timings of
    ``--number`` calls, in microseconds per call.

``python benchmarks/cost_split.py analyse --e2e REPORT.json --profile DIR [--strace DIR]``
    Reads what ``e2e.py --profile DIR --profile-native [--strace DIR]`` wrote for the ``wgpy-wgpy`` tunnels of one
    run (the ``tcp1`` test: A sends, B receives) and splits each daemon's CPU time per delivered TCP segment:

    - CPU microseconds per segment from the report's CPU seconds per GB and the segment payload (MTU 1420 minus 40
      bytes of IPv4 + TCP headers minus 12 of TCP timestamps = 1368 bytes);
    - kernel (``stime``) against user (``utime``) from ``/proc``, as e2e.py measured them;
    - the user part divided by py-spy's native stacks, by the innermost frame that decides: inside the AEAD
      (a frame of ``cryptography``'s Rust module or of OpenSSL's libcrypto), inside a system call wrapper of libc
      (its time is mostly the kernel's, which ``stime`` already counts), CPython's own C code (allocation,
      ``bytes``, ``memoryview``, the interpreter loop), or Python code (the innermost frame is a ``.py`` function);
      idle samples (``epoll_wait`` with nothing to do) are counted apart and left out of the shares;
    - the top Python-level functions by their own (self) samples and by their total (inclusive) samples;
    - with ``--strace``: system calls per delivered segment, by name.

    The shares of py-spy's samples are converted into microseconds per segment by multiplying with the measured
    CPU time; py-spy pauses the process to take a native stack, so the profiled run itself is slower than an
    unprofiled one: its rates are not reported, only its proportions.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import statistics
import sys
import timeit
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import machineinfo

TCP_SEGMENT_PAYLOAD: Final = 1420 - 40 - 12
SIZES: Final = (64, 1420)


# --- micro ---------------------------------------------------------------------------------------------------


def _time(call: Callable[[], object], number: int, repeat: int) -> float:
    call()
    return statistics.median(timeit.repeat(call, number=number, repeat=repeat)) / number * 1e6


def _aead_at(size: int, number: int, repeat: int) -> dict[str, float]:
    import os

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(4) + (7).to_bytes(8, "little")
    plaintext = os.urandom(size)
    sealed = aead.encrypt(nonce, plaintext, None)
    out, back = bytearray(size + 16), bytearray(size)
    return {
        f"aead_encrypt_{size}": _time(lambda: aead.encrypt(nonce, plaintext, None), number, repeat),
        f"aead_decrypt_{size}": _time(lambda: aead.decrypt(nonce, sealed, None), number, repeat),
        f"aead_encrypt_into_{size}": _time(lambda: aead.encrypt_into(nonce, plaintext, None, out), number, repeat),
        f"aead_decrypt_into_{size}": _time(lambda: aead.decrypt_into(nonce, sealed, None, back), number, repeat),
    }


def _keypair_at(size: int, number: int, repeat: int) -> dict[str, float]:
    """wgpy's transport calls, on a pair of keypairs that share keys (the receiver's open undoes the seal)."""
    import os

    from wgpy.keypair import Keypair

    one, two = os.urandom(32), os.urandom(32)
    sender = Keypair(send_key=one, recv_key=two, local_index=1, remote_index=2, is_initiator=True, now=0.0)
    receiver = Keypair(send_key=two, recv_key=one, local_index=2, remote_index=1, is_initiator=False, now=0.0)
    plaintext = os.urandom(size)
    seal = _time(lambda: sender.seal(plaintext), number, repeat)
    messages = [sender.seal(plaintext) for _ in range(number * (repeat + 1) + 1)]
    feed = iter(messages)

    def open_next() -> object:
        message = next(feed)
        assert message is not None
        return receiver.open(int.from_bytes(message[8:16], "little"), message)

    return {f"wgpy_keypair_seal_{size}": seal, f"wgpy_keypair_open_{size}": _time(open_next, number, repeat)}


def micro(number: int, repeat: int) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    results: dict[str, float] = {}
    for size in SIZES:
        results.update(_aead_at(size, number, repeat))
    mine, theirs = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    results["x25519_exchange"] = _time(lambda: mine.exchange(theirs), max(number // 20, 100), repeat)
    for size in SIZES:
        results.update(_keypair_at(size, number, repeat))
    return results


# --- analyse -------------------------------------------------------------------------------------------------

_FRAME: Final = re.compile(r"^(?P<name>.*?) \((?P<where>[^()]*)\)$")
AEAD_MARKERS: Final = ("chacha", "poly1305", "aead", "evp_", "_rust.abi3", "libcrypto", "cryptography")
SYSCALL_WRAPPERS: Final = (
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "sendto",
    "recvfrom",
    "send",
    "recv",
    "read",
    "write",
    "readv",
    "writev",
    "epoll_wait",
    "epoll_pwait",
    "poll",
    "select",
    "ioctl",
    "syscall",
    "__libc_sendmsg",
    "__libc_recvmsg",
    "__libc_read",
    "__libc_write",
    "__GI___libc_write",
    "__GI___libc_read",
)


def parse_raw(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    """py-spy's ``--format raw``: one ``frame;frame;...;frame count`` line per distinct stack, outermost first."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            frames.append((match["name"], match["where"]) if match else (frame, ""))
        stacks.append((frames, int(count)))
    return stacks


def _is_python(where: str) -> bool:
    return where.endswith(".py") or ".py:" in where


def classify(frames: list[tuple[str, str]]) -> str:
    """idle, aead, syscall, cpython (native code of the interpreter itself) or python, by the innermost frames."""
    names = [name.lower() for name, _ in frames]
    wheres = [where.lower() for _, where in frames]
    if any(name in ("epoll_wait", "epoll_pwait", "select", "poll") for name in names[-3:]) and all(
        "py" not in where or _is_python(where) for where in wheres[-1:]
    ):
        # a thread waiting for the next wake-up: py-spy --idle keeps these, they are not CPU time
        if "select" in " ".join(names[-6:]) or "epoll" in " ".join(names[-3:]) or "poll" in names[-1]:
            return "idle"
    for name, where in reversed(frames):
        if _is_python(where):
            return "python"
        lowered = f"{name} {where}".lower()
        if any(marker in lowered for marker in AEAD_MARKERS):
            return "aead"
        if name in SYSCALL_WRAPPERS or name.lstrip("_") in SYSCALL_WRAPPERS:
            return "syscall"
    return "cpython"


def python_costs(stacks: list[tuple[list[tuple[str, str]], int]]) -> tuple[collections.Counter[str], ...]:
    """Per Python function: self samples (it is the innermost Python frame, whatever native code runs below it)
    and inclusive samples (it is anywhere on the stack), busy samples only."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    for frames, count in stacks:
        if classify(frames) == "idle":
            continue
        python = [f"{name} ({where})" for name, where in frames if _is_python(where)]
        if python:
            own[python[-1]] += count
            for name in set(python):
                total[name] += count
    return own, total


def parse_strace(path: Path) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def analyse(report: dict[str, Any], profile: Path, strace: Path | None, top: int) -> dict[str, Any]:
    result = report["results"]["wgpy-wgpy"]
    samples = result["samples"]["tcp1"]
    out: dict[str, Any] = {"machine": report["machine"], "e2e_date": report["date"], "directions": {}}
    segments = [s["bytes"] / TCP_SEGMENT_PAYLOAD for s in samples]
    for role in ("sender", "receiver"):
        us_per_segment = statistics.median(s["cpu"][role] / n * 1e6 for s, n in zip(samples, segments, strict=True))
        user_fraction = statistics.median(s["cpu_user"][role] / s["cpu"][role] for s in samples if s["cpu"][role])
        kinds: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        total: collections.Counter[str] = collections.Counter()
        for path in sorted(profile.glob(f"*-wgpy-{role}.txt")):
            stacks = parse_raw(path)
            for frames, count in stacks:
                kinds[classify(frames)] += count
            o, t = python_costs(stacks)
            own.update(o)
            total.update(t)
        busy = sum(kinds.values()) - kinds["idle"]
        user_us = us_per_segment * user_fraction
        direction: dict[str, Any] = {
            "cpu_us_per_segment": round(us_per_segment, 2),
            "kernel_us_per_segment (stime)": round(us_per_segment - user_us, 2),
            "user_us_per_segment (utime)": round(user_us, 2),
            "py_spy_samples": dict(kinds),
            "py_spy_shares_of_busy": {k: round(v / busy, 3) for k, v in kinds.items() if k != "idle" and busy},
        }
        if busy:
            # py-spy sees a thread inside a system call as busy: that time is the kernel's (stime), so the
            # user-space split divides utime among the other kinds only.
            user_kinds = {k: v for k, v in kinds.items() if k not in ("idle", "syscall")}
            user_busy = sum(user_kinds.values())
            direction["user_us_split"] = {k: round(user_us * v / user_busy, 2) for k, v in user_kinds.items()}
            direction["top_python_self_us"] = [
                (name, round(us_per_segment * count / busy, 2)) for name, count in own.most_common(top)
            ]
            direction["top_python_inclusive_us"] = [
                (name, round(us_per_segment * count / busy, 2)) for name, count in total.most_common(top)
            ]
        if strace is not None:
            calls: collections.Counter[str] = collections.Counter()
            for path in sorted(strace.glob(f"*-wgpy-{role}.strace")):
                calls.update(parse_strace(path))
            direction["strace_calls"] = dict(calls.most_common())
        out["directions"][role] = direction
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    micro_parser = commands.add_parser("micro", help="AEAD, X25519 and wgpy's seal/open on this machine")
    micro_parser.add_argument("--number", type=int, default=20000)
    micro_parser.add_argument("--repeat", type=int, default=7)
    analyse_parser = commands.add_parser("analyse", help="split a profiled e2e.py run")
    analyse_parser.add_argument("--e2e", type=Path, required=True, help="the JSON report of the profiled run")
    analyse_parser.add_argument("--profile", type=Path, required=True, help="e2e.py --profile folder")
    analyse_parser.add_argument("--strace", type=Path, help="e2e.py --strace folder (may be another run's)")
    analyse_parser.add_argument("--top", type=int, default=15)
    for sub in (micro_parser, analyse_parser):
        sub.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    info = machineinfo.describe()
    print(f"machine: {machineinfo.one_line(info)}")
    document: dict[str, Any]
    if args.command == "micro":
        document = {"machine": info, "us_per_call": micro(args.number, args.repeat)}
        for name, value in document["us_per_call"].items():
            print(f"  {name:28} {value:8.3f} us")
    else:
        report = json.loads(args.e2e.read_text())
        document = analyse(report, args.profile, args.strace, args.top)
        print(json.dumps(document["directions"], indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
