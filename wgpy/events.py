"""Events: the rare state changes a driver or an embedding program may want to hear about.

Like h11's events, each is a frozen, slotted dataclass that nobody subclasses further. Dropped datagrams are NOT
events (they are counted in ``Device.stats``): a queue of drops would let a flood grow memory.

``Endpoint``, the socket address an event (and every datagram) carries, is defined here, once, with the one helper
that tells its address family.
"""

from __future__ import annotations

from dataclasses import dataclass

from .keys import PublicKey

__all__ = [
    "Endpoint",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "KeypairExpired",
    "PeerRemoved",
    "endpoint_is_ipv6",
]

#: A socket address as the driver receives it: ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for
#: IPv6. The core treats it as opaque except for mac2 (``endpoint_bytes``) and UAPI formatting.
Endpoint = tuple[str, int] | tuple[str, int, int, int]


def endpoint_is_ipv6(endpoint: Endpoint) -> bool:
    """Whether ``endpoint`` is an IPv6 address (its host has a colon): the one test of an endpoint's family."""
    return ":" in endpoint[0]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of all events."""


@dataclass(frozen=True, slots=True)
class HandshakeCompleted(Event):
    """A handshake with ``peer`` finished and a new session is ready (initiator) or confirmed (responder)."""

    peer: PublicKey
    is_initiator: bool


@dataclass(frozen=True, slots=True)
class EndpointChanged(Event):
    """``peer`` roamed: its authenticated packets now come from ``endpoint``."""

    peer: PublicKey
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class KeypairExpired(Event):
    """All session keys of ``peer`` were erased (3 × REJECT_AFTER_TIME without a new session)."""

    peer: PublicKey


@dataclass(frozen=True, slots=True)
class PeerRemoved(Event):
    """``peer`` was removed from the configuration."""

    peer: PublicKey
