"""Clean shutdown of the daemon: SIGINT and SIGTERM remove the interface and the UAPI socket, and exit 0."""

from __future__ import annotations

import signal
import subprocess

import pytest
from interop_lab import Lab

pytestmark = pytest.mark.interop


def _link_exists(lab: Lab, netns: str, ifname: str) -> bool:
    result = subprocess.run(["ip", "-n", netns, "link", "show", ifname], capture_output=True, check=False)
    return result.returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_interface_and_socket(lab: Lab, signum: signal.Signals) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)  # a live tunnel, with a session, is what gets shut down
    assert wgpy.process is not None
    assert _link_exists(lab, wgpy.netns, wgpy.ifname) and wgpy.socket_path.exists()

    wgpy.process.send_signal(signum)
    assert wgpy.process.wait(timeout=10) == 0, wgpy.log()
    assert not wgpy.socket_path.exists()
    assert not _link_exists(lab, wgpy.netns, wgpy.ifname)
    assert "Traceback" not in wgpy.log()
