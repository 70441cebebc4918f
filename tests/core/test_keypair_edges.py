"""Keypair edges that the mutation audit of ``wgpy/keypair.py`` found unpinned: ``seal``'s two limits.

Sources of the expected values: the whitepaper §6.1 (no message is sent with a counter at or past
REJECT_AFTER_MESSAGES = 2**64 - 2**13 - 1); the kernel's ``encrypt_packet`` (``drivers/net/wireguard/send.c``)
refuses a nonce ``>= REJECT_AFTER_MESSAGES`` and wireguard-go's ``RoutineEncryption`` (``device/send.go``) drops
when ``nonce >= RejectAfterMessages``; ``Keypair.seal``'s docstring: ``None`` "once the counter reaches ``limit``
(REJECT_AFTER_MESSAGES; lower in tests)", so the limit is exclusive, and a larger ``limit`` never lifts the
protocol's own (``reserve`` takes ``min(limit, REJECT_AFTER_MESSAGES)`` for the same reason). For ``zero``: the
whitepaper §6.1 (key material is erased when no longer needed; the kernel frees keypairs with ``kfree_sensitive``)
and ``Keypair.zero``'s docstring ("dropping the only references to the AEAD objects ... guarantees nothing more is
sealed or opened with it"), which includes the ciphers handed out by ``send_aead`` / ``recv_aead``.
"""

from __future__ import annotations

import struct

import pytest

from wgpy import crypto
from wgpy.constants import REJECT_AFTER_MESSAGES
from wgpy.keypair import Keypair, seal_run

KEY_A = bytes(range(32))
KEY_B = bytes(range(100, 132))


def _pair() -> tuple[Keypair, Keypair]:
    a = Keypair(send_key=KEY_A, recv_key=KEY_B, local_index=1, remote_index=2, is_initiator=True, now=0.0)
    b = Keypair(send_key=KEY_B, recv_key=KEY_A, local_index=2, remote_index=1, is_initiator=False, now=0.0)
    return a, b


def _counter(message: bytes) -> int:
    return int(struct.unpack_from("<Q", message, 8)[0])


@pytest.mark.parametrize("limit", [1, 5, 1000])
def test_seal_stops_when_the_counter_reaches_a_lower_limit(limit: int) -> None:
    """With ``limit`` below REJECT_AFTER_MESSAGES, counter ``limit - 1`` is the last sealed and ``limit`` is refused
    without being spent. Kills ``counter > limit`` and ``counter >= limit and counter >= REJECT_AFTER_MESSAGES``."""
    a, b = _pair()
    a.send_counter = limit - 1
    last = a.seal(b"", limit)
    assert last is not None and _counter(last) == limit - 1
    assert b.open(limit - 1, last) == b""
    assert a.seal(b"", limit) is None
    assert a.send_counter == limit
    assert a.seal_many([b"", b""], limit) == []


def test_a_limit_above_the_protocols_does_not_lift_it() -> None:
    """``limit`` past REJECT_AFTER_MESSAGES (2**64): counter REJECT_AFTER_MESSAGES - 1 is still the last sealed.
    Kills ``counter > REJECT_AFTER_MESSAGES``."""
    a, _ = _pair()
    a.send_counter = REJECT_AFTER_MESSAGES - 1
    last = a.seal(b"", 2**64)
    assert last is not None and _counter(last) == REJECT_AFTER_MESSAGES - 1
    assert a.seal(b"", 2**64) is None
    assert a.send_counter == REJECT_AFTER_MESSAGES
    assert a.reserve(1, 2**64) == (REJECT_AFTER_MESSAGES, 0)


def test_zero_drops_the_sending_cipher_too() -> None:
    """After ``zero`` the cipher ``send_aead`` hands out (what an offloaded ``seal_run`` uses) no longer seals under
    the session's key: the peer cannot open what it seals. Kills deleting ``self._send_aead = _DEAD_AEAD``."""
    a, b = _pair()
    live = seal_run(a.send_aead, a.remote_index, 0, [bytes(16)])
    assert b.open(0, live[0]) == bytes(16)
    a.zero()
    (dead,) = seal_run(a.send_aead, a.remote_index, 1, [bytes(16)])
    with pytest.raises(crypto.InvalidTag):
        b.open(1, dead)
    assert a.export_send_key() == b""
