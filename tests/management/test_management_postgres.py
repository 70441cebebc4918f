"""The same store on PostgreSQL (asyncpg): migrations build exactly the models, a one-off key used by 20 clients at
once enrols one, and a revocation reaches the other peers. Skipped unless ``initdb``/``pg_ctl`` are installed (a
throwaway cluster on a Unix socket is started for the module; as root it runs as the ``postgres`` user)."""

from __future__ import annotations

import asyncio
import pathlib

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from management_helpers import Harness, next_message, with_harness
from postgres_helpers import postgres_url, reset
from sqlalchemy import Connection

from wgpy.management import store

__all__ = ["postgres_url"]  # the fixture, imported for pytest


def test_postgres_migrations_create_exactly_the_models(postgres_url: str) -> None:
    reset(postgres_url)

    async def run() -> list[object]:
        engine = store.create_engine(postgres_url)
        try:
            await store.upgrade(engine)

            def diff(connection: Connection) -> list[object]:
                context = MigrationContext.configure(connection, opts={"compare_type": True})
                return list(compare_metadata(context, store.Base.metadata))

            async with engine.connect() as connection:
                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == []


def test_postgres_concurrent_enrolment_and_revocation(postgres_url: str, tmp_path: pathlib.Path) -> None:
    reset(postgres_url)

    async def body(h: Harness) -> None:
        key = await h.setup_key()
        answers = await asyncio.gather(*(h.agent().enrol(key) for _ in range(20)))
        assert sorted(answer.status for answer in answers) == [201] + [403] * 19
        await h.admin("PUT", "/api/v1/policy", raw=b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n")
        reusable = await h.setup_key(reusable=True, usage_limit=30)
        extra = await asyncio.gather(*(h.agent().enrol(reusable) for _ in range(10)))
        assert len({answer.body["peer"]["address"] for answer in extra}) == 10
        a, b = [agent for agent in h.peers if agent.peer_id is not None][:2]
        async with a.stream() as ws:
            assert len((await next_message(ws))["document"]["map"]["peers"]) == 11
            await h.admin("POST", f"/api/v1/peers/{b.peer_id}/revoke")
            message = await next_message(ws)
            assert b.public_key not in {p["public_key"] for p in message["document"]["map"]["peers"]}
        old = a.refresh_token
        assert (await a.refresh()).status == 200
        assert (await a.refresh()).status == 200  # the pair issued for ``old`` is used: no retry any more
        assert (await a.refresh(old)).body["error"] == "token_reuse"

    with_harness(tmp_path, body, db_url=postgres_url)


async def _nonce_store_round(url: str) -> None:
    engine = store.create_engine(url)
    sessions = store.sessionmaker(engine)
    try:
        await store.upgrade(engine)

        async def remember(key: bytes, expires_at: float) -> bool:
            async with sessions() as session, session.begin():
                return await store.remember_nonce(session, key, expires_at)

        async def forget(now: float, limit: int) -> int:
            async with sessions() as session, session.begin():
                return await store.forget_expired_nonces(session, now, limit)

        assert await remember(b"k" * 32 + b"1" * 16, 10.0)
        assert not await remember(b"k" * 32 + b"1" * 16, 10.0)  # seen: by this server or another one
        assert not await remember(b"k" * 32 + b"1" * 16, 99.0)
        for nonce in (b"2", b"3"):
            assert await remember(b"k" * 32 + nonce * 16, 10.0)
        assert await remember(b"k" * 32 + b"4" * 16, 100.0)
        assert await forget(50.0, 2) == 2  # bounded: at most `limit` rows a call
        assert await forget(50.0, 2) == 1
        assert await forget(50.0, 2) == 0
        assert not await remember(b"k" * 32 + b"4" * 16, 100.0)  # not expired yet: kept
        assert await forget(100.0, 2) == 0  # at its expires_at a proof is still accepted: kept through that instant
        assert not await remember(b"k" * 32 + b"4" * 16, 100.0)
        assert await forget(100.5, 2) == 1
        assert await remember(b"k" * 32 + b"4" * 16, 160.0)
        assert await remember(b"k" * 32 + b"1" * 16, 110.0)  # expired and forgotten: a new row
        assert store.shares_nonces(sessions) == (engine.dialect.name == "postgresql")
    finally:
        await engine.dispose()


def test_postgres_nonce_store_refuses_a_seen_nonce_and_forgets_expired_ones(postgres_url: str) -> None:
    reset(postgres_url)
    asyncio.run(_nonce_store_round(postgres_url))


def test_sqlite_nonce_store_behaves_the_same(tmp_path: pathlib.Path) -> None:
    asyncio.run(_nonce_store_round(store.default_url(tmp_path)))
