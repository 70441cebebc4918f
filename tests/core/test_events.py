"""Events (h11-style frozen dataclasses) and the one endpoint family helper."""

from __future__ import annotations

import dataclasses

import pytest
from support.helpers import private_key

from wgpy.events import EndpointChanged, Event, HandshakeCompleted, KeypairExpired, PeerRemoved, endpoint_is_ipv6


def test_endpoint_family() -> None:
    assert not endpoint_is_ipv6(("192.0.2.1", 51820))
    assert endpoint_is_ipv6(("fd00::1", 51820, 0, 0))
    assert endpoint_is_ipv6(("fe80::1%eth0", 51820, 0, 2))
    assert endpoint_is_ipv6(("::ffff:192.0.2.1", 1, 0, 0))


def test_events_are_frozen_and_compare_by_value() -> None:
    key = private_key(1).public_key()
    events: list[Event] = [
        HandshakeCompleted(key, is_initiator=True),
        EndpointChanged(key, ("192.0.2.1", 1)),
        KeypairExpired(key),
        PeerRemoved(key),
    ]
    for event in events:
        assert isinstance(event, Event)
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.peer = key  # type: ignore[attr-defined]
    assert PeerRemoved(key) == PeerRemoved(private_key(1).public_key())
