"""Two Devices over a hostile MemoryNetwork, driven by a Hypothesis state machine.

Rules send packets either way, step the clock (0.1 to 200 s, through deadlines or a 250 ms tick), switch loss,
duplication and reordering on and off, cut and restore either endpoint, and heal the network. Invariants:

* no inner packet is delivered twice, and only packets that were really sent are delivered;
* no (keypair, counter) pair is ever sent twice (seen on the wire, before the network duplicates anything);
* once the network heals, traffic resumes both ways within a bounded time.

Each run draws whether the devices seal in place or hand ``SealJob``s out (``seal_offload``); the invariants hold
either way.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support.helpers import ENDPOINT_A, ENDPOINT_B, Pair, make_pair, transport_header

from wgpy.constants import REKEY_TIMEOUT
from wgpy.events import Endpoint
from wgpy.testing import MemoryNetwork

HEAL_DEADLINE = 45.0  # simulated seconds for traffic to resume: rate limit + two "no answer" handshake timers


class TwoDevices(RuleBasedStateMachine):
    pair: Pair
    net: MemoryNetwork

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[str, set[bytes]] = {"a": set(), "b": set()}
        self.wire: set[tuple[Endpoint, int, int]] = set()
        self.reused: list[tuple[Endpoint, int, int]] = []
        self.serial = 0

    @initialize(seed=st.integers(0, 2**16), tick=st.sampled_from([None, 0.25]), offload=st.booleans())
    def start(self, seed: int, tick: float | None, offload: bool) -> None:
        self.net = MemoryNetwork(seed=seed, tick=tick)
        self.net.tap = self._tap
        self.pair = make_pair(net=self.net, seed=seed % 7)
        self.pair.a.seal_offload = self.pair.b.seal_offload = offload  # SealJobs run by the network

    def _tap(self, src: Endpoint, data: bytes, dst: Endpoint) -> bytes:
        header = transport_header(data)
        if header is not None:
            key = (src, *header)
            if key in self.wire:
                self.reused.append(key)
            self.wire.add(key)
        return data

    def _send(self, side: str, v6: bool) -> bytes:
        self.serial += 1
        payload = f"{side}{self.serial}".encode()
        packet = self.pair.a_to_b(payload, v6=v6) if side == "a" else self.pair.b_to_a(payload, v6=v6)
        self.sent[side].add(packet)
        self.net.send_packet(self.pair.a if side == "a" else self.pair.b, packet)
        return packet

    @rule(side=st.sampled_from(["a", "b"]), count=st.integers(1, 6), v6=st.booleans())
    def send(self, side: str, count: int, v6: bool) -> None:
        for _ in range(count):
            self._send(side, v6)

    @rule(seconds=st.one_of(st.floats(0.1, 200.0), st.sampled_from([5.0, 10.0, 15.0, 120.0, 180.0])))
    def advance(self, seconds: float) -> None:
        self.net.advance(seconds)

    @rule(
        loss=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
        duplicate=st.sampled_from([0.0, 0.2, 0.5]),
        reorder=st.sampled_from([0.0, 0.3, 1.0]),
    )
    def impair(self, loss: float, duplicate: float, reorder: float) -> None:
        self.net.loss, self.net.duplicate, self.net.reorder = loss, duplicate, reorder

    @rule(endpoint=st.sampled_from([ENDPOINT_A, ENDPOINT_B]))
    def cut(self, endpoint: Endpoint) -> None:
        self.net.blocked.add(endpoint)

    @precondition(lambda self: bool(self.net.blocked))
    @rule()
    def restore(self) -> None:
        self.net.blocked.clear()

    @rule()
    def heal_and_check(self) -> None:
        self._heal()

    def _heal(self) -> None:
        """Remove every impairment, then traffic must flow both ways again within HEAL_DEADLINE."""
        net = self.net
        net.loss = net.duplicate = net.reorder = 0.0
        net.blocked.clear()
        start = net.now
        net.advance(REKEY_TIMEOUT + 1.0)  # past the initiation rate limit
        while True:
            ping, pong = self._send("a", False), self._send("b", False)
            if ping in self.pair.node_b.delivered and pong in self.pair.node_a.delivered:
                return
            assert net.now - start < HEAL_DEADLINE, "traffic did not resume after the network healed"
            net.advance(1.0)

    @invariant()
    def delivered_at_most_once_and_only_what_was_sent(self) -> None:
        for node, side in ((self.pair.node_b, "a"), (self.pair.node_a, "b")):
            counts = Counter(node.delivered)
            assert all(n == 1 for n in counts.values()), "an inner packet was delivered twice"
            assert set(counts) <= self.sent[side]

    @invariant()
    def no_keypair_counter_sent_twice(self) -> None:
        assert self.reused == [], f"(receiver index, counter) sent twice: {self.reused[:3]}"

    def teardown(self) -> None:
        if hasattr(self, "pair"):
            self._heal()
            self.delivered_at_most_once_and_only_what_was_sent()
            self.no_keypair_counter_sent_twice()


TwoDevices.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_two_devices = TwoDevices.TestCase
