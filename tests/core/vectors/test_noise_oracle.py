"""wgpy's handshake against an independent Noise implementation, the ``noiseprotocol`` package.

WireGuard's handshake *is* ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s`` (whitepaper §5.4), so a generic Noise library set
up as below must produce and accept byte-identical handshake messages and the same transport keys:

- **Initialisation.** The protocol name is 37 bytes, longer than HASHLEN, so Noise's ``InitializeSymmetric`` sets
  ``h = HASH(name)`` and ``ck = h``: WireGuard's ``Ci := HASH(CONSTRUCTION)``. Noise then runs ``MixHash(prologue)``:
  WireGuard's ``Hi := HASH(Ci || IDENTIFIER)``, so the identifier is exactly the Noise prologue. IK's pre-message
  ``<- s`` is ``MixHash(Spub_r)``: WireGuard's ``Hi := HASH(Hi || Spub_r)``.
- **``e`` in a psk handshake.** Noise runs ``MixHash(e.pub)`` *and* ``MixKey(e.pub)``; WireGuard writes the latter
  as ``Ci := KDF1(Ci, Epub)``: the same chaining key (the key Noise also derives there is overwritten by ``es``).
- **``ee`` / ``se``** are ``MixKey(DH)`` in Noise; WireGuard keeps only the chaining key (``KDF1``), and the key
  Noise derives is overwritten before use: identical ``ck``.
- **``psk2``** appends the ``psk`` token to the second message: ``MixKeyAndHash(psk)`` is WireGuard's
  ``(Cr, tau, kappa) := KDF3(Cr, Q); Hr := HASH(Hr || tau)``. Noise always needs a psk for ``psk2``; WireGuard
  without a configured preshared key uses ``Q = 0^32``, so the oracle gets the all-zero psk.
- **Payloads.** The initiation's Noise payload is the 12-byte TAI64N timestamp (``{t}``), the response's is empty
  (``{}``). The Noise messages are bytes [8:116] of the initiation (ephemeral 32 + encrypted static 48 + encrypted
  timestamp 28) and [12:60] of the response (ephemeral 32 + empty AEAD 16); type, reserved bytes, sender/receiver
  indices and mac1/mac2 are WireGuard framing outside Noise (mac1 covers the indices instead).
- **Split.** Noise's ``c1, c2 = HKDF(ck, empty, 2)`` with the initiator sending on ``c1`` is WireGuard's
  ``(T_send_i, T_recv_i) = (T_recv_r, T_send_r) := KDF2(C, empty)``.
- **Transport.** Noise's ChaChaPoly nonce is 32 zero bits || le64(n), which is WireGuard's nonce with ``n`` the
  counter carried in the transport header; the AD is empty in both (the 16-byte header is not authenticated
  data). So the oracle's n-th ciphertext is what a wgpy keypair opens with counter n, and the reverse.
- **Differences not exercised here.** WireGuard requires rejecting an all-zero DH result (low-order points;
  ``tests/core/test_noise.py`` covers it); Noise leaves that optional, and noiseprotocol only fails there because
  ``cryptography``'s X25519 raises. Noise's ``Split`` leaves the handshake hash readable while wgpy's
  ``begin_session`` zeroes it (whitepaper §5.4.5 erases it), so it is compared just before.

The static keys, ephemerals and psk are fixed byte patterns; noiseprotocol takes the ephemerals through
``set_keypair_from_private_bytes(Keypair.EPHEMERAL, ...)`` and wgpy through its ``rng`` argument.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import pytest
from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection

from wgpy import crypto
from wgpy.constants import CONSTRUCTION, IDENTIFIER
from wgpy.errors import DropReason
from wgpy.keypair import Keypair
from wgpy.keys import PresharedKey, PrivateKey, PublicKey
from wgpy.messages import MAC1_OFFSET_INITIATION, MAC1_OFFSET_RESPONSE, Initiation, MessageType, Response
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
    initial_chaining_key,
    initial_hash,
)
from wgpy.tai64n import stamp

NOISE_PROTOCOL_NAME: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
INITIATOR_INDEX: Final = 0x0A0B0C0D
RESPONDER_INDEX: Final = 0x01020304
WALL_NS: Final = 1_700_000_000_500_000_000
NOW: Final = 100.0
_TRANSPORT_HEADER: Final = struct.Struct("<IIQ")


def _pattern(first: int) -> bytes:
    """The fixed key ``bytes(range(first, first + 32))`` (mod 256)."""
    return bytes((first + i) % 256 for i in range(32))


@dataclass(frozen=True)
class Case:
    name: str
    initiator_static: PrivateKey
    responder_static: PrivateKey
    initiator_ephemeral: bytes
    responder_ephemeral: bytes
    preshared_key: bytes | None

    @property
    def psk_for_oracle(self) -> bytes:
        return self.preshared_key if self.preshared_key is not None else bytes(32)

    @property
    def psk_for_wgpy(self) -> PresharedKey | None:
        return PresharedKey(self.preshared_key) if self.preshared_key is not None else None


CASES: Final = [
    Case("no_psk", PrivateKey(_pattern(0)), PrivateKey(_pattern(32)), _pattern(64), _pattern(96), None),
    Case("psk", PrivateKey(_pattern(128)), PrivateKey(_pattern(160)), _pattern(192), _pattern(224), _pattern(7)),
    # Ephemerals that are not clamped yet: both sides must clamp them the same way.
    Case("psk_unclamped", PrivateKey(_pattern(9)), PrivateKey(_pattern(77)), b"\xff" * 32, b"\x07" * 32, b"\xaa" * 32),
]


def _ids(case: Case) -> str:
    return case.name


def _rng_returning(value: bytes) -> Callable[[int], bytes]:
    def rng(size: int) -> bytes:
        assert size == len(value)
        return value

    return rng


def _oracle(*, initiator: bool, case: Case) -> Any:
    """A noiseprotocol connection set up as WireGuard uses Noise, with the case's keys injected."""
    static, ephemeral = (
        (case.initiator_static, case.initiator_ephemeral)
        if initiator
        else (case.responder_static, case.responder_ephemeral)
    )
    connection = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
    connection.set_prologue(IDENTIFIER)
    connection.set_psks(psk=case.psk_for_oracle)
    if initiator:
        connection.set_as_initiator()
        # IK: the initiator knows the responder's static key in advance; the responder learns the initiator's.
        connection.set_keypair_from_public_bytes(NoiseKeypair.REMOTE_STATIC, case.responder_static.public_key().raw)
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(NoiseKeypair.STATIC, static.raw)
    connection.set_keypair_from_private_bytes(NoiseKeypair.EPHEMERAL, ephemeral)
    with warnings.catch_warnings():
        # noiseprotocol warns that a preset ephemeral is for testing only, which is what this is.
        warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")
        connection.start_handshake()
    return connection


def _state_of(symmetric_state: Any) -> tuple[bytes, bytes]:
    """The oracle's (ck, h). Callers keep a reference to the symmetric state because noiseprotocol deletes it
    from the protocol object at ``Split()``, after the last handshake message."""
    return bytes(symmetric_state.ck), bytes(symmetric_state.h)


def _check_transport(keypair: Keypair, oracle: Any, messages: int = 4) -> None:
    """The keypair and the oracle's transport cipher states talk to each other, in both directions."""
    for counter in range(messages):
        payload = bytes([counter + 1]) * (16 * (counter + 1))
        # oracle -> wgpy: the oracle's n-th message is the wgpy transport message with counter n
        ciphertext = bytes(oracle.encrypt(payload))
        header = _TRANSPORT_HEADER.pack(MessageType.TRANSPORT, keypair.local_index, counter)
        if counter:
            with pytest.raises(crypto.InvalidTag):  # the counter is the nonce
                keypair.open(counter - 1, header + ciphertext)
        assert keypair.open(counter, header + ciphertext) == payload
        # wgpy -> oracle
        message = keypair.seal(payload)
        assert message is not None
        assert message[:16] == _TRANSPORT_HEADER.pack(MessageType.TRANSPORT, keypair.remote_index, counter)
        assert bytes(oracle.decrypt(message[16:])) == payload


def test_initial_state_is_noise_initialize() -> None:
    """Ci = HASH(CONSTRUCTION) and Hi = HASH(HASH(Ci || IDENTIFIER) || Spub_r) are Noise's InitializeSymmetric,
    MixHash(prologue) and the IK pre-message."""
    case = CASES[0]
    responder_public = case.responder_static.public_key()
    for initiator in (True, False):
        ck, h = _state_of(_oracle(initiator=initiator, case=case).noise_protocol.symmetric_state)
        assert ck == initial_chaining_key() == crypto.hash(CONSTRUCTION)
        assert h == initial_hash(responder_public) == StaticIdentity(case.responder_static).hash0


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_wgpy_initiator_with_oracle_responder(case: Case) -> None:
    local = StaticIdentity(case.initiator_static)
    handshake = Handshake(local, case.responder_static.public_key(), case.psk_for_wgpy)
    initiation = create_initiation(
        handshake, local, INITIATOR_INDEX, WALL_NS, _rng_returning(case.initiator_ephemeral)
    ).pack()
    noise_initiation = initiation[8:MAC1_OFFSET_INITIATION]

    # An oracle initiator with the same keys writes the same Noise message...
    assert bytes(_oracle(initiator=True, case=case).write_message(stamp(WALL_NS))) == noise_initiation

    # ...and an oracle responder reads ours, finding the TAI64N payload and our static key.
    responder = _oracle(initiator=False, case=case)
    symmetric = responder.noise_protocol.symmetric_state
    handshake_state = responder.noise_protocol.handshake_state
    assert bytes(responder.read_message(noise_initiation)) == stamp(WALL_NS)
    assert bytes(handshake_state.rs.public_bytes) == local.public_key.raw
    assert (handshake.chaining_key, handshake.hash) == _state_of(symmetric)

    noise_response = bytes(responder.write_message(b""))
    assert len(noise_response) == MAC1_OFFSET_RESPONSE - 12
    response = Response(RESPONDER_INDEX, INITIATOR_INDEX, noise_response[:32], noise_response[32:])
    lookup_index: dict[int, Handshake] = {INITIATOR_INDEX: handshake}
    assert consume_response(response, local, lookup_index.get) is handshake
    assert handshake.state is HandshakeState.CONSUMED_RESPONSE
    assert (handshake.chaining_key, handshake.hash) == _state_of(symmetric)
    assert handshake.hash == bytes(responder.get_handshake_hash())

    keypair = begin_session(handshake, NOW)
    assert (keypair.local_index, keypair.remote_index, keypair.is_initiator) == (
        INITIATOR_INDEX,
        RESPONDER_INDEX,
        True,
    )
    _check_transport(keypair, responder)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_oracle_initiator_with_wgpy_responder(case: Case) -> None:
    local = StaticIdentity(case.responder_static)
    initiator_public = case.initiator_static.public_key()
    handshake = Handshake(local, initiator_public, case.psk_for_wgpy)

    def lookup_peer(key: PublicKey) -> Handshake | None:
        return handshake if key == initiator_public else None

    initiator = _oracle(initiator=True, case=case)
    symmetric = initiator.noise_protocol.symmetric_state
    noise_initiation = bytes(initiator.write_message(stamp(WALL_NS)))
    initiation = Initiation(INITIATOR_INDEX, noise_initiation[:32], noise_initiation[32:80], noise_initiation[80:])
    assert consume_initiation(initiation, local, lookup_peer, NOW) is handshake
    assert handshake.state is HandshakeState.CONSUMED_INITIATION
    assert handshake.latest_timestamp == stamp(WALL_NS)
    assert handshake.remote_index == INITIATOR_INDEX
    assert (handshake.chaining_key, handshake.hash) == _state_of(symmetric)

    response = create_response(handshake, RESPONDER_INDEX, _rng_returning(case.responder_ephemeral)).pack()
    assert response[:12] == struct.pack("<III", MessageType.RESPONSE, RESPONDER_INDEX, INITIATOR_INDEX)
    noise_response = response[12:MAC1_OFFSET_RESPONSE]

    # An oracle responder with the same keys, fed the same initiation, writes the same Noise message...
    oracle_responder = _oracle(initiator=False, case=case)
    oracle_responder.read_message(noise_initiation)
    assert bytes(oracle_responder.write_message(b"")) == noise_response

    # ...and the oracle initiator reads ours, with an empty payload.
    assert bytes(initiator.read_message(noise_response)) == b""
    assert (handshake.chaining_key, handshake.hash) == _state_of(symmetric)
    assert handshake.hash == bytes(initiator.get_handshake_hash())

    keypair = begin_session(handshake, NOW)
    assert (keypair.local_index, keypair.remote_index, keypair.is_initiator) == (
        RESPONDER_INDEX,
        INITIATOR_INDEX,
        False,
    )
    _check_transport(keypair, initiator)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_oracle_rejects_wgpy_initiation_with_another_psk_only_at_the_response(case: Case) -> None:
    """psk2 mixes the psk into the second message only: a psk mismatch is caught by the initiator reading the
    response, in Noise as in wgpy."""
    local = StaticIdentity(case.initiator_static)
    other_psk = PresharedKey(bytes(b ^ 0x01 for b in case.psk_for_oracle))
    handshake = Handshake(local, case.responder_static.public_key(), other_psk)
    initiation = create_initiation(handshake, local, INITIATOR_INDEX, WALL_NS, _rng_returning(case.initiator_ephemeral))
    responder = _oracle(initiator=False, case=case)
    assert bytes(responder.read_message(initiation.pack()[8:MAC1_OFFSET_INITIATION])) == stamp(WALL_NS)
    noise_response = bytes(responder.write_message(b""))
    response = Response(RESPONDER_INDEX, INITIATOR_INDEX, noise_response[:32], noise_response[32:])
    before = (handshake.state, handshake.chaining_key, handshake.hash)
    with pytest.raises(HandshakeRejected) as rejected:
        consume_response(response, local, {INITIATOR_INDEX: handshake}.get)
    assert rejected.value.reason is DropReason.HANDSHAKE_FAILED
    assert (handshake.state, handshake.chaining_key, handshake.hash) == before
