"""The mesh end to end in memory: three Devices, one signed map, the seed ACL enforced through real sessions.

Three devices on a ``MemoryNetwork`` play the seed example: a developer's laptop (group ``developers``), a
production server (``production``) and a third machine (``other``). Each has its own ``MeshController`` applying
the same signed map, whose ACL is the seed's: developers may reach production on tcp/22 and tcp/443, everything
else is denied. Packets are real IPv4 TCP/UDP/ICMP packets built with ``struct``.

A *compromised* peer is modelled by removing its own packet filter (``device.packet_filter = None``): it holds a
valid key and sends whatever it likes, so what stops it must be the other devices' inbound filters and cryptokey
routing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.helpers import datagrams_from, ipv4_packet, make_device, pub

from wgpy.device import Device
from wgpy.errors import DropReason
from wgpy.events import Endpoint
from wgpy.keypair import Keypair
from wgpy.keys import PublicKey
from wgpy.mesh import MapChanges, MapRejected, MeshController, RejectReason, sign_network_map
from wgpy.mesh.acl import DEFAULT_DENY, MAP_EXPIRED
from wgpy.messages import MessageType
from wgpy.testing import MemoryNetwork, Node

MANAGEMENT = Ed25519PrivateKey.from_private_bytes(bytes(range(40, 72)))
MANAGEMENT_PUBLIC = MANAGEMENT.public_key()

NAMES = ("dev", "prod", "other")
ADDRESSES = {"dev": "10.7.0.1", "prod": "10.7.1.1", "other": "10.7.2.1"}
GROUPS = {"dev": "developers", "prod": "production", "other": "other"}
ENDPOINTS: dict[str, Endpoint] = {
    "dev": ("192.0.2.11", 51820),
    "prod": ("192.0.2.12", 51820),
    "other": ("192.0.2.13", 51820),
}
SEEDS = {"dev": 31, "prod": 32, "other": 33}
SEED_ACL = [
    {"name": "dev-ssh", "src_groups": ["developers"], "dst_groups": ["production"], "protocol": "tcp", "ports": [22], "action": "accept"},
    {"name": "dev-https", "src_groups": ["developers"], "dst_groups": ["production"], "protocol": "tcp", "ports": [443], "action": "accept"},
]  # fmt: skip
VALIDITY = 3600

SYN, ACK, PSH = 0x02, 0x10, 0x08


# --- packets ------------------------------------------------------------------------------------------------------


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = SYN, payload: bytes = b"") -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, flags, 65535, 0, 0)
    return ipv4_packet(ADDRESSES.get(src, src), ADDRESSES.get(dst, dst), header + payload, protocol=6)


def udp(src: str, dst: str, sport: int, dport: int) -> bytes:
    return ipv4_packet(ADDRESSES[src], ADDRESSES[dst], struct.pack("!HHHH", sport, dport, 9, 0) + b"u", protocol=17)


def ping(src: str, dst: str, ident: int = 7) -> bytes:
    return ipv4_packet(ADDRESSES[src], ADDRESSES[dst], struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"ping", protocol=1)


# --- the mesh -----------------------------------------------------------------------------------------------------


@dataclass
class Mesh:
    net: MemoryNetwork
    devices: dict[str, Device]
    nodes: dict[str, Node]
    controllers: dict[str, MeshController]
    keys: dict[str, PublicKey] = field(default_factory=dict)

    @property
    def now_wall(self) -> float:
        return self.net.wall_ns / 1e9

    def body(self, serial: int, members: Iterable[str] = NAMES, *, validity: int = VALIDITY) -> dict[str, Any]:
        issued_at = int(self.now_wall) - 5
        return {
            "version": 1,
            "serial": serial,
            "issued_at": issued_at,
            "expires_at": issued_at + validity,
            "peers": [
                {
                    "public_key": self.keys[name].to_base64(),
                    "allowed_ips": [f"{ADDRESSES[name]}/32"],
                    "endpoint": {"host": ENDPOINTS[name][0], "port": ENDPOINTS[name][1]},
                    "groups": [GROUPS[name]],
                    "relay": False,
                }
                for name in members
            ],
            "acl": SEED_ACL,
        }

    def apply(self, name: str, body: dict[str, Any]) -> MapChanges:
        document = sign_network_map(body, MANAGEMENT)
        return self.controllers[name].apply_network_map(self.devices[name], document, self.now_wall, self.net.now)

    def send(self, name: str, packet: bytes) -> None:
        self.net.send_packet(self.devices[name], packet)

    def delivered(self, name: str) -> list[bytes]:
        return self.nodes[name].delivered

    def drops(self, name: str, reason: DropReason) -> int:
        return self.devices[name].stats.drops[reason]

    def compromise(self, name: str) -> None:
        """The device ignores the ACL from now on: it sends whatever it likes and accepts whatever arrives."""
        self.devices[name].packet_filter = None

    def current_keypair(self, name: str, peer: str) -> Keypair | None:
        found = self.devices[name].peer(self.keys[peer])
        return found.keypairs.current if found is not None else None

    def clear(self) -> None:
        for node in self.nodes.values():
            node.delivered.clear()


def build_mesh(*, fail_closed: bool = False, validity: int = VALIDITY) -> Mesh:
    net = MemoryNetwork(seed=5)
    devices = {name: make_device(SEEDS[name]) for name in NAMES}
    nodes = {name: net.attach(devices[name], ENDPOINTS[name]) for name in NAMES}
    controllers = {name: MeshController(MANAGEMENT_PUBLIC, fail_closed=fail_closed) for name in NAMES}
    mesh = Mesh(net, devices, nodes, controllers, {name: pub(devices[name]) for name in NAMES})
    body = mesh.body(1, validity=validity)
    for name in NAMES:
        devices[name].packet_filter = controllers[name].filter
        changes = mesh.apply(name, body)
        assert changes.serial == 1 and len(changes.added) == 2
    return mesh


@pytest.fixture
def mesh() -> Mesh:
    return build_mesh()


def handshake_initiations(mesh: Mesh, name: str) -> int:
    return len(datagrams_from(mesh.net, ENDPOINTS[name], MessageType.INITIATION))


# ------------------------------------------------------------------------------------------------------------------
# What the ACL allows
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dport", "rule"), [(22, "dev-ssh"), (443, "dev-https")])
def test_developers_reach_production_and_the_replies_flow(mesh: Mesh, dport: int, rule: str) -> None:
    syn = tcp("dev", "prod", 40000, dport)
    mesh.send("dev", syn)
    assert mesh.delivered("prod") == [syn]
    synack = tcp("prod", "dev", dport, 40000, SYN | ACK)
    mesh.send("prod", synack)
    assert mesh.delivered("dev") == [synack]
    for round_ in range(3):
        request = tcp("dev", "prod", 40000, dport, ACK | PSH, f"request {round_}".encode())
        answer = tcp("prod", "dev", dport, 40000, ACK | PSH, f"answer {round_}".encode())
        mesh.send("dev", request)
        mesh.send("prod", answer)
        assert mesh.delivered("prod")[-1] == request
        assert mesh.delivered("dev")[-1] == answer
    assert len(mesh.delivered("prod")) == len(mesh.delivered("dev")) == 4
    for name in ("dev", "prod"):
        assert mesh.drops(name, DropReason.FILTERED) == 0
        stats = mesh.controllers[name].filter.stats
        assert stats.accepted == {rule: 1} and not stats.denied
        assert stats.conntrack_hits == 7  # after the first packet each side saw, every packet hit the tracked flow


def test_a_port_outside_the_acl_is_filtered_at_the_sender_before_any_handshake(mesh: Mesh) -> None:
    for packet in (tcp("dev", "prod", 40000, 80), udp("dev", "prod", 40000, 22), ping("dev", "prod")):
        mesh.send("dev", packet)
    assert mesh.drops("dev", DropReason.FILTERED) == 3
    assert mesh.controllers["dev"].filter.stats.denied == {DEFAULT_DENY: 3}
    assert mesh.net.sent == []  # nothing was staged, so no handshake was started for these packets
    assert mesh.delivered("prod") == []
    assert mesh.devices["dev"].peer(mesh.keys["prod"]) is not None
    found = mesh.devices["dev"].peer(mesh.keys["prod"])
    assert found is not None and not found.staged


def test_production_cannot_open_connections_to_developers(mesh: Mesh) -> None:
    mesh.send("prod", tcp("prod", "dev", 40000, 22))
    assert mesh.drops("prod", DropReason.FILTERED) == 1
    assert mesh.net.sent == []
    # Even if production's own filter were bypassed, the developer's inbound filter refuses the packet.
    mesh.compromise("prod")
    mesh.send("prod", tcp("prod", "dev", 40000, 22))
    assert mesh.delivered("dev") == []
    assert mesh.drops("dev", DropReason.FILTERED) == 1
    assert mesh.controllers["dev"].filter.stats.denied == {DEFAULT_DENY: 1}
    # A reply without a request is no reply: an unsolicited SYN-ACK "from port 22" is denied too.
    mesh.send("prod", tcp("prod", "dev", 22, 40000, SYN | ACK))
    assert mesh.delivered("dev") == []
    assert mesh.drops("dev", DropReason.FILTERED) == 2


def test_other_reaches_nothing_even_when_compromised(mesh: Mesh) -> None:
    for target in ("prod", "dev"):
        mesh.send("other", tcp("other", target, 1234, 22))
    assert mesh.drops("other", DropReason.FILTERED) == 2  # an honest "other" filters its own packets
    assert mesh.net.sent == []

    mesh.compromise("other")
    attempts = 0
    for target in ("prod", "dev"):
        for packet in (
            tcp("other", target, 1234, 22),
            tcp("other", target, 1235, 443),
            tcp("other", target, 1236, 80),
            udp("other", target, 1237, 53),
            ping("other", target),
        ):
            mesh.send("other", packet)
            attempts += 1
    assert mesh.delivered("prod") == [] and mesh.delivered("dev") == []
    assert mesh.drops("prod", DropReason.FILTERED) == mesh.drops("dev", DropReason.FILTERED) == attempts // 2
    assert mesh.controllers["prod"].filter.stats.denied == {DEFAULT_DENY: attempts // 2}
    # The sessions themselves exist (WireGuard authenticated "other"); only the ACL stops its packets.
    assert mesh.current_keypair("prod", "other") is not None


def test_a_spoofed_inner_source_is_dropped_by_cryptokey_routing(mesh: Mesh) -> None:
    mesh.compromise("other")
    # "other" claims to be the developer, to borrow the developer's rights on production.
    mesh.send("other", tcp(ADDRESSES["dev"], "prod", 40000, 22))
    mesh.send("other", tcp(ADDRESSES["dev"], "prod", 40001, 443))
    assert mesh.delivered("prod") == []
    assert mesh.drops("prod", DropReason.DISALLOWED_SOURCE_IP) == 2
    stats = mesh.controllers["prod"].filter.stats
    assert not stats.accepted and not stats.denied  # dropped before the filter was even asked


# ------------------------------------------------------------------------------------------------------------------
# Revocation and expiry
# ------------------------------------------------------------------------------------------------------------------


def test_a_newer_map_revoking_other_cuts_it_off_at_once(mesh: Mesh) -> None:
    mesh.send("dev", tcp("dev", "prod", 40000, 22))
    mesh.send("prod", tcp("prod", "dev", 22, 40000, SYN | ACK))
    mesh.compromise("other")
    for target in ("prod", "dev"):
        mesh.send("other", tcp("other", target, 1234, 22))  # denied, but it gives "other" sessions with both
    dev_keypair, prod_keypair = mesh.current_keypair("dev", "prod"), mesh.current_keypair("prod", "dev")
    other_keypairs = [mesh.current_keypair(name, "other") for name in ("dev", "prod")]
    assert dev_keypair is not None and prod_keypair is not None and all(other_keypairs)
    initiations = handshake_initiations(mesh, "dev") + handshake_initiations(mesh, "prod")

    revoked = mesh.body(2, members=("dev", "prod"))
    for name in ("dev", "prod"):
        changes = mesh.apply(name, revoked)
        assert changes.removed == (mesh.keys["other"],) and changes.added == ()
        assert mesh.devices[name].peer(mesh.keys["other"]) is None
        index_table = mesh.devices[name].index_table._entries
        assert not any(entry[0].public_key == mesh.keys["other"] for entry in index_table.values())
    with pytest.raises(MapRejected) as rejected:  # an honest "other" would learn it is out of the mesh
        mesh.apply("other", revoked)
    assert rejected.value.reason is RejectReason.NOT_FOR_THIS_DEVICE

    # Its old sessions are gone: its transport messages name indices nobody knows any more...
    mesh.clear()
    for target in ("prod", "dev"):
        mesh.send("other", tcp("other", target, 1240, 22))
        assert mesh.drops(target, DropReason.UNKNOWN_INDEX) == 1
    # ...and a fresh handshake from it is refused as coming from an unknown peer.
    other = mesh.devices["other"]
    other.remove_peer(mesh.keys["prod"])
    other.add_peer(mesh.keys["prod"], endpoint=ENDPOINTS["prod"], allowed_ips=[f"{ADDRESSES['prod']}/32"])
    mesh.send("other", tcp("other", "prod", 1241, 22))
    assert mesh.drops("prod", DropReason.UNKNOWN_PEER) == 1
    assert mesh.delivered("prod") == [] and mesh.delivered("dev") == []

    # Developers and production keep the very same session, and their connection carries on.
    assert mesh.current_keypair("dev", "prod") is dev_keypair
    assert mesh.current_keypair("prod", "dev") is prod_keypair
    request = tcp("dev", "prod", 40000, 22, ACK | PSH, b"still here")
    mesh.send("dev", request)
    answer = tcp("prod", "dev", 22, 40000, ACK | PSH, b"so am I")
    mesh.send("prod", answer)
    assert mesh.delivered("prod") == [request] and mesh.delivered("dev") == [answer]
    assert handshake_initiations(mesh, "dev") + handshake_initiations(mesh, "prod") == initiations


def test_an_expired_map_stops_all_traffic_when_fail_closed() -> None:
    mesh = build_mesh(fail_closed=True, validity=60)
    syn = tcp("dev", "prod", 40000, 22)
    mesh.send("dev", syn)
    mesh.send("prod", tcp("prod", "dev", 22, 40000, SYN | ACK))
    assert mesh.delivered("prod") == [syn] and len(mesh.delivered("dev")) == 1
    assert all(controller.traffic_allowed(mesh.now_wall) for controller in mesh.controllers.values())

    mesh.net.advance(61.0)
    mesh.clear()
    assert not any(controller.traffic_allowed(mesh.now_wall) for controller in mesh.controllers.values())
    # The tracked connection is cut at the sender...
    mesh.send("dev", tcp("dev", "prod", 40000, 22, ACK | PSH, b"after expiry"))
    assert mesh.drops("dev", DropReason.FILTERED) == 1
    # ...and at the receiver, should the sender not enforce it.
    mesh.compromise("dev")
    mesh.send("dev", tcp("dev", "prod", 40000, 22, ACK | PSH, b"after expiry"))
    mesh.send("prod", tcp("prod", "dev", 22, 40000, ACK | PSH, b"answer"))
    assert mesh.delivered("prod") == [] and mesh.delivered("dev") == []
    assert mesh.controllers["prod"].filter.stats.denied[MAP_EXPIRED] == 2

    # A newer map opens the door again; the tracked connection survived and carries on.
    fresh = mesh.body(2)
    for name in NAMES:
        mesh.apply(name, fresh)
    mesh.devices["dev"].packet_filter = mesh.controllers["dev"].filter
    request = tcp("dev", "prod", 40000, 22, ACK | PSH, b"renewed")
    mesh.send("dev", request)
    assert mesh.delivered("prod") == [request]


def test_an_expired_map_stays_in_force_without_fail_closed() -> None:
    mesh = build_mesh(fail_closed=False, validity=60)
    mesh.net.advance(61.0)
    assert mesh.controllers["dev"].traffic_allowed(mesh.now_wall)
    syn = tcp("dev", "prod", 40000, 443)
    mesh.send("dev", syn)
    assert mesh.delivered("prod") == [syn]
    mesh.send("dev", tcp("dev", "prod", 40000, 80))
    assert mesh.drops("dev", DropReason.FILTERED) == 1  # the ACL itself still holds
