"""Fan-out between replicas: PostgreSQL LISTEN/NOTIFY carries each committed change to every other replica.

Theory of operation: any number of ``wgpy management serve`` processes share one PostgreSQL database. Each change
commits first and then reaches this replica's ``PushHub.notify``; ``PgFanout`` is one of the hub's publishers: it
queues the change and sends it with ``pg_notify`` on ``CHANNEL`` as ``{"o": replica, "c": [[kind, peer_id],
...]}`` (a burst goes in as few notifications as fit ``MAX_PAYLOAD``). Every replica LISTENs on the channel with
its own asyncpg connection (outside the engine's pool) and hands the changes of the *other* replicas to its hub
(``notify(..., local=False)``: not published again), which recomputes and pushes the maps of its own connected
peers and closes the stream of a peer revoked elsewhere.

No notification is load-bearing. PostgreSQL delivers every notification to a connection that was listening
when it was committed; what a replica can miss is what was sent while its listening connection was down, and what
it failed to send while its own connection was down. So (1) each time the listener (re)connects, the hub
recomputes every connected peer's map from the database (a *resync*: fingerprints tell which maps changed); (2) a
change that could not be sent is replaced, once the connection is back, by a ``resync`` notification that makes
every replica do the same; (3) the hub's own tick recomputes every ``TICK_INTERVAL`` seconds anyway; and an agent
that reconnects always gets its current map.

Nothing here decides anything: the payload says what changed, the hub reads the truth from the database.

NAT candidates for a peer connected to another replica travel on ``NAT_CHANNEL`` (``{"o", "s": sender key, "t":
target key, "m": the frame}``, ``NatSignal.relays`` / ``NatSignal.deliver``): the receiving replica checks the
target's map and the frame again, so a notification from anyone else decides nothing either.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, Final

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy.ext.asyncio import AsyncEngine

from ..drivers.tasks import cancel_and_wait
from .push import Change, PushHub

if TYPE_CHECKING:
    from ..nat.io.server import NatSignal

__all__ = ["CHANNEL", "MAX_PAYLOAD", "NAT_CHANNEL", "PgFanout", "decode_payload", "encode_payloads"]

CHANNEL: Final = "wgpy_changes"
NAT_CHANNEL: Final = "wgpy_candidates"  # NAT candidates for a peer connected to another replica (not load-bearing)
MAX_NAT_QUEUED: Final = 1000  # candidates frames kept while the connection is down (dropped beyond: agents resend)
MAX_PAYLOAD: Final = 7000  # bytes of one notification (PostgreSQL refuses more than 8000)
RECONNECT_DELAY: Final = 0.5  # seconds before the first reconnection attempt (doubles up to RECONNECT_CAP)
RECONNECT_CAP: Final = 10.0  # seconds (ours)
MAX_QUEUED: Final = 10_000  # changes kept while the connection is down; beyond that one resync replaces them
MAX_KIND: Final = 40  # characters of a change kind accepted from a notification
MAX_PEER_ID: Final = 64  # characters of a peer id accepted from a notification
RESYNC: Final = "resync"  # the change kind that makes every replica recompute every connected peer's map

logger = logging.getLogger("wgpy.management")


def encode_payloads(origin: str, changes: list[Change]) -> list[str]:
    """The notification texts for ``changes`` from replica ``origin``, each at most ``MAX_PAYLOAD`` bytes."""
    payloads: list[str] = []
    items: list[list[str | None]] = []
    size = 0
    head = len(json.dumps({"o": origin, "c": []}))
    for change in changes:
        item = [change.kind[:MAX_KIND], change.peer_id]
        length = len(json.dumps(item)) + 1
        if items and head + size + length > MAX_PAYLOAD:
            payloads.append(json.dumps({"o": origin, "c": items}, separators=(",", ":")))
            items, size = [], 0
        items.append(item)
        size += length
    if items:
        payloads.append(json.dumps({"o": origin, "c": items}, separators=(",", ":")))
    return payloads


def decode_payload(text: str) -> tuple[str, list[Change]] | None:
    """``(origin, changes)`` of a notification, or ``None`` if it is not one of ours (anyone may NOTIFY)."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("o"), str) or not isinstance(value.get("c"), list):
        return None
    changes: list[Change] = []
    for item in value["c"]:
        if not isinstance(item, list) or len(item) != 2:
            return None
        kind, peer_id = item
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND:
            return None
        if peer_id is not None and (not isinstance(peer_id, str) or len(peer_id) > MAX_PEER_ID):
            return None
        changes.append(Change(kind, peer_id))
    return value["o"], changes


class PgFanout:
    """This replica's LISTEN connection and NOTIFY sender (see the module docstring)."""

    def __init__(
        self,
        engine: AsyncEngine,
        hub: PushHub,
        *,
        replica_id: str | None = None,
        channel: str = CHANNEL,
        nat: NatSignal | None = None,
    ) -> None:
        self.engine = engine
        self.hub = hub
        self.nat = nat
        self._nat_queue: collections.deque[str] = collections.deque()
        self.replica_id = replica_id or uuid.uuid4().hex[:12]
        self.channel = channel
        self.connected = asyncio.Event()  # listening now (tests wait on it)
        self.resyncs = 0  # full recomputations after a (re)connection
        self.received = 0  # changes received from other replicas
        self.sent = 0  # notifications sent
        self._queue: collections.deque[Change] = collections.deque()
        self._missed = False  # a change could not be sent: replace it by a resync once connected again
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connection: Any = None

    def __repr__(self) -> str:
        return f"PgFanout(replica={self.replica_id!r}, channel={self.channel!r})"

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.hub.publishers.append(self.publish)
        if self.nat is not None:
            self.nat.relays.append(self.publish_candidates)
        self._task = asyncio.create_task(self._run(), name="pg-fanout")

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.hub.publishers.remove(self.publish)
        if self.nat is not None:
            with contextlib.suppress(ValueError):
                self.nat.relays.remove(self.publish_candidates)
        if self._task is not None:
            task, self._task = self._task, None
            await cancel_and_wait(task)

    async def drop_connection(self) -> None:
        """Close the listening connection abruptly (tests: a lost connection is resynchronised)."""
        connection = self._connection
        if connection is not None:
            connection.terminate()

    # --- the hub's publisher -----------------------------------------------------------------------------------

    def publish(self, change: Change) -> None:
        """Queue a committed local change for the other replicas (called by ``PushHub.notify``)."""
        if len(self._queue) >= MAX_QUEUED:
            self._queue.clear()
            self._missed = True
        else:
            self._queue.append(change)
        self._wake.set()

    def publish_candidates(self, sender: str, target: str, message: dict[str, object]) -> None:
        """Queue a candidates frame for a peer not connected here (``NatSignal.relays``); dropped when the queue is
        full (the connection is down): agents send their candidates again when the other side's change."""
        if len(self._nat_queue) >= MAX_NAT_QUEUED:
            if self.nat is not None:
                self.nat.dropped["relay_full"] += 1
            return
        payload = json.dumps({"o": self.replica_id, "s": sender, "t": target, "m": message}, separators=(",", ":"))
        if len(payload.encode()) <= MAX_PAYLOAD:  # eight candidates and a few IPs: far below
            self._nat_queue.append(payload)
            self._wake.set()

    # --- the connection ----------------------------------------------------------------------------------------

    async def _connect(self) -> Any:
        args, params = self.engine.dialect.create_connect_args(self.engine.url)
        known = {"host", "port", "user", "password", "database", "ssl", "server_settings", "timeout"}
        return await asyncpg.connect(*args, **{key: value for key, value in params.items() if key in known})

    async def _run(self) -> None:
        delay = RECONNECT_DELAY
        while True:
            lost = asyncio.Event()
            try:
                connection = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # OSError, asyncpg errors: the database is away
                logger.warning("replica fan-out: cannot connect to PostgreSQL (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_CAP)
                continue
            self._connection = connection
            try:
                connection.add_termination_listener(lambda _connection, event=lost: event.set())
                await connection.add_listener(self.channel, self._on_notification)
                if self.nat is not None:
                    await connection.add_listener(NAT_CHANNEL, self._on_candidates)
                delay = RECONNECT_DELAY
                self.connected.set()
                # Whatever was committed while we were not listening is in the database: recompute from it.
                self.resyncs += 1
                self.hub.notify(Change(RESYNC), local=False)
                if self._missed:
                    self._queue.appendleft(Change(RESYNC))
                    self._missed = False
                await self._send_loop(connection, lost)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "replica fan-out: the PostgreSQL connection failed (%s); reconnecting", type(exc).__name__
                )
            finally:
                self.connected.clear()
                self._connection = None
                with contextlib.suppress(Exception):
                    connection.terminate()
            await asyncio.sleep(delay)

    async def _send_loop(self, connection: Any, lost: asyncio.Event) -> None:
        while not lost.is_set() and not connection.is_closed():
            while self._nat_queue:
                await connection.execute("SELECT pg_notify($1, $2)", NAT_CHANNEL, self._nat_queue.popleft())
                self.sent += 1
            if not self._queue:
                self._wake.clear()
                waiters = {asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(lost.wait())}
                try:
                    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for waiter in waiters:
                        waiter.cancel()
                continue
            batch = list(self._queue)
            self._queue.clear()
            try:
                for payload in encode_payloads(self.replica_id, batch):
                    await connection.execute("SELECT pg_notify($1, $2)", self.channel, payload)
                    self.sent += 1
            except BaseException:
                # Some of the batch may have gone out; the others get a resync once we are connected again.
                self._missed = True
                raise

    def _on_candidates(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            value = json.loads(payload)
        except ValueError:
            value = None
        if not isinstance(value, dict) or set(value) != {"o", "s", "t", "m"}:
            logger.info("replica fan-out: a candidates notification that is not ours was ignored")
            return
        sender, target = value["s"], value["t"]
        if (
            value["o"] == self.replica_id
            or self.nat is None
            or not isinstance(sender, str)
            or not isinstance(target, str)
        ):
            return
        self.nat.deliver(sender, target, value["m"])

    def _on_notification(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        decoded = decode_payload(payload)
        if decoded is None:
            logger.info("replica fan-out: a notification that is not ours was ignored")
            return
        origin, changes = decoded
        if origin == self.replica_id:
            return
        for change in changes:
            self.received += 1
            self.hub.notify(change, local=False)
