"""The management server's side of NAT traversal (an I/O shell: it writes to streams, and reads no store).

``NatSignal.handle`` takes the agent frames of ``signal.py`` from ``ManagementServer.peer_stream``: it forwards
a ``candidates`` frame to the named peer's stream when both see each other in their maps (the policy's views),
adding the IPs the server vouches for, and answers ``turn`` with credentials for the coturn ``use-auth-secret``
scheme. It returns ``False`` for a frame that must close the stream (malformed).

Theory of operation: a frame costs the server no database read and nothing proportional to the number of peers.
What it decides comes from what the ``PushHub`` already holds: each stream's ``map_keys`` (the public keys of the
map last sent to it, as ``api._path_report`` checks a path report), its ``map_hosts`` (the endpoint hosts those
maps carry) and ``by_key`` (the connected streams by public key). Both peers must list each other in the maps
they were last sent; the sender's endpoint host is its own entry's in its map. Each stream has a budget of NAT
frames (a token bucket, ``NAT_BUDGET_BASE`` + ``NAT_BUDGET_PER_PEER`` per peer of its map, refilled over
``NAT_REFILL_TIME``): an agent sends one ``candidates`` frame per peer when its candidates change, so a legitimate
burst for a large map passes, and a flooding peer's excess frames are dropped and counted (``dropped``), the
stream kept (closing it would only make the peer reconnect, which costs the server more). A frame about a peer
outside the sender's map is dropped and counted too (``refused``): it may be a race with a map just pushed. A
frame whose target's map does not list the sender yet (the target's stream has just opened, say, or its new map is
being pushed) waits on the target's stream, newest per sender, and goes with the target's next map if that one
lists the sender (``parked``; else ``refused`` then): an agent sends its candidates again only when they change, so
a frame refused here would be lost for good. The target's stream keeps the newest frame per sender
(``PeerStream.send_candidates``), so no sender can crowd out the others' candidates.

With several replicas (PostgreSQL), a frame for a peer not connected here goes to the ``relays``
(``notify.PgFanout``: NOTIFY on its own channel) after the sender's side is checked here; the replica the target is
connected to checks the target's side and the frame itself again (``deliver``). Without relays it is dropped and
counted (``dropped["target_offline"]``).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from ...management.ratelimit import take_token
from ..candidates import CandidateError
from ..credentials import TURN_CREDENTIAL_LIFETIME, turn_credentials
from ..signal import CandidatesFrame, forwarded_candidates, parse_candidates_frame, turn_frame

if TYPE_CHECKING:
    from ...management.push import PeerStream, PushHub

__all__ = ["NAT_BUDGET_BASE", "NAT_BUDGET_PER_PEER", "NAT_REFILL_TIME", "NatSignal"]

NAT_BUDGET_BASE: Final = 64  # NAT frames a stream may send at once, whatever its map (ours)
NAT_BUDGET_PER_PEER: Final = 2  # more per peer of its map: two rounds of one frame per peer (ours)
NAT_REFILL_TIME: Final = 30.0  # seconds in which an empty budget fills again (ours)

logger = logging.getLogger("wgpy.management")


class NatSignal:
    """Candidate forwarding and TURN credentials.

    Args:
        hub: the connected streams.
        turn_secret: coturn's ``static-auth-secret``; without one, ``turn`` frames are refused.
        turn_servers: the TURN servers' ``(host, port)`` as peers reach them.
        clock: the server's clock (seconds).
    """

    def __init__(
        self,
        hub: PushHub,
        *,
        turn_secret: bytes = b"",
        turn_servers: Sequence[tuple[str, int]] = (),
        clock: Callable[[], float],
    ) -> None:
        self.hub = hub
        hub.offered.append(self.map_offered)
        self.turn_secret = turn_secret
        self.turn_servers = list(turn_servers)
        self.turn_lifetime = TURN_CREDENTIAL_LIFETIME
        self.clock = clock
        self.forwarded = 0
        self.relayed = 0  # forwarded to another replica, for a peer not connected here (``relays``)
        #: Carriers to the other replicas (PostgreSQL: ``notify.PgFanout``), each called with (sender key, target key,
        #: the frame for the target) for a target not connected here.
        self.relays: list[Callable[[str, str, dict[str, object]], None]] = []
        self.refused = 0  # candidates for a peer the sender does not see, or that does not see it
        self.parked = 0  # frames that waited for their target's next map (its last one did not list the sender)
        #: Frames dropped without closing the stream: ``rate_limited`` (over the stream's budget),
        #: ``target_offline`` (no stream on this replica), ``replaced`` (a newer frame of the sender took its place
        #: before it was written).
        self.dropped: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"NatSignal(turn_servers={self.turn_servers})"

    def budget(self, stream: PeerStream) -> float:
        """The most NAT frames ``stream`` may send at once (its token bucket's size)."""
        return NAT_BUDGET_BASE + NAT_BUDGET_PER_PEER * len(stream.map_keys)

    def _spend(self, stream: PeerStream) -> bool:
        now = self.clock()
        size = self.budget(stream)
        tokens = size if stream.nat_tokens is None else stream.nat_tokens
        allowed, stream.nat_tokens = take_token(tokens, stream.nat_at, now, rate=size / NAT_REFILL_TIME, burst=size)
        stream.nat_at = now
        return allowed

    def handle(self, stream: PeerStream, data: dict[str, object], remote: str | None) -> bool:
        """One NAT frame of ``stream``'s peer; ``False`` if the stream must close (a malformed frame)."""
        if not self._spend(stream):  # the cheap check first: no parsing for a frame over the budget
            self.dropped["rate_limited"] += 1
            return True
        if data.get("type") == "turn":
            if set(data) != {"type"}:
                return False
            if not self.turn_secret:  # STUN only: the servers, no credentials
                return stream.send_now(turn_frame(None, self.turn_servers))
            credentials = turn_credentials(self.turn_secret, stream.peer_id, self.clock(), self.turn_lifetime)
            return stream.send_now(turn_frame(credentials, self.turn_servers))
        try:
            frame = parse_candidates_frame(data)
        except CandidateError as exc:
            logger.info("peer %s: bad candidates frame: %s", stream.peer_id[:8], exc)
            return False
        if not stream.map_keys:
            # No map offered to this stream yet (an agent asks for TURN as its stream opens and sends its candidates
            # as soon as the answer comes, which may be before the push worker's first map): the frame waits for
            # that map, newest per target, at most NAT_BUDGET_BASE targets.
            if frame.peer not in stream.nat_waiting and len(stream.nat_waiting) >= NAT_BUDGET_BASE:
                self.dropped["waiting_full"] += 1
            else:
                stream.nat_waiting[frame.peer] = (frame, remote)
            return True
        self._forward(stream, frame, remote)
        return True

    def map_offered(self, stream: PeerStream) -> None:
        """The hub handed ``stream`` a map: forward what waited for it (``PushHub.offered``): its own frames sent
        before its first map, and the frames for it whose sender its previous map did not list, if this one does
        and the sender (connected here) still lists it. The map goes out before them (``PeerStream._write``)."""
        if stream.nat_parked:
            parked, stream.nat_parked = stream.nat_parked, {}
            for sender, message in parked.items():
                sender_stream = self.hub.by_key.get(sender)
                if sender not in stream.map_keys or (
                    sender_stream is not None and stream.own_key not in sender_stream.map_keys
                ):
                    self.refused += 1
                    continue
                if not stream.send_candidates(sender, message):
                    self.dropped["replaced"] += 1
                self.forwarded += 1
        if stream.nat_waiting:
            waiting, stream.nat_waiting = stream.nat_waiting, {}
            for frame, remote in waiting.values():
                self._forward(stream, frame, remote)

    def _forward(self, stream: PeerStream, frame: CandidatesFrame, remote: str | None) -> None:
        me = stream.own_key
        if me is None or frame.peer == me or frame.peer not in stream.map_keys:
            self.refused += 1
            return
        other = self.hub.by_key.get(frame.peer)
        if other is None and not self.relays:
            self.dropped["target_offline"] += 1
            return
        if other is not None and me not in other.map_keys:
            # The target's map does not list the sender (yet): a map being pushed to it may, as when its stream has
            # just opened and has no map so far, and the sender would not send the same candidates again. The frame
            # waits on the target's stream, newest per sender, until that stream's next map (``map_offered``).
            if me not in other.nat_parked and len(other.nat_parked) >= NAT_BUDGET_BASE:
                self.refused += 1
            else:
                other.nat_parked[me] = self._message(me, stream, frame, remote)
                self.parked += 1
            return
        message = self._message(me, stream, frame, remote)
        if other is None:  # perhaps connected to another replica: that one checks the target's map
            for relay in self.relays:
                relay(me, frame.peer, message)
            self.relayed += 1
            return
        if not other.send_candidates(me, message):
            self.dropped["replaced"] += 1
        self.forwarded += 1

    def _message(self, me: str, stream: PeerStream, frame: CandidatesFrame, remote: str | None) -> dict[str, object]:
        """The frame as the target gets it: the sender's (``me``) candidates and the hosts the server vouches for."""
        announced = {h for h, _ in self.turn_servers}
        if remote:
            announced.add(remote)
        host = stream.map_hosts.get(me)
        if host is not None:
            announced.add(host)
        return forwarded_candidates(me, frame.candidates, announced)

    def deliver(self, sender: str, target: str, message: object) -> None:
        """A frame another replica forwards for ``target`` (whose map it could not see): sent if ``target`` is
        connected here and its map lists ``sender``; the frame is checked again (anyone with database access may
        NOTIFY)."""
        other = self.hub.by_key.get(target)
        if other is None:
            self.dropped["target_offline"] += 1
            return
        if sender not in other.map_keys or sender == target:
            self.refused += 1
            return
        try:
            if not isinstance(message, dict) or set(message) != {"type", "peer", "candidates", "announced"}:
                raise CandidateError("a forwarded candidates frame")
            parsed = parse_candidates_frame({"type": "candidates", "peer": sender, "candidates": message["candidates"]})
            announced = message["announced"]
            if not isinstance(announced, list) or len(announced) > 16:
                raise CandidateError("announced: a list of IPs")
            hosts = {str(ipaddress.ip_address(str(a))) for a in announced}
        except (CandidateError, ValueError):
            self.dropped["bad_relayed"] += 1
            return
        if not other.send_candidates(sender, forwarded_candidates(sender, parsed.candidates, hosts)):
            self.dropped["replaced"] += 1
        self.forwarded += 1
