"""The agent's side of NAT traversal (``wgpy up``): the stream frames, STUN servers, the relay, candidates.

Theory of operation: ``AgentRunner`` owns one ``NatAgent``. When the map stream opens, the agent asks for TURN
credentials (``{"type": "turn"}``); the answer names the servers (coturn answers STUN Binding and TURN on one
port) and, when the server has a TURN secret, short-lived credentials. The agent then learns its server-reflexive
address on the WireGuard socket (``NatHandler``), allocates on the TURN server (``TurnRelay``), and sends its
candidates to every peer of its map; a peer's forwarded candidates start the checks (``NatHandler
.set_remote_candidates``) and are answered with ours, so both sides probe at the same time. Credentials are asked
for again ``TURN_RENEW_BEFORE`` seconds before they expire, and a new allocation replaces the old one (make before
break: the old one is released only once the new one is announced).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from ...keys import PublicKey
from ..candidates import CandidateError
from .handler import NatHandler
from .relay import TurnRelay

__all__ = ["NatAgent"]

logger = logging.getLogger("wgpy.nat")

TURN_RENEW_BEFORE: Final = 300.0  # seconds before the credentials expire that new ones are asked for (ours)

Send = Callable[[dict[str, object]], Awaitable[None]]


class NatAgent:
    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self.handler = NatHandler([])
        self.wall_clock = wall_clock
        self._send: Send | None = None
        self._sent: dict[str, tuple[object, float]] = {}  # peer key -> (what we sent, when: monotonic)
        self._received: dict[str, object] = {}  # peer key -> the candidates it sent last
        self._renew: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.credentials_expire_at: int | None = None
        self.frames_refused = 0
        self.handler.on_reflexive = lambda _server, _address: self.peers_changed()

    def attach(self, tunnel: object) -> None:
        from ...drivers.asyncio_udp import Tunnel

        if isinstance(tunnel, Tunnel):
            self.handler.attach(tunnel)

    def close(self) -> None:
        if self._renew is not None:
            self._renew.cancel()
        for task in self._tasks:
            task.cancel()
        self.handler.detach()

    # --- the stream -----------------------------------------------------------------------------------------------

    async def stream_opened(self, send: Send) -> None:
        self._send = send
        self._sent.clear()
        self._received.clear()
        await send({"type": "turn"})

    def stream_closed(self) -> None:
        self._send = None

    async def on_frame(self, message: Mapping[str, object]) -> None:
        kind = message.get("type")
        if kind == "turn":
            await self._on_turn(message)
        elif kind == "candidates":
            self._on_candidates(message)

    async def _on_turn(self, message: Mapping[str, object]) -> None:
        servers = []
        raw = message.get("servers")
        for item in raw if isinstance(raw, list) else []:
            if isinstance(item, dict) and isinstance(item.get("host"), str) and isinstance(item.get("port"), int):
                servers.append((str(item["host"]), int(item["port"])))
        if servers and servers != self.handler.stun_servers:
            self.handler.stun_servers = servers
            self.handler.refresh()
        username, password, expires = message.get("username"), message.get("password"), message.get("expires_at")
        if not (servers and isinstance(username, str) and isinstance(password, str) and isinstance(expires, int)):
            return
        self.credentials_expire_at = expires
        old = self.handler.relay
        relay = TurnRelay(servers[0], username, password, lambda _d, _a: None)
        try:
            await self.handler.start_relay(relay)
        except (OSError, TimeoutError, ConnectionError, Exception) as exc:  # aioice raises its own errors too
            logger.info("no TURN allocation on %s:%d: %s", *servers[0], exc)
        else:
            if old is not None and old is not relay:
                self.handler.retire_relay(old)
            self.peers_changed()
        loop = asyncio.get_running_loop()
        if self._renew is not None:
            self._renew.cancel()
        left = expires - self.wall_clock()
        delay = max(1.0, left - min(TURN_RENEW_BEFORE, left / 2))  # short-lived credentials: at half their life
        self._renew = loop.call_later(delay, self._ask_turn)

    def _ask_turn(self) -> None:
        if self._send is not None:
            self._spawn(self._send({"type": "turn"}))

    def _on_candidates(self, message: Mapping[str, object]) -> None:
        peer, announced = message.get("peer"), message.get("announced")
        tunnel = self.handler.tunnel
        if not isinstance(peer, str) or not isinstance(announced, list) or tunnel is None:
            self.frames_refused += 1
            return
        try:
            key = PublicKey.from_base64(peer)
            if tunnel.device.peer(key) is None:
                self.frames_refused += 1  # not in our map: the server should not have sent it
                return
            self.handler.set_remote_candidates(key, message.get("candidates"), [str(a) for a in announced])
        except (CandidateError, ValueError) as exc:
            self.frames_refused += 1
            logger.info("peer(%s): candidates refused: %s", peer[:8], exc)
            return
        # New or changed candidates from this peer are answered with ours: it may have missed what we sent
        # before its stream was open, and both sides must probe at once. The same ones again are not (no ping-pong).
        if self._received.get(peer) != message.get("candidates"):
            self._received[peer] = message.get("candidates")
            self._send_candidates(peer, force=True)

    # --- our candidates -------------------------------------------------------------------------------------------

    def peers_changed(self) -> None:
        """The map or our candidates changed: tell each peer what changed for it."""
        tunnel = self.handler.tunnel
        if tunnel is None or self._send is None:
            return
        for key in list(tunnel.device.peers):
            self._send_candidates(key.to_base64())

    def _send_candidates(self, peer: str, *, force: bool = False) -> None:
        if self._send is None:
            return
        candidates = [c.to_json() for c in self.handler.local_candidates()]
        if not candidates:
            return
        last = self._sent.get(peer)
        if not force and last is not None and last[0] == candidates:
            return
        self._sent[peer] = (candidates, time.monotonic())
        self._spawn(self._send({"type": "candidates", "peer": peer, "candidates": candidates}))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        async def run() -> None:
            with contextlib.suppress(Exception):  # the stream closed meanwhile: the next one sends again
                await coroutine

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def describe(self, key: PublicKey) -> str | None:
        self.handler.observe_paths()
        paths = self.handler.paths.get(key)
        return paths.describe() if paths is not None else None
