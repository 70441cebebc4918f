"""``wgpy probe`` against live endpoints: wireguard-go, a healthy wgpy daemon, and deliberately broken wgpy peers.

Each endpoint gets a pair of namespaces of its own: the probe runs in the first (underlay ``10.98.n.1``, tunnel
address ``10.99.n.1``), the endpoint serves in the second (``10.98.n.2``, ``10.99.n.2``) and is configured with
``wg set`` to have the probe's public key as a peer with allowed IP ``10.99.n.1/32`` (no endpoint, no keepalive:
it learns the probe's address from the first handshake). The probe's target is the endpoint's own tunnel address.

The probes run at the same time (each pair of namespaces is a world of its own, so the same addresses serve every
pair): wireguard-go with every check including the slow ones (about 35 s), the wgpy daemons with ``--skip-slow``
(except ``no-timers``, whose defect only the slow checks see). Each endpoint is probed twice in a row, its second run
starting as soon as its first ends, and the second run must give the verdicts of the first: what a probe run leaves
behind in the endpoint (sessions, a handshake limiter's state, the under-load tail of a burst) must not change them.
The second run skips the slow checks: they only wait out the endpoint's timers (30 s of the 38 s a full run takes),
and what they would show again is what the first run showed, while the fast checks after a full run are the ones
that could see its leftovers.

Against wireguard-go and the healthy wgpy every check must pass; against each broken peer (``broken_peer.py``
``FAULTS``) exactly the check its fault breaks must fail and every other must pass; against each misbehaving peer of
issue #17 (``BEHAVIOURS``) the verdicts other than PASS are exactly those listed, and every INCONCLUSIVE one gives
its reason. Two more wgpy endpoints ignore ICMP echo (``net.ipv4.icmp_echo_ignore_all=1`` in their namespace): the
probe reaches one through a UDP echo service (``--echo udp:7``) and the other with TCP SYNs to a closed port
(``--echo tcp:9``, answered by RST), and every fast check passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import pytest
from broken_peer import BEHAVIOURS, FAULTS
from interop_lab import REPO_ROOT, Daemon, Kind, Lab, in_ci, missing_prerequisites, wg_pubkey

pytestmark = pytest.mark.interop

PROBE_TIMEOUT = 1.0  # the probe's --timeout: silence that counts as "ignored" (answers come in < 10 ms here)
RUN_LIMIT = 240.0  # seconds for the two probe runs of one endpoint, slow checks included
RUNS = 2  # each endpoint is probed this often in a row; every run must give the verdicts of the first
UDP_ECHO_PORT = 7  # RFC 862
CLOSED_TCP_PORT = 9  # discard: nothing listens in the endpoint's namespace, so a SYN gets a RST
# wgpy goes under load above 128 handshake messages per second: a smaller burst than the default does, and keeps the
# concurrent probes from starving each other's endpoints of CPU (wireguard-go gets the default burst).
WGPY_BURST = ("--burst", "1000")
FAST = {"passive-keepalive": "skip", "cookie-initiator": "skip"}  # what --skip-slow gives the slow checks
# A UDP echo service (RFC 862) on every address of the endpoint's namespace, for --echo udp:7.
UDP_ECHO_SERVER = (
    "import socket\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"s.bind(('0.0.0.0', {UDP_ECHO_PORT}))\n"
    "while True:\n"
    "    data, source = s.recvfrom(65535)\n"
    "    s.sendto(data, source)\n"
)


@dataclass
class ProbeSetup:
    """An endpoint in its own namespace, configured for the probe, and how to run the probe against it."""

    lab: Lab
    name: str
    netns: str  # where the probe runs
    endpoint: Daemon
    key_file: Path
    public_key: str
    psk_file: Path | None
    tunnel_address: str

    def argv(self, *extra: str) -> list[str]:
        argv = [sys.executable, "-m", "wgpy", "probe", "--endpoint", self.endpoint.endpoint]
        argv += ["--peer-public-key", self.endpoint.public_key, "--private-key-file", str(self.key_file)]
        if self.psk_file is not None:
            argv += ["--preshared-key-file", str(self.psk_file)]
        argv += ["--tunnel-address", self.tunnel_address, "--target", self.endpoint.inner]
        return [*argv, "--timeout", str(PROBE_TIMEOUT), *extra]

    def json_path(self, run: int) -> Path:
        return self.lab.tmp / f"probe-{self.name}-{run}.json"

    def start(self, run: int, *extra: str) -> subprocess.Popen[str]:
        """Start the probe inside the probe namespace (``ip netns exec`` execs it: the PID is the probe's)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *self.argv("--json", str(self.json_path(run)), *extra)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )


def probe_setup(
    lab: Lab,
    name: str,
    kind: Kind,
    *,
    argv: list[str] | None = None,
    preshared_key: bool = False,
    icmp_ignored: bool = False,
) -> ProbeSetup:
    """Two new namespaces joined by a veth; the endpoint (``kind``, or ``argv`` + IFNAME) serves in the second.
    With ``icmp_ignored`` its namespace answers no ping and runs a UDP echo service instead."""
    probe_ns, endpoint_ns = lab.add_namespace(f"p{name}"), lab.add_namespace(f"e{name}")
    lab.link(probe_ns, endpoint_ns)
    if icmp_ignored:
        lab.run(endpoint_ns, "sysctl", "-q", "-w", "net.ipv4.icmp_echo_ignore_all=1")
        lab.spawn(endpoint_ns, sys.executable, "-c", UDP_ECHO_SERVER, log=lab.tmp / f"udp-echo-{name}.log")
    endpoint = lab.start(kind, endpoint_ns, 2) if argv is None else lab.start_command(kind, endpoint_ns, 2, argv)
    private_key = lab.run(None, "wg", "genkey").stdout.strip()
    key_file = lab.key_file(f"probe-{name}", private_key)
    public_key = wg_pubkey(private_key)
    psk_file = (
        lab.key_file(f"probe-psk-{name}", lab.run(None, "wg", "genpsk").stdout.strip()) if preshared_key else None
    )
    tunnel_address = lab.inner_address(1)
    argv_set = ["set", endpoint.ifname, "private-key", str(lab.key_file(endpoint.ifname, endpoint.private_key))]
    argv_set += ["listen-port", str(endpoint.listen_port), "peer", public_key]
    if psk_file is not None:
        argv_set += ["preshared-key", str(psk_file)]
    endpoint.wg(*argv_set, "allowed-ips", f"{tunnel_address}/32")
    endpoint.ip("addr", "add", f"{endpoint.inner}/24", "dev", endpoint.ifname)
    endpoint.ip("link", "set", endpoint.ifname, "up")
    return ProbeSetup(lab, name, probe_ns, endpoint, key_file, public_key, psk_file, tunnel_address)


@dataclass
class ProbeRun:
    setup: ProbeSetup
    returncode: int
    stdout: str
    stderr: str
    report: dict[str, object]
    skip_slow: bool  # the run was given --skip-slow

    def checks(self) -> list[dict[str, object]]:
        checks = self.report.get("checks", [])
        assert isinstance(checks, list)
        return checks

    def statuses(self) -> dict[str, str]:
        return {str(c["name"]): str(c["status"]) for c in self.checks()}

    def explain(self) -> str:
        return (
            f"probe against {self.setup.name} exited {self.returncode}\n{self.stdout}\nstderr: {self.stderr}\n"
            f"--- endpoint log ({self.setup.endpoint.log_path}) ---\n{self.setup.endpoint.log()[-6000:]}"
        )


def run_all(setups: dict[str, tuple[ProbeSetup, tuple[str, ...]]]) -> dict[str, list[ProbeRun]]:
    """Probe every endpoint ``RUNS`` times in a row, the endpoints concurrently: each endpoint's next run starts when
    its previous one ends, and runs after the first skip the slow checks. A probe that outlives the ``RUN_LIMIT`` is
    stopped by its PID."""
    runs: dict[str, list[ProbeRun]] = {name: [] for name in setups}
    deadline = time.monotonic() + RUN_LIMIT

    def extra_for(name: str, run: int) -> tuple[str, ...]:
        extra = setups[name][1]
        return extra if run == 1 or "--skip-slow" in extra else ("--skip-slow", *extra)

    def finish(name: str, process: subprocess.Popen[str], run: int, *, killed: bool) -> None:
        setup = setups[name][0]
        stdout, stderr = process.communicate()
        if killed:
            stderr += f"\n(killed after {RUN_LIMIT} s)"
        (setup.lab.tmp / f"probe-{setup.name}-{run}.txt").write_text(stdout + stderr)  # for the docs, and a look
        try:
            report = json.loads(setup.json_path(run).read_text())
        except (OSError, ValueError):
            report = {}
        skip_slow = "--skip-slow" in extra_for(name, run)
        runs[name].append(ProbeRun(setup, process.returncode, stdout, stderr, report, skip_slow))

    running = {name: (setup.start(1, *extra_for(name, 1)), 1) for name, (setup, _) in setups.items()}
    while running:
        for name, (process, run) in list(running.items()):
            if process.poll() is None:
                if time.monotonic() < deadline:
                    continue
                process.kill()
                finish(name, process, run, killed=True)
                del running[name]
                continue
            finish(name, process, run, killed=False)
            if run < RUNS and time.monotonic() < deadline:
                running[name] = (setups[name][0].start(run + 1, *extra_for(name, run + 1)), run + 1)
            else:
                del running[name]
        time.sleep(0.05)
    return runs


# -- the runs, shared by the tests below ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory: pytest.TempPathFactory) -> Generator[dict[str, list[ProbeRun]], None, None]:
    """Every probe run of this module, done once and concurrently (module-scoped, so it checks the prerequisites
    itself: the conftest's autouse check runs per test, after module fixtures are built)."""
    missing = missing_prerequisites()
    if missing:
        message = "interop tests need " + ", ".join(missing)
        if in_ci():
            pytest.fail(f"{message}; CI=true, so a missing prerequisite is a failure, not a skip", pytrace=False)
        pytest.skip(message)
    lab = Lab(tmp_path_factory.mktemp("probe"))
    try:
        broken = [sys.executable, str(Path(__file__).with_name("broken_peer.py"))]
        setups: dict[str, tuple[ProbeSetup, tuple[str, ...]]] = {
            "wireguard-go": (probe_setup(lab, "go", "wireguard-go", preshared_key=True), ()),
            "wgpy": (probe_setup(lab, "wgpy", "wgpy"), ("--skip-slow", *WGPY_BURST)),
        }
        for i, fault in enumerate(FAULTS):
            setup = probe_setup(lab, f"b{i}", "wgpy", argv=[*broken, "--fault", fault])
            setups[fault] = (setup, ("--skip-slow", *WGPY_BURST))
        for i, (behaviour, (_, _, slow)) in enumerate(BEHAVIOURS.items()):
            setup = probe_setup(lab, f"m{i}", "wgpy", argv=[*broken, "--fault", behaviour])
            # no-cookie-defence gets the default burst: the load it causes is the evidence, so more of it is clearer.
            burst = () if behaviour == "no-cookie-defence" else WGPY_BURST
            setups[behaviour] = (setup, (*burst,) if slow else ("--skip-slow", *burst))
        setups["udp-echo"] = (
            probe_setup(lab, "udp", "wgpy", icmp_ignored=True),
            ("--skip-slow", *WGPY_BURST, "--echo", f"udp:{UDP_ECHO_PORT}"),
        )
        setups["tcp-echo"] = (
            probe_setup(lab, "tcp", "wgpy", icmp_ignored=True),
            ("--skip-slow", *WGPY_BURST, "--echo", f"tcp:{CLOSED_TCP_PORT}"),
        )
        yield run_all(setups)
    finally:
        lab.close()


def assert_verdicts(runs: list[ProbeRun], expected: dict[str, str]) -> None:
    """Every run gives ``expected`` for the checks it names (the slow ones ``skip`` in a run without them) and PASS
    for every other; the exit status follows (1 only with a FAIL); every verdict that is not PASS carries its
    evidence and details; the runs agree on the checks they all ran."""
    assert len(runs) == RUNS
    for run in runs:
        statuses = run.statuses()
        want = {**expected, **FAST} if run.skip_slow else expected
        assert statuses, run.explain()
        assert {name: status for name, status in statuses.items() if status != "pass"} == want, run.explain()
        assert run.returncode == (1 if "fail" in want.values() else 0), run.explain()
        assert len(run.stdout.splitlines()) == len(statuses) + 2, run.explain()  # header, one line per check, total
        for check in run.checks():
            if check["status"] != "pass":
                assert check["details"], (check, run.explain())
            line = next(line for line in run.stdout.splitlines() if line.split()[1:2] == [check["name"]])
            assert line.split()[0] == str(check["status"]).upper(), line
            assert len(line.split(maxsplit=2)) == 3, line  # the verdict, the check, the evidence
    assert all(run.skip_slow for run in runs[1:])

    def fast(run: ProbeRun) -> dict[str, str]:
        return {name: status for name, status in run.statuses().items() if name not in FAST}

    for run in runs[1:]:
        assert fast(run) == fast(runs[0]), run.explain()


def test_wireguard_go_passes_every_check(probe_runs: dict[str, list[ProbeRun]]) -> None:
    """All checks apply to wireguard-go (it can be driven under load, it initiates after 15 s of silence)."""
    assert_verdicts(probe_runs["wireguard-go"], {})


def test_healthy_wgpy_passes_every_check(probe_runs: dict[str, list[ProbeRun]]) -> None:
    assert_verdicts(probe_runs["wgpy"], FAST)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_broken_peer_fails_exactly_its_check(probe_runs: dict[str, list[ProbeRun]], fault: str) -> None:
    assert_verdicts(probe_runs[fault], {**FAST, FAULTS[fault][1]: "fail"})


@pytest.mark.parametrize("behaviour", sorted(BEHAVIOURS))
def test_misbehaving_peer_gets_its_verdicts(probe_runs: dict[str, list[ProbeRun]], behaviour: str) -> None:
    _, expected, slow = BEHAVIOURS[behaviour]
    assert_verdicts(probe_runs[behaviour], {**({} if slow else FAST), **expected})


@pytest.mark.parametrize("echo", ["udp-echo", "tcp-echo"])
def test_an_endpoint_that_ignores_ping_is_reached_another_way(probe_runs: dict[str, list[ProbeRun]], echo: str) -> None:
    runs = probe_runs[echo]
    assert_verdicts(runs, FAST)
    assert ("UDP echo" if echo == "udp-echo" else "TCP answer") in runs[0].stdout.splitlines()[1]
