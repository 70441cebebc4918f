"""The mesh through real tunnels: three namespaces, the seed ACL, a compromised peer, and a revocation.

Topology (``Lab.star``): ``dev`` (group ``developers``), ``prod`` (``production``) and ``other`` (``other``), each in
a namespace of its own, joined by a bridge in a fourth ``switch`` namespace (underlay ``10.98.n.H/24``). ``dev``
and ``prod`` run ``python -m wgpy -f --mesh-key PUB --mesh-map FILE --mesh-state FILE --audit-log FILE IFNAME``;
``wg set`` gives them only their private key and listen port, and the peers, allowed IPs and endpoints come from
the signed map (applied from the watched file as soon as the key arrives). The seed ACL: developers may reach
production on tcp/22 and tcp/443, everything else is denied.

``other`` is *compromised*: it holds its legitimate key but runs a plain ``wgpy -f`` with ``dev`` and ``prod``
configured as peers by hand and no filter of its own, so whatever stops it is enforced by ``dev`` and ``prod``.

The checks use Python one-liners run with ``ip netns exec`` as TCP echo servers (bound to the tunnel address on
ports 22, 443 and 80) and clients, so they need no ``nc``. A denied TCP connection times out (the filter drops the
SYN silently). Finally a map with serial 2 that no longer lists ``other`` is sent with ``wgpy mesh apply`` to
``dev`` and ``prod``: ``other`` disappears from their peers at once, its old session is dead and a new handshake
from it is refused, while ``dev`` keeps reaching ``prod``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from interop_lab import Daemon, Lab

pytestmark = pytest.mark.interop

DENIED_TIMEOUT = 1.5  # seconds a denied TCP connect is given before it counts as timed out
ALLOWED_TIMEOUT = 5.0  # the first allowed connection also waits for the handshake
SERVER_PORTS = (22, 443, 80)

ECHO_SERVER = """
import selectors, socket, sys
selector = selectors.DefaultSelector()
for port in map(int, sys.argv[2:]):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((sys.argv[1], port))
    server.listen(16)
    selector.register(server, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in selector.select():
        connection, _ = key.fileobj.accept()
        connection.settimeout(5)
        try:
            data = connection.recv(1024)
            connection.sendall(b"echo:" + data)
        except OSError:
            pass
        finally:
            connection.close()
"""

CLIENT = """
import socket, sys
try:
    connection = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    connection.sendall(b"hello")
    print(connection.recv(1024).decode())
except OSError as exc:
    print("error:", type(exc).__name__)
    sys.exit(1)
"""


def connect(lab: Lab, client: Daemon, server: Daemon, port: int, timeout: float) -> str:
    """Open a TCP connection from ``client``'s namespace to ``server``'s tunnel address, send "hello" and return
    the answer, or ``error: <exception name>``."""
    result = lab.run(
        client.netns, sys.executable, "-c", CLIENT, server.inner, str(port), str(timeout), check=False, timeout=30
    )
    return result.stdout.strip()


def start_echo_server(lab: Lab, daemon: Daemon, ports: tuple[int, ...]) -> None:
    log = lab.tmp / f"echo-{daemon.ifname}.log"
    lab.extra_logs[f"echo server in {daemon.netns}"] = log
    process = lab.spawn(daemon.netns, sys.executable, "-c", ECHO_SERVER, daemon.inner, *map(str, ports), log=log)
    deadline = time.monotonic() + 10
    while "listening" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"echo server did not start: {log.read_text(errors='replace')}")
        time.sleep(0.05)


def wgpy_cli(lab: Lab, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgpy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )


def write_private(path: Path, text: str) -> Path:
    old = os.umask(0o077)
    try:
        path.write_text(text + "\n")
    finally:
        os.umask(old)
    return path


def map_body(serial: int, members: dict[str, tuple[Daemon, str]]) -> dict[str, Any]:
    issued_at = int(time.time()) - 5
    return {
        "version": 1,
        "serial": serial,
        "issued_at": issued_at,
        "expires_at": issued_at + 3600,
        "peers": [
            {
                "public_key": daemon.public_key,
                "allowed_ips": [f"{daemon.inner}/32"],
                "endpoint": {"host": daemon.underlay, "port": daemon.listen_port},
                "groups": [group],
                "relay": False,
            }
            for daemon, group in members.values()
        ],
        "acl": [
            {"name": "dev-ssh", "src_groups": ["developers"], "dst_groups": ["production"], "protocol": "tcp", "ports": [22], "action": "accept"},
            {"name": "dev-https", "src_groups": ["developers"], "dst_groups": ["production"], "protocol": "tcp", "ports": [443], "action": "accept"},
        ],
    }  # fmt: skip


def sign(lab: Lab, key: Path, body: dict[str, Any], name: str) -> Path:
    body_path = lab.tmp / f"{name}-body.json"
    body_path.write_text(json.dumps(body, indent=2))
    signed = wgpy_cli(lab, "mesh", "sign", "--key", str(key), str(body_path))
    assert signed.returncode == 0, signed.stderr
    path = lab.tmp / f"{name}.json"
    path.write_text(signed.stdout)
    return path


def audit_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def peers_of(daemon: Daemon) -> set[str]:
    return set(daemon.dump().peers)


def test_seed_acl_compromised_peer_and_revocation(lab: Lab) -> None:
    started = time.monotonic()
    ns_dev, ns_prod, ns_other = lab.star(["dev", "prod", "other"])

    generated = wgpy_cli(lab, "mesh", "keygen")
    assert generated.returncode == 0, generated.stderr
    management_key = write_private(lab.tmp / "mgmt.key", generated.stdout.strip())
    management_public = wgpy_cli(lab, "mesh", "pubkey", stdin=generated.stdout).stdout.strip()
    assert generated.stderr.strip() == f"public key: {management_public}"

    audit = {name: lab.tmp / f"{name}-audit.log" for name in ("dev", "prod")}
    maps = {name: lab.tmp / f"{name}-map.json" for name in ("dev", "prod")}

    def mesh_options(name: str) -> list[str]:
        return [
            "--mesh-key",
            management_public,
            "--mesh-map",
            str(maps[name]),
            "--mesh-state",
            str(lab.tmp / f"{name}-state.json"),
            "--audit-log",
            str(audit[name]),
        ]

    dev = lab.spawn_wgpy(ns_dev, 1, *mesh_options("dev"))
    prod = lab.spawn_wgpy(ns_prod, 2, *mesh_options("prod"))
    other = lab.spawn_wgpy(ns_other, 3)  # compromised: no mesh, no filter
    for daemon in (dev, prod, other):
        lab.wait_for_socket(daemon)
    members = {"dev": (dev, "developers"), "prod": (prod, "production"), "other": (other, "other")}

    # The map is in the watched files before the daemons have a key; `wg set private-key` makes them apply it.
    first = sign(lab, management_key, map_body(1, members), "map-1")
    for name in ("dev", "prod"):
        maps[name].write_bytes(first.read_bytes())
    for daemon in (dev, prod):
        key_file = write_private(lab.tmp / f"{daemon.ifname}.key", daemon.private_key)
        daemon.wg("set", daemon.ifname, "private-key", str(key_file), "listen-port", str(daemon.listen_port))
        assert peers_of(daemon) == {d.public_key for d, _ in members.values()} - {daemon.public_key}
        lab.bring_up(daemon)
    other_key = write_private(lab.tmp / f"{other.ifname}.key", other.private_key)
    other_argv = ["set", other.ifname, "private-key", str(other_key), "listen-port", str(other.listen_port)]
    for target in (dev, prod):
        other_argv += ["peer", target.public_key, "endpoint", target.endpoint, "allowed-ips", f"{target.inner}/32"]
    other.wg(*other_argv)
    lab.bring_up(other)
    assert dev.show("allowed-ips").count(prod.public_key) == 1
    start_echo_server(lab, prod, SERVER_PORTS)
    start_echo_server(lab, dev, SERVER_PORTS)

    # Developers reach production on 22 and 443, and the replies flow back.
    assert connect(lab, dev, prod, 22, ALLOWED_TIMEOUT) == "echo:hello"
    assert connect(lab, dev, prod, 443, ALLOWED_TIMEOUT) == "echo:hello"
    # Anything else is dropped silently: the connection attempt times out.
    assert connect(lab, dev, prod, 80, DENIED_TIMEOUT) == "error: TimeoutError"
    assert connect(lab, prod, dev, 22, DENIED_TIMEOUT) == "error: TimeoutError"
    assert lab.ping(dev, prod.inner, count=1, wait=1.0) == 0  # icmp is not in the ACL either
    # The compromised peer reaches nothing, although WireGuard itself lets it in.
    assert connect(lab, other, prod, 22, DENIED_TIMEOUT) == "error: TimeoutError"
    assert connect(lab, other, dev, 22, DENIED_TIMEOUT) == "error: TimeoutError"
    assert lab.ping(other, dev.inner, count=2, interval=0.2, wait=1.0) == 0
    other_on_prod = prod.dump().peers[other.public_key]
    assert other_on_prod.latest_handshake > 0 and other_on_prod.rx > 0

    # The audit log: one line per connection decision, public keys only.
    dev_lines, prod_lines = audit_records(audit["dev"]), audit_records(audit["prod"])
    assert any(
        r["event"] == "connection" and r["rule"] == "dev-ssh" and r["action"] == "accept" and r["dport"] == 22
        for r in dev_lines
    ), dev_lines
    assert any(
        r["event"] == "connection" and r["direction"] == "inbound" and r["rule"] == "dev-ssh" for r in prod_lines
    )
    assert any(
        r["event"] == "connection" and r["peer"] == other.public_key and r["action"] == "deny" for r in prod_lines
    )
    assert any(r["event"] == "handshake" for r in prod_lines)
    assert any(r["event"] == "map_applied" and r["serial"] == 1 for r in prod_lines)

    # Revocation: serial 2 without "other", pushed over the UAPI socket.
    del members["other"]
    second = sign(lab, management_key, map_body(2, members), "map-2")
    dev_handshake = dev.dump().peers[prod.public_key].latest_handshake
    for daemon in (dev, prod):
        applied = wgpy_cli(lab, "mesh", "apply", daemon.ifname, str(second))
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout == f"{daemon.ifname}: network map serial 2 applied: 0 peers added, 1 removed, 0 changed\n"
        assert other.public_key not in peers_of(daemon)
    refused = wgpy_cli(lab, "mesh", "apply", other.ifname, str(second))
    assert refused.returncode == 1 and "does not accept network maps" in refused.stderr
    stale = wgpy_cli(lab, "mesh", "apply", prod.ifname, str(first))
    assert stale.returncode == 1 and "network map rejected (stale_serial)" in stale.stderr

    # Its old session is dead at once...
    assert connect(lab, other, prod, 22, DENIED_TIMEOUT) == "error: TimeoutError"
    # ...and a fresh handshake from it is refused: its peer entry for prod is recreated, so it must initiate anew.
    other.wg("set", other.ifname, "peer", prod.public_key, "remove")
    other.wg("set", other.ifname, "peer", prod.public_key, "endpoint", prod.endpoint, "allowed-ips", f"{prod.inner}/32")
    assert lab.ping(other, prod.inner, count=2, interval=0.5, wait=1.0) == 0
    assert other.dump().peers[prod.public_key].latest_handshake == 0
    prod_log = prod.log()
    assert "UNKNOWN_INDEX" in prod_log and "UNKNOWN_PEER" in prod_log

    # Developers keep their session with production, and their access.
    assert connect(lab, dev, prod, 22, ALLOWED_TIMEOUT) == "echo:hello"
    assert dev.dump().peers[prod.public_key].latest_handshake == dev_handshake
    prod_lines = audit_records(audit["prod"])
    assert any(r["event"] == "peer_removed" and r["peer"] == other.public_key for r in prod_lines)
    assert any(r["event"] == "map_applied" and r["serial"] == 2 and r["removed"] == 1 for r in prod_lines)

    # No private key material in any log, the state was saved, and everyone is still alive.
    secrets = [daemon.private_key for daemon in (dev, prod, other)] + [management_key.read_text().strip()]
    for path in [*audit.values(), dev.log_path, prod.log_path, other.log_path]:
        text = path.read_text(errors="replace")
        assert not any(secret in text for secret in secrets), path
    for name in ("dev", "prod"):
        assert json.loads((lab.tmp / f"{name}-state.json").read_text())["serial"] == 2
    assert dev.alive() and prod.alive() and other.alive()
    assert time.monotonic() - started < 60
