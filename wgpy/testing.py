"""An in-memory network of Devices with a hand-stepped clock (like wireguard-go's conn/bindtest).

Theory of operation: ``MemoryNetwork`` owns the clock (``now``, plus a fixed wall-clock epoch for TAI64N) and a set
of ``Device`` objects attached at endpoints. ``pump()`` moves every datagram the devices want to send to the device
at its destination, applying loss, duplication and reordering drawn from a seeded ``random.Random``, until nothing
is in flight. ``advance(seconds)`` moves the clock forward, calling each device's ``handle_timer`` at each of its
deadlines on the way (or on a fixed tick, as boringtun's driver does), pumping after each. Decrypted packets are
kept per device in ``delivered``. Each node is drained with ``wgpy.transmit.drain``, the same loop the real drivers
use, so a device with ``seal_offload`` on has its ``SealJob``s run here, in order, as a driver's would. It performs
no I/O and is used by the tests and benchmarks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .device import Device
from .events import Endpoint
from .transmit import drain

__all__ = ["MemoryNetwork", "Node"]

EPOCH_NS = 1_700_000_000 * 1_000_000_000


@dataclass
class Node:
    device: Device
    endpoint: Endpoint
    delivered: list[bytes] = field(default_factory=list)
    received_datagrams: int = 0

    def write_packets(self, packets: Sequence[bytes]) -> None:
        """The node's ``transmit.PacketSink``: decrypted packets are kept in ``delivered``."""
        self.delivered.extend(packets)


class _Outbox:
    """A ``transmit.DatagramSink`` that puts one node's datagrams on the wire as (source, data, destination)."""

    __slots__ = ("batch", "source")

    def __init__(self) -> None:
        self.batch: list[tuple[Endpoint, bytes, Endpoint]] = []
        self.source: Endpoint = ("", 0)

    def send_datagrams(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        source = self.source
        self.batch += [(source, data, destination) for data, destination in datagrams]


class MemoryNetwork:
    """Devices joined by lossy in-memory links."""

    def __init__(
        self,
        *,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        seed: int = 0,
        tick: float | None = None,
        epoch_ns: int = EPOCH_NS,
    ) -> None:
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.random = random.Random(seed)  # noqa: S311 - simulated loss, not crypto
        self.tick = tick
        self.now = 0.0
        self.epoch_ns = epoch_ns
        self.nodes: dict[Endpoint, Node] = {}
        self.blocked: set[Endpoint] = set()  # endpoints whose traffic (both ways) is lost
        self.sent: list[tuple[Endpoint, bytes, Endpoint]] = []  # every datagram put on the wire: (src, data, dst)
        self.tap: Callable[[Endpoint, bytes, Endpoint], bytes | None] | None = None  # may rewrite or drop

    @property
    def wall_ns(self) -> int:
        return self.epoch_ns + int(self.now * 1e9)

    def attach(self, device: Device, endpoint: Endpoint) -> Node:
        node = Node(device, endpoint)
        self.nodes[endpoint] = node
        return node

    def move(self, old: Endpoint, new: Endpoint) -> None:
        """Roam: the node at ``old`` now sends from and listens on ``new``."""
        node = self.nodes.pop(old)
        node.endpoint = new
        self.nodes[new] = node

    def node(self, device: Device) -> Node:
        for node in self.nodes.values():
            if node.device is device:
                return node
        raise KeyError("device not attached")

    def send_packet(self, device: Device, packet: bytes) -> None:
        """Give ``device`` an IP packet as if read from its TUN, then deliver what follows."""
        device.send_packet(packet, self.now, self.wall_ns)
        self.pump()

    def inject(self, data: bytes, source: Endpoint, destination: Endpoint) -> None:
        """Deliver raw bytes to the device at ``destination`` as if sent from ``source`` (an attacker's datagram)."""
        node = self.nodes[destination]
        node.device.receive_datagram(data, source, self.now, self.wall_ns)
        node.received_datagrams += 1
        self._collect(node)
        self.pump()

    def _collect(self, node: Node) -> None:
        node.delivered.extend(node.device.packets_to_tun())

    def pump(self, max_rounds: int = 1000) -> None:
        """Move datagrams between devices until none are in flight."""
        outbox = _Outbox()
        for _ in range(max_rounds):
            batch: list[tuple[Endpoint, bytes, Endpoint]] = []
            outbox.batch = batch
            for node in list(self.nodes.values()):
                outbox.source = node.endpoint
                drain(node.device, outbox, node)
            if not batch:
                return
            if self.reorder and self.random.random() < self.reorder:
                self.random.shuffle(batch)
            for source, data, destination in batch:
                self.sent.append((source, data, destination))
                if self.tap is not None:
                    tapped = self.tap(source, data, destination)
                    if tapped is None:
                        continue
                    data = tapped
                copies = 2 if self.duplicate and self.random.random() < self.duplicate else 1
                for _ in range(copies):
                    if source in self.blocked or destination in self.blocked:
                        continue
                    if self.loss and self.random.random() < self.loss:
                        continue
                    target = self.nodes.get(destination)
                    if target is None:
                        continue
                    target.device.receive_datagram(data, source, self.now, self.wall_ns)
                    target.received_datagrams += 1
        raise RuntimeError("datagrams still in flight after max_rounds: a loop between devices?")

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward, firing timers on the way."""
        target = self.now + seconds
        while True:
            if self.tick is not None:
                step = min(self.now + self.tick, target)
            else:
                deadlines = [d for d in (n.device.get_timer() for n in self.nodes.values()) if d is not None]
                step = min([target, *deadlines])
            step = max(step, self.now)
            self.now = step
            for node in list(self.nodes.values()):
                node.device.handle_timer(self.now, self.wall_ns)
            self.pump()
            if self.now >= target:
                return
