"""The pure STUN layer: the demux decision and Binding discovery against forged and malformed responses."""

from __future__ import annotations

import struct

import pytest
from aioice import stun as aio
from hypothesis import given
from hypothesis import strategies as st

from wgpy.messages import MessageType
from wgpy.nat.io.stun_codec import AioiceStunCodec
from wgpy.nat.stun import (
    STUN_TRANSACTION_TIMEOUT,
    BindingDiscovery,
    DatagramKind,
    StunDrop,
    classify,
)

SERVER = ("10.9.0.1", 3478)


def _rng_counter() -> object:
    state = {"n": 0}

    def rng(n: int) -> bytes:
        state["n"] += 1
        return state["n"].to_bytes(n, "big")

    return rng


def response(transaction_id: bytes, mapped: tuple[str, int] | None = ("203.0.113.7", 40000), **kw: object) -> bytes:
    message = aio.Message(aio.Method.BINDING, kw.pop("cls", aio.Class.RESPONSE), transaction_id=transaction_id)  # type: ignore[arg-type]
    if mapped is not None:
        message.attributes["XOR-MAPPED-ADDRESS"] = mapped
    message.add_fingerprint()
    return bytes(message)


def started() -> tuple[BindingDiscovery, bytes]:
    discovery = BindingDiscovery(AioiceStunCodec())
    assert discovery.start(SERVER, 0.0)
    [(request, server)] = discovery.datagrams_to_send()
    assert server == SERVER
    assert classify(request) is DatagramKind.STUN
    return discovery, request[8:20]


@pytest.mark.parametrize("kind", list(MessageType))
def test_wireguard_messages_are_never_stun_even_with_the_cookie_at_offset_4(kind: MessageType) -> None:
    header = struct.pack("<I", int(kind)) + struct.pack("!I", 0x2112A442)
    assert classify(header + bytes(140)) is DatagramKind.WIREGUARD


def test_binding_messages_are_stun() -> None:
    _discovery, tid = started()
    assert classify(response(tid)) is DatagramKind.STUN
    assert classify(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12)) is DatagramKind.STUN
    assert classify(b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x43" + bytes(12)) is DatagramKind.WIREGUARD
    assert classify(b"\x00\x01\x00\x00\x21\x12\xa4\x42") is DatagramKind.WIREGUARD  # too short for STUN


@given(st.binary(max_size=64))
def test_classify_never_raises(data: bytes) -> None:
    classify(data)


def test_a_genuine_response_teaches_the_reflexive_address() -> None:
    discovery, tid = started()
    assert discovery.receive(response(tid), SERVER, 0.1) == ("203.0.113.7", 40000)
    assert discovery.reflexive == {SERVER: ("203.0.113.7", 40000)}
    assert discovery.outstanding == 0
    assert discovery.stats.responses_accepted == 1


def _forgeries(tid: bytes) -> list[tuple[str, bytes, tuple[str, int], StunDrop]]:
    good = response(tid)
    bad_fingerprint = good[:-1] + bytes([good[-1] ^ 1])
    return [
        ("unknown transaction", response(b"x" * 12), SERVER, StunDrop.UNKNOWN_TRANSACTION),
        ("wrong source address", good, ("10.9.0.66", 3478), StunDrop.WRONG_SOURCE),
        ("wrong source port", good, ("10.9.0.1", 3479), StunDrop.WRONG_SOURCE),
        ("bad fingerprint", bad_fingerprint, SERVER, StunDrop.MALFORMED),
        ("length mismatch", good + b"\0\0\0\0", SERVER, StunDrop.MALFORMED),
        (
            "truncated attribute",
            good[:2] + struct.pack("!H", 4) + good[4:20] + b"\x00\x20\x00\x08",
            SERVER,
            StunDrop.MALFORMED,
        ),
        ("no mapped address", response(tid, None), SERVER, StunDrop.NO_MAPPED_ADDRESS),
        ("a request", b"\x00\x01\x00\x00\x21\x12\xa4\x42" + tid, SERVER, StunDrop.NOT_A_RESPONSE),
        ("an indication", b"\x00\x11\x00\x00\x21\x12\xa4\x42" + tid, SERVER, StunDrop.NOT_A_RESPONSE),
        ("another method", b"\x01\x03\x00\x00\x21\x12\xa4\x42" + tid, SERVER, StunDrop.WRONG_METHOD),
        ("header only", b"\x01\x01\x00", SERVER, StunDrop.MALFORMED),
    ]


@pytest.mark.parametrize("case", range(11))
def test_forged_or_malformed_responses_are_dropped_counted_and_change_nothing(case: int) -> None:
    discovery, tid = started()
    assert discovery.receive(response(tid, ("198.51.100.1", 1111)), SERVER, 0.05) is not None
    assert discovery.start(SERVER, 0.1)
    [(request, _)] = discovery.datagrams_to_send()
    tid = request[8:20]
    name, data, source, reason = _forgeries(tid)[case]
    before = (dict(discovery.reflexive), discovery.outstanding)
    assert discovery.receive(data, source, 0.2) is None, name
    assert discovery.stats.drops == {reason: 1}, name
    assert (dict(discovery.reflexive), discovery.outstanding) == before, name
    # The genuine answer still works afterwards: a forgery did not consume the transaction.
    assert discovery.receive(response(tid), SERVER, 0.3) == ("203.0.113.7", 40000)


def test_an_error_response_ends_the_transaction_and_keeps_the_address() -> None:
    discovery, tid = started()
    assert discovery.receive(response(tid, None, cls=aio.Class.ERROR), SERVER, 0.1) is None
    assert discovery.stats.drops == {StunDrop.ERROR_RESPONSE: 1}
    assert discovery.outstanding == 0 and discovery.reflexive == {}


def test_a_replayed_or_late_response_is_dropped() -> None:
    discovery, tid = started()
    genuine = response(tid)
    assert discovery.receive(genuine, SERVER, 0.1) is not None
    assert discovery.receive(response(tid, ("192.0.2.99", 9)), SERVER, 0.2) is None  # replay with another address
    assert discovery.reflexive[SERVER] == ("203.0.113.7", 40000)
    late, tid2 = started()
    assert late.receive(response(tid2), SERVER, STUN_TRANSACTION_TIMEOUT + 0.1) is None
    assert late.stats.drops == {StunDrop.UNKNOWN_TRANSACTION: 1}


def test_retransmissions_double_and_stop() -> None:
    discovery, _tid = started()
    sent_at = []
    now = 0.0
    while now < STUN_TRANSACTION_TIMEOUT + 1 and discovery.get_timer() is not None:  # bounded by the timeout
        deadline = discovery.get_timer()
        assert deadline is not None and deadline >= now
        now = deadline
        discovery.handle_timer(now)
        if discovery.datagrams_to_send():
            sent_at.append(now)
    assert sent_at[:3] == [0.5, 1.5, 3.5]
    assert discovery.outstanding == 0


@given(st.binary(min_size=20, max_size=200))
def test_random_stun_shaped_input_never_raises_nor_teaches(data: bytes) -> None:
    discovery, _tid = started()
    forged = data[:4] + b"\x21\x12\xa4\x42" + data[8:]
    assert discovery.receive(forged, ("10.9.0.2", 1), 0.1) is None
    assert discovery.reflexive == {}
    assert sum(discovery.stats.drops.values()) == 1
