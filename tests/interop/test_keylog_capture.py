"""``wgpy --keylog FILE``: tshark captures wgpy's traffic in its namespace and decrypts it with the key log.

wgpy (``python -m wgpy -f --keylog FILE IFNAME``) serves the first namespace, wireguard-go the second. tshark captures
on wgpy's veth (started inside wgpy's namespace, and waited for until it reports that it is capturing), pings cross
the tunnel both ways, tshark is stopped by its PID, and the capture is read back twice: with
``wg.keylog_file`` set, Wireshark's WireGuard dissector derives the session keys from the logged ephemeral and
static keys and shows the ICMP packets inside, with their tunnel addresses; without it, the same capture shows
transport messages and no ICMP at all.
"""

from __future__ import annotations

import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from interop_lab import Daemon, Lab, in_ci

pytestmark = pytest.mark.interop

CAPTURE_WAIT = 20.0  # seconds for tshark to start capturing (it loads every dissector first)
CAPTURE_SETTLE = 1.0  # seconds between the last ping and stopping tshark
PINGS = 3


@pytest.fixture(autouse=True)
def _tshark_prerequisite() -> None:
    """tshark is a prerequisite of this file only; like the conftest's checks, missing it fails under CI=true."""
    if shutil.which("tshark") is not None:
        return
    message = "this test needs 'tshark' on PATH (apt-get install tshark)"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing prerequisite is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def _start_capture(
    lab: Lab, daemon: Daemon, interface: str, pcap: Path, marker_from: Daemon
) -> subprocess.Popen[bytes]:
    """tshark on ``interface`` in ``daemon``'s namespace, writing ``pcap``; returns once it records packets.

    "Capturing on" is printed before packets are really recorded, so that is not enough: ``-P`` makes tshark print
    each packet it records as well, and ``marker_from`` pings ``daemon``'s underlay address until one shows up.
    """
    log = lab.tmp / "tshark-capture.log"
    lab.extra_logs["tshark capture"] = log
    process = lab.spawn(daemon.netns, "tshark", "-n", "-P", "-i", interface, "-w", str(pcap), log=log)
    # The summary line of an echo request from the marker: "10.98.n.2 → 10.98.n.1 ICMP 98 Echo (ping) request".
    marker = re.compile(rf"{re.escape(marker_from.underlay)}\s+(→|->)\s+{re.escape(daemon.underlay)}\s+ICMP\b")
    deadline = time.monotonic() + CAPTURE_WAIT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"tshark exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        text = log.read_text(errors="replace")
        if marker.search(text):
            return process
        if "Capturing on" in text:
            lab.run(marker_from.netns, "ping", "-n", "-q", "-c", "1", "-W", "0.2", daemon.underlay, check=False)
        else:
            time.sleep(0.05)
    raise AssertionError(f"tshark did not start capturing within {CAPTURE_WAIT} s:\n{log.read_text(errors='replace')}")


def _stop_capture(process: subprocess.Popen[bytes]) -> None:
    """Stop tshark by its PID the way Ctrl-C does, so that it finishes the file. The capture runs behind the
    traffic (dumpcap hands packets to tshark through a pipe), so it is given a moment to catch up first."""
    time.sleep(CAPTURE_SETTLE)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)


def _read(lab: Lab, pcap: Path, port: int, *options: str) -> list[str]:
    """ICMP packets tshark finds inside WireGuard messages: ``inner source, inner destination, ICMP type`` per line
    (the underlay pings that marked the start of the capture are outside WireGuard)."""
    argv = ["tshark", "-n", "-r", str(pcap), "-d", f"udp.port=={port},wg", *options]
    argv += [
        "-Y",
        "wg && icmp",
        "-T",
        "fields",
        "-E",
        "occurrence=l",
        "-e",
        "ip.src",
        "-e",
        "ip.dst",
        "-e",
        "icmp.type",
    ]
    return [line for line in lab.run(None, *argv).stdout.splitlines() if line.strip()]


def test_tshark_decrypts_wgpy_traffic_with_the_key_log(lab: Lab) -> None:
    keylog = lab.tmp / "wgpy.keylog"
    pcap = lab.tmp / "wgpy.pcapng"
    ns_a, ns_b = lab.add_namespace("1"), lab.add_namespace("2")
    veth_a, _ = lab.link(ns_a, ns_b)
    wgpy = lab.start_command("wgpy", ns_a, 1, [sys.executable, "-m", "wgpy", "-f", "--keylog", str(keylog)])
    go = lab.start("wireguard-go", ns_b, 2)
    lab.configure(wgpy, go)
    capture = _start_capture(lab, wgpy, veth_a, pcap, marker_from=go)
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(wgpy, go.inner, count=PINGS) == PINGS
    assert lab.ping(go, wgpy.inner, count=PINGS) == PINGS
    _stop_capture(capture)

    assert stat.S_IMODE(keylog.stat().st_mode) == 0o600
    logged = keylog.read_text().splitlines()
    assert logged and logged[0].startswith("LOCAL_STATIC_PRIVATE_KEY = "), logged[:1]

    # Without the key log: the transport messages are there, their contents are not.
    port_is_wg = f"udp.port=={wgpy.listen_port},wg"
    transport = ["-Y", "wg.type == 4", "-T", "fields", "-e", "wg.type"]
    plain_types = lab.run(None, "tshark", "-n", "-r", str(pcap), "-d", port_is_wg, *transport)
    assert len(plain_types.stdout.split()) >= 4 * PINGS, plain_types.stdout
    assert _read(lab, pcap, wgpy.listen_port) == []

    # With it: every ping inside the tunnel, both ways, with the tunnel's addresses.
    decrypted = _read(lab, pcap, wgpy.listen_port, "-o", f"wg.keylog_file:{keylog}", "-o", "wg.dissect_packet:TRUE")
    a, b = wgpy.inner, go.inner
    requests_a = decrypted.count(f"{a}\t{b}\t8")
    replies_b = decrypted.count(f"{b}\t{a}\t0")
    requests_b = decrypted.count(f"{b}\t{a}\t8")
    replies_a = decrypted.count(f"{a}\t{b}\t0")
    assert requests_a >= PINGS and replies_b >= PINGS, decrypted
    assert requests_b == PINGS and replies_a == PINGS, decrypted
    assert set(decrypted) <= {f"{a}\t{b}\t8", f"{b}\t{a}\t0", f"{b}\t{a}\t8", f"{a}\t{b}\t0"}, decrypted
