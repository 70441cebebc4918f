"""wgpy against Debian's wireguard-go, each in a network namespace of its own, configured with ``wg set``.

Each test builds a fresh pair (see ``interop_lab.py``): wgpy serves ``wgp…`` in the first namespace (underlay
``10.98.n.1``, tunnel ``10.99.n.1``), wireguard-go serves ``wgg…`` in the second (``10.98.n.2`` / ``10.99.n.2``).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
from interop_lab import Daemon, DeviceDump, Lab, wg_pubkey

from wgpy.drivers.steering import HANDSHAKE_SOCKETS

pytestmark = pytest.mark.interop

IPERF_SECONDS = 3.0
UDP_BANDWIDTH = "50M"
MAX_UDP_LOSS_PERCENT = 25.0  # generous: a loaded 2-core CI machine drops at the socket buffers, not in the tunnel
SETTLE_TIMEOUT = 15.0  # > KEEPALIVE_TIMEOUT (10 s): the passive keepalive after the last data packet comes within it


def _handshake_lines(go: Daemon) -> list[str]:
    """wireguard-go's verbose log lines about handshake messages, in order."""
    messages = [line.split(" - ", 1)[1] for line in go.log().splitlines() if " - " in line]
    return [m for m in messages if m.endswith(("handshake initiation", "handshake response"))]


def _no_handshake_yet(*daemons: Daemon) -> None:
    for daemon in daemons:
        for line in daemon.show("latest-handshakes").splitlines():
            assert line.split("\t")[1] == "0", f"{daemon.kind} already has a handshake: {line}"


def test_ping_both_ways_ipv4_and_ipv6(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(wgpy, go.inner, count=5) == 5
    assert lab.ping(go, wgpy.inner, count=5) == 5
    assert lab.ping(wgpy, go.inner6, count=3) == 3
    assert lab.ping(go, wgpy.inner6, count=3) == 3
    assert wgpy.alive() and go.alive()


@pytest.mark.parametrize("scope", ["global", "link-local"])
def test_ipv6_underlay_endpoints(lab: Lab, scope: str) -> None:
    """Endpoints over IPv6: a ULA address, and a link-local one that needs its interface (``%veth1``), which
    wg(8) hands over by name."""
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    if scope == "global":
        to_go, to_wgpy = f"[{lab.underlay6_address(2)}]", f"[{lab.underlay6_address(1)}]"
    else:
        to_go, to_wgpy = f"[{lab.link_local_address(2)}%veth1]", f"[{lab.link_local_address(1)}%veth2]"
    wgpy.wg("set", wgpy.ifname, "peer", go.public_key, "endpoint", f"{to_go}:{go.listen_port}")
    go.wg("set", go.ifname, "peer", wgpy.public_key, "endpoint", f"{to_wgpy}:{wgpy.listen_port}")
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=3) == 3
    assert lab.ping(wgpy, go.inner6, count=2) == 2
    endpoint = wgpy.show("endpoints").split()[1]
    address = lab.underlay6_address(2) if scope == "global" else lab.link_local_address(2)
    assert endpoint.startswith(f"[{address}") and endpoint.endswith(f"]:{go.listen_port}"), endpoint
    assert go.show("endpoints").split()[1].startswith("[")


def test_handshake_initiated_by_wgpy(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    _no_handshake_yet(wgpy, go)
    # The first packet waits in wgpy's staged queue while wgpy initiates, and goes out after the response.
    assert lab.ping(wgpy, go.inner, count=1, wait=5) == 1
    assert lab.ping(go, wgpy.inner, count=3) == 3
    lines = _handshake_lines(go)
    assert lines[:2] == ["Received handshake initiation", "Sending handshake response"], lines
    assert "Sending handshake initiation" not in lines, lines


def test_handshake_initiated_by_wireguard_go(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    _no_handshake_yet(wgpy, go)
    assert lab.ping(go, wgpy.inner, count=1, wait=5) == 1
    assert lab.ping(wgpy, go.inner, count=3) == 3
    lines = _handshake_lines(go)
    assert lines[:2] == ["Sending handshake initiation", "Received handshake response"], lines
    assert "Received handshake initiation" not in lines, lines


def _iperf_summary(report: dict[str, Any], udp: bool) -> tuple[float, float]:
    end = report["end"]
    if udp:  # the receiver's numbers: "sum_received" from iperf3 3.13 on, "sum" (with the server's loss) before
        received = end.get("sum_received", end["sum"])
        return received["bits_per_second"] / 1e6, float(received["lost_percent"])
    return end["sum_received"]["bits_per_second"] / 1e6, float(end["sum_sent"].get("retransmits", 0))


def test_iperf3_tcp_both_ways(lab: Lab, measure: Callable[[str], None]) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    for client, server in ((wgpy, go), (go, wgpy)):
        mbps, retransmits = _iperf_summary(lab.iperf3(client, server, seconds=IPERF_SECONDS), udp=False)
        measure(f"TCP {client.kind} -> {server.kind}: {mbps:.1f} Mbit/s received, {retransmits:.0f} retransmits")
        assert mbps > 0
    assert wgpy.alive() and go.alive()


def test_iperf3_udp_both_ways(lab: Lab, measure: Callable[[str], None]) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    for client, server in ((wgpy, go), (go, wgpy)):
        report = lab.iperf3(client, server, seconds=IPERF_SECONDS, udp_bandwidth=UDP_BANDWIDTH)
        mbps, loss = _iperf_summary(report, udp=True)
        measure(f"UDP -b {UDP_BANDWIDTH} {client.kind} -> {server.kind}: {mbps:.1f} Mbit/s, {loss:.2f}% lost")
        assert mbps > 0
        assert loss < MAX_UDP_LOSS_PERCENT
    assert wgpy.alive() and go.alive()


def test_preshared_key(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go", preshared_key=True)
    psk_wgpy = wgpy.show("preshared-keys").split()[1]
    psk_go = go.show("preshared-keys").split()[1]
    assert psk_wgpy == psk_go != "(none)"
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=3) == 3
    # The daemon logs at LOG_LEVEL=verbose here: still no secret, in base64 or in the UAPI's hex.
    log = wgpy.log()
    for secret in (psk_wgpy, wgpy.private_key):
        assert secret not in log and base64.b64decode(secret).hex() not in log


def test_preshared_key_mismatch_blocks_the_handshake(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go", preshared_key=True)
    other = lab.key_file("other-psk", lab.run(None, "wg", "genpsk").stdout.strip())
    go.wg("set", go.ifname, "peer", wgpy.public_key, "preshared-key", str(other))
    assert lab.ping(wgpy, go.inner, count=2, wait=2) == 0
    assert wgpy.dump().peers[go.public_key].latest_handshake == 0
    assert wgpy.alive() and go.alive()


def test_roaming_follows_the_new_source_address(lab: Lab) -> None:
    """wireguard-go's side moves from 10.98.n.2 to 10.98.n.3: the old address is gone, so replies reach it only if
    wgpy learns the new endpoint from the first authenticated packet that comes from there."""
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=2) == 2
    old_endpoint = f"{go.underlay}:{go.listen_port}"
    assert wgpy.show("endpoints").split() == [go.public_key, old_endpoint]

    new_address = lab.underlay_address(3)
    go.ip("addr", "del", f"{go.underlay}/24", "dev", "veth2")
    go.ip("addr", "add", f"{new_address}/24", "dev", "veth2")
    # wireguard-go keeps sending from the source address it last used (its "sticky" source) and does not notice
    # that the address is gone; setting its endpoint again forgets it, as a roaming client's new socket would.
    go.wg("set", go.ifname, "peer", wgpy.public_key, "endpoint", wgpy.endpoint)
    new_endpoint = f"{new_address}:{go.listen_port}"

    took = lab.wait_for_ping(go, wgpy.inner, timeout=10)
    assert wgpy.show("endpoints").split() == [go.public_key, new_endpoint]
    assert lab.ping(wgpy, go.inner, count=3) == 3
    assert lab.ping(go, wgpy.inner, count=3) == 3
    assert "endpoint is now " + new_address in wgpy.log()
    print(f"roamed to {new_endpoint} after {took:.1f} s")


def test_peer_removed_then_added_again(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=2) == 2

    wgpy.wg("set", wgpy.ifname, "peer", go.public_key, "remove")
    assert wgpy.show("peers").strip() == ""
    assert lab.ping(wgpy, go.inner, count=2, wait=1) == 0
    assert lab.ping(go, wgpy.inner, count=2, wait=1) == 0
    assert wgpy.alive()

    wgpy.wg("set", wgpy.ifname, "peer", go.public_key, "endpoint", go.endpoint, "allowed-ips", f"{go.inner}/32")
    assert wgpy.show("peers").split() == [go.public_key]
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=3) == 3


def _mirrored(wgpy: Daemon, go: Daemon) -> tuple[DeviceDump, DeviceDump] | None:
    ours, theirs = wgpy.dump(), go.dump()
    a, b = ours.peers[go.public_key], theirs.peers[wgpy.public_key]
    return (ours, theirs) if (a.rx, a.tx) == (b.tx, b.rx) else None


def test_wg_show_parity(lab: Lab, measure: Callable[[str], None]) -> None:
    """``wg show dump`` of wgpy shows what was configured, and its byte counters mirror wireguard-go's.

    Both count whole UDP payloads (handshake messages and transport messages, keepalives included), so once no
    packet is in flight, wgpy's rx equals wireguard-go's tx and the other way round. A passive keepalive may be
    sent up to KEEPALIVE_TIMEOUT (10 s) after the last data packet, so the comparison is retried until both sides
    agree (at most SETTLE_TIMEOUT); a persistent keepalive would add traffic too, so it is set on neither side here.
    """
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=3) == 3
    assert lab.ping(wgpy, go.inner6, count=2) == 2

    ours = wgpy.dump()
    assert ours.private_key == wgpy.private_key and ours.public_key == wgpy.public_key
    assert ours.listen_port == wgpy.listen_port and ours.fwmark == "off"
    assert list(ours.peers) == [go.public_key]
    peer = ours.peers[go.public_key]
    assert peer.preshared_key == "(none)"
    assert peer.endpoint == go.endpoint
    assert peer.allowed_ips == tuple(sorted([f"{go.inner}/32", f"{go.inner6}/128"]))
    assert peer.persistent_keepalive == "off"
    assert abs(peer.latest_handshake - time.time()) < 30

    deadline = time.monotonic() + SETTLE_TIMEOUT
    while (mirrored := _mirrored(wgpy, go)) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    ours, theirs = wgpy.dump(), go.dump()
    a, b = ours.peers[go.public_key], theirs.peers[wgpy.public_key]
    measure(f"wgpy rx={a.rx} tx={a.tx}; wireguard-go rx={b.rx} tx={b.tx}")
    assert mirrored is not None, f"counters never mirrored: wgpy rx={a.rx} tx={a.tx}, wireguard-go rx={b.rx} tx={b.tx}"
    assert a.rx > 0 and a.tx > 0
    assert abs(a.latest_handshake - b.latest_handshake) <= 2
    assert b.endpoint == wgpy.endpoint


def test_showconf_round_trip_changes_nothing(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go", preshared_key=True)
    wgpy.wg("set", wgpy.ifname, "fwmark", "0x1234", "peer", go.public_key, "persistent-keepalive", "25")
    extra = wg_pubkey(lab.run(None, "wg", "genkey").stdout.strip())
    wgpy.wg("set", wgpy.ifname, "peer", extra, "allowed-ips", "10.77.0.0/16,fd77::/48", "endpoint", "[fd77::1]:9")
    lab.wait_for_ping(wgpy, go.inner)

    before = wgpy.showconf()
    assert "FwMark = 0x1234" in before and "PersistentKeepalive = 25" in before and "[fd77::1]:9" in before
    conf = lab.tmp / "showconf.conf"
    conf.write_text(before)
    conf.chmod(0o600)
    wgpy.wg("setconf", wgpy.ifname, str(conf))
    assert wgpy.showconf() == before
    lab.wait_for_ping(wgpy, go.inner)
    assert lab.ping(go, wgpy.inner, count=2) == 2


def _normalized_showconf(text: str) -> list[list[str]]:
    """``wg showconf`` as sorted sections of sorted lines, AllowedIPs split and sorted: wireguard-go lists peers in
    Go map order and allowed IPs in trie order, neither of which means anything."""
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("["):
            sections.append([line])
        elif line.strip():
            key, _, value = line.partition(" = ")
            if key == "AllowedIPs":
                value = ", ".join(sorted(value.split(", ")))
            sections[-1].append(f"{key} = {value}")
    return sorted(sorted(section) for section in sections)


def test_wg_set_sequence_gives_the_same_config_as_wireguard_go(lab: Lab) -> None:
    """The same `wg set` commands, with the same keys, on wgpy and on wireguard-go: the same `wg showconf`."""
    wgpy = lab.start("wgpy", lab.add_namespace("1"), 1)
    go = lab.start("wireguard-go", lab.add_namespace("2"), 1)
    private = lab.key_file("shared", wgpy.private_key)
    psk = lab.key_file("psk", lab.run(None, "wg", "genpsk").stdout.strip())
    peers = [wg_pubkey(lab.run(None, "wg", "genkey").stdout.strip()) for _ in range(3)]
    steps: list[list[str]] = [
        ["private-key", str(private), "listen-port", "51500", "fwmark", "0x42"],
        [
            "peer",
            peers[0],
            "preshared-key",
            str(psk),
            "endpoint",
            "192.0.2.1:1",
            "allowed-ips",
            "10.5.0.0/16,fd05::/32",
        ],
        ["peer", peers[1], "endpoint", "[fd00::5]:5", "allowed-ips", "10.6.0.1/32", "persistent-keepalive", "25"],
        ["peer", peers[0], "allowed-ips", "10.7.0.0/24,10.5.0.0/16"],
        ["peer", peers[2], "allowed-ips", "10.5.0.0/16"],  # moves the prefix away from peers[0]
        ["peer", peers[1], "remove"],
        ["peer", peers[0], "preshared-key", "/dev/null", "persistent-keepalive", "off"],
        ["fwmark", "0x0"],
    ]
    for step in steps:
        for daemon in (wgpy, go):
            daemon.wg("set", daemon.ifname, *step)
        assert _normalized_showconf(wgpy.showconf()) == _normalized_showconf(go.showconf()), step
    # A private key of /dev/null (all zeros on the wire) removes the key on both.
    for daemon in (wgpy, go):
        daemon.wg("set", daemon.ifname, "private-key", "/dev/null")
        assert daemon.show("private-key").strip() == "(none)", daemon.kind
    assert _normalized_showconf(wgpy.showconf()) == _normalized_showconf(go.showconf())


def test_fwmark_marks_the_udp_sockets(lab: Lab) -> None:
    """`wg set IF fwmark` alone (as wg-quick does after `setconf`) marks the open sockets, as wireguard-go does."""
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    for daemon, mark in ((wgpy, "0x1234"), (go, "0x99")):
        daemon.wg("set", daemon.ifname, "fwmark", mark)
        sockets = lab.run(daemon.netns, "ss", "-Huane", f"sport = :{daemon.listen_port}").stdout.splitlines()
        # wgpy serves each family with a steered group: a transport socket and HANDSHAKE_SOCKETS handshake sockets.
        expected = 2 * (1 + HANDSHAKE_SOCKETS) if daemon.kind == "wgpy" else 2
        assert len(sockets) == expected and all(f"fwmark:{mark}" in line for line in sockets), (daemon.kind, sockets)
    lab.wait_for_ping(wgpy, go.inner)
    wgpy.wg("set", wgpy.ifname, "fwmark", "off")
    unmarked = lab.run(wgpy.netns, "ss", "-Huane", f"sport = :{wgpy.listen_port}").stdout
    assert "fwmark" not in unmarked


def test_addconf_and_syncconf_keep_the_session(lab: Lab) -> None:
    """`wg addconf` adds a peer without touching the live one; `wg syncconf` then removes it again (it sends only
    the difference), and the session with wireguard-go survives both: same handshake time, traffic still flows."""
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    original = wgpy.showconf()
    handshake_before = wgpy.show("latest-handshakes").split()[1]

    extra = wg_pubkey(lab.run(None, "wg", "genkey").stdout.strip())
    added = lab.tmp / "add.conf"
    added.write_text(f"[Peer]\nPublicKey = {extra}\nAllowedIPs = 10.66.0.0/16\n")
    added.chmod(0o600)
    wgpy.wg("addconf", wgpy.ifname, str(added))
    assert extra in wgpy.show("peers").split()
    assert "10.66.0.0/16" in wgpy.show("allowed-ips")

    synced = lab.tmp / "sync.conf"
    synced.write_text(original)
    synced.chmod(0o600)
    wgpy.wg("syncconf", wgpy.ifname, str(synced))
    assert extra not in wgpy.show("peers").split()
    assert _normalized_showconf(wgpy.showconf()) == _normalized_showconf(original)
    assert wgpy.show("latest-handshakes").split()[1] == handshake_before  # no new handshake was needed
    assert lab.ping(wgpy, go.inner, count=2) == 2
