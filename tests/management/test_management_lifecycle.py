"""Peer lifecycle through the API: approval, group and endpoint changes pushed only to the peers they concern,
logout and revocation with address quarantine, ephemeral peers, map re-issue before expiry, serials that increase
strictly across reconnects and restarts, and an audit trail (rows and log lines) free of secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib

import aiohttp
from management_helpers import Harness, next_message, with_harness
from sqlalchemy import select, update

from wgpy.management import store
from wgpy.management.api import ManagementServer
from wgpy.management.enrolment import ADDRESS_QUARANTINE
from wgpy.management.push import MAP_LIFETIME, MAP_REISSUE

DEV_TO_PROD = b"""\
acls:
  - name: dev-to-prod
    src: [developers]
    dst: [production]
    proto: tcp
    ports: ["22"]
    action: accept
"""
ALL = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"


async def _quiet(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.3) -> bool:
    """Whether nothing arrives on ``ws`` for ``seconds``."""
    try:
        await ws.receive(seconds)
    except TimeoutError:
        return True
    return False


def _keys(message: dict[str, object]) -> set[str]:
    document = message["document"]
    assert isinstance(document, dict)
    return {peer["public_key"] for peer in document["map"]["peers"]}


def test_approval_flow(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        a, pending = h.agent(), h.agent()
        assert (await a.enrol(await h.setup_key())).status == 201
        answer = await pending.enrol(await h.setup_key(approval_required=True))
        assert answer.status == 201 and answer.body["map"] is None and answer.body["peer"]["approved"] is False
        got = await pending.call("GET", "/api/v1/peer/map")
        assert got.status == 409 and got.body["error"] == "pending_approval"
        async with a.stream() as ws_a, pending.stream() as ws_p:
            assert _keys(await next_message(ws_a)) == {a.public_key}
            assert await _quiet(ws_p)  # nothing while pending
            approved = await h.admin("POST", f"/api/v1/peers/{pending.peer_id}/approve")
            assert approved.status == 200 and approved.body["approved"] is True and approved.body["online"] is True
            assert _keys(await next_message(ws_p)) == {a.public_key, pending.public_key}
            assert _keys(await next_message(ws_a)) == {a.public_key, pending.public_key}

    with_harness(tmp_path, body)


def test_changes_reach_only_the_peers_they_concern(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=DEV_TO_PROD)
        dev, prod, other = h.agent(), h.agent(), h.agent()
        assert (await dev.enrol(await h.setup_key(auto_groups=["developers"]))).status == 201
        assert (await prod.enrol(await h.setup_key(auto_groups=["production"]))).status == 201
        assert (await other.enrol(await h.setup_key())).status == 201
        async with dev.stream() as ws_dev, prod.stream() as ws_prod, other.stream() as ws_other:
            assert _keys(await next_message(ws_dev)) == {dev.public_key, prod.public_key}
            assert _keys(await next_message(ws_prod)) == {dev.public_key, prod.public_key}
            assert _keys(await next_message(ws_other)) == {other.public_key}
            # other becomes a production server: dev and other get new maps, prod's view does not change
            answer = await h.admin("PATCH", f"/api/v1/peers/{other.peer_id}", {"groups": ["production"]})
            assert answer.status == 200 and answer.body["groups"] == ["production"]
            assert _keys(await next_message(ws_dev)) == {dev.public_key, prod.public_key, other.public_key}
            assert _keys(await next_message(ws_other)) == {dev.public_key, other.public_key}
            assert await _quiet(ws_prod)
            # prod reports an endpoint: dev (which may reach it) gets it, other does not hear of it
            assert (
                await prod.call("POST", "/api/v1/peer/endpoint", {"host": "198.51.100.7", "port": 51820})
            ).status == 204
            message = await next_message(ws_dev)
            entry = next(p for p in message["document"]["map"]["peers"] if p["public_key"] == prod.public_key)
            assert entry["endpoint"] == {"host": "198.51.100.7", "port": 51820}
            own = await next_message(ws_prod)  # its own entry in its own map changed too
            assert any(p["endpoint"] for p in own["document"]["map"]["peers"])
            assert await _quiet(ws_other)
            # a policy change reaches everyone whose view changes
            await h.admin("PUT", "/api/v1/policy", raw=ALL)
            assert len(_keys(await next_message(ws_prod))) == 3
            assert len(_keys(await next_message(ws_other))) == 3

    with_harness(tmp_path, body)


def test_logout_and_revocation_quarantine_the_address(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        key = await h.setup_key(reusable=True, usage_limit=100, expires_in=30 * 86400)
        a, b, c = h.agent(), h.agent(), h.agent()
        for agent in (a, b, c):
            assert (await agent.enrol(key)).status == 201
        async with a.stream() as ws_a:
            assert len(_keys(await next_message(ws_a))) == 3
            assert (await b.call("POST", "/api/v1/peer/logout")).status == 204
            assert _keys(await next_message(ws_a)) == {a.public_key, c.public_key}
            revoked = await h.admin("POST", f"/api/v1/peers/{c.peer_id}/revoke")
            assert revoked.body["revoked"] is True
            assert _keys(await next_message(ws_a)) == {a.public_key}
        assert (await b.call("GET", "/api/v1/peer/map")).body["error"] == "unknown_peer"
        # b's and c's addresses (.2, .3) are quarantined: the next peer gets .4
        d = h.agent()
        assert (await d.enrol(key)).body["peer"]["address"] == "100.64.0.4"
        # a revoked key cannot come back with another setup key; a logged-out one can
        assert (await c.enrol(key)).body["error"] == "revoked"
        h.clock.now += ADDRESS_QUARANTINE + 1
        again = await b.enrol(key)
        assert again.status == 201 and again.body["peer"]["address"] == "100.64.0.2"
        e = h.agent()
        assert (await e.enrol(key)).body["peer"]["address"] == "100.64.0.3"
        listed = await h.admin("GET", "/api/v1/peers")
        assert sorted(p["address"] for p in listed.body if not p["revoked"]) == [
            "100.64.0.1",
            "100.64.0.2",
            "100.64.0.3",
            "100.64.0.4",
        ]

    with_harness(tmp_path, body)


def test_ephemeral_peer_is_deleted_once_offline_past_its_timeout(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        a, eph = h.agent(), h.agent()
        assert (await a.enrol(await h.setup_key())).status == 201
        answer = await eph.enrol(await h.setup_key(ephemeral=True, ephemeral_timeout=60))
        assert answer.body["peer"]["ephemeral"] is True
        async with a.stream() as ws_a:
            assert len(_keys(await next_message(ws_a))) == 2
            h.clock.now += 30
            await h.running.server.sweep()
            assert await _quiet(ws_a, 0.2)
            h.clock.now += 31
            await h.running.server.sweep()
            assert _keys(await next_message(ws_a)) == {a.public_key}
        events = await h.admin("GET", "/api/v1/audit?kind=peer_expired")
        assert [event["peer"] for event in events.body] == [eph.peer_id]

    with_harness(tmp_path, body)


def test_maps_are_reissued_before_expiry_and_serials_always_increase(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        a = h.agent()
        assert (await a.enrol(await h.setup_key())).status == 201
        serials: list[int] = []
        async with a.stream() as ws:
            first = await next_message(ws)
            serials.append(first["serial"])
            assert first["document"]["map"]["expires_at"] - first["document"]["map"]["issued_at"] == MAP_LIFETIME
            h.clock.now += MAP_LIFETIME - MAP_REISSUE - 10
            await h.running.server.hub.recompute()
            assert await _quiet(ws, 0.2)
            h.clock.now += 11
            await h.running.server.hub.recompute()
            fresh = await next_message(ws)
            serials.append(fresh["serial"])
            assert fresh["document"]["map"]["issued_at"] == int(h.clock.now)
        async with a.stream() as ws:  # a reconnect always gets the current map, with a new serial
            serials.append((await next_message(ws))["serial"])
        serials.append(int((await a.call("GET", "/api/v1/peer/map")).body["map"]["serial"]))
        # a second server process on the same database continues the serials
        engine = store.create_engine(h.running.db_url)
        try:
            other = ManagementServer(store.sessionmaker(engine), h.running.keys, clock=h.clock)
            issued = await other.maps.current(str(a.peer_id))
            assert issued is not None
            serials.append(issued.serial)
        finally:
            await engine.dispose()
        assert serials == sorted(set(serials)), serials

    with_harness(tmp_path, body)


def test_acks_are_recorded(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        a = h.agent()
        assert (await a.enrol(await h.setup_key())).status == 201
        async with a.stream() as ws:
            first = await next_message(ws)
            await ws.send_json({"type": "ack", "serial": first["serial"]})
            await ws.send_json({"type": "ack", "serial": first["serial"] + 100})  # not sent yet: ignored
            await ws.send_json({"type": "ping"})
            assert await next_message(ws) == {"type": "pong"}
        for _ in range(100):
            async with h.running.server.sessions() as session:
                row = await session.get(store.PeerRow, a.peer_id)
            assert row is not None
            if row.acked_serial:
                break
            await asyncio.sleep(0.02)
        assert row is not None and row.acked_serial == first["serial"]

    with_harness(tmp_path, body)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.exc_info:
            self.lines.append(logging.Formatter().formatException(record.exc_info))


def test_audit_rows_and_log_lines_hold_no_secret(tmp_path: pathlib.Path) -> None:
    capture = _Capture()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(capture)
    root.setLevel(logging.INFO)  # every logger's INFO and up (aiohttp's, SQLAlchemy's), and wgpy's DEBUG
    logging.getLogger("wgpy").setLevel(logging.DEBUG)

    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        key = await h.setup_key(reusable=True, usage_limit=5)
        a, b = h.agent(), h.agent()
        assert (await a.enrol(key, name="laptop")).status == 201
        assert (await b.enrol(await h.setup_key(approval_required=True))).status == 201
        async with a.stream() as ws:
            await next_message(ws)
            await h.admin("POST", f"/api/v1/peers/{b.peer_id}/approve")
            await next_message(ws)
            await h.admin("PATCH", f"/api/v1/peers/{b.peer_id}", {"name": "server", "groups": ["production"]})
            assert (await a.call("POST", "/api/v1/peer/endpoint", {"host": "192.0.2.1", "port": 1})).status == 204
        old = a.refresh_token
        assert (await a.refresh()).status == 200
        retry = a.refresh_token
        assert (await a.refresh(old)).status == 200  # its answer "lost": asked again (refresh_retry)
        assert (await a.refresh()).status == 200
        assert (await a.refresh(retry)).status == 401  # the pair nobody received, presented late: reuse
        await a.enrol("wgsk_wrong")
        await h.admin("POST", f"/api/v1/peers/{b.peer_id}/revoke")
        assert (await b.call("POST", "/api/v1/peer/logout")).status == 403
        await h.admin("GET", "/api/v1/audit")
        async with h.running.server.sessions() as session:
            rows = (await session.execute(select(store.AuditRow))).scalars().all()
        kinds = {row.kind for row in rows}
        assert {
            "enrol",
            "refresh",
            "refresh_retry",
            "token_reuse",
            "peer_approved",
            "peer_revoked",
            "policy_set",
            "map_push",
            "setup_key_created",
            "peer_updated",
            "peer_endpoint",
            "admin_token_created",
        } <= kinds
        texts = [json.dumps([row.kind, row.actor, row.peer, row.detail]) for row in rows] + capture.lines
        audit_lines = [line for line in capture.lines if line.startswith("{")]
        assert len(audit_lines) == len(rows)  # one JSON line per row
        assert h.secrets and len(h.secrets) > 15
        for secret in h.secrets:
            for text in texts:
                assert secret not in text, (secret[:6], text[:80])

    try:
        with_harness(tmp_path, body)
    finally:
        root.removeHandler(capture)
        root.setLevel(old_level)
        logging.getLogger("wgpy").setLevel(logging.NOTSET)


def test_a_revocation_without_notification_closes_the_stream_on_the_next_round(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        a = h.agent()
        assert (await a.enrol(await h.setup_key())).status == 201
        async with a.stream() as ws:
            assert (await next_message(ws))["type"] == "map"
            # another replica revokes it: the row changes, no notify reaches this process
            async with h.running.server.transaction() as session:
                await session.execute(update(store.PeerRow).where(store.PeerRow.id == a.peer_id).values(revoked=True))
            await h.running.server.hub.recompute()
            assert await next_message(ws) == {"type": "revoked"}
            assert (await next_message(ws))["code"] == 4001

    with_harness(tmp_path, body)
