"""Per-packet cost of the mesh ACL filter (``wgpy.mesh.PacketFilter``).

Each round pushes ``PACKETS_PER_ROUND`` raw IPv4 TCP packets through ``check_outbound``, so divide the reported
time by 1000 for one packet. Three paths:

* ``conntrack_hit``: packets of an established flow (parse, one dict probe, a timestamp);
* ``new_flow``: first packets of distinct flows that a rule accepts (two ``AllowedIPs`` lookups, the compiled rule
  list of the group pair, a flow created); the table is cleared at the start of each round;
* ``denied``: packets no rule accepts (``default-deny`` after walking the pair's rule list), counted, no audit.

The map is a realistic mid-size mesh: 256 peers in 8 groups (each peer in one or two), 40 rules mixing port lists,
ranges, protocols, deny rules and wildcards. Reference numbers (CPython 3.11, the development machine, median ns
per packet, loop overhead included): conntrack hit ~850, denied ~1500, new flow ~2600; for scale, one
``Device.send_packet`` of a 1000-byte packet on an established session costs ~2800-4100 on the same machine.
Of the hit path, ~410 ns is parsing the IP and TCP headers.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from typing import Any, Final

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wgpy.keys import PrivateKey, PublicKey
from wgpy.mesh import PacketFilter, parse_network_map

SEED: Final = 0x41434C  # "ACL"
PACKETS_PER_ROUND: Final = 1000
PEERS: Final = 256
GROUPS: Final = [f"g{i}" for i in range(8)]

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")


def tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> bytes:
    payload = _TCP.pack(sport, dport, 0, 0, 0x50, flags, 65535, 0, 0)
    addresses = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    return _IPV4.pack(0x45, 0, 20 + len(payload), 0, 0, 64, 6, 0, *addresses) + payload


def build() -> tuple[PacketFilter, list[PublicKey]]:
    rng = random.Random(SEED)
    keys = [PrivateKey(rng.randbytes(32)).public_key() for _ in range(PEERS)]
    peers = []
    for index, key in enumerate(keys):
        groups = sorted({rng.choice(GROUPS) for _ in range(rng.randint(1, 2))})
        if index == 0:
            groups = ["g0"]  # the sender in the benchmark
        elif index == 1:
            groups = ["g1"]  # the server
        peers.append(
            {
                "public_key": key.to_base64(),
                "allowed_ips": [f"10.{index // 256}.{index % 256}.1/32", f"fd00::{index:x}/128"],
                "endpoint": None,
                "groups": groups,
                "relay": False,
            }
        )
    rules: list[dict[str, Any]] = []
    for index in range(39):
        protocol = rng.choice(["tcp", "tcp", "udp", "icmp", "all"])
        ports: list[Any] = []
        if protocol in ("tcp", "udp"):
            ports = [rng.randrange(1, 1024) for _ in range(rng.randint(1, 3))]
            if rng.random() < 0.3:
                low = rng.randrange(1024, 60000)
                ports.append([low, low + rng.randrange(1, 500)])
        rules.append(
            {
                "name": f"rule-{index}",
                "src_groups": rng.sample([*GROUPS, "*"], rng.randint(1, 2)),
                "dst_groups": rng.sample(GROUPS, rng.randint(1, 2)),
                "protocol": protocol,
                "ports": ports,
                "action": rng.choice(["accept", "accept", "deny"]),
            }
        )
    # The benchmark's accepted traffic, placed last so the pair's list is walked to the end.
    rules.append(
        {
            "name": "g0-to-g1-ssh",
            "src_groups": ["g0"],
            "dst_groups": ["g1"],
            "protocol": "tcp",
            "ports": [22],
            "action": "accept",
        }
    )
    body = {"version": 1, "serial": 1, "issued_at": 0, "expires_at": 2**40, "peers": peers, "acl": rules}
    packet_filter = PacketFilter(max_flows=1 << 20)
    packet_filter.load(parse_network_map(body))
    return packet_filter, keys


@pytest.fixture(scope="module")
def setup() -> tuple[PacketFilter, list[PublicKey]]:
    return build()


def test_conntrack_hit(benchmark: BenchmarkFixture, setup: tuple[PacketFilter, list[PublicKey]]) -> None:
    packet_filter, keys = setup
    server = keys[1]
    assert packet_filter.check_outbound(tcp("10.0.0.1", "10.0.1.1", 40000, 22, 0x02), server, 0.0)
    assert packet_filter.check_inbound(tcp("10.0.1.1", "10.0.0.1", 22, 40000, 0x12), server, 0.0)
    packet = tcp("10.0.0.1", "10.0.1.1", 40000, 22, 0x18)
    check = packet_filter.check_outbound

    def run() -> None:
        for _ in range(PACKETS_PER_ROUND):
            check(packet, server, 1.0)

    benchmark(run)
    assert check(packet, server, 1.0)


def test_new_flow(benchmark: BenchmarkFixture, setup: tuple[PacketFilter, list[PublicKey]]) -> None:
    packet_filter, keys = setup
    server = keys[1]
    packets = [tcp("10.0.0.1", "10.0.1.1", 10000 + i, 22, 0x02) for i in range(PACKETS_PER_ROUND)]
    check = packet_filter.check_outbound

    def run() -> None:
        packet_filter.conntrack.clear()
        for packet in packets:
            check(packet, server, 1.0)

    benchmark(run)
    assert len(packet_filter.conntrack) == PACKETS_PER_ROUND


def test_denied(benchmark: BenchmarkFixture, setup: tuple[PacketFilter, list[PublicKey]]) -> None:
    packet_filter, keys = setup
    server = keys[1]
    packets = [tcp("10.0.0.1", "10.0.1.1", 10000 + i, 23, 0x02) for i in range(PACKETS_PER_ROUND)]
    check = packet_filter.check_outbound
    assert packet_filter.decide(packets[0]).accept is False

    def run() -> None:
        for packet in packets:
            check(packet, server, 1.0)

    benchmark(run)
