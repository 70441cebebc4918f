"""The management server's side of NAT traversal (an I/O shell: it reads the store and writes to streams).

``NatSignal.handle`` takes the agent frames of ``signal.py`` from ``ManagementServer.peer_stream``: it forwards
a ``candidates`` frame to the named peer's stream when both see each other in their maps (the policy's views),
adding the IPs the server vouches for, and answers ``turn`` with credentials for the coturn ``use-auth-secret``
scheme. It returns ``False`` for a frame that must close the stream (malformed, or a peer it may not reach).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ...management.policy import compile_view
from ..candidates import CandidateError
from ..credentials import TURN_CREDENTIAL_LIFETIME, turn_credentials
from ..signal import forwarded_candidates, parse_candidates_frame, turn_frame

if TYPE_CHECKING:
    from ...management.push import MapService, PushHub

__all__ = ["NatSignal"]

logger = logging.getLogger("wgpy.management")


class NatSignal:
    """Candidate forwarding and TURN credentials.

    Args:
        turn_secret: coturn's ``static-auth-secret``; without one, ``turn`` frames are refused.
        turn_servers: the TURN servers' ``(host, port)`` as peers reach them.
    """

    def __init__(
        self,
        maps: MapService,
        hub: PushHub,
        *,
        turn_secret: bytes = b"",
        turn_servers: Sequence[tuple[str, int]] = (),
        clock: Callable[[], float],
    ) -> None:
        self.maps, self.hub = maps, hub
        self.turn_secret = turn_secret
        self.turn_servers = list(turn_servers)
        self.turn_lifetime = TURN_CREDENTIAL_LIFETIME
        self.clock = clock
        self.forwarded = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"NatSignal(turn_servers={self.turn_servers})"

    async def handle(self, peer_id: str, data: dict[str, object], remote: str | None) -> bool:
        stream = self.hub.streams.get(peer_id)
        if stream is None:
            return False
        if data.get("type") == "turn":
            if set(data) != {"type"}:
                return False
            if not self.turn_secret:  # STUN only: the servers, no credentials
                return stream.send_now(turn_frame(None, self.turn_servers))
            credentials = turn_credentials(self.turn_secret, peer_id, self.clock(), self.turn_lifetime)
            return stream.send_now(turn_frame(credentials, self.turn_servers))
        try:
            frame = parse_candidates_frame(data)
        except CandidateError as exc:
            logger.info("peer %s: bad candidates frame: %s", peer_id[:8], exc)
            return False
        policy, peers = await self.maps.load()
        view = compile_view(policy, peers, peer_id)
        if view is None:
            return False
        me = next((p for p in view.peers if p.id == peer_id), None)
        target = next((p for p in view.peers if p.public_key == frame.peer and p.id != peer_id), None)
        if me is None or target is None:
            self.refused += 1
            return False  # not a peer it may reach: no forwarding, and the stream closes (1008)
        announced = {h for h, _ in self.turn_servers}
        if remote:
            announced.add(remote)
        if me.endpoint is not None:
            announced.add(me.endpoint[0])
        other = self.hub.streams.get(target.id)
        if other is not None:
            other.send_now(forwarded_candidates(me.public_key, frame.candidates, announced))
            self.forwarded += 1
        return True
