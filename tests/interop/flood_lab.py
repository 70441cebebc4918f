"""A handshake flood from a third namespace while a legitimate peer pings and then re-handshakes (issue #11 item 2).

``run(lab)`` builds three namespaces on one bridge (``Lab.star``): wgpy in ``a``, wireguard-go in ``b`` (its
peer), and ``flooder.py`` in ``c``, which sends valid-mac1 initiations to wgpy from one address and 64 source ports
for ``FLOOD_SECONDS``. During the flood ``b`` pings ``a`` through the established session, then forgets its session
(the peer is removed and added again) and pings once a second until the new handshake completes. The result holds
the numbers; ``test_hardening.py`` checks bounds on them and ``benchmarks/flood.py`` records them. No fixtures here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from interop_lab import Daemon, Lab

FLOOD_SECONDS = 30.0  # the whole measurement runs inside the flood, which is stopped when the measurement ends
PING_COUNT, PING_INTERVAL = 80, 0.05
REHANDSHAKE_WAIT = 16.0  # s of pings once a second after the session was dropped


@dataclass
class FloodResult:
    flood_sent: int
    flood_seconds: float  # how long the flood ran
    flood_rate: float
    datagrams_read: int  # by wgpy's sockets (InDatagrams of its namespace)
    receive_buffer_drops: int  # RcvbufErrors of its namespace: what the kernel dropped for full queues
    wgpy_cpu_seconds: float  # user + system time of the wgpy daemon during the flood
    quiet_replies: int
    quiet_avg_ms: float
    flood_replies: int
    flood_avg_ms: float
    flood_max_ms: float
    rehandshake_seconds: float | None  # None: no handshake within REHANDSHAKE_WAIT
    flood_outlasted_measurement: bool


def _udp_counters(lab: Lab, netns: str) -> dict[str, int]:
    rows = [
        row.split() for row in lab.run(netns, "cat", "/proc/net/snmp").stdout.splitlines() if row.startswith("Udp:")
    ]
    return dict(zip(rows[0][1:], (int(v) for v in rows[1][1:]), strict=True))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def ping_stats(lab: Lab, src: Daemon, address: str) -> tuple[int, float, float]:
    """(replies, average RTT ms, maximum RTT ms) of PING_COUNT pings PING_INTERVAL apart."""
    argv = ["ping", "-n", "-q", "-c", str(PING_COUNT), "-i", str(PING_INTERVAL), "-W", "2", address]
    out = lab.run(src.netns, *argv, check=False, timeout=PING_COUNT * PING_INTERVAL + 30).stdout
    replies, average, maximum = 0, float("inf"), float("inf")
    for line in out.splitlines():
        if "received" in line:
            replies = int(line.split(",")[1].split()[0])
        if line.startswith("rtt"):
            parts = line.split("=")[1].split()[0].split("/")
            average, maximum = float(parts[1]), float(parts[2])
    return replies, average, maximum


def run(lab: Lab) -> FloodResult:
    ns_a, ns_b, ns_c = lab.star(["a", "b", "c"])
    a = lab.start("wgpy", ns_a, 1)
    b = lab.start("wireguard-go", ns_b, 2)
    assert a.pid is not None
    lab.configure(a, b)
    lab.wait_for_ping(b, a.inner)
    quiet = ping_stats(lab, b, a.inner)

    before, cpu_before = _udp_counters(lab, ns_a), _cpu_seconds(a.pid)
    flood_log = lab.tmp / "flooder.log"
    lab.extra_logs["flooder"] = flood_log
    flooder_script = str(Path(__file__).with_name("flooder.py"))
    argv = [sys.executable, flooder_script, "--target", a.endpoint, "--public-key", a.public_key]
    flooder = lab.spawn(ns_c, *argv, "--seconds", str(FLOOD_SECONDS), log=flood_log)
    time.sleep(1.0)  # the flood is on and the device is under load
    flooded = ping_stats(lab, b, a.inner)

    # The legitimate peer forgets its session (removed and added again) and must handshake under the flood.
    b.wg("set", b.ifname, "peer", a.public_key, "remove")
    b.wg("set", b.ifname, "peer", a.public_key, "endpoint", a.endpoint, "allowed-ips", f"{a.inner}/32,{a.inner6}/128")
    started = time.monotonic()
    completed: float | None = None
    while time.monotonic() - started < REHANDSHAKE_WAIT and flooder.poll() is None:
        if lab.ping(b, a.inner, count=1, wait=1.0) == 1:
            completed = time.monotonic() - started
            break
    outlasted = flooder.poll() is None
    flooder.terminate()  # it reports what it sent and exits
    flooder.wait(timeout=30)
    after, cpu_after = _udp_counters(lab, ns_a), _cpu_seconds(a.pid)
    report = flood_log.read_text().strip().splitlines()[-1]
    sent = json.loads(report)
    return FloodResult(
        flood_sent=int(sent["sent"]),
        flood_seconds=float(sent["seconds"]),
        flood_rate=float(sent["rate"]),
        datagrams_read=after["InDatagrams"] - before["InDatagrams"],
        receive_buffer_drops=after["RcvbufErrors"] - before["RcvbufErrors"],
        wgpy_cpu_seconds=round(cpu_after - cpu_before, 2),
        quiet_replies=quiet[0],
        quiet_avg_ms=quiet[1],
        flood_replies=flooded[0],
        flood_avg_ms=flooded[1],
        flood_max_ms=flooded[2],
        rehandshake_seconds=None if completed is None else round(completed, 2),
        flood_outlasted_measurement=outlasted,
    )


def describe(result: FloodResult) -> str:
    handshake = "never" if result.rehandshake_seconds is None else f"{result.rehandshake_seconds:.2f} s"
    return (
        f"flood {result.flood_sent} initiations at {result.flood_rate:.0f}/s; wgpy read {result.datagrams_read} "
        f"datagrams with {result.wgpy_cpu_seconds:.1f} s of CPU in {result.flood_seconds:.1f} s, the kernel dropped "
        f"{result.receive_buffer_drops}; pings quiet {result.quiet_replies}/{PING_COUNT} avg "
        f"{result.quiet_avg_ms:.2f} ms, under the flood {result.flood_replies}/{PING_COUNT} avg "
        f"{result.flood_avg_ms:.2f} ms max {result.flood_max_ms:.2f} ms; re-handshake after {handshake}"
    )


def as_dict(result: FloodResult) -> dict[str, Any]:
    return asdict(result)
