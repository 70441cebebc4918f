"""``wg-quick up/down`` with wgpy as the userspace implementation, against wireguard-go.

``WG_QUICK_USERSPACE_IMPLEMENTATION=wgpy wg-quick up <dir>/<ifname>.conf`` runs inside the first namespace: wg-quick
fails to create a kernel WireGuard link, runs ``wgpy <ifname>`` (which daemonizes once its TUN device and UAPI
socket exist), then configures it through the socket (``wg setconf``), adds the address, brings the link up and
adds a route for each allowed IP. ``wg-quick down`` deletes the link, which must make wgpy exit and remove its socket.
The daemon is not our child: the test finds it by its command line, which ends with the unique interface name, so the
finalizer can stop it by PID if it outlives the test.
"""

from __future__ import annotations

import os
import time

import pytest
from interop_lab import Daemon, Lab, pid_alive, pids_serving

pytestmark = pytest.mark.interop

EXIT_WAIT = 10.0


def _write_conf(lab: Lab, ifname: str, me: Daemon, peer: Daemon, extra_network: str) -> str:
    conf = lab.tmp / f"{ifname}.conf"
    text = (
        "[Interface]\n"
        f"Address = {lab.inner_address(1)}/24\n"
        f"PrivateKey = {me.private_key}\n"
        f"ListenPort = {me.listen_port}\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {peer.public_key}\n"
        f"AllowedIPs = {peer.inner}/32, {extra_network}\n"
        f"Endpoint = {peer.endpoint}\n"
    )
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return str(conf)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_wg_quick_up_and_down(lab: Lab) -> None:
    ns1, ns2 = lab.add_namespace("1"), lab.add_namespace("2")
    lab.link(ns1, ns2)
    go = lab.start("wireguard-go", ns2, 2)

    # The wgpy side: keys and a Daemon record (for the log and the socket path), but wg-quick starts the process.
    wgpy = lab.new_daemon("wgpy", ns1, 1)
    extra_network = f"10.97.{lab.subnet}.0/24"
    conf = _write_conf(lab, wgpy.ifname, wgpy, go, extra_network)
    go.wg(
        "set", go.ifname, "private-key", str(lab.key_file(go.ifname, go.private_key)), "listen-port",
        str(go.listen_port), "peer", wgpy.public_key, "endpoint", wgpy.endpoint, "allowed-ips", f"{wgpy.inner}/32",
    )  # fmt: skip
    go.ip("addr", "add", f"{go.inner}/24", "dev", go.ifname)
    go.ip("link", "set", go.ifname, "up")

    env = dict(os.environ, WG_QUICK_USERSPACE_IMPLEMENTATION="wgpy", LOG_LEVEL="verbose")
    env.pop("WG_PROCESS_FOREGROUND", None)
    # Output goes to a file, not a pipe: the daemon inherits it and would keep a pipe open after wg-quick ends.
    up = lab.spawn(ns1, "wg-quick", "up", conf, log=wgpy.log_path, env=env)
    try:
        assert up.wait(timeout=60) == 0, wgpy.log()
    finally:
        lab.extra_pids.extend(pids_serving(wgpy.ifname))
    pids = pids_serving(wgpy.ifname)
    assert len(pids) == 1, f"expected one wgpy daemon for {wgpy.ifname}, found {pids}"
    pid = pids[0]
    assert wgpy.socket_path.exists()

    assert wgpy.show("dump").count("\n") == 2  # the interface line and one peer
    assert wgpy.dump().listen_port == wgpy.listen_port
    routes = wgpy.ip("route", "show", "dev", wgpy.ifname)
    assert extra_network in routes, routes
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=3) == 3

    down = lab.run(ns1, "wg-quick", "down", conf, env=env, check=False)
    assert down.returncode == 0, down.stderr
    assert wgpy.ip("link", "show", wgpy.ifname, check=False) == ""
    assert _wait_gone(pid, EXIT_WAIT), f"wgpy (pid {pid}) still runs {EXIT_WAIT} s after wg-quick down"
    assert not wgpy.socket_path.exists()
    assert go.alive()
