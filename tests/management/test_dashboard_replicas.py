"""The dashboard across replicas (issue #16): a session logged out or expired through one replica is refused by
every replica (the ``dashboard_sessions`` table, migration 0003), on PostgreSQL and on one shared SQLite file;
on PostgreSQL the live peers feed of one replica hears of a change made through another (the hub's change hook
fed by LISTEN/NOTIFY), with no polling."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator

import aiohttp
import yarl
from management_helpers import Clock
from postgres_helpers import postgres_url, reset
from replica_helpers import replicas
from sqlalchemy import func, select
from support.management_fixtures import Browser

from wgpy.management.dashboard.app import COOKIE_NAME
from wgpy.management.dashboard.session import SESSION_LIFETIME
from wgpy.management.server import RunningServer, running_replica, running_server
from wgpy.management.store import DashboardSessionRow

__all__ = ["postgres_url"]  # the fixture, imported for pytest


@contextlib.asynccontextmanager
async def _sqlite_pair(tmp_path: pathlib.Path, clock: Clock) -> AsyncIterator[tuple[RunningServer, RunningServer]]:
    state = tmp_path / "state"
    async with running_server(state, clock=clock) as first:
        async with running_replica(state, db_url=first.db_url, admin_token=first.admin_token, clock=clock) as second:
            yield first, second


def _cookie(browser: Browser) -> str:
    return browser.http.cookie_jar.filter_cookies(yarl.URL(browser.url))[COOKIE_NAME].value


async def _status(server: RunningServer, cookie: str) -> int:
    """GET /peers on ``server`` with the session cookie ``cookie`` (a fresh client: only that cookie)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        http.cookie_jar.update_cookies({COOKIE_NAME: cookie}, yarl.URL(server.url))
        async with http.get(server.url + "/peers", allow_redirects=False) as answer:
            return answer.status


async def _session_walk(a: RunningServer, b: RunningServer, clock: Clock) -> None:
    browser = Browser(a)
    try:
        assert (await browser.login()).status == 303
        cookie = _cookie(browser)
        assert await _status(b, cookie) == 200  # one login serves every replica
        status, _text, _headers = await browser.post("/logout")
        assert status == 303
        assert await _status(a, cookie) == 303
        assert await _status(b, cookie) == 303  # logged out through a: refused by b too

        assert (await browser.login()).status == 303
        cookie = _cookie(browser)
        assert await _status(b, cookie) == 200
        clock.now += SESSION_LIFETIME
        assert await _status(a, cookie) == 303 and await _status(b, cookie) == 303  # expired everywhere
        # The sweep forgets expired rows (both sessions: the logged-out one and the expired one).
        assert b.server.dashboard is not None
        await b.server.dashboard.sweep()
        async with a.server.readers() as db:
            assert (await db.execute(select(func.count()).select_from(DashboardSessionRow))).scalar() == 0
    finally:
        await browser.close()


def test_a_logout_through_one_replica_is_refused_by_the_other_on_sqlite(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        clock = Clock()
        async with _sqlite_pair(tmp_path, clock) as (a, b):
            await _session_walk(a, b, clock)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_logout_through_one_replica_is_refused_by_the_other_on_postgres(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            await _session_walk(a.running, b.running, a.clock)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_live_feed_of_one_replica_hears_of_changes_made_through_another(
    postgres_url: str, tmp_path: pathlib.Path
) -> None:
    reset(postgres_url)

    async def main() -> None:
        async with replicas(tmp_path, postgres_url) as (a, b):
            browser = Browser(a.running)
            try:
                assert (await browser.login()).status == 303
                async with browser.http.get(browser.url + "/events") as stream:
                    assert await stream.content.readline() == b"retry: 2000\n"

                    async def next_event() -> bytes:
                        while True:
                            line = await stream.content.readline()
                            if not line or line.startswith(b"event: "):
                                return line

                    peer = b.agent()
                    assert (await peer.enrol(await b.setup_key(), name="far")).status == 201  # through b
                    assert await asyncio.wait_for(next_event(), 5) == b"event: peers\n"
                    assert (await b.admin("POST", f"/api/v1/peers/{peer.peer_id}/revoke")).status == 200
                    assert await asyncio.wait_for(next_event(), 5) == b"event: peers\n"
            finally:
                await browser.close()

    asyncio.run(asyncio.wait_for(main(), 60))
