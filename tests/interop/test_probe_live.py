"""``wgpy probe`` against live endpoints: wireguard-go, a healthy wgpy daemon, and deliberately broken wgpy peers.

Each endpoint gets a pair of namespaces of its own: the probe runs in the first (underlay ``10.98.n.1``, tunnel
address ``10.99.n.1``), the endpoint serves in the second (``10.98.n.2``, ``10.99.n.2``) and is configured with
``wg set`` to have the probe's public key as a peer with allowed IP ``10.99.n.1/32`` (no endpoint, no keepalive:
it learns the probe's address from the first handshake). The probe's target is the endpoint's own tunnel address.

The probes run at the same time (each pair of namespaces is a world of its own, so the same addresses serve every
pair): wireguard-go with every check including the slow ones (about 35 s), the wgpy daemons with ``--skip-slow``.
Against wireguard-go and the healthy wgpy every check must pass; against each broken peer
(``broken_peer.py``) exactly the check its fault breaks must fail and every other must pass.
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
from broken_peer import FAULTS
from interop_lab import REPO_ROOT, Daemon, Kind, Lab, in_ci, missing_prerequisites, wg_pubkey

pytestmark = pytest.mark.interop

PROBE_TIMEOUT = 1.0  # the probe's --timeout: silence that counts as "ignored" (answers come in < 10 ms here)
RUN_LIMIT = 150.0  # seconds for one probe run, slow checks included


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

    @property
    def json_path(self) -> Path:
        return self.lab.tmp / f"probe-{self.name}.json"

    def start(self, *extra: str) -> subprocess.Popen[str]:
        """Start the probe inside the probe namespace (``ip netns exec`` execs it: the PID is the probe's)."""
        return subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *self.argv("--json", str(self.json_path), *extra)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )


def probe_setup(
    lab: Lab, name: str, kind: Kind, *, argv: list[str] | None = None, preshared_key: bool = False
) -> ProbeSetup:
    """Two new namespaces joined by a veth; the endpoint (``kind``, or ``argv`` + IFNAME) serves in the second."""
    probe_ns, endpoint_ns = lab.add_namespace(f"p{name}"), lab.add_namespace(f"e{name}")
    lab.link(probe_ns, endpoint_ns)
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

    def statuses(self) -> dict[str, str]:
        checks = self.report.get("checks", [])
        assert isinstance(checks, list)
        return {str(c["name"]): str(c["status"]) for c in checks}

    def explain(self) -> str:
        return (
            f"probe against {self.setup.name} exited {self.returncode}\n{self.stdout}\nstderr: {self.stderr}\n"
            f"--- endpoint log ({self.setup.endpoint.log_path}) ---\n{self.setup.endpoint.log()[-6000:]}"
        )


def run_all(setups: dict[str, tuple[ProbeSetup, tuple[str, ...]]]) -> dict[str, ProbeRun]:
    """Run the probes concurrently; each is stopped by its PID if it outlives ``RUN_LIMIT``."""
    processes = {name: (setup, setup.start(*extra)) for name, (setup, extra) in setups.items()}
    runs: dict[str, ProbeRun] = {}
    deadline = time.monotonic() + RUN_LIMIT
    for name, (setup, process) in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += f"\n(killed after {RUN_LIMIT} s)"
        try:
            report = json.loads(setup.json_path.read_text())
        except (OSError, ValueError):
            report = {}
        runs[name] = ProbeRun(setup, process.returncode, stdout, stderr, report)
    return runs


# -- the runs, shared by the tests below ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory: pytest.TempPathFactory) -> Generator[dict[str, ProbeRun], None, None]:
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
            "wgpy": (probe_setup(lab, "wgpy", "wgpy"), ("--skip-slow",)),
        }
        for i, fault in enumerate(FAULTS):
            setup = probe_setup(lab, f"b{i}", "wgpy", argv=[*broken, "--fault", fault])
            setups[fault] = (setup, ("--skip-slow",))
        yield run_all(setups)
    finally:
        lab.close()


def test_wireguard_go_passes_every_check(probe_runs: dict[str, ProbeRun]) -> None:
    """All checks apply to wireguard-go (it can be driven under load, it initiates after 15 s of silence)."""
    run = probe_runs["wireguard-go"]
    statuses = run.statuses()
    assert statuses, run.explain()
    assert set(statuses.values()) == {"pass"}, run.explain()
    assert run.returncode == 0, run.explain()
    assert len(run.stdout.splitlines()) == len(statuses) + 2, run.explain()  # header, one line per check, total


def test_healthy_wgpy_passes_every_check(probe_runs: dict[str, ProbeRun]) -> None:
    run = probe_runs["wgpy"]
    statuses = run.statuses()
    slow = {"passive-keepalive", "cookie-initiator"}
    assert {name for name, status in statuses.items() if status != "pass"} == slow, run.explain()
    assert all(statuses[name] == "skip" for name in slow), run.explain()
    assert run.returncode == 0, run.explain()


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_broken_peer_fails_exactly_its_check(probe_runs: dict[str, ProbeRun], fault: str) -> None:
    run = probe_runs[fault]
    expected = FAULTS[fault][1]
    statuses = run.statuses()
    failed = sorted(name for name, status in statuses.items() if status == "fail")
    assert failed == [expected], run.explain()
    others = {name: status for name, status in statuses.items() if name != expected}
    assert set(others.values()) <= {"pass", "skip"}, run.explain()
    assert {name for name, status in others.items() if status == "skip"} == {"passive-keepalive", "cookie-initiator"}
    assert run.returncode == 1, run.explain()
    line = next(line for line in run.stdout.splitlines() if line.split()[:2] == ["FAIL", expected])
    assert len(line.split(maxsplit=2)) == 3, line  # FAIL, the check, the evidence
