"""Where a wgpy daemon's time per packet goes: Python, AEAD, system calls, kernel (issue #12).

Two parts, both printed with the machine (``machineinfo``) and, with ``--out``, written as JSON:

``python benchmarks/cost_split.py micro [--number 20000] [--repeat 7]``
    The AEAD floor on this machine: ``cryptography``'s ``ChaCha20Poly1305`` ``encrypt``/``decrypt`` and
    ``encrypt_into``/``decrypt_into`` at 64 and 1420 bytes (one call, a fixed 12-byte nonce, no associated data, as
    WireGuard's transport uses it), the same through PyNaCl (libsodium), X25519 (one ``exchange``), and wgpy's
    own ``Keypair.seal``/``Keypair.open`` at the same sizes (the AEAD plus header and counter work in Python).
    The cases are interleaved round by round; the fastest of ``--repeat`` rounds of ``--number`` calls, in
    microseconds per call.

``python benchmarks/cost_split.py syscalls --e2e REPORT.json --strace DIR``
    System calls per delivered TCP segment for every daemon of an ``e2e.py --strace DIR --tests tcp1`` run
    (wireguard-go included). strace slows every call down, so the batching (segments per call) it shows is that of
    a slower run; the counts are for comparing implementations, not for predicting an unstraced run.

``python benchmarks/cost_split.py analyse --e2e REPORT.json --profile DIR [--strace DIR]``
    Reads what ``e2e.py --profile DIR --profile-native [--strace DIR]`` wrote for the ``wgpy-wgpy`` tunnels of one
    run (one test, ``tcp1`` unless ``--test`` names another; A sends, B receives) and splits each daemon's CPU time
    per delivered packet (TCP segment for ``tcp1``):

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
PAYLOAD_PER_PACKET: Final = {"tcp1": TCP_SEGMENT_PAYLOAD, "tcp4": TCP_SEGMENT_PAYLOAD, "udp": 1200, "udp64": 64}
SIZES: Final = (64, 1420)


# --- micro ---------------------------------------------------------------------------------------------------


def _aead_cases(size: int) -> dict[str, Callable[[], object]]:
    import os

    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    aead = ChaCha20Poly1305(os.urandom(32))
    nonce = bytes(4) + (7).to_bytes(8, "little")
    plaintext = os.urandom(size)
    sealed = aead.encrypt(nonce, plaintext, None)
    out, back = bytearray(size + 16), bytearray(size)
    return {
        f"aead_encrypt_{size}": lambda: aead.encrypt(nonce, plaintext, None),
        f"aead_decrypt_{size}": lambda: aead.decrypt(nonce, sealed, None),
        f"aead_encrypt_into_{size}": lambda: aead.encrypt_into(nonce, plaintext, None, out),
        f"aead_decrypt_into_{size}": lambda: aead.decrypt_into(nonce, sealed, None, back),
    }


def _nacl_cases(size: int) -> dict[str, Callable[[], object]]:
    """The same AEAD (IETF ChaCha20-Poly1305) through PyNaCl's libsodium binding, the other maintained one that
    wgpy already depends on: is its call any cheaper?"""
    import os

    from nacl.bindings import crypto_aead_chacha20poly1305_ietf_decrypt, crypto_aead_chacha20poly1305_ietf_encrypt

    key = os.urandom(32)
    nonce = bytes(4) + (7).to_bytes(8, "little")
    plaintext = os.urandom(size)
    sealed = crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, None, nonce, key)
    return {
        f"nacl_aead_encrypt_{size}": lambda: crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, None, nonce, key),
        f"nacl_aead_decrypt_{size}": lambda: crypto_aead_chacha20poly1305_ietf_decrypt(sealed, None, nonce, key),
    }


def _keypair_cases(size: int) -> dict[str, Callable[[], object]]:
    """wgpy's transport calls, on a pair of keypairs that share keys (the receiver's open undoes the seal)."""
    import os

    from wgpy.keypair import Keypair

    one, two = os.urandom(32), os.urandom(32)
    sender = Keypair(send_key=one, recv_key=two, local_index=1, remote_index=2, is_initiator=True, now=0.0)
    receiver = Keypair(send_key=two, recv_key=one, local_index=2, remote_index=1, is_initiator=False, now=0.0)
    plaintext = os.urandom(size)
    message = sender.seal(plaintext)
    assert message is not None
    counter = int.from_bytes(message[8:16], "little")
    # ``Keypair.open`` leaves the replay window to its caller, so the same message can be opened again and again.
    assert receiver.open(counter, message) == plaintext
    return {
        f"wgpy_keypair_seal_{size}": lambda: sender.seal(plaintext),
        f"wgpy_keypair_open_{size}": lambda: receiver.open(counter, message),
    }


def micro(number: int, repeat: int) -> dict[str, float]:
    """Every case timed ``repeat`` times for ``number`` calls, the cases interleaved round by round (so that a burst
    of other work on a shared machine hits one round of every case, not every round of one case); the fastest
    round of each, in microseconds per call: other work only ever adds time, so the minimum is the estimate least
    skewed by it."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    mine, theirs = X25519PrivateKey.generate(), X25519PrivateKey.generate().public_key()
    cases: dict[str, tuple[Callable[[], object], int]] = {}
    for size in SIZES:
        cases.update((name, (call, number)) for name, call in _aead_cases(size).items())
        cases.update((name, (call, number)) for name, call in _nacl_cases(size).items())
    cases["x25519_exchange"] = (lambda: mine.exchange(theirs), max(number // 20, 10))
    for size in SIZES:
        cases.update((name, (call, number)) for name, call in _keypair_cases(size).items())
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for name, (call, count) in cases.items():
            best[name] = min(best[name], timeit.timeit(call, number=count) / count * 1e6)
    return best


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


IDLE_WAITS: Final = ("epoll_wait", "epoll_pwait", "select", "poll", "ppoll")


def classify(frames: list[tuple[str, str]]) -> str:
    """idle, aead, syscall or python, by the innermost frame that tells: a thread blocked in ``epoll_wait`` is idle
    (py-spy's ``--idle`` keeps these samples); then, going outwards, a frame of the AEAD (``cryptography``'s Rust
    module, which carries OpenSSL's ChaCha20/Poly1305 code) or of a libc system call wrapper decides; a Python
    frame reached first means the time is the interpreter's (bytecode, or CPython's C code such as allocation,
    ``bytes`` and ``memoryview`` that a Python function called); ``other`` if no frame tells."""
    if frames and frames[-1][0] in IDLE_WAITS:
        return "idle"
    for name, where in reversed(frames):
        if _is_python(where):
            return "python"
        lowered = f"{name} {where}".lower()
        if any(marker in lowered for marker in AEAD_MARKERS):
            return "aead"
        if name in SYSCALL_WRAPPERS or name.lstrip("_") in SYSCALL_WRAPPERS:
            return "syscall"
    return "other"


def _ours(where: str) -> bool:
    return where.startswith(("wgpy/", "tun/")) and not where.startswith(("wgpy/cli/", "wgpy/__main__"))


def python_costs(stacks: list[tuple[list[tuple[str, str]], int]]) -> dict[str, collections.Counter[str]]:
    """Busy samples per Python function: ``self`` counts the samples whose innermost decisive frame is that
    function's bytecode or the CPython C code it called (kind ``python``); ``aead`` and ``syscall`` count the AEAD
    and system call samples by the innermost Python function that made the call; ``inclusive`` counts every busy
    sample with the function anywhere on the stack (wgpy and tun functions only, not the CLI)."""
    costs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for frames, count in stacks:
        kind = classify(frames)
        if kind == "idle":
            continue
        python = [f"{name} ({where.rsplit(':', 1)[0]})" for name, where in frames if _is_python(where)]
        if python:
            costs["self" if kind == "python" else kind][python[-1]] += count
        for name, where in {(n, w) for n, w in frames if _is_python(w) and _ours(w)}:
            costs["inclusive"][f"{name} ({where.rsplit(':', 1)[0]})"] += count
    return costs


def parse_strace(path: Path) -> dict[str, int]:
    calls: dict[str, int] = {}
    for line in path.read_text().splitlines():
        fields = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
            calls[fields[-1]] = int(fields[3])
    return calls


def analyse(report: dict[str, Any], profile: Path, strace: Path | None, top: int, test: str = "tcp1") -> dict[str, Any]:
    result = report["results"]["wgpy-wgpy"]
    samples = result["samples"][test]
    out: dict[str, Any] = {"machine": report["machine"], "e2e_date": report["date"], "test": test, "directions": {}}
    segments = [s["bytes"] / PAYLOAD_PER_PACKET[test] for s in samples]  # packets delivered
    for role in ("sender", "receiver"):
        us_per_segment = statistics.median(s["cpu"][role] / n * 1e6 for s, n in zip(samples, segments, strict=True))
        user_fraction = statistics.median(s["cpu_user"][role] / s["cpu"][role] for s in samples if s["cpu"][role])
        kinds: collections.Counter[str] = collections.Counter()
        costs: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        for path in sorted(profile.glob(f"*-wgpy-{role}.txt")):
            stacks = parse_raw(path)
            for frames, count in stacks:
                kinds[classify(frames)] += count
            for key, counter in python_costs(stacks).items():
                costs[key].update(counter)
        busy = sum(kinds.values()) - kinds["idle"]

        def us(count: int, per_segment: float = us_per_segment, busy: int = busy) -> float:
            return round(per_segment * count / busy, 3)

        direction: dict[str, Any] = {
            "cpu_us_per_segment": round(us_per_segment, 2),
            "kernel_us_per_segment_stime": round(us_per_segment * (1 - user_fraction), 2),
            "user_us_per_segment_utime": round(us_per_segment * user_fraction, 2),
            "py_spy_samples": dict(kinds),
        }
        if busy:
            # Shares of py-spy's busy samples, times the CPU time measured in the unprofiled way (/proc).
            direction["us_per_segment_by_kind"] = {k: us(v) for k, v in kinds.most_common() if k != "idle"}
            direction["python_self_us"] = [(name, us(n)) for name, n in costs["self"].most_common(top)]
            direction["aead_us_by_caller"] = [(name, us(n)) for name, n in costs["aead"].most_common(5)]
            direction["syscall_us_by_caller"] = [(name, us(n)) for name, n in costs["syscall"].most_common(8)]
            direction["inclusive_us"] = [(name, us(n)) for name, n in costs["inclusive"].most_common(top)]
        if strace is not None:
            calls: collections.Counter[str] = collections.Counter()
            for path in sorted(strace.glob(f"*-wgpy-{role}.strace")):
                calls.update(parse_strace(path))
            direction["strace_calls"] = dict(calls.most_common())
        out["directions"][role] = direction
    return out


def syscalls(report: dict[str, Any], strace: Path) -> dict[str, dict[str, dict[str, float]]]:
    """System calls per delivered TCP segment (``tcp1``) of each daemon of each ``X-X`` configuration in an
    ``e2e.py --strace`` run: the calls of every strace summary of that implementation and role, over the segments
    of every ``tcp1`` sample of that configuration."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, result in report["results"].items():
        sender, _, receiver = name.partition("-")
        if sender != receiver or "tcp1" not in result["samples"]:
            continue
        segments = sum(s["bytes"] for s in result["samples"]["tcp1"]) / TCP_SEGMENT_PAYLOAD
        for role in ("sender", "receiver"):
            calls: collections.Counter[str] = collections.Counter()
            for path in sorted(strace.glob(f"*-{sender}-{role}.strace")):
                calls.update(parse_strace(path))
            out.setdefault(name, {})[role] = {
                call: round(count / segments, 4) for call, count in calls.most_common() if count / segments >= 0.001
            }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    micro_parser = commands.add_parser("micro", help="AEAD, X25519 and wgpy's seal/open on this machine")
    micro_parser.add_argument("--number", type=int, default=2000)
    micro_parser.add_argument("--repeat", type=int, default=60)
    analyse_parser = commands.add_parser("analyse", help="split a profiled e2e.py run")
    analyse_parser.add_argument("--e2e", type=Path, required=True, help="the JSON report of the profiled run")
    analyse_parser.add_argument("--profile", type=Path, required=True, help="e2e.py --profile folder")
    analyse_parser.add_argument("--strace", type=Path, help="e2e.py --strace folder (may be another run's)")
    analyse_parser.add_argument("--top", type=int, default=15)
    analyse_parser.add_argument(
        "--test", choices=sorted(PAYLOAD_PER_PACKET), default="tcp1", help="the one test of the profiled run"
    )
    syscalls_parser = commands.add_parser("syscalls", help="system calls per TCP segment of an e2e.py --strace run")
    syscalls_parser.add_argument("--e2e", type=Path, required=True, help="the JSON report of the straced run")
    syscalls_parser.add_argument("--strace", type=Path, required=True, help="e2e.py --strace folder")
    for sub in (micro_parser, analyse_parser, syscalls_parser):
        sub.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    info = machineinfo.describe()
    print(f"machine: {machineinfo.one_line(info)}")
    document: dict[str, Any]
    if args.command == "micro":
        document = {"machine": info, "us_per_call": micro(args.number, args.repeat)}
        for name, value in document["us_per_call"].items():
            print(f"  {name:28} {value:8.3f} us")
    elif args.command == "syscalls":
        report = json.loads(args.e2e.read_text())
        document = {"machine": report["machine"], "e2e_date": report["date"],
                    "calls_per_segment": syscalls(report, args.strace)}  # fmt: skip
        for name, roles in document["calls_per_segment"].items():
            for role, calls in roles.items():
                print(f"  {name:14} {role:8} " + ", ".join(f"{call} {n:.3f}" for call, n in calls.items()))
    else:
        report = json.loads(args.e2e.read_text())
        document = analyse(report, args.profile, args.strace, args.top, args.test)
        print(json.dumps(document["directions"], indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
