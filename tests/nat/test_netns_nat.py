"""NAT traversal in namespace topologies built by ``nat_lab`` (nft masquerade routers, coturn in the "internet").

(0) a peer behind a NAT learns its server-reflexive address from coturn on its WireGuard socket;
(1) both peers behind endpoint-independent NATs: hole punching finds the direct path, no relay is used;
(2) both behind symmetric NATs: traffic flows through coturn, and a capture on the relay's namespace shows only
    WireGuard messages, never the inner plaintext.
Candidates are exchanged here by the test, in the frames the management server forwards (``wgpy.nat.signal``);
the server's side of the exchange is tested in ``test_signal_server.py``.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nat_lab import TURN_PORT, Lab, PeerProcess, child_env, lab, listed_paths, start_management, unavailable

from wgpy.nat.credentials import turn_credentials

SECRET = b"nat-lab-secret"
ADDR = {"a": "10.77.0.1", "b": "10.77.0.2"}


@pytest.fixture
def nat_lab(tmp_path: Path) -> Iterator[Lab]:
    with lab(tmp_path) as built:
        yield built


def _pair(built: Lab, nat: str, *, worker_a: bool = False) -> tuple[PeerProcess, PeerProcess]:
    """Two ``nat_peer.py`` peers; ``worker_a``: A's tunnel has its data-plane worker (B's has none)."""
    built.add_peer("a", nat=nat)
    built.add_peer("b", nat=nat)
    built.start_coturn(SECRET.decode())
    stun = (built.server_ip, TURN_PORT)
    env_a = {"NAT_PEER_WORKER": "1"} if worker_a else None
    a, b = PeerProcess(built, "a", 1, stun, env=env_a), PeerProcess(built, "b", 2, stun)
    a.send(cmd="peer", public_key=b.public_key, allowed_ip=f"{ADDR['b']}/32")
    b.send(cmd="peer", public_key=a.public_key, allowed_ip=f"{ADDR['a']}/32")
    return a, b


def _exchange(built: Lab, a: PeerProcess, b: PeerProcess) -> None:
    """What the management server does: forward each one's candidates, with the hosts it announces for the sender."""
    announced = {
        "a": [built.wan["a"], built.lan["a"], built.server_ip],
        "b": [built.wan["b"], built.lan["b"], built.server_ip],
    }
    cand_a, cand_b = a.local(), b.local()
    a.send(cmd="candidates", public_key=b.public_key, candidates=cand_b, announced=announced["b"])
    b.send(cmd="candidates", public_key=a.public_key, candidates=cand_a, announced=announced["a"])


def _ping(src: PeerProcess, dst: PeerProcess, names: tuple[str, str], payload: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded: resend until one arrives (the first may wait for the path)
        src.send(cmd="send", src=ADDR[names[0]], dst=ADDR[names[1]], payload=payload)
        try:
            dst.wait("packet", timeout=1.0, payload=payload)
            return
        except AssertionError:
            continue
    raise AssertionError(f"{payload!r} never arrived; {src.status()} {dst.status()}")


def test_reflexive_address_from_coturn_is_the_wireguard_sockets_mapping(nat_lab: Lab) -> None:
    nat_lab.add_peer("a", nat="eim")
    nat_lab.start_coturn(SECRET.decode())
    a = PeerProcess(nat_lab, "a", 1, (nat_lab.server_ip, TURN_PORT))
    event = a.wait("reflexive")
    assert event["address"] == [nat_lab.wan["a"], a.port], "masquerade keeps the port: the mapping of this socket"
    assert a.status()["stun_drops"] == {}


def test_topology_1_endpoint_independent_nats_punch_a_direct_path(nat_lab: Lab) -> None:
    a, b = _pair(nat_lab, "eim")
    a.wait("reflexive")
    b.wait("reflexive")
    _exchange(nat_lab, a, b)
    _ping(a, b, ("a", "b"), "hello-direct")
    _ping(b, a, ("b", "a"), "hello-back")
    time.sleep(0.6)  # one path-state tick
    for me, other in ((a, b), (b, a)):
        state = me.status()["peers"][other.public_key]  # type: ignore[index]
        assert state["state"] == "direct", state
        assert state["endpoint"][0] == nat_lab.wan["b" if me is a else "a"], state
        assert me.status()["relay_sent"] == 0


def test_topology_2_symmetric_nats_relay_through_coturn_which_sees_no_plaintext(nat_lab: Lab, tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        unavailable("tshark is not installed (apt-get install tshark)")
    a, b = _pair(nat_lab, "symmetric")
    a.wait("reflexive")
    b.wait("reflexive")
    capture = tmp_path / "relay.pcap"
    tshark = nat_lab.spawn(nat_lab.inet, ["tshark", "-q", "-i", "any", "-w", str(capture), "-f", "udp"])
    time.sleep(1.5)  # tshark needs a moment before it captures
    for peer, seed in ((a, "a"), (b, "b")):
        creds = turn_credentials(SECRET, f"peer-{seed}", time.time(), 600)
        peer.send(cmd="relay", host=nat_lab.server_ip, port=TURN_PORT, username=creds.username, password=creds.password)
        peer.wait("relayed")
    _exchange(nat_lab, a, b)
    secret_text = "inner-plaintext-" + base64.b16encode(b"marker").decode()
    _ping(a, b, ("a", "b"), secret_text, timeout=30.0)
    _ping(b, a, ("b", "a"), secret_text + "-back", timeout=15.0)
    time.sleep(0.6)
    for me, other in ((a, b), (b, a)):
        state = me.status()["peers"][other.public_key]  # type: ignore[index]
        assert state["state"] == "relayed", state
        assert state["endpoint"][0] == nat_lab.server_ip, state
        assert "no handshake on a direct path" in state["reason"], state
    time.sleep(0.5)
    nat_lab.stop(tshark)
    raw = capture.read_bytes()
    assert raw, "the capture is empty"
    assert secret_text.encode() not in raw, "the relay saw inner plaintext"
    assert b"hello" not in raw
    # The leg between the two allocations' relayed ports carries the bare WireGuard datagrams: decode it as such.
    fields = nat_lab.exec(
        nat_lab.inet,
        "tshark", "-r", str(capture), "-d", "udp.port==49152-49999,wg",
        "-Y", "udp.srcport >= 49152 && udp.dstport >= 49152", "-T", "fields", "-e", "wg.type",
    )  # fmt: skip
    types = [line.strip() for line in fields.splitlines()]
    assert types, "nothing crossed the relay"
    assert set(types) <= {"1", "2", "3", "4"}, f"non-WireGuard datagrams on the relay: {sorted(set(types))}"
    assert "4" in types, "no transport message went through the relay"


def _agents(
    built: Lab, nat: str, turn_lifetime: int = 3600, *, worker: bool = False, rogue: str | None = None
) -> tuple[PeerProcess, PeerProcess]:
    """Two ``wgpy up`` agents enrolled with a real management server; ``worker``: both with the data-plane worker;
    ``rogue``: B also offers candidates at this HOST:PORT, an address the server never announced for it."""
    built.add_peer("a", nat=nat)
    built.add_peer("b", nat=nat)
    built.start_coturn(SECRET.decode())
    url, _token, keys, signing = start_management(built, SECRET.decode(), turn_lifetime)
    stun = (built.server_ip, TURN_PORT)
    env = {"NAT_AGENT_WORKER": "1"} if worker else {}
    # The state folders' names hold "wgpy": the agent's pid file is believed only for a process whose command
    # line says wgpy (keystore._is_agent_process), and wgpy status reads status.json only then.
    a = PeerProcess(built, "a", 0, stun, agent=[url, keys[0], signing, "a", str(built.workdir / "wgpy-a")], env=env)
    b_env = {**env, "NAT_AGENT_ROGUE": rogue} if rogue else env
    b = PeerProcess(built, "b", 0, stun, agent=[url, keys[1], signing, "b", str(built.workdir / "wgpy-b")], env=b_env)
    return a, b


def _agent_ping(src: PeerProcess, dst: PeerProcess, payload: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # bounded
        src.send(cmd="send", dst=dst.address, payload=payload)
        try:
            dst.wait("packet", timeout=1.0, payload=payload)
            return
        except AssertionError:
            continue
    raise AssertionError(
        f"{payload!r} never arrived; {src.status()} {dst.status()}\n--- {src.name} ---\n{''.join(src.stderr[-40:])}"
        f"\n--- {dst.name} ---\n{''.join(dst.stderr[-40:])}"
    )


def _path(agent: PeerProcess, expected: str = "", timeout: float = 3.0) -> str:
    """The agent's path line for its one peer, once it starts with ``expected`` (or after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:  # bounded: the path state is checked on a 0.25 s tick
        peers = agent.status()["peers"]
        assert isinstance(peers, list) and len(peers) == 1, peers
        line = str(peers[0]["path"])
        if line.startswith(expected) or time.monotonic() > deadline:
            return line
        time.sleep(0.1)


def _wgpy_status(built: Lab, name: str, expected: str, timeout: float = 4.0) -> str:
    """``wgpy status --state-dir`` of agent ``name`` (the command users run), once its path line says ``expected``
    (status.json is rewritten every second)."""
    deadline = time.monotonic() + timeout
    while True:  # bounded by the deadline
        result = subprocess.run(
            [sys.executable, "-m", "wgpy", "status", "--state-dir", str(built.workdir / f"wgpy-{name}")],
            capture_output=True, text=True, timeout=30, check=False, env=child_env(),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        if expected in result.stdout or time.monotonic() > deadline:
            return result.stdout
        time.sleep(0.3)


def _path_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip().startswith("path:")]
    assert len(lines) == 1, output
    return lines[0]


def test_agents_behind_symmetric_nats_relay_through_coturn_with_the_data_plane_worker(nat_lab: Lab) -> None:
    """``wgpy up --worker`` on both sides, no direct path possible: the relayed peer's datagrams go through the TURN
    allocation although a second process seals the traffic (before the fix the worker sent them from the WireGuard
    socket straight to the peer's relayed address, where coturn dropped them). ``wgpy status`` names the relayed
    pair and the direct checks that failed."""
    a, b = _agents(nat_lab, "symmetric", worker=True)
    _agent_ping(a, b, "through-the-relay-with-a-worker", timeout=30.0)
    _agent_ping(b, a, "back-through-the-relay")
    for n in range(5):  # a burst: every transport message of a relayed session goes through the allocation
        _agent_ping(a, b, f"burst-{n}", timeout=5.0)
        _agent_ping(b, a, f"burst-back-{n}", timeout=5.0)
    server = nat_lab.server_ip
    for me, other in ((a, "b"), (b, "a")):
        status = me.status()
        assert status["worker_pid"] is not None and status["worker_failures"] == 0, status
        assert isinstance(status["relay_sent"], int) and status["relay_sent"] >= 6, status  # 6 pings at least
        peer = status["peers"][0]  # type: ignore[index]
        assert peer["endpoint"][0] == server, peer  # the other side is reached at coturn's address
        line = _path_line(_wgpy_status(nat_lab, me.name, "path: relayed relay"))
        pair = re.match(rf"path: relayed relay {re.escape(server)}:(\d+) -> relay {re.escape(server)}:(\d+) ", line)
        assert pair is not None, line
        assert [server, int(pair.group(1))] == status["relayed_address"], (line, status)  # our own allocation
        # Why: each direct check of the other side failed, with the probes sent to it (its NAT's mapping for the
        # management server, and its LAN address).
        assert "(relayed: " in line and "no handshake on a direct path" in line, line
        assert re.search(rf"{re.escape(nat_lab.wan[other])}:\d+ \(\d+ probes\)", line), line
        assert re.search(rf"{re.escape(nat_lab.lan[other])}:\d+ \(\d+ probes\)", line), line
    # The agents report their paths to the management server, whose API (and dashboard) lists them as relayed.
    deadline = time.monotonic() + 10.0  # a report goes out within PATH_REPORT_INTERVAL (2 s) of a change
    listed = listed_paths(nat_lab)
    while listed != {"a": "relayed", "b": "relayed"} and time.monotonic() < deadline:  # bounded
        time.sleep(0.5)
        listed = listed_paths(nat_lab)
    assert listed == {"a": "relayed", "b": "relayed"}, listed


def _rogue_counter(built: Lab) -> tuple[str, Callable[[], int]]:
    """An address in the "internet" that no one announced (a third party), and a count of datagrams reaching it."""
    victim = f"10.{built.net}.0.99"
    built.exec(built.inet, "ip", "addr", "add", f"{victim}/32", "dev", "lo")
    rules = built.workdir / "victim.nft"
    rules.write_text(
        "table ip victim {\n chain input { type filter hook input priority filter; policy accept;\n"
        f"  ip daddr {victim} counter\n }}\n}}\n"
    )
    built.exec(built.inet, "nft", "-f", str(rules))

    def count() -> int:
        listing = built.exec(built.inet, "nft", "list", "table", "ip", "victim")
        found = re.search(r"counter packets (\d+)", listing)
        assert found is not None, listing
        return int(found.group(1))

    return victim, count


def test_agents_behind_eim_nats_go_direct_and_refuse_a_peers_rogue_candidate(nat_lab: Lab) -> None:
    """B is a rogue peer: its candidates also name a third party's address, which the management server never
    announced for B (a reflection lever: our initiations would go there). A admits only the announced candidates:
    nothing of A's reaches the address, the refusal is counted and ``wgpy status`` says so; the direct path
    between the two NATs is found as usual and the status names its pair."""
    victim, reached = _rogue_counter(nat_lab)
    a, b = _agents(nat_lab, "eim", rogue=f"{victim}:5555")
    _agent_ping(a, b, "direct")
    _agent_ping(b, a, "direct-back")
    time.sleep(1.0)  # the checks (initiations copied to every admitted candidate) have run
    line = _path_line(_wgpy_status(nat_lab, "a", "path: direct srflx"))
    assert line.startswith(f"path: direct srflx {nat_lab.wan['a']}:{a.port} -> srflx {nat_lab.wan['b']}:{b.port}"), (
        line
    )  # masquerade keeps the ports (nat_lab): the reflexive candidates are WAN:port on both sides
    assert "2 candidates refused (not announced by the server)" in line, line
    assert "relayed" not in line, line
    assert reached() == 0, "A sent traffic to an address the server never announced for B"
    # The count would have seen it: one datagram from A's namespace to the same address is counted.
    nat_lab.exec(
        nat_lab.peers["a"], sys.executable, "-c",
        f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('{victim}', 5555))",
    )  # fmt: skip
    assert reached() == 1
    assert a.status()["relay_sent"] == 0


def _set_udp_timeouts(built: Lab, router: str, seconds: int, stream_seconds: int) -> None:
    built.exec(
        router,
        "sysctl", "-qw",
        f"net.netfilter.nf_conntrack_udp_timeout={seconds}",
        f"net.netfilter.nf_conntrack_udp_timeout_stream={stream_seconds}",
    )  # fmt: skip


def test_topology_3_a_nat_rebinding_mid_session_recovers_within_10_s(nat_lab: Lab) -> None:
    a, b = _agents(nat_lab, "eim")
    _agent_ping(a, b, "before")
    _agent_ping(b, a, "before-back")
    assert _path(a, "path: direct").startswith("path: direct")
    # Rebinding: A's router forgets its mappings (UDP entries time out in 1 s of silence) and maps to new ports.
    router = nat_lab.routers["a"]
    wan_if = nat_lab.exec(router, "ip", "-o", "route", "get", nat_lab.server_ip).split(" dev ")[1].split()[0]
    _set_udp_timeouts(nat_lab, router, 1, 1)
    nat_lab.exec(router, "nft", "flush", "chain", "ip", "nat", "postrouting")
    nat_lab.exec(
        router, "nft", "add", "rule", "ip", "nat", "postrouting",
        "oifname", wan_if, "meta", "l4proto", "udp", "masquerade", "to", ":20000-29999",
    )  # fmt: skip
    nat_lab.exec(router, "nft", "add", "rule", "ip", "nat", "postrouting", "oifname", wan_if, "masquerade")
    _agent_ping(a, b, "last-before")  # the entries take the 1 s timeout with their next datagram
    time.sleep(3.0)
    _set_udp_timeouts(nat_lab, router, 30, 120)
    started = time.monotonic()
    _agent_ping(a, b, "after-rebinding", timeout=10.0)
    _agent_ping(b, a, "after-rebinding-back", timeout=10.0 - (time.monotonic() - started))
    assert time.monotonic() - started < 10.0
    peer = b.status()["peers"][0]  # type: ignore[index]
    assert 20000 <= peer["endpoint"][1] < 30000, peer  # B follows A to its new mapping


def test_topology_4a_relay_down_while_direct_works_breaks_nothing(nat_lab: Lab) -> None:
    a, b = _pair(nat_lab, "eim")
    a.wait("reflexive")
    b.wait("reflexive")
    for peer, seed in ((a, "a"), (b, "b")):
        creds = turn_credentials(SECRET, f"peer-{seed}", time.time(), 600)
        peer.send(cmd="relay", host=nat_lab.server_ip, port=TURN_PORT, username=creds.username, password=creds.password)
        peer.wait("relayed")
    _exchange(nat_lab, a, b)
    _ping(a, b, ("a", "b"), "direct-first")
    coturn = next(p for p in nat_lab.processes if "turnserver" in str(p.args))
    nat_lab.stop(coturn)
    for n in range(10):
        _ping(a, b, ("a", "b"), f"relay-down-{n}", timeout=3.0)
        _ping(b, a, ("b", "a"), f"relay-down-back-{n}", timeout=3.0)
        time.sleep(0.2)
    for me, other in ((a, b), (b, a)):
        state = me.status()["peers"][other.public_key]  # type: ignore[index]
        assert state["state"] == "direct", (state, me.stderr[-20:])
        assert me.status()["relay_sent"] == 0


def test_topology_4b_a_direct_path_appearing_while_relayed_takes_over_without_handshake_or_loss(
    nat_lab: Lab,
) -> None:
    """A runs with the data-plane worker, B without: the move back to direct works in both modes (A's relayed
    transport messages, and the copies that probe the direct path, are sealed in A's main process; once direct,
    the worker seals them)."""
    a, b = _pair(nat_lab, "eim", worker_a=True)
    block = nat_lab.workdir / "block.nft"
    block.write_text(
        "table inet block {\n chain forward { type filter hook forward priority filter; policy accept;\n"
        f"  ip saddr {nat_lab.wan['a']} ip daddr {nat_lab.wan['b']} drop\n"
        f"  ip saddr {nat_lab.wan['b']} ip daddr {nat_lab.wan['a']} drop\n }}\n}}\n"
    )
    nat_lab.exec(nat_lab.inet, "nft", "-f", str(block))  # the internet lets no direct datagram through
    a.wait("reflexive")
    b.wait("reflexive")
    for peer, seed in ((a, "a"), (b, "b")):
        creds = turn_credentials(SECRET, f"peer-{seed}", time.time(), 600)
        peer.send(cmd="relay", host=nat_lab.server_ip, port=TURN_PORT, username=creds.username, password=creds.password)
        peer.wait("relayed")
    _exchange(nat_lab, a, b)
    _ping(a, b, ("a", "b"), "relayed-first", timeout=30.0)
    _ping(b, a, ("b", "a"), "relayed-back", timeout=10.0)
    time.sleep(0.6)
    assert a.status()["peers"][b.public_key]["state"] == "relayed"  # type: ignore[index]
    handshakes = (a.status()["peers"][b.public_key]["handshakes"], b.status()["peers"][a.public_key]["handshakes"])  # type: ignore[index]
    nat_lab.exec(nat_lab.inet, "nft", "delete", "table", "inet", "block")  # a direct path appears
    sent = [f"move-{n}" for n in range(40)]
    for payload in sent:  # 8 s of traffic both ways across the move
        a.send(cmd="send", src=ADDR["a"], dst=ADDR["b"], payload=payload)
        b.send(cmd="send", src=ADDR["b"], dst=ADDR["a"], payload=payload + "-back")
        time.sleep(0.2)
    for payload in sent:  # nothing in flight was lost
        b.wait("packet", timeout=2.0, payload=payload)
        a.wait("packet", timeout=2.0, payload=payload + "-back")
    time.sleep(0.6)
    for me, other in ((a, b), (b, a)):
        state = me.status()["peers"][other.public_key]  # type: ignore[index]
        assert state["state"] == "direct", state
    after = (a.status()["peers"][b.public_key]["handshakes"], b.status()["peers"][a.public_key]["handshakes"])  # type: ignore[index]
    assert after == handshakes, "moving back to direct took no new handshake"
    status_a = a.status()
    assert status_a["worker_pid"] is not None and status_a["worker_failures"] == 0, status_a


def test_expiring_turn_credentials_are_renewed_with_a_new_allocation_and_traffic_goes_on(nat_lab: Lab) -> None:
    """Credentials live 8 s here: each agent asks again at half their life and moves to a new allocation (coturn
    refuses to refresh an allocation whose username expired); the relayed session carries on across it."""
    a, b = _agents(nat_lab, "symmetric", turn_lifetime=8)
    _agent_ping(a, b, "relayed-1", timeout=30.0)
    _agent_ping(b, a, "relayed-1-back")
    first = a.status()
    assert _path(a, "path: relayed").startswith("path: relayed")
    deadline = time.monotonic() + 13.0  # past the first credentials' expiry (8 s) and one renewal more
    n = 0
    while time.monotonic() < deadline:
        n += 1
        _agent_ping(a, b, f"across-{n}", timeout=5.0)
        _agent_ping(b, a, f"across-back-{n}", timeout=5.0)
        time.sleep(0.5)
    later = a.status()
    assert later["credentials_expire_at"] > first["credentials_expire_at"], (first, later)  # type: ignore[operator]
    assert later["relayed_address"] != first["relayed_address"], "a new allocation replaced the old one"
    assert later["credentials_expire_at"] > time.time(), "the credentials in use have not expired"  # type: ignore[operator]
    assert _path(a, "path: relayed").startswith("path: relayed")
