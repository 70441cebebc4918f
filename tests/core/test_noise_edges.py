"""Handshake edges that the mutation audit of ``wgpy/noise.py`` found unpinned.

Sources of the expected values: the kernel's ``wg_noise_handshake_consume_initiation``
(``drivers/net/wireguard/noise.c``):

    replay_attack = memcmp(t, handshake->latest_timestamp, NOISE_TIMESTAMP_LEN) <= 0;
    flood_attack = (s64)handshake->last_initiation_consumption +
                   NSEC_PER_SEC / INITIATIONS_PER_SECOND > (s64)ktime_get_coarse_boottime_ns();

so an initiation exactly 1/50 s (HANDSHAKE_INITIATION_RATE) after the last one consumed is no flood (the
docstring of ``consume_initiation`` says the same: a flood is "more than 50 initiations a second"; wireguard-go's
``ConsumeMessageInitiation`` uses ``<=`` there, and wgpy follows the kernel). The whitepaper §5.4.2 (the responder
keeps the greatest timestamp per peer and refuses one not greater) and the same kernel function: the two checks
are independent, and an initiation refused for either one commits nothing. For ``Handshake.clear``: the kernel's
``wg_noise_handshake_clear`` calls ``handshake_zero`` (state ``HANDSHAKE_ZEROED``, the ephemeral key erased), and
``wg_noise_handshake_consume_response`` refuses a response unless the state is ``HANDSHAKE_CREATED_INITIATION``:
a response to an abandoned initiation cannot complete it.
"""

from __future__ import annotations

from typing import Final

import pytest

from wgpy.constants import HANDSHAKE_INITIATION_RATE
from wgpy.errors import DropReason
from wgpy.keys import PrivateKey, PublicKey
from wgpy.noise import (
    Handshake,
    HandshakeRejected,
    HandshakeState,
    StaticIdentity,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wgpy.tai64n import stamp

KEY_A: Final = PrivateKey(bytes(range(32)))
KEY_B: Final = PrivateKey(bytes(range(32, 64)))
WALL_NS: Final = 1_700_000_000_000_000_000
SECOND_NS: Final = 1_000_000_000


class _Sides:
    """A (initiator) and B (responder), each with its handshake towards the other; A's ephemeral is fixed."""

    def __init__(self) -> None:
        self.local_a, self.local_b = StaticIdentity(KEY_A), StaticIdentity(KEY_B)
        self.a = Handshake(self.local_a, self.local_b.public_key)
        self.b = Handshake(self.local_b, self.local_a.public_key)

    def _lookup(self, key: PublicKey) -> Handshake | None:
        return self.b if key == self.local_a.public_key else None

    def consume(self, wall_ns: int, now: float) -> Handshake:
        """B consumes a new initiation from A stamped ``wall_ns``, at ``now``."""
        message = create_initiation(self.a, self.local_a, 0x1111, wall_ns, lambda n: bytes(range(96, 96 + n)))
        return consume_initiation(message, self.local_b, self._lookup, now)


def _rejected(sides: _Sides, wall_ns: int, now: float) -> DropReason:
    with pytest.raises(HandshakeRejected) as info:
        sides.consume(wall_ns, now)
    return info.value.reason


def test_an_initiation_exactly_the_rate_after_the_last_is_no_flood() -> None:
    """Kernel: flood iff ``last + 1/50 s > now``. At ``now - last == HANDSHAKE_INITIATION_RATE`` exactly (0.0 and
    0.02 are exact in binary floating point for this difference) it is accepted. Kills ``<=`` for ``<``."""
    sides = _Sides()
    sides.consume(WALL_NS, 0.0)
    assert sides.b.last_initiation_consumption == 0.0
    now = HANDSHAKE_INITIATION_RATE
    assert now - 0.0 == HANDSHAKE_INITIATION_RATE
    assert _rejected(sides, WALL_NS + SECOND_NS, now * 0.999) is DropReason.HANDSHAKE_FLOOD
    handshake = sides.consume(WALL_NS + SECOND_NS, now)
    assert handshake.latest_timestamp == stamp(WALL_NS + SECOND_NS)
    assert handshake.last_initiation_consumption == now


def test_a_response_to_a_cleared_handshake_is_refused() -> None:
    """A's initiation is answered, then A abandons the handshake (``clear``): the state is ZEROED, the ephemeral
    gone, and B's response is HANDSHAKE_FAILED. Kills deleting ``self._zero()`` in ``clear``."""
    sides = _Sides()
    sides.consume(WALL_NS, 1.0)
    response = create_response(sides.b, 0x2222, lambda n: bytes(range(160, 160 + n)))
    before = sides.a.state
    assert before is HandshakeState.CREATED_INITIATION
    sides.a.clear()
    assert sides.a.state is HandshakeState.ZEROED
    assert sides.a.ephemeral_key is None and sides.a.ephemeral_private == bytes(32)
    assert sides.a.local_index == 0
    with pytest.raises(HandshakeRejected) as info:
        consume_response(response, sides.local_a, lambda index: sides.a if index == 0x1111 else None)
    assert info.value.reason is DropReason.HANDSHAKE_FAILED
    assert sides.a.state is HandshakeState.ZEROED
