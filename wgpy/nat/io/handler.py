"""The NAT layer's I/O shell on a running ``Tunnel``: STUN on the WireGuard socket, relayed endpoints.

Theory of operation: ``NatHandler.attach(tunnel)`` sets ``tunnel.nat``. From then on the tunnel hands every received
datagram to ``datagram_received`` first: the STUN ones (``stun.classify``) go to the ``BindingDiscovery`` and never
to the device; the rest return ``False`` and the device gets them as before. Requests go out of the tunnel's own
socket (``tunnel.send_datagrams``), so the server-reflexive address learnt is the WireGuard socket's mapping.

Datagrams the device sends to a *relayed* endpoint (the relayed transport address of a peer's TURN allocation) are
diverted by ``divert`` to our own allocation (``relay.TurnRelay``); the device never knows: a relayed endpoint is a
socket address like any other (see the README design notes). Decisions live in the pure modules; this file only
moves bytes, reads the clock and runs one timer.

Who initiates when candidates arrive: the server forwards each side's candidates to the other at about the same
moment, so if both answered with an initiation at once the two would cross. Each side then consumes the other's
initiation as a responder, which replaces its own, and drops the response to its own as an unknown index: neither
has a session until a retransmission REKEY_TIMEOUT later (one more cross costs another 5 s). So only the side with
the lower public key punches at once (``paths.initiates_first``); the other holds its first punch (the persistent
keepalive and the initiation) for ``CROSSING_HOLD`` seconds and sends it only if no handshake came from the peer
meanwhile (``punch_due``, from the tick): on a path open both ways the first initiation gets an answer, and behind
a NAT that dropped it the held one, which opens our own NAT, gets through the binding the first one opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ...drivers.clock import monotonic_now, wall_ns
from ...events import Endpoint
from ...keys import PublicKey
from ..candidates import Candidate, CandidateKind, admit, parse_candidates, usable_address
from ..paths import NAT_KEEPALIVE_INTERVAL, PathState, PeerPaths, initiates_first
from ..stun import BINDING_REFRESH_TIME, BindingDiscovery, DatagramKind, classify
from .stun_codec import AioiceStunCodec

if TYPE_CHECKING:
    from ...drivers.asyncio_udp import Tunnel
    from ...peer import Peer
    from .relay import TurnRelay

__all__ = ["NatHandler"]

logger = logging.getLogger("wgpy.nat")

TICK_TIME = 0.25  # seconds between path-state checks (ours)
CROSSING_HOLD = 0.5  # seconds the higher public key holds its first punch, against crossed initiations (ours)
_INITIATION_SIZE = 148  # whitepaper §5.4.2


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
        self.discovery = BindingDiscovery(AioiceStunCodec())
        self.tunnel: Tunnel | None = None
        #: Relayed endpoints (peers' relayed transport addresses) -> the allocation that reaches them.
        self.relayed: dict[tuple[str, int], TurnRelay] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._refresh: asyncio.TimerHandle | None = None
        self._learnt = asyncio.Event()
        self.on_reflexive: Callable[[tuple[str, int], tuple[str, int]], None] | None = None
        #: Per peer: its admitted candidates and the state of its path.
        self.paths: dict[PublicKey, PeerPaths] = {}
        #: Our own allocation, when one exists (``start_relay``).
        self.relay: TurnRelay | None = None
        self.host_candidates: list[tuple[str, int]] = []
        self._tick: asyncio.TimerHandle | None = None
        #: Peers whose first punch waits (we hold the higher key): when it may go (``punch_due``).
        self.held: dict[PublicKey, float] = {}

    def attach(self, tunnel: Tunnel) -> None:
        """Hook into ``tunnel`` (started or not) and start discovering."""
        self.tunnel = tunnel
        tunnel.nat = self
        self.refresh()
        self._tick = asyncio.get_running_loop().call_later(TICK_TIME, self._on_tick)

    def detach(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        for handle in (self._timer, self._refresh, self._tick):
            if handle is not None:
                handle.cancel()
        self._timer = self._refresh = self._tick = None
        self.held.clear()
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
        if not self.relayed and not self.paths:
            return datagrams
        direct: list[tuple[bytes, Endpoint]] = []
        for data, endpoint in datagrams:
            target = (str(endpoint[0]), int(endpoint[1]))
            if len(data) == _INITIATION_SIZE and data[0] == 1 and self.paths:
                # An initiation is an authenticated probe: a copy goes to each candidate of the peer (hole punching).
                paths = self._paths_for(target)
                if paths is not None:
                    for extra in paths.probe_targets():
                        paths.note_probe(extra)
                        if extra != target:
                            self._send_one(data, extra, direct)
            elif data[0] == 4 and target in self.relayed:
                # A relayed peer: now and then one transport datagram also goes to its direct candidates, ahead
                # of the relayed copy. If a direct path works, the peer's device roams to it (no new handshake);
                # the later copy is a replay it drops. Nothing in flight is lost.
                paths = self._paths_for(target)
                if paths is not None and paths.direct_probe_due(self.clock()):
                    for extra in paths.direct:
                        paths.note_probe(extra)
                        direct.append((data, extra))
            self._send_one(data, target, direct)
        return direct

    def relays(self, endpoint: Endpoint) -> bool:
        """Whether datagrams to ``endpoint`` must go through ``divert`` (a peer's relayed address): their seal jobs
        reach ``divert`` as datagrams, kept from the data-plane worker (``worker.split_jobs``) and from the tunnel's
        in-place sealer (``_SealInPlace``); ``divert`` passes a transport message to any other endpoint unchanged."""
        relayed = self.relayed
        return bool(relayed) and (str(endpoint[0]), int(endpoint[1])) in relayed

    def _send_one(self, data: bytes, target: tuple[str, int], direct: list[tuple[bytes, Endpoint]]) -> None:
        relay = self.relayed.get(target)
        if relay is None:
            direct.append((data, target))
        else:
            relay.send(data, target)

    def _paths_for(self, endpoint: tuple[str, int]) -> PeerPaths | None:
        tunnel = self.tunnel
        if tunnel is None:
            return None
        for key, paths in self.paths.items():
            peer = tunnel.device.peer(key)
            if (
                peer is not None
                and peer.endpoint is not None
                and (str(peer.endpoint[0]), int(peer.endpoint[1])) == endpoint
            ):
                return paths
            if endpoint in paths.direct or endpoint in paths.relayed:
                return paths
        return None

    # --- candidates and paths ---------------------------------------------------------------------------------

    def local_candidates(self) -> list[Candidate]:
        """Ours, to report: host addresses, server-reflexive ones, the relayed one."""
        out = [Candidate(CandidateKind.HOST, h, p) for h, p in self.host_candidates if usable_address(h)]
        for address in dict.fromkeys(self.discovery.reflexive.values()):
            out.append(Candidate(CandidateKind.SERVER_REFLEXIVE, *address))
        if self.relay is not None and self.relay.relayed_address is not None:
            out.append(Candidate(CandidateKind.RELAYED, *self.relay.relayed_address))
        return out

    def set_remote_candidates(self, peer_key: PublicKey, raw: object, announced: Sequence[str]) -> int:
        """A peer's candidates (remote input, from the management stream) and the hosts the server announced for it.

        Candidates outside ``announced`` are refused (counted in ``PeerPaths.refused``); returns how many were
        admitted. Raises ``CandidateError`` for a malformed list (the caller drops the frame). Starts the checks.
        """
        candidates = parse_candidates(raw)
        admitted = admit(candidates, announced)
        tunnel = self.tunnel
        now = self.clock()
        paths = self.paths.setdefault(peer_key, PeerPaths())
        paths.set_candidates(admitted, len(candidates) - len(admitted), now)
        for candidate in admitted:
            if candidate.kind is CandidateKind.RELAYED and self.relay is not None:
                self.relayed[candidate.address] = self.relay
        peer = tunnel.device.peer(peer_key) if tunnel is not None else None
        if tunnel is not None and peer is not None and peer.keypairs.current is not None and admitted:
            addresses = [c.address for c in admitted]
            current = (str(peer.endpoint[0]), int(peer.endpoint[1])) if peer.endpoint is not None else None
            if current not in addresses:
                # The peer moved (a NAT rebinding): send to where it says it is now, which also opens our NAT
                # towards it; its next authenticated datagram sets the endpoint anyway.
                # A relayed peer stays relayed (its new relayed address); a direct one goes to its new mapping.
                kind = CandidateKind.RELAYED if paths.state is PathState.RELAYED else CandidateKind.SERVER_REFLEXIVE
                preferred = [c.address for c in admitted if c.kind is kind]
                peer.endpoint = (preferred or addresses)[0]
                tunnel.device.expired_send_keepalive(peer, now)
                tunnel.flush()
        if tunnel is None or peer is None:
            return len(admitted)
        own = tunnel.device.public_key
        if peer.keypairs.current is None and own is not None and not initiates_first(own.raw, peer_key.raw):
            # The peer punches first (see the module docstring); a later frame does not put our turn off.
            self.held.setdefault(peer_key, now + CROSSING_HOLD)
            return len(admitted)
        self._punch(tunnel, peer, paths, now)
        return len(admitted)

    def _punch(self, tunnel: Tunnel, peer: Peer, paths: PeerPaths, now: float) -> None:
        """Hold the NAT binding with a persistent keepalive and, without a session, send a fresh initiation (copied
        to each direct candidate by ``divert``). The device sends no initiation within REKEY_TIMEOUT of its last
        handshake message, so one that answered the peer's initiation meanwhile sends none."""
        if not peer.timers.persistent_keepalive_interval:
            tunnel.device.set_persistent_keepalive(peer, NAT_KEEPALIVE_INTERVAL, now)  # holds the NAT binding
        if paths.direct:
            if peer.endpoint is None or (paths.state is PathState.CHECKING and peer.keypairs.current is None):
                peer.endpoint = paths.direct[0]
            if peer.keypairs.current is None:
                tunnel.device.expired_new_handshake(peer, now)
                tunnel.flush()

    def punch_due(self, now: float) -> None:
        """Send the held punches whose hold has ended (the tick calls it)."""
        tunnel = self.tunnel
        if tunnel is None or not self.held:
            return
        for key, due in list(self.held.items()):
            if now < due:
                continue
            del self.held[key]
            peer, paths = tunnel.device.peer(key), self.paths.get(key)
            if peer is not None and paths is not None:
                self._punch(tunnel, peer, paths, now)

    async def start_relay(self, relay: TurnRelay) -> tuple[str, int]:
        """Allocate on the TURN server; datagrams peers send through it reach the device."""
        relay.on_datagram = self._relayed_datagram
        address = await relay.allocate()
        self.relay = relay
        for paths in self.paths.values():
            for target in paths.relayed:
                self.relayed[target] = relay
        return address

    def retire_relay(self, old: TurnRelay) -> None:
        """A newer allocation replaced ``old``: its peers' relayed addresses go through the new one, and it is
        released (make before break)."""
        for target, relay in list(self.relayed.items()):
            if relay is old:
                if self.relay is not None:
                    self.relayed[target] = self.relay
                else:
                    del self.relayed[target]
        old.close()
        # A keepalive to each relayed peer through the new allocation: it creates the allocation's permission for
        # the peer (without one the TURN server drops what the peer sends to it, RFC 8656 §9) and makes the peer's
        # device roam to our new relayed address at once, rather than with our next data.
        tunnel = self.tunnel
        if tunnel is not None:
            now = self.clock()
            for peer in tunnel.device.peers.values():
                endpoint = peer.endpoint
                if (
                    endpoint is not None
                    and (str(endpoint[0]), int(endpoint[1])) in self.relayed
                    and peer.keypairs.current
                ):
                    tunnel.device.expired_send_keepalive(peer, now)
            tunnel.flush()

    def _relayed_datagram(self, data: bytes, source: tuple[str, int]) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            return
        if self.relay is not None:
            self.relayed.setdefault(source, self.relay)  # answers to a peer's relayed address go back the same way
        tunnel.device.receive_datagram(data, source, self.clock(), wall_ns())
        tunnel.flush()

    def observe_paths(self) -> None:
        """Bring each peer's path state up to date with the device (the tick does it; status asks too)."""
        tunnel = self.tunnel
        if tunnel is None:
            return
        ours = self.local_candidates()
        for key, paths in self.paths.items():
            peer = tunnel.device.peer(key)
            if peer is not None:
                paths.observe(peer.endpoint, peer.keypairs.current is not None, peer.rx_bytes)
                paths.set_local(ours)

    def _on_tick(self) -> None:
        tunnel = self.tunnel
        if tunnel is None:
            return
        now = self.clock()
        self.punch_due(now)
        for key, paths in self.paths.items():
            before = paths.state
            paths.handle_timer(now)
            peer = tunnel.device.peer(key)
            if peer is None:
                continue
            paths.observe(peer.endpoint, peer.keypairs.current is not None, peer.rx_bytes)
            if paths.note_counters(peer.rx_bytes, peer.tx_bytes, now) and self.stun_servers:
                logger.info("peer(%s): nothing received for a while: asking STUN again", key.short())
                self.refresh()
            if paths.state is not before:
                logger.info("peer(%s): path %s -> %s %s", key.short(), before.value, paths.state.value, paths.reason)
                if paths.state is PathState.RELAYED and peer.keypairs.current is None:
                    tunnel.device.expired_new_handshake(peer, now)
                    tunnel.flush()
        self._tick = asyncio.get_running_loop().call_later(TICK_TIME, self._on_tick)

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
