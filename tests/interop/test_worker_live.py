"""wgpy with its data-plane worker process (``WGPY_WORKER=1``) against live peers, through real TUN devices.

The worker seals every transport message and writes every decrypted packet to the TUN device, so these tests
check the whole two-process data path against wireguard-go and against itself, and that losing the worker only
costs the second core.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
from interop_lab import Daemon, Lab, pid_alive

pytestmark = pytest.mark.interop

IPERF_SECONDS = 2.0


def _worker_of(daemon: Daemon) -> int:
    """The PID of the daemon's worker (its only child), after checking it runs the worker module."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for pid in daemon.children():
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"wgpy.drivers.worker" in f.read():
                    return pid
        time.sleep(0.05)
    raise AssertionError(f"no data-plane worker under {daemon.kind} pid {daemon.pid}:\n{daemon.log()}")


def _assert_exits(worker: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(worker), "the worker outlived its daemon"


def test_worker_against_wireguard_go(lab: Lab, measure: Callable[[str], None]) -> None:
    a, b = lab.pair("wgpy", "wireguard-go", preshared_key=True, worker_a=True)
    worker = _worker_of(a)
    lab.wait_for_ping(a, b.inner)
    assert lab.ping(a, b.inner, count=3) == 3
    assert lab.ping(b, a.inner, count=3) == 3
    assert lab.ping(a, b.inner6, count=2) == 2
    for client, server, label in ((a, b, "wgpy --worker -> wireguard-go"), (b, a, "wireguard-go -> wgpy --worker")):
        report = lab.iperf3(client, server, seconds=IPERF_SECONDS)
        mbps = report["end"]["sum_received"]["bits_per_second"] / 1e6
        measure(f"TCP {label}: {mbps:.1f} Mbit/s received")
        assert mbps > 0
    assert a.alive() and b.alive()
    assert "running in one process" not in a.log()
    assert a.process is not None
    a.process.send_signal(signal.SIGTERM)  # the daemon we started: it must take its worker with it
    a.process.wait(timeout=10)
    _assert_exits(worker)


def test_worker_exits_when_its_daemon_is_killed(lab: Lab) -> None:
    a, _b = lab.pair("wgpy", "wireguard-go", worker_a=True)
    worker = _worker_of(a)
    assert a.process is not None
    a.process.kill()  # no clean shutdown: the worker sees its channel close
    a.process.wait(timeout=10)
    _assert_exits(worker)


def test_two_workers_and_losing_one(lab: Lab) -> None:
    a, b = lab.pair("wgpy", "wgpy", worker_a=True, worker_b=True)
    worker_a = _worker_of(a)
    _worker_of(b)
    lab.wait_for_ping(a, b.inner)
    assert lab.ping(a, b.inner, count=3) == 3
    os.kill(worker_a, signal.SIGKILL)  # a process our daemon started for this test
    deadline = time.monotonic() + 5.0
    while "running in one process" not in a.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "running in one process" in a.log()
    assert a.alive()
    assert lab.ping(a, b.inner, count=3) == 3  # A seals in its main process now
    assert lab.ping(b, a.inner, count=3) == 3
    report = lab.iperf3(a, b, seconds=1.0)
    assert report["end"]["sum_received"]["bits_per_second"] > 0
