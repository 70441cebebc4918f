"""The drain contract (wgpy.transmit): one loop moves a Device's outputs into a datagram sink, a packet sink and,
when sealing is offloaded, a seal-job sink that may take or leave the work."""

from __future__ import annotations

from collections.abc import Sequence

from support.helpers import ENDPOINT_B, make_pair, message_type

from wgpy.events import Endpoint
from wgpy.messages import MessageType
from wgpy.packetrun import PacketRun, flat_packets
from wgpy.send import KeypairRetired, SealJob
from wgpy.transmit import drain, run_seal_jobs


class Wire:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Endpoint]] = []

    def send_datagrams(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        self.sent += datagrams


class Tun:
    def __init__(self) -> None:
        self.packets: list[bytes] = []

    def write_packets(self, packets: Sequence[bytes]) -> None:
        self.packets += packets


class Worker:
    def __init__(self, *, take: bool) -> None:
        self.take = take
        self.jobs: list[SealJob | KeypairRetired] = []
        self.packets: list[bytes] = []

    def submit(
        self, jobs: list[SealJob | KeypairRetired], packets: Sequence[bytes | PacketRun]
    ) -> tuple[list[SealJob | KeypairRetired], Sequence[bytes | PacketRun]]:
        if not self.take:
            return jobs, packets
        self.jobs += jobs
        self.packets += flat_packets(packets)
        return [], []


def test_drain_sends_datagrams_and_writes_packets_and_empties_the_device() -> None:
    pair = make_pair()
    pair.handshake()
    pair.a.send_packet(pair.a_to_b(b"one"), pair.net.now)
    wire, tun = Wire(), Tun()
    drain(pair.a, wire, tun)
    assert [message_type(d) for d, _ in wire.sent] == [MessageType.TRANSPORT] and wire.sent[0][1] == ENDPOINT_B
    for data, _ in wire.sent:
        pair.b.receive_datagram(data, pair.node_a.endpoint, pair.net.now)
    b_tun = Tun()
    drain(pair.b, Wire(), b_tun)
    assert len(b_tun.packets) == 1 and b_tun.packets[0].endswith(b"one")
    assert pair.a.datagrams_to_send() == [] and pair.b.packets_to_tun() == []


def test_jobs_nobody_takes_are_sealed_by_the_drain_as_inline_sealing_would() -> None:
    inline, offload = make_pair(seed=2), make_pair(seed=2)
    inline.handshake()
    offload.handshake()
    offload.a.seal_offload = True
    for pair in (inline, offload):
        pair.a.send_packets([pair.a_to_b(bytes([n])) for n in range(4)], pair.net.now)
    expected, got = Wire(), Wire()
    drain(inline.a, expected, Tun())
    drain(offload.a, got, Tun(), Worker(take=False))
    assert got.sent == expected.sent and len(got.sent) == 4


def test_a_worker_that_takes_the_jobs_gets_them_in_order_with_the_packets() -> None:
    pair = make_pair()
    pair.handshake()
    pair.a.seal_offload = True
    pair.a.send_packet(pair.a_to_b(b"z"), pair.net.now)
    wire, tun, worker = Wire(), Tun(), Worker(take=True)
    drain(pair.a, wire, tun, worker)
    assert wire.sent == [] and tun.packets == []
    assert len(worker.jobs) == 1 and isinstance(worker.jobs[0], SealJob)
    run_seal_jobs(worker.jobs, wire)
    assert len(wire.sent) == 1 and message_type(wire.sent[0][0]) == MessageType.TRANSPORT


def test_no_packet_sink_discards_the_packets() -> None:
    pair = make_pair()
    pair.handshake()
    pair.send_a(b"q")  # MemoryNetwork drains B into its node already
    pair.b._packets.append(b"left over")
    drain(pair.b, Wire(), None)
    assert pair.b.packets_to_tun() == []


class RunTun(Tun):
    """A sink that takes runs whole (as the tunnel does) and records what came in which form."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[bytes]]] = []

    def write_packets(self, packets: Sequence[bytes]) -> None:
        super().write_packets(packets)
        self.calls.append(("packets", list(packets)))

    def write_run(self, run: PacketRun) -> None:
        self.packets += run.packets()
        self.calls.append(("run", run.packets()))


def _with_runs() -> tuple[object, list[bytes], PacketRun, PacketRun]:
    """A device whose output holds two packets, a run, a packet and a run at the end (as ``receive_gro`` leaves
    them: each run at its place among the packets)."""
    pair = make_pair()
    device = pair.b
    first = PacketRun(b"AAAAaaaaAAxx", 3, 4, 4, 2)
    second = PacketRun(b"BBBBbbbb", 2, 4, 4)
    device._packets += [b"p1", b"p2"]
    device._runs.append((2, first))
    device._packets.append(b"p3")
    device._runs.append((3, second))
    return device, [b"p1", b"p2", b"AAAA", b"aaaa", b"AA", b"p3", b"BBBB", b"bbbb"], first, second


def test_runs_stay_whole_for_a_sink_that_takes_them_and_keep_their_place() -> None:
    device, expected, first, second = _with_runs()
    tun = RunTun()
    assert device.runs_pending  # type: ignore[attr-defined]
    drain(device, Wire(), tun)  # type: ignore[arg-type]
    assert tun.packets == expected
    assert tun.calls == [
        ("packets", [b"p1", b"p2"]),
        ("run", first.packets()),
        ("packets", [b"p3"]),
        ("run", second.packets()),
    ]
    assert not device.runs_pending and device.packets_to_tun() == []  # type: ignore[attr-defined]


def test_runs_become_packets_for_a_plain_sink_a_worker_and_packets_to_tun() -> None:
    device, expected, _, _ = _with_runs()
    tun = Tun()
    drain(device, Wire(), tun)  # type: ignore[arg-type]
    assert tun.packets == expected
    device, expected, _, _ = _with_runs()
    worker = Worker(take=True)
    drain(device, Wire(), Tun(), worker)  # type: ignore[arg-type]
    assert worker.packets == expected
    device, expected, _, _ = _with_runs()
    assert device.packets_to_tun() == expected  # type: ignore[attr-defined]
    assert flat_packets([b"x", PacketRun(b"yz", 2, 1, 1)]) == [b"x", b"y", b"z"]
