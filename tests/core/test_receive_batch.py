"""``Device.receive_datagrams`` (the batched receive path) against ``receive_datagram`` one datagram at a time.

The oracle is the per-datagram path of the core: two devices built from the same seeds get the same datagrams,
one through ``receive_datagram`` each, the other through ``receive_datagrams`` in batches cut at random places;
everything they leave must be equal (packets for the TUN device, datagrams to send, events, drops, and the state of
peers, keypairs, replay windows and timers). The datagrams are a real session's (a handshake, then transport
messages from the initiator) with faults mixed in: replays, reordering, corrupted tags, unknown indices, bad
lengths, other message types, a roaming endpoint, inner packets from a source the peer may not use, keepalives,
and a counter at the reject limit. The unconfirmed ``next`` keypair of the responder is confirmed inside a batch.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import (
    ADDR_A,
    ADDR_B,
    ADDR_B6,
    ENDPOINT_A,
    Pair,
    det_rng,
    ipv4_packet,
    ipv6_packet,
    make_pair,
    private_key,
    twin_state,
)

from wgpy.device import Device
from wgpy.errors import DropReason
from wgpy.events import Endpoint

ROAMED: Endpoint = ("198.51.100.7", 4000)
NOW_STEP = 0.001


def _session(persistent_keepalive: int) -> tuple[Pair, bytes]:
    """A pair where A's initiation was answered: A has a current keypair, B an unconfirmed ``next`` one.
    Returns the pair and B's response (already delivered to A)."""
    pair = make_pair()
    now = pair.net.now
    pair.a.send_packet(pair.a_to_b(b"first"), now)
    (initiation, _), *_ = pair.a.datagrams_to_send()
    pair.b.receive_datagram(initiation, ENDPOINT_A, now)
    (response, _), *_ = pair.b.datagrams_to_send()
    pair.a.receive_datagram(response, ("192.0.2.2", 51820), now)
    if persistent_keepalive:
        pair.b.set_persistent_keepalive(pair.peer_a, persistent_keepalive, now)
    return pair, response


def _traffic(pair: Pair, response: bytes, rng: random.Random) -> list[tuple[bytes, Endpoint]]:
    """What B receives: the session's transport messages with faults mixed in."""
    now = pair.net.now
    a = pair.a
    packets: list[bytes] = []
    for n in range(rng.randint(1, 40)):
        kind = rng.random()
        if kind < 0.1:
            packets.append(ipv4_packet("10.9.9.9", ADDR_B, b"not from A's allowed ips"))  # routed, then refused
        elif kind < 0.2:
            packets.append(ipv6_packet("fd00::1", ADDR_B6, bytes(rng.randrange(256) for _ in range(n))))
        else:
            packets.append(ipv4_packet(ADDR_A, ADDR_B, rng.randbytes(rng.randint(0, 1400))))
    a.send_packets(packets, now)
    peer_b = pair.peer_b
    if rng.random() < 0.5:
        a._send_keepalive(peer_b, now)  # an empty transport message
    sent = [data for data, _ in a.datagrams_to_send()]
    out: list[tuple[bytes, Endpoint]] = []
    for data in sent:
        endpoint = ROAMED if rng.random() < 0.1 else ENDPOINT_A
        fault = rng.random()
        if fault < 0.05:
            out.append((data, endpoint))
            out.append((data, endpoint))  # replayed at once
        elif fault < 0.1:
            corrupted = bytearray(data)
            corrupted[-1] ^= 0x01
            out.append((bytes(corrupted), endpoint))
        elif fault < 0.13:
            out.append((data[:4] + b"\xee\xee\xee\xee" + data[8:], endpoint))  # unknown receiver index
        elif fault < 0.16:
            out.append((data[: rng.randint(0, 31)], endpoint))  # too short for transport
        elif fault < 0.19:
            out.append((response, endpoint))  # a handshake message in the middle of a run
        elif fault < 0.21:
            out.append((b"\x09\x00\x00\x00" + data[4:], endpoint))  # no such type
        elif fault < 0.24:
            limit = pair.b.reject_after_messages
            out.append((data[:8] + limit.to_bytes(8, "little") + data[16:], endpoint))  # counter at the limit
        else:
            out.append((data, endpoint))
    if len(out) > 2 and rng.random() < 0.5:
        i, j = rng.randrange(len(out)), rng.randrange(len(out))
        out[i], out[j] = out[j], out[i]  # reordered (within the replay window)
    out.extend(rng.sample(out, min(3, len(out))))  # late duplicates
    return out


def _outputs(pair: Pair) -> dict[str, Any]:
    b = pair.b
    return {
        "packets": b.packets_to_tun(),
        "datagrams": b.datagrams_to_send(),
        "events": pair.events(b),
        "drops": dict(b.stats.drops),
        "state": twin_state(b),
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), cuts=st.lists(st.integers(0, 200), max_size=8), keepalive=st.sampled_from([0, 25]))
def test_batches_leave_what_single_datagrams_leave(seed: int, cuts: list[int], keepalive: int) -> None:
    one, response_one = _session(keepalive)
    batched, response_batched = _session(keepalive)
    assert response_one == response_batched  # same seeds, same session: the two devices start equal
    for step in range(3):  # the second and third rounds run on the confirmed keypair
        rng_one, rng_batched = random.Random(seed + step), random.Random(seed + step)
        traffic = _traffic(one, response_one, rng_one)
        assert traffic == _traffic(batched, response_batched, rng_batched)
        now = one.net.now + step * NOW_STEP
        for data, endpoint in traffic:
            one.b.receive_datagram(data, endpoint, now)
        bounds = sorted({0, len(traffic), *(c % (len(traffic) + 1) for c in cuts)})
        for start, end in itertools.pairwise(bounds):
            batched.b.receive_datagrams(traffic[start:end], now)
        assert _outputs(batched) == _outputs(one)


def test_a_run_is_delivered_in_order_and_counted() -> None:
    pair, _ = _session(0)
    now = pair.net.now
    payloads = [bytes([n]) * (100 + n) for n in range(30)]
    pair.a.send_packets([pair.a_to_b(p) for p in payloads], now)
    datagrams = [(data, ENDPOINT_A) for data, _ in pair.a.datagrams_to_send()]
    pair.b.receive_datagrams(datagrams, now)
    # "first" waited on A for the session and went out ahead of the others
    assert pair.b.packets_to_tun() == [pair.a_to_b(p) for p in [b"first", *payloads]]
    assert pair.b.stats.packets_received == 31
    assert pair.peer_a.rx_bytes == sum(len(d) for d, _ in datagrams) + 148  # and the initiation's 148 bytes
    assert pair.peer_a.keypairs.current is not None and pair.peer_a.keypairs.next is None  # confirmed
    assert pair.b.stats.drops == {}


def test_an_empty_batch_changes_nothing() -> None:
    pair, _ = _session(0)
    before = twin_state(pair.b)
    pair.b.receive_datagrams([], pair.net.now)
    assert twin_state(pair.b) == before
    assert ADDR_A  # the helpers' addresses are the pair's


def test_a_device_that_wraps_receive_datagram_sees_every_datagram_of_a_batch() -> None:
    seen: list[bytes] = []

    class Watching(Device):
        def receive_datagram(self, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None) -> None:
            seen.append(data)
            super().receive_datagram(data, endpoint, now, wall_ns)

    device = Watching(private_key(9), rng=det_rng(9))
    batch: list[tuple[bytes, Endpoint]] = [(b"\x04\x00\x00\x00" + bytes(28), ENDPOINT_A), (b"", ENDPOINT_A)]
    device.receive_datagrams(batch, 1.0)
    assert seen == [data for data, _ in batch]
    assert device.stats.drops == {DropReason.UNKNOWN_INDEX: 1, DropReason.BAD_LENGTH: 1}
