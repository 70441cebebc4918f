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
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nat_lab import TURN_PORT, Lab, PeerProcess, lab, start_management

from wgpy.nat.credentials import turn_credentials

SECRET = b"nat-lab-secret"
ADDR = {"a": "10.77.0.1", "b": "10.77.0.2"}


@pytest.fixture
def nat_lab(tmp_path: Path) -> Iterator[Lab]:
    with lab(tmp_path) as built:
        yield built


def _pair(built: Lab, nat: str) -> tuple[PeerProcess, PeerProcess]:
    built.add_peer("a", nat=nat)
    built.add_peer("b", nat=nat)
    built.start_coturn(SECRET.decode())
    stun = (built.server_ip, TURN_PORT)
    a, b = PeerProcess(built, "a", 1, stun), PeerProcess(built, "b", 2, stun)
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
        pytest.skip("tshark is not installed")
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


def _agents(built: Lab, nat: str) -> tuple[PeerProcess, PeerProcess]:
    built.add_peer("a", nat=nat)
    built.add_peer("b", nat=nat)
    built.start_coturn(SECRET.decode())
    url, _token, keys, signing = start_management(built, SECRET.decode())
    stun = (built.server_ip, TURN_PORT)
    a = PeerProcess(built, "a", 0, stun, agent=[url, keys[0], signing, "a", str(built.workdir / "agent-a")])
    b = PeerProcess(built, "b", 0, stun, agent=[url, keys[1], signing, "b", str(built.workdir / "agent-b")])
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
    raise AssertionError(f"{payload!r} never arrived; {src.status()} {dst.status()}")


def _path(agent: PeerProcess) -> str:
    peers = agent.status()["peers"]
    assert isinstance(peers, list) and len(peers) == 1, peers
    return str(peers[0]["path"])


@pytest.mark.parametrize("nat", ["eim", "symmetric"])
def test_wgpy_up_agents_exchange_candidates_through_the_management_server(nat_lab: Lab, nat: str) -> None:
    """The whole chain: enrolment, the server's TURN credentials, STUN, candidates over the stream, the path."""
    a, b = _agents(nat_lab, nat)
    _agent_ping(a, b, f"through-{nat}")
    _agent_ping(b, a, f"back-{nat}")
    time.sleep(0.6)
    expected = "path: direct" if nat == "eim" else "path: relayed"
    for agent in (a, b):
        line = _path(agent)
        assert line.startswith(expected), line
    if nat == "eim":
        assert a.status()["relay_sent"] == 0 and b.status()["relay_sent"] == 0
