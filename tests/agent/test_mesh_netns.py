"""The mesh end to end with real TUN devices: a management server and three ``wgpy up`` agents in namespaces.

Topology (all made here and deleted afterwards, whatever the outcome): five namespaces ``wgpya-<pid>-<hex>-TAG``;
``switch`` holds a bridge, and ``server``, ``laptop``, ``prod`` and ``other`` each reach it over a veth created
directly inside the two namespaces (underlay ``10.97.N.0/24``: server .1, laptop .2, prod .3, other .4). The
server is ``wgpy management serve`` (SQLite in its state directory); each agent is ``wgpy up -f`` with its own
state directory and a TUN interface whose name is unique to the run (``/var/run/wireguard`` is not per
namespace). Processes are started by this test and stopped by PID.

What is checked, through the kernel's TCP stack and the tunnels:

1. the model's ACL: laptop -> prod tcp/22 and tcp/443 connect, tcp/80 does not, other cannot reach prod at all;
2. the server stopped: laptop -> prod tcp/22 still connects (the last maps stay in force);
3. the server restarted on the same database: every agent reconnects, with the same addresses;
4. ``admin peer revoke`` of the laptop: production's map no longer lists it within 1 s, and the laptop's
   connections fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.interop

REPO = Path(__file__).resolve().parents[2]
PORT = 8470  # the management server's port inside its namespace
LISTENER = """
import socket, sys, selectors
sel = selectors.DefaultSelector()
for port in (22, 80, 443):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(16); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
print("listening", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept(); conn.close()
"""
CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
except OSError as exc:
    print(type(exc).__name__); sys.exit(1)
print("connected")
"""
REVOKE = """
import json, sys, time, urllib.request
request = urllib.request.Request(sys.argv[1], method="POST", headers={"Authorization": "Bearer " + sys.argv[2]})
started = time.time()
with urllib.request.urlopen(request, timeout=10) as answer:
    answer.read()
print(json.dumps({"started": started, "done": time.time()}))
"""


def _problem() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    if shutil.which("ip") is None:
        return "needs ip(8)"
    return None


@dataclass
class Lab:
    tmp: Path
    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(2)}")
    subnet: int = field(default_factory=lambda: secrets.randbelow(250) + 2)
    namespaces: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: dict[str, Path] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO), "WGPY_KEYRING": "0", "LOG_LEVEL": "info", **extra}

    def run(
        self, ns: str | None, *argv: str, check: bool = True, timeout: float = 30.0, **env: str
    ) -> subprocess.CompletedProcess[str]:
        full = ["ip", "netns", "exec", self.namespaces[ns], *argv] if ns is not None else list(argv)
        result = subprocess.run(full, capture_output=True, text=True, timeout=timeout, env=self.env(**env), check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(full)} -> {result.returncode}: {result.stdout} {result.stderr}")
        return result

    def spawn(self, ns: str, tag: str, *argv: str) -> subprocess.Popen[bytes]:
        log = self.tmp / f"{tag}.log"
        self.logs[tag] = log
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespaces[ns], *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=REPO,
            )
        self.processes.append(process)
        return process

    def underlay(self, host: int) -> str:
        return f"10.97.{self.subnet}.{host}"

    def build(self, tags: list[str]) -> None:
        for tag in ["switch", *tags]:
            name = f"wgpya-{self.run_id}-{tag}"
            self.run(None, "ip", "netns", "add", name)
            self.namespaces[tag] = name
            self.run(tag, "ip", "link", "set", "lo", "up")
        self.run("switch", "ip", "link", "add", "br0", "type", "bridge")
        self.run("switch", "ip", "link", "set", "br0", "up")
        for host, tag in enumerate(tags, start=1):
            self.run(
                None, "ip", "-n", self.namespaces["switch"], "link", "add", f"port{host}", "type", "veth",
                "peer", "name", "uplink", "netns", self.namespaces[tag],
            )  # fmt: skip
            self.run("switch", "ip", "link", "set", f"port{host}", "master", "br0")
            self.run("switch", "ip", "link", "set", f"port{host}", "up")
            self.run(tag, "ip", "addr", "add", f"{self.underlay(host)}/24", "dev", "uplink")
            self.run(tag, "ip", "link", "set", "uplink", "up")

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    def close(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(OSError):
                self.stop(process)
        for name in reversed(list(self.namespaces.values())):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@pytest.fixture
def lab(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Lab]:
    problem = _problem()
    if problem is not None:
        pytest.skip(problem)
    the_lab = Lab(tmp_path)
    try:
        yield the_lab
    finally:
        the_lab.close()
        if getattr(request.node, "rep_call_failed", False):
            for tag, log in the_lab.logs.items():
                print(f"--- {tag} ---\n{log.read_text(errors='replace')[-4000:]}")


def wait_until(predicate: object, timeout: float, what: str, step: float = 0.05) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(step)
    raise AssertionError(f"{what}: not within {timeout} s")


def status(state: Path) -> dict[str, object]:
    try:
        value = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def peers_of(state: Path) -> list[dict[str, object]]:
    peers = status(state).get("peers")
    return [p for p in peers if isinstance(p, dict)] if isinstance(peers, list) else []


def test_mesh_with_tun_devices_in_namespaces(lab: Lab) -> None:
    tags = ["server", "laptop", "prod", "other"]
    lab.build(tags)
    server_state = lab.tmp / "server-state"
    token = lab.run(
        None, sys.executable, "-m", "wgpy", "management", "init", "--state-dir", str(server_state)
    ).stdout.strip()
    from wgpy.management.server import load_keys

    management_key = load_keys(server_state).info()["signing_key"]
    url = f"http://{lab.underlay(1)}:{PORT}"
    serve = [
        sys.executable,
        "-m",
        "wgpy",
        "management",
        "serve",
        "--state-dir",
        str(server_state),
        "--listen",
        f"{lab.underlay(1)}:{PORT}",
    ]

    def start_server() -> subprocess.Popen[bytes]:
        process = lab.spawn("server", "server", *serve)
        wait_until(lambda: "listening on" in lab.logs["server"].read_text(errors="replace"), 20, "server start")
        return process

    server = start_server()
    admin = [sys.executable, "-m", "wgpy", "admin", "--url", url]
    policy = lab.tmp / "policy.yaml"
    from wgpy.tools.mesh_demo import POLICY

    policy.write_text(POLICY)
    lab.run("server", *admin, "policy", "set", str(policy), WGPY_ADMIN_TOKEN=token)

    states: dict[str, Path] = {}
    interfaces: dict[str, str] = {}
    for tag, group in (("laptop", "developers"), ("prod", "production"), ("other", "other")):
        key = lab.run(
            "server", *admin, "setup-key", "create", "--name", tag, "--group", group, WGPY_ADMIN_TOKEN=token
        ).stdout.strip()
        states[tag] = lab.tmp / f"{tag}-state"
        interfaces[tag] = "wga" + secrets.token_hex(3)
        lab.spawn(
            tag, tag, sys.executable, "-m", "wgpy", "up", "-f", "--management", url, "--setup-key", key,
            "--management-key", management_key, "--name", tag, "--interface", interfaces[tag],
            "--state-dir", str(states[tag]),
        )  # fmt: skip
    for tag in states:
        wait_until(lambda tag=tag: status(states[tag]).get("connected") is True, 30, f"{tag} connected")
    address = {tag: str(status(states[tag])["address"]) for tag in states}

    lab.spawn("prod", "listener", sys.executable, "-c", LISTENER, address["prod"])
    wait_until(lambda: "listening" in lab.logs["listener"].read_text(), 10, "listener")
    # endpoints propagate with a map push each; wait until the laptop's map has production with an endpoint
    wait_until(
        lambda: any(p.get("endpoint") for p in peers_of(states["laptop"])),
        10,
        "laptop knows production's endpoint",
    )

    def connect(src: str, port: int, timeout: float = 3.0) -> bool:
        return (
            lab.run(
                src, sys.executable, "-c", CONNECT, address["prod"], str(port), str(timeout), check=False
            ).returncode
            == 0
        )

    # wg(8) sees the agent's interface (its UAPI socket): production is the laptop's one peer
    if shutil.which("wg") is not None:
        shown = lab.run("laptop", "wg", "show", interfaces["laptop"], "peers").stdout.split()
        prod_key = lab.run("prod", "wg", "show", interfaces["prod"], "public-key").stdout.strip()
        assert shown == [prod_key]

    # 1. the model's ACL, end to end through the kernel and the tunnels
    assert connect("laptop", 22), "laptop -> prod tcp/22 must connect"
    assert connect("laptop", 443), "laptop -> prod tcp/443 must connect"
    assert not connect("laptop", 80, 1.5), "laptop -> prod tcp/80 must fail"
    assert not connect("other", 22, 1.5), "other must not reach prod"

    # 2. the server goes away: the mesh keeps working on its last maps
    lab.stop(server)
    wait_until(lambda: status(states["laptop"]).get("connected") is False, 10, "laptop notices the server is gone")
    assert connect("laptop", 22), "laptop -> prod tcp/22 must still connect without the server"

    # 3. the server comes back on the same database: everyone reconnects, nothing is lost
    server = start_server()
    for tag in states:
        wait_until(lambda tag=tag: status(states[tag]).get("connected") is True, 20, f"{tag} reconnected")
    peers = json.loads(lab.run("server", *admin, "peer", "list", WGPY_ADMIN_TOKEN=token).stdout)
    assert sorted(str(p["address"]).split("/")[0] for p in peers) == sorted(address.values())
    assert connect("laptop", 22)

    # 4. revoke the laptop: production's map no longer lists it within 1 s, and the laptop is cut off
    laptop_id = next(str(p["id"]) for p in peers if p["name"] == "laptop")
    prod_peers_before = len(peers_of(states["prod"]))
    assert prod_peers_before == 1
    revoke = lab.run("server", sys.executable, "-c", REVOKE, f"{url}/api/v1/peers/{laptop_id}/revoke", token)
    started = json.loads(revoke.stdout)["started"]
    wait_until(lambda: status(states["prod"]).get("peers") == [], 2, "production drops the laptop")
    dropped_at = (states["prod"] / "status.json").stat().st_mtime
    print(f"production dropped the laptop {dropped_at - started:.3f} s after the revoke request")
    assert dropped_at - started < 1.0, f"production dropped the laptop {dropped_at - started:.3f} s after the revoke"
    assert not connect("laptop", 22, 1.5), "a revoked laptop must not connect"
    wait_until(lambda: "was revoked" in lab.logs["laptop"].read_text(errors="replace"), 5, "laptop told of revocation")

    # `wgpy status` and `wgpy down` on an agent with a TUN device: the interface goes away with it
    text = lab.run(None, sys.executable, "-m", "wgpy", "status", "--state-dir", str(states["prod"])).stdout
    assert "running (pid" in text and f"on {interfaces['prod']}" in text and "private key:  file" in text
    lab.run(None, sys.executable, "-m", "wgpy", "down", "--state-dir", str(states["prod"]))
    assert lab.run("prod", "ip", "link", "show", interfaces["prod"], check=False).returncode != 0
