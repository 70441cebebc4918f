"""The NAT layer's I/O shell on a running ``Tunnel``: STUN on the WireGuard socket, relayed endpoints.

Theory of operation: ``NatHandler.attach(tunnel)`` sets ``tunnel.nat``. From then on the tunnel hands every received
datagram to ``datagram_received`` first: the STUN ones (``stun.classify``) go to the ``BindingDiscovery`` and never
to the device; the rest return ``False`` and the device gets them as before. Requests go out of the tunnel's own
socket (``tunnel.send_datagrams``), so the server-reflexive address learnt is the WireGuard socket's mapping.

Datagrams the device sends to a *relayed* endpoint (the relayed transport address of a peer's TURN allocation) are
diverted by ``divert`` to our own allocation (``relay.TurnRelay``); the device never knows: a relayed endpoint is a
socket address like any other (see the README design notes). Decisions live in the pure modules; this file only
moves bytes, reads the clock and runs one timer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..drivers.clock import monotonic_now
from ..events import Endpoint
from .stun import BINDING_REFRESH_TIME, BindingDiscovery, DatagramKind, classify

if TYPE_CHECKING:
    from ..drivers.asyncio_udp import Tunnel
    from .relay import TurnRelay

__all__ = ["NatHandler"]

logger = logging.getLogger("wgpy.nat")


class NatHandler:
    """STUN discovery on a tunnel's socket and the relay diversion of its datagrams.

    Args:
        stun_servers: the STUN servers to ask (``(host, port)``; coturn answers Binding on its listening port).
        clock: seconds, the same clock as the tunnel's (``monotonic_now``).
    """

    def __init__(
        self,
        stun_servers: Sequence[tuple[str, int]] = (),
        *,
        clock: Callable[[], float] = monotonic_now,
    ) -> None:
        self.stun_servers = list(stun_servers)
        self.clock = clock
        self.discovery = BindingDiscovery()
        self.tunnel: Tunnel | None = None
        #: Relayed endpoints (peers' relayed transport addresses) -> the allocation that reaches them.
        self.relayed: dict[tuple[str, int], TurnRelay] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._learnt = asyncio.Event()
        self.on_reflexive: Callable[[tuple[str, int], tuple[str, int]], None] | None = None

    def attach(self, tunnel: Tunnel) -> None:
        """Hook into ``tunnel`` (started or not) and start discovering."""
        self.tunnel = tunnel
        tunnel.nat = self
        self.refresh()

    def detach(self) -> None:
        for handle in (self._timer, self._refresh):
            if handle is not None:
                handle.cancel()
        self._timer = self._refresh = None
        if self.tunnel is not None and self.tunnel.nat is self:
            self.tunnel.nat = None
        self.tunnel = None

    # --- the tunnel's hook ------------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, address: Endpoint) -> bool:
        if classify(data) is not DatagramKind.STUN:
            return False
        learnt = self.discovery.receive(data, address, self.clock())
        if learnt is not None:
            server = (str(address[0]), int(address[1]))
            logger.info("server-reflexive address %s:%d (from STUN server %s:%d)", *learnt, *server)
            self._learnt.set()
            if self.on_reflexive is not None:
                self.on_reflexive(server, learnt)
        self._flush()
        return True

    def divert(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> Sequence[tuple[bytes, Endpoint]]:
        if not self.relayed:
            return datagrams
        direct: list[tuple[bytes, Endpoint]] = []
        for data, endpoint in datagrams:
            relay = self.relayed.get((str(endpoint[0]), int(endpoint[1])))
            if relay is None:
                direct.append((data, endpoint))
            else:
                relay.send(data, (str(endpoint[0]), int(endpoint[1])))
        return direct

    # --- discovery --------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Ask every STUN server again now (and again every ``BINDING_REFRESH_TIME``: it also holds the mapping)."""
        now = self.clock()
        for server in self.stun_servers:
            self.discovery.start(server, now)
        self._flush()
        loop = asyncio.get_running_loop()
        if self._refresh is not None:
            self._refresh.cancel()
        self._refresh = loop.call_later(BINDING_REFRESH_TIME, self.refresh)

    async def wait_reflexive(self, timeout: float) -> dict[tuple[str, int], tuple[str, int]]:
        """The reflexive addresses learnt so far, waiting up to ``timeout`` s for a first one."""
        if not self.discovery.reflexive:
            self._learnt.clear()
            try:
                await asyncio.wait_for(self._learnt.wait(), timeout)
            except TimeoutError:
                pass
        return dict(self.discovery.reflexive)

    def _on_timer(self) -> None:
        self._timer = None
        self.discovery.handle_timer(self.clock())
        self._flush()

    def _flush(self) -> None:
        tunnel = self.tunnel
        out = self.discovery.datagrams_to_send()
        if tunnel is not None and out:
            tunnel.send_datagrams([(data, server) for data, server in out])
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.discovery.get_timer()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, deadline - self.clock()), self._on_timer)
