"""Issue #11 in a live topology: wgpy (first namespace) against wireguard-go (second namespace), both configured
with ``wg set`` as a user would.

- A ``wg set IF listen-port N fwmark 0x80000000`` must be applied whole (the mark does not fit a C int) or refused
  whole; before the fix it emptied the socket list, so all traffic stopped both ways and ``wg show`` kept the old
  port. A rebind to a port that is taken must fail with "Address already in use" and leave the tunnel working.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import flood_lab
import large_config
import pytest
from interop_lab import Daemon, Lab

pytestmark = pytest.mark.interop

HOLD_PORT_SCRIPT = r"""
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", int(sys.argv[1])))
print("bound", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _both_ways(lab: Lab, a: Daemon, b: Daemon, count: int = 3) -> tuple[int, int]:
    return lab.ping(a, b.inner, count=count), lab.ping(b, a.inner, count=count)


def _port_and_mark(daemon: Daemon) -> tuple[int, str]:
    dump = daemon.dump()
    return dump.listen_port, dump.fwmark


def test_listen_port_with_a_fwmark_from_2_to_the_31_keeps_the_tunnel(lab: Lab) -> None:
    a, b = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(a, b.inner)
    old_port = a.listen_port

    # The repro: a new port and a mark >= 2**31 in one request.
    result = lab.run(a.netns, "wg", "set", a.ifname, "listen-port", "51830", "fwmark", "0x80000000", check=False)
    assert result.returncode == 0, result.stderr
    assert _port_and_mark(a) == (51830, "0x80000000")
    sockets = lab.run(a.netns, "ss", "-Hlun", f"sport = :51830 or sport = :{old_port}").stdout
    assert ":51830" in sockets and f":{old_port} " not in sockets, sockets
    # wgpy sends from the new port; wireguard-go learns it from the authenticated packets (roaming).
    assert _both_ways(lab, a, b) == (3, 3)
    assert b.dump().peers[a.public_key].endpoint == f"{a.underlay}:51830"

    # Back to the old port (it was really closed), and the largest mark.
    result = lab.run(a.netns, "wg", "set", a.ifname, "listen-port", str(old_port), "fwmark", "0xffffffff", check=False)
    assert result.returncode == 0, result.stderr
    assert _port_and_mark(a) == (old_port, "0xffffffff")
    assert _both_ways(lab, a, b) == (3, 3)
    assert "Traceback" not in a.log() and "Unhandled exception" not in a.log()


def test_a_rebind_to_a_port_in_use_is_refused_whole_and_the_tunnel_keeps_working(lab: Lab) -> None:
    a, b = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(a, b.inner)
    before = _port_and_mark(a)
    busy = 51840
    holder = lab.spawn(
        a.netns, sys.executable, "-c", HOLD_PORT_SCRIPT, str(busy), "120", log=lab.tmp / "port-holder.log"
    )
    _wait_udp(lab, a.netns, busy)
    assert holder.poll() is None
    result = lab.run(a.netns, "wg", "set", a.ifname, "listen-port", str(busy), "fwmark", "0x80000001", check=False)
    assert result.returncode != 0
    assert "Address already in use" in result.stderr, result.stderr
    assert _port_and_mark(a) == before  # neither the port nor the mark changed
    assert _both_ways(lab, a, b) == (3, 3)
    # A mark alone still works afterwards.
    assert lab.run(a.netns, "wg", "set", a.ifname, "fwmark", "0x80000002", check=False).returncode == 0
    assert _port_and_mark(a) == (before[0], "0x80000002")
    assert _both_ways(lab, a, b) == (3, 3)


def _wait_udp(lab: Lab, netns: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if lab.run(netns, "ss", "-Hlun", f"sport = :{port}", check=False).stdout.strip():
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on UDP port {port} in {netns}")


# -- item 2: a handshake flood from a third namespace ----------------------------------------------------------------

REHANDSHAKE_BOUND = 12.0  # s: the first retry goes out REKEY_TIMEOUT (5 s) after the first initiation, the second
# after 10 s (plus wireguard-go's jitter of up to 1/3 s); completing at the first or second retry fits this bound.


def test_a_handshake_flood_from_one_host_denies_no_service(lab: Lab, measure: Callable[[str], None]) -> None:
    """Issue #11 item 2: while a third namespace floods valid-mac1 initiations (one address, 64 source ports, as
    fast as one Python process sends), pings through the established session keep their latency and nearly all
    their replies, and a legitimate peer that must handshake again completes at its first or second retry
    (``flood_lab.py``; the numbers also come from ``benchmarks/flood.py``)."""
    result = flood_lab.run(lab)
    measure(flood_lab.describe(result))
    assert result.rehandshake_seconds is not None and result.rehandshake_seconds <= REHANDSHAKE_BOUND, result
    assert result.flood_outlasted_measurement, "the flood ended before the measurement did"
    assert result.flood_replies >= 0.95 * flood_lab.PING_COUNT, result
    assert result.flood_avg_ms < 50.0, result  # quiet it is about 1 ms; the issue saw 0.9 s of queueing


# -- items 3 and 4: a 100,000-peer set, get and removal while a ping runs through the tunnel -----------------------

LARGE_PEERS = 100_000
FORWARDING_BOUND_MS = 1000.0  # the requirement is "keeps forwarding": before the fix a ping waited 11.8 s


def test_forwarding_continues_during_a_100k_peer_set_get_and_removal(lab: Lab, measure: Callable[[str], None]) -> None:
    """Issue #11 item 3: the data plane keeps forwarding while 100k peers are set, listed and removed. The bound
    is generous (1 s for any ping) because the requirement is a bound on stalls, not a speed; the numbers go to
    ``benchmarks/uapi_large.py``."""
    a, b = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(b, a.inner)
    phases = large_config.measure(lab, a, b, LARGE_PEERS)
    for phase in phases:
        measure(
            f"{phase.name}: {phase.seconds:.2f} s, answer {phase.reply_bytes} B ({phase.errno_line}), pings "
            f"{phase.pings_answered}/{phase.pings_sent} max RTT {phase.max_rtt_ms:.1f} ms, RSS {phase.rss_kib_after} KiB"
        )
    for phase in phases[1:]:
        assert phase.errno_line == "errno=0", phase
        assert phase.pings_sent > 0 and phase.max_rtt_ms <= FORWARDING_BOUND_MS, phase
        assert phase.pings_answered >= 0.9 * phase.pings_sent, phase
    assert phases[2].reply_bytes > LARGE_PEERS * 100  # the get really listed them
