"""The management server's process: state directory, key files, database setup, and serving the API.

Theory of operation: ``init_state`` creates, once, the state directory (mode 0700) with the signing key
(``signing.key``: Ed25519, base64 of the 32-byte seed) and the proof key (``proof.key``: X25519, base64), each
written with ``O_EXCL`` and mode 0600, migrates the database and creates the first admin token, which it returns
for the caller to print once (only its hash is stored). It refuses to overwrite an existing key. ``serve`` loads the
keys, migrates the database (a no-op when current) and runs the aiohttp app until cancelled.

``running_server`` starts a whole server on 127.0.0.1 with a free port inside the caller's event loop, for tests
(the agent's included): ``async with running_server(tmp_path) as server: server.url, server.admin_token, ...``;
``running_replica`` serves one more replica of an initialised state directory and database. On PostgreSQL each
server starts a ``notify.PgFanout`` (LISTEN/NOTIFY between replicas). ``load_keys`` takes the keys from
``WGPY_SIGNING_KEY`` / ``WGPY_PROOF_KEY`` when set, and a signing-key rotation from ``rotation.json`` or
``WGPY_SIGNING_ROTATION`` (``keys.py``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import pathlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from aiohttp import web

from .. import crypto
from ..keys import PrivateKey
from . import store
from .api import ManagementServer, ServerKeys
from .enrolment import DEFAULT_NETWORK
from .keys import (
    PROOF_KEY_ENV,
    ROTATION_ENV,
    ROTATION_FILE,
    SIGNING_KEY_ENV,
    KeyRotation,
    RotationError,
    parse_rotation,
)
from .notify import PgFanout
from .ratelimit import RateLimits

__all__ = [
    "PROOF_KEY_FILE",
    "SIGNING_KEY_FILE",
    "RunningServer",
    "StateError",
    "init_state",
    "load_keys",
    "running_replica",
    "running_server",
    "serve",
]

SIGNING_KEY_FILE: Final = "signing.key"  # in the state directory (contract)
PROOF_KEY_FILE: Final = "proof.key"  # in the state directory (contract)


class StateError(Exception):
    """The state directory or a key file is missing, unreadable or would be overwritten (one line for the CLI)."""


def _write_secret(path: pathlib.Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        raise StateError(f"{path} exists already; refusing to overwrite it") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_secret(path: pathlib.Path) -> bytes:
    try:
        text = path.read_text("ascii").strip()
        raw = base64.b64decode(text, validate=True)
    except FileNotFoundError:
        raise StateError(f"{path} is missing (run wgpy management init)") from None
    except (OSError, UnicodeDecodeError, binascii.Error, ValueError):
        raise StateError(f"{path} is not a key file (32 bytes in base64)") from None
    if len(raw) != 32:
        raise StateError(f"{path} is not a key file (32 bytes in base64)")
    mode = path.stat().st_mode & 0o077
    if mode:
        raise StateError(f"{path} is readable by others (mode {oct(path.stat().st_mode & 0o777)}); chmod 600 it")
    return raw


def _env_secret(name: str) -> bytes | None:
    text = os.environ.get(name)
    if text is None:
        return None
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise StateError(f"{name} is not a key (32 bytes in base64)") from None
    if len(raw) != 32:
        raise StateError(f"{name} is not a key (32 bytes in base64)")
    return raw


def load_rotation(state_dir: pathlib.Path) -> KeyRotation | None:
    """The signing-key rotation under way: ``WGPY_SIGNING_ROTATION``, else ``rotation.json``, else none.

    Raises:
        RotationError: the settings are malformed or the file cannot be read.
    """
    text = os.environ.get(ROTATION_ENV)
    if text is None:
        path = state_dir / ROTATION_FILE
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise RotationError(f"cannot read {path}: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    return parse_rotation(text)


def load_keys(state_dir: pathlib.Path) -> ServerKeys:
    """The signing and proof keys (``WGPY_SIGNING_KEY`` / ``WGPY_PROOF_KEY``, else the state directory's files)
    and the signing-key rotation under way, if any (``keys.py``).

    Raises:
        StateError: a key file is missing, malformed or readable by group/others; the rotation is malformed.
    """
    signing_raw = _env_secret(SIGNING_KEY_ENV) or _read_secret(state_dir / SIGNING_KEY_FILE)
    proof_raw = _env_secret(PROOF_KEY_ENV) or _read_secret(state_dir / PROOF_KEY_FILE)
    try:
        rotation = load_rotation(state_dir)
    except RotationError as exc:
        raise StateError(f"signing-key rotation: {exc}") from None
    signing = crypto.Ed25519PrivateKey.from_private_bytes(signing_raw)
    return ServerKeys(signing, PrivateKey(proof_raw), rotation)


async def init_state(state_dir: pathlib.Path, db_url: str | None = None) -> tuple[ServerKeys, str]:
    """Create keys, database and the first admin token; returns the keys and the token (show it once).

    Raises:
        StateError: the state directory holds keys already, or cannot be created.
        ValueError: the database URL is not usable.
    """
    engine = store.create_engine(db_url or store.default_url(state_dir))
    try:
        for name in (SIGNING_KEY_FILE, PROOF_KEY_FILE):
            if (state_dir / name).exists():
                raise StateError(f"{state_dir / name} exists already; refusing to overwrite it")
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create {state_dir}: {exc.strerror}") from None
        signing = crypto.Ed25519PrivateKey.generate()
        proof = PrivateKey.generate()
        _write_secret(state_dir / SIGNING_KEY_FILE, base64.b64encode(signing.private_bytes_raw()) + b"\n")
        _write_secret(state_dir / PROOF_KEY_FILE, base64.b64encode(proof.raw) + b"\n")
        keys = ServerKeys(signing, proof)
        await store.upgrade(engine)
        server = ManagementServer(store.sessionmaker(engine), keys)
        token = await server.create_admin_token()
        return keys, token
    finally:
        await engine.dispose()


@dataclass
class RunningServer:
    """A server started by ``running_server``: where it listens and how to reach it."""

    url: str
    admin_token: str = field(repr=False)
    keys: ServerKeys
    server: ManagementServer
    state_dir: pathlib.Path
    db_url: str
    runner: web.AppRunner = field(repr=False)
    fanout: PgFanout | None = None  # the LISTEN/NOTIFY fan-out on PostgreSQL

    @property
    def signing_key_b64(self) -> str:
        return self.keys.info()["signing_key"]

    @property
    def proof_key_b64(self) -> str:
        return self.keys.info()["proof_key"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def _build(
    state_dir: pathlib.Path,
    db_url: str,
    network: str,
    clock: Callable[[], float] | None,
    rate_limits: RateLimits | None = None,
) -> tuple[ManagementServer, web.Application, PgFanout | None]:
    keys = load_keys(state_dir)
    engine = store.create_engine(db_url)
    await store.upgrade(engine)
    kwargs = {"clock": clock} if clock is not None else {}
    server = ManagementServer(
        store.sessionmaker(engine),
        keys,
        network=network,
        rate_limits=rate_limits,
        **kwargs,  # type: ignore[arg-type]
    )
    app = server.app()
    # PostgreSQL: other replicas may share the database; their changes reach our peers through LISTEN/NOTIFY.
    fanout = PgFanout(engine, server.hub, nat=server.nat) if engine.dialect.name == "postgresql" else None

    async def start_fanout(_app: web.Application) -> None:
        if fanout is not None:
            fanout.start()

    async def dispose(_app: web.Application) -> None:
        if fanout is not None:
            await fanout.stop()
        await engine.dispose()

    app.on_startup.append(start_fanout)
    app.on_cleanup.append(dispose)
    return server, app, fanout


@contextlib.asynccontextmanager
async def running_server(
    state_dir: pathlib.Path,
    *,
    db_url: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    network: str = DEFAULT_NETWORK,
    clock: Callable[[], float] | None = None,
    rate_limits: RateLimits | None = None,
) -> AsyncIterator[RunningServer]:
    """Init a fresh state directory and serve it on ``host`` (a free port by default) until the block ends."""
    url = db_url or store.default_url(state_dir)
    _keys, token = await init_state(state_dir, url)
    async with running_replica(
        state_dir,
        db_url=url,
        admin_token=token,
        host=host,
        port=port,
        network=network,
        clock=clock,
        rate_limits=rate_limits,
    ) as running:
        yield running


@contextlib.asynccontextmanager
async def running_replica(
    state_dir: pathlib.Path,
    *,
    db_url: str,
    admin_token: str = "",
    host: str = "127.0.0.1",
    port: int = 0,
    network: str = DEFAULT_NETWORK,
    clock: Callable[[], float] | None = None,
    rate_limits: RateLimits | None = None,
) -> AsyncIterator[RunningServer]:
    """Serve an initialised state directory and database (one more replica) on ``host`` until the block ends."""
    server, app, fanout = await _build(state_dir, db_url, network, clock, rate_limits)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)  # bodies as sent (api.py, _body)
    await runner.setup()
    site = web.TCPSite(runner, host, port or free_port(host))
    await site.start()
    bound = runner.addresses[0]
    try:
        yield RunningServer(
            f"http://{bound[0]}:{bound[1]}", admin_token, server.keys, server, state_dir, db_url, runner, fanout
        )
    finally:
        await runner.cleanup()


async def serve(
    state_dir: pathlib.Path,
    db_url: str | None,
    host: str,
    port: int,
    *,
    tls_cert: pathlib.Path | None = None,
    tls_key: pathlib.Path | None = None,
    network: str = DEFAULT_NETWORK,
    ready: Callable[[str], None] | None = None,
    turn_servers: Sequence[tuple[str, int]] = (),
    turn_secret: bytes = b"",
    turn_lifetime: int = 3600,
    rate_limits: RateLimits | None = None,
) -> None:
    """Serve until cancelled. ``ready`` is called with the URL once listening. ``turn_servers`` and ``turn_secret``
    (coturn's ``static-auth-secret``) are what NAT traversal hands to peers (``wgpy.nat``); ``rate_limits`` the
    per-source limits (``ratelimit.py``; the defaults when ``None``)."""
    url = db_url or store.default_url(state_dir)
    server, app, _engine = await _build(state_dir, url, network, None, rate_limits)
    server.nat.turn_servers, server.nat.turn_secret = list(turn_servers), turn_secret
    server.nat.turn_lifetime = turn_lifetime
    context = None
    if tls_cert is not None or tls_key is not None:
        if tls_cert is None or tls_key is None:
            raise StateError("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise StateError(f"cannot load the TLS certificate or key: {exc}") from None
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)  # bodies as sent (api.py, _body)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=context)
        try:
            await site.start()
        except OSError as exc:
            raise StateError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        bound = runner.addresses[0]
        scheme = "https" if context is not None else "http"
        if ready is not None:
            ready(f"{scheme}://{bound[0]}:{bound[1]}")
        await _forever()
    finally:
        await runner.cleanup()


async def _forever() -> None:
    import asyncio

    await asyncio.Event().wait()
