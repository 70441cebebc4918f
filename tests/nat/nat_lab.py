"""Our own namespace harness for the NAT tests: an "internet" namespace, NAT routers (nft masquerade), peers, coturn.

Topology (every address private, every name unique per run, everything torn down even on failure)::

    peer a (192.168.<i>.2) -- router ra (nft masquerade) 10.<n>.<i>.2 --\
                                                                          inet (10.<n>.0.1 coturn, routes)
    peer b (192.168.<j>.2) -- router rb (nft masquerade) 10.<n>.<j>.2 --/

``masquerade`` keeps the source port where it can and reuses one mapping for every destination: an
endpoint-independent mapping (RFC 4787), the NAT hole punching needs. ``masquerade random`` picks a fresh port per
connection (per destination): a symmetric NAT. Conntrack filters replies by address and port in both cases.

Processes started here (coturn, peers) are stopped by PID before the namespaces are deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = Path(__file__).resolve().parents[1]
TURN_PORT = 3478


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    message = f"NAT lab needs root, ip(8), nft(8) and coturn's turnserver: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a skip is a failure)", pytrace=False)
    pytest.skip(message)


def environment_problem() -> str | None:
    if sys.platform != "linux":
        return f"this is {sys.platform}"
    if os.geteuid() != 0:
        return f"running as uid {os.geteuid()}, not root"
    for tool in ("ip", "nft", "turnserver"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt-get install iproute2 nftables coturn)"
    return None


def _run(*argv: str) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def child_env() -> dict[str, str]:
    paths = [str(REPO_ROOT), str(TESTS_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


@dataclass
class Lab:
    tag: str
    net: int  # second octet of the "internet" 10.<net>.0.0/16
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[str]] = field(default_factory=list)
    workdir: Path = field(default_factory=lambda: Path("/tmp"))
    peers: dict[str, str] = field(default_factory=dict)  # peer name -> namespace
    routers: dict[str, str] = field(default_factory=dict)  # peer name -> its router's namespace
    wan: dict[str, str] = field(default_factory=dict)  # peer name -> its router's public address
    lan: dict[str, str] = field(default_factory=dict)  # peer name -> its private address
    management: tuple[str, str] | None = None  # the management server's URL and admin token, once started
    _links: int = 0

    @property
    def inet(self) -> str:
        return f"{self.tag}-inet"

    @property
    def server_ip(self) -> str:
        return f"10.{self.net}.0.1"

    def ns(self, name: str) -> str:
        full = f"{self.tag}-{name}"
        _run("ip", "netns", "add", full)
        self.namespaces.append(full)
        self.exec(full, "ip", "link", "set", "lo", "up")
        return full

    def exec(self, namespace: str, *argv: str) -> str:
        return _run("ip", "netns", "exec", namespace, *argv)

    def _veth(self, a: str, b: str) -> tuple[str, str]:
        self._links += 1
        ea, eb = f"v{self._links}a{self.tag[-4:]}", f"v{self._links}b{self.tag[-4:]}"
        _run("ip", "link", "add", ea, "netns", a, "type", "veth", "peer", "name", eb, "netns", b)
        return ea, eb

    def build_internet(self) -> None:
        inet = self.ns("inet")
        self.exec(inet, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.exec(inet, "ip", "addr", "add", f"{self.server_ip}/32", "dev", "lo")  # the servers' address

    def add_peer(self, name: str, *, nat: str | None) -> str:
        """A peer behind a router; ``nat`` is "eim" (endpoint-independent), "symmetric", or None (no NAT)."""
        index = len(self.peers) + 1
        router, peer = self.ns(f"r{name}"), self.ns(name)
        inet = self.inet
        wan_ip, lan_ip = f"10.{self.net}.{index}.2", f"192.168.{index}.2"
        ia, ib = self._veth(inet, router)
        self.exec(inet, "ip", "addr", "add", f"10.{self.net}.{index}.1/24", "dev", ia)
        self.exec(inet, "ip", "link", "set", ia, "up")
        self.exec(router, "ip", "addr", "add", f"{wan_ip}/24", "dev", ib)
        self.exec(router, "ip", "link", "set", ib, "up")
        self.exec(router, "ip", "route", "add", "default", "via", f"10.{self.net}.{index}.1")
        self.exec(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        la, lb = self._veth(router, peer)
        self.exec(router, "ip", "addr", "add", f"192.168.{index}.1/24", "dev", la)
        self.exec(router, "ip", "link", "set", la, "up")
        self.exec(peer, "ip", "addr", "add", f"{lan_ip}/24", "dev", lb)
        self.exec(peer, "ip", "link", "set", lb, "up")
        self.exec(peer, "ip", "route", "add", "default", "via", f"192.168.{index}.1")
        if nat is not None:
            flags = " random" if nat == "symmetric" else ""
            rules = (
                "table ip nat {\n"
                " chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n"
                f'  oifname "{ib}" masquerade{flags}\n'
                " }\n}\n"
                # The router itself accepts nothing from outside that is not a reply (a NAT, not a forwarder).
                "table ip filter {\n"
                # Unsolicited inbound is dropped before conntrack confirms an entry for it: such an entry would
                # take the tuple our own later outbound mapping needs, and masquerade would pick another port.
                " chain prerouting { type filter hook prerouting priority -150; policy accept;\n"
                f'  iifname "{ib}" ct state new drop\n'
                " }\n"
                " chain forward { type filter hook forward priority filter; policy drop;\n"
                f'  iifname "{la}" accept\n'
                "  ct state established,related accept\n"
                " }\n}\n"
            )
            path = self.workdir / f"{router}.nft"
            path.write_text(rules)
            self.exec(router, "nft", "-f", str(path))
        self.peers[name], self.routers[name] = peer, router
        self.wan[name], self.lan[name] = wan_ip, lan_ip
        return peer

    def flush_nat(self, name: str) -> None:
        """Forget the router's mappings (a NAT rebinding): conntrack entries flushed via nft's ct table reload."""
        router = self.routers[name]
        with contextlib.suppress(RuntimeError):
            self.exec(router, "conntrack", "-F")

    def start_coturn(self, secret: str) -> subprocess.Popen[str]:
        config = self.workdir / f"{self.tag}-turnserver.conf"
        config.write_text(
            "\n".join(
                [
                    f"listening-ip={self.server_ip}",
                    f"relay-ip={self.server_ip}",
                    f"listening-port={TURN_PORT}",
                    "min-port=49152",
                    "max-port=49999",
                    "use-auth-secret",
                    f"static-auth-secret={secret}",
                    "realm=wgpy.test",
                    "fingerprint",
                    "no-tls",
                    "no-dtls",
                    "no-cli",
                    "no-tcp-relay",
                    "no-multicast-peers",
                    "simple-log",
                    f"log-file={self.workdir / (self.tag + '-turn.log')}",
                    f"pidfile={self.workdir / (self.tag + '-turn.pid')}",
                    "",
                ]
            )
        )
        process = self.spawn(self.inet, ["turnserver", "-c", str(config), "--no-stdout-log"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded: coturn is ready once its port is bound
            listening = self.exec(self.inet, "ss", "-Hlun", "sport", f"= :{TURN_PORT}")
            if listening.strip():
                return process
            if process.poll() is not None:
                raise RuntimeError(f"turnserver exited with {process.returncode}: {self.turn_log()}")
            time.sleep(0.1)
        raise RuntimeError(f"turnserver did not bind {self.server_ip}:{TURN_PORT}: {self.turn_log()}")

    def turn_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / (self.tag + "-turn.log")).read_text()[-4000:]
        return ""

    def spawn(self, namespace: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            env={**child_env(), **(env or {})},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(5)

    def teardown(self) -> None:
        for process in reversed(self.processes):
            self.stop(process)
        for namespace in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


@contextlib.contextmanager
def lab(tmp_path: Path) -> Iterator[Lab]:
    problem = environment_problem()
    if problem is not None:
        unavailable(problem)
    tag = f"n{os.getpid() % 10000}{os.urandom(2).hex()}"
    built = Lab(tag=tag, net=100 + int.from_bytes(os.urandom(1), "big") % 100, workdir=tmp_path)
    try:
        built.build_internet()
        yield built
    finally:
        built.teardown()


MANAGEMENT_PORT = 8443


def start_management(lab: Lab, secret: str, turn_lifetime: int = 3600) -> tuple[str, str, list[str], str]:
    """``wgpy management serve`` in the "internet" namespace with coturn as its STUN/TURN server.

    Returns the URL, the admin token, two setup keys and the management (signing) key."""
    state = lab.workdir / f"{lab.tag}-mgmt"
    token = lab.exec(lab.inet, sys.executable, "-m", "wgpy", "management", "init", "--state-dir", str(state)).strip()
    secret_file = lab.workdir / f"{lab.tag}-turn-secret"
    secret_file.write_text(secret)
    url = f"http://{lab.server_ip}:{MANAGEMENT_PORT}"
    process = lab.spawn(
        lab.inet,
        [
            sys.executable, "-m", "wgpy", "management", "serve", "--state-dir", str(state),
            "--listen", f"{lab.server_ip}:{MANAGEMENT_PORT}", "--turn", f"{lab.server_ip}:{TURN_PORT}",
            "--turn-secret-file", str(secret_file), "--turn-credential-lifetime", str(turn_lifetime),
        ],
    )  # fmt: skip
    assert process.stdout is not None
    line = process.stdout.readline()  # "listening on URL" (the server prints it once ready)
    assert "listening on" in line, f"the management server did not start: {line!r}"
    admin = lab.exec(lab.inet, sys.executable, str(Path(__file__).with_name("nat_admin.py")), url, token, "2")
    answer = json.loads(admin)
    lab.management = (url, token)
    return url, token, list(answer["keys"]), str(answer["signing_key"])


def listed_paths(lab: Lab) -> dict[str, str]:
    """The management API's peer listing (``GET /api/v1/peers``, asked from the "internet" namespace): each peer's
    name and the path word its agent last reported (``docs/management-api.md``)."""
    assert lab.management is not None, "the management server was not started"
    url, token = lab.management
    listing = json.loads(
        lab.exec(lab.inet, sys.executable, str(Path(__file__).with_name("nat_admin.py")), url, token, "peers")
    )
    return {str(peer["name"]): str(peer["path"]) for peer in listing}


class PeerProcess:
    """A ``nat_peer.py`` (or ``nat_agent.py``) child: commands in, JSON events out (read by a thread into a queue;
    waits are bounded)."""

    def __init__(
        self,
        lab: Lab,
        name: str,
        seed: int,
        stun: tuple[str, int],
        *,
        agent: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        import queue
        import threading

        self.name = name
        script = "nat_agent.py" if agent is not None else "nat_peer.py"
        argv = list(agent) if agent is not None else [str(seed), f"{stun[0]}:{stun[1]}"]
        self.process = lab.spawn(
            lab.peers[name], [sys.executable, str(Path(__file__).with_name(script)), *argv], env=env
        )
        self.events: queue.Queue[dict[str, object]] = queue.Queue()
        self.seen: list[dict[str, object]] = []
        self.stderr: list[str] = []

        def pump_out() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                with contextlib.suppress(ValueError):
                    self.events.put(json.loads(line))

        def pump_err() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.stderr.append(line)

        threading.Thread(target=pump_out, daemon=True).start()
        threading.Thread(target=pump_err, daemon=True).start()
        ready = self.wait("ready")
        self.port = int(str(ready["port"]))
        self.public_key = str(ready["public_key"])
        self.address = str(ready.get("address", ""))

    def send(self, **command: object) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def wait(self, event: str, timeout: float = 10.0, **match: object) -> dict[str, object]:
        import queue

        for seen in self.seen:
            if seen.get("event") == event and all(seen.get(k) == v for k, v in match.items()):
                self.seen.remove(seen)
                return seen
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{self.name}: no {event} {match or ''} within {timeout} s; stderr: {''.join(self.stderr)[-3000:]}"
                )
            try:
                got = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if got.get("event") == event and all(got.get(k) == v for k, v in match.items()):
                return got
            self.seen.append(got)

    def status(self) -> dict[str, object]:
        self.send(cmd="status")
        return self.wait("status")

    def local(self) -> list[dict[str, object]]:
        self.send(cmd="local")
        candidates = self.wait("local")["candidates"]
        assert isinstance(candidates, list)
        return candidates
