"""End-to-end throughput: iperf3 through wgpy and wireguard-go tunnels between two network namespaces.

Usage (root): ``sudo python benchmarks/e2e.py [--seconds 3] [--repeat 3] [--out benchmarks/results]``

Topology, built fresh for every run with names unique to the run and torn down in ``finally``::

    netns A (iperf3 client, sends)                      netns B (iperf3 server, receives)
    veth 10.250.0.1/24  <------------------------------>  veth 10.250.0.2/24
    tunnel 10.251.0.1/24 (daemon A, UDP 51820)             tunnel 10.251.0.2/24 (daemon B, UDP 51821)

The namespaces have no route anywhere else, so no packet leaves them. ``--repeat`` times, every configuration in
turn, the order rotating by one each time (so that background load drifting during the run hits all of them
alike, and none is always first), the two tunnel daemons are started in
the foreground (``wireguard-go -f IF`` / ``python -m wgpy -f IF``), configured with ``wg set`` over their UAPI
sockets (interface names are unique to the run and to each start, because /var/run/wireguard is not per namespace),
warmed up with a ping, measured with the tests below, and stopped:

- ``tcp1``: ``iperf3 -c`` TCP, one stream, ``--seconds`` long (goodput at the receiver);
- ``tcp4``: the same with ``-P 4``;
- ``udp``: ``iperf3 -u -l 1200 -b <--udp-bandwidth>``: packets/s received and the loss;
- ``udp64``: the same with 64-byte payloads (small packets);
- ``hs``: ``handshake_load.py`` in A sends real initiations from ``HANDSHAKE_PEERS`` peers that B's daemon knows,
  ``--hs-rate`` per second in all, and counts the answers: the responder's CPU time per handshake.

During each iperf3 run the CPU time (utime + stime from /proc/PID/stat, in clock ticks of
``os.sysconf('SC_CLK_TCK')``) of each tunnel daemon is sampled before and after, and reported as CPU seconds per GB
delivered (both daemons together, and each). Medians over the repetitions are printed as a table with the ratios
wgpy / wireguard-go, and written to ``<out>/e2e-<date>.json``, ``<out>/latest.json`` and, if matplotlib is installed,
a bar chart ``<out>/latest.png`` (with ``--label NAME``: ``<out>/NAME-<date>.json`` only). The report records the
machine (``machineinfo.py``) and the load average before and after every configuration's round.

Configurations (A sends, B receives): ``veth`` (no tunnel: the ceiling), ``go-go`` (Debian bookworm's
wireguard-go, ``--wireguard-go``), ``trixie-trixie`` (Debian trixie's, with TUN offloads: ``fetch_wireguard_go.py``
fetches it into ``benchmarks/.cache/`` unless ``--trixie-wireguard-go`` names one), ``wgpy-wgpy``, ``wgpy-go``
(wgpy sends, wireguard-go receives), ``go-wgpy`` (the reverse), ``wgpyw-wgpyw`` (both wgpy with ``--worker``:
a data-plane worker process each; their CPU time includes the workers') and ``wgpym-wgpym`` (both wgpy in mesh
mode: the peers come from a network map signed with a fresh management key (``wgpy mesh sign``) and the ACL filter
with connection tracking sees every packet; the map lets A reach B's iperf3 port over TCP and UDP, and ping it). Only processes this script started are
signalled, by their PID.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import fetch_wireguard_go  # sibling modules in benchmarks/
import machineinfo

REPO: Final = Path(__file__).resolve().parent.parent
UAPI_DIRECTORY: Final = Path("/var/run/wireguard")
UNDERLAY: Final = ("10.250.0.1", "10.250.0.2")  # veth addresses in A and B (/24), private test subnet
OVERLAY: Final = ("10.251.0.1", "10.251.0.2")  # tunnel addresses in A and B (/24)
LISTEN_PORTS: Final = (51820, 51821)
IPERF_PORT: Final = 5201
MTU: Final = 1420
UDP_PAYLOAD: Final = 1200
UDP_SMALL_PAYLOAD: Final = 64  # the small-packet test: 64 B of UDP payload, a 92-byte inner IPv4 packet
TCP_SEGMENT_PAYLOAD: Final = MTU - 40 - 12  # an IPv4 TCP segment's payload at the MTU, with timestamp options
TESTS: Final = ("tcp1", "tcp4", "udp", "udp64", "hs")
HANDSHAKE_PEERS: Final = 64  # initiators that the responder knows, for the ``hs`` test (handshake_load.py)
CLK_TCK: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Config:
    name: str
    label: str
    sender: str | None  # "go" (bookworm), "trixie", "wgpy", "wgpyw" (--worker), "wgpym" (mesh) or None (veth)
    receiver: str | None


CONFIGS: Final = (
    Config("veth", "plain veth (ceiling)", None, None),
    Config("go-go", "wireguard-go (bookworm) -> wireguard-go (bookworm)", "go", "go"),
    Config("trixie-trixie", "wireguard-go (trixie) -> wireguard-go (trixie)", "trixie", "trixie"),
    Config("wgpy-wgpy", "wgpy -> wgpy", "wgpy", "wgpy"),
    Config("wgpy-go", "wgpy -> wireguard-go", "wgpy", "go"),
    Config("go-wgpy", "wireguard-go -> wgpy", "go", "wgpy"),
    Config("wgpyw-wgpyw", "wgpy --worker -> wgpy --worker", "wgpyw", "wgpyw"),
    Config("wgpym-wgpym", "wgpy mesh -> wgpy mesh (signed map, ACL filter)", "wgpym", "wgpym"),
)
IMPLEMENTATION_NAMES: Final = {
    "go": "wireguard-go (bookworm)",
    "trixie": "wireguard-go (trixie)",
    "wgpy": "wgpy",
    "wgpyw": "wgpy --worker",
    "wgpym": "wgpy in mesh mode",
}
BASELINES: Final = ("go-go", "trixie-trixie")  # the ratios divide by these
GO_IMPLEMENTATIONS: Final = ("go", "trixie")


class E2EError(RuntimeError):
    pass


def run(cmd: Sequence[str], *, timeout: float = 30.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise E2EError(
            f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
        )
    return result


def in_ns(ns: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def tun_counters(daemon: Daemon) -> list[int]:
    """[tx packets, rx packets] of the daemon's interface (``ip -s -j link``): for a TUN device, what the kernel
    handed the daemon to read and what the daemon wrote; [] when they cannot be read."""
    result = run(in_ns(daemon.ns, "ip", "-s", "-j", "link", "show", "dev", daemon.ifname), check=False)
    try:
        stats = json.loads(result.stdout)[0]["stats64"]
        return [int(stats["tx"]["packets"]), int(stats["rx"]["packets"])]
    except (ValueError, LookupError, TypeError):
        return []


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of the whole process (all threads) and of its live child processes (wgpy's data-plane
    worker), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, utime 14, stime 15
    user, system = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(child) for child in f.read().split()]
    for child in children:
        with contextlib.suppress(OSError, ValueError):
            child_user, child_system = cpu_times(child)
            user, system = user + child_user, system + child_system
    return user, system


@dataclass
class Daemon:
    implementation: str
    ns: str
    ifname: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Sample:
    test: str
    seconds: float  # measured by iperf3
    wall: float  # our window, for CPU utilisation
    bytes: int  # delivered to the receiver
    bits_per_second: float
    packets_per_second: float | None = None
    lost_percent: float | None = None
    retransmits: int | None = None
    handshakes: int | None = None  # the ``hs`` test: responses received
    cpu: dict[str, float] = field(default_factory=dict)  # "sender"/"receiver" -> CPU seconds in the window
    cpu_user: dict[str, float] = field(default_factory=dict)  # the user-space part of ``cpu`` (utime)
    # "sender"/"receiver" -> [packets the daemon read from its TUN device, packets it wrote] in the window: the
    # kernel's tx and rx counters of the interface (a GSO super-packet counts once). The receiver's reads are
    # its TCP ACKs; the sender's writes are the ACKs it delivered.
    tun_packets: dict[str, list[int]] = field(default_factory=dict)

    def cpu_us_per_handshake(self) -> float | None:
        if not self.handshakes or not self.cpu:
            return None
        return self.cpu["receiver"] / self.handshakes * 1e6

    def cpu_per_gb(self, side: str | None = None) -> float | None:
        if not self.cpu or not self.bytes:
            return None
        seconds = sum(self.cpu.values()) if side is None else self.cpu[side]
        return seconds / (self.bytes / 1e9)


class Bench:
    """Owns everything the run creates: namespaces, veth, daemons, the iperf3 server, temporary files."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = f"{os.getpid() & 0xFFFF:04x}{secrets.token_hex(1)}"
        self.ns = (f"wgpye2e-{self.run_id}-a", f"wgpye2e-{self.run_id}-b")
        self.veth = (f"ve{self.run_id}a", f"ve{self.run_id}b")
        self.tmp = Path(tempfile.mkdtemp(prefix="wgpy-e2e-"))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.ifnames: list[str] = []
        self.namespaces_made: list[str] = []
        self.iperf_server: subprocess.Popen[bytes] | None = None
        self.profilers: list[subprocess.Popen[bytes]] = []
        self.tunnels_started = 0
        self.handshake_keys: Path | None = None  # the ``hs`` test's initiators, known to the current responder
        self.responder_public_key = ""
        self.source = REPO
        self.mesh_key: Path | None = None  # the management key of the mesh configuration, made on first use
        self.mesh_public: str | None = None

    # --- topology ---------------------------------------------------------------------------------------------

    def snapshot_sources(self) -> dict[str, str | bool]:
        """Copy ``wgpy/`` and ``tun/`` aside so every daemon of the run runs the same code, even if the tree changes.

        Returns what identifies that code: the commit, whether the tree differed from it, and a digest of the copy.
        """
        source = self.tmp / "src"
        digest = hashlib.sha256()
        for package in ("wgpy", "tun"):
            shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
            for path in sorted((source / package).rglob("*.py")):
                digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
        self.source = source
        status = run(["git", "-C", str(REPO), "status", "--porcelain", "--", "wgpy", "tun"], check=False)
        commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=False).stdout.strip()
        return {
            "commit": commit or "unknown",
            "tree_differs_from_commit": bool(status.stdout.strip()),
            "sources_sha256": digest.hexdigest()[:16],
        }

    def build(self) -> None:
        for ns in self.ns:
            run(["ip", "netns", "add", ns])
            self.namespaces_made.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        a, b = self.ns
        run(["ip", "link", "add", self.veth[0], "netns", a, "type", "veth", "peer", "name", self.veth[1], "netns", b])
        for ns, veth, address in zip(self.ns, self.veth, UNDERLAY, strict=True):
            run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", veth])
            run(["ip", "-n", ns, "link", "set", veth, "up"])
        self.start_iperf_server()
        self.wait_for(lambda: run(in_ns(a, "ping", "-c", "1", "-W", "1", UNDERLAY[1]), check=False).returncode == 0)

    def start_iperf_server(self) -> None:
        if self.iperf_server is not None:
            self.stop(self.iperf_server)
        with (self.tmp / "iperf3-server.log").open("ab") as log:
            self.iperf_server = self.spawn(in_ns(self.ns[1], "iperf3", "-s", "-p", str(IPERF_PORT)), log)
        self.wait_for(
            lambda: f":{IPERF_PORT}" in run(in_ns(self.ns[1], "ss", "-Hltn"), check=False).stdout,
            what="iperf3 server",
        )

    def spawn(self, cmd: list[str], log: Any, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.processes.append(process)
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        """SIGTERM, then SIGKILL, to one process this script started (never by name)."""
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if process in self.processes:
            self.processes.remove(process)

    @staticmethod
    def wait_for(condition: Any, timeout: float = 15.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.1)
        raise E2EError(f"timed out waiting for {what}")

    def teardown(self) -> None:
        for process in list(self.processes):
            with contextlib.suppress(Exception):
                self.stop(process)
        for ifname in self.ifnames:
            with contextlib.suppress(OSError):
                (UAPI_DIRECTORY / f"{ifname}.sock").unlink(missing_ok=True)
        for ns in self.namespaces_made:
            run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- tunnels --------------------------------------------------------------------------------------------

    def start_daemon(self, implementation: str, ns: str, ifname: str) -> Daemon:
        log_path = self.tmp / f"{ifname}.log"
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1", LOG_LEVEL="error")
        if implementation in GO_IMPLEMENTATIONS:
            binary = self.args.wireguard_go if implementation == "go" else str(self.args.trixie_wireguard_go)
            cmd = in_ns(ns, binary, "-f", ifname)
        else:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
            options = ["--worker"] if implementation == "wgpyw" else []
            if implementation == "wgpym":
                options = ["--mesh-key", self.mesh_public_key(), "--mesh-map", str(self.tmp / f"{ifname}.map")]
            cmd = in_ns(ns, self.args.python, "-m", "wgpy", "-f", *options, ifname)
        self.ifnames.append(ifname)
        with log_path.open("wb") as log:
            process = self.spawn(cmd, log, env)
        daemon = Daemon(implementation, ns, ifname, process, log_path)
        socket = UAPI_DIRECTORY / f"{ifname}.sock"

        def ready() -> bool:
            if process.poll() is not None:
                raise E2EError(f"{implementation} exited ({process.returncode}): {log_path.read_text()[-2000:]}")
            return socket.exists()

        self.wait_for(ready, what=f"{implementation} UAPI socket {socket}")
        if implementation not in GO_IMPLEMENTATIONS and self.args.profile is not None:
            self.profilers.append(self.start_profiler(daemon))
        if self.args.strace is not None:
            self.profilers.append(self.start_strace(daemon))
        return daemon

    def attachment_name(self, daemon: Daemon) -> str:
        role = "sender" if daemon.ns == self.ns[0] else "receiver"
        return f"{self.tunnels_started:02d}-{daemon.implementation}-{role}"

    def start_profiler(self, daemon: Daemon) -> subprocess.Popen[bytes]:
        """py-spy on one wgpy daemon; it writes collapsed stacks when the daemon exits. With ``--profile-native``
        the stacks also hold the native frames (AEAD, libc's system call wrappers, CPython's C code) and the idle
        samples (a thread waiting in ``epoll_wait``); py-spy then pauses the process for each sample."""
        out = self.args.profile / f"{self.attachment_name(daemon)}.txt"
        self.args.profile.mkdir(parents=True, exist_ok=True)
        cmd = ["py-spy", "record", "--pid", str(daemon.pid), "--rate", str(self.args.profile_rate), "--function"]
        cmd += ["--native", "--idle"] if self.args.profile_native else ["--nonblocking"]
        with (self.tmp / f"py-spy-{daemon.ifname}.log").open("wb") as log:
            return self.spawn([*cmd, "--format", "raw", "--output", str(out)], log)

    def start_strace(self, daemon: Daemon) -> subprocess.Popen[bytes]:
        """``strace -c`` on one daemon (every thread): system call counts, written when the daemon exits. strace
        slows each system call down, so use its counts (calls per packet), not its times or that run's rates."""
        out = self.args.strace / f"{self.attachment_name(daemon)}.strace"
        self.args.strace.mkdir(parents=True, exist_ok=True)
        with (self.tmp / f"strace-{daemon.ifname}.log").open("wb") as log:
            process = self.spawn(["strace", "-c", "-f", "-o", str(out), "-p", str(daemon.pid)], log)
        time.sleep(0.5)  # attached before the traffic starts
        return process

    def start_tunnel(self, config: Config) -> tuple[Daemon, Daemon]:
        assert config.sender is not None and config.receiver is not None
        self.tunnels_started += 1
        names = (f"wg{self.tunnels_started:02d}a{self.run_id}", f"wg{self.tunnels_started:02d}b{self.run_id}")
        keys = []
        for side in "ab":
            private = run(["wg", "genkey"]).stdout.strip()
            public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True, check=True)
            key_file = self.tmp / f"{names[0]}-{side}.key"
            key_file.touch(mode=0o600)
            key_file.write_text(private + "\n")
            keys.append((key_file, public.stdout.strip()))
        daemons = (
            self.start_daemon(config.sender, self.ns[0], names[0]),
            self.start_daemon(config.receiver, self.ns[1], names[1]),
        )
        mesh = config.sender == "wgpym"
        if mesh:
            self.write_mesh_map(names, [public for _, public in keys])
        for me in (0, 1):
            ns, ifname, port = self.ns[me], names[me], str(LISTEN_PORTS[me])
            if mesh:  # the map holds the peers; the private key makes the daemon apply it
                run(in_ns(ns, "wg", "set", ifname, "listen-port", port, "private-key", str(keys[me][0])))
            else:
                other = 1 - me
                peer = ["peer", keys[other][1], "endpoint", f"{UNDERLAY[other]}:{LISTEN_PORTS[other]}"]
                peer += ["allowed-ips", f"{OVERLAY[other]}/32"]
                run(in_ns(ns, "wg", "set", ifname, "listen-port", port, "private-key", str(keys[me][0]), *peer))
            run(["ip", "-n", ns, "addr", "add", f"{OVERLAY[me]}/24", "dev", ifname])
            run(["ip", "-n", ns, "link", "set", ifname, "mtu", str(MTU), "up"])
        if "hs" in self.args.tests:
            self.add_handshake_peers(names[1], keys[1][1])
        self.wait_for(
            lambda: run(in_ns(self.ns[0], "ping", "-c", "1", "-W", "1", OVERLAY[1]), check=False).returncode == 0,
            timeout=20,
            what=f"a ping through {config.name}",
        )
        return daemons

    def wgpy_cli(self, *args: str, stdin: str | None = None) -> str:
        """``python -m wgpy ARGS`` from the sources under test; its standard output."""
        env = dict(os.environ, PYTHONPATH=str(self.source))
        done = subprocess.run(
            [self.args.python, "-m", "wgpy", *args], input=stdin, capture_output=True, text=True, env=env, timeout=30
        )
        if done.returncode != 0:
            raise E2EError(f"wgpy {' '.join(args[:2])}: {done.stderr.strip()}")
        return done.stdout

    def mesh_public_key(self) -> str:
        """The management public key of this run (the private one is made on first use, in the run's folder)."""
        if self.mesh_key is None or self.mesh_public is None:
            private = self.wgpy_cli("mesh", "keygen").strip()
            self.mesh_key = self.tmp / "management.key"
            self.mesh_key.touch(mode=0o600)
            self.mesh_key.write_text(private + "\n")
            self.mesh_public = self.wgpy_cli("mesh", "pubkey", stdin=private + "\n").strip()
        return self.mesh_public

    def write_mesh_map(self, ifnames: Sequence[str], public_keys: Sequence[str]) -> None:
        """The signed map both mesh daemons watch: A (group "a") may reach B (group "b") on the iperf3 port over TCP
        and UDP, and ping it; connection tracking lets the replies back."""
        self.mesh_public_key()
        assert self.mesh_key is not None
        issued_at = int(time.time()) - 5
        peers = [
            {
                "public_key": public_keys[i],
                "allowed_ips": [f"{OVERLAY[i]}/32"],
                "endpoint": {"host": UNDERLAY[i], "port": LISTEN_PORTS[i]},
                "groups": ["ab"[i]],
                "relay": False,
            }
            for i in (0, 1)
        ]
        rules = [
            {"name": f"a-b-{protocol}", "src_groups": ["a"], "dst_groups": ["b"], "protocol": protocol,
             "ports": [] if protocol == "icmp" else [IPERF_PORT], "action": "accept"}
            for protocol in ("tcp", "udp", "icmp")
        ]  # fmt: skip
        body = {"version": 1, "serial": 1, "issued_at": issued_at, "expires_at": issued_at + 3600}
        body_path = self.tmp / "map-body.json"
        body_path.write_text(json.dumps({**body, "peers": peers, "acl": rules}))
        signed = self.wgpy_cli("mesh", "sign", "--key", str(self.mesh_key), str(body_path))
        for ifname in ifnames:
            (self.tmp / f"{ifname}.map").write_text(signed)

    def add_handshake_peers(self, ifname: str, public_key: str) -> None:
        """Makes the responder (B) know ``HANDSHAKE_PEERS`` more peers (no allowed IPs), whose private keys go to
        ``handshake_load.py``. Keys from ``cryptography``'s X25519, independent of wgpy."""
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

        privates, peers = [], []
        for _ in range(HANDSHAKE_PEERS):
            key = X25519PrivateKey.generate()
            raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
            privates.append(base64.b64encode(raw).decode())
            public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            peers += ["peer", base64.b64encode(public).decode()]
        self.handshake_keys = self.tmp / f"hs-{ifname}.keys"
        self.handshake_keys.touch(mode=0o600)
        self.handshake_keys.write_text("\n".join(privates) + "\n")
        self.responder_public_key = public_key
        run(in_ns(self.ns[1], "wg", "set", ifname, *peers))

    # --- measurements -----------------------------------------------------------------------------------------

    def handshakes(self, daemons: Sequence[Daemon]) -> Sample:
        """``hs``: paced initiations from ``HANDSHAKE_PEERS`` peers in A to the responder daemon in B."""
        assert self.handshake_keys is not None
        seconds = self.args.seconds
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.source), env.get("PYTHONPATH")]))
        cmd = [self.args.python, str(Path(__file__).resolve().parent / "handshake_load.py")]
        cmd += ["--target", f"{UNDERLAY[1]}:{LISTEN_PORTS[1]}", "--responder-public-key", self.responder_public_key]
        cmd += ["--keys", str(self.handshake_keys), "--rate", str(self.args.hs_rate), "--seconds", str(seconds)]
        before = [cpu_times(d.pid) for d in daemons]
        started = time.monotonic()
        result = subprocess.run(in_ns(self.ns[0], *cmd), capture_output=True, text=True, timeout=seconds + 30,
                                env=env, check=False)  # fmt: skip
        wall = time.monotonic() - started
        after = [cpu_times(d.pid) for d in daemons]
        if result.returncode != 0:
            raise E2EError(f"handshake_load.py failed: {result.stderr.strip()[-1000:]}")
        report = json.loads(result.stdout.strip().splitlines()[-1])
        sides = ("sender", "receiver")
        cpu = {side: sum(a) - sum(b) for side, a, b in zip(sides, after, before, strict=False)}
        cpu_user = {side: a[0] - b[0] for side, a, b in zip(sides, after, before, strict=False)}
        sent, answered = int(report["sent"]), int(report["responses"])
        return Sample(
            "hs",
            float(report["seconds"]),
            wall,
            0,
            0.0,
            packets_per_second=answered / float(report["seconds"]),
            lost_percent=100.0 * (sent - answered) / sent if sent else 0.0,
            cpu=cpu,
            cpu_user=cpu_user,
            handshakes=answered,
        )

    def iperf(self, test: str, target: str, daemons: Sequence[Daemon]) -> Sample:
        if test == "hs":
            return self.handshakes(daemons)
        seconds = self.args.seconds
        cmd = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J", "--connect-timeout", "5000"]
        if test == "tcp4":
            cmd += ["-P", "4"]
        elif test in ("udp", "udp64"):
            payload = UDP_PAYLOAD if test == "udp" else UDP_SMALL_PAYLOAD
            cmd += ["-u", "-l", str(payload), "-b", self.args.udp_bandwidth]
        tun_before = [tun_counters(d) for d in daemons]
        before = [cpu_times(d.pid) for d in daemons]
        started = time.monotonic()
        result = run(in_ns(self.ns[0], *cmd), timeout=seconds + 30, check=False)
        wall = time.monotonic() - started
        after = [cpu_times(d.pid) for d in daemons]
        tun_after = [tun_counters(d) for d in daemons]
        try:
            report = json.loads(result.stdout)
        except json.JSONDecodeError:
            report = {"error": result.stderr.strip() or "no JSON output"}
        if result.returncode != 0 or "error" in report:
            self.start_iperf_server()  # a failed test can leave the server busy
            raise E2EError(f"iperf3 {test} to {target}: {report.get('error')}")
        end = report["end"]
        sides = ("sender", "receiver")
        cpu = {side: sum(a) - sum(b) for side, a, b in zip(sides, after, before, strict=False)}
        cpu_user = {side: a[0] - b[0] for side, a, b in zip(sides, after, before, strict=False)}
        tun_packets = {
            side: [x - y for x, y in zip(a, b, strict=True)]
            for side, a, b in zip(sides, tun_after, tun_before, strict=False)
            if a and b
        }
        if test in ("udp", "udp64"):
            payload = UDP_PAYLOAD if test == "udp" else UDP_SMALL_PAYLOAD
            received = end.get("sum_received") or end["sum"]
            total = int(received["packets"])
            lost = int(received["lost_packets"])
            duration = float(received["seconds"]) or seconds
            delivered = max(total - lost, 0)
            return Sample(
                test,
                duration,
                wall,
                delivered * payload,
                delivered * payload * 8 / duration,
                packets_per_second=delivered / duration,
                lost_percent=100.0 * lost / total if total else 0.0,
                cpu=cpu,
                cpu_user=cpu_user,
                tun_packets=tun_packets,
            )
        received = end["sum_received"]
        return Sample(
            test,
            float(received["seconds"]),
            wall,
            int(received["bytes"]),
            float(received["bits_per_second"]),
            retransmits=int(end["sum_sent"].get("retransmits", 0)),
            cpu=cpu,
            cpu_user=cpu_user,
            tun_packets=tun_packets,
        )

    def measure(self, config: Config, repetition: int) -> dict[str, Sample]:
        """One repetition of every test through ``config``, with fresh tunnel daemons."""
        samples: dict[str, Sample] = {}
        daemons: tuple[Daemon, ...] = ()
        try:
            if config.sender is None:
                target = UNDERLAY[1]
            else:
                daemons = self.start_tunnel(config)
                target = OVERLAY[1]
            for test in self.args.tests:
                if test == "hs" and config.sender is None:
                    continue  # no tunnel, no handshakes
                sample = self.iperf(test, target, daemons)
                samples[test] = sample
                print(f"  {config.name:10} {test:5} #{repetition + 1}: {describe(sample)}", flush=True)
                time.sleep(self.args.settle)
        finally:
            for daemon in daemons:
                self.stop(daemon.process)
            for profiler in self.profilers:  # they finish writing once their daemon has exited
                try:
                    profiler.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.stop(profiler)
                if profiler in self.processes:
                    self.processes.remove(profiler)
            self.profilers.clear()
        return samples


def describe(sample: Sample) -> str:
    text = f"{sample.bits_per_second / 1e6:9.1f} Mbit/s"
    if sample.packets_per_second is not None:
        text += f" {sample.packets_per_second:10,.0f} pkt/s rx, loss {sample.lost_percent:5.1f}%"
    if sample.retransmits is not None:
        text += f" retr {sample.retransmits}"
    if sample.test == "hs":
        return (f"{sample.packets_per_second or 0:9.1f} handshakes/s ({sample.handshakes} answered, "
                f"{sample.lost_percent:.1f}% unanswered), responder CPU {sample.cpu.get('receiver', 0):.2f} s = "
                f"{sample.cpu_us_per_handshake() or 0:.0f} us per handshake")  # fmt: skip
    per_gb = sample.cpu_per_gb()
    if per_gb is not None:
        text += f"  CPU {sample.cpu.get('sender', 0):.2f}+{sample.cpu.get('receiver', 0):.2f}s = {per_gb:.2f} s/GB"
    acks = sample.tun_packets.get("receiver")
    if sample.test.startswith("tcp") and acks and sample.bytes:
        segments = sample.bytes / TCP_SEGMENT_PAYLOAD
        text += f"  receiver TUN reads (ACKs) {acks[0] / segments * 44:.2f} per 44 segments"
    return text


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(samples: list[Sample]) -> dict[str, float | None]:
    return {
        "mbit_per_second": median([s.bits_per_second / 1e6 for s in samples]),
        "packets_per_second": median([s.packets_per_second for s in samples]),
        "responder_cpu_us_per_handshake": median([s.cpu_us_per_handshake() for s in samples]),
        "lost_percent": median([s.lost_percent for s in samples]),
        "retransmits": median([s.retransmits for s in samples]),
        "cpu_seconds_per_gb": median([s.cpu_per_gb() for s in samples]),
        "cpu_seconds_per_gb_sender": median([s.cpu_per_gb("sender") for s in samples]),
        "cpu_seconds_per_gb_receiver": median([s.cpu_per_gb("receiver") for s in samples]),
        "cpu_utilisation_sender": median([s.cpu["sender"] / s.wall if s.cpu else None for s in samples]),
        "cpu_utilisation_receiver": median([s.cpu["receiver"] / s.wall if s.cpu else None for s in samples]),
        "cpu_user_fraction": median(
            [sum(s.cpu_user.values()) / sum(s.cpu.values()) if s.cpu and sum(s.cpu.values()) else None for s in samples]
        ),
    }


# --- reporting ---------------------------------------------------------------------------------------------------

COLUMNS: Final = (
    ("tcp1", "mbit_per_second", "TCP x1 Mbit/s", "{:.0f}"),
    ("tcp4", "mbit_per_second", "TCP x4 Mbit/s", "{:.0f}"),
    ("udp", "packets_per_second", "UDP rx pkt/s", "{:,.0f}"),
    ("udp", "lost_percent", "UDP loss %", "{:.1f}"),
    ("udp64", "packets_per_second", "UDP64 rx pkt/s", "{:,.0f}"),
    ("hs", "responder_cpu_us_per_handshake", "hs CPU us/each", "{:.0f}"),
    ("tcp1", "cpu_seconds_per_gb", "CPU s/GB TCPx1", "{:.2f}"),
    ("tcp4", "cpu_seconds_per_gb", "CPU s/GB TCPx4", "{:.2f}"),
    ("udp", "cpu_seconds_per_gb", "CPU s/GB UDP", "{:.2f}"),
)


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """wgpy configurations divided by each wireguard-go ↔ wireguard-go baseline, column by column (medians of the
    same run only)."""
    out: dict[str, dict[str, float | None]] = {}
    for baseline in BASELINES:
        base = results.get(baseline)
        if base is None:
            continue
        for name in ("wgpy-wgpy", "wgpy-go", "go-wgpy", "wgpyw-wgpyw", "wgpym-wgpym"):
            if name not in results:
                continue
            row: dict[str, float | None] = {}
            for test, metric, title, _ in COLUMNS:
                mine = results[name]["median"].get(test, {}).get(metric)
                theirs = base["median"].get(test, {}).get(metric)
                row[title] = mine / theirs if mine is not None and theirs else None
            out[f"{name} / {baseline}"] = row
    return out


def table(results: dict[str, Any], ratio_rows: dict[str, dict[str, float | None]]) -> str:
    titles = [title for _, _, title, _ in COLUMNS]
    width = max([24, *(len(name) for name in ratio_rows)])
    lines = [f"{'configuration':<{width}} " + " ".join(f"{t:>15}" for t in titles)]
    for name, result in results.items():
        cells = []
        for test, metric, _title, fmt in COLUMNS:
            value = result["median"].get(test, {}).get(metric)
            cells.append(f"{fmt.format(value) if value is not None else '-':>15}")
        lines.append(f"{name:<{width}} " + " ".join(cells))
    for name, row in ratio_rows.items():
        cells = [f"{(f'{v:.3f}x' if v is not None else '-'):>15}" for v in row.values()]
        lines.append(f"{name:<{width}} " + " ".join(cells))
    return "\n".join(lines)


def machine(args: argparse.Namespace) -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            return "unknown"

    info = machineinfo.describe()
    info["wireguard_go_bookworm"] = f"{args.wireguard_go}: {version([args.wireguard_go, '--version'])}"
    if args.trixie_wireguard_go is not None:
        trixie = str(args.trixie_wireguard_go)
        package = f" (Debian {args.trixie_package})" if args.trixie_package else ""
        info["wireguard_go_trixie"] = f"{trixie}: {version([trixie, '--version'])}{package}"
    info["iperf3"] = version(["iperf3", "--version"])
    return info


def chart(results: dict[str, Any], path: Path, date: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)", file=sys.stderr)
        return False
    panels = [
        ("tcp1", "mbit_per_second", "TCP, 1 stream (Mbit/s)"),
        ("tcp4", "mbit_per_second", "TCP, 4 streams (Mbit/s)"),
        ("udp", "packets_per_second", f"UDP {UDP_PAYLOAD} B, received pkt/s"),
        ("tcp1", "cpu_seconds_per_gb", "CPU s per GB, TCP x1"),
    ]
    # The plain veth is 20-100x faster than any tunnel: it is given as a number in the title, not as a bar, so
    # that the tunnels stay readable on a linear axis.
    tunnels = [n for n in results if n != "veth"]
    colors = {
        "go-go": "#1f77b4",
        "trixie-trixie": "#2ca02c",
        "wgpy-wgpy": "#d62728",
        "wgpy-go": "#ff7f0e",
        "go-wgpy": "#9467bd",
        "wgpyw-wgpyw": "#8c564b",
        "wgpym-wgpym": "#e377c2",
    }
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4))
    for ax, (test, metric, title) in zip(axes, panels, strict=True):
        medians = {n: results[n]["median"].get(test, {}) for n in tunnels}
        shown = [n for n in tunnels if medians[n].get(metric) is not None]
        if metric == "cpu_seconds_per_gb":
            sender = [medians[n]["cpu_seconds_per_gb_sender"] or 0.0 for n in shown]
            receiver = [medians[n]["cpu_seconds_per_gb_receiver"] or 0.0 for n in shown]
            ax.bar(shown, sender, color=[colors.get(n, "#333") for n in shown], label="sender daemon")
            ax.bar(shown, receiver, bottom=sender, color=[colors.get(n, "#333") for n in shown], alpha=0.5,
                   label="receiver daemon", hatch="//")  # fmt: skip
            ax.legend(fontsize=7)
            values = [medians[n][metric] for n in shown]  # median of the totals, as in the table
        else:
            values = [medians[n][metric] for n in shown]
            ax.bar(shown, values, color=[colors.get(n, "#333") for n in shown])
        for x, value in enumerate(values):
            ax.annotate(f"{value:,.0f}" if value >= 100 else f"{value:.1f}", (x, value), ha="center", va="bottom",
                        fontsize=8)  # fmt: skip
        ceiling = results.get("veth", {}).get("median", {}).get(test, {}).get(metric)
        if ceiling is not None and metric != "cpu_seconds_per_gb":
            title += f"\nplain veth: {ceiling:,.0f}"
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.suptitle(f"wgpy vs wireguard-go through iperf3, medians ({date})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="iperf3 through wgpy and wireguard-go in two network namespaces")
    parser.add_argument("--seconds", type=int, default=3, help="length of each iperf3 run (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per test; medians are reported (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="output folder")
    parser.add_argument(
        "--configs", default=",".join(c.name for c in CONFIGS), help="comma-separated subset of: %(default)s"
    )
    parser.add_argument("--tests", default=",".join(TESTS), help="comma-separated subset of: %(default)s")
    parser.add_argument("--udp-bandwidth", default="10G", help="iperf3 -b for the UDP test (default 10G)")
    parser.add_argument(
        "--hs-rate", type=float, default=100.0, help="initiations per second in the hs test (default 100)"
    )
    parser.add_argument("--settle", type=float, default=1.0, help="pause between iperf3 runs, seconds (default 1)")
    parser.add_argument(
        "--wireguard-go", default="/usr/bin/wireguard-go", help="bookworm's wireguard-go binary (config go-go)"
    )
    parser.add_argument(
        "--trixie-wireguard-go",
        type=Path,
        help="trixie's wireguard-go binary (config trixie-trixie; default: fetched by fetch_wireguard_go.py into "
        "benchmarks/.cache/)",
    )
    parser.add_argument("--python", default=sys.executable, help="Python that runs wgpy (default: this one)")
    parser.add_argument(
        "--profile", type=Path, help="also run py-spy on each wgpy daemon and write collapsed stacks to this folder"
    )
    parser.add_argument(
        "--profile-native", action="store_true", help="with --profile: native frames and idle samples as well"
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument(
        "--strace", type=Path, help="also run strace -c on every daemon (wireguard-go too), summaries to this folder"
    )
    parser.add_argument(
        "--label",
        default="e2e",
        help="report file name prefix (default e2e); any other label leaves latest.json and latest.png alone",
    )
    parser.add_argument("--replot", type=Path, help="only redraw the chart of this JSON report next to it")
    parser.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="run wgpy from the work tree instead of a copy taken at the start (edits during the run then count)",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        report = json.loads(args.replot.read_text())
        return 0 if chart(report["results"], args.replot.with_suffix(".png"), report["date"][:10]) else 1
    args.tests = [t for t in args.tests.split(",") if t]
    wanted = args.configs.split(",")
    configs = [c for c in CONFIGS if c.name in wanted]
    if unknown := set(wanted) - {c.name for c in CONFIGS} | set(args.tests) - set(TESTS):
        parser.error(f"unknown configuration or test: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        print("e2e.py needs root (network namespaces, TUN devices): run it with sudo", file=sys.stderr)
        return 2
    args.trixie_package = None
    if any("trixie" in (c.sender, c.receiver) for c in configs):
        try:
            if args.trixie_wireguard_go is None:
                args.trixie_wireguard_go = fetch_wireguard_go.fetch()
                args.trixie_package = (args.trixie_wireguard_go.parent / "SOURCE").read_text().split()[0]
            print(f"trixie's wireguard-go: {args.trixie_wireguard_go} "
                  f"({fetch_wireguard_go.version_of(args.trixie_wireguard_go)})")  # fmt: skip
        except (fetch_wireguard_go.FetchError, OSError, subprocess.SubprocessError) as exc:
            print(f"trixie's wireguard-go is not available: {exc}", file=sys.stderr)
            return 2
    missing = [tool for tool in ("ip", "wg", "iperf3", "ss", "ping", args.wireguard_go) if shutil.which(tool) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (apt-get install wireguard-go wireguard-tools iperf3 "
              "iproute2 iputils-ping)", file=sys.stderr)  # fmt: skip
        return 2

    # A SIGTERM (or Ctrl-C) still runs the teardown in ``finally``.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))
    started = dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    if load_before[0] > 0.5:
        print(f"warning: load average {load_before[0]:.2f}: other work on this machine will skew the numbers")
    bench = Bench(args)
    results: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []
    print(f"run {bench.run_id}: namespaces {bench.ns[0]}, {bench.ns[1]}; {args.repeat} x {args.seconds} s per test")
    wgpy_source: dict[str, Any] = {"commit": "unknown", "snapshot": False}
    try:
        if args.snapshot:
            wgpy_source = {**bench.snapshot_sources(), "snapshot": True}
            print(f"wgpy sources: commit {wgpy_source['commit']}, tree differs: "
                  f"{wgpy_source['tree_differs_from_commit']}, copy {wgpy_source['sources_sha256']}")  # fmt: skip
        bench.build()
        # Repetitions outermost: every configuration is measured once before any is measured again, so that a
        # change in background load while the run goes on hits all of them alike.
        # The order also rotates from one repetition to the next, so no configuration always runs first or last.
        collected: dict[str, dict[str, list[Sample]]] = {c.name: {t: [] for t in args.tests} for c in configs}
        for repetition in range(args.repeat):
            print(f"repetition {repetition + 1} of {args.repeat}", flush=True)
            shift = repetition % len(configs)
            for config in configs[shift:] + configs[:shift]:
                load_before_round = machineinfo.load_average()
                round_started = time.monotonic()
                for test, sample in bench.measure(config, repetition).items():
                    collected[config.name][test].append(sample)
                rounds.append({
                    "repetition": repetition + 1,
                    "config": config.name,
                    "seconds": round(time.monotonic() - round_started, 1),
                    "load_average_before": load_before_round,
                    "load_average_after": machineinfo.load_average(),
                })  # fmt: skip
                print(f"  {config.name:10} load average before {load_before_round[0]:.2f}, after "
                      f"{rounds[-1]['load_average_after'][0]:.2f}", flush=True)  # fmt: skip
        for config in configs:
            samples = collected[config.name]
            results[config.name] = {
                "label": config.label,
                "sender": IMPLEMENTATION_NAMES.get(config.sender or "", None),
                "receiver": IMPLEMENTATION_NAMES.get(config.receiver or "", None),
                "median": {test: summarize(s) for test, s in samples.items()},
                "samples": {test: [vars(x) for x in s] for test, s in samples.items()},
            }
    except (E2EError, subprocess.SubprocessError, OSError) as exc:
        print(f"e2e failed: {exc}", file=sys.stderr)
        return 1
    finally:
        bench.teardown()

    ratio_rows = ratios(results)
    print()
    print(f"machine: {machineinfo.one_line()}")
    print(table(results, ratio_rows))
    report = {
        "date": started.isoformat(timespec="seconds"),
        "machine": machine(args),
        "wgpy_source": wgpy_source,
        "parameters": {
            "seconds": args.seconds,
            "repeat": args.repeat,
            "udp_payload": UDP_PAYLOAD,
            "udp_small_payload": UDP_SMALL_PAYLOAD,
            "udp_bandwidth": args.udp_bandwidth,
            "mtu": MTU,
            "tests": args.tests,
            "profiled_with_py_spy": args.profile is not None,
            "py_spy_native": args.profile_native,
            "straced": args.strace is not None,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
        "rounds": rounds,
        "results": results,
        "ratios": ratio_rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(report, indent=2) + "\n"
    (args.out / f"{args.label}-{stamp}.json").write_text(text)
    print(f"\nwrote {args.out / f'{args.label}-{stamp}.json'}")
    if args.label == "e2e":
        (args.out / "latest.json").write_text(text)
        print("wrote latest.json")
        if chart(results, args.out / "latest.png", report["date"][:10]):
            print(f"wrote {args.out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
