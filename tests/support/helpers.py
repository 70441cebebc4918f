"""Shared helpers of the device tests: deterministic keys and rng, IP packets built with ``struct``, device pairs.

Everything here is deterministic: keys, indices, ephemerals and jitter come from ``random.Random(seed)``, so a
failing scenario replays identically. The packets are real IPv4/IPv6 headers (with a correct IPv4 checksum, though
the device does not check it) and carry a payload that names them, so tests can tell every packet apart.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from wgpy.device import Device
from wgpy.events import Endpoint
from wgpy.keypair import Keypair
from wgpy.keys import PrivateKey, PublicKey
from wgpy.messages import MessageType
from wgpy.peer import Peer
from wgpy.testing import MemoryNetwork, Node

__all__ = [
    "ADDR_A",
    "ADDR_A6",
    "ADDR_B",
    "ADDR_B6",
    "ENDPOINT_A",
    "ENDPOINT_B",
    "MEASUREMENT",
    "Pair",
    "datagrams_from",
    "det_rng",
    "drops_total",
    "ipv4_packet",
    "ipv6_packet",
    "make_device",
    "make_pair",
    "message_type",
    "private_key",
    "pub",
    "snapshot",
    "transport_header",
    "twin_state",
]

ENDPOINT_A: Endpoint = ("192.0.2.1", 51820)
ENDPOINT_B: Endpoint = ("192.0.2.2", 51820)
MEASUREMENT = "measurement"  # the user_properties key of a line for the run's measurements summary
ADDR_A = "10.0.0.1"
ADDR_B = "10.0.0.2"
ADDR_A6 = "fd00::1"
ADDR_B6 = "fd00::2"

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")
_TYPE = struct.Struct("<I")


def det_rng(seed: int) -> Callable[[int], bytes]:
    """A deterministic ``rng(n) -> n bytes`` for a Device."""
    return random.Random(seed).randbytes


def private_key(seed: int) -> PrivateKey:
    """A private key derived from ``seed`` (distinct seeds give distinct keys)."""
    return PrivateKey(random.Random(f"key-{seed}").randbytes(32))


def _checksum(header: bytes) -> int:
    words: tuple[int, ...] = struct.unpack(f"!{len(header) // 2}H", header)
    total = sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_packet(src: str, dst: str, payload: bytes = b"", *, protocol: int = 17, ttl: int = 64) -> bytes:
    """An IPv4 packet (RFC 791, 20-byte header without options) from ``src`` to ``dst``."""
    total = 20 + len(payload)
    addresses = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    header = _IPV4.pack(0x45, 0, total, 0, 0, ttl, protocol, 0, *addresses)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + payload


def ipv6_packet(src: str, dst: str, payload: bytes = b"", *, next_header: int = 17, hop_limit: int = 64) -> bytes:
    """An IPv6 packet (RFC 8200 fixed header) from ``src`` to ``dst``."""
    addresses = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    return _IPV6.pack(6 << 28, len(payload), next_header, hop_limit, *addresses) + payload


def message_type(data: bytes) -> int:
    """The le32 type field of a datagram (0 if it is shorter than 4 bytes)."""
    if len(data) < 4:
        return 0
    kind: int = _TYPE.unpack_from(data)[0]
    return kind


def transport_header(data: bytes) -> tuple[int, int] | None:
    """``(receiver_index, counter)`` of a transport message, or ``None`` for any other datagram."""
    if len(data) < 32 or message_type(data) != MessageType.TRANSPORT:
        return None
    _, receiver_index, counter = _TRANSPORT_HEADER.unpack_from(data)
    return receiver_index, counter


def datagrams_from(net: MemoryNetwork, source: Endpoint, kind: MessageType | None = None) -> list[bytes]:
    """Datagrams put on the wire by the node at ``source`` (optionally of one message type), oldest first."""
    return [data for src, data, _dst in net.sent if src == source and (kind is None or message_type(data) == int(kind))]


def pub(device: Device) -> PublicKey:
    """The device's public key (it must have one)."""
    key = device.public_key
    assert key is not None
    return key


def drops_total(device: Device) -> int:
    return sum(device.stats.drops.values())


def make_device(seed: int, **kwargs: Any) -> Device:
    """A device with the key of ``seed`` and an rng seeded from it."""
    kwargs.setdefault("rng", det_rng(1000 + seed))
    return Device(private_key(seed), **kwargs)


@dataclass
class Pair:
    """Two devices A (10.0.0.1, fd00::1) and B (10.0.0.2, fd00::2) configured as each other's peer."""

    net: MemoryNetwork
    a: Device
    b: Device
    node_a: Node
    node_b: Node

    @property
    def peer_b(self) -> Peer:
        """B as A knows it."""
        peer = self.a.peer(self.pub_b)
        assert peer is not None
        return peer

    @property
    def peer_a(self) -> Peer:
        """A as B knows it."""
        peer = self.b.peer(self.pub_a)
        assert peer is not None
        return peer

    @property
    def pub_a(self) -> PublicKey:
        key = self.a.public_key
        assert key is not None
        return key

    @property
    def pub_b(self) -> PublicKey:
        key = self.b.public_key
        assert key is not None
        return key

    def a_to_b(self, payload: bytes, *, v6: bool = False) -> bytes:
        """A packet from A to B (not sent)."""
        return ipv6_packet(ADDR_A6, ADDR_B6, payload) if v6 else ipv4_packet(ADDR_A, ADDR_B, payload)

    def b_to_a(self, payload: bytes, *, v6: bool = False) -> bytes:
        """A packet from B to A (not sent)."""
        return ipv6_packet(ADDR_B6, ADDR_A6, payload) if v6 else ipv4_packet(ADDR_B, ADDR_A, payload)

    def send_a(self, payload: bytes, *, v6: bool = False) -> bytes:
        """A sends a packet to B through the network; returns the packet."""
        packet = self.a_to_b(payload, v6=v6)
        self.net.send_packet(self.a, packet)
        return packet

    def send_b(self, payload: bytes, *, v6: bool = False) -> bytes:
        """B sends a packet to A through the network; returns the packet."""
        packet = self.b_to_a(payload, v6=v6)
        self.net.send_packet(self.b, packet)
        return packet

    def handshake(self) -> None:
        """Establish a confirmed session (A initiates) and forget what was delivered."""
        self.send_a(b"hello")
        self.send_b(b"hello back")
        assert self.node_b.delivered and self.node_a.delivered, "handshake did not complete"
        self.node_a.delivered.clear()
        self.node_b.delivered.clear()

    def events(self, device: Device) -> list[object]:
        out: list[object] = []
        while (event := device.next_event()) is not None:
            out.append(event)
        return out


def make_pair(
    *,
    seed: int = 0,
    net: MemoryNetwork | None = None,
    keepalive_a: int = 0,
    keepalive_b: int = 0,
    allowed_b: Iterable[str] = (f"{ADDR_B}/32", f"{ADDR_B6}/128"),
    allowed_a: Iterable[str] = (f"{ADDR_A}/32", f"{ADDR_A6}/128"),
    endpoint_known_by_b: bool = True,
    **device_kwargs: Any,
) -> Pair:
    """Two devices on ``net`` (a lossless one by default), each with the other as its peer."""
    net = net if net is not None else MemoryNetwork(seed=seed)
    a = make_device(2 * seed + 1, **device_kwargs)
    b = make_device(2 * seed + 2, **device_kwargs)
    assert a.public_key is not None and b.public_key is not None
    node_a = net.attach(a, ENDPOINT_A)
    node_b = net.attach(b, ENDPOINT_B)
    a.add_peer(b.public_key, endpoint=ENDPOINT_B, allowed_ips=allowed_b, now=net.now)
    b.add_peer(
        a.public_key,
        endpoint=ENDPOINT_A if endpoint_known_by_b else None,
        allowed_ips=allowed_a,
        now=net.now,
    )
    pair = Pair(net, a, b, node_a, node_b)
    if keepalive_a:
        a.set_persistent_keepalive(pair.peer_b, keepalive_a, net.now)
    if keepalive_b:
        b.set_persistent_keepalive(pair.peer_a, keepalive_b, net.now)
    net.pump()
    return pair


def _keypair_state(keypair: Keypair | None) -> tuple[object, ...] | None:
    if keypair is None:
        return None
    return (
        id(keypair),
        keypair.local_index,
        keypair.remote_index,
        keypair.send_counter,
        keypair.valid,
        keypair.created_at,
        keypair.replay.greatest,
        tuple(keypair.replay._ring),
    )


def snapshot(device: Device) -> dict[str, object]:
    """Everything that unauthenticated input must not change: peers, sessions, timers, index table, routing.

    Left out on purpose: ``stats.drops`` (compared separately), the handshake load meter and the per-source rate
    limiter (they exist to count unauthenticated handshake messages) and the drop-log rate limit.
    """
    peers: dict[str, object] = {}
    for key, peer in device.peers.items():
        handshake = peer.handshake
        timers = peer.timers
        peers[key.to_hex()] = {
            "endpoint": peer.endpoint,
            "rx": peer.rx_bytes,
            "tx": peer.tx_bytes,
            "last_handshake_at": peer.last_handshake_at,
            "last_sent_handshake_at": peer.last_sent_handshake_at,
            "handshake": (
                handshake.state,
                handshake.local_index,
                handshake.remote_index,
                handshake.chaining_key,
                handshake.hash,
                handshake.remote_ephemeral,
                handshake.latest_timestamp,
                handshake.last_initiation_consumption,
            ),
            "keypairs": tuple(
                _keypair_state(k) for k in (peer.keypairs.current, peer.keypairs.previous, peer.keypairs.next)
            ),
            "timers": tuple(getattr(timers, name) for name in timers.__slots__),
            "cookie": (peer.cookie._cookie, peer.cookie._cookie_born_at, peer.cookie._last_mac1_sent),
            "staged": tuple(peer.staged),
            "allowed_ips": tuple(device.allowed_ips.entries_for_peer(peer)),
        }
    return {
        "peers": peers,
        "index_table": {index: (id(p), id(e)) for index, (p, e) in device.index_table._entries.items()},
        "handshakes_completed": device.stats.handshakes_completed,
        "packets_received": device.stats.packets_received,
        "packets_sent": device.stats.packets_sent,
        "cookie_replies_sent": device.stats.cookie_replies_sent,
        "pending_datagrams": tuple(device._datagrams),
        "pending_packets": tuple(device._packets),
        "pending_events": tuple(device._events),
    }


def twin_state(device: Device) -> dict[str, object]:
    """``snapshot`` without object identities, so that two devices built from the same seeds compare equal."""
    state = snapshot(device)
    peers: dict[str, object] = {}
    for key, peer in state["peers"].items():  # type: ignore[attr-defined]
        peer = dict(peer)
        peer["keypairs"] = tuple(None if k is None else k[1:] for k in peer["keypairs"])
        peer["timers"] = peer["timers"][1:]  # the first slot is the device's change callback
        peers[key] = peer
    return {**state, "peers": peers, "index_table": sorted(state["index_table"])}  # type: ignore[call-overload]
