"""The management server forwards candidates between two peers that see each other, and issues TURN credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import pathlib
import sys

import aiohttp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "management"))

from management_helpers import Harness, next_message, with_harness

from wgpy.nat.credentials import turn_credentials

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
        async with d1.stream() as ws1, d2.stream() as ws2:
            await _streams_ready(ws1)
            await _streams_ready(ws2)
            # d1 and d2 are both dev: no rule lets one reach the other, so neither is in the other's map
            await ws1.send_json({"type": "candidates", "peer": d2.public_key, "candidates": CANDIDATES})
            closed = await next_message(ws1)
            assert closed["type"] == "<CLOSE>" and closed["code"] == 1008
            assert h.running.server.nat.refused == 1
        async with d1.stream() as ws1:
            await _streams_ready(ws1)
            bad = {"type": "candidates", "peer": p.public_key, "candidates": [{"kind": "host", "host": "x", "port": 1}]}
            await ws1.send_json(bad)
            closed = await next_message(ws1)
            assert closed["type"] == "<CLOSE>" and closed["code"] == 1008
            assert h.running.server.nat.forwarded == 0

    with_harness(tmp_path, body)


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
