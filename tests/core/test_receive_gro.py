"""``Device.receive_gro`` (one UDP GRO read at a time) against ``receive_datagrams`` on the read cut into datagrams.

The oracle is the batched path, itself checked against ``receive_datagram`` one datagram at a time in
``test_receive_batch.py``: two devices built from the same seeds, with the same session, get the same reads; one
through ``receive_gro``, the other through ``receive_datagrams`` on the read's datagrams. After every read
everything they leave must be equal: packets for the TUN device, datagrams to send, events, drops, and the state of
peers, keypairs, replay windows and timers.

The reads are sealed with the sender's real keypair, one message per row at one segment size, with faults: rows
swapped or duplicated, one bit flipped anywhere in a row (header, counter, ciphertext or tag), a wrong receiver
index, counter gaps inside the read and before it (a gap past the replay window too), a read replayed at once or
later, the message limit inside the read, a keypair too old, a roaming endpoint, keepalive rows, inner packets
with padding or from a source the peer may not use, and a last datagram that is shorter (a transport message of
the run or of another index, a keepalive, a handshake message, junk).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.helpers import (
    ADDR_A,
    ADDR_B,
    ADDR_B6,
    ENDPOINT_A,
    ENDPOINT_B,
    Pair,
    det_rng,
    ipv4_packet,
    ipv6_packet,
    make_pair,
    private_key,
    twin_state,
)
from support.meshfilter import FIN, TCP, UDP, CountingFilter, filter_state, flow_packet, mesh_filter, open_flow

from wgpy.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from wgpy.device import Device
from wgpy.errors import DropReason
from wgpy.events import Endpoint
from wgpy.keypair import Keypair
from wgpy.packetrun import PacketRun
from wgpy.receive import RUN_MIN_ROWS
from wgpy.send import pad

ROAMED: Endpoint = ("198.51.100.7", 4000)
GRO_MAX_BYTES = 65535
GRO_MAX_SEGMENTS = 64
TRANSPORT_OVERHEAD = 32  # header and tag


def _session() -> tuple[Pair, Keypair, bytes]:
    """A pair where A's initiation was answered: A has a current keypair (returned), B an unconfirmed ``next``
    one. A's first packet (counter 0) is sealed and never delivered. Also returns B's response."""
    pair = make_pair()
    now = pair.net.now
    pair.a.send_packet(pair.a_to_b(b"first"), now)
    (initiation, _), *_ = pair.a.datagrams_to_send()
    pair.b.receive_datagram(initiation, ENDPOINT_A, now)
    (response, _), *_ = pair.b.datagrams_to_send()
    pair.a.receive_datagram(response, ENDPOINT_B, now)
    pair.a.datagrams_to_send()
    keypair = pair.peer_b.keypairs.current
    assert keypair is not None
    return pair, keypair, response


def _outputs(device: Device) -> dict[str, Any]:
    events = []
    while (event := device.next_event()) is not None:
        events.append(event)
    return {
        "packets": device.packets_to_tun(),
        "datagrams": device.datagrams_to_send(),
        "events": events,
        "drops": dict(device.stats.drops),
        "wall": device._wall_offset_ns,
        "state": twin_state(device),
    }


def _plaintext(rng: random.Random, size: int, exact: bool) -> bytes:
    """A padded plaintext of ``size`` bytes (0: a keepalive): mostly a packet from A, padded with zeros unless
    ``exact``; now and then one from a source A may not use, an IPv6 one, or no IP packet at all (always below 20
    bytes)."""
    if size < 20:
        return rng.randbytes(size)  # a keepalive, or too short for an IP header
    length = size if exact else max(20, size - rng.randrange(16))
    kind = rng.random()
    if kind < 0.05:
        packet = ipv4_packet("10.9.9.9", ADDR_B, rng.randbytes(length - 20))
    elif kind < 0.1 and length >= 40:
        packet = ipv6_packet("fd00::1", ADDR_B6, rng.randbytes(length - 40))
    elif kind < 0.13:
        packet = rng.randbytes(length)
    else:
        packet = ipv4_packet(ADDR_A, ADDR_B, rng.randbytes(length - 20))
    return packet + bytes(size - length)


def _seal(keypair: Keypair, plaintext: bytes) -> bytes:
    message = keypair.seal(plaintext)
    assert message is not None
    return message


FAULTS = ("swap", "duplicate", "flip", "bad_tag", "wrong_index", "drop_row", "foreign_key")
TAILS = (None, None, "run", "keepalive", "other_index", "handshake", "junk", "tiny")

_fault = st.tuples(st.sampled_from(FAULTS), st.integers(0, 2**16), st.integers(0, 2**16))
_read = st.fixed_dictionaries(
    {
        "count": st.integers(1, GRO_MAX_SEGMENTS),
        "size": st.sampled_from([0, 16, 48, 112, 1024, 1392]),
        "exact": st.booleans(),
        "tail": st.sampled_from(TAILS),
        "faults": st.one_of(st.just([]), st.lists(_fault, max_size=3)),
        "gap": st.sampled_from([0, 0, 0, 1, 7, 9000]),
        "replay": st.sampled_from([None, None, "again", "earlier"]),
        "roamed": st.booleans(),
        "dt": st.sampled_from([0.0, 0.0, 0.0, 0.001, 1.0, REJECT_AFTER_TIME]),
        "limit": st.sampled_from([None, None, None, None, None, 0, 1, 5, 40]),
        "wall": st.booleans(),
        "inner": st.sampled_from(["mixed", "flow", "flow", "flow6"]),
    }
)


def _in_order(read: dict[str, Any], bad_tags: list[tuple[str, int, int]]) -> dict[str, Any]:
    """A read the run path takes (up to its first bad tag): no counter, replay, limit or keypair age fault."""
    return {**read, "faults": bad_tags, "replay": None, "limit": None, "dt": min(read["dt"], 1.0)}


_bad_tags = st.lists(st.tuples(st.just("bad_tag"), st.integers(0, 2**16), st.integers(0, 2**16)), max_size=2)
_run_read = st.builds(_in_order, _read, _bad_tags)

CLEAN_READ: dict[str, Any] = {
    "count": 44,
    "size": 1392,
    "exact": False,
    "tail": None,
    "faults": [],
    "gap": 0,
    "replay": None,
    "roamed": False,
    "dt": 0.0,
    "limit": None,
    "wall": False,
    "inner": "mixed",
}


def _inner(rng: random.Random, read: dict[str, Any]) -> bytes:
    """A row's plaintext: ``_plaintext``'s mix, or for an ``inner`` "flow" ("flow6") read packets from A of one
    length (the read's size, less 8 bytes of padding unless ``exact``), which the run path hands on as a run."""
    size = read["size"]
    if read["inner"] == "mixed" or size < 48:
        return _plaintext(rng, size, read["exact"])
    length = size if read["exact"] else size - 8
    if read["inner"] == "flow6":
        return ipv6_packet("fd00::1", ADDR_B6, rng.randbytes(length - 40)) + bytes(size - length)
    return ipv4_packet(ADDR_A, ADDR_B, rng.randbytes(length - 20)) + bytes(size - length)


def _build(read: dict[str, Any], keypair: Keypair, response: bytes, rng: random.Random) -> tuple[bytes, int]:
    """One GRO read from the spec: the buffer and its segment size."""
    keypair.reserve(read["gap"])
    segment = read["size"] + TRANSPORT_OVERHEAD
    count = min(read["count"], GRO_MAX_BYTES // segment)
    rows = [_seal(keypair, _inner(rng, read)) for _ in range(count)]
    for fault, i, j in read["faults"]:
        i, j = i % len(rows), j % len(rows)
        if fault == "swap":
            rows[i], rows[j] = rows[j], rows[i]
        elif fault == "duplicate":
            rows[i] = rows[j]
        elif fault == "flip":
            bit = (i * 7919 + j) % (segment * 8)
            row = bytearray(rows[i])
            row[bit // 8] ^= 1 << (bit % 8)
            rows[i] = bytes(row)
        elif fault == "bad_tag":
            bit = 128 + (i * 7919 + j) % ((segment - 16) * 8)  # in the ciphertext or the tag
            row = bytearray(rows[i])
            row[bit // 8] ^= 1 << (bit % 8)
            rows[i] = bytes(row)
        elif fault == "wrong_index":
            rows[i] = rows[i][:4] + b"\xee\xee\xee\xee" + rows[i][8:]
        elif fault == "drop_row" and len(rows) > 1:
            del rows[i]  # a counter gap inside the read
        elif fault == "foreign_key":
            # the row's header and counter, under another key: only the tag fails
            forger = Keypair(
                send_key=bytes(32),
                recv_key=bytes(32),
                local_index=0,
                remote_index=keypair.remote_index,
                is_initiator=True,
                now=0.0,
            )
            forger.send_counter = int.from_bytes(rows[i][8:16], "little")
            rows[i] = _seal(forger, rows[i][16:-16])
    tail = read["tail"]
    if tail == "run":
        rows.append(_seal(keypair, _plaintext(rng, max(0, read["size"] - 16), read["exact"])))
    elif tail == "keepalive":
        rows.append(_seal(keypair, b""))
    elif tail == "other_index":
        shorter = _seal(keypair, b"")
        rows.append(shorter[:4] + b"\x01\x02\x03\x04" + shorter[8:])
    elif tail == "handshake" and len(response) < segment:
        rows.append(response)
    elif tail == "junk":
        rows.append(rng.randbytes(rng.randrange(1, segment)))
    elif tail == "tiny":
        rows.append(b"\x04\x00\x00")
    return b"".join(rows), segment


def _datagrams(data: bytes, segment: int, endpoint: Endpoint) -> list[tuple[bytes, Endpoint]]:
    if segment <= 0 or segment >= len(data):
        return [(data, endpoint)]
    return [(data[i : i + segment], endpoint) for i in range(0, len(data), segment)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), reads=st.lists(_read, min_size=1, max_size=6))
@example(seed=1, reads=[CLEAN_READ, {**CLEAN_READ, "tail": "run", "size": 0}, {**CLEAN_READ, "replay": "again"}])
def test_a_gro_read_leaves_what_its_datagrams_leave(seed: int, reads: list[dict[str, Any]]) -> None:
    _compare(seed, reads)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), reads=st.lists(_run_read, min_size=1, max_size=6))
def test_a_read_of_one_run_leaves_what_its_datagrams_leave(seed: int, reads: list[dict[str, Any]]) -> None:
    """The same for reads the run path takes: in order (gaps before the read only), with bad tags and tails."""
    _compare(seed, reads)


def _compare(seed: int, reads: list[dict[str, Any]]) -> None:
    pair, keypair, response = _session()
    reference, _, _ = _session()
    gro, ref = pair.b, reference.b
    assert _outputs(gro) == _outputs(ref)  # same seeds, same session: the two devices start equal
    rng = random.Random(seed)
    now = pair.net.now
    sent: list[tuple[bytes, int]] = []
    for read in reads:
        data, segment = _build(read, keypair, response, rng)
        sent.append((data, segment))
        now += read["dt"]
        endpoint = ROAMED if read["roamed"] else ENDPOINT_A
        wall = 10**18 + int(now * 1e6) if read["wall"] else None
        feeds = [(data, segment)]
        if read["replay"] == "again":
            feeds.append((data, segment))
        elif read["replay"] == "earlier":
            feeds.append(sent[rng.randrange(len(sent))])
        if read["limit"] is not None:
            gro.reject_after_messages = ref.reject_after_messages = keypair.send_counter - read["limit"]
        for buffer, size in feeds:
            gro.receive_gro(buffer, size, endpoint, now, wall)
            ref.receive_datagrams(_datagrams(buffer, size, endpoint), now, wall)
            assert _outputs(gro) == _outputs(ref)
        gro.reject_after_messages = ref.reject_after_messages = REJECT_AFTER_MESSAGES


# --- the run path is taken, and only when it may be ---------------------------------------------------------------


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The counters that ``Keypair.open`` (the per-message path) opens."""
    seen: list[int] = []
    original = Keypair.open

    def counting(self: Keypair, counter: int, message: bytes | memoryview) -> bytes:
        seen.append(counter)
        return original(self, counter, message)

    monkeypatch.setattr(Keypair, "open", counting)
    return seen


def _clean_read(keypair: Keypair, count: int, size: int) -> tuple[bytes, list[bytes]]:
    rng = random.Random(count)
    packets = [ipv4_packet(ADDR_A, ADDR_B, rng.randbytes(size - 20)) for _ in range(count)]
    return b"".join(_seal(keypair, p) for p in packets), packets


def test_a_clean_read_is_opened_as_one_run(opens: list[int]) -> None:
    pair, keypair, _ = _session()
    reference, _, _ = _session()
    data, packets = _clean_read(keypair, 44, 1392)
    pair.b.receive_gro(data, 1424, ENDPOINT_A, pair.net.now)
    assert opens == []  # no message went through Keypair.open
    reference.b.receive_datagrams(_datagrams(data, 1424, ENDPOINT_A), pair.net.now)
    assert opens == list(range(1, 45))
    out = _outputs(pair.b)
    assert out == _outputs(reference.b)
    assert out["packets"] == packets  # what the sender sealed
    pair.b.receive_gro(data, 1424, ENDPOINT_A, pair.net.now)  # again: all replayed
    assert pair.b.stats.drops == {DropReason.REPLAYED_COUNTER: 44}
    assert pair.peer_a.rx_bytes == 148 + 44 * 1424
    assert pair.b.stats.packets_received == 44
    assert pair.peer_a.keypairs.current is not None and pair.peer_a.keypairs.next is None  # confirmed
    assert pair.peer_a.keypairs.current.replay.greatest == 44


def test_the_rows_after_a_bad_tag_go_one_by_one(opens: list[int]) -> None:
    pair, keypair, _ = _session()
    data, packets = _clean_read(keypair, 10, 100)
    tail = _seal(keypair, b"")  # a keepalive: the short last datagram, part of the run
    corrupted = bytearray(data + tail)
    corrupted[6 * 132 + 50] ^= 0x10  # row 6's ciphertext
    pair.b.receive_gro(bytes(corrupted), 132, ENDPOINT_A, pair.net.now)
    assert opens == [7, 8, 9, 10, 11]  # row 6 failed in the run (counter 7); from there one by one
    assert pair.b.stats.drops == {DropReason.INVALID_AEAD_TAG: 1}
    assert pair.b.packets_to_tun() == packets[:6] + packets[7:]
    assert pair.peer_a.rx_bytes == 148 + 9 * 132 + 32


@pytest.mark.parametrize(
    ("case", "drops"),
    [
        ("swapped", {}),
        ("unknown_index", {DropReason.UNKNOWN_INDEX: 5}),
        ("behind_window", {DropReason.REPLAYED_COUNTER: 5}),
        ("at_limit", {DropReason.KEYPAIR_EXPIRED: 1}),
    ],
)
def test_a_read_the_run_path_cannot_take_goes_one_by_one(case: str, drops: dict[DropReason, int]) -> None:
    pair, keypair, _ = _session()
    rows = [_seal(keypair, ipv4_packet(ADDR_A, ADDR_B, bytes(12))) for _ in range(5)]  # 64 bytes each
    if case == "swapped":
        rows[1], rows[2] = rows[2], rows[1]
    elif case == "unknown_index":
        rows = [row[:4] + b"\xee\xee\xee\xee" + row[8:] for row in rows]
    elif case == "behind_window":
        pair.b.receive_datagrams([(row, ENDPOINT_A) for row in rows], pair.net.now)
        pair.b.packets_to_tun()
        pair.b.stats.drops.clear()
    elif case == "at_limit":
        pair.b.reject_after_messages = 5  # the counters are 1..5
    received_before = pair.b.stats.packets_received
    pair.b.receive_gro(b"".join(rows), 64, ENDPOINT_A, pair.net.now)
    assert dict(pair.b.stats.drops) == drops
    assert pair.b.stats.packets_received - received_before == 5 - sum(drops.values())


def test_a_single_datagram_and_a_short_read(opens: list[int]) -> None:
    pair, keypair, _ = _session()
    packet = ipv4_packet(ADDR_A, ADDR_B, bytes(12))
    one = _seal(keypair, packet)
    pair.b.receive_gro(one, 0, ENDPOINT_A, pair.net.now)
    pair.b.receive_gro(one, len(one), ENDPOINT_A, pair.net.now)  # a segment as long as the read: one datagram
    two = _seal(keypair, packet) + _seal(keypair, b"")  # one full row and a shorter one
    pair.b.receive_gro(two, 64, ENDPOINT_A, pair.net.now)
    assert opens == [1, 2, 3]  # the second copy of the first fails the replay check before any AEAD
    assert pair.b.stats.drops == {DropReason.REPLAYED_COUNTER: 1}
    assert pair.b.stats.packets_received == 3


def test_a_device_that_wraps_receive_datagram_sees_every_datagram_of_a_read() -> None:
    seen: list[bytes] = []

    class Watching(Device):
        def receive_datagram(self, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None) -> None:
            seen.append(data)
            super().receive_datagram(data, endpoint, now, wall_ns)

    device = Watching(private_key(9), rng=det_rng(9))
    rows = [b"\x04\x00\x00\x00\x01\x00\x00\x00" + n.to_bytes(8, "little") + bytes(32) for n in range(3)]
    device.receive_gro(b"".join(rows) + b"\x04", 48, ENDPOINT_A, 1.0, 5 * 10**18)
    assert seen == [*rows, b"\x04"]
    assert device.stats.drops == {DropReason.UNKNOWN_INDEX: 3, DropReason.BAD_LENGTH: 1}
    assert device._wall_offset_ns == 5 * 10**18 - 10**9


@pytest.mark.parametrize("size", [1392, 1000])
def test_a_clean_read_of_one_inner_flow_is_handed_on_as_one_run(size: int) -> None:
    """The read's plaintexts stay in one buffer: the device's output holds one ``PacketRun`` of the inner packets
    (a 1,000-byte packet sits in a 1,008-byte padded slot), which ``packets_to_tun`` gives as those packets."""
    pair, keypair, _ = _session()
    reference, _, _ = _session()
    rng = random.Random(size)
    packets = [ipv4_packet(ADDR_A, ADDR_B, rng.randbytes(size - 20)) for _ in range(20)]
    data = b"".join(_seal(keypair, pad(p, 1420)) for p in packets)
    segment = len(data) // 20
    pair.b.receive_gro(data, segment, ENDPOINT_A, pair.net.now)
    reference.b.receive_datagrams(_datagrams(data, segment, ENDPOINT_A), pair.net.now)
    assert pair.b.runs_pending
    (run,) = pair.b.packet_items_to_tun()
    assert isinstance(run, PacketRun) and (run.packets_in, run.stride, run.size) == (20, segment - 32, size)
    assert run.packets() == packets
    assert reference.b.packets_to_tun() == packets


def test_a_read_from_a_source_the_peer_may_not_use_is_not_a_run() -> None:
    pair, keypair, _ = _session()
    packets = [ipv4_packet("10.9.9.9", ADDR_B, bytes(100)) for _ in range(RUN_MIN_ROWS)]
    data = b"".join(_seal(keypair, p) for p in packets)
    pair.b.receive_gro(data, len(data) // RUN_MIN_ROWS, ENDPOINT_A, pair.net.now)
    assert not pair.b.runs_pending and pair.b.packets_to_tun() == []
    assert pair.b.stats.drops == {DropReason.DISALLOWED_SOURCE_IP: RUN_MIN_ROWS}


def test_a_read_of_fewer_rows_than_run_min_rows_is_handed_on_as_packets() -> None:
    pair, keypair, _ = _session()
    packets = [ipv4_packet(ADDR_A, ADDR_B, bytes(100)) for _ in range(RUN_MIN_ROWS - 1)]
    data = b"".join(_seal(keypair, p) for p in packets)
    pair.b.receive_gro(data, len(data) // len(packets), ENDPOINT_A, pair.net.now)
    assert not pair.b.runs_pending and pair.b.packets_to_tun() == packets


# --- through the mesh filter --------------------------------------------------------------------------------------


@pytest.mark.parametrize("state", ["established", "new", "none", "expired", "udp-established"])
@pytest.mark.parametrize("fin_row", [None, 0, 20, 43])
def test_a_run_through_the_mesh_filter_leaves_what_its_packets_leave(state: str, fin_row: int | None) -> None:
    """With B's mesh filter: outputs and filter states are equal to the per-datagram path's, and the run is handed
    on whole (no per-packet filter check) exactly when its flow is tracked in A's direction and no row has FIN."""
    pair, keypair, _ = _session()
    reference, _, _ = _session()
    key_a, key_b = pair.a.public_key, pair.b.public_key
    assert key_a is not None and key_b is not None
    filters = []
    for _twin in range(2):
        packet_filter = mesh_filter(key_a, key_b)
        open_flow(packet_filter, key_a, "established" if state == "expired" else state, 0.0, side="b")
        if state == "expired":
            packet_filter.set_deadline(0.0)
        filters.append(packet_filter)
    counting = CountingFilter(filters[0])
    pair.b.packet_filter = counting
    reference.b.packet_filter = filters[1]
    proto = UDP if state.startswith("udp") else TCP
    packets = [flow_packet(proto=proto, length=1392, seq=1 + i * 1352, ident=i) for i in range(44)]
    if fin_row is not None and proto == TCP:
        packets[fin_row] = flow_packet(proto=proto, length=1392, flags=0x10 | FIN, ident=fin_row)
    data = b"".join(_seal(keypair, p) for p in packets)
    pair.b.receive_gro(data, 1424, ENDPOINT_A, pair.net.now)
    reference.b.receive_datagrams(_datagrams(data, 1424, ENDPOINT_A), pair.net.now)
    assert _outputs(pair.b) == _outputs(reference.b)
    assert filter_state(filters[0]) == filter_state(filters[1])
    whole = state in ("established", "new", "udp-established") and (fin_row is None or proto == UDP)
    assert (counting.runs, len(counting.checked)) == ((1, 0) if whole else (0, 44))
