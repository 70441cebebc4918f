"""mac1, mac2 and cookie replies (whitepaper §5.4.4, §5.4.7; kernel cookie.c), with the clock stepped by hand.

The oracle below rebuilds the whitepaper's formulas straight from ``hashlib`` (BLAKE2s) and libsodium's
XChaCha20-Poly1305, without going through ``wgpy.crypto``:

    mac1 = MAC(HASH(LABEL_MAC1 || Spub_receiver), msg_alpha)        msg_alpha = msg[:mac1 offset]
    mac2 = MAC(cookie, msg_beta)                                     msg_beta = msg[:mac2 offset]
    cookie = MAC(Rm, source)                                         Rm: a random secret, renewed every 120 s
    reply = XAEAD(HASH(LABEL_COOKIE || Spub_receiver), nonce, cookie, mac1 of the message answered)
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_decrypt
from support.helpers import det_rng, private_key

from wgpy.constants import COOKIE_REFRESH_TIME, REKEY_TIMEOUT
from wgpy.cookie import CookieChecker, CookieGenerator, MacState, mac_offsets
from wgpy.messages import MAC_SIZE, MESSAGE_COOKIE_REPLY_SIZE, MESSAGE_INITIATION_SIZE, MESSAGE_RESPONSE_SIZE

RECEIVER = private_key(1).public_key()
OTHER = private_key(2).public_key()
SOURCE = bytes([192, 0, 2, 1]) + (51820).to_bytes(2, "big")
OTHER_SOURCE = bytes([192, 0, 2, 9]) + (51820).to_bytes(2, "big")


def _hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def _message(size: int = MESSAGE_INITIATION_SIZE, seed: int = 0) -> bytes:
    kind = 1 if size == MESSAGE_INITIATION_SIZE else 2
    body = random.Random(seed).randbytes(size - 4 - 2 * MAC_SIZE)
    return kind.to_bytes(4, "little") + body + bytes(2 * MAC_SIZE)


class SecretRecordingRng:
    """An rng that remembers what it handed out, so the test can recompute the cookie."""

    def __init__(self, seed: int) -> None:
        self._rng = det_rng(seed)
        self.draws: list[bytes] = []

    def __call__(self, n: int) -> bytes:
        out = self._rng(n)
        self.draws.append(out)
        return out


def test_mac_offsets() -> None:
    assert mac_offsets(MESSAGE_INITIATION_SIZE) == (116, 132)
    assert mac_offsets(MESSAGE_RESPONSE_SIZE) == (60, 76)
    for size in (0, 64, 147, 149, 32):
        with pytest.raises(ValueError):
            mac_offsets(size)


@pytest.mark.parametrize("size", [MESSAGE_INITIATION_SIZE, MESSAGE_RESPONSE_SIZE])
def test_mac1_matches_the_whitepaper(size: int) -> None:
    message = CookieGenerator(RECEIVER).add_macs(_message(size), now=0.0)
    mac1_offset, mac2_offset = mac_offsets(size)
    expected = _mac(_hash(b"mac1----" + RECEIVER.raw), message[:mac1_offset])
    assert message[mac1_offset:mac2_offset] == expected
    assert message[mac2_offset:] == bytes(MAC_SIZE)  # no cookie: mac2 is zero
    assert message[:mac1_offset] == _message(size)[:mac1_offset]
    checker = CookieChecker(RECEIVER, det_rng(1))
    assert checker.check(message, SOURCE, False, 0.0) is MacState.VALID_MAC_BUT_NO_COOKIE
    assert checker.check(message, SOURCE, True, 0.0) is MacState.VALID_MAC_BUT_NO_COOKIE
    assert CookieChecker(OTHER, det_rng(1)).check(message, SOURCE, False, 0.0) is MacState.INVALID_MAC


@settings(max_examples=60, deadline=None)
@given(position=st.integers(0, 115), flip=st.integers(1, 255))
def test_any_change_before_mac2_breaks_mac1(position: int, flip: int) -> None:
    message = bytearray(CookieGenerator(RECEIVER).add_macs(_message(), now=0.0))
    message[position] ^= flip
    assert CookieChecker(RECEIVER, det_rng(1)).check(bytes(message), SOURCE, False, 0.0) is MacState.INVALID_MAC


def test_without_a_public_key_every_mac_is_invalid() -> None:
    message = CookieGenerator(RECEIVER).add_macs(_message(), now=0.0)
    checker = CookieChecker(None, det_rng(1))
    assert not checker.check_mac1(message)
    assert checker.check(message, SOURCE, True, 0.0) is MacState.INVALID_MAC
    checker.set_public_key(RECEIVER)
    assert checker.check(message, SOURCE, False, 0.0) is MacState.VALID_MAC_BUT_NO_COOKIE
    checker.set_public_key(OTHER)  # the device's key changed: old mac1s no longer pass
    assert checker.check(message, SOURCE, False, 0.0) is MacState.INVALID_MAC


def test_cookie_round_trip_against_the_oracle() -> None:
    rng = SecretRecordingRng(7)
    checker = CookieChecker(RECEIVER, rng)
    generator = CookieGenerator(RECEIVER)
    first = generator.add_macs(_message(seed=1), now=10.0)
    reply = checker.create_reply(first, sender_index=0x01020304, source=SOURCE, now=10.0)
    packed = reply.pack()
    assert len(packed) == MESSAGE_COOKIE_REPLY_SIZE
    assert packed[:8] == (3).to_bytes(4, "little") + (0x01020304).to_bytes(4, "little")
    # The oracle decrypts it with HASH(LABEL_COOKIE || Spub) and the answered message's mac1 as associated data.
    nonce, secret = rng.draws  # the nonce, then the first cookie secret
    assert reply.nonce == nonce
    mac1_offset, mac2_offset = mac_offsets(len(first))
    cookie = crypto_aead_xchacha20poly1305_ietf_decrypt(
        reply.encrypted_cookie, first[mac1_offset:mac2_offset], reply.nonce, _hash(b"cookie--" + RECEIVER.raw)
    )
    assert cookie == _mac(secret, SOURCE)
    # The generator takes it, and its next message carries mac2 = MAC(cookie, msg_beta).
    assert generator.consume_reply(reply, now=10.5)
    assert generator.has_fresh_cookie(10.5)
    second = generator.add_macs(_message(seed=2), now=11.0)
    assert second[mac2_offset:] == _mac(cookie, second[:mac2_offset])
    assert checker.check(second, SOURCE, True, 11.0) is MacState.VALID_MAC_WITH_COOKIE
    assert checker.check(second, OTHER_SOURCE, True, 11.0) is MacState.VALID_MAC_BUT_NO_COOKIE  # bound to source
    assert checker.check(second, SOURCE, False, 11.0) is MacState.VALID_MAC_BUT_NO_COOKIE  # not checked off load


def test_a_reply_is_only_good_for_the_last_message_sent() -> None:
    checker = CookieChecker(RECEIVER, det_rng(3))
    generator = CookieGenerator(RECEIVER)
    assert not generator.consume_reply(
        checker.create_reply(_message(), 1, SOURCE, 0.0), now=0.0
    )  # nothing sent yet: no associated data to check against
    old = generator.add_macs(_message(seed=1), now=0.0)
    old_reply = checker.create_reply(old, 1, SOURCE, 0.0)
    latest = generator.add_macs(_message(seed=2), now=1.0)
    assert not generator.consume_reply(old_reply, now=1.0)
    assert not generator.has_fresh_cookie(1.0)
    reply = checker.create_reply(latest, 1, SOURCE, 1.0)
    assert generator.consume_reply(reply, now=1.0)
    assert not generator.consume_reply(reply, now=1.0)  # one reply per message sent


def test_a_reply_from_another_key_does_not_decrypt() -> None:
    generator = CookieGenerator(RECEIVER)
    sent = generator.add_macs(_message(), now=0.0)
    stranger = CookieChecker(OTHER, det_rng(4))
    assert not generator.consume_reply(stranger.create_reply(sent, 1, SOURCE, 0.0), now=0.0)


def test_a_received_cookie_is_used_for_two_minutes_minus_latency() -> None:
    checker = CookieChecker(RECEIVER, det_rng(5))
    generator = CookieGenerator(RECEIVER)
    sent = generator.add_macs(_message(), now=100.0)
    assert generator.consume_reply(checker.create_reply(sent, 1, SOURCE, 100.0), now=100.0)
    _, mac2_offset = mac_offsets(MESSAGE_INITIATION_SIZE)
    last_good = 100.0 + COOKIE_REFRESH_TIME - REKEY_TIMEOUT - 0.001
    assert generator.has_fresh_cookie(last_good)
    assert generator.add_macs(_message(), now=last_good)[mac2_offset:] != bytes(MAC_SIZE)
    assert not generator.has_fresh_cookie(100.0 + COOKIE_REFRESH_TIME - REKEY_TIMEOUT)
    assert generator.add_macs(_message(), now=100.0 + COOKIE_REFRESH_TIME)[mac2_offset:] == bytes(MAC_SIZE)


def test_the_cookie_secret_changes_every_two_minutes() -> None:
    checker = CookieChecker(RECEIVER, det_rng(6))
    generator = CookieGenerator(RECEIVER)
    sent = generator.add_macs(_message(), now=0.0)
    assert generator.consume_reply(checker.create_reply(sent, 1, SOURCE, 0.0), now=0.0)
    message = generator.add_macs(_message(seed=3), now=1.0)
    assert checker.check(message, SOURCE, True, COOKIE_REFRESH_TIME - 0.001) is MacState.VALID_MAC_WITH_COOKIE
    # The secret is renewed once it is two minutes old: a cookie made with the old one is worthless.
    assert checker.check(message, SOURCE, True, COOKIE_REFRESH_TIME) is MacState.VALID_MAC_BUT_NO_COOKIE


def test_cookie_secret_is_drawn_lazily_from_the_injected_rng() -> None:
    rng = SecretRecordingRng(8)
    checker = CookieChecker(RECEIVER, rng)
    message = CookieGenerator(RECEIVER).add_macs(_message(), now=0.0)
    checker.check(message, SOURCE, False, 0.0)
    assert rng.draws == []  # off load, no secret is needed
    checker.check(message, SOURCE, True, 0.0)
    checker.check(message, OTHER_SOURCE, True, 60.0)
    assert [len(d) for d in rng.draws] == [32]  # one secret for both sources within its lifetime
    checker.check(message, SOURCE, True, 200.0)
    assert [len(d) for d in rng.draws] == [32, 32]
