"""Three properties of the handshake that the security model counts on, shown on the wire bytes.

The properties are the whitepaper's (§5.1, "identity hiding" and "forward secrecy") and Noise IK's: the messages
never carry a static public key in the clear; a recorded session stays unreadable to someone who later learns both
static private keys and the preshared key, because its keys came from ephemerals that are gone; and knowing both
public keys is not enough to speak in a peer's name, because the initiation's timestamp is sealed under a key that
needs DH(static_i, static_r). None of the expected outcomes is read off the code under test: each follows from the
protocol's key schedule.
"""

from __future__ import annotations

import pytest
from test_noise import (
    EPHEMERAL_A,
    INDEX_A,
    KEY_A,
    KEY_B,
    KEY_STRANGER,
    NOW,
    PSK,
    WALL_NS,
    Side,
    _mac1,
    _rng_returning,
    _sides,
    _snapshot,
)

from wgpy import crypto
from wgpy.constants import CONSTRUCTION
from wgpy.errors import DropReason
from wgpy.keys import PresharedKey
from wgpy.messages import MAC1_OFFSET_INITIATION, Initiation
from wgpy.noise import Handshake, HandshakeRejected, StaticIdentity, begin_session
from wgpy.tai64n import stamp


def test_no_message_of_the_handshake_carries_a_static_public_key() -> None:
    a, b = _sides(PSK, PSK)
    message = a.initiation()
    b.consume_initiation(message)
    initiation, response = message.pack(), b.response().pack()
    for key in (a.local.public_key.raw, b.local.public_key.raw):
        assert key not in initiation and key not in response


def test_a_recorded_session_stays_sealed_after_both_statics_and_the_psk_leak() -> None:
    """The attacker has the recorded initiation and a transport message, both private keys and the psk. Playing B
    again on the recording gives B's side a new ephemeral, hence other keys; A's message does not open under them."""
    a, b = _sides(PSK, PSK)
    recorded_initiation = a.initiation()
    b.consume_initiation(recorded_initiation)
    a.consume_response(b.response())
    sender, _receiver = begin_session(a.handshake, NOW), begin_session(b.handshake, NOW)
    recorded = sender.seal(b"inner packet, padded" + bytes(12))
    assert recorded is not None

    # Everything the attacker knows: both static private keys and the preshared key, never an ephemeral.
    leaked_a, leaked_b = StaticIdentity(KEY_A), StaticIdentity(KEY_B)
    replayed = Side(leaked_b, Handshake(leaked_b, leaked_a.public_key, PresharedKey(PSK.raw)), 0x5555_EEEE, b"")
    replayed.consume_initiation(recorded_initiation, now=NOW + 1000)  # the static key lets it read the initiation
    for guess in (bytes(32), bytes(range(32)), b"\x42" * 32):  # B's ephemeral is gone: the attacker can only guess
        attempt = Side(leaked_b, Handshake(leaked_b, leaked_a.public_key, PresharedKey(PSK.raw)), 0x5555_EEEE, guess)
        attempt.consume_initiation(recorded_initiation, now=NOW + 1000)
        attempt.response()
        keypair = begin_session(attempt.handshake, NOW + 1000)
        with pytest.raises(crypto.InvalidTag):
            keypair.open(0, recorded)


def test_an_initiation_in_a_known_peers_name_without_its_private_key_is_refused() -> None:
    """The attacker knows A's and B's public keys (they are not secret) and has a key of its own. It can seal A's
    public key under its ephemeral and B's key (DH(e, S_b)) and compute mac1; the timestamp's key needs DH(S_a, S_b),
    which it can only replace by DH(its own key, S_b). B refuses the initiation and changes nothing."""
    _, b = _sides()
    victim_public = StaticIdentity(KEY_A).public_key
    ephemeral_private, ephemeral_public = crypto.dh_generate(_rng_returning(EPHEMERAL_A))
    responder_public = b.local.public_key
    ck = crypto.kdf1(crypto.hash(CONSTRUCTION), ephemeral_public)
    h = crypto.hash(b.local.hash0 + ephemeral_public)
    ck, key = crypto.kdf2(ck, crypto.dh(ephemeral_private, responder_public.raw))
    encrypted_static = crypto.aead_seal(key, 0, victim_public.raw, h)
    h = crypto.hash(h + encrypted_static)
    ck, key = crypto.kdf2(ck, crypto.dh(KEY_STRANGER.raw, responder_public.raw))  # not DH(S_a, S_b): unknown to it
    encrypted_timestamp = crypto.aead_seal(key, 0, stamp(WALL_NS), h)
    unsigned = Initiation(INDEX_A, ephemeral_public, encrypted_static, encrypted_timestamp)
    mac1 = _mac1(responder_public, unsigned.pack(), MAC1_OFFSET_INITIATION)
    forged = Initiation(INDEX_A, ephemeral_public, encrypted_static, encrypted_timestamp, mac1)
    before = _snapshot(b.handshake)
    with pytest.raises(HandshakeRejected) as refused:
        b.consume_initiation(forged)
    assert refused.value.reason is DropReason.HANDSHAKE_FAILED
    assert _snapshot(b.handshake) == before
    # the same message with the one value the attacker lacks is accepted: the refusal is the missing DH, nothing else
    _, b_again = _sides()
    ck_real = crypto.kdf2(
        crypto.kdf1(crypto.hash(CONSTRUCTION), ephemeral_public), crypto.dh(ephemeral_private, responder_public.raw)
    )[0]
    _ck, key = crypto.kdf2(ck_real, crypto.dh(KEY_A.raw, responder_public.raw))
    genuine = Initiation(INDEX_A, ephemeral_public, encrypted_static, crypto.aead_seal(key, 0, stamp(WALL_NS), h))
    assert b_again.consume_initiation(genuine) is b_again.handshake
