"""``Device.get_timer`` keeps a heap of peer deadlines instead of walking every peer; it must still equal the
brute-force answer (the earliest ``next_deadline()`` over all peers) after any sequence of inputs."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import ipv4_packet, make_device, pub

from wgpy import Device
from wgpy.testing import MemoryNetwork

ENDPOINTS = [("192.0.2.1", 51820), ("192.0.2.2", 51820), ("192.0.2.3", 51820)]
ADDRESSES = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def brute_force(device: Device) -> float | None:
    deadlines = [d for d in (peer.timers.next_deadline() for peer in device.peers.values()) if d is not None]
    return min(deadlines) if deadlines else None


operations = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("advance"), st.floats(0.05, 200.0), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("add"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("keepalive"), st.integers(0, 2), st.integers(0, 30)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(operations)
def test_get_timer_equals_the_earliest_peer_deadline(steps: list[tuple[str, float, int]]) -> None:
    devices = [make_device(seed) for seed in range(3)]
    net = MemoryNetwork(seed=1)
    for device, endpoint in zip(devices, ENDPOINTS, strict=True):
        net.attach(device, endpoint)

    def connect(i: int, j: int) -> None:
        devices[i].add_peer(pub(devices[j]), endpoint=ENDPOINTS[j], allowed_ips=[f"{ADDRESSES[j]}/32"], now=net.now)

    for i in range(3):
        for j in range(3):
            if i != j:
                connect(i, j)
    for kind, a, b in steps:
        i, j = int(a) % 3, b % 3
        if kind == "send" and i != j:
            net.send_packet(devices[i], ipv4_packet(ADDRESSES[i], ADDRESSES[j], b"x"))
        elif kind == "advance":
            net.advance(a)
        elif kind == "remove" and i != j:
            devices[i].remove_peer(pub(devices[j]))
        elif kind == "add" and i != j:
            connect(i, j)
        elif kind == "keepalive" and i != j and (peer := devices[i].peer(pub(devices[(i + 1) % 3]))) is not None:
            devices[i].set_persistent_keepalive(peer, b, net.now)
            net.pump()
        for device in devices:
            assert device.get_timer() == brute_force(device)
