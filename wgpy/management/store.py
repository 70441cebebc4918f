"""The management server's database: SQLAlchemy 2 models, the engine and Alembic migrations.

Theory of operation: everything the server knows lives in one database, SQLite (aiosqlite) in the state directory
by default or PostgreSQL (asyncpg) by URL, so that several replicas could share it. Correctness never rests on this
process's memory: uniqueness (peer keys, addresses, secret hashes) is in unique indexes, and every counter or
state flip that two requests could race on is a guarded ``UPDATE ... WHERE`` whose row count tells who won
(``used < usage_limit`` for setup keys, ``used_at IS NULL`` for refresh tokens). One request is one transaction.

Secrets at rest are SHA-256 hashes (``secret_hash``) of 32 random bytes; the signing and proof keys are files.

SQLite: each transaction starts with ``BEGIN IMMEDIATE`` (the writer lock up front, so two transactions never
deadlock upgrading a read lock) and waits up to ``SQLITE_BUSY_TIMEOUT`` for it; the journal is WAL.

The schema is created by the Alembic migrations shipped in ``wgpy/management/migrations`` (``upgrade``), never by
``metadata.create_all``; ``tests/management/test_management_store.py`` checks that the migrations build exactly these models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import pathlib
import weakref
from collections.abc import Callable
from typing import Final

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    delete,
    event,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.dml import ReturningInsert

__all__ = [
    "AdminToken",
    "AuditRow",
    "Base",
    "DashboardSessionRow",
    "GroupRow",
    "PeerRow",
    "PolicyRow",
    "ProofNonceRow",
    "RefreshTokenRow",
    "SetupKeyRow",
    "create_engine",
    "default_url",
    "downgrade",
    "forget_expired_nonces",
    "forget_expired_sessions",
    "lock_address_pool",
    "lock_map_serials",
    "readonly",
    "remember_nonce",
    "secret_hash",
    "sessionmaker",
    "shares_nonces",
    "upgrade",
    "write_slot",
]

SQLITE_BUSY_TIMEOUT: Final = 30.0  # seconds a SQLite transaction waits for the writer lock (ours)
MIGRATIONS: Final = pathlib.Path(__file__).with_name("migrations")
ADDRESS_POOL_LOCK: Final = 0x7767707901  # PostgreSQL advisory lock keys ("wgpy" + 01, 02; ours)
MAP_SERIAL_LOCK: Final = 0x7767707902
_READ_ONLY: Final = "wgpy_read_only"  # execution option of reader sessions
NONCE_DELETE_BATCH: Final = 10000  # expired proof nonces deleted per tick, at most (ours)

_NAMING: Final = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def secret_hash(secret: str) -> str:
    """The hex SHA-256 stored in place of a setup key, admin token or refresh token (32 random bytes: no KDF needed).

    Any text hashes, lone surrogates included (a header's bytes that are not UTF-8, which aiohttp decodes with
    ``surrogateescape``; a JSON body's ``\\ud800`` is refused before, ``api._text``): such a text is no secret we
    issued and matches no row."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=_NAMING)


class SetupKeyRow(Base):
    __tablename__ = "setup_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reusable: Mapped[bool] = mapped_column(Boolean)
    usage_limit: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    auto_groups: Mapped[list[str]] = mapped_column(JSON)
    approval_required: Mapped[bool] = mapped_column(Boolean)
    ephemeral: Mapped[bool] = mapped_column(Boolean)
    ephemeral_timeout: Mapped[int] = mapped_column(Integer)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PeerRow(Base):
    __tablename__ = "peers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    public_key: Mapped[str] = mapped_column(String(44), unique=True)
    # Unique: two enrolments racing for one address cannot both commit. NULL once the quarantine is over and the
    # address was given to another peer.
    address: Mapped[str | None] = mapped_column(String(45), unique=True, nullable=True)
    groups: Mapped[list[str]] = mapped_column(JSON)
    approved: Mapped[bool] = mapped_column(Boolean)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    released_at: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)  # revoked or deleted at
    ephemeral: Mapped[bool] = mapped_column(Boolean, default=False)
    ephemeral_timeout: Mapped[int] = mapped_column(Integer, default=0)
    setup_key_id: Mapped[str | None] = mapped_column(ForeignKey("setup_keys.id"), nullable=True)
    endpoint_host: Mapped[str | None] = mapped_column(String(45), nullable=True)
    endpoint_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    map_serial: Mapped[int] = mapped_column(Integer, default=0)  # the last serial issued: strictly increasing
    acked_serial: Mapped[int] = mapped_column(Integer, default=0)


class GroupRow(Base):
    """Groups the policy declares (peers' own groups are in ``peers.groups``)."""

    __tablename__ = "groups"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[float] = mapped_column(Float)


class PolicyRow(Base):
    """Every policy ever set; the highest id is in force."""

    __tablename__ = "policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    text: Mapped[str] = mapped_column(Text)
    rules: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    actor: Mapped[str] = mapped_column(String(80))


class RefreshTokenRow(Base):
    __tablename__ = "refresh_tokens"

    jti: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    family: Mapped[str] = mapped_column(String(32), index=True)
    peer_id: Mapped[str] = mapped_column(ForeignKey("peers.id"), index=True)
    issued_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AdminToken(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class AuditRow(Base):
    __tablename__ = "audit"
    __table_args__ = (Index("ix_audit_kind_id", "kind", "id"), Index("ix_audit_peer_id", "peer", "id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(80))
    peer: Mapped[str | None] = mapped_column(String(32), nullable=True)
    detail: Mapped[dict[str, object]] = mapped_column(JSON)


class ProofNonceRow(Base):
    """A proof's nonce seen by any replica, until its proof's window closes (the replay check shared by replicas)."""

    __tablename__ = "proof_nonces"

    key: Mapped[bytes] = mapped_column(LargeBinary(64), primary_key=True)  # peer public key || nonce
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class DashboardSessionRow(Base):
    """A dashboard session (``dashboard/session.py``), so that every replica refuses one logged out or expired.

    The cookie carries the admin token sealed; the row only says that the session id exists, for which admin token,
    until when, and whether it was ended (logout). Rows past their expiry are deleted on the sweep tick."""

    __tablename__ = "dashboard_sessions"

    sid: Mapped[str] = mapped_column(String(32), primary_key=True)
    admin_token_id: Mapped[str] = mapped_column(ForeignKey("admin_tokens.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)


def default_url(state_dir: pathlib.Path) -> str:
    """The SQLite database in the state directory."""
    return f"sqlite+aiosqlite:///{state_dir.resolve() / 'management.db'}"


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (``sqlite+aiosqlite:///...`` or ``postgresql+asyncpg://...``).

    Raises:
        ValueError: the URL is not one of those two kinds.
    """
    try:
        parsed = make_url(url)
    except Exception:  # sqlalchemy.exc.ArgumentError, ValueError: the URL text is remote-ish input
        raise ValueError("the database URL is not a URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
        engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT}, hide_parameters=True)
        _sqlite_immediate(engine)
        return engine
    if backend == "postgresql":
        return create_async_engine(
            parsed.set(drivername="postgresql+asyncpg"), pool_pre_ping=True, hide_parameters=True
        )
    raise ValueError("the database must be sqlite:///PATH or postgresql://...")


def _sqlite_immediate(engine: AsyncEngine) -> None:
    # SQLAlchemy's documented recipe: let the driver not issue BEGIN itself, and begin every transaction IMMEDIATE.
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: object, _record: object) -> None:
        dbapi_connection.isolation_level = None  # type: ignore[attr-defined]
        cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(connection: Connection) -> None:
        # Readers (``readonly``) begin DEFERRED: in WAL mode they read a snapshot and never wait for the writer.
        deferred = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for transactions that write (SQLite: ``BEGIN IMMEDIATE``)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def write_slot(sessions: async_sessionmaker[AsyncSession]) -> contextlib.AbstractAsyncContextManager[object]:
    """Admission to a write transaction on ``sessions``' database, for throughput only (never for correctness).

    SQLite has one writer at a time. Without this, every request of this process would hold a connection waiting in
    SQLite's busy handler, and while the event loop is busy the writer that holds the lock makes slow progress:
    under load the queue outgrows ``SQLITE_BUSY_TIMEOUT`` and requests fail with "database is locked". So on SQLite
    the process's writers queue here, in asyncio, one at a time; the database still decides every race (guarded
    updates, unique indexes), and another process sharing the file is still arbitrated by SQLite. PostgreSQL needs
    no queue: this is a no-op there.
    """
    bind = sessions.kw["bind"]
    if bind.dialect.name != "sqlite":
        return contextlib.nullcontext()
    engine = bind.sync_engine
    slot = _WRITE_SLOTS.get(engine)
    if slot is None:
        slot = _WRITE_SLOTS[engine] = asyncio.Semaphore(1)
    return slot


_WRITE_SLOTS: weakref.WeakKeyDictionary[object, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def readonly(sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """Sessions on the same engine for reads only (SQLite: a deferred ``BEGIN``; no writer lock is taken).

    A session from here must never write: a deferred SQLite transaction that starts writing can fail with
    ``SQLITE_BUSY`` instead of waiting.
    """
    bind = sessions.kw["bind"]
    return async_sessionmaker(bind.execution_options(**{_READ_ONLY: True}), expire_on_commit=False)


def _alembic_config(connection: Connection) -> object:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Run the shipped migrations up to ``revision`` on ``engine``'s database."""
    from alembic import command

    def run(connection: Connection) -> None:
        command.upgrade(_alembic_config(connection), revision)  # type: ignore[arg-type]

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Run the shipped migrations down to ``revision`` (operators rolling back a release; tests)."""
    from alembic import command

    def run(connection: Connection) -> None:
        command.downgrade(_alembic_config(connection), revision)  # type: ignore[arg-type]

    async with engine.begin() as connection:
        await connection.run_sync(run)


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's migration revision, or ``None`` before the first."""
    from alembic.runtime.migration import MigrationContext

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def lock_address_pool(session: AsyncSession) -> None:
    """Serialise address allocation among concurrent transactions, whichever replica runs them.

    PostgreSQL: a transaction-level advisory lock (released at commit or rollback), so that two enrolments under
    different setup keys do not both pick the lowest free address and leave one to fail on the unique index and
    retry. SQLite: nothing to do (``BEGIN IMMEDIATE`` holds the database's only writer lock already). The unique
    index on ``peers.address`` stays the guarantee; this only spares the retries.
    """
    await _advisory_lock(session, ADDRESS_POOL_LOCK)


async def lock_map_serials(session: AsyncSession) -> None:
    """Serialise the issuing of map serials (``max(map_serial) + 1``) among replicas, as ``lock_address_pool``.

    The guarded ``UPDATE ... WHERE map_serial < :serial`` keeps serials strictly increasing per peer without it;
    the lock spares the loser of a race its retry (two replicas issuing one peer's map at once).
    """
    await _advisory_lock(session, MAP_SERIAL_LOCK)


async def _advisory_lock(session: AsyncSession, key: int) -> None:
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


RowFactory = Callable[[], object]


def shares_nonces(sessions: async_sessionmaker[AsyncSession]) -> bool:
    """Whether proof nonces are recorded in the database: on PostgreSQL, which several replicas may share.

    On SQLite one server owns the database and its in-memory ``NonceCache`` is the whole replay check; writing a
    row there would put every peer request behind the single writer lock.
    """
    return bool(sessions.kw["bind"].dialect.name == "postgresql")


async def remember_nonce(session: AsyncSession, key: bytes, expires_at: float) -> bool:
    """Record a proof's nonce (``key`` = peer public key || nonce); ``False`` if a replica had recorded it already.

    One ``INSERT ... ON CONFLICT DO NOTHING`` on the primary key: of two replicas racing on one nonce exactly one
    gets the row back, whichever commits first, and the other waits for that commit and gets nothing.
    """
    if session.get_bind().dialect.name == "postgresql":
        statement: ReturningInsert[tuple[bytes]] = (
            postgresql.insert(ProofNonceRow)
            .values(key=key, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=[ProofNonceRow.key])
            .returning(ProofNonceRow.key)
        )
    else:
        statement = (
            sqlite.insert(ProofNonceRow)
            .values(key=key, expires_at=expires_at)
            .on_conflict_do_nothing(index_elements=[ProofNonceRow.key])
            .returning(ProofNonceRow.key)
        )
    return (await session.execute(statement)).first() is not None


async def forget_expired_nonces(session: AsyncSession, now: float, limit: int = NONCE_DELETE_BATCH) -> int:
    """Delete up to ``limit`` nonces whose proofs can no longer be accepted (``expires_at`` is the last instant one
    is, ``proof.VerifiedProof``); the number deleted."""
    batch = select(ProofNonceRow.key).where(ProofNonceRow.expires_at < now).limit(limit).scalar_subquery()
    result = await session.execute(delete(ProofNonceRow).where(ProofNonceRow.key.in_(batch)))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def forget_expired_sessions(session: AsyncSession, now: float, limit: int = NONCE_DELETE_BATCH) -> int:
    """Delete up to ``limit`` dashboard sessions past their expiry (logged out or not); the number deleted."""
    batch = select(DashboardSessionRow.sid).where(DashboardSessionRow.expires_at <= now).limit(limit).scalar_subquery()
    result = await session.execute(delete(DashboardSessionRow).where(DashboardSessionRow.sid.in_(batch)))
    return int(result.rowcount)  # type: ignore[attr-defined]
