"""Cookie edges that the mutation audit found unpinned, with expected values from the kernel's ``cookie.c``.

Sources (repository ``torvalds/linux``, ``drivers/net/wireguard/cookie.c``), read, not copied:

- ``make_cookie`` renews the secret when ``wg_birthdate_has_expired(checker->secret_birthdate,
  COOKIE_SECRET_MAX_AGE)``, i.e. once ``birthdate + 120 s <= now``: the age is measured from the moment the secret
  was drawn, whatever the clock read then (whitepaper §5.4.7: "a secret random value that changes every two
  minutes").
- ``wg_cookie_message_consume`` does nothing unless ``peer->latest_cookie.have_sent_mac1``, decrypts with the last
  mac1 sent as associated data, and clears ``have_sent_mac1`` after a reply is taken: a cookie reply is accepted only
  as the answer to the last handshake message we sent, once. The cookie key is
  ``HASH(LABEL_COOKIE || Spub_peer)`` (whitepaper §5.4.7), computable by anyone who knows the peer's public key, so
  the associated data is the only thing that binds a reply to a message we sent.
- ``wg_cookie_checker_precompute_device_keys`` zeroes both precomputed keys when the device loses its identity: a
  mac1 made for the old public key must no longer pass.

The oracle encrypts forged replies with libsodium directly (``nacl.bindings``), not with ``wgpy.crypto``.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt
from support.helpers import det_rng, private_key

from wgpy.constants import COOKIE_REFRESH_TIME
from wgpy.cookie import CookieChecker, CookieGenerator, MacState
from wgpy.messages import MAC_SIZE, MESSAGE_INITIATION_SIZE, CookieReply

RECEIVER = private_key(11).public_key()
SOURCE = bytes([198, 51, 100, 7]) + (51820).to_bytes(2, "big")


def _message(seed: int) -> bytes:
    body = random.Random(seed).randbytes(MESSAGE_INITIATION_SIZE - 4 - 2 * MAC_SIZE)
    return (1).to_bytes(4, "little") + body + bytes(2 * MAC_SIZE)


def _forged_reply(associated_data: bytes, cookie: bytes = b"\x42" * 16) -> CookieReply:
    """A cookie reply anyone can make from RECEIVER's public key alone, bound to ``associated_data``."""
    key = hashlib.blake2s(b"cookie--" + RECEIVER.raw).digest()
    nonce = b"\x07" * 24
    encrypted = crypto_aead_xchacha20poly1305_ietf_encrypt(cookie, associated_data, nonce, key)
    return CookieReply(0x11223344, nonce, encrypted)


@pytest.mark.parametrize("born", [0.5, 1000.0, 86_400.0 * 30])
def test_the_cookie_secret_ages_from_when_it_was_drawn(born: float) -> None:
    """Kills ``now + birthdate >= max age``: a secret drawn at a large monotonic time is good for 120 s from then."""
    checker = CookieChecker(RECEIVER, det_rng(21))
    generator = CookieGenerator(RECEIVER)
    sent = generator.add_macs(_message(1), now=born)
    assert generator.consume_reply(checker.create_reply(sent, 1, SOURCE, born), now=born)  # secret drawn at `born`
    retry = generator.add_macs(_message(2), now=born + 1.0)
    assert checker.check(retry, SOURCE, True, born + 1.0) is MacState.VALID_MAC_WITH_COOKIE
    assert checker.check(retry, SOURCE, True, born + COOKIE_REFRESH_TIME - 0.5) is MacState.VALID_MAC_WITH_COOKIE
    assert checker.check(retry, SOURCE, True, born + COOKIE_REFRESH_TIME) is MacState.VALID_MAC_BUT_NO_COOKIE


@pytest.mark.parametrize("associated_data", [b"", bytes(MAC_SIZE)])
def test_a_reply_before_any_message_is_refused_even_with_empty_associated_data(associated_data: bytes) -> None:
    """Kills ``_last_mac1_sent is 0`` in ``consume_reply`` (kernel: nothing sent, ``have_sent_mac1`` false)."""
    generator = CookieGenerator(RECEIVER)
    assert not generator.consume_reply(_forged_reply(associated_data), now=5.0)
    assert not generator.has_fresh_cookie(5.0)
    assert generator.add_macs(_message(3), now=5.0)[-MAC_SIZE:] == bytes(MAC_SIZE)  # no mac2 from a forged cookie


@pytest.mark.parametrize("associated_data", [b"", bytes(MAC_SIZE)])
def test_after_a_reply_is_taken_no_other_reply_is_until_the_next_message(associated_data: bytes) -> None:
    """Kills ``_last_mac1_sent = b""`` after a consumed reply (kernel clears ``have_sent_mac1``): a forged reply
    with empty or zero associated data must be refused, returning ``False`` and keeping the real cookie."""
    checker = CookieChecker(RECEIVER, det_rng(22))
    generator = CookieGenerator(RECEIVER)
    sent = generator.add_macs(_message(4), now=10.0)
    assert generator.consume_reply(checker.create_reply(sent, 1, SOURCE, 10.0), now=10.0)
    assert generator.consume_reply(_forged_reply(associated_data), now=11.0) is False
    retry = generator.add_macs(_message(5), now=12.0)
    assert checker.check(retry, SOURCE, True, 12.0) is MacState.VALID_MAC_WITH_COOKIE  # still the real cookie


def test_losing_the_private_key_invalidates_mac1_for_the_old_public_key() -> None:
    """Kills deleting the key reset in ``set_public_key(None)`` (kernel zeroes the precomputed keys)."""
    checker = CookieChecker(RECEIVER, det_rng(23))
    message = CookieGenerator(RECEIVER).add_macs(_message(6), now=0.0)
    assert checker.check(message, SOURCE, False, 0.0) is MacState.VALID_MAC_BUT_NO_COOKIE
    checker.set_public_key(None)
    assert not checker.check_mac1(message)
    assert checker.check(message, SOURCE, False, 0.0) is MacState.INVALID_MAC
    assert checker.check(message, SOURCE, True, 0.0) is MacState.INVALID_MAC
