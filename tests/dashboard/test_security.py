"""The dashboard's security properties, over real HTTP against a real server (no browser needed).

Every page refuses a missing, forged, tampered, logged-out or revoked session; every action refuses those and also
a missing or forged CSRF token and a cross-site request (``Origin``, ``Sec-Fetch-Site``), and changes nothing when
it refuses; the cookie is HttpOnly, SameSite=Strict and Secure on TLS; output is escaped.
"""

from __future__ import annotations

import contextlib
import datetime
import pathlib
import secrets
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
import yarl
from dashboard_helpers import Browser, run
from sqlalchemy import func, select, update
from support.tls import self_signed_certificate

from wgpy.keys import PrivateKey
from wgpy.management.dashboard.session import SESSION_LIFETIME
from wgpy.management.server import RunningServer, free_port, init_state, running_server, serve
from wgpy.management.store import AdminToken, AuditRow, PeerRow

PAGES = [
    "/peers",
    "/peers/table",
    "/setup-keys",
    "/policy",
    "/audit",
    "/network",
    "/events",
    "/peers/{id}",
    "/peers/{id}/revoke",
    "/setup-keys/{key}/revoke",
]
ACTIONS: list[tuple[str, dict[str, str]]] = [
    ("/peers/{id}/approve", {}),
    ("/peers/{id}/update", {"name": "renamed", "groups": "production"}),
    ("/peers/{id}/revoke", {"confirm": "yes"}),
    ("/setup-keys", {"name": "attacker", "kind": "reusable", "usage_limit": "100"}),
    ("/setup-keys/{key}/revoke", {"confirm": "yes"}),
    ("/policy", {"policy": "acls: []\n"}),
    ("/logout", {}),
]


async def _add_peer(server: RunningServer, name: str, address: str = "100.64.0.9") -> str:
    """A peer row written straight to the store (names the API would refuse included: the page must still escape)."""
    peer_id = secrets.token_hex(16)
    async with server.server.transaction() as session:
        session.add(
            PeerRow(
                id=peer_id,
                name=name,
                public_key=PrivateKey.generate().public_key().to_base64(),
                address=address,
                groups=["developers"],
                approved=False,
                revoked=False,
                deleted=False,
                released_at=None,
                ephemeral=False,
                ephemeral_timeout=0,
                setup_key_id=None,
                endpoint_host=None,
                endpoint_port=None,
                created_at=server.server.clock(),
                last_seen=server.server.clock(),
                map_serial=0,
                acked_serial=0,
            )
        )
    return peer_id


@contextlib.asynccontextmanager
async def _world(tmp: pathlib.Path) -> AsyncIterator[tuple[RunningServer, Browser, str, str]]:
    async with running_server(tmp / "server") as server:
        browser = Browser(server)
        try:
            peer_id = await _add_peer(server, "victim")
            status, key = await browser.api("POST", "/api/v1/setup-keys", json={"name": "kept"})
            assert status == 201 and isinstance(key, dict)
            yield server, browser, peer_id, str(key["id"])
        finally:
            await browser.close()


async def _state(server: RunningServer) -> tuple[object, ...]:
    """Everything an action could change: the audit log's length and the peers' rows."""
    async with server.server.sessions() as session:
        audit = (await session.execute(select(func.count(AuditRow.id)))).scalar()
        peers = (await session.execute(select(PeerRow.name, PeerRow.groups, PeerRow.approved, PeerRow.revoked))).all()
    return audit, sorted(map(tuple, peers))


def _fill(path: str, peer_id: str, key_id: str) -> str:
    return path.replace("{id}", peer_id).replace("{key}", key_id)


def test_every_page_refuses_a_missing_or_bad_session(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _world(tmp_path) as (_server, browser, peer_id, key_id):
            await browser.login()
            good = browser.http.cookie_jar.filter_cookies(yarl.URL(browser.url))["wgpy_session"].value
            tampered = good[:-3] + ("A" if good[-3] != "A" else "B") + good[-2:]
            for cookie in (None, "", "garbage", tampered, "A" * 2000):
                async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                    if cookie is not None:
                        http.cookie_jar.update_cookies({"wgpy_session": cookie}, yarl.URL(browser.url))
                    for page in PAGES:
                        async with http.get(
                            browser.url + _fill(page, peer_id, key_id), allow_redirects=False
                        ) as answer:
                            text = await answer.text()
                            assert answer.status in (303, 401), (page, cookie, answer.status)
                            assert "victim" not in text and "kept" not in text
                            if answer.status == 303:
                                assert answer.headers["Location"].startswith("/login?next=")
            # The good session works, for contrast.
            for page in PAGES[:-4]:
                if page == "/events":
                    continue
                status, _text = await browser.get(page)
                assert status == 200, page

    run(scenario)


def test_every_action_refuses_no_session_bad_csrf_and_cross_site(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _world(tmp_path) as (server, browser, peer_id, key_id):
            other = Browser(server)
            await other.login()
            await browser.login()
            anonymous = Browser(server)
            before = await _state(server)
            origin = f"{browser.url}"
            for path, form in ACTIONS:
                target = _fill(path, peer_id, key_id)
                attempts = [
                    (anonymous, other.csrf, {}, 401),  # no session (a CSRF token stolen from another one)
                    (browser, "", {}, 403),  # no CSRF token
                    (browser, "0" * 64, {}, 403),  # a forged one
                    (browser, other.csrf, {}, 403),  # another session's
                    (browser, browser.csrf, {"Origin": "https://evil.example"}, 403),  # cross-site, by Origin
                    (browser, browser.csrf, {"Origin": "null"}, 403),
                    (browser, browser.csrf, {"Sec-Fetch-Site": "cross-site"}, 403),  # by Fetch metadata
                    (browser, browser.csrf, {"Sec-Fetch-Site": "same-site"}, 403),  # a sibling subdomain is no better
                ]
                for client, csrf, headers, expected in attempts:
                    status, text, _headers = await client.post(target, form, csrf=csrf, headers=headers)
                    assert status == expected, (target, csrf[:6], headers, status, text[:200])
                    assert "victim" not in text
                # A JSON body (a cross-site form cannot send one, but neither may a script bypass the form check).
                async with browser.http.post(
                    browser.url + target, json={**form, "csrf": browser.csrf}, allow_redirects=False
                ) as answer:
                    assert answer.status == 415
            assert await _state(server) == before  # nothing changed
            # The same session, same origin and the right token: accepted (the check is not refusing everything).
            status, _text, headers = await browser.post(
                f"/peers/{peer_id}/approve", {}, headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"}
            )
            assert status == 303 and headers["Location"].startswith(f"/peers/{peer_id}")
            await anonymous.close()
            await other.close()

    run(scenario)


def test_login_logout_and_a_revoked_admin_token(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _world(tmp_path) as (server, browser, _peer_id, _key_id):
            answer = await browser.login("wgat_not-a-token")
            assert answer.status == 401 and "wgpy_session" not in answer.cookies
            async with browser.http.post(
                browser.url + "/login",
                data={"token": server.admin_token},
                headers={"Origin": "https://evil.example"},
                allow_redirects=False,
            ) as refused:
                assert refused.status == 403 and "wgpy_session" not in refused.cookies  # no login CSRF
            answer = await browser.login()
            assert answer.status == 303
            cookie = answer.cookies["wgpy_session"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]  # plain HTTP here
            assert cookie["path"] == "/"
            assert server.admin_token not in cookie.value  # the token is sealed, not merely encoded
            # An open redirect through ?next= is refused.
            async with browser.http.post(
                browser.url + "/login",
                data={"token": server.admin_token, "next": "//evil.example/x"},
                allow_redirects=False,
            ) as answer:
                assert answer.headers["Location"] == "/peers"
            await browser.login()  # (that login replaced the session: take the new one's CSRF token)
            stolen = browser.http.cookie_jar.filter_cookies(yarl.URL(browser.url))["wgpy_session"].value
            status, _text, headers = await browser.post("/logout")
            assert status == 303 and headers["Location"] == "/login"
            status, _text = await browser.get("/peers")
            assert status == 303  # the browser's cookie was cleared
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
                http.cookie_jar.update_cookies({"wgpy_session": stolen}, yarl.URL(browser.url))
                async with http.get(browser.url + "/peers", allow_redirects=False) as replay:
                    assert replay.status == 303  # and a copy of it is dead too
            # Revoking the admin token ends its sessions at once.
            await browser.login()
            async with server.server.transaction() as session:
                await session.execute(update(AdminToken).values(revoked=True))
            status, _text = await browser.get("/peers")
            assert status == 303
            status, _text, _headers = await browser.post("/setup-keys", {"name": "late"})
            assert status == 401

    run(scenario)


def test_sessions_expire(tmp_path: pathlib.Path) -> None:
    offset = [0.0]

    def clock() -> float:
        return datetime.datetime.now(datetime.UTC).timestamp() + offset[0]

    async def scenario() -> None:
        async with running_server(tmp_path / "server", clock=clock) as server:
            browser = Browser(server)
            await browser.login()
            assert (await browser.get("/peers"))[0] == 200
            offset[0] = SESSION_LIFETIME + 1
            assert (await browser.get("/peers"))[0] == 303
            await browser.close()

    run(scenario)


def test_output_is_escaped_and_pages_carry_security_headers(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with _world(tmp_path) as (server, browser, _peer_id, _key_id):
            evil = '<script>alert("x")</script>'
            evil_id = await _add_peer(server, evil, "100.64.0.10")
            policy = "# </textarea><script>alert(1)</script>\nacls: []\n"
            status, _body = await browser.api("PUT", "/api/v1/policy", yaml=policy)
            assert status == 200
            await browser.login()
            for page in (
                "/peers",
                "/peers/table",
                f"/peers/{evil_id}",
                f"/peers/{evil_id}/revoke",
                "/audit",
                "/policy",
            ):
                status, text = await browser.get(page)
                assert status == 200, page
                assert "<script>alert" not in text, page
            status, text = await browser.get("/peers")
            assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text
            status, text = await browser.get("/policy")
            assert "&lt;/textarea&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in text
            # A search for it is echoed escaped too, and a policy error naming it as well.
            status, text = await browser.get("/peers?q=" + aiohttp.helpers.quote(evil, safe=""))  # type: ignore[attr-defined]
            assert status == 200 and "<script>alert" not in text
            status, text, _headers = await browser.post(
                "/policy", {"policy": f"acls:\n  - name: x\n    src: ['{evil}']\n"}
            )
            assert status == 400 and "<script>alert" not in text
            async with browser.http.get(browser.url + "/peers") as answer:
                csp = answer.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
                assert answer.headers["X-Frame-Options"] == "DENY"
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
                assert answer.headers["Cache-Control"] == "no-store"

    run(scenario)


def test_the_cookie_is_secure_on_tls(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        import asyncio

        _keys, token = await init_state(tmp_path / "server")
        cert, key = self_signed_certificate(tmp_path)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        port = free_port()
        task = asyncio.create_task(
            serve(tmp_path / "server", None, "127.0.0.1", port, tls_cert=cert, tls_key=key, ready=ready.set_result)
        )
        try:
            url = await asyncio.wait_for(ready, 10)
            context = ssl.create_default_context(cafile=str(cert))
            context.check_hostname = False
            async with (
                aiohttp.ClientSession() as http,
                http.post(url + "/login", data={"token": token}, ssl=context, allow_redirects=False) as answer,
            ):
                assert answer.status == 303
                cookie = answer.cookies["wgpy_session"]
                assert cookie["secure"] and cookie["httponly"] and cookie["samesite"] == "Strict"
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run(scenario)


@pytest.mark.parametrize("path", ["/static/dashboard.css", "/static/dashboard.js"])
def test_static_files_need_no_session_and_hold_no_data(tmp_path: pathlib.Path, path: str) -> None:
    async def scenario() -> None:
        async with running_server(tmp_path / "server") as server, aiohttp.ClientSession() as http:
            async with http.get(server.url + path) as answer:
                assert answer.status == 200
                assert answer.headers["X-Content-Type-Options"] == "nosniff"
            async with http.get(server.url + "/static/../api.py") as answer:
                assert answer.status == 404

    run(scenario)
