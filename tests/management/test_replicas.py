"""Two management replicas on one PostgreSQL database (issue #14): a change made through one reaches the peers
connected to the other within a second (LISTEN/NOTIFY), a lost notification is made good by the resync on
reconnect, and setup keys, refresh tokens and addresses stay correct when concurrent requests go to different
replicas. The cluster is the throwaway one of ``postgres_helpers`` (skipped, with the reason, without PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
import pathlib
import time
from collections import Counter
from typing import Any

import aiohttp
import pytest
from management_helpers import Harness, next_message
from postgres_helpers import postgres_url, reset
from replica_helpers import moved, replicas

from wgpy.management.notify import MAX_PAYLOAD, decode_payload, encode_payloads
from wgpy.management.push import Change

__all__ = ["postgres_url"]  # the fixture, imported for pytest

ALL = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"
NONE = b"acls: []\n"


def _peers(message: dict[str, Any], own: Any) -> set[str]:
    """The other peers in a map message (a map lists its own peer too)."""
    return {peer["public_key"] for peer in message["document"]["map"]["peers"]} - {own.public_key}


def test_payloads_round_trip_and_fit() -> None:
    changes = [Change("peer_joined", f"{n:032x}") for n in range(500)] + [Change("policy")]
    payloads = encode_payloads("replica-a", changes)
    assert len(payloads) > 1
    assert all(len(text.encode()) <= MAX_PAYLOAD for text in payloads)
    decoded = [decode_payload(text) for text in payloads]
    assert all(item is not None and item[0] == "replica-a" for item in decoded)
    assert [change for item in decoded if item is not None for change in item[1]] == changes
    for bad in ("", "[]", '{"o": 1, "c": []}', '{"o": "x", "c": [["k"]]}', '{"o": "x", "c": [[1, null]]}'):
        assert decode_payload(bad) is None


def test_change_through_b_reaches_a_peer_on_a_within_one_second(postgres_url: str, tmp_path: pathlib.Path) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            await b.admin("PUT", "/api/v1/policy", raw=ALL)
            key = await a.setup_key(reusable=True, usage_limit=10)
            one, two = a.agent(), b.agent()
            assert (await one.enrol(key)).status == 201
            assert (await two.enrol(key)).status == 201
            async with one.stream() as ws:
                first = await next_message(ws)
                assert _peers(first, one) == {two.public_key}
                latencies = []
                for policy in (NONE, ALL, NONE):
                    started = time.monotonic()
                    assert (await b.admin("PUT", "/api/v1/policy", raw=policy)).status == 200
                    message = await next_message(ws, timeout=1.0)
                    latencies.append(time.monotonic() - started)
                    assert message["type"] == "map"
                    assert _peers(message, one) == (set() if policy == NONE else {two.public_key})
                    assert message["serial"] > first["serial"]
                    first = message
                assert max(latencies) < 1.0, latencies
                # A peer enrolled through B appears in the map of A's peer; revoked through B, it disappears.
                three = b.agent()
                await b.admin("PUT", "/api/v1/policy", raw=ALL)
                await next_message(ws, timeout=1.0)
                assert (await three.enrol(key)).status == 201
                message = await next_message(ws, timeout=1.0)
                assert _peers(message, one) == {two.public_key, three.public_key}
                await b.admin("POST", f"/api/v1/peers/{three.peer_id}/revoke")
                message = await next_message(ws, timeout=1.0)
                assert _peers(message, one) == {two.public_key}
            assert a.running.fanout is not None and a.running.fanout.received > 0

    asyncio.run(main())


def test_revocation_through_b_closes_the_stream_on_a(postgres_url: str, tmp_path: pathlib.Path) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            key = await a.setup_key()
            one = a.agent()
            assert (await one.enrol(key)).status == 201
            async with one.stream() as ws:
                assert (await next_message(ws))["type"] == "map"
                assert (await b.admin("POST", f"/api/v1/peers/{one.peer_id}/revoke")).status == 200
                assert (await next_message(ws, timeout=1.0))["type"] == "revoked"
                assert (await next_message(ws, timeout=1.0))["code"] == 4001

    asyncio.run(main())


def test_a_lost_notification_is_made_good_by_the_resync_on_reconnect(postgres_url: str, tmp_path: pathlib.Path) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            fanout = a.running.fanout
            assert fanout is not None
            await b.admin("PUT", "/api/v1/policy", raw=ALL)
            key = await a.setup_key(reusable=True, usage_limit=10)
            one, two = a.agent(), a.agent()
            assert (await one.enrol(key)).status == 201
            assert (await two.enrol(key)).status == 201
            async with one.stream() as ws:
                assert _peers(await next_message(ws), one) == {two.public_key}
                # A is not listening while B changes the policy: the notification never reaches A.
                await fanout.stop()
                resyncs = fanout.resyncs
                await b.admin("PUT", "/api/v1/policy", raw=NONE)
                with pytest.raises(asyncio.TimeoutError):
                    await next_message(ws, timeout=0.5)
                fanout.start()
                message = await next_message(ws, timeout=5.0)
                assert _peers(message, one) == set()
                assert fanout.resyncs == resyncs + 1
                # A connection dropped under A's feet reconnects by itself and resyncs again.
                await fanout.drop_connection()
                await b.admin("PUT", "/api/v1/policy", raw=ALL)
                message = await next_message(ws, timeout=5.0)
                assert _peers(message, one) == {two.public_key}

    asyncio.run(main())


def test_one_off_key_presented_to_both_replicas_at_once_enrols_one(postgres_url: str, tmp_path: pathlib.Path) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            for _round in range(5):
                key = await a.setup_key()
                agents = [h.agent() for h in (a, b) for _ in range(10)]
                answers = await asyncio.gather(*(agent.enrol(key) for agent in agents))
                assert sorted(answer.status for answer in answers) == [201] + [403] * 19
            peers = (await b.admin("GET", "/api/v1/peers")).body
            assert len(peers) == 5
            assert len({peer["address"] for peer in peers}) == 5

    asyncio.run(main())


def test_200_enrolments_across_replicas_with_a_limit_of_100_enrol_exactly_100(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            key = await a.setup_key(reusable=True, usage_limit=100)
            agents = [(a, b)[n % 2].agent() for n in range(200)]
            answers = await asyncio.gather(*(agent.enrol(key) for agent in agents))
            statuses = Counter(answer.status for answer in answers)
            assert statuses == {201: 100, 403: 100}, statuses
            addresses = [answer.body["peer"]["address"] for answer in answers if answer.status == 201]
            assert len(set(addresses)) == 100
            keys = (await b.admin("GET", "/api/v1/setup-keys")).body
            assert [k["used"] for k in keys] == [100]
            peers = (await a.admin("GET", "/api/v1/peers")).body
            assert len(peers) == 100
            assert {peer["address"] for peer in peers} == set(addresses)
            # Peers enrolled through both replicas under two other keys at once never share an address either.
            k1, k2 = await a.setup_key(reusable=True, usage_limit=50), await b.setup_key(reusable=True, usage_limit=50)
            more = [(a, b)[n % 2].agent() for n in range(40)]
            answers = await asyncio.gather(*(agent.enrol((k1, k2)[n // 20]) for n, agent in enumerate(more)))
            assert Counter(answer.status for answer in answers) == {201: 40}
            peers = (await a.admin("GET", "/api/v1/peers")).body
            assert len({peer["address"] for peer in peers}) == len(peers) == 140

    asyncio.run(main())


def test_refresh_token_presented_to_both_replicas_at_once_leaves_one_live_pair(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            key = await a.setup_key(reusable=True, usage_limit=20)
            for _round in range(5):
                one = a.agent()
                assert (await one.enrol(key)).status == 201
                other = moved(one, b)
                token = one.refresh_token
                first, second = await asyncio.gather(one.refresh(token), other.refresh(token))
                statuses = sorted((first.status, second.status))
                if statuses == [200, 401]:
                    # Truly at once (the guarded update saw the other's use in flight): token reuse, and the whole
                    # family revoked, the token just issued included, on both replicas.
                    refused = first if first.status == 401 else second
                    assert refused.body["error"] == "token_reuse"
                    issued = (first if first.status == 200 else second).body["refresh_token"]
                    assert (await one.refresh(issued)).status == 401
                    assert (await other.refresh(issued)).status == 401
                else:
                    # One after the other's commit: the same key asking again within the grace is a retry
                    # (docs/management-api.md, "Tokens"); the first pair was retired as used, so of the two pairs
                    # never both work: presenting them in turn gives at most one 200 and one token reuse.
                    assert statuses == [200, 200], (first.text, second.text)
                    turns = [
                        await one.refresh(first.body["refresh_token"]),
                        await other.refresh(second.body["refresh_token"]),
                    ]
                    assert [answer.status for answer in turns].count(200) <= 1, [a.text for a in turns]
                    assert any(answer.body.get("error") == "token_reuse" for answer in turns), [a.text for a in turns]

    asyncio.run(main())


def test_serials_stay_monotonic_per_peer_across_replicas(postgres_url: str, tmp_path: pathlib.Path) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            await a.admin("PUT", "/api/v1/policy", raw=ALL)
            key = await a.setup_key(reusable=True, usage_limit=10)
            one = a.agent()
            assert (await one.enrol(key)).status == 201
            other = moved(one, b)
            serials: list[int] = []

            async def fetch(agent: Any) -> None:
                answer = await agent.call("GET", "/api/v1/peer/map")
                assert answer.status == 200, answer.text
                serials.append(answer.body["map"]["serial"])

            await asyncio.gather(*(fetch((one, other)[n % 2]) for n in range(30)))
            assert len(set(serials)) == 30  # every map issued got its own serial, whichever replica issued it

    asyncio.run(main())


def test_a_request_accepted_by_one_replica_is_refused_as_a_replay_by_another(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            key = await a.setup_key(reusable=True, usage_limit=10)
            one = a.agent()
            assert (await one.enrol(key)).status == 201
            path = "/api/v1/peer/endpoint"
            captured = {"host": "192.0.2.1", "port": 51820}
            answer = await one.call("POST", path, captured)
            assert answer.status == 204, answer.text
            headers = dict(one.last_headers)  # signed once, accepted by A
            answer = await one.call("POST", path, {"host": "192.0.2.2", "port": 51821})
            assert answer.status == 204, answer.text
            peers, log = (await b.admin("GET", "/api/v1/peers")).body, (await b.admin("GET", "/api/v1/audit")).body

            other = moved(one, b)
            replayed = await other.call("POST", path, captured, headers=headers)
            assert replayed.status == 401, replayed.text
            assert replayed.body["error"] == "replayed_proof"
            # Nothing changed on B: the endpoint is still the second one, and no audit line was written.
            assert (await b.admin("GET", "/api/v1/peers")).body == peers
            assert (await b.admin("GET", "/api/v1/audit")).body == log
            [row] = peers
            assert row["endpoint"] == {"host": "192.0.2.2", "port": 51821}
            # A request signed afresh is accepted by B.
            answer = await other.call("POST", path, {"host": "192.0.2.3", "port": 51822})
            assert answer.status == 204, answer.text
            [row] = (await b.admin("GET", "/api/v1/peers")).body
            assert row["endpoint"] == {"host": "192.0.2.3", "port": 51822}

    asyncio.run(main())


def test_replicas_need_postgresql_for_fanout(tmp_path: pathlib.Path) -> None:
    # SQLite stays the embedded default for one server: no fan-out is started there.
    from management_helpers import harness

    async def main() -> None:
        async with harness(tmp_path) as h:
            assert h.running.fanout is None
            assert isinstance(h, Harness)
            async with aiohttp.ClientSession() as http:
                async with http.get(h.url + "/api/v1/info") as response:
                    assert response.status == 200

    asyncio.run(main())


def test_candidates_reach_a_peer_connected_to_the_other_replica(postgres_url: str, tmp_path: pathlib.Path) -> None:
    """A's stream on replica a, B's on replica b: A's candidates for B go through NOTIFY and reach B with what the
    sender's replica vouches for; a notification naming a sender outside B's map is refused by b."""
    reset(postgres_url)
    candidates = [{"kind": "srflx", "host": "198.51.100.7", "port": 40000}]

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            await a.admin("PUT", "/api/v1/policy", raw=ALL)
            key = await a.setup_key(reusable=True, usage_limit=5)
            one, two = a.agent(), a.agent()
            for agent in (one, two):
                assert (await agent.enrol(key)).status == 201
            async with one.stream() as ws_one, moved(two, b).stream() as ws_two:
                assert (await next_message(ws_one))["type"] == "map"
                assert (await next_message(ws_two))["type"] == "map"
                await ws_one.send_json({"type": "candidates", "peer": two.public_key, "candidates": candidates})
                got = await next_message(ws_two)
                assert got == {
                    "type": "candidates",
                    "peer": one.public_key,
                    "candidates": candidates,
                    "announced": ["127.0.0.1"],
                }
                assert a.running.server.nat.relayed == 1 and b.running.server.nat.forwarded == 1
                # A forged notification (anyone with database access may NOTIFY): a sender B's map does not list.
                stranger = base64.b64encode(bytes(32)).decode()
                b.running.server.nat.deliver(stranger, two.public_key, got)
                assert b.running.server.nat.refused == 1 and b.running.server.nat.forwarded == 1
                # ...or one that is not a candidates frame: dropped and counted, nothing sent
                b.running.server.nat.deliver(one.public_key, two.public_key, {**got, "announced": ["not an IP"]})
                assert b.running.server.nat.dropped["bad_relayed"] == 1 and b.running.server.nat.forwarded == 1

    asyncio.run(main())
