"""The management API end to end over real sockets on 127.0.0.1: enrolment, tokens, maps, push, revocation,
and every bad input refused with a clear error and no change."""

from __future__ import annotations

import asyncio
import pathlib

import pytest
from management_helpers import Harness, next_message, with_harness

from wgpy import crypto
from wgpy.mesh import load_management_public_key, verify_and_parse
from wgpy.mesh.revocation import RevocationRejected, verify_revocation

POLICY = """\
groups: [developers, production]
acls:
  - name: allow-dev-to-prod
    src: ["developers"]
    dst: ["production"]
    proto: tcp
    ports: ["22", "443", "8000-8100"]
    action: accept
  - name: deny-all-other
    src: ["*"]
    dst: ["*"]
    action: deny
"""


def _verify(h: Harness, document: object) -> crypto.Ed25519PublicKey:
    return load_management_public_key(h.running.signing_key_b64)


def test_enrol_and_map(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        assert (await h.admin("PUT", "/api/v1/policy", raw=POLICY.encode(), content_type="application/yaml")).body == {
            "rules": 2
        }
        dev_key = await h.setup_key(auto_groups=["developers"])
        prod_key = await h.setup_key(auto_groups=["production"])
        dev, prod = h.agent(), h.agent()
        first = await dev.enrol(dev_key, name="laptop")
        assert first.status == 201, first.text
        assert first.body["peer"]["address"] == "100.64.0.1"
        second = await prod.enrol(prod_key, endpoint={"host": "203.0.113.42", "port": 51820})
        assert second.status == 201, second.text
        key = load_management_public_key(h.running.signing_key_b64)
        netmap = verify_and_parse(second.body["map"], key, h.clock())
        assert {p.public_key.to_base64() for p in netmap.peers} == {dev.public_key, prod.public_key}
        answer = await dev.call("GET", "/api/v1/peer/map")
        assert answer.status == 200, answer.text
        netmap = verify_and_parse(answer.body, key, h.clock())
        assert netmap.peer(prod.private.public_key()) is not None
        assert netmap.peer(prod.private.public_key()).endpoint == ("203.0.113.42", 51820)  # type: ignore[union-attr]
        info = await h.http.get(h.url + "/api/v1/info")
        assert (await info.json())["network"] == "100.64.0.0/16"

    with_harness(tmp_path, body)


def test_stream_push_and_revocation(tmp_path: pathlib.Path) -> None:
    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n")
        key = await h.setup_key(reusable=True, usage_limit=10)
        a, b, c = h.agent(), h.agent(), h.agent()
        for agent in (a, b):
            assert (await agent.enrol(key)).status == 201
        async with a.stream() as ws_a, b.stream() as ws_b:
            first = await next_message(ws_a)
            assert first["type"] == "map"
            await ws_a.send_json({"type": "ack", "serial": first["serial"]})
            assert (await next_message(ws_b))["type"] == "map"
            await ws_a.send_json({"type": "ping"})
            assert (await next_message(ws_a)) == {"type": "pong"}
            # a third peer joins: both get a map listing it
            assert (await c.enrol(key)).status == 201
            pushed = await next_message(ws_a)
            assert pushed["type"] == "map" and pushed["serial"] > first["serial"]
            assert len(pushed["document"]["map"]["peers"]) == 3
            assert len((await next_message(ws_b))["document"]["map"]["peers"]) == 3
            # revoke b: b gets "revoked" + 4001, a gets a map without b within 1 s
            loop = asyncio.get_running_loop()
            started = loop.time()
            answer = await h.admin("POST", f"/api/v1/peers/{b.peer_id}/revoke")
            assert answer.status == 200 and answer.body["revoked"] is True
            without_b = await next_message(ws_a, timeout=5)
            elapsed = loop.time() - started
            keys = {p["public_key"] for p in without_b["document"]["map"]["peers"]}
            assert keys == {a.public_key, c.public_key}
            assert elapsed < 1.0, elapsed
            frame = await next_message(ws_b)
            assert set(frame) == {"type", "notice"} and frame["type"] == "revoked"
            closed = await next_message(ws_b)
            assert closed["code"] == 4001
        # b's tokens are dead at once, and each refusal carries the signed notice b's agent acts on
        signing = load_management_public_key(h.running.signing_key_b64)
        assert b.peer_id is not None and a.peer_id is not None
        notices = [frame["notice"]]
        for answer in (await b.call("GET", "/api/v1/peer/map"), await b.refresh()):
            assert answer.status == 403 and answer.body["error"] == "revoked"
            notices.append(answer.body["notice"])
        for notice in notices:
            verified = verify_revocation(notice, (signing,), peer_id=b.peer_id, public_key=b.public_key)
            assert verified.reason == "revoked"
            with pytest.raises(RevocationRejected, match="another peer"):
                verify_revocation(notice, (signing,), peer_id=a.peer_id, public_key=a.public_key)

    with_harness(tmp_path, body)
