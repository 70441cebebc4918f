"""The send path (kernel send.c, wireguard-go send.go): route -> stage -> send staged -> seal, one keep-key-fresh,
and the two sealers behind one interface."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from support.helpers import ENDPOINT_A, ENDPOINT_B, make_device, make_pair, message_type, private_key

from wgpy.constants import REKEY_AFTER_TIME, REKEY_TIMEOUT
from wgpy.errors import DropReason
from wgpy.keypair import MESSAGE_PADDING_MULTIPLE, padded_length
from wgpy.messages import MessageType
from wgpy.send import KeypairRetired, SealJob, pad


def kinds(datagrams: Sequence[tuple[bytes, object]]) -> list[int]:
    return [message_type(data) for data, _ in datagrams]


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 100, 1419, 1420])
def test_pad_is_a_multiple_of_16_never_past_the_mtu_and_idempotent(length: int) -> None:
    packet = bytes(range(256)) * 6
    packet = packet[:length]
    padded = pad(packet, 1420)
    assert padded[:length] == packet and set(padded[length:]) <= {0}
    assert len(padded) % MESSAGE_PADDING_MULTIPLE == 0 or len(padded) == 1420
    assert len(padded) <= max(1420, length)
    assert pad(padded, 1420) == padded


def test_send_packet_is_send_packets_of_one() -> None:
    """Same seeds, same inputs: the single-packet path and the batch path leave identical state and output."""
    one, batch = make_pair(seed=3), make_pair(seed=3)
    one.handshake()
    batch.handshake()
    for n in range(5):
        packet = one.a_to_b(bytes([n]) * (n * 37))
        one.a.send_packet(packet, one.net.now)
        batch.a.send_packets([packet], batch.net.now)
    assert one.a.datagrams_to_send() == batch.a.datagrams_to_send()
    assert one.a.stats == batch.a.stats
    for peer, other in ((one.peer_b, batch.peer_b),):
        assert (peer.tx_bytes, list(peer.staged), peer.last_sent_handshake_at) == (
            other.tx_bytes,
            list(other.staged),
            other.last_sent_handshake_at,
        )
        assert [(k.local_index, k.send_counter) for k in peer.keypairs.all()] == [
            (k.local_index, k.send_counter) for k in other.keypairs.all()
        ]
        state = [n for n in peer.timers.__slots__ if not n.startswith("_")]
        assert [getattr(peer.timers, n) for n in state] == [getattr(other.timers, n) for n in state]
    assert one.a.get_timer() == batch.a.get_timer()


def test_a_batch_for_one_peer_is_sealed_as_one_run_in_order() -> None:
    pair = make_pair()
    pair.handshake()
    keypair = pair.peer_b.keypairs.current
    assert keypair is not None
    before = keypair.send_counter
    pair.a.send_packets([pair.a_to_b(bytes([n])) for n in range(10)], pair.net.now)
    sent = pair.a.datagrams_to_send()
    assert kinds(sent) == [MessageType.TRANSPORT] * 10 and {endpoint for _, endpoint in sent} == {ENDPOINT_B}
    assert keypair.send_counter == before + 10
    for data, _ in sent:
        pair.b.receive_datagram(data, pair.node_a.endpoint, pair.net.now)
    assert [p[-1] for p in pair.b.packets_to_tun()] == list(range(10))


def test_without_a_session_packets_are_staged_and_one_initiation_goes_out() -> None:
    pair = make_pair()
    pair.a.send_packets([pair.a_to_b(b"1"), pair.a_to_b(b"2")], pair.net.now)
    assert kinds(pair.a._datagrams) == [MessageType.INITIATION]
    assert len(pair.peer_b.staged) == 2
    pair.net.pump()  # the response flushes them
    assert [p[-1:] for p in pair.node_b.delivered] == [b"1", b"2"]


@pytest.mark.parametrize("batched", [False, True])
def test_running_out_of_counters_stages_the_rest_and_starts_a_handshake(batched: bool) -> None:
    pair = make_pair()
    pair.a.reject_after_messages = 6
    pair.handshake()
    keypair = pair.peer_b.keypairs.current
    assert keypair is not None
    left = pair.a.reject_after_messages - keypair.send_counter
    packets = [pair.a_to_b(bytes([n])) for n in range(left + 2)]
    pair.net.now += REKEY_TIMEOUT  # the handshake rate limit allows a new initiation
    if batched:
        pair.a.send_packets(packets, pair.net.now)
    else:
        for packet in packets:
            pair.a.send_packet(packet, pair.net.now)
    sent = kinds(pair.a.datagrams_to_send())
    assert sent.count(MessageType.TRANSPORT) == left
    assert sent.count(MessageType.INITIATION) == 1
    assert len(pair.peer_b.staged) == 2
    assert keypair.send_counter == pair.a.reject_after_messages  # never past the limit
    assert pair.a._sending_keypair(pair.peer_b, pair.net.now) is None  # the sending half is used up


def test_keep_key_fresh_after_send_rekeys_after_messages_and_after_time() -> None:
    pair = make_pair()
    pair.a.rekey_after_messages = 3
    pair.handshake()
    pair.net.now += REKEY_TIMEOUT
    for n in range(5):
        pair.a.send_packet(pair.a_to_b(bytes([n])), pair.net.now)
    assert kinds(pair.a.datagrams_to_send()).count(MessageType.INITIATION) == 1
    timed = make_pair(seed=1)
    timed.handshake()
    timed.net.now += REKEY_AFTER_TIME
    timed.a.send_packet(timed.a_to_b(b"late"), timed.net.now)  # A initiated: it rekeys on time
    assert kinds(timed.a.datagrams_to_send()) == [MessageType.TRANSPORT, MessageType.INITIATION]
    timed.b.send_packet(timed.b_to_a(b"late"), timed.net.now)  # B responded: only the initiator rekeys on time
    assert kinds(timed.b.datagrams_to_send()) == [MessageType.TRANSPORT]


def test_what_cannot_be_routed_is_counted() -> None:
    pair = make_pair()
    pair.a.send_packet(b"\x45", pair.net.now)
    pair.a.send_packet(pair.a_to_b(b"x")[:16] + bytes([10, 9, 9, 9]) + pair.a_to_b(b"x")[20:], pair.net.now)
    keyless = make_device(5)
    keyless.add_peer(private_key(6).public_key(), endpoint=ENDPOINT_B, allowed_ips=["10.0.0.2/32"])
    keyless.set_private_key(None)
    keyless.send_packet(pair.a_to_b(b"x"), 0.0)
    assert pair.a.stats.drops[DropReason.INVALID_IP_PACKET] == 1
    assert pair.a.stats.drops[DropReason.NO_ROUTE] == 1
    assert keyless.stats.drops[DropReason.NO_PRIVATE_KEY] == 1
    assert pair.a.datagrams_to_send() == [] and keyless.datagrams_to_send() == []


def test_offloaded_sealing_makes_the_same_messages_as_sealing_inline() -> None:
    inline, offload = make_pair(seed=4), make_pair(seed=4)
    inline.handshake()
    offload.handshake()
    offload.a.seal_offload = True
    packets = [inline.a_to_b(bytes([n]) * n) for n in range(8)]
    inline.a.send_packets(packets[:5], inline.net.now)
    inline.a.send_packet(packets[5], inline.net.now)
    inline.a.send_packets(packets[6:], inline.net.now)
    offload.a.send_packets(packets[:5], offload.net.now)
    offload.a.send_packet(packets[5], offload.net.now)
    offload.a.send_packets(packets[6:], offload.net.now)
    assert offload.a.datagrams_to_send() == []
    jobs = offload.a.seal_jobs()
    assert len(jobs) == 1 and isinstance(jobs[0], SealJob)  # consecutive counters on one keypair: one job
    assert [(m, jobs[0].endpoint) for m in jobs[0].run()] == inline.a.datagrams_to_send()
    assert offload.peer_b.tx_bytes == inline.peer_b.tx_bytes
    assert offload.a.stats.packets_sent == inline.a.stats.packets_sent


def test_the_offload_sealer_reports_retired_keypairs() -> None:
    pair = make_pair()
    pair.handshake()
    pair.a.seal_offload = True
    keypair = pair.peer_b.keypairs.current
    assert keypair is not None
    pair.a.reset_sessions(pair.peer_b)
    assert pair.a.seal_jobs() == [KeypairRetired(keypair.local_index)]


@pytest.mark.parametrize("sizes", [[1420] * 40 + [100], [0], [64, 1420, 0, 16, 1420, 1420, 32], []])
def test_sealing_into_a_buffer_makes_the_messages_of_run(sizes: list[int]) -> None:
    """``SealJob.run_into`` against ``SealJob.run`` (the core's ``seal_run``, what ``InlineSealer`` sends), byte for
    byte, and the receiving device accepts what it wrote."""
    pair = make_pair(seed=5)
    pair.handshake()
    pair.a.seal_offload = True
    packets = [pair.a_to_b(bytes([n & 0xFF]) * max(0, size - 28)) for n, size in enumerate(sizes) if size]
    pair.a.send_packets(packets, pair.net.now)
    if 0 in sizes:
        pair.a._send_keepalive(pair.peer_b, pair.net.now)  # an empty plaintext: a 32-byte message
    jobs = [job for job in pair.a.seal_jobs() if isinstance(job, SealJob)]
    assert len(jobs) == (1 if sizes else 0)
    for job in jobs:
        buffer = bytearray(b"\xaa" * (job.sealed_size() + 7))  # larger than needed: the tail is left alone
        written = job.run_into(buffer)
        messages = job.run()
        assert written == [len(m) for m in messages]
        assert sum(written) == job.sealed_size()
        assert bytes(buffer[: job.sealed_size()]) == b"".join(messages)
        assert buffer[job.sealed_size() :] == b"\xaa" * 7
        at = 0
        for size in written:
            pair.b.receive_datagram(bytes(buffer[at : at + size]), ENDPOINT_A, pair.net.now)
            at += size
    assert pair.b.packets_to_tun() == packets
    assert pair.b.stats.drops == {}


@pytest.mark.parametrize("mtu", [1420, 1280, 1281, 65535, 17])
def test_pad_gives_the_length_padded_length_gives(mtu: int) -> None:
    # keypair.padded_length is the one rule of whitepaper §5.4.6 (pad to 16, never past the MTU); pad inlines it
    for length in range(min(mtu + 40, 1500)):
        assert len(pad(bytes(length), mtu)) == padded_length(length, mtu), (length, mtu)
