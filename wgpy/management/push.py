"""Pushing network maps to connected peers: what changed -> recompute -> sign -> send.

Theory of operation: every state change commits first and then calls ``PushHub.notify(change)``. A ``Change`` says
what happened (``peer_joined``, ``peer_left``, ``peer_revoked``, ``peer_approved``, ``peer_updated``,
``peer_endpoint``, ``policy``...) and to whom; this process's own handlers call it, and ``notify.PgFanout``
(PostgreSQL replicas: LISTEN/NOTIFY) is one of the hub's ``publishers``, which carry each local change to the other
replicas and call it with theirs (``local=False``). No notification is load-bearing: a peer that connects (or
reconnects) always gets its current map.

``notify`` is synchronous and cheap: it closes the stream of a revoked or deleted peer at once (``{"type":
"revoked", "notice": ...}`` with the signed notice of ``wgpy.mesh.revocation``, close 4001) and wakes the worker.
The worker coalesces bursts of changes into one recomputation: it reads the current policy and peers (one read
transaction), compiles every view (``policy.compile_views``, pure, grouped by group signature), and pushes a new
map to each connected peer whose view differs from the one it last got, whose map nears expiry (``MAP_REISSUE``
before ``expires_at``), or that has just connected. Serials are bumped in the database in one transaction per
batch (``UPDATE peers SET map_serial = map_serial + 1 ... RETURNING``), so serials increase strictly per peer across
restarts and replicas, and the push is audited (``map_push``) there too.

Sending never blocks the worker: each stream has a one-slot mailbox holding the newest map and its own writer
task; a slow peer only ever receives the latest map.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from aiohttp import web
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import crypto
from ..drivers.tasks import cancel_and_wait
from ..mesh.revocation import sign_revocation
from . import audit
from .policy import EMPTY_POLICY, PeerEntry, PeerView, Policy, canonical_body, compile_view, compile_views, parse_policy
from .store import PeerRow, PolicyRow, lock_map_serials, readonly, write_slot

if TYPE_CHECKING:
    from ..nat.signal import CandidatesFrame

__all__ = [
    "CLOSE_REPLACED",
    "CLOSE_REVOKED",
    "MAP_LIFETIME",
    "MAP_REISSUE",
    "Change",
    "IssuedMap",
    "MapService",
    "PeerStream",
    "PushHub",
]

MAP_LIFETIME: Final = 900  # seconds a map is valid (contract)
MAP_REISSUE: Final = 300  # seconds before expiry a connected peer gets a fresh map (contract)
TICK_INTERVAL: Final = 15.0  # seconds between re-issue / last-seen / ephemeral sweeps (ours)
CLOSE_REVOKED: Final = 4001  # WebSocket close code: the peer was revoked (contract)
CLOSE_REPLACED: Final = 4000  # WebSocket close code: the same peer connected again elsewhere (ours)
MAX_CONTROL_QUEUE: Final = 16  # pongs queued for one stream before it counts as a flood (ours)
SEND_TIMEOUT: Final = 10.0  # seconds one frame may take to send before the stream is dropped (ours)
_UNPUBLISHED: Final = frozenset({"stream_connected", "tick"})  # this process's own business, not the others'
_SERIAL_BATCH: Final = 500  # peers per serial-bump statement (well under SQLite's parameter limit)

logger = logging.getLogger("wgpy.management")


@dataclass(frozen=True, slots=True)
class Change:
    """Something that may change some peers' maps. ``peer_id`` is the peer it happened to, if any."""

    kind: str
    peer_id: str | None = None


@dataclass(frozen=True, slots=True)
class IssuedMap:
    """A signed map: ``document`` is the ``SignedMap`` JSON text ``{"map": body, "signature": b64}``."""

    serial: int
    document: str
    expires_at: int
    fingerprint: bytes
    peer_keys: frozenset[str] = frozenset()  # the public keys the map lists (its own peer's included)
    # public key -> endpoint host of the map's peers that reported one (what NAT signalling vouches for, in memory)
    hosts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Snapshot:
    policy: Policy
    views: dict[str, PeerView]
    pending: frozenset[str] = frozenset()  # peers awaiting approval (neither revoked nor deleted)


class MapService:
    """Reads the state, compiles views and issues signed maps with fresh serials (one transaction per batch)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        signing_key: crypto.Ed25519PrivateKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.sessions = sessions
        self.readers = readonly(sessions)
        self.signing_key = signing_key
        self.clock = clock
        self._policy_cache: tuple[int, Policy] | None = None
        self.rotation: tuple[str, int] | None = None  # a signing-key rotation announced in every map (keys.py)
        self._entries: dict[tuple[object, ...], PeerEntry] = {}

    async def load(self) -> tuple[Policy, list[PeerEntry]]:
        """The current policy and active peers (columns only, no ORM objects: this runs per change)."""
        async with self.readers() as session:
            policy_id = (await session.execute(select(func.max(PolicyRow.id)))).scalar()
            if policy_id is not None and (self._policy_cache is None or self._policy_cache[0] != policy_id):
                text = (await session.execute(select(PolicyRow.text).where(PolicyRow.id == policy_id))).scalar_one()
                # Stored policies were validated when set; parsing a large one is kept off the event loop.
                self._policy_cache = (policy_id, await asyncio.to_thread(parse_policy, text))
            rows = (
                await session.execute(
                    select(
                        PeerRow.id,
                        PeerRow.public_key,
                        PeerRow.address,
                        PeerRow.groups,
                        PeerRow.endpoint_host,
                        PeerRow.endpoint_port,
                    )
                    .where(
                        PeerRow.approved.is_(True),
                        PeerRow.revoked.is_(False),
                        PeerRow.deleted.is_(False),
                        PeerRow.address.is_not(None),
                    )
                    .order_by(PeerRow.created_at, PeerRow.id)
                )
            ).all()
        # Entries are reused from the previous snapshot when nothing about the peer changed, so that their cached
        # map JSON is too (the cache holds only the current peers).
        previous = self._entries
        entries: dict[tuple[object, ...], PeerEntry] = {}
        peers: list[PeerEntry] = []
        for peer_id, public_key, address, groups, host, port in rows:
            if address is None:
                continue  # (the query excludes them; for the type checker)
            endpoint = (host, port) if host is not None and port is not None else None
            key = (peer_id, public_key, address, tuple(groups), endpoint)
            entry = previous.get(key)
            if entry is None:
                entry = PeerEntry(peer_id, public_key, address, frozenset(groups), endpoint)
            entries[key] = entry
            peers.append(entry)
        self._entries = entries
        policy = EMPTY_POLICY if policy_id is None or self._policy_cache is None else self._policy_cache[1]
        return policy, peers

    async def snapshot(self) -> Snapshot:
        """The current policy and every active peer's view (compiled in a thread: the event loop keeps serving)."""
        policy, peers = await self.load()
        async with self.readers() as session:
            pending = frozenset(
                (
                    await session.execute(
                        select(PeerRow.id).where(
                            PeerRow.approved.is_(False), PeerRow.revoked.is_(False), PeerRow.deleted.is_(False)
                        )
                    )
                ).scalars()
            )
        return Snapshot(policy, await asyncio.to_thread(compile_views, policy, peers), pending)

    async def issue(self, views: dict[str, PeerView]) -> dict[str, IssuedMap]:
        """Sign a map for each ``peer id -> view`` under one new serial; audited as ``map_push``.

        The batch's serial is one more than the highest serial any peer holds, and a peer's row takes it only if it
        is greater than the peer's own (``UPDATE ... WHERE map_serial < :serial``): serials increase strictly per peer
        whichever process issues them. A peer whose row was bumped past it meanwhile is left out (the caller's next
        round covers it). Peers sharing a view object share one signature, so an all-to-all change signs once.
        """
        if not views:
            return {}
        now = self.clock()
        issued_at = int(now)
        expires_at = issued_at + MAP_LIFETIME
        ids = list(views)
        taken: set[str] = set()
        # A rotation is announced until its window ends (a map announcing a past `until` would be refused).
        rotation = self.rotation if self.rotation is not None and issued_at < self.rotation[1] else None
        async with write_slot(self.sessions), self.sessions() as session, session.begin():
            await lock_map_serials(session)
            highest = (await session.execute(select(func.max(PeerRow.map_serial)))).scalar() or 0
            serial = highest + 1
            for start in range(0, len(ids), _SERIAL_BATCH):
                chunk = ids[start : start + _SERIAL_BATCH]
                result = await session.execute(
                    update(PeerRow)
                    .where(PeerRow.id.in_(chunk), PeerRow.map_serial < serial)
                    .values(map_serial=serial)
                    .returning(PeerRow.id)
                )
                taken.update(result.scalars())
            await audit.record_many(
                session,
                now=now,
                kind="map_push",
                actor="server",
                entries=[
                    (peer_id, {"serial": serial, "peers": len(views[peer_id].peers)})
                    for peer_id in ids
                    if peer_id in taken
                ],
            )
        audit.emit_pending(session)
        issued: dict[str, IssuedMap] = {}
        signed: dict[int, IssuedMap] = {}  # id(view) -> its map (views are shared by peers of one group signature)
        for count, peer_id in enumerate(ids):
            if peer_id not in taken:
                continue
            view = views[peer_id]
            done = signed.get(id(view))
            if done is None:
                if count % 64 == 63:
                    await asyncio.sleep(0)  # thousands of distinct maps: let requests in between
                body = canonical_body(
                    view, serial=serial, issued_at=issued_at, expires_at=expires_at, rotation=rotation
                )
                signature = base64.b64encode(crypto.ed25519_sign(self.signing_key, body)).decode("ascii")
                # The envelope in canonical form too ("map" < "signature"); the agent re-canonicalises the body anyway.
                document = f'{{"map":{body.decode("ascii")},"signature":"{signature}"}}'
                keys = frozenset(entry.public_key for entry in view.peers)
                hosts = {entry.public_key: entry.endpoint[0] for entry in view.peers if entry.endpoint is not None}
                done = signed[id(view)] = IssuedMap(serial, document, expires_at, view.fingerprint(), keys, hosts)
            issued[peer_id] = done
        return issued

    async def current(self, peer_id: str) -> IssuedMap | None:
        """A fresh map for one peer, or ``None`` if it is not active (pending approval, revoked, deleted)."""
        policy, peers = await self.load()
        view = compile_view(policy, peers, peer_id)  # this peer's only: O(peers), not O(peers x views)
        if view is None:
            return None
        for _attempt in range(3):  # a concurrent issue may take the serial first; the next one is ours
            issued = (await self.issue({peer_id: view})).get(peer_id)
            if issued is not None:
                return issued
        return None


class PeerStream:
    """One connected peer's WebSocket: a one-slot mailbox and a writer task."""

    def __init__(self, peer_id: str, ws: web.WebSocketResponse, own_key: str | None = None) -> None:
        self.peer_id = peer_id
        self.ws = ws
        self.fingerprint: bytes | None = None
        self.expires_at = 0
        self.sent_serial = 0
        self.acked_serial = 0
        self.map_keys: frozenset[str] = frozenset()  # the public keys of the map last handed to this stream
        self.map_hosts: Mapping[str, str] = {}  # their endpoint hosts (``IssuedMap.hosts``)
        self.own_key = own_key  # the peer's own public key (the API gives it when it attaches the stream)
        # NAT signalling (``wgpy.nat.io.server``): the frame budget's tokens and when they were counted, and the
        # candidates forwarded to this peer, newest per sender (a mailbox bounded by the map's size, not a queue
        # a flooding peer can fill for the others).
        self.nat_tokens: float | None = None
        self.nat_at = 0.0
        # Candidates frames read before this stream was offered its first map, newest per target (replayed then).
        self.nat_waiting: dict[str, tuple[CandidatesFrame, str | None]] = {}
        # Frames for this peer from senders its last map did not list, newest per sender (sent with its next map).
        self.nat_parked: dict[str, dict[str, object]] = {}
        self._candidates: dict[str, str] = {}
        self.paths: dict[str, str] = {}  # the agent's last path report: peer public key -> direct/relayed/checking
        self.paths_at: float | None = None  # when it was accepted (the server's clock)
        self.closed = asyncio.Event()
        self._pending: str | None = None
        self._control: collections.deque[str] = collections.deque()
        self._close: tuple[int, bytes] | None = None
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write(), name=f"stream-{peer_id}")

    def offer(self, issued: IssuedMap) -> None:
        self.fingerprint = issued.fingerprint
        self.map_keys = issued.peer_keys
        self.map_hosts = issued.hosts
        if self._candidates and any(key not in issued.peer_keys for key in self._candidates):
            self._candidates = {key: text for key, text in self._candidates.items() if key in issued.peer_keys}
        if any(key not in issued.peer_keys for key in self.paths):  # a peer left its map: no path to show to it
            self.paths = {key: state for key, state in self.paths.items() if key in issued.peer_keys}
        self.expires_at = issued.expires_at
        self.sent_serial = issued.serial
        # Spliced, not re-serialised: the document may be megabytes, and the frame's head carries the serial.
        self._pending = f'{{"type":"map","serial":{issued.serial},"document":{issued.document}}}'
        self._wake.set()

    def revoke(self, notice: Mapping[str, object] | None = None) -> None:
        """Send ``{"type": "revoked"}`` with the signed ``notice`` the agent acts on, and close with 4001 (after
        nothing else). Without a notice (the reason is not known here) the agent only reconnects, and the 403 of
        its next request carries one."""
        self._pending = json.dumps({"type": "revoked", "notice": notice} if notice is not None else {"type": "revoked"})
        self._close = (CLOSE_REVOKED, b"revoked")
        self._wake.set()

    def replace(self) -> None:
        self._pending = None
        self._close = (CLOSE_REPLACED, b"replaced by a newer connection")
        self._wake.set()

    def send_now(self, message: dict[str, object]) -> bool:
        """Queue a small reply (pong) before any pending map; ``False`` if too many are queued (a flooding peer)."""
        if len(self._control) >= MAX_CONTROL_QUEUE:
            return False
        self._control.append(json.dumps(message))
        self._wake.set()
        return True

    def send_candidates(self, sender: str, message: dict[str, object]) -> bool:
        """Queue a sender's candidates for this peer, replacing any of the same sender not yet written.

        Returns ``False`` when an older frame of that sender was replaced (counted by the caller)."""
        fresh = sender not in self._candidates
        self._candidates[sender] = json.dumps(message)
        self._wake.set()
        return fresh

    async def _write(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                # Replies first, then the map, then candidates: a peer's candidates may need the map that lists the
                # peer (the agent drops candidates of a peer not in its map), so none goes ahead of a pending map.
                while not self.ws.closed:
                    if self._control:
                        frame = self._control.popleft()
                    elif self._pending is not None:
                        frame, self._pending = self._pending, None
                    elif self._candidates and self._close is None:
                        frame = self._candidates.pop(next(iter(self._candidates)))
                    else:
                        break
                    await asyncio.wait_for(self.ws.send_str(frame), SEND_TIMEOUT)
                if self._close is not None:
                    code, reason = self._close
                    await self.ws.close(code=code, message=reason)
                    return
        except (ConnectionError, TimeoutError, RuntimeError):
            with contextlib.suppress(Exception):
                await self.ws.close()
        except Exception:
            logger.exception("stream writer failed")
            with contextlib.suppress(Exception):
                await self.ws.close()
        finally:
            self.closed.set()

    async def stop(self) -> None:
        if self._close is not None and not self._writer.done():
            # A revocation or replacement is being sent: let its close frame go out with its code.
            # ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` can drop a cancellation of its
            # caller that arrives just as the awaited event is set.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SEND_TIMEOUT):
                    await self.closed.wait()
        await cancel_and_wait(self._writer)


class PushHub:
    """Connected peers and the worker that keeps their maps current. See the module docstring."""

    def __init__(self, maps: MapService, *, max_streams: int = 20000) -> None:
        self.maps = maps
        self.max_streams = max_streams
        self.streams: dict[str, PeerStream] = {}
        self.by_key: dict[str, PeerStream] = {}  # the same streams by their peer's public key (NAT signalling)
        self._wake = asyncio.Event()
        self._forced: set[str] = set()
        self._worker: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self.pushes = 0  # maps handed to streams (for tests and benchmarks)
        self.idle = asyncio.Event()
        self.idle.set()
        self.tick_hooks: list[Callable[[], object]] = []
        self.publishers: list[Callable[[Change], None]] = []  # told of each local change (replica fan-out)
        self.offered: list[Callable[[PeerStream], None]] = []  # told of each map handed to a stream (NAT signalling)
        # Told of every change, this replica's or another's, and of streams coming and going: the dashboard's live
        # feed (no polling). Called synchronously: a watcher only notes the change and wakes its own task.
        self.watchers: list[Callable[[Change], None]] = []

    # --- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="push-worker")
        self._ticker = asyncio.create_task(self._tick(), name="push-ticker")

    async def stop(self) -> None:
        await cancel_and_wait(self._worker, self._ticker)

        async def close(stream: PeerStream) -> None:
            # All at once and each bounded: one by one, thousands of streams whose peers do not answer the close
            # frame kept a replica's shutdown going for minutes (a rolling restart would end in SIGKILL).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(stream.ws.close(code=1001, message=b"server shutting down"), SEND_TIMEOUT)
            await stream.stop()

        await asyncio.gather(*(close(stream) for stream in list(self.streams.values())))
        self.streams.clear()
        self.by_key.clear()

    # --- the interface -------------------------------------------------------------------------------------------

    def notify(self, change: Change, *, local: bool = True) -> None:
        """Something changed (committed already): recompute the maps of the affected connected peers.

        ``local`` changes (made by this process) also go to the ``publishers``; a change another replica made
        comes with ``local=False``.
        """
        if local and change.kind not in _UNPUBLISHED:
            for publish in self.publishers:
                publish(change)
        if change.kind != "tick":
            self.announce(change)
        if change.kind in ("peer_revoked", "peer_left") and change.peer_id is not None:
            stream = self.streams.pop(change.peer_id, None)
            if stream is not None:
                self._unindex(stream)
                stream.revoke(self._notice(stream, "revoked" if change.kind == "peer_revoked" else "deleted"))
        self.idle.clear()
        self._wake.set()

    def _notice(self, stream: PeerStream, reason: str) -> dict[str, object] | None:
        if stream.own_key is None:
            return None
        maps = self.maps
        return sign_revocation(
            maps.signing_key,
            peer_id=stream.peer_id,
            public_key=stream.own_key,
            reason=reason,
            issued_at=int(maps.clock()),
        )

    def announce(self, change: Change) -> None:
        """Tell the ``watchers`` of something that changes what admins see but no map (a path report, a stream
        closing); ``notify`` calls it too."""
        for watch in list(self.watchers):
            try:
                watch(change)
            except Exception:  # a watcher's bug must not stop a revocation
                logger.exception("change watcher failed")

    def attach(self, peer_id: str, ws: web.WebSocketResponse, own_key: str | None = None) -> PeerStream | None:
        """Register a newly connected stream (replacing an older one of the same peer); ``None`` if full.

        ``own_key`` is the peer's public key: its stream is found by it too (``by_key``)."""
        old = self.streams.pop(peer_id, None)
        if old is not None:
            self._unindex(old)
            old.replace()
        elif len(self.streams) >= self.max_streams:
            return None
        stream = PeerStream(peer_id, ws, own_key)
        self.streams[peer_id] = stream
        if own_key is not None:
            self.by_key[own_key] = stream
        self._forced.add(peer_id)
        self.notify(Change("stream_connected", peer_id))
        return stream

    def detach(self, stream: PeerStream) -> None:
        if self.streams.get(stream.peer_id) is stream:
            del self.streams[stream.peer_id]
            self._unindex(stream)
            self.announce(Change("stream_closed", stream.peer_id))

    def _unindex(self, stream: PeerStream) -> None:
        if stream.own_key is not None and self.by_key.get(stream.own_key) is stream:
            del self.by_key[stream.own_key]

    def online(self, peer_id: str) -> bool:
        return peer_id in self.streams

    # --- the worker ----------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            forced, self._forced = self._forced, set()
            try:
                await self.recompute(forced)
            except asyncio.CancelledError:
                raise
            except Exception:  # the database went away, say: log and try again on the next change or tick
                logger.exception("map push failed")
                self._forced |= forced
                await asyncio.sleep(1.0)
                self._wake.set()
            if not self._wake.is_set():
                self.idle.set()

    async def recompute(self, forced: Iterable[str] = ()) -> int:
        """Push new maps to the connected peers that need one; returns how many were pushed."""
        if not self.streams:
            return 0
        snapshot = await self.maps.snapshot()
        now = self.maps.clock()
        forced = set(forced)
        due: dict[str, PeerView] = {}
        for peer_id, stream in list(self.streams.items()):
            view = snapshot.views.get(peer_id)
            if view is None:
                if peer_id not in snapshot.pending and self.streams.get(peer_id) is stream:
                    # Revoked or deleted without a notification reaching us (another replica): close it now.
                    del self.streams[peer_id]
                    self._unindex(stream)
                    stream.revoke()
                continue
            if peer_id in forced or stream.fingerprint != view.fingerprint() or stream.expires_at - now <= MAP_REISSUE:
                due[peer_id] = view
        issued = await self.maps.issue(due)
        if len(issued) < len(due):
            self._forced.update(peer_id for peer_id in due if peer_id not in issued)
            self._wake.set()  # another process bumped some serials meanwhile: go round again for those
        for peer_id, issued_map in issued.items():
            target = self.streams.get(peer_id)
            if target is not None:
                target.offer(issued_map)
                for hook in self.offered:
                    hook(target)
                self._forced.discard(peer_id)  # it has its current map: a queued connect push would repeat it
                self.pushes += 1
        return len(issued)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            for hook in self.tick_hooks:
                try:
                    result = hook()
                    if asyncio.iscoroutine(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("periodic task failed")
            self.notify(Change("tick"))

    async def settle(self) -> None:
        """Wait until the worker has handled every change so far (tests, benchmarks)."""
        while not self.idle.is_set() or self._wake.is_set():
            await asyncio.sleep(0.005)
