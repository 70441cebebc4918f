"""``Device.seal_offload``: handing ``SealJob``s out changes nothing on the wire.

A device with offload on (the shadow) gets exactly the inputs of a normal one (the twin's own half, which talks to a
peer over a ``MemoryNetwork``). Both draw from identically seeded rngs, so after every drain the shadow's handshake
datagrams, and its jobs once run, must be byte for byte what the normal device sent; its byte counters, packets
and drops must match. ``KeypairRetired`` must come after the last job of a keypair, and a job may only name a
keypair that is alive when the job is handed out. Rekeying by message count (lowered limits) and by time, key
zeroing and counter exhaustion are all reached, so jobs span rotations.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import ENDPOINT_A, ENDPOINT_B, det_rng, ipv4_packet, message_type, private_key

from wgpy.device import Device, Endpoint, KeypairRetired, SealJob
from wgpy.messages import MessageType
from wgpy.testing import MemoryNetwork

_TRANSPORT = int(MessageType.TRANSPORT)


class TwinDevice(Device):
    """A normal device that feeds every input to an offloading shadow and checks the shadow's outputs."""

    def __init__(self, seed: int, **kwargs: Any) -> None:
        super().__init__(private_key(seed), rng=det_rng(seed), **kwargs)
        self.shadow = Device(private_key(seed), rng=det_rng(seed), **kwargs)
        self.shadow.seal_offload = True
        self.live_jobs: set[int] = set()  # keypair indices with jobs handed out and no KeypairRetired yet
        self.jobs_seen = 0
        self.retired_seen = 0

    def set_limits(self, rekey: int, reject: int) -> None:
        for device in (self, self.shadow):
            device.rekey_after_messages = rekey
            device.reject_after_messages = reject

    def add_peer(self, *args: Any, **kwargs: Any) -> Any:
        self.shadow.add_peer(*args, **kwargs)
        return super().add_peer(*args, **kwargs)

    def receive_datagram(self, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None) -> None:
        self.shadow.receive_datagram(data, endpoint, now, wall_ns)
        super().receive_datagram(data, endpoint, now, wall_ns)

    def send_packet(self, ip_packet: bytes, now: float, wall_ns: int | None = None) -> None:
        self.shadow.send_packet(ip_packet, now, wall_ns)
        super().send_packet(ip_packet, now, wall_ns)

    def send_packets(self, ip_packets: Any, now: float, wall_ns: int | None = None) -> None:
        packets = list(ip_packets)
        self.shadow.send_packets(packets, now, wall_ns)
        super().send_packets(packets, now, wall_ns)

    def handle_timer(self, now: float, wall_ns: int | None = None) -> None:
        self.shadow.handle_timer(now, wall_ns)
        super().handle_timer(now, wall_ns)

    def datagrams_to_send(self) -> list[tuple[bytes, Endpoint]]:
        out = super().datagrams_to_send()
        shadow_plain = self.shadow.datagrams_to_send()
        shadow_sealed: list[tuple[bytes, Endpoint]] = []
        live = {k.local_index for peer in self.shadow.peers.values() for k in peer.keypairs.all()}
        for item in self.shadow.seal_jobs():
            if isinstance(item, SealJob):
                assert item.local_index in live or item.local_index in self.live_jobs, "job for an unknown keypair"
                self.live_jobs.add(item.local_index)
                self.jobs_seen += 1
                shadow_sealed += [(message, item.endpoint) for message in item.run()]
            else:
                assert isinstance(item, KeypairRetired)
                self.retired_seen += 1
                self.live_jobs.discard(item.local_index)
        assert all(message_type(d) != _TRANSPORT for d, _ in shadow_plain), "offload left a transport in place"
        assert shadow_plain == [d for d in out if message_type(d[0]) != _TRANSPORT]
        assert shadow_sealed == [d for d in out if message_type(d[0]) == _TRANSPORT]
        assert self.live_jobs <= live, "a retired keypair was not announced"
        self._compare_counters()
        return out

    def packets_to_tun(self) -> list[bytes]:
        out = super().packets_to_tun()
        assert self.shadow.packets_to_tun() == out
        return out

    def _compare_counters(self) -> None:
        assert self.stats == self.shadow.stats
        for key, peer in self.peers.items():
            other = self.shadow.peers[key]
            assert (peer.tx_bytes, peer.rx_bytes) == (other.tx_bytes, other.rx_bytes)
            assert peer.timers.__slots__ == other.timers.__slots__
            # Every deadline and counter; not the private change callback, which is each device's own.
            state = [n for n in peer.timers.__slots__ if not n.startswith("_")]
            assert [getattr(peer.timers, n) for n in state] == [getattr(other.timers, n) for n in state]


_step = st.one_of(
    st.tuples(st.just("a"), st.integers(0, 1400)),
    st.tuples(st.just("b"), st.integers(0, 1400)),
    st.tuples(st.just("batch"), st.integers(1, 40)),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 5.0, 11.0, 60.0, 125.0, 200.0, 600.0])),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    limits=st.sampled_from([(8, 16), (30, 45), (2**60, 2**60)]),
    steps=st.lists(_step, min_size=1, max_size=40),
)
def test_offloaded_sealing_matches_sealing_in_place(
    seed: int, limits: tuple[int, int], steps: list[tuple[str, Any]]
) -> None:
    net = MemoryNetwork(seed=seed)
    a = TwinDevice(2 * seed + 1)
    b = TwinDevice(2 * seed + 2)
    for device in (a, b):
        device.set_limits(*limits)
    net.attach(a, ENDPOINT_A)
    net.attach(b, ENDPOINT_B)
    assert a.public_key is not None and b.public_key is not None
    a.add_peer(b.public_key, endpoint=ENDPOINT_B, allowed_ips=["10.0.0.2/32"], persistent_keepalive_interval=25)
    b.add_peer(a.public_key, endpoint=ENDPOINT_A, allowed_ips=["10.0.0.1/32"])
    serial = 0
    for kind, value in steps:
        serial += 1
        if kind == "a":
            net.send_packet(a, ipv4_packet("10.0.0.1", "10.0.0.2", bytes(value) + serial.to_bytes(4, "big")))
        elif kind == "b":
            net.send_packet(b, ipv4_packet("10.0.0.2", "10.0.0.1", bytes(value) + serial.to_bytes(4, "big")))
        elif kind == "batch":
            packets = [ipv4_packet("10.0.0.1", "10.0.0.2", f"{serial}.{i}".encode() * 30) for i in range(value)]
            a.send_packets(packets, net.now, net.wall_ns)
            net.pump()
        else:
            net.advance(value)


def test_rotation_retires_keypairs_after_their_jobs() -> None:
    """A long run with a low rekey limit: jobs and retirements both happen (the property is not vacuous)."""
    net = MemoryNetwork(seed=3)
    a, b = TwinDevice(11), TwinDevice(12)
    for device in (a, b):
        device.set_limits(10, 20)
    net.attach(a, ENDPOINT_A)
    net.attach(b, ENDPOINT_B)
    assert a.public_key is not None and b.public_key is not None
    a.add_peer(b.public_key, endpoint=ENDPOINT_B, allowed_ips=["10.0.0.2/32"])
    b.add_peer(a.public_key, endpoint=ENDPOINT_A, allowed_ips=["10.0.0.1/32"])
    for i in range(200):
        net.send_packet(a, ipv4_packet("10.0.0.1", "10.0.0.2", b"x%d" % i))
        if i % 3 == 0:
            net.send_packet(b, ipv4_packet("10.0.0.2", "10.0.0.1", b"y%d" % i))
        net.advance(0.2)
    net.advance(600)  # zero key material
    assert a.jobs_seen > 20 and a.retired_seen >= 5
    assert b.retired_seen >= 5
    assert not a.shadow.peers[b.public_key].keypairs.all()
    assert not a.live_jobs  # everything handed out was retired in the end
