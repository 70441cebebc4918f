"""Large UAPI operations against a live wgpy daemon while a ping runs through its tunnel (issue #11 items 3 and 4).

``measure(lab, a, b, peers)`` runs, on the wgpy daemon ``a`` whose peer ``b`` pings it through the tunnel every
``PING_INTERVAL``: a ``set=1`` adding ``peers`` peers (one random public key and one /32 each), two ``get=1``, and a
``set=1`` removing them again. For each phase it records how long the UAPI request took, the ping round trips that
fell into it (largest RTT, replies, requests without a reply) and the daemon's RSS after it. Used by
``test_hardening.py`` (bounds) and ``benchmarks/uapi_large.py`` (numbers). Helper module, no fixtures.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from interop_lab import Daemon, Lab

PING_INTERVAL = 0.02  # s
_REPLY = re.compile(r"^\[(\d+\.\d+)\] .*icmp_seq=(\d+) .*time=([\d.]+) ms")
_NO_ANSWER = re.compile(r"^\[(\d+\.\d+)\] no answer yet for icmp_seq=(\d+)")


@dataclass
class Phase:
    name: str
    seconds: float
    reply_bytes: int
    errno_line: str
    pings_sent: int
    pings_answered: int
    max_rtt_ms: float
    rss_kib_after: int


def set_request(peers: int) -> bytes:
    """``set=1`` adding ``peers`` peers: random public keys, allowed IPs 172.16.0.0/12 one /32 each."""
    parts = [b"set=1\n"]
    for i in range(peers):
        address = f"172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32"
        parts.append(f"public_key={os.urandom(32).hex()}\nallowed_ip={address}\n".encode())
    parts.append(b"\n")
    return b"".join(parts)


def remove_request(keys: list[str]) -> bytes:
    return b"set=1\n" + b"".join(f"public_key={key}\nremove=true\n".encode() for key in keys) + b"\n"


def exchange(daemon: Daemon, request: bytes, timeout: float = 120.0) -> tuple[bytes, float]:
    """Send ``request`` to the daemon's UAPI socket and read the whole answer (up to ``errno=N`` and the blank
    line); returns the answer and the seconds from the first byte sent to the last byte read."""
    chunks: list[bytes] = []
    tail = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(daemon.socket_path))
        start = time.monotonic()
        sock.sendall(request)
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            tail = (tail + chunk)[-64:]
            if re.search(rb"(^|\n)errno=-?\d+\n\n$", tail):
                break
        return b"".join(chunks), time.monotonic() - start


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _errno_line(reply: bytes) -> str:
    lines = reply.rstrip(b"\n").splitlines()
    return lines[-1].decode(errors="replace") if lines else "(no answer)"


class Pinger:
    """``ping -D -O -i PING_INTERVAL`` from ``src`` to ``address`` for as long as it runs."""

    def __init__(self, lab: Lab, src: Daemon, address: str) -> None:
        self.log = lab.tmp / f"pinger-{src.ifname}.log"
        argv = ["ping", "-n", "-D", "-O", "-i", str(PING_INTERVAL), "-W", "30", address]
        self.process = lab.spawn(src.netns, *argv, log=self.log)

    def stop(self) -> list[tuple[float, int, float | None]]:
        """(time, sequence, RTT in ms or None for "no answer yet") for every line ping printed."""
        with contextlib.suppress(OSError):
            self.process.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=35)
        events: list[tuple[float, int, float | None]] = []
        for line in self.log.read_text(errors="replace").splitlines():
            if match := _REPLY.match(line):
                events.append((float(match[1]), int(match[2]), float(match[3])))
            elif match := _NO_ANSWER.match(line):
                events.append((float(match[1]), int(match[2]), None))
        return events


def _ping_window(events: list[tuple[float, int, float | None]], start: float, end: float) -> tuple[int, int, float]:
    """Pings whose request was sent in [start, end] (wall clock): (sent, answered, largest RTT in ms). A request's
    send time is its reply time minus its RTT; a request never answered counts as sent, unanswered."""
    answered: dict[int, float] = {}
    sent_at: dict[int, float] = {}
    for when, sequence, rtt in events:
        if rtt is not None:
            answered[sequence] = rtt
            sent_at[sequence] = when - rtt / 1000
        else:
            sent_at.setdefault(sequence, when - 30.0)
    inside = [seq for seq, at in sent_at.items() if start <= at <= end]
    rtts = [answered[seq] for seq in inside if seq in answered]
    return len(inside), len(rtts), max(rtts, default=0.0)


def measure(lab: Lab, a: Daemon, b: Daemon, peers: int) -> list[Phase]:
    """The four phases on ``a`` (wgpy) while ``b`` pings it; see the module docstring."""
    assert a.pid is not None
    request = set_request(peers)
    keys = [line[len(b"public_key=") :].decode() for line in request.splitlines() if line.startswith(b"public_key=")]
    phases: list[tuple[str, bytes]] = [
        ("set", request),
        ("get", b"get=1\n\n"),
        ("get again", b"get=1\n\n"),
        ("remove", remove_request(keys)),
    ]
    rss_before = rss_kib(a.pid)
    pinger = Pinger(lab, b, a.inner)
    results: list[tuple[str, float, float, bytes, float, int]] = []
    try:
        time.sleep(1.0)
        for name, body in phases:
            start = time.time()
            reply, seconds = exchange(a, body)
            results.append((name, start, time.time(), reply, seconds, rss_kib(a.pid)))
            time.sleep(0.5)
    finally:
        events = pinger.stop()
    measured = []
    for name, start, end, reply, seconds, rss in results:
        sent, answered, max_rtt = _ping_window(events, start, end)
        measured.append(Phase(name, seconds, len(reply), _errno_line(reply), sent, answered, max_rtt, rss))
    measured.insert(0, Phase("before", 0.0, 0, "", 0, 0, 0.0, rss_before))
    return measured


def as_dicts(phases: list[Phase]) -> list[dict[str, Any]]:
    return [asdict(phase) for phase in phases]
