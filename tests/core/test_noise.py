"""Behaviour of ``wgpy.noise``: the four handshake steps, ``begin_session``, and what they refuse.

Two configured peers, A and B, each hold a ``Handshake`` towards the other. Keys, ephemerals (through ``rng``),
indices and clocks are fixed, so every test is deterministic. The rule under test throughout is STYLE §0.3/§0.4:
remote input that is refused raises ``HandshakeRejected`` with a ``DropReason`` and leaves every slot of the
``Handshake`` exactly as it was.

Byte-level agreement with the whitepaper and with an independent Noise implementation is the job of
``tests/core/vectors/test_noise_oracle.py`` and ``tests/core/vectors/test_handshake_transcripts.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy import crypto
from wgpy.constants import CONSTRUCTION, HANDSHAKE_INITIATION_RATE, IDENTIFIER, LABEL_MAC1
from wgpy.errors import DropReason, MalformedMessage
from wgpy.keypair import Keypair
from wgpy.keys import PresharedKey, PrivateKey, PublicKey
from wgpy.messages import MAC1_OFFSET_INITIATION, MAC1_OFFSET_RESPONSE, Initiation, Response, unpack
from wgpy.noise import (
    Handshake,
    HandshakeRejected,
    HandshakeState,
    StaticIdentity,
    begin_session,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wgpy.tai64n import TAI64N_SIZE, TIMESTAMP_WHITENER_NS, stamp


def _pattern(first: int) -> bytes:
    """The fixed 32 bytes ``first, first+1, ...`` (mod 256)."""
    return bytes((first + i) % 256 for i in range(32))


KEY_A: Final = PrivateKey(_pattern(0x00))
KEY_B: Final = PrivateKey(_pattern(0x20))
KEY_STRANGER: Final = PrivateKey(_pattern(0x40))
EPHEMERAL_A: Final = _pattern(0x60)
EPHEMERAL_B: Final = _pattern(0x80)
PSK: Final = PresharedKey(_pattern(0xA0))
INDEX_A: Final = 0x1111_AAAA
INDEX_B: Final = 0x2222_BBBB
WALL_NS: Final = 1_700_000_000_000_000_000
SECOND_NS: Final = 1_000_000_000
NOW: Final = 50.0

_P: Final = 2**255 - 19
#: u-coordinates whose X25519 product with any clamped scalar is all zeros: the points of order 1, 2, 4 and 8 and
#: their non-canonical encodings (p, p + 1, and with the ignored top bit set).
LOW_ORDER_POINTS: Final = [
    u.to_bytes(32, "little")
    for u in (
        0,
        1,
        325606250916557431795983626356110631294008115727848805560023387167927233504,
        39382357235489614581723060781553021112529911719440698176882885853963445705823,
        _P - 1,
        _P,
        _P + 1,
        2**255,  # 0 with the top bit set
        2**255 + 1,
    )
]


def _rng_returning(value: bytes) -> Callable[[int], bytes]:
    def rng(size: int) -> bytes:
        assert size == len(value)
        return value

    return rng


@dataclass
class Side:
    """One peer: its static identity and its handshake towards the other peer, plus the index table's view."""

    local: StaticIdentity
    handshake: Handshake
    index: int
    ephemeral: bytes

    def lookup_peer(self, key: PublicKey) -> Handshake | None:
        return self.handshake if key == self.handshake.remote_static else None

    def lookup_index(self, index: int) -> Handshake | None:
        return self.handshake if index == self.index else None

    def initiation(self, wall_ns: int = WALL_NS) -> Initiation:
        return create_initiation(self.handshake, self.local, self.index, wall_ns, _rng_returning(self.ephemeral))

    def consume_initiation(self, message: Initiation, now: float = NOW) -> Handshake:
        return consume_initiation(message, self.local, self.lookup_peer, now)

    def response(self) -> Response:
        return create_response(self.handshake, self.index, _rng_returning(self.ephemeral))

    def consume_response(self, message: Response) -> Handshake:
        return consume_response(message, self.local, self.lookup_index)


def _sides(psk_a: PresharedKey | None = None, psk_b: PresharedKey | None = None) -> tuple[Side, Side]:
    local_a, local_b = StaticIdentity(KEY_A), StaticIdentity(KEY_B)
    a = Side(local_a, Handshake(local_a, local_b.public_key, psk_a), INDEX_A, EPHEMERAL_A)
    b = Side(local_b, Handshake(local_b, local_a.public_key, psk_b), INDEX_B, EPHEMERAL_B)
    return a, b


def _snapshot(handshake: Handshake) -> dict[str, object]:
    """Every slot of the handshake, to prove that a rejection changed nothing. The static-static DH is compared by
    value: computing it on first use (a cache) is no change of state."""
    state = {name: getattr(handshake, name) for name in Handshake.__slots__ if not name.startswith("_static_static")}
    state["precomputed_static_static"] = handshake.precomputed_static_static
    return state


def _expect_rejected(reason: DropReason, call: Callable[[], object]) -> None:
    with pytest.raises(HandshakeRejected) as info:
        call()
    assert info.value.reason is reason


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def _mac1(receiver: PublicKey, message: bytes, offset: int) -> bytes:
    return crypto.mac(crypto.hash(LABEL_MAC1 + receiver.raw), message[:offset])


def _handshake(initiator: Side, responder: Side) -> tuple[Keypair, Keypair]:
    """A full handshake; returns (initiator keypair, responder keypair)."""
    responder.consume_initiation(initiator.initiation())
    initiator.consume_response(responder.response())
    return begin_session(initiator.handshake, NOW), begin_session(responder.handshake, NOW)


# --- The handshake that works --------------------------------------------------------------------------------------


@pytest.mark.parametrize("psk", [None, PSK], ids=["no_psk", "psk"])
@pytest.mark.parametrize("a_initiates", [True, False], ids=["a_to_b", "b_to_a"])
def test_full_handshake_gives_matching_keypairs(a_initiates: bool, psk: PresharedKey | None) -> None:
    a, b = _sides(psk, psk)
    initiator, responder = (a, b) if a_initiates else (b, a)

    assert responder.consume_initiation(initiator.initiation()) is responder.handshake
    assert responder.handshake.state is HandshakeState.CONSUMED_INITIATION
    assert (responder.handshake.chaining_key, responder.handshake.hash) == (
        initiator.handshake.chaining_key,
        initiator.handshake.hash,
    )
    response = responder.response()
    assert (response.sender_index, response.receiver_index) == (responder.index, initiator.index)
    assert initiator.consume_response(response) is initiator.handshake
    assert initiator.handshake.state is HandshakeState.CONSUMED_RESPONSE

    # Both sides end on the same chaining key; (T_send_i, T_recv_i) = KDF2(C, empty) (whitepaper §5.4.5).
    chaining_key = initiator.handshake.chaining_key
    assert responder.handshake.chaining_key == chaining_key
    assert responder.handshake.hash == initiator.handshake.hash
    initiator_send, initiator_recv = crypto.kdf2(chaining_key, b"")
    assert initiator_send != initiator_recv

    keypair_i, keypair_r = begin_session(initiator.handshake, NOW), begin_session(responder.handshake, NOW)
    assert (keypair_i.is_initiator, keypair_r.is_initiator) == (True, False)
    assert (keypair_i.local_index, keypair_i.remote_index) == (initiator.index, responder.index)
    assert (keypair_r.local_index, keypair_r.remote_index) == (responder.index, initiator.index)

    # Initiator send key == responder receive key, and the reverse.
    to_responder = keypair_i.seal(b"ping".ljust(16, b"\x00"))
    assert to_responder is not None
    assert crypto.aead_open(initiator_send, 0, to_responder[16:], b"") == b"ping".ljust(16, b"\x00")
    assert keypair_r.open(0, to_responder) == b"ping".ljust(16, b"\x00")
    to_initiator = keypair_r.seal(b"pong".ljust(16, b"\x00"))
    assert to_initiator is not None
    assert crypto.aead_open(initiator_recv, 0, to_initiator[16:], b"") == b"pong".ljust(16, b"\x00")
    assert keypair_i.open(0, to_initiator) == b"pong".ljust(16, b"\x00")
    # The two directions use different keys: a keypair cannot open what it sealed itself.
    with pytest.raises(crypto.InvalidTag):
        keypair_i.open(0, to_responder)


@pytest.mark.parametrize("role", ["initiator", "responder"])
def test_begin_session_zeroes_the_handshake(role: str) -> None:
    a, b = _sides()
    _handshake(a, b)
    handshake = a.handshake if role == "initiator" else b.handshake
    assert handshake.state is HandshakeState.ZEROED
    assert handshake.chaining_key == bytes(32)
    assert handshake.hash == bytes(32)
    assert handshake.ephemeral_private == bytes(32)
    assert handshake.remote_ephemeral == bytes(32)
    # The replay defence outlives the session (kernel: latest_timestamp is not part of handshake_zero).
    assert b.handshake.latest_timestamp == stamp(WALL_NS)


def test_initial_values_are_the_whitepapers() -> None:
    """Ci = HASH(CONSTRUCTION), Hi = HASH(HASH(Ci || IDENTIFIER) || Spub_r) (whitepaper §5.4.2)."""
    local = StaticIdentity(KEY_B)
    ci = crypto.hash(CONSTRUCTION)
    assert local.hash0 == crypto.hash(crypto.hash(ci + IDENTIFIER) + local.public_key.raw)


# --- Replay and flood of initiations (whitepaper §5.1, kernel noise.c) ---------------------------------------------


def test_replayed_initiation_is_stale_and_changes_nothing() -> None:
    a, b = _sides()
    initiation = a.initiation()
    b.consume_initiation(initiation, now=NOW)
    before = _snapshot(b.handshake)
    _expect_rejected(DropReason.STALE_TIMESTAMP, lambda: b.consume_initiation(initiation, now=NOW + 10))
    assert _snapshot(b.handshake) == before

    # Once the responder has answered, a replay must not undo that either.
    b.response()
    before = _snapshot(b.handshake)
    _expect_rejected(DropReason.STALE_TIMESTAMP, lambda: b.consume_initiation(initiation, now=NOW + 20))
    assert _snapshot(b.handshake) == before


def test_replay_after_the_session_began_is_still_stale() -> None:
    a, b = _sides()
    initiation = a.initiation()
    b.consume_initiation(initiation)
    a.consume_response(b.response())
    begin_session(b.handshake, NOW)
    before = _snapshot(b.handshake)
    _expect_rejected(DropReason.STALE_TIMESTAMP, lambda: b.consume_initiation(initiation, now=NOW + 60))
    assert _snapshot(b.handshake) == before


def test_older_or_equal_timestamp_is_stale() -> None:
    a, b = _sides()
    b.consume_initiation(a.initiation(wall_ns=WALL_NS + 5 * SECOND_NS), now=NOW)
    before = _snapshot(b.handshake)
    older = a.initiation(wall_ns=WALL_NS)
    _expect_rejected(DropReason.STALE_TIMESTAMP, lambda: b.consume_initiation(older, now=NOW + 1))
    assert _snapshot(b.handshake) == before
    # Within one whitening step (2**24 ns) the TAI64N label is the same, so it is not newer either.
    same_label = a.initiation(wall_ns=WALL_NS + 5 * SECOND_NS + TIMESTAMP_WHITENER_NS // 2)
    _expect_rejected(DropReason.STALE_TIMESTAMP, lambda: b.consume_initiation(same_label, now=NOW + 2))
    assert _snapshot(b.handshake) == before
    newer = a.initiation(wall_ns=WALL_NS + 6 * SECOND_NS)
    b.consume_initiation(newer, now=NOW + 3)
    assert b.handshake.latest_timestamp == stamp(WALL_NS + 6 * SECOND_NS)


def test_initiation_within_a_fiftieth_of_a_second_is_a_flood() -> None:
    a, b = _sides()
    b.consume_initiation(a.initiation(wall_ns=WALL_NS), now=NOW)
    before = _snapshot(b.handshake)
    second = a.initiation(wall_ns=WALL_NS + SECOND_NS)  # newer timestamp: only the rate is wrong
    too_soon = NOW + HANDSHAKE_INITIATION_RATE / 2
    _expect_rejected(DropReason.HANDSHAKE_FLOOD, lambda: b.consume_initiation(second, now=too_soon))
    assert _snapshot(b.handshake) == before
    # The refused one did not move the window: 1/50 s after the *accepted* one, the same message gets in.
    b.consume_initiation(second, now=NOW + HANDSHAKE_INITIATION_RATE * 1.25)
    assert b.handshake.latest_timestamp == stamp(WALL_NS + SECOND_NS)
    assert b.handshake.last_initiation_consumption == NOW + HANDSHAKE_INITIATION_RATE * 1.25


def test_initiation_from_an_unknown_static_key() -> None:
    _, b = _sides()
    stranger_local = StaticIdentity(KEY_STRANGER)
    stranger = Side(stranger_local, Handshake(stranger_local, b.local.public_key), 0x3333_CCCC, EPHEMERAL_A)
    before = _snapshot(b.handshake)
    initiation = stranger.initiation()
    _expect_rejected(DropReason.UNKNOWN_PEER, lambda: b.consume_initiation(initiation))
    assert _snapshot(b.handshake) == before


# --- Responses ---------------------------------------------------------------------------------------------------


def test_wrong_psk_fails_at_the_response() -> None:
    """psk2 mixes the preshared key into the response only, so a mismatch shows when it is consumed."""
    a, b = _sides(psk_a=PSK, psk_b=None)
    b.consume_initiation(a.initiation())
    response = b.response()
    before = _snapshot(a.handshake)
    _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: a.consume_response(response))
    assert _snapshot(a.handshake) == before
    assert a.handshake.state is HandshakeState.CREATED_INITIATION


def test_response_to_an_unknown_index() -> None:
    a, b = _sides()
    b.consume_initiation(a.initiation())
    response = dataclasses.replace(b.response(), receiver_index=INDEX_A ^ 0xFFFF)
    before = _snapshot(a.handshake)
    _expect_rejected(DropReason.UNKNOWN_INDEX, lambda: a.consume_response(response))
    assert _snapshot(a.handshake) == before


def test_response_whose_index_maps_to_another_handshake_index() -> None:
    """An index table that still maps an old index must not let it reach a newer handshake."""
    a, b = _sides()
    b.consume_initiation(a.initiation())
    response = b.response()
    a.handshake.local_index = INDEX_A + 1  # the initiator has since started over with another index
    before = _snapshot(a.handshake)
    _expect_rejected(
        DropReason.HANDSHAKE_FAILED, lambda: consume_response(response, a.local, lambda index: a.handshake)
    )
    assert _snapshot(a.handshake) == before


def test_response_replayed_after_the_session_began() -> None:
    a, b = _sides()
    b.consume_initiation(a.initiation())
    response = b.response()
    a.consume_response(response)
    # Before begin_session: the handshake is no longer waiting for a response.
    before = _snapshot(a.handshake)
    _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: a.consume_response(response))
    assert _snapshot(a.handshake) == before
    begin_session(a.handshake, NOW)
    before = _snapshot(a.handshake)
    # The index table may still map the index (HANDSHAKE_FAILED) or may have dropped it (UNKNOWN_INDEX).
    _expect_rejected(
        DropReason.HANDSHAKE_FAILED, lambda: consume_response(response, a.local, lambda index: a.handshake)
    )
    _expect_rejected(DropReason.UNKNOWN_INDEX, lambda: consume_response(response, a.local, lambda index: None))
    assert _snapshot(a.handshake) == before


def test_create_response_needs_a_consumed_initiation() -> None:
    a, b = _sides()
    for side in (a, b):  # ZEROED
        before = _snapshot(side.handshake)
        _expect_rejected(DropReason.HANDSHAKE_FAILED, side.response)
        assert _snapshot(side.handshake) == before
    initiation = a.initiation()  # A is now CREATED_INITIATION
    before = _snapshot(a.handshake)
    _expect_rejected(DropReason.HANDSHAKE_FAILED, a.response)
    assert _snapshot(a.handshake) == before
    b.consume_initiation(initiation)
    b.response()  # B is now CREATED_RESPONSE: no second response to the same initiation
    before = _snapshot(b.handshake)
    _expect_rejected(DropReason.HANDSHAKE_FAILED, b.response)
    assert _snapshot(b.handshake) == before


def test_begin_session_needs_a_finished_handshake() -> None:
    a, b = _sides()
    _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: begin_session(a.handshake, NOW))  # ZEROED
    initiation = a.initiation()
    _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: begin_session(a.handshake, NOW))  # CREATED_INITIATION
    b.consume_initiation(initiation)
    before = _snapshot(b.handshake)
    _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: begin_session(b.handshake, NOW))  # CONSUMED_INITIATION
    assert _snapshot(b.handshake) == before


# --- Low-order points (whitepaper §5.4: DH results of all zeros are rejected) ------------------------------------


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + "…" + p.hex()[-4:])
def test_low_order_ephemeral_in_an_initiation(point: bytes) -> None:
    a, b = _sides()
    initiation = dataclasses.replace(a.initiation(), unencrypted_ephemeral=point)
    before = _snapshot(b.handshake)
    _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: b.consume_initiation(initiation))
    assert _snapshot(b.handshake) == before


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + "…" + p.hex()[-4:])
def test_low_order_ephemeral_in_a_response(point: bytes) -> None:
    a, b = _sides()
    b.consume_initiation(a.initiation())
    response = dataclasses.replace(b.response(), unencrypted_ephemeral=point)
    before = _snapshot(a.handshake)
    _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: a.consume_response(response))
    assert _snapshot(a.handshake) == before


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8] + "…" + p.hex()[-4:])
def test_peer_with_a_low_order_static_key_cannot_be_initiated_to(point: bytes) -> None:
    local = StaticIdentity(KEY_A)
    handshake = Handshake(local, PublicKey(point))
    assert handshake.precomputed_static_static is None
    before = _snapshot(handshake)
    _expect_rejected(
        DropReason.HANDSHAKE_FAILED,
        lambda: create_initiation(handshake, local, INDEX_A, WALL_NS, _rng_returning(EPHEMERAL_A)),
    )
    assert _snapshot(handshake) == before


@pytest.mark.parametrize("point", LOW_ORDER_POINTS[:3], ids=lambda p: p.hex()[:8] + "…" + p.hex()[-4:])
def test_initiation_claiming_a_low_order_static_key(point: bytes) -> None:
    """An attacker can encrypt any static key under its own ephemeral; a configured peer whose key is low-order
    has no static-static DH, so the initiation is refused before its timestamp is even read."""
    local_b = StaticIdentity(KEY_B)
    victim = Handshake(local_b, PublicKey(point))
    ephemeral_private, ephemeral_public = crypto.dh_generate(_rng_returning(EPHEMERAL_A))
    ck = crypto.kdf1(crypto.hash(CONSTRUCTION), ephemeral_public)
    h = crypto.hash(local_b.hash0 + ephemeral_public)
    ck, key = crypto.kdf2(ck, crypto.dh(ephemeral_private, local_b.public_key.raw))
    encrypted_static = crypto.aead_seal(key, 0, point, h)
    initiation = Initiation(INDEX_A, ephemeral_public, encrypted_static, bytes(TAI64N_SIZE + 16))
    before = _snapshot(victim)
    _expect_rejected(
        DropReason.HANDSHAKE_FAILED,
        lambda: consume_initiation(initiation, local_b, lambda key: victim if key.raw == point else None, NOW),
    )
    assert _snapshot(victim) == before


def test_without_a_private_key_no_initiation() -> None:
    local = StaticIdentity(KEY_A)
    handshake = Handshake(None, StaticIdentity(KEY_B).public_key)
    before = _snapshot(handshake)
    _expect_rejected(
        DropReason.HANDSHAKE_FAILED,
        lambda: create_initiation(handshake, local, INDEX_A, WALL_NS, _rng_returning(EPHEMERAL_A)),
    )
    assert _snapshot(handshake) == before
    handshake.set_identity(local)
    create_initiation(handshake, local, INDEX_A, WALL_NS, _rng_returning(EPHEMERAL_A))
    assert handshake.state is HandshakeState.CREATED_INITIATION


# --- Single-bit flips ----------------------------------------------------------------------------------------------
#
# Noise authenticates every byte of the Noise message and the whole exchange through the hash, but not the
# WireGuard framing around it: the sender_index of either message (bytes 4..7) is covered by mac1 only, i.e. by
# the cookie layer, which checks mac1 before any of this runs. A flip there is accepted here and is tested apart.
# The receiver_index of a response is checked against the handshake's own local index.


def _valid_messages() -> tuple[bytes, bytes]:
    a, b = _sides()
    initiation = a.initiation()
    b.consume_initiation(initiation)
    return initiation.pack(), b.response().pack()


VALID_INITIATION, VALID_RESPONSE = _valid_messages()
SENDER_INDEX_BITS: Final = range(4 * 8, 8 * 8)
RECEIVER_INDEX_BITS: Final = range(8 * 8, 12 * 8)
INITIATION_BITS: Final = [bit for bit in range(MAC1_OFFSET_INITIATION * 8) if bit not in SENDER_INDEX_BITS]
RESPONSE_BITS: Final = [bit for bit in range(MAC1_OFFSET_RESPONSE * 8) if bit not in SENDER_INDEX_BITS]


def _check_initiation_flip(bit: int) -> None:
    _, b = _sides()  # a fresh responder that has never seen the valid initiation
    before = _snapshot(b.handshake)
    try:
        message = unpack(_flip(VALID_INITIATION, bit))
    except MalformedMessage:
        assert bit < 32  # type or reserved bytes
    else:
        assert isinstance(message, Initiation)
        _expect_rejected(DropReason.HANDSHAKE_FAILED, lambda: b.consume_initiation(message))
    assert _snapshot(b.handshake) == before


def _check_response_flip(bit: int) -> None:
    a, _ = _sides()
    a.initiation()  # deterministic: the same state that the valid response answers
    before = _snapshot(a.handshake)
    try:
        message = unpack(_flip(VALID_RESPONSE, bit))
    except MalformedMessage:
        assert bit < 32
    else:
        assert isinstance(message, Response)
        reason = DropReason.UNKNOWN_INDEX if bit in RECEIVER_INDEX_BITS else DropReason.HANDSHAKE_FAILED
        _expect_rejected(reason, lambda: a.consume_response(message))
    assert _snapshot(a.handshake) == before


def test_unflipped_messages_are_accepted() -> None:
    """The flip tests start from messages that do work."""
    a, b = _sides()
    message = unpack(VALID_INITIATION)
    assert isinstance(message, Initiation)
    b.consume_initiation(message)
    a.initiation()
    message = unpack(VALID_RESPONSE)
    assert isinstance(message, Response)
    a.consume_response(message)


@settings(max_examples=150, deadline=None)
@given(bit=st.sampled_from(INITIATION_BITS))
def test_any_bit_flip_in_an_initiation_is_rejected(bit: int) -> None:
    _check_initiation_flip(bit)


@settings(max_examples=150, deadline=None)
@given(bit=st.sampled_from(RESPONSE_BITS))
def test_any_bit_flip_in_a_response_is_rejected(bit: int) -> None:
    _check_response_flip(bit)


def test_every_bit_flip_is_rejected() -> None:
    """The same properties, swept over every bit (about 1400 cases), because that is cheap."""
    for bit in INITIATION_BITS:
        _check_initiation_flip(bit)
    for bit in RESPONSE_BITS:
        _check_response_flip(bit)


@pytest.mark.parametrize("bit", SENDER_INDEX_BITS)
def test_sender_index_is_covered_by_mac1_not_by_noise(bit: int) -> None:
    a, b = _sides()
    initiation = unpack(_flip(VALID_INITIATION, bit))
    assert isinstance(initiation, Initiation)
    assert b.consume_initiation(initiation).remote_index == INDEX_A ^ (1 << (bit - 32))
    assert _mac1(b.local.public_key, _flip(VALID_INITIATION, bit), MAC1_OFFSET_INITIATION) != _mac1(
        b.local.public_key, VALID_INITIATION, MAC1_OFFSET_INITIATION
    )

    a.initiation()
    response = unpack(_flip(VALID_RESPONSE, bit))
    assert isinstance(response, Response)
    assert a.consume_response(response).remote_index == INDEX_B ^ (1 << (bit - 32))
    assert _mac1(a.local.public_key, _flip(VALID_RESPONSE, bit), MAC1_OFFSET_RESPONSE) != _mac1(
        a.local.public_key, VALID_RESPONSE, MAC1_OFFSET_RESPONSE
    )


def test_the_static_static_dh_is_computed_at_first_use_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #11 item 3: a peer added (or a private key set) costs no X25519; the first handshake pays it once."""
    calls: list[bytes] = []
    real_dh = crypto.dh

    def counting_dh(private: crypto.DhPrivateKey, public: bytes) -> bytes:
        calls.append(public)
        return real_dh(private, public)

    monkeypatch.setattr(crypto, "dh", counting_dh)
    local = StaticIdentity(KEY_B)
    remote = StaticIdentity(KEY_A).public_key
    handshakes = [Handshake(local, remote) for _ in range(100)]
    for handshake in handshakes:
        handshake.set_identity(StaticIdentity(KEY_B))
    assert calls == []
    expected = real_dh(local.dh_key, remote.raw)
    assert handshakes[0].precomputed_static_static == expected
    assert handshakes[0].precomputed_static_static == expected
    assert len(calls) == 1
    handshakes[0].set_identity(None)
    assert handshakes[0].precomputed_static_static is None and len(calls) == 1
