"""Every bad input of issue #13 is refused with a clear JSON error and the right status, and changes nothing:
setup keys (unknown, expired, used, revoked), tokens (forged, expired, other key, replayed proof, wrong type),
a replayed refresh token (family revoked and audited), malformed policies (the error names the line), oversized or
malformed bodies and unknown fields. Plus: 20 concurrent enrolments with one one-off key enrol exactly one."""

from __future__ import annotations

import asyncio
import json
import pathlib
from typing import Any

import aiohttp
from management_helpers import Agent, Answer, Harness, with_harness
from sqlalchemy import select

from wgpy import crypto
from wgpy.management import store, tokens
from wgpy.management.policy import MAX_POLICY_SIZE


async def _state(h: Harness) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (a refused request must leave all of it as it was)."""
    tables = (
        store.SetupKeyRow,
        store.PeerRow,
        store.PolicyRow,
        store.GroupRow,
        store.RefreshTokenRow,
        store.AdminToken,
        store.AuditRow,
    )
    result: dict[str, list[tuple[Any, ...]]] = {}
    async with h.running.server.sessions() as session:
        for model in tables:
            rows = (await session.execute(select(model))).scalars().all()
            columns = [column.key for column in model.__table__.columns]
            result[model.__tablename__] = sorted(
                tuple(json.dumps(getattr(row, c), sort_keys=True) for c in columns) for row in rows
            )
    return result


def _refused(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.text
    assert set(answer.body) == {"error", "detail"}, answer.text
    assert answer.body["error"] == code, answer.text
    assert "\n" not in answer.body["detail"] and "Traceback" not in answer.text


def test_setup_key_refusals_change_nothing(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        used = await h.setup_key()
        enrolled = h.agent()
        assert (await enrolled.enrol(used)).status == 201
        fresh = await h.setup_key()
        expired = await h.setup_key(expires_in=60)
        revoked_key = await h.admin("POST", "/api/v1/setup-keys", {"name": "r"})
        await h.admin("DELETE", f"/api/v1/setup-keys/{revoked_key.body['id']}")
        h.clock.now += 61
        before = await _state(h)
        agent = h.agent()
        _refused(await agent.enrol("wgsk_nonexistent"), 401, "unknown_setup_key")
        _refused(await agent.enrol(expired), 403, "expired_setup_key")
        _refused(await agent.enrol(used), 403, "used_setup_key")
        _refused(await agent.enrol(revoked_key.body["key"]), 403, "revoked_setup_key")
        _refused(await enrolled.enrol(fresh), 409, "already_enrolled")  # the same WireGuard key, a valid setup key
        assert await _state(h) == before

    with_harness(tmp_path, body)


def test_bad_enrolment_bodies_change_nothing(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        key = await h.setup_key()
        agent, other = h.agent(), h.agent()
        before = await _state(h)

        async def send(raw: bytes, headers_from: Agent | None = None) -> Answer:
            signer = headers_from or agent
            return await agent.call(
                "POST", "/api/v1/enrol", raw=raw, headers=signer.headers("POST", "/api/v1/enrol", raw)
            )

        _refused(await send(b"{not json"), 400, "malformed")
        _refused(await send(b"[1, 2]"), 400, "malformed")
        _refused(await send(b'{"setup_key": "a", "setup_key": "b"}'), 400, "malformed")
        good = {"setup_key": key, "public_key": agent.public_key}
        _refused(await send(json.dumps({**good, "colour": "red"}).encode()), 400, "unknown_field")
        _refused(await send(json.dumps({**good, "public_key": "abc"}).encode()), 400, "invalid_value")
        _refused(await send(json.dumps({**good, "name": "bad name!"}).encode()), 400, "invalid_value")
        _refused(
            await send(json.dumps({**good, "endpoint": {"host": "example.com", "port": 1}}).encode()),
            400,
            "invalid_value",
        )
        _refused(
            await send(json.dumps({**good, "endpoint": {"host": "10.0.0.1", "port": 0}}).encode()), 400, "invalid_value"
        )
        _refused(await send(json.dumps({**good, "setup_key": 5}).encode()), 400, "invalid_value")
        # proof made with another key than the body's public key
        _refused(await send(json.dumps(good).encode(), headers_from=other), 401, "bad_proof")
        # no proof at all
        _refused(
            await agent.call("POST", "/api/v1/enrol", raw=json.dumps(good).encode(), headers={}), 401, "missing_proof"
        )
        # oversized body
        huge = json.dumps({**good, "name": "x" * (70 * 1024)}).encode()
        _refused(await send(huge), 413, "too_large")
        # a proof for another body (the MAC covers the body's hash)
        raw = json.dumps(good).encode()
        headers = agent.headers("POST", "/api/v1/enrol", raw + b" ")
        _refused(await agent.call("POST", "/api/v1/enrol", raw=raw, headers=headers), 401, "bad_proof")
        # a stale proof
        headers = agent.headers("POST", "/api/v1/enrol", raw, now=h.clock() - 120)
        _refused(await agent.call("POST", "/api/v1/enrol", raw=raw, headers=headers), 401, "stale_proof")
        assert await _state(h) == before
        # and a replayed enrolment request (same proof headers) is refused
        headers = agent.headers("POST", "/api/v1/enrol", raw)
        assert (await agent.call("POST", "/api/v1/enrol", raw=raw, headers=headers)).status == 201
        _refused(await agent.call("POST", "/api/v1/enrol", raw=raw, headers=headers), 401, "replayed_proof")

    with_harness(tmp_path, body)


def test_token_refusals_change_nothing(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        key = await h.setup_key(reusable=True, usage_limit=5)
        a, b = h.agent(), h.agent()
        assert (await a.enrol(key)).status == 201
        assert (await b.enrol(key)).status == 201
        assert a.access_token is not None and a.peer_id is not None
        before = await _state(h)
        # forged: a valid-looking token signed with another key
        forged, _ = tokens.issue_token(
            crypto.Ed25519PrivateKey.generate(),
            peer_id=a.peer_id,
            public_key=a.public_key,
            typ="access",
            now=h.clock(),
            jti="x",
        )
        _refused(await a.call("GET", "/api/v1/peer/map", token=forged), 401, "bad_signature")
        _refused(await a.call("GET", "/api/v1/peer/map", token="garbage"), 401, "malformed")  # noqa: S106
        _refused(await a.call("GET", "/api/v1/peer/map", token=a.refresh_token), 401, "wrong_type")
        # other key: b presents a's access token with b's own proof
        _refused(await b.call("GET", "/api/v1/peer/map", token=a.access_token), 401, "other_key")
        # no token
        answer = await a.call("GET", "/api/v1/peer/map", headers=a.headers("GET", "/api/v1/peer/map", b""))
        _refused(answer, 401, "missing_token")
        # replayed request: the same proof headers twice
        headers = a.headers("GET", "/api/v1/peer/map", b"", token=a.access_token)
        assert (await a.call("GET", "/api/v1/peer/map", headers=headers)).status == 200
        after_first = await _state(h)
        _refused(await a.call("GET", "/api/v1/peer/map", headers=headers), 401, "replayed_proof")
        assert await _state(h) == after_first
        # a proof for another path
        headers = a.headers("GET", "/api/v1/peer/endpoint", b"", token=a.access_token)
        _refused(await a.call("GET", "/api/v1/peer/map", headers=headers), 401, "bad_proof")
        # expired: an hour later
        h.clock.now += tokens.ACCESS_LIFETIME
        before = await _state(h)
        _refused(await a.call("GET", "/api/v1/peer/map"), 401, "expired")
        _refused(await a.call("POST", "/api/v1/peer/endpoint", {"host": "10.1.1.1", "port": 5}), 401, "expired")
        assert await _state(h) == before
        # the refresh token still works and gives a working access token
        assert (await a.refresh()).status == 200
        assert (await a.call("GET", "/api/v1/peer/map")).status == 200
        # refresh token other key: b presents a's refresh token
        before = await _state(h)
        _refused(await b.refresh(a.refresh_token), 401, "other_key")
        assert await _state(h) == before

    with_harness(tmp_path, body)


def test_a_refresh_whose_answer_was_lost_may_be_asked_again_while_its_pair_is_unused(tmp_path: pathlib.Path) -> None:
    """The server rotated the token but the device never got the answer: the same token again, within
    tokens.RETRY_GRACE and with the device's proof, gets a new pair; the pair nobody received is revoked. Past the
    grace, or once that pair was used, it is token reuse again."""

    async def body(h: Harness) -> None:
        agent = h.agent()
        assert (await agent.enrol(await h.setup_key())).status == 201
        original = agent.refresh_token
        assert (await agent.refresh()).status == 200
        lost = agent.refresh_token  # the answer that "never arrived"
        h.clock.now += tokens.RETRY_GRACE - 1
        assert (await agent.refresh(original)).status == 200  # asked again
        h.clock.now += tokens.RETRY_GRACE - 1  # a second lost answer: the grace counts from the last retry
        assert (await agent.refresh(original)).status == 200
        assert (await agent.refresh()).status == 200  # the family lives on
        events = await h.admin("GET", "/api/v1/audit?kind=refresh_retry")
        assert len(events.body) == 2 and (await h.admin("GET", "/api/v1/audit?kind=token_reuse")).body == []
        # The pair nobody received was retired as used: if it turns up after all (someone holding the device's key
        # asked again while the device had its answer), that is reuse and the family dies, with the audit event.
        _refused(await agent.refresh(lost), 401, "token_reuse")
        _refused(await agent.refresh(), 401, "revoked")
        assert len((await h.admin("GET", "/api/v1/audit?kind=token_reuse")).body) == 1

    with_harness(tmp_path, body)


def test_past_the_retry_grace_a_used_token_is_reuse(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        agent = h.agent()
        assert (await agent.enrol(await h.setup_key())).status == 201
        late = agent.refresh_token
        assert (await agent.refresh()).status == 200
        h.clock.now += tokens.RETRY_GRACE + 1
        _refused(await agent.refresh(late), 401, "token_reuse")
        _refused(await agent.refresh(), 401, "revoked")

    with_harness(tmp_path, body)


def test_replayed_refresh_token_revokes_its_family(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        key = await h.setup_key()
        agent = h.agent()
        assert (await agent.enrol(key)).status == 201
        original = agent.refresh_token
        assert (await agent.refresh()).status == 200
        assert (await agent.refresh()).status == 200  # the pair issued for the original is used: no retry any more
        rotated = agent.refresh_token
        # the stolen copy of the original is presented again: the whole family dies
        _refused(await agent.refresh(original), 401, "token_reuse")
        _refused(await agent.refresh(rotated), 401, "revoked")
        events = await h.admin("GET", "/api/v1/audit?kind=token_reuse")
        assert len(events.body) == 1 and events.body[0]["peer"] == agent.peer_id
        async with h.running.server.sessions() as session:
            rows = (await session.execute(select(store.RefreshTokenRow))).scalars().all()
        assert rows and all(row.revoked for row in rows)

    with_harness(tmp_path, body)


def test_refresh_token_expires_after_seven_days(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        agent = h.agent()
        assert (await agent.enrol(await h.setup_key())).status == 201
        h.clock.now += tokens.REFRESH_LIFETIME
        _refused(await agent.refresh(), 401, "expired")

    with_harness(tmp_path, body)


def test_admin_refusals(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        before = await _state(h)
        _refused(await h.admin("GET", "/api/v1/peers", token="wgat_wrong"), 401, "invalid_token")  # noqa: S106
        async with h.http.get(h.url + "/api/v1/peers") as response:
            assert response.status == 401 and (await response.json())["error"] == "missing_token"
        _refused(await h.admin("POST", "/api/v1/setup-keys", {"name": "k", "colour": 1}), 400, "unknown_field")
        _refused(await h.admin("POST", "/api/v1/setup-keys", {"name": "k", "usage_limit": 3}), 400, "invalid_value")
        _refused(await h.admin("POST", "/api/v1/setup-keys", {"name": "k", "expires_in": True}), 400, "invalid_value")
        _refused(
            await h.admin("POST", "/api/v1/setup-keys", {"name": "k", "auto_groups": ["a b"]}), 400, "invalid_value"
        )
        _refused(await h.admin("POST", "/api/v1/setup-keys", raw=b"{"), 400, "malformed")
        _refused(await h.admin("POST", "/api/v1/setup-keys", raw=b"x" * (65 * 1024)), 413, "too_large")
        _refused(await h.admin("DELETE", "/api/v1/setup-keys/nope"), 404, "not_found")
        _refused(await h.admin("POST", "/api/v1/peers/nope/approve"), 404, "not_found")
        _refused(await h.admin("PATCH", "/api/v1/peers/nope", {"groups": ["a"]}), 404, "not_found")
        _refused(await h.admin("PATCH", "/api/v1/peers/nope", {"owner": "x"}), 400, "unknown_field")
        _refused(await h.admin("GET", "/api/v1/audit?limit=0"), 400, "invalid_value")
        _refused(await h.admin("GET", "/api/v1/audit?bogus=1"), 400, "unknown_field")
        _refused(await h.admin("GET", "/api/v1/nothing"), 404, "not_found")
        _refused(await h.admin("DELETE", "/api/v1/peers"), 405, "method_not_allowed")
        # policy: the error names the line, and the policy in force stays
        good = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"
        assert (await h.admin("PUT", "/api/v1/policy", raw=good)).status == 200
        before = await _state(h)
        bad = (
            b"acls:\n  - name: r\n    src: [a]\n    dst: [b]\n    proto: tcp\n    ports: ['1-x']\n    action: accept\n"
        )
        answer = await h.admin("PUT", "/api/v1/policy", raw=bad)
        _refused(answer, 400, "invalid_policy")
        assert answer.body["detail"].startswith("line 6: ")
        _refused(await h.admin("PUT", "/api/v1/policy", raw=b"acls: []\nusers: []\n"), 400, "invalid_policy")
        _refused(await h.admin("PUT", "/api/v1/policy", raw=b"#" * (MAX_POLICY_SIZE + 1)), 413, "too_large")
        assert await _state(h) == before
        assert (await h.admin("GET", "/api/v1/policy")).text == good.decode()

    with_harness(tmp_path, body)


def test_one_off_key_used_by_twenty_clients_at_once_enrols_exactly_one(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        key = await h.setup_key()
        agents = [h.agent() for _ in range(20)]
        answers = await asyncio.gather(*(agent.enrol(key) for agent in agents))
        statuses = sorted(answer.status for answer in answers)
        assert statuses == [201] + [403] * 19, statuses
        assert {answer.body["error"] for answer in answers if answer.status == 403} == {"used_setup_key"}
        peers = await h.admin("GET", "/api/v1/peers")
        assert len(peers.body) == 1
        keys = await h.admin("GET", "/api/v1/setup-keys")
        assert keys.body[0]["used"] == 1

    with_harness(tmp_path, body)


def test_reusable_key_with_twenty_concurrent_clients_gives_unique_addresses(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        key = await h.setup_key(reusable=True, usage_limit=15)
        answers = await asyncio.gather(*(h.agent().enrol(key) for _ in range(20)))
        created = [answer for answer in answers if answer.status == 201]
        assert len(created) == 15
        addresses = {answer.body["peer"]["address"] for answer in created}
        assert len(addresses) == 15

    with_harness(tmp_path, body)


def test_websocket_refusals(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        agent = h.agent()
        assert (await agent.enrol(await h.setup_key())).status == 201
        # no proof: refused before the upgrade
        try:
            async with h.http.ws_connect(
                h.url + "/api/v1/peer/stream", headers={"Authorization": f"Bearer {agent.access_token}"}
            ):
                raise AssertionError("connected without a proof")
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401
        # an oversized frame closes the stream
        async with agent.stream() as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "map"
            await ws.send_str("x" * 10000)
            message = await ws.receive(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
        # garbage closes the stream too
        async with agent.stream() as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "map"
            await ws.send_str("{nonsense")
            message = await ws.receive(timeout=5)
            assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)

    with_harness(tmp_path, body)
