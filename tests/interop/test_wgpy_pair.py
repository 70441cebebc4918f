"""wgpy against wgpy: two daemons in two namespaces, configured with ``wg set``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from interop_lab import Lab

pytestmark = pytest.mark.interop

IPERF_SECONDS = 2.0


def test_wgpy_pair_ping_and_iperf3_tcp(lab: Lab, measure: Callable[[str], None]) -> None:
    a, b = lab.pair("wgpy", "wgpy", preshared_key=True)
    lab.wait_for_ping(a, b.inner)
    assert lab.ping(a, b.inner, count=3) == 3
    assert lab.ping(b, a.inner, count=3) == 3
    assert lab.ping(b, a.inner6, count=2) == 2

    report = lab.iperf3(a, b, seconds=IPERF_SECONDS)
    mbps = report["end"]["sum_received"]["bits_per_second"] / 1e6
    measure(f"TCP wgpy -> wgpy: {mbps:.1f} Mbit/s received")
    assert mbps > 0
    assert a.alive() and b.alive()
