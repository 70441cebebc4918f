"""The shipped Alembic migrations build exactly the models' schema (wgpy.management.store)."""

from __future__ import annotations

import asyncio
import pathlib

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, select

from wgpy.management import store


def test_migrations_create_exactly_the_models(tmp_path: pathlib.Path) -> None:
    async def run() -> list[object]:
        engine = store.create_engine(store.default_url(tmp_path))
        try:
            await store.upgrade(engine)
            assert await store.current_revision(engine) == "0004"

            def diff(connection: Connection) -> list[object]:
                context = MigrationContext.configure(connection, opts={"compare_type": True})
                return list(compare_metadata(context, store.Base.metadata))

            async with engine.connect() as connection:
                return await connection.run_sync(diff)
        finally:
            await engine.dispose()

    assert asyncio.run(run()) == []


def test_upgrade_twice_is_a_no_op(tmp_path: pathlib.Path) -> None:
    async def run() -> None:
        engine = store.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
        try:
            await store.upgrade(engine)
            await store.upgrade(engine)
            assert await store.current_revision(engine) == "0004"
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_bad_database_url_is_one_clear_error() -> None:
    for url in ("mysql://x/y", "not a url at all", "redis://"):
        try:
            store.create_engine(url)
        except ValueError as exc:
            assert "database" in str(exc)
        else:
            raise AssertionError(url)


def test_a_reader_never_holds_the_sqlite_writer_lock(tmp_path: pathlib.Path) -> None:
    async def run() -> None:
        engine = store.create_engine(store.default_url(tmp_path))
        try:
            await store.upgrade(engine)
            writers = store.sessionmaker(engine)
            readers = store.readonly(writers)
            async with readers() as reader:
                await reader.execute(select(store.PeerRow.id))  # a deferred transaction is open now

                async def write() -> None:
                    async with writers() as writer, writer.begin():
                        writer.add(store.GroupRow(name="g", created_at=0.0))

                await asyncio.wait_for(write(), 5)  # BEGIN IMMEDIATE does not wait for the reader
            async with readers() as reader:
                assert (await reader.execute(select(store.GroupRow.name))).scalars().all() == ["g"]
            # and while a writer holds the lock, a reader still reads
            async with writers() as writer, writer.begin():
                writer.add(store.GroupRow(name="h", created_at=0.0))
                await writer.flush()
                async with readers() as reader:
                    names = await asyncio.wait_for(reader.execute(select(store.GroupRow.name)), 5)
                    assert names.scalars().all() == ["g"]
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_a_0002_database_upgrades_to_dashboard_sessions_and_back(tmp_path: pathlib.Path) -> None:
    async def run() -> None:
        engine = store.create_engine(store.default_url(tmp_path))
        try:
            await store.upgrade(engine, "0002")
            async with engine.connect() as connection:
                names = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert "dashboard_sessions" not in names and "proof_nonces" in names
            await store.upgrade(engine)
            async with engine.connect() as connection:
                names = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert "dashboard_sessions" in names
            await store.downgrade(engine, "0002")
            assert await store.current_revision(engine) == "0002"
        finally:
            await engine.dispose()

    asyncio.run(run())


def test_a_0003_database_gets_the_released_at_index_and_loses_it_on_downgrade(tmp_path: pathlib.Path) -> None:
    async def run() -> None:
        engine = store.create_engine(store.default_url(tmp_path))

        def indexes(connection: Connection) -> set[str]:
            return {str(index["name"]) for index in inspect(connection).get_indexes("peers")}

        try:
            await store.upgrade(engine, "0003")
            async with engine.connect() as connection:
                assert "ix_peers_released_at" not in await connection.run_sync(indexes)
            await store.upgrade(engine)
            async with engine.connect() as connection:
                assert "ix_peers_released_at" in await connection.run_sync(indexes)
            await store.downgrade(engine, "0003")
            async with engine.connect() as connection:
                assert "ix_peers_released_at" not in await connection.run_sync(indexes)
        finally:
            await engine.dispose()

    asyncio.run(run())
