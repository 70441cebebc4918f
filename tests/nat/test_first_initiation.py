"""Two agents get each other's candidates at the same moment (the server forwards both frames at once): only the
side with the lower public key initiates then, so the two initiations never cross. Crossed, each side consumed
the other's initiation as a responder and dropped the response to its own (an unknown index), and neither had a
session until a retransmission REKEY_TIMEOUT later: the browser walk's laptop stayed "checking" for 5 to 10 s.

The two devices are a ``support.helpers`` pair on the in-memory network, each with a ``NatHandler`` on a stand-in
for its tunnel (the network drains the devices itself); time only moves when the test moves it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import pytest
from support.helpers import ENDPOINT_A, ENDPOINT_B, Pair, datagrams_from, make_pair

from wgpy.device import Device
from wgpy.errors import DropReason
from wgpy.events import Endpoint
from wgpy.keys import PublicKey
from wgpy.messages import MessageType
from wgpy.nat.io.handler import CROSSING_HOLD, NatHandler
from wgpy.nat.paths import PathState, initiates_first

if TYPE_CHECKING:
    from wgpy.drivers.asyncio_udp import Tunnel


class _Tunnel:
    """What ``NatHandler`` uses of a tunnel here: its device, and ``flush`` (the network sends for it)."""

    def __init__(self, device: Device) -> None:
        self.device = device

    def flush(self) -> None:
        pass


def _handler(pair: Pair, device: Device) -> NatHandler:
    handler = NatHandler([], clock=lambda: pair.net.now)
    handler.tunnel = cast("Tunnel", _Tunnel(device))  # what ``attach`` does, without its STUN and tick timers
    return handler


def _host(endpoint: Endpoint) -> list[dict[str, object]]:
    return [{"kind": "host", "host": str(endpoint[0]), "port": int(endpoint[1])}]


class _Sides:
    """The pair with its handlers, sorted: ``first`` holds the lower public key, ``second`` the higher."""

    def __init__(self, seed: int) -> None:
        self.pair = pair = make_pair(seed=seed)
        a, b = (pair.a, ENDPOINT_A, pair.pub_a), (pair.b, ENDPOINT_B, pair.pub_b)
        (self.first, self.first_at, self.first_key), (self.second, self.second_at, self.second_key) = sorted(
            (a, b), key=lambda side: side[2].raw
        )
        self.nat_first, self.nat_second = _handler(pair, self.first), _handler(pair, self.second)

    def both_get_candidates(self) -> None:
        """Each side's frame arrives before any datagram moves (the server forwarded both at once)."""
        now = self.pair.net.now
        self.nat_first.set_remote_candidates(self.second_key, _host(self.second_at), [str(self.second_at[0])])
        self.nat_second.set_remote_candidates(self.first_key, _host(self.first_at), [str(self.first_at[0])])
        assert self.nat_first.paths[self.second_key].state is PathState.CHECKING
        assert self.pair.net.now == now

    def session(self, device: Device, key: PublicKey) -> bool:
        peer = device.peer(key)
        return peer is not None and peer.keypairs.current is not None

    def initiations_from(self, endpoint: Endpoint) -> int:
        return len(datagrams_from(self.pair.net, endpoint, MessageType.INITIATION))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_candidates_arriving_together_make_one_handshake_not_two_crossed(seed: int) -> None:
    sides = _Sides(seed)
    sides.both_get_candidates()
    sides.pair.net.pump()
    # Without a tie-break both sides sent an initiation here, and neither held a session afterwards.
    assert sides.session(sides.first, sides.second_key) and sides.session(sides.second, sides.first_key)
    assert sides.initiations_from(sides.first_at) == 1
    assert sides.initiations_from(sides.second_at) == 0
    for device in (sides.first, sides.second):
        assert device.stats.drops[DropReason.UNKNOWN_INDEX] == 0
    # The held punch, due now, sends no initiation (the session is up): only its persistent keepalive.
    assert sides.second_key not in sides.nat_second.held and sides.first_key in sides.nat_second.held
    sides.pair.net.now += CROSSING_HOLD
    sides.nat_second.punch_due(sides.pair.net.now)
    sides.pair.net.pump()
    assert sides.initiations_from(sides.second_at) == 0
    assert not sides.nat_second.held
    peer = sides.second.peer(sides.first_key)
    assert peer is not None and peer.timers.persistent_keepalive_interval > 0


def test_the_held_side_initiates_when_the_first_initiation_never_arrived() -> None:
    """Behind a NAT that drops the first side's initiation (no binding for it yet), the held one goes out after
    the hold and completes the handshake; before the hold it does not."""
    sides = _Sides(5)
    net = sides.pair.net
    dropped: list[bytes] = []

    def lose_the_first_initiation(source: Endpoint, data: bytes, _destination: Endpoint) -> bytes | None:
        if source == sides.first_at and data[0] == MessageType.INITIATION and not dropped:
            dropped.append(data)
            return None
        return data

    net.tap = lose_the_first_initiation
    sides.both_get_candidates()
    net.pump()
    assert len(dropped) == 1 and sides.initiations_from(sides.second_at) == 0
    net.now += CROSSING_HOLD / 2
    sides.nat_second.punch_due(net.now)  # not yet
    net.pump()
    assert sides.initiations_from(sides.second_at) == 0
    net.now += CROSSING_HOLD / 2
    sides.nat_second.punch_due(net.now)
    net.pump()
    assert sides.initiations_from(sides.second_at) == 1
    assert sides.session(sides.first, sides.second_key) and sides.session(sides.second, sides.first_key)
    assert sides.first.stats.drops[DropReason.UNKNOWN_INDEX] == 0


def test_a_later_frame_does_not_put_the_held_punch_off() -> None:
    sides = _Sides(7)
    net = sides.pair.net
    net.blocked.add(sides.first_at)  # nothing of the first side's gets through
    sides.both_get_candidates()
    due = sides.nat_second.held[sides.first_key]
    net.now += CROSSING_HOLD / 2
    sides.nat_second.set_remote_candidates(sides.first_key, _host(sides.first_at), [str(sides.first_at[0])])
    assert sides.nat_second.held[sides.first_key] == due


def test_exactly_one_of_two_keys_goes_first() -> None:
    keys = [bytes([n]) * 32 for n in (1, 2, 200)] + [bytes(31) + b"\x01", b"\x01" + bytes(31)]
    for own in keys:
        for other in keys:
            if own != other:
                assert initiates_first(own, other) != initiates_first(other, own)
    assert initiates_first(bytes(32), b"\xff" * 32)
