"""A TURN allocation (RFC 8656) through aioice's TURN client: the relayed path to peers behind symmetric NATs.

Theory of operation: ``TurnRelay.allocate`` creates an allocation on the TURN server with the short-lived
credentials the management server issued (coturn ``use-auth-secret``), through ``aioice.turn.create_turn_endpoint``:
aioice does the Allocate/401/nonce exchange, the refreshes, the permissions and the channel bindings (a datagram
to a new peer binds a channel first, then goes as ChannelData). ``send`` hands one WireGuard datagram to a peer's
transport address through the allocation; what the server relays back from a peer arrives in ``on_datagram``
with that peer's address, and goes to the device like any datagram. The TURN server sees only WireGuard messages
(encrypted transport, handshake messages): it cannot decrypt them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aioice import turn

__all__ = ["TurnRelay"]

logger = logging.getLogger("wgpy.nat")

ALLOCATION_LIFETIME = 600  # seconds asked for (RFC 8656 §3.2 default); aioice refreshes at 5/6 of it


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, relay: TurnRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.received += 1
        self.relay.on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self.relay.errors += 1
        logger.debug("TURN send failed: %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.lost = True


class TurnRelay:
    """One allocation on one TURN server.

    Args:
        server: the TURN server's ``(host, port)``.
        username, password: the time-limited credentials (``credentials.turn_credentials``).
        on_datagram: called with ``(data, peer address)`` for each datagram a peer sent through the allocation.
    """

    def __init__(
        self,
        server: tuple[str, int],
        username: str,
        password: str,
        on_datagram: Callable[[bytes, tuple[str, int]], None],
    ) -> None:
        self.server = server
        self.username = username
        self.password = password
        self.on_datagram = on_datagram
        self.relayed_address: tuple[str, int] | None = None
        self.mapped_address: tuple[str, int] | None = None
        self._transport: turn.TurnTransport | None = None
        self.sent = self.received = self.errors = 0
        self.lost = False

    def __repr__(self) -> str:  # never the password
        return f"TurnRelay(server={self.server}, relayed={self.relayed_address})"

    async def allocate(self, timeout: float = 10.0) -> tuple[str, int]:
        transport, _ = await asyncio.wait_for(
            turn.create_turn_endpoint(
                lambda: _Receiver(self),
                server_addr=self.server,
                username=self.username,
                password=self.password,
                lifetime=ALLOCATION_LIFETIME,
            ),
            timeout,
        )
        self._transport = transport
        relayed = transport.get_extra_info("sockname")
        mapped = transport.get_extra_info("related_address")
        self.relayed_address = (str(relayed[0]), int(relayed[1]))
        self.mapped_address = (str(mapped[0]), int(mapped[1])) if mapped else None
        logger.info("TURN allocation %s:%d on %s:%d", *self.relayed_address, *self.server)
        return self.relayed_address

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self.lost

    def send(self, data: bytes, peer: tuple[str, int]) -> None:
        if self._transport is None or self.lost:
            self.errors += 1
            return
        self.sent += 1
        self._transport.sendto(data, peer)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
