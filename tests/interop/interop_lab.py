"""The interop lab: network namespaces, veth links, WireGuard daemons and traffic tools, and their teardown.

Theory of operation: a test asks the ``lab`` fixture (``conftest.py``) for a topology. ``Lab.pair("wgpy",
"wireguard-go")`` builds two network namespaces of its own, ``wgpyt-<pid>-<random>-1`` and ``-2``, joined by a veth
pair that is created directly inside them (so nothing is ever created in, or moved through, the host's namespace).
The veth carries the "underlay" ``10.98.<n>.0/24`` (``.1`` in the first namespace, ``.2`` in the second); the tunnel
carries the "inner" ``10.99.<n>.0/24`` and ``fd00:99:<n>::/64``. One daemon runs in each namespace, in the
foreground: ``python -m wgpy -f IFNAME`` (``LOG_LEVEL=verbose``) or ``wireguard-go -f IFNAME``
(``WG_PROCESS_FOREGROUND=1``), each logging to a file of its own. Both are configured the way a user would, with
``wg set`` (key files written with umask 077) and ``ip``.

/var/run/wireguard is not per namespace, so every interface name is unique to the run (``wgp``/``wgg`` + 6 random
hex digits). ``Lab.close()`` stops the processes the lab started, by PID (SIGTERM, then SIGKILL), deletes the
namespaces (which takes the veth and TUN interfaces with them) and removes the UAPI sockets of its own interfaces if
a killed process left them behind.

This module is imported by ``conftest.py`` and by the test modules (pytest puts this directory on ``sys.path``, as
``tests/`` has no ``__init__.py``); it holds no fixtures.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[2]
SOCKET_DIRECTORY = Path("/var/run/wireguard")
SOCKET_WAIT = 15.0  # seconds for a daemon to create its UAPI socket (wgpy imports `cryptography` first)
STOP_WAIT = 5.0  # seconds between SIGTERM and SIGKILL in the finalizer
COMMAND_TIMEOUT = 60.0
PORTS = (51001, 51002)  # listen ports; each namespace has its own port space
IPERF_PORT = 5201
TOOLS = ("ip", "ss", "wg", "wg-quick", "wireguard-go", "iperf3", "ping", "wgpy")

Kind = Literal["wgpy", "wireguard-go"]


# -- prerequisites -------------------------------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing_prerequisites() -> list[str]:
    """What this machine lacks for the interop tests, as readable phrases (empty when nothing is missing)."""
    missing: list[str] = []
    if sys.platform != "linux":
        return [f"Linux (this is {sys.platform})"]
    if os.geteuid() != 0:
        missing.append(f"root (running as uid {os.geteuid()})")
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    missing.extend(f"{tool!r} on PATH" for tool in TOOLS if shutil.which(tool) is None)
    return missing


# -- the lab ---------------------------------------------------------------------------------------------------


def _write_secret(path: Path, text: str) -> Path:
    old = os.umask(0o077)
    try:
        path.write_text(text + "\n")
    finally:
        os.umask(old)
    return path


@dataclass
class Daemon:
    """One WireGuard implementation serving one interface inside one namespace."""

    lab: Lab
    kind: Kind
    netns: str
    ifname: str
    log_path: Path
    private_key: str
    public_key: str
    listen_port: int
    underlay: str  # the veth address of this side
    inner: str  # the tunnel address of this side
    inner6: str
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None

    @property
    def socket_path(self) -> Path:
        return SOCKET_DIRECTORY / f"{self.ifname}.sock"

    @property
    def endpoint(self) -> str:
        return f"{self.underlay}:{self.listen_port}"

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def children(self) -> list[int]:
        """PIDs of the daemon's live child processes (a wgpy daemon's data-plane worker)."""
        found: list[int] = []
        if self.pid is None:
            return found
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{self.pid}/task"):
                with contextlib.suppress(OSError), open(f"/proc/{self.pid}/task/{task}/children") as f:
                    found += [int(pid) for pid in f.read().split()]
        return found

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wg(self, *args: str, check: bool = True) -> str:
        """Run ``wg`` in this daemon's namespace (``wg show IF ...`` and the like); returns stdout."""
        return self.lab.run(self.netns, "wg", *args, check=check).stdout

    def show(self, what: str) -> str:
        return self.wg("show", self.ifname, what)

    def showconf(self) -> str:
        return self.wg("showconf", self.ifname)

    def dump(self) -> DeviceDump:
        return DeviceDump.parse(self.show("dump"))

    def uapi(self, request: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes to the UAPI socket and read until the daemon closes or a reply ends with a blank line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\n\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

    def ip(self, *args: str, check: bool = True) -> str:
        return self.lab.run(self.netns, "ip", *args, check=check).stdout


@dataclass(frozen=True)
class PeerDump:
    public_key: str
    preshared_key: str
    endpoint: str
    allowed_ips: tuple[str, ...]
    latest_handshake: int
    rx: int
    tx: int
    persistent_keepalive: str


@dataclass(frozen=True)
class DeviceDump:
    """``wg show IF dump``, parsed."""

    private_key: str
    public_key: str
    listen_port: int
    fwmark: str
    peers: dict[str, PeerDump]

    @classmethod
    def parse(cls, text: str) -> DeviceDump:
        lines = [line.split("\t") for line in text.strip().splitlines()]
        private_key, public_key, port, fwmark = lines[0]
        peers = {}
        for fields in lines[1:]:
            key, psk, endpoint, allowed, handshake, rx, tx, keepalive = fields
            allowed_ips = () if allowed == "(none)" else tuple(sorted(allowed.split(",")))
            peers[key] = PeerDump(key, psk, endpoint, allowed_ips, int(handshake), int(rx), int(tx), keepalive)
        return cls(private_key, public_key, int(port), fwmark, peers)


@dataclass
class Lab:
    """Namespaces, links and daemons made for one test, and everything needed to take them down again."""

    tmp: Path
    run_id: str = field(default_factory=lambda: f"{os.getpid()}-{secrets.token_hex(2)}")
    subnet: int = field(default_factory=lambda: secrets.randbelow(250) + 2)
    namespaces: list[str] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    extra_pids: list[int] = field(default_factory=list)
    extra_logs: dict[str, Path] = field(default_factory=dict)

    # -- commands ------------------------------------------------------------------------------------------

    def run(
        self,
        netns: str | None,
        *argv: str,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command (inside ``netns`` unless it is ``None``) and return its output as text."""
        full = ["ip", "netns", "exec", netns, *argv] if netns is not None else list(argv)
        result = subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"`{' '.join(full)}` exited with {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def spawn(self, netns: str, *argv: str, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running command inside ``netns``; the finalizer stops it. ``ip netns exec`` execs the
        command, so the Popen's PID is the command's own."""
        with log.open("ab") as out:
            process = subprocess.Popen(
                ["ip", "netns", "exec", netns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
            )
        self.processes.append(process)
        return process

    # -- topology ------------------------------------------------------------------------------------------

    def add_namespace(self, tag: str) -> str:
        name = f"wgpyt-{self.run_id}-{tag}"
        self.run(None, "ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run(name, "ip", "link", "set", "lo", "up")
        return name

    def underlay_address(self, host: int) -> str:
        return f"10.98.{self.subnet}.{host}"

    def inner_address(self, host: int) -> str:
        return f"10.99.{self.subnet}.{host}"

    def inner6_address(self, host: int) -> str:
        return f"fd00:99:{self.subnet:x}::{host:x}"

    def underlay6_address(self, host: int) -> str:
        return f"fd00:98:{self.subnet:x}::{host:x}"

    def link_local_address(self, host: int) -> str:
        return f"fe80::98:{host:x}"

    def link(self, ns_a: str, ns_b: str) -> tuple[str, str]:
        """A veth pair created inside the two namespaces (never in the host's), with host 1 and 2 of the underlay:
        ``10.98.n.H/24``, ``fd00:98:n::H/64`` and ``fe80::98:H/64`` (IPv6 without duplicate address detection, so
        the addresses are usable at once)."""
        self.run(None, "ip", "-n", ns_a, "link", "add", "veth1", "type", "veth", "peer", "name", "veth2", "netns", ns_b)
        for netns, dev, host in ((ns_a, "veth1", 1), (ns_b, "veth2", 2)):
            self.run(netns, "ip", "addr", "add", f"{self.underlay_address(host)}/24", "dev", dev)
            self.run(netns, "ip", "-6", "addr", "add", f"{self.underlay6_address(host)}/64", "dev", dev, "nodad")
            self.run(netns, "ip", "-6", "addr", "add", f"{self.link_local_address(host)}/64", "dev", dev, "nodad")
            self.run(netns, "ip", "link", "set", dev, "up")
        return "veth1", "veth2"

    # -- daemons -------------------------------------------------------------------------------------------

    def new_ifname(self, kind: Kind) -> str:
        return ("wgp" if kind == "wgpy" else "wgg") + secrets.token_hex(3)

    def new_daemon(self, kind: Kind, netns: str, host: int, ifname: str | None = None) -> Daemon:
        ifname = ifname or self.new_ifname(kind)
        private_key = self.run(None, "wg", "genkey").stdout.strip()
        public = wg_pubkey(private_key)
        daemon = Daemon(
            lab=self,
            kind=kind,
            netns=netns,
            ifname=ifname,
            log_path=self.tmp / f"{kind}-{ifname}.log",
            private_key=private_key,
            public_key=public,
            listen_port=PORTS[host - 1],
            underlay=self.underlay_address(host),
            inner=self.inner_address(host),
            inner6=self.inner6_address(host),
        )
        self.daemons.append(daemon)
        return daemon

    def start(self, kind: Kind, netns: str, host: int, *, worker: bool = False) -> Daemon:
        """Start a daemon of ``kind`` in the foreground inside ``netns`` and wait for its UAPI socket. ``worker``
        gives a wgpy daemon its data-plane worker process (``WGPY_WORKER=1``)."""
        daemon = self.new_daemon(kind, netns, host)
        env = dict(os.environ, LOG_LEVEL="verbose", WG_PROCESS_FOREGROUND="1")
        if worker:
            env["WGPY_WORKER"] = "1"
        if kind == "wgpy":
            argv = [sys.executable, "-m", "wgpy", "-f", daemon.ifname]
        else:
            argv = ["wireguard-go", "-f", daemon.ifname]
        daemon.process = self.spawn(netns, *argv, log=daemon.log_path, env=env)
        daemon.pid = daemon.process.pid
        self.wait_for_socket(daemon)
        return daemon

    def start_command(self, kind: Kind, netns: str, host: int, argv: Sequence[str]) -> Daemon:
        """Like ``start``, with a command line of the caller's: ``argv`` + the interface name (both wgpy and
        wireguard-go take it last). For a wgpy daemon with extra options (``--keylog FILE``) or a deliberately
        broken peer (``tests/interop/broken_peer.py``); ``kind`` only names the log and the interface."""
        daemon = self.new_daemon(kind, netns, host)
        env = dict(os.environ, LOG_LEVEL="verbose", WG_PROCESS_FOREGROUND="1")
        daemon.process = self.spawn(netns, *argv, daemon.ifname, log=daemon.log_path, env=env)
        daemon.pid = daemon.process.pid
        self.wait_for_socket(daemon)
        return daemon

    def wait_for_socket(self, daemon: Daemon, timeout: float = SOCKET_WAIT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if daemon.process is not None and daemon.process.poll() is not None:
                raise AssertionError(
                    f"{daemon.kind} for {daemon.ifname} exited with {daemon.process.returncode} before creating "
                    f"its UAPI socket:\n{daemon.log()}"
                )
            if daemon.socket_path.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe, contextlib.suppress(OSError):
                    probe.connect(str(daemon.socket_path))
                    return
            time.sleep(0.05)
        raise AssertionError(f"{daemon.kind} did not create {daemon.socket_path} within {timeout} s:\n{daemon.log()}")

    def key_file(self, name: str, key: str) -> Path:
        return _write_secret(self.tmp / f"{name}.key", key)

    def configure(self, a: Daemon, b: Daemon, *, preshared_key: str | None = None) -> None:
        """Configure ``a`` and ``b`` as each other's peer with ``wg set``, then address and raise both links."""
        psk_file = self.key_file(f"psk-{a.ifname}-{b.ifname}", preshared_key) if preshared_key else None
        for me, other in ((a, b), (b, a)):
            argv = ["set", me.ifname, "private-key", str(self.key_file(me.ifname, me.private_key))]
            argv += ["listen-port", str(me.listen_port), "peer", other.public_key]
            if psk_file is not None:
                argv += ["preshared-key", str(psk_file)]
            argv += ["endpoint", other.endpoint, "allowed-ips", f"{other.inner}/32,{other.inner6}/128"]
            me.wg(*argv)
            me.ip("addr", "add", f"{me.inner}/24", "dev", me.ifname)
            me.ip("-6", "addr", "add", f"{me.inner6}/64", "dev", me.ifname, "nodad")
            me.ip("link", "set", me.ifname, "up")

    def pair(
        self, kind_a: Kind, kind_b: Kind, *, preshared_key: bool = False, worker_a: bool = False, worker_b: bool = False
    ) -> tuple[Daemon, Daemon]:
        """Two namespaces joined by a veth, ``kind_a`` in the first and ``kind_b`` in the second, configured as
        each other's peer (``worker_*``: that wgpy daemon runs a data-plane worker). No packet has gone through the
        tunnel yet (no handshake)."""
        ns_a, ns_b = self.add_namespace("1"), self.add_namespace("2")
        self.link(ns_a, ns_b)
        a, b = self.start(kind_a, ns_a, 1, worker=worker_a), self.start(kind_b, ns_b, 2, worker=worker_b)
        psk = self.run(None, "wg", "genpsk").stdout.strip() if preshared_key else None
        self.configure(a, b, preshared_key=psk)
        return a, b

    # -- star topology (more than two nodes) ---------------------------------------------------------------

    def star(self, tags: Sequence[str]) -> list[str]:
        """One namespace per tag, all joined by a bridge in a ``switch`` namespace of their own (an L2 underlay).

        Node ``i`` (1-based, in ``tags`` order) reaches the bridge through ``uplink`` (its end of a veth created
        directly inside the two namespaces, like ``link``) with the address ``underlay_address(i)/24``.
        Returns the node namespaces; the switch is deleted with them by ``close``.
        """
        switch = self.add_namespace("switch")
        self.run(switch, "ip", "link", "add", "br0", "type", "bridge")
        self.run(switch, "ip", "link", "set", "br0", "up")
        nodes = []
        for host, tag in enumerate(tags, start=1):
            netns = self.add_namespace(tag)
            port = f"port{host}"
            self.run(
                None, "ip", "-n", switch, "link", "add", port, "type", "veth", "peer", "name", "uplink", "netns", netns
            )
            self.run(switch, "ip", "link", "set", port, "master", "br0")
            self.run(switch, "ip", "link", "set", port, "up")
            self.run(netns, "ip", "addr", "add", f"{self.underlay_address(host)}/24", "dev", "uplink")
            self.run(netns, "ip", "link", "set", "uplink", "up")
            nodes.append(netns)
        return nodes

    def spawn_wgpy(self, netns: str, host: int, *options: str, listen_port: int | None = None) -> Daemon:
        """Start ``python -m wgpy -f OPTIONS... IFNAME`` in ``netns`` as node ``host`` of a ``star`` (any number
        of hosts; the listen port defaults to ``51000 + host``) without waiting for its socket (start several,
        then ``wait_for_socket`` each)."""
        ifname = self.new_ifname("wgpy")
        private_key = self.run(None, "wg", "genkey").stdout.strip()
        daemon = Daemon(
            lab=self,
            kind="wgpy",
            netns=netns,
            ifname=ifname,
            log_path=self.tmp / f"wgpy-{ifname}.log",
            private_key=private_key,
            public_key=wg_pubkey(private_key),
            listen_port=listen_port if listen_port is not None else 51000 + host,
            underlay=self.underlay_address(host),
            inner=self.inner_address(host),
            inner6=self.inner6_address(host),
        )
        self.daemons.append(daemon)
        env = dict(os.environ, LOG_LEVEL="verbose", WG_PROCESS_FOREGROUND="1")
        argv = [sys.executable, "-m", "wgpy", "-f", *options, ifname]
        daemon.process = self.spawn(netns, *argv, log=daemon.log_path, env=env)
        daemon.pid = daemon.process.pid
        return daemon

    def bring_up(self, daemon: Daemon) -> None:
        """Give ``daemon``'s interface its inner address (``/24``) and raise it."""
        daemon.ip("addr", "add", f"{daemon.inner}/24", "dev", daemon.ifname)
        daemon.ip("link", "set", daemon.ifname, "up")

    # -- traffic -------------------------------------------------------------------------------------------

    def ping(self, src: Daemon, address: str, *, count: int = 3, interval: float = 0.2, wait: float = 2.0) -> int:
        """Ping ``address`` from ``src``'s namespace; returns how many replies came back."""
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", str(wait)]
        if ":" in address:
            argv.insert(1, "-6")
        result = self.run(src.netns, *argv, address, check=False, timeout=count * interval + wait + 30)
        for line in result.stdout.splitlines():
            if "received" in line:  # "3 packets transmitted, 3 received, 0% packet loss, time 402ms"
                return int(line.split(",")[1].split()[0])
        raise AssertionError(f"unexpected ping output: {result.stdout!r} {result.stderr!r}")

    def wait_for_ping(self, src: Daemon, address: str, timeout: float = 10.0) -> float:
        """Ping once a second until a reply comes; returns the seconds it took."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.ping(src, address, count=1, wait=1.0) == 1:
                return time.monotonic() - start
        raise AssertionError(f"no ping reply from {address} within {timeout} s")

    def iperf3(
        self, client: Daemon, server: Daemon, *, seconds: float = 3.0, udp_bandwidth: str | None = None
    ) -> dict[str, Any]:
        """Run iperf3 from ``client`` to ``server`` through the tunnel; returns the client's JSON report."""
        log = self.tmp / f"iperf3-server-{server.ifname}.log"
        self.extra_logs[f"iperf3 server in {server.netns}"] = log
        server_proc = self.spawn(server.netns, "iperf3", "-s", "-1", "-B", server.inner, "-p", str(IPERF_PORT), log=log)
        try:
            self._wait_listening(server.netns, server.inner, IPERF_PORT, server_proc)
            argv = ["iperf3", "-c", server.inner, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
            argv += ["--connect-timeout", "5000"]
            if udp_bandwidth is not None:
                argv += ["-u", "-b", udp_bandwidth, "-l", "1200"]
            result = self.run(client.netns, *argv, check=False, timeout=seconds + 60)
            report: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
            if result.returncode != 0 or "error" in report:
                raise AssertionError(f"iperf3 failed ({result.returncode}): {report.get('error')} {result.stderr}")
            return report
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server_proc.wait(timeout=5)
            _stop(server_proc)

    def _wait_listening(self, netns: str, address: str, port: int, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"iperf3 server exited with {process.returncode}")
            listening = self.run(netns, "ss", "-Hltn", f"src {address}:{port}", check=False).stdout
            if listening.strip():
                return
            time.sleep(0.05)
        raise AssertionError(f"iperf3 server did not listen on {address}:{port}")

    # -- teardown ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop what this lab started (by PID), delete its namespaces and stale sockets. Never raises."""
        for process in reversed(self.processes):
            _stop(process)
        for pid in self.extra_pids:
            _kill_pid(pid)
        for netns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30, check=False)
        for daemon in self.daemons:
            with contextlib.suppress(OSError):
                daemon.socket_path.unlink()

    def logs(self) -> Iterator[tuple[str, str]]:
        for daemon in self.daemons:
            yield f"{daemon.kind} {daemon.ifname} in {daemon.netns} ({daemon.log_path})", daemon.log()
        for title, path in self.extra_logs.items():
            with contextlib.suppress(OSError):
                yield f"{title} ({path})", path.read_text(errors="replace")


def wg_pubkey(private_key: str) -> str:
    return subprocess.run(
        ["wg", "pubkey"], input=private_key, capture_output=True, text=True, check=True, timeout=COMMAND_TIMEOUT
    ).stdout.strip()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(OSError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_WAIT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_WAIT)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie counts as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def _kill_pid(pid: int) -> None:
    """Stop a process that is not our child (a daemonized wgpy) by its PID: SIGTERM, then SIGKILL."""
    if not pid_alive(pid):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def pids_serving(ifname: str) -> list[int]:
    """PIDs of wgpy processes whose command line ends with exactly ``ifname`` (how a daemonized wgpy is found)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
        if argv and argv[-1] == ifname and any(Path(arg).name == "wgpy" or arg == "wgpy" for arg in argv[:-1]):
            pids.append(int(entry.name))
    return pids
