"""Issue #11 in a live topology: wgpy (first namespace) against wireguard-go (second namespace), both configured
with ``wg set`` as a user would.

- A ``wg set IF listen-port N fwmark 0x80000000`` must be applied whole (the mark does not fit a C int) or refused
  whole; before the fix it emptied the socket list, so all traffic stopped both ways and ``wg show`` kept the old
  port. A rebind to a port that is taken must fail with "Address already in use" and leave the tunnel working.
"""

from __future__ import annotations

import sys
import time

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
