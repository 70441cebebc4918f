"""The dashboard's actions over HTTP (no browser): each one is the API's action, audited as the admin, and each
refusal of the API shows on the page. The browser walk (``test_browser.py``) covers the same pages in Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import re
from collections.abc import AsyncIterator

from dashboard_helpers import POLICY, Browser, enrol_agent, run, wait_for

from wgpy.drivers.clock import monotonic_now
from wgpy.management.server import RunningServer, running_server


@contextlib.asynccontextmanager
async def _logged_in(tmp: pathlib.Path) -> AsyncIterator[tuple[RunningServer, Browser]]:
    async with running_server(tmp / "server") as server:
        browser = Browser(server)
        try:
            assert (await browser.login()).status == 303
            yield server, browser
        finally:
            await browser.close()


async def _audit(browser: Browser, **query: str) -> list[dict[str, object]]:
    status, events = await browser.api("GET", "/api/v1/audit?" + "&".join(f"{k}={v}" for k, v in query.items()))
    assert status == 200 and isinstance(events, list)
    return events


def test_setup_keys_are_created_with_every_option_shown_once_and_revoked(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _logged_in(tmp_path) as (_server, browser):
            form = {
                "name": "ci-runners",
                "kind": "reusable",
                "usage_limit": "25",
                "expires_in": str(7 * 86400),
                "groups": "ci, production,ci",
                "approval_required": "on",
                "ephemeral": "on",
                "ephemeral_timeout": "120",
            }
            status, _text, headers = await browser.post("/setup-keys", form)
            assert status == 303 and headers["Location"] == "/setup-keys"
            status, text = await browser.get("/setup-keys")
            match = re.search(r'id="created-key" class="key" readonly value="(wgsk_[A-Za-z0-9_-]+)"', text)
            assert status == 200 and match is not None
            key = match.group(1)
            status, again = await browser.get("/setup-keys")
            assert key not in again  # shown once
            status, listed = await browser.api("GET", "/api/v1/setup-keys")
            assert isinstance(listed, list) and len(listed) == 1
            info = listed[0]
            assert (
                info["reusable"] is True and info["usage_limit"] == 25 and info["auto_groups"] == ["ci", "production"]
            )
            assert info["approval_required"] is True and info["ephemeral"] is True and info["ephemeral_timeout"] == 120
            created = (await _audit(browser, kind="setup_key_created"))[0]
            assert str(created["actor"]).startswith("admin:")  # the API's own actor, as if through the API

            # A refusal of the API shows on the form, which keeps what was typed.
            status, text, _headers = await browser.post("/setup-keys", {**form, "name": "bad name!"})
            assert status == 400 and "name must be 1-64 characters" in text and 'value="bad name!"' in text
            status, text, _headers = await browser.post("/setup-keys", {**form, "usage_limit": "many"})
            assert status == 400 and "usage_limit must be a whole number" in text

            # Revoke: a confirmation page, then the action.
            key_id = str(info["id"])
            status, text = await browser.get(f"/setup-keys/{key_id}/revoke")
            assert status == 200 and "Yes, revoke ci-runners" in text
            status, _text, headers = await browser.post(f"/setup-keys/{key_id}/revoke", {})  # not confirmed
            assert status == 303 and headers["Location"].endswith("/revoke")
            status, _text, headers = await browser.post(f"/setup-keys/{key_id}/revoke", {"confirm": "yes"})
            assert status == 303
            status, listed = await browser.api("GET", "/api/v1/setup-keys")
            assert isinstance(listed, list) and listed[0]["revoked"] is True
            assert (await browser.get("/setup-keys/nope/revoke"))[0] == 404

    run(scenario)


def test_peer_actions_are_the_apis(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _logged_in(tmp_path) as (server, browser):
            assert (await browser.api("PUT", "/api/v1/policy", yaml=POLICY))[0] == 200
            status, key = await browser.api(
                "POST",
                "/api/v1/setup-keys",
                json={"name": "k", "auto_groups": ["developers"], "approval_required": True},
            )
            assert status == 201 and isinstance(key, dict)
            agent = await enrol_agent(server, tmp_path, "laptop", str(key["key"]))
            try:
                peer = agent.peer_id
                await wait_for(lambda: server.server.hub.online(peer))
                status, text = await browser.get("/peers/table")
                assert status == 200 and 'data-name="laptop"' in text and "pending" in text
                status, _text, headers = await browser.post(f"/peers/{peer}/approve")
                assert status == 303 and headers["Location"] == f"/peers/{peer}?done=approved"
                status, _text, _headers = await browser.post(
                    f"/peers/{peer}/update", {"name": "laptop-1", "groups": "guests,developers"}
                )
                assert status == 303
                status, answer = await browser.api("GET", "/api/v1/peers")
                assert isinstance(answer, list)
                assert answer[0]["name"] == "laptop-1" and answer[0]["groups"] == ["developers", "guests"]
                assert answer[0]["approved"] is True
                # The API's validation, shown on the page.
                status, text, _headers = await browser.post(f"/peers/{peer}/update", {"name": "no spaces"})
                assert status == 400 and "name must be 1-64 characters" in text
                status, text, _headers = await browser.post("/peers/nope/approve")
                assert status == 404 and "no such peer" in text
                # Revoke needs the confirmation.
                status, _text, headers = await browser.post(f"/peers/{peer}/revoke")
                assert status == 303 and headers["Location"] == f"/peers/{peer}/revoke"
                status, _text, _headers = await browser.post(f"/peers/{peer}/revoke", {"confirm": "yes"})
                assert status == 303
                await wait_for(lambda: not agent.runner.connected)
                status, text = await browser.get(f"/peers/{peer}")
                assert 'id="peer-approval">revoked' in text and "Revoke this peer" not in text
                kinds = [event["kind"] for event in await _audit(browser, peer=peer)]
                for kind in ("peer_revoked", "peer_updated", "peer_approved", "enrol"):
                    assert kind in kinds
                actors = {event["actor"] for event in await _audit(browser, peer=peer) if event["kind"] != "enrol"}
                assert {actor for actor in actors if str(actor).startswith("admin:")}
            finally:
                agent.runner.stop()
                await agent.runner.close()

    run(scenario)


def test_policy_errors_point_at_their_line(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _logged_in(tmp_path) as (_server, browser):
            bad = POLICY.replace("action: accept", "action: allow")
            status, text, _headers = await browser.post("/policy", {"policy": bad.replace("\n", "\r\n")})
            assert status == 400
            assert "line 8: " in text and '<li value="8" class="bad" aria-current="true">' in text
            assert "action: allow" in text  # the textarea keeps what was sent
            async with browser.http.get(
                browser.url + "/api/v1/policy", headers={"Authorization": f"Bearer {browser.server.admin_token}"}
            ) as answer:
                assert await answer.text() == "acls: []\n"  # nothing changed
            status, _text, _headers = await browser.post("/policy", {"policy": POLICY})
            assert status == 303
            status, text = await browser.get("/policy")
            assert "dev-to-prod" in text and "22, 443" in text and "deny-rest" in text

    run(scenario)


def test_the_audit_log_filters_and_pages(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _logged_in(tmp_path) as (_server, browser):
            for index in range(60):
                assert (await browser.api("POST", "/api/v1/setup-keys", json={"name": f"key-{index}"}))[0] == 201
            status, text = await browser.get("/audit?kind=setup_key_created")
            assert status == 200
            names = re.findall(r"&#34;name&#34;: &#34;(key-\d+)&#34;", text)
            assert names == [f"key-{index}" for index in range(59, 9, -1)]  # newest first, 50 a page
            older = re.search(r'href="(/audit\?[^"]+)" rel="next"', text)
            assert older is not None
            status, text = await browser.get(older.group(1).replace("&amp;", "&"))
            names = re.findall(r"&#34;name&#34;: &#34;(key-\d+)&#34;", text)
            assert names == [f"key-{index}" for index in range(9, -1, -1)]
            assert 'rel="next"' not in text
            status, text = await browser.get("/audit?since=2999-01-01T00:00")
            assert status == 200 and "No events." in text
            status, text = await browser.get("/audit?since=yesterday")
            assert status == 400 and "not a date and time" in text
            status, text = await browser.get("/audit?kind=peer_revoked")
            assert "No events." in text

    run(scenario)


def test_the_event_stream_says_when_peers_change(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _logged_in(tmp_path) as (server, browser):
            async with browser.http.get(browser.url + "/events") as stream:
                assert stream.status == 200 and stream.headers["Content-Type"] == "text/event-stream"
                assert await stream.content.readline() == b"retry: 2000\n"

                async def next_event() -> bytes:
                    while True:
                        line = await stream.content.readline()
                        if line.startswith(b"event: "):
                            return line

                status, key = await browser.api("POST", "/api/v1/setup-keys", json={"name": "k"})
                assert status == 201 and isinstance(key, dict)  # (a setup key changes no peer: no event)
                agent = await enrol_agent(server, tmp_path, "laptop", str(key["key"]))
                try:
                    assert await asyncio.wait_for(next_event(), 5) == b"event: peers\n"  # enrolled, online
                    status, _answer = await browser.api("POST", f"/api/v1/peers/{agent.peer_id}/revoke")
                    assert status == 200
                    assert await asyncio.wait_for(next_event(), 5) == b"event: peers\n"  # revoked, offline
                finally:
                    agent.runner.stop()
                    await agent.runner.close()
                # Logging out ends the stream.
                assert (await browser.post("/logout"))[0] == 303
                assert await asyncio.wait_for(stream.content.read(), 10) is not None

    run(scenario)


def test_the_peers_page_shows_the_path_each_agent_reports(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _logged_in(tmp_path) as (server, browser):
            assert (await browser.api("PUT", "/api/v1/policy", yaml=POLICY))[0] == 200
            agents = []
            try:
                for name, group in (("prod", "production"), ("laptop", "developers")):
                    status, key = await browser.api(
                        "POST", "/api/v1/setup-keys", json={"name": name, "auto_groups": [group]}
                    )
                    assert status == 201 and isinstance(key, dict)
                    agents.append(await enrol_agent(server, tmp_path, name, str(key["key"])))
                prod, laptop = agents
                prod_public = prod.runner.device.public_key
                assert prod_public is not None
                await wait_for(
                    lambda: (p := laptop.runner.device.peer(prod_public)) is not None and p.endpoint is not None
                )
                # Hole punching (an initiation to each candidate the server forwarded) may have started the handshake
                # already; the laptop's WireGuard starts one in any case (the engine's own entry point, as a first
                # packet would). Both agents then report the path, no relay being configured.
                peer = laptop.runner.device.peer(prod_public)
                assert peer is not None
                laptop.runner.device.expired_new_handshake(peer, monotonic_now())
                laptop.runner.tunnel.flush()

                async def paths() -> list[str]:
                    _status, listed = await browser.api("GET", "/api/v1/peers")
                    assert isinstance(listed, list)
                    return sorted(str(p["path"]) for p in listed)

                for _ in range(100):  # bounded: agents report every 2 s
                    if await paths() == ["direct", "direct"]:
                        break
                    await asyncio.sleep(0.1)
                assert await paths() == ["direct", "direct"]
                status, text = await browser.get("/peers/table")
                assert '<span class="path-direct" title="direct to prod">direct</span>' in text
                assert '<span class="path-direct" title="direct to laptop">direct</span>' in text
                status, text = await browser.get(f"/peers/{laptop.peer_id}")
                assert 'id="peer-path">direct <span class="muted">(direct to prod)</span>' in text
            finally:
                for agent in agents:
                    agent.runner.stop()
                    await agent.runner.close()

    run(scenario)
