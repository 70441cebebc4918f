"""``Device.send_run`` (a TSO read sealed where it lies) against ``send_packets`` of the same packets.

The oracle is the per-packet send path of the core: two devices built from the same seeds, in the same state, get
the same packets, one as a ``PacketRun`` through ``send_run``, the other as ``run.packets()`` through
``send_packets``. Everything they leave must be equal: the transport messages (inline, or sealed from the seal jobs
with both ``SealJob.run`` and ``SealJob.run_into``), the datagrams, drops, counters and the state of peers, keypairs,
timers and staged packets. The runs are real TSO reads (``tun.offload.gso_split_into``) and made-up layouts that
must leave the fast path: packets for another peer or for no peer, a broken header, a buffer that is not zero
padded, a stride too short for the padding, a plaintext filter without run checks, no session, a counter near its
limit. With the mesh filter, a run goes whole when its flow is tracked and no segment closes it; the filters' states
are compared too.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import (
    ADDR_A,
    ADDR_A6,
    ADDR_B,
    ADDR_B6,
    Pair,
    ipv4_packet,
    ipv6_packet,
    make_pair,
    twin_state,
)
from support.meshfilter import FIN, CountingFilter, filter_state, mesh_filter, open_flow

from tun.offload import VirtioNetHdr, gso_split_into
from wgpy.device import Device
from wgpy.events import Endpoint
from wgpy.keys import PublicKey
from wgpy.mesh import PacketFilter
from wgpy.packetrun import PacketRun, uniform_destination
from wgpy.send import SealJob

pytest.importorskip("numpy", reason="TSO runs need numpy")


_HANDSHAKE_PACKETS = 1  # ``Pair.handshake`` sends one packet from A


def _session(*, offload: bool, mtu: int = 1420, established: bool = True) -> Pair:
    pair = make_pair()
    pair.a.mtu = mtu
    if established:
        pair.handshake()
    pair.a.seal_offload = offload
    return pair


def _messages(device: Device) -> list[tuple[bytes, Endpoint]]:
    """Every datagram the device wants sent, the seal jobs' messages made both ways and checked equal."""
    out = list(device.datagrams_to_send())
    if device.seal_offload:
        for job in device.seal_jobs():
            if not isinstance(job, SealJob):
                continue
            sealed = job.run()
            buffer = bytearray(job.sealed_size() + 7)  # a larger buffer: run_into writes only from its start
            sizes = job.run_into(buffer)
            assert sizes == [len(m) for m in sealed]
            assert bytes(buffer[: sum(sizes)]) == b"".join(sealed)
            out += [(message, job.endpoint) for message in sealed]
    return out


def _outputs(device: Device) -> dict[str, Any]:
    return {
        "messages": _messages(device),
        "drops": dict(device.stats.drops),
        "sent": device.stats.packets_sent,
        "state": {**twin_state(device), "pending_datagrams": ()},  # compared as the messages
    }


def _super_packet(v6: bool, payload: bytes, mss: int, seq: int) -> tuple[bytes, VirtioNetHdr]:
    """A TCP super-packet from A to B as an offload TUN read has it (checksum left partial, as the kernel does)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, 1, 5 << 4, 0x18, 502, 0, 0) + payload
    if v6:
        src, dst = (ipaddress.ip_address(a).packed for a in (ADDR_A6, ADDR_B6))
        header = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
        gso_type, ip_len = 4, 40
    else:
        src, dst = (bytes(map(int, a.split("."))) for a in (ADDR_A, ADDR_B))
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 7, 0x4000, 64, 6, 0, src, dst)
        gso_type, ip_len = 1, 20
    return header + tcp, VirtioNetHdr(1, gso_type, ip_len + 20, mss, ip_len, 16)


def _tso_run(v6: bool, payload: bytes, mss: int, seq: int = 1000) -> PacketRun:
    packet, hdr = _super_packet(v6, payload, mss, seq)
    split = gso_split_into(packet, hdr)
    assert split is not None
    buffer, count, stride, size, last_size = split
    return PacketRun(buffer, count, stride, size, last_size, zero_padded=True)


def _same(run: PacketRun, *, offload: bool, mtu: int = 1420, prepare: Any = None) -> tuple[Pair, Pair]:
    """Send ``run`` through ``send_run`` on one pair and its packets through ``send_packets`` on a twin."""
    fast, slow = _session(offload=offload, mtu=mtu), _session(offload=offload, mtu=mtu)
    for pair in (fast, slow):
        if prepare is not None:
            prepare(pair)
        pair.a.datagrams_to_send()
    now = fast.net.now + 0.5
    packets = run.packets()
    fast.a.send_run(run, now)
    slow.a.send_packets(packets, now)
    assert _outputs(fast.a) == _outputs(slow.a)
    return fast, slow


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    v6=st.booleans(),
    size=st.integers(1, 66_000),
    half_mss=st.integers(100, 700),
    offload=st.booleans(),
    mtu=st.sampled_from([1420, 1280, 9000]),
    seq=st.integers(0, 2**32 - 1),
)
def test_a_tso_run_leaves_what_its_segments_leave(
    v6: bool, size: int, half_mss: int, offload: bool, mtu: int, seq: int
) -> None:
    size = min(size, 65_535 - 80)
    payload = bytes((i * 7) & 0xFF for i in range(size))
    run = _tso_run(v6, payload, 2 * half_mss, seq)  # gso_split_into takes an even MSS
    fast, _slow = _same(run, offload=offload, mtu=mtu)
    assert fast.a.stats.packets_sent == len(run) + _HANDSHAKE_PACKETS


def test_the_fast_path_really_takes_a_tso_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TSO run goes to the sealer whole, as one padded run, not through the per-packet path."""
    run = _tso_run(False, bytes(47 * 1368), 1368)
    pair = _session(offload=True)
    monkeypatch.setattr(Device, "send_packets", lambda *args, **kwargs: pytest.fail("per-packet path taken"))
    pair.a.send_run(run, pair.net.now)
    (job,) = [job for job in pair.a.seal_jobs() if isinstance(job, SealJob)]
    assert isinstance(job.plaintexts, PacketRun) and job.plaintexts.buffer is run.buffer
    assert len(job.plaintexts) == 47 and job.plaintexts.size == 1408  # 1368 + 40 of headers, already 16-aligned


def _run_of(packets: list[bytes], stride: int, *, zero_padded: bool = True, fill: int = 0) -> PacketRun:
    """``packets`` (all but the last of one size) laid out at ``stride``; ``fill`` is what lies between them."""
    buffer = bytearray([fill]) * (len(packets) * stride)
    for i, packet in enumerate(packets):
        buffer[i * stride : i * stride + len(packet)] = packet
    return PacketRun(bytes(buffer), len(packets), stride, len(packets[0]), len(packets[-1]), zero_padded=zero_padded)


def _packets_to(destinations: list[str], size: int, last: int) -> list[bytes]:
    out = []
    for i, destination in enumerate(destinations):
        length = last if i == len(destinations) - 1 else size
        if ":" in destination:
            out.append(ipv6_packet(ADDR_A6, destination, bytes([i & 0xFF]) * (length - 40)))
        else:
            out.append(ipv4_packet(ADDR_A, destination, bytes([i & 0xFF]) * (length - 20)))
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    count=st.integers(1, 12),
    v6=st.booleans(),
    size=st.integers(60, 1500),
    last_cut=st.integers(0, 40),
    odd=st.sampled_from(["none", "other", "unrouted", "broken", "longer-total"]),
    where=st.integers(0, 11),
    slack=st.sampled_from([0, 16, 40]),
    zero_padded=st.booleans(),
    offload=st.booleans(),
    mtu=st.sampled_from([1420, 1280]),
)
def test_any_run_leaves_what_its_packets_leave(
    count: int,
    v6: bool,
    size: int,
    last_cut: int,
    odd: str,
    where: int,
    slack: int,
    zero_padded: bool,
    offload: bool,
    mtu: int,
) -> None:
    peer_b, other = (ADDR_B6, "fd00::7") if v6 else (ADDR_B, "10.0.0.7")
    destinations = [peer_b] * count
    where %= count
    if odd == "other":
        destinations[where] = other  # routed to C below
    elif odd == "unrouted":
        destinations[where] = "fd00::99" if v6 else "10.9.9.9"
    packets = _packets_to(destinations, size, max(size - last_cut, 41 if v6 else 21))
    if odd == "broken":
        packets[where] = b"\x00" + packets[where][1:]  # no IP version: INVALID_IP_PACKET on the per-packet path
    elif odd == "longer-total" and where < count - 1:
        packet = bytearray(packets[where])
        offset = 4 if v6 else 2
        total = int.from_bytes(packet[offset : offset + 2], "big")
        packet[offset : offset + 2] = (total - 1).to_bytes(2, "big")  # a valid header, shorter than its slot
        packets[where] = bytes(packet)
    stride = -(-size // 16) * 16 + slack - (16 if slack == 40 and size % 16 else 0)
    stride = max(stride, size)
    run = _run_of(packets, stride, zero_padded=zero_padded, fill=0 if zero_padded else 0xAB)

    def add_c(pair: Pair) -> None:
        c_key = PublicKey(bytes(range(32)))
        pair.a.add_peer(c_key, endpoint=("192.0.2.3", 51820), allowed_ips=[f"{other}/{128 if v6 else 32}"])

    _same(run, offload=offload, mtu=mtu, prepare=add_c)


def test_a_run_for_a_peer_without_session_is_staged_and_starts_one_handshake() -> None:
    run = _tso_run(False, bytes(5000), 1000)
    fast, slow = (_session(offload=True, established=False) for _ in range(2))
    now = fast.net.now
    fast.a.send_run(run, now)
    slow.a.send_packets(run.packets(), now)
    assert _outputs(fast.a) == _outputs(slow.a)
    assert len(fast.peer_b.staged) == 5


def test_a_run_through_a_plaintext_filter_is_checked_packet_by_packet() -> None:
    seen: list[bytes] = []

    class EveryOther:
        def check_outbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool:
            seen.append(packet)
            return len(seen) % 2 == 1

        def check_inbound(self, packet: bytes, peer_public_key: PublicKey | None, now: float) -> bool:
            return True

    run = _tso_run(False, bytes(10 * 1000), 1000)

    def with_filter(pair: Pair) -> None:
        pair.a.packet_filter = EveryOther()

    fast, _slow = _same(run, offload=True, prepare=with_filter)
    assert len(seen) == 2 * len(run)  # both devices: each packet once
    assert fast.a.stats.packets_sent == 5 + _HANDSHAKE_PACKETS


def test_a_run_at_the_counter_limit_seals_what_the_counter_allows_and_stages_the_rest() -> None:
    run = _tso_run(True, bytes(20 * 1000), 1000)

    def near_limit(pair: Pair) -> None:
        keypair = pair.peer_b.keypairs.current
        assert keypair is not None
        pair.a.reject_after_messages = keypair.send_counter + 7

    for offload in (False, True):
        fast, _slow = _same(run, offload=offload, prepare=near_limit)
        assert fast.a.stats.packets_sent == 7 + _HANDSHAKE_PACKETS
        assert len(fast.peer_b.staged) == 13


def test_uniform_destination_is_none_unless_every_packet_has_that_destination() -> None:
    same = _run_of(_packets_to([ADDR_B] * 4, 100, 60), 112)
    assert uniform_destination(same) == bytes([10, 0, 0, 2])
    for i in range(4):
        destinations = [ADDR_B] * 4
        destinations[i] = "10.0.0.3"
        assert uniform_destination(_run_of(_packets_to(destinations, 100, 60), 112)) is None
    v6 = _run_of(_packets_to([ADDR_B6] * 3, 200, 200), 208)
    assert uniform_destination(v6) == ipaddress.ip_address(ADDR_B6).packed


# --- through the mesh filter --------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["established", "new", "none", "closed", "expired"])
@pytest.mark.parametrize("fin", [False, True])
@pytest.mark.parametrize("v6", [False, True])
def test_a_run_through_the_mesh_filter_leaves_what_its_packets_leave(state: str, fin: bool, v6: bool) -> None:
    """With A's mesh filter: the devices' outputs and the filters' states are equal either way; the run goes
    whole exactly when its flow is tracked in A's direction and no segment carries FIN (the TSO split puts the
    super-packet's FIN on its last segment)."""
    packet, hdr = _super_packet(v6, bytes(10 * 1000), 1000, 1000)
    if fin:
        flags = hdr.csum_start + 13
        packet = packet[:flags] + bytes([packet[flags] | FIN]) + packet[flags + 1 :]
    split = gso_split_into(packet, hdr)
    assert split is not None
    run = PacketRun(*split, zero_padded=True)
    filters: list[PacketFilter] = []
    counting: list[CountingFilter] = []

    def with_filter(pair: Pair) -> None:
        key_a, key_b = pair.a.public_key, pair.b.public_key
        assert key_a is not None and key_b is not None
        packet_filter = mesh_filter(key_a, key_b)
        open_flow(packet_filter, key_b, "established" if state == "expired" else state, 0.0, v6=v6)
        if state == "expired":
            packet_filter.set_deadline(0.0)
        filters.append(packet_filter)
        counting.append(CountingFilter(packet_filter))
        pair.a.packet_filter = counting[-1]

    fast, _slow = _same(run, offload=True, prepare=with_filter)
    assert filter_state(filters[0]) == filter_state(filters[1])
    whole = state in ("established", "new") and not fin
    assert (counting[0].runs, len(counting[0].checked)) == ((1, 0) if whole else (0, len(run)))
    assert len(counting[1].checked) == len(run)  # the twin, packet by packet
    sent = 0 if state == "expired" else len(run)  # the rule lets A open the flow; closed flows pass until a SYN
    assert fast.a.stats.packets_sent == sent + _HANDSHAKE_PACKETS
