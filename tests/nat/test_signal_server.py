"""The management server forwards candidates between two peers that see each other, and issues TURN credentials."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import pathlib
import sys
from types import SimpleNamespace

import aiohttp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "management"))

from management_helpers import Clock, Harness, next_message, with_harness

from wgpy.management.push import IssuedMap, PeerStream
from wgpy.nat.credentials import turn_credentials
from wgpy.nat.io.server import NAT_BUDGET_BASE, NAT_BUDGET_PER_PEER, NAT_REFILL_TIME, NatSignal

ALL = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"
ONLY_DEV_PROD = b"acls:\n  - {name: dp, src: ['dev'], dst: ['prod'], action: accept}\n"
CANDIDATES = [
    {"kind": "host", "host": "192.168.1.2", "port": 51820},
    {"kind": "srflx", "host": "198.51.100.7", "port": 40000},
]


async def _streams_ready(ws: aiohttp.ClientWebSocketResponse) -> None:
    first = await next_message(ws)
    assert first["type"] == "map"


def test_candidates_are_forwarded_with_what_the_server_vouches_for(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        key = await h.setup_key(reusable=True, usage_limit=10)
        a, b = h.agent(), h.agent()
        assert (await a.enrol(key)).status == 201
        assert (await b.enrol(key, endpoint={"host": "203.0.113.9", "port": 51820})).status == 201
        h.running.server.nat.turn_servers = [("192.0.2.50", 3478)]
        async with a.stream() as ws_a, b.stream() as ws_b:
            await _streams_ready(ws_a)
            await _streams_ready(ws_b)
            await ws_b.send_json({"type": "candidates", "peer": a.public_key, "candidates": CANDIDATES})
            got = await next_message(ws_a)
            assert got == {
                "type": "candidates",
                "peer": b.public_key,
                "candidates": CANDIDATES,
                "announced": sorted({"127.0.0.1", "203.0.113.9", "192.0.2.50"}),
            }
            assert h.running.server.nat.forwarded == 1

    with_harness(tmp_path, body)


def test_a_peer_cannot_signal_one_it_does_not_see_and_malformed_frames_close_the_stream(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ONLY_DEV_PROD)
        dev_key = await h.setup_key(auto_groups=["dev"], reusable=True, usage_limit=5)
        prod_key = await h.setup_key(auto_groups=["prod"])
        d1, d2, p = h.agent(), h.agent(), h.agent()
        for agent, key in ((d1, dev_key), (d2, dev_key), (p, prod_key)):
            assert (await agent.enrol(key)).status == 201
        nat = h.running.server.nat
        async with d1.stream() as ws1, d2.stream() as ws2:
            await _streams_ready(ws1)
            await _streams_ready(ws2)
            # d1 and d2 are both dev: no rule lets one reach the other, so neither is in the other's map. The frame
            # is dropped and counted; the stream stays (the ping after it is answered), d2 gets nothing.
            await ws1.send_json({"type": "candidates", "peer": d2.public_key, "candidates": CANDIDATES})
            await ws1.send_json({"type": "candidates", "peer": d1.public_key, "candidates": CANDIDATES})
            await ws1.send_json({"type": "ping"})
            assert (await next_message(ws1))["type"] == "pong"
            assert nat.refused == 2 and nat.forwarded == 0
            with pytest.raises(asyncio.TimeoutError):
                await ws2.receive(0.3)
        async with d1.stream() as ws1:
            await _streams_ready(ws1)
            bad = {"type": "candidates", "peer": p.public_key, "candidates": [{"kind": "host", "host": "x", "port": 1}]}
            await ws1.send_json(bad)
            closed = await next_message(ws1)
            assert closed["type"] == "<CLOSE>" and closed["code"] == 1008
            assert nat.forwarded == 0

    with_harness(tmp_path, body)


def test_only_peers_that_see_each_other_exchange_candidates_one_way_visibility_is_not_enough(
    tmp_path: pathlib.Path,
) -> None:
    async def body(h: Harness) -> None:
        # dev reaches prod: both maps list the other (a rule's two ends see each other); a third peer in no group
        # sees nobody. Then the policy goes: the maps pushed after it list only the peer itself.
        await h.admin("PUT", "/api/v1/policy", raw=ONLY_DEV_PROD)
        d = h.agent()
        p = h.agent()
        assert (await d.enrol(await h.setup_key(auto_groups=["dev"]))).status == 201
        assert (await p.enrol(await h.setup_key(auto_groups=["prod"]))).status == 201
        nat = h.running.server.nat
        async with d.stream() as ws_d, p.stream() as ws_p:
            await _streams_ready(ws_d)
            await _streams_ready(ws_p)
            await ws_d.send_json({"type": "candidates", "peer": p.public_key, "candidates": CANDIDATES})
            got = await next_message(ws_p)
            assert got["type"] == "candidates" and got["peer"] == d.public_key
            await h.admin("PUT", "/api/v1/policy", raw=b"acls: []\n")
            assert (await next_message(ws_d))["type"] == "map"
            assert (await next_message(ws_p))["type"] == "map"
            await ws_d.send_json({"type": "candidates", "peer": p.public_key, "candidates": CANDIDATES})
            await ws_d.send_json({"type": "ping"})
            assert (await next_message(ws_d))["type"] == "pong"
            assert nat.forwarded == 1 and nat.refused == 1
            with pytest.raises(asyncio.TimeoutError):
                await ws_p.receive(0.3)

    with_harness(tmp_path, body)


def test_a_flooding_peer_is_held_to_its_budget_and_the_others_candidates_still_pass(tmp_path: pathlib.Path) -> None:
    """Live: one enrolled peer floods candidates frames at another on 127.0.0.1; the frames past its budget are
    dropped and counted (its stream stays), the target gets the flooder's newest frame only once, and an honest
    peer's candidates reach the target. The server's clock is stepped by hand, so no token comes back meanwhile."""

    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        key = await h.setup_key(reusable=True, usage_limit=10)
        target, flooder, honest = h.agent(), h.agent(), h.agent()
        for agent in (target, flooder, honest):
            assert (await agent.enrol(key)).status == 201
        nat = h.running.server.nat
        flood = 1000
        budget = NAT_BUDGET_BASE + NAT_BUDGET_PER_PEER * 3  # a map of three peers
        async with target.stream() as ws_t, flooder.stream() as ws_f, honest.stream() as ws_h:
            for ws in (ws_t, ws_f, ws_h):
                await _streams_ready(ws)
            for n in range(flood):
                candidates = [{"kind": "host", "host": "192.168.1.2", "port": 1 + n}]
                await ws_f.send_json({"type": "candidates", "peer": target.public_key, "candidates": candidates})
            await ws_f.send_json({"type": "ping"})
            assert (await next_message(ws_f, timeout=30.0))["type"] == "pong"  # not closed: the flood was read
            assert nat.dropped["rate_limited"] == flood - budget
            assert nat.forwarded == budget
            await ws_h.send_json({"type": "candidates", "peer": target.public_key, "candidates": CANDIDATES})
            got: dict[str, list[int]] = {}
            for _ in range(budget + 1):  # bounded: at most one frame per forwarded one
                message = await next_message(ws_t)
                assert message["type"] == "candidates"
                got.setdefault(message["peer"], []).extend(c["port"] for c in message["candidates"])
                if honest.public_key in got:
                    break
            assert got[honest.public_key] == [c["port"] for c in CANDIDATES]
            # whatever of the flood was written, its newest frame within the budget was
            assert got[flooder.public_key][-1] == budget
            assert nat.forwarded == budget + 1

    with_harness(tmp_path, body)


def test_the_budget_fills_again_over_time_and_grows_with_the_map() -> None:
    async def body() -> None:
        clock = Clock()
        nat = NatSignal(SimpleNamespace(by_key={}, offered=[]), clock=clock)  # type: ignore[arg-type]  # no peer
        keys = [base64.b64encode(n.to_bytes(32, "big")).decode() for n in range(501)]
        sender = PeerStream("a" * 32, _Socket(), keys[0])  # type: ignore[arg-type]
        frame = {"type": "candidates", "peer": keys[1], "candidates": CANDIDATES}
        try:
            assert nat.budget(sender) == NAT_BUDGET_BASE
            sender.map_keys = frozenset(keys)
            size = NAT_BUDGET_BASE + NAT_BUDGET_PER_PEER * 501  # one frame per peer, twice over, passes
            assert all(nat.handle(sender, dict(frame), None) for _ in range(size + 5))
            assert nat.dropped["rate_limited"] == 5
            assert nat.dropped["target_offline"] == size  # each within the budget got as far as the lookup
            clock.now += NAT_REFILL_TIME / size * 10.5  # ten tokens and a half
            for _ in range(12):
                nat.handle(sender, dict(frame), None)
            assert nat.dropped["rate_limited"] == 5 + 2
            clock.now -= 100.0  # a clock stepped back gives nothing
            nat.handle(sender, dict(frame), None)
            assert nat.dropped["rate_limited"] == 8
        finally:
            await sender.stop()

    asyncio.run(body())


def test_candidates_sent_before_the_streams_first_map_wait_for_it() -> None:
    """An agent asks for TURN as its stream opens and sends candidates once answered, which can be before the push
    worker hands the stream its first map: those frames are kept (newest per target) and forwarded with that map."""

    async def body() -> None:
        clock = Clock()
        keys = [base64.b64encode(n.to_bytes(32, "big")).decode() for n in range(1, 4)]
        target_socket = _Socket()
        sender = PeerStream("a" * 32, _Socket(), keys[0])  # type: ignore[arg-type]
        target = PeerStream("b" * 32, target_socket, keys[1])  # type: ignore[arg-type]
        hub = SimpleNamespace(by_key={keys[1]: target}, offered=[])
        nat = NatSignal(hub, clock=clock)  # type: ignore[arg-type]
        try:
            target.offer(IssuedMap(1, "{}", 0, b"", frozenset(keys[:2])))
            older = [{"kind": "host", "host": "192.168.1.2", "port": 1}]
            for candidates in (older, CANDIDATES):
                assert nat.handle(sender, {"type": "candidates", "peer": keys[1], "candidates": candidates}, None)
            assert nat.forwarded == 0 and nat.refused == 0
            sender.offer(IssuedMap(1, "{}", 0, b"", frozenset(keys[:2]), {keys[0]: "203.0.113.9"}))
            for hook in hub.offered:  # as PushHub.recompute does after each offer
                hook(sender)
            assert nat.forwarded == 1 and not sender.nat_waiting
            for _ in range(100):  # bounded: the target's writer task runs
                if any('"candidates"' in text for text in target_socket.sent):
                    break
                await asyncio.sleep(0.01)
            forwarded = [json.loads(text) for text in target_socket.sent if '"candidates"' in text]
            assert forwarded == [
                {"type": "candidates", "peer": keys[0], "candidates": CANDIDATES, "announced": ["203.0.113.9"]}
            ]
        finally:
            await sender.stop()
            await target.stop()

    asyncio.run(body())


def test_a_frame_for_a_target_whose_map_does_not_list_the_sender_yet_goes_with_its_next_map() -> None:
    """The target's stream has just opened (no map yet): the sender's frame waits on it and is written after the
    target's first map, which lists the sender, and not before it (the agent drops candidates of a peer not in its
    map). A sender the new map does not list is refused then. Refused at once, the frame was lost for good: the
    sender sends the same candidates again only when they change."""

    async def body() -> None:
        clock = Clock()
        keys = [base64.b64encode(n.to_bytes(32, "big")).decode() for n in range(1, 4)]
        target_socket = _Socket()
        sender = PeerStream("a" * 32, _Socket(), keys[0])  # type: ignore[arg-type]
        target = PeerStream("b" * 32, target_socket, keys[1])  # type: ignore[arg-type]
        stranger = PeerStream("c" * 32, _Socket(), keys[2])  # type: ignore[arg-type]
        hub = SimpleNamespace(by_key={keys[0]: sender, keys[1]: target, keys[2]: stranger}, offered=[])
        nat = NatSignal(hub, clock=clock)  # type: ignore[arg-type]
        try:
            sender.offer(IssuedMap(1, "{}", 0, b"", frozenset(keys[:2]), {keys[0]: "203.0.113.9"}))
            stranger.offer(IssuedMap(1, "{}", 0, b"", frozenset(keys[1:])))  # it sees the target; not the reverse
            for _ in range(100):  # bounded: their writers send the maps and go idle
                if all(stream.ws.sent for stream in (sender, stranger)):  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.01)
            for stream in (sender, stranger):
                frame: dict[str, object] = {"type": "candidates", "peer": keys[1], "candidates": CANDIDATES}
                assert nat.handle(stream, frame, None)
            assert nat.forwarded == 0 and nat.refused == 0 and nat.parked == 2
            target.offer(IssuedMap(2, "{}", 0, b"", frozenset(keys[:2])))
            for hook in hub.offered:  # as PushHub.recompute does after each offer
                hook(target)
            assert nat.forwarded == 1 and nat.refused == 1 and not target.nat_parked
            for _ in range(100):  # bounded: the target's writer task runs
                if len(target_socket.sent) >= 2:
                    break
                await asyncio.sleep(0.01)
            written = [json.loads(text) for text in target_socket.sent]
            assert written == [
                {"type": "map", "serial": 2, "document": {}},
                {"type": "candidates", "peer": keys[0], "candidates": CANDIDATES, "announced": ["203.0.113.9"]},
            ]
        finally:
            for stream in (sender, target, stranger):
                await stream.stop()

    asyncio.run(body())


class _Socket:
    closed = False

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_str(self, text: str) -> None:
        self.sent.append(text)

    async def close(self, **_kwargs: object) -> None:
        return None


def test_turn_credentials_are_short_lived_and_in_coturns_rest_scheme(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        key = await h.setup_key()
        a = h.agent()
        enrolled = await a.enrol(key)
        assert enrolled.status == 201
        nat = h.running.server.nat
        nat.turn_secret, nat.turn_servers = b"coturn-secret", [("192.0.2.50", 3478)]
        async with a.stream() as ws:
            await _streams_ready(ws)
            await ws.send_json({"type": "turn"})
            got = await next_message(ws)
            assert got["type"] == "turn" and got["servers"] == [{"host": "192.0.2.50", "port": 3478}]
            expires, peer_id = got["username"].split(":")
            assert peer_id == enrolled.body["peer"]["id"]
            assert int(expires) == got["expires_at"] == int(h.clock()) + 3600
            mac = hmac.new(b"coturn-secret", got["username"].encode(), hashlib.sha1).digest()
            assert got["password"] == base64.b64encode(mac).decode()
            assert "password" not in repr(turn_credentials(b"s", "p", 0.0)).replace("password=<hidden>", "")

    with_harness(tmp_path, body)
