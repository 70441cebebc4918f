"""The management HTTP API (aiohttp): the routes of ``docs/management-api.md`` as a thin shell over pure rules.

Theory of operation: each handler reads a bounded body, validates it (unknown fields refused), authenticates the
caller (admin: ``Authorization: Bearer`` admin token, compared by hash; peer: access token + proof of possession,
``proof.py``, nonce remembered in a ``NonceCache`` and, on PostgreSQL, in the ``proof_nonces`` table that every
replica checks), then makes its change in **one** database transaction whose races are settled by the schema (unique indexes, guarded updates), audits it in the same transaction, and only
after the commit notifies the ``PushHub``. A refused request raises ``ApiError`` before or inside the transaction,
so it changes nothing; the middleware turns it, any aiohttp HTTP error and any unexpected exception into one JSON
``{"error", "detail"}`` answer with the right status, never a traceback, never a secret.

The clock is ``ManagementServer.clock`` (wall seconds; tests step it), read once per request and passed to the
pure rules as ``now``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ipaddress
import json
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import WSMsgType, web
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .. import crypto
from ..errors import ConfigError
from ..keys import PrivateKey, PublicKey
from ..mesh.revocation import sign_revocation
from ..nat.io.server import NatSignal
from ..nat.signal import NAT_FRAMES
from . import audit, enrolment, store, tokens
from .enrolment import EnrolmentError
from .keys import KeyRotation
from .pathreport import PathReportError, parse_path_report, summary
from .policy import MAX_POLICY_SIZE, PolicyError, groups_of, parse_policy, valid_name
from .proof import HEADER_KEY, NonceCache, ProofError, verify_proof
from .push import Change, MapService, PeerStream, PushHub
from .ratelimit import RateLimits, SourceLimiter, route_class, source_of
from .store import AdminToken, AuditRow, GroupRow, PeerRow, PolicyRow, RefreshTokenRow, SetupKeyRow, secret_hash

if TYPE_CHECKING:
    from .dashboard.app import Dashboard

__all__ = [
    "MAX_BODY",
    "AdminIdentity",
    "ApiError",
    "ManagementServer",
    "ServerKeys",
    "new_secret",
    "route_of",
]

MAX_BODY: Final = 64 * 1024  # bytes of a request body (contract)
MAX_WS_MESSAGE: Final = 64 * 1024  # bytes of one agent -> server WebSocket frame (ours: a path report of
# MAX_PATH_PEERS peers is about 60 KB; acks and pings are tiny)
PATH_REPORT_INTERVAL: Final = 1.0  # seconds between two path reports of one stream that are accepted (ours)
WS_HEARTBEAT: Final = 30.0  # seconds between WebSocket pings (ours)
MAX_AUDIT_PAGE: Final = 1000  # events in one audit answer (ours)
MAX_AUDIT_ID: Final = 2**31 - 1  # audit.id is an INTEGER: 32 bits on PostgreSQL, so a bound id must fit (ours)
MAX_LIST: Final = 100_000  # setup keys or peers in one list answer (ours)
MAX_HOST: Final = 45  # characters of an endpoint host as stored (peers.endpoint_host is a VARCHAR(45))
# Characters no text in the database may hold: PostgreSQL refuses a NUL in text (asyncpg raises), and a lone
# surrogate has no UTF-8 encoding (either driver raises). Refused at the boundary (``_text``), never sent.
_UNSTORABLE: Final = re.compile("[\x00\ud800-\udfff]")
ENROL_RETRIES: Final = 5  # attempts when two enrolments race for one address (ours)
ADDRESS_PROBE_BATCH: Final = 256  # pool addresses looked up in one query when allocating (ours)
SETUP_KEY_PREFIX: Final = "wgsk_"  # (ours) lets secret scanners and operators recognise a setup key
ADMIN_TOKEN_PREFIX: Final = "wgat_"  # noqa: S105 (ours: a prefix, not a secret)
_PEER_ENROL_FIELDS: Final = frozenset({"setup_key", "public_key", "name", "endpoint"})

logger = logging.getLogger("wgpy.management")


class ApiError(Exception):
    """A refused request: ``status``, ``code`` (the ``error`` field), a one-line ``detail`` and ``extra`` fields
    of the answer's body (a revoked peer's signed ``notice``)."""

    def __init__(self, status: int, code: str, detail: str, extra: Mapping[str, object] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.extra = extra or {}


def new_secret(prefix: str) -> str:
    """A fresh secret: ``prefix`` + 32 random bytes in unpadded base64url."""
    return prefix + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")


def _new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The signing key (Ed25519: maps and tokens) and the proof key (X25519), loaded from their 0600 files."""

    signing: crypto.Ed25519PrivateKey
    proof: PrivateKey
    rotation: KeyRotation | None = None  # a signing-key rotation under way (``keys.py``)

    def __repr__(self) -> str:
        return "ServerKeys(<hidden>)"

    def verify_keys(self) -> tuple[crypto.Ed25519PublicKey, ...]:
        """The keys a token may be signed with: ours, and during a rotation the next and the previous one."""
        keys = [self.signing.public_key()]
        if self.rotation is not None:
            keys.append(self.rotation.next_key)
            if self.rotation.previous_key is not None:
                keys.append(self.rotation.previous_key)
        return tuple(keys)

    def info(self) -> dict[str, str]:
        signing_public = self.signing.public_key().public_bytes_raw()
        proof_public = self.proof.public_key().raw
        return {
            "signing_key": base64.b64encode(signing_public).decode("ascii"),
            "proof_key": base64.b64encode(proof_public).decode("ascii"),
            "proof_key_signature": base64.b64encode(crypto.ed25519_sign(self.signing, proof_public)).decode("ascii"),
        }


def _error_response(status: int, code: str, detail: str, extra: Mapping[str, object] | None = None) -> web.Response:
    return web.json_response({**(extra or {}), "error": code, "detail": detail}, status=status)


_HTTP_CODES: Final = {
    400: "malformed",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}


def route_of(request: web.Request) -> str:
    """What log lines name a request by: its route's template (``/api/v1/setup-keys/{id}``), never its path, whose
    parameter is whatever the caller typed (a setup key or token pasted in the wrong place included)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        # Method, route, status and code only: bodies, headers and paths may hold secrets.
        logger.info("refused %s %s: %d %s", request.method, route_of(request), exc.status, exc.code)
        return _error_response(exc.status, exc.code, exc.detail, exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "error")
        detail = {404: "no such route", 405: "method not allowed on this route", 413: "the body is too large"}.get(
            exc.status, exc.reason
        )
        return _error_response(exc.status, code, detail)
    except OperationalError:
        # SQLite's writer lock not granted within its timeout, PostgreSQL unreachable...: nothing was committed.
        logger.warning("database unavailable in %s %s", request.method, route_of(request))
        return _error_response(503, "unavailable", "the database is busy or unreachable; try again")
    except Exception:
        logger.exception("internal error in %s %s", request.method, route_of(request))
        return _error_response(500, "internal", "internal server error")


def _text(value: str, what: str) -> str:
    """``value``, if every backend can store and compare it: the one check of the text a request brings in (path
    parameters, ``_path_id``; query parameters, ``_query``; every string of a JSON body, keys too, ``_json_object``).

    Raises:
        ApiError: 400 ``invalid_value`` for a NUL character or a lone surrogate (JSON ``"\\u0000"``,
            ``"\\ud800"``): PostgreSQL refuses the one, no driver can encode the other. Refused on SQLite too (which
            would store a NUL), so that both backends answer alike.
    """
    if _UNSTORABLE.search(value) is not None:
        raise ApiError(400, "invalid_value", f"{what} must not contain a NUL character or a lone surrogate")
    return value


def _path_id(request: web.Request) -> str:
    """The route's ``{id}`` (``_text``)."""
    return _text(request.match_info["id"], "the id in the path")


def _query(request: web.Request, allowed: frozenset[str]) -> Mapping[str, str]:
    """The query string's parameters, unknown ones refused (``_fields``), each value checked (``_text``)."""
    query = request.query
    _fields(query, allowed)
    for name, value in query.items():
        _text(value, name)
    return query


def _json_strings(value: object) -> None:
    """``_text`` on every string of a parsed JSON value, object keys included (a loop: whatever nesting the parser
    took, no recursion here to overflow)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _text(item, "a string in the body")
        elif isinstance(item, dict):
            pending += item.keys()
            pending += item.values()
        elif isinstance(item, list):
            pending += item


def _json_object(raw: bytes) -> dict[str, object]:
    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        result: dict[str, object] = {}
        for key, value in items:
            if key in result:
                raise ApiError(400, "malformed", "a JSON object repeats a key")
            result[key] = value
        return result

    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except ApiError:
        raise
    except (ValueError, RecursionError):
        raise ApiError(400, "malformed", "the body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(400, "malformed", "the body must be a JSON object")
    _json_strings(value)
    return value


def _fields(body: Mapping[str, object], allowed: frozenset[str]) -> None:
    unknown = sorted(str(key) for key in body if key not in allowed)
    if unknown:
        raise ApiError(400, "unknown_field", f"unknown field {unknown[0][:40]!r}")


def _endpoint(value: object) -> tuple[str, int]:
    if not isinstance(value, dict) or set(value) != {"host", "port"}:
        raise ApiError(400, "invalid_value", 'the endpoint is {"host": address, "port": 1-65535}')
    host, port = value["host"], value["port"]
    if not isinstance(host, str) or len(host) > MAX_HOST:
        raise ApiError(400, "invalid_value", "endpoint.host must be an IPv4 or IPv6 address")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ApiError(400, "invalid_value", "endpoint.host must be an IPv4 or IPv6 address") from None
    if len(address) > MAX_HOST:  # normalised (an IPv4-mapped address written in hex comes out dotted) and stored
        raise ApiError(400, "invalid_value", f"endpoint.host must be at most {MAX_HOST} characters")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ApiError(400, "invalid_value", "endpoint.port must be 1-65535")
    return address, port


def _public_key(value: object) -> PublicKey:
    if not isinstance(value, str) or len(value) != 44:
        raise ApiError(400, "invalid_value", "public_key must be a WireGuard public key (44 characters of base64)")
    try:
        return PublicKey.from_base64(value)
    except ConfigError:
        raise ApiError(400, "invalid_value", "public_key must be a WireGuard public key (32 bytes in base64)") from None


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "missing_token", "an Authorization: Bearer token is required")
    return value.strip()


def peer_info(row: PeerRow, online: bool, paths: Mapping[str, str] | None = None) -> dict[str, object]:
    """A peer as the API lists it; ``paths`` is its agent's last path report (``pathreport.py``) while online."""
    return {
        "id": row.id,
        "name": row.name,
        "public_key": row.public_key,
        "address": row.address,
        "groups": list(row.groups),
        "approved": row.approved,
        "revoked": row.revoked,
        "online": online,
        "last_seen": row.last_seen,
        "created_at": row.created_at,
        "ephemeral": row.ephemeral,
        "endpoint": None if row.endpoint_host is None else {"host": row.endpoint_host, "port": row.endpoint_port},
        "path": summary(paths),
        "paths": dict(paths or {}),
    }


def setup_key_info(row: SetupKeyRow) -> dict[str, object]:
    return {
        "id": row.id,
        "name": row.name,
        "reusable": row.reusable,
        "usage_limit": row.usage_limit,
        "used": row.used,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "revoked": row.revoked,
        "auto_groups": list(row.auto_groups),
        "approval_required": row.approval_required,
        "ephemeral": row.ephemeral,
        "ephemeral_timeout": row.ephemeral_timeout if row.ephemeral else None,
        "last_used_at": row.last_used_at,
    }


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """Who an admin token is: its row's id and the actor name audit rows carry (``admin:<id prefix>``)."""

    token_id: str
    actor: str


@dataclass(frozen=True, slots=True)
class PeerAuth:
    row: PeerRow
    claims: tokens.TokenClaims


class ManagementServer:
    """The API's state: database sessions, keys, the nonce cache and the push hub. ``app()`` builds the routes."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        keys: ServerKeys,
        *,
        network: str = enrolment.DEFAULT_NETWORK,
        clock: Callable[[], float] = time.time,
        max_streams: int = 20000,
        rate_limits: RateLimits | None = None,
    ) -> None:
        self.sessions = sessions
        self.writers = sessions
        self.readers = store.readonly(sessions)
        self.keys = keys
        self.network = enrolment.parse_network(network)
        self.clock = clock
        self.nonces = NonceCache()
        self._shared_nonces = store.shares_nonces(sessions)
        self.maps = MapService(sessions, keys.signing, clock)
        self.maps.rotation = keys.rotation.announcement() if keys.rotation is not None else None
        self.hub = PushHub(self.maps, max_streams=max_streams)
        self.hub.tick_hooks.append(self.sweep)
        self._verify_key = keys.verify_keys()
        #: NAT traversal's frames on the stream (``wgpy.nat.io.server``): candidate forwarding, TURN credentials.
        self.nat = NatSignal(self.hub, clock=clock)
        #: Path reports (``pathreport.py``): accepted, and what was dropped, ignored or refused, for operators.
        self.path_reports: collections.Counter[str] = collections.Counter()
        #: Per-source limits of the enrolment, login and signed peer routes (``ratelimit.py``); ``limiter.refused``
        #: counts the requests answered 429.
        self.limiter = SourceLimiter(rate_limits, clock=time.monotonic)
        self._address_floor = 0  # every pool address below it is held by a peer row (``_allocate_address``)
        self._reported: collections.Counter[str] = collections.Counter()  # what the last tick's log line counted
        self.dashboard: Dashboard | None = None  # mounted by ``app()``

    def __repr__(self) -> str:
        return f"ManagementServer(network={self.network})"

    # --- application -------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors, self._rate_limit], client_max_size=MAX_POLICY_SIZE + 1)
        r = app.router
        r.add_get("/api/v1/info", self.info)
        r.add_post("/api/v1/enrol", self.enrol)
        r.add_post("/api/v1/token/refresh", self.refresh)
        r.add_get("/api/v1/peer/map", self.peer_map)
        r.add_post("/api/v1/peer/endpoint", self.peer_endpoint)
        r.add_post("/api/v1/peer/logout", self.peer_logout)
        r.add_get("/api/v1/peer/stream", self.peer_stream)
        r.add_post("/api/v1/setup-keys", self.create_setup_key)
        r.add_get("/api/v1/setup-keys", self.list_setup_keys)
        r.add_delete("/api/v1/setup-keys/{id}", self.revoke_setup_key)
        r.add_get("/api/v1/peers", self.list_peers)
        r.add_patch("/api/v1/peers/{id}", self.update_peer)
        r.add_post("/api/v1/peers/{id}/approve", self.approve_peer)
        r.add_post("/api/v1/peers/{id}/revoke", self.revoke_peer)
        r.add_put("/api/v1/policy", self.set_policy)
        r.add_get("/api/v1/policy", self.get_policy)
        r.add_get("/api/v1/audit", self.list_audit)
        # The admin dashboard (issue #16) lives in its own package; it mounts its pages at / here.
        from .dashboard.app import mount as mount_dashboard

        self.dashboard = mount_dashboard(app, self)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _app: web.Application) -> None:
        self.hub.start()

    async def _on_shutdown(self, _app: web.Application) -> None:
        await self.hub.stop()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One database transaction; its audit lines are written after the commit, dropped on a rollback."""
        async with store.write_slot(self.writers), self.writers() as session:
            try:
                async with session.begin():
                    yield session
            except BaseException:
                audit.drop_pending(session)
                raise
            audit.emit_pending(session)

    @web.middleware
    async def _rate_limit(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Refuse a source over its budget before the body is read or anything checked (``ratelimit.py``)."""
        kind = route_class(request.method, request.path)
        if kind is not None:
            limiter = self.limiter
            source = source_of(request.remote, request.headers.get("X-Forwarded-For"), limiter.config.trusted_proxies)
            wait = limiter.allow(kind, source)
            if wait > 0:  # not logged: a flood would flood the log; counted in limiter.refused
                response = _error_response(429, "rate_limited", "too many requests from this address; try again later")
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
        return await handler(request)

    # --- input ---------------------------------------------------------------------------------------------------

    async def _body(self, request: web.Request, limit: int = MAX_BODY) -> bytes:
        # Bodies are read as sent (``auto_decompress=False``, server.py; proofs cover the bytes the agent sends):
        # an encoded one is refused, not taken for its bytes.
        if request.headers.get("Content-Encoding", "identity").strip().lower() != "identity":
            raise ApiError(415, "unsupported_encoding", "send the body without a Content-Encoding")
        length = request.content_length
        if length is not None and length > limit:
            raise ApiError(413, "too_large", f"the body is larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _proof(self, request: web.Request, body: bytes, now: float, expected: PublicKey | None) -> PublicKey:
        try:
            proof = verify_proof(
                request.headers, self.keys.proof, request.method, request.raw_path, body, now=now, expected_key=expected
            )
            self.nonces.remember(proof, now)
        except ProofError as exc:
            raise ApiError(429 if exc.code == "busy" else 401, exc.code, exc.detail) from None
        if self._shared_nonces:
            # Replicas sharing the database share the replay check too: the in-memory cache above only refuses
            # what this replica saw; the row refuses what any replica saw (a tiny transaction of its own).
            async with self.writers() as session, session.begin():
                fresh = await store.remember_nonce(session, bytes(proof.public_key) + proof.nonce, proof.expires_at)
            if not fresh:
                raise ApiError(401, "replayed_proof", "this request was seen before (replayed nonce)")
        return proof.public_key

    async def authenticate_admin(self, token: str) -> AdminIdentity:
        """Check an admin token exactly as every admin route does (the dashboard's seam: its sessions carry one).

        Raises:
            ApiError: 401 ``invalid_token`` for an unknown, revoked or oversized token.
        """
        if not token or len(token) > 200:
            raise ApiError(401, "invalid_token", "not an admin token")
        async with self.readers() as session:
            row = (
                await session.execute(select(AdminToken).where(AdminToken.token_hash == secret_hash(token)))
            ).scalar()
        if row is None or row.revoked:
            raise ApiError(401, "invalid_token", "not a valid admin token")
        return AdminIdentity(row.id, f"admin:{row.id[:8]}")

    async def _admin(self, request: web.Request) -> str:
        return (await self.authenticate_admin(_bearer(request))).actor

    async def _peer(self, request: web.Request, body: bytes, now: float) -> PeerAuth:
        token = _bearer(request)
        header_key = request.headers.get(HEADER_KEY)
        if header_key is None:
            raise ApiError(401, "missing_proof", f"the {HEADER_KEY} header is missing")
        try:
            claims = tokens.verify_token(
                token, self._verify_key, expected_type="access", now=now, expected_key=header_key.strip()
            )
        except tokens.TokenError as exc:
            raise ApiError(401, exc.code, exc.detail) from None
        await self._proof(request, body, now, PublicKey.from_base64(claims.wg))
        async with self.readers() as session:
            row = await session.get(PeerRow, claims.sub)
        if row is None or row.deleted or row.public_key != claims.wg:
            raise ApiError(401, "unknown_peer", "the token's peer no longer exists")
        if row.revoked:
            raise self._revoked(row.id, row.public_key, now)
        return PeerAuth(row, claims)

    def _revoked(self, peer_id: str, public_key: str, now: float) -> ApiError:
        """The 403 for a revoked peer, with the signed notice its agent acts on (``wgpy.mesh.revocation``)."""
        notice = sign_revocation(
            self.keys.signing, peer_id=peer_id, public_key=public_key, reason="revoked", issued_at=int(now)
        )
        return ApiError(403, "revoked", "the peer was revoked", {"notice": notice})

    # --- tokens --------------------------------------------------------------------------------------------------

    def _token_pair(self, session: AsyncSession, peer: PeerRow, family: str, now: float) -> dict[str, str]:
        access, _ = tokens.issue_token(
            self.keys.signing, peer_id=peer.id, public_key=peer.public_key, typ="access", now=now, jti=_new_id()
        )
        refresh, claims = tokens.issue_token(
            self.keys.signing,
            peer_id=peer.id,
            public_key=peer.public_key,
            typ="refresh",
            now=now,
            jti=_new_id(),
            family=family,
        )
        session.add(
            RefreshTokenRow(
                jti=claims.jti,
                token_hash=secret_hash(refresh),
                family=family,
                peer_id=peer.id,
                issued_at=now,
                expires_at=float(claims.exp),
                used_at=None,
                revoked=False,
            )
        )
        return {"access_token": access, "refresh_token": refresh}

    # --- peer routes ---------------------------------------------------------------------------------------------

    async def info(self, _request: web.Request) -> web.Response:
        return web.json_response({**self.keys.info(), "network": str(self.network)})

    async def enrol(self, request: web.Request) -> web.Response:
        now = self.clock()
        raw = await self._body(request)
        body = _json_object(raw)
        _fields(body, _PEER_ENROL_FIELDS)
        setup_key = body.get("setup_key")
        if not isinstance(setup_key, str) or not setup_key or len(setup_key) > 200:
            raise ApiError(400, "invalid_value", "setup_key must be a string")
        public_key = _public_key(body.get("public_key"))
        name = body.get("name")
        if name is not None and not valid_name(name):
            raise ApiError(400, "invalid_value", "name must be 1-64 characters of [A-Za-z0-9_.:@-]")
        endpoint = _endpoint(body["endpoint"]) if body.get("endpoint") is not None else None
        proven = await self._proof(request, raw, now, None)
        if proven != public_key:
            raise ApiError(401, "bad_proof", "the proof is made with another key than public_key")
        for attempt in range(ENROL_RETRIES):
            try:
                peer, pair = await self._enrol_once(setup_key, public_key, name, endpoint, now)
                break
            except IntegrityError:
                if attempt == ENROL_RETRIES - 1:
                    raise ApiError(409, "conflict", "the enrolment raced with another; try again") from None
        self.hub.notify(Change("peer_joined", peer.id))
        signed = "null"
        if peer.approved:
            issued = await self.maps.current(peer.id)
            signed = issued.document if issued is not None else "null"
        head = json.dumps({"peer": peer_info(peer, False), **pair})
        return web.Response(text=f'{head[:-1]}, "map": {signed}}}', status=201, content_type="application/json")

    async def _enrol_once(
        self, setup_key: str, public_key: PublicKey, name: object, endpoint: tuple[str, int] | None, now: float
    ) -> tuple[PeerRow, dict[str, str]]:
        key_text = public_key.to_base64()
        async with self.transaction() as session:
            key_row = (
                await session.execute(select(SetupKeyRow).where(SetupKeyRow.key_hash == secret_hash(setup_key)))
            ).scalar()
            try:
                enrolment.check_setup_key(_setup_key_rule(key_row), now)
            except EnrolmentError as exc:
                raise ApiError(exc.status, exc.code, exc.detail) from None
            assert key_row is not None  # noqa: S101 (check_setup_key refuses None)
            spent = await session.execute(
                update(SetupKeyRow)
                .where(
                    SetupKeyRow.id == key_row.id,
                    SetupKeyRow.used < SetupKeyRow.usage_limit,
                    SetupKeyRow.revoked.is_(False),
                    SetupKeyRow.expires_at > now,
                )
                .values(used=SetupKeyRow.used + 1, last_used_at=now)
            )
            if spent.rowcount != 1:  # type: ignore[attr-defined]
                raise ApiError(403, "used_setup_key", "the setup key has been used up")
            existing = (await session.execute(select(PeerRow).where(PeerRow.public_key == key_text))).scalar()
            if existing is not None:
                if existing.revoked:
                    raise ApiError(403, "revoked", "this WireGuard key was revoked; generate a new one")
                if not existing.deleted:
                    raise ApiError(409, "already_enrolled", "this WireGuard key is enrolled already")
                existing.public_key = f"deleted:{existing.id}"  # frees the unique key for the new peer
                await session.flush()
            await store.lock_address_pool(session)
            address, stale = await self._allocate_address(session, now)
            if stale:  # its old peer's quarantine is over: that row lets go of it
                await session.execute(update(PeerRow).where(PeerRow.address == address).values(address=None))
            peer_id = _new_id()
            peer = PeerRow(
                id=peer_id,
                name=str(name) if name is not None else f"peer-{peer_id[:8]}",
                public_key=key_text,
                address=address,
                groups=sorted(key_row.auto_groups),
                approved=not key_row.approval_required,
                revoked=False,
                deleted=False,
                released_at=None,
                ephemeral=key_row.ephemeral,
                ephemeral_timeout=key_row.ephemeral_timeout if key_row.ephemeral else 0,
                setup_key_id=key_row.id,
                endpoint_host=endpoint[0] if endpoint else None,
                endpoint_port=endpoint[1] if endpoint else None,
                created_at=now,
                last_seen=now,
                map_serial=0,
                acked_serial=0,
            )
            session.add(peer)
            await session.flush()
            pair = self._token_pair(session, peer, _new_id(), now)
            audit.record(
                session,
                now=now,
                kind="enrol",
                actor=f"setup_key:{key_row.id[:8]}",
                peer=peer_id,
                detail={
                    "name": peer.name,
                    "public_key": key_text,
                    "address": address,
                    "groups": peer.groups,
                    "approved": peer.approved,
                    "setup_key": key_row.id,
                },
            )
        return peer, pair

    async def _allocate_address(self, session: AsyncSession, now: float) -> tuple[str, bool]:
        """The lowest free address of the pool, reading only what it needs; ``True`` if a released peer's row still
        holds it (its quarantine over). Called under ``store.lock_address_pool``.

        An address is free when no row holds it, or when the row holding it was released before the quarantine.
        Rows are never deleted and a row lets go of its address only in the transaction that gives it to another
        (below), so an address held once stays held: every address below ``_address_floor`` was seen held, and
        stays so, whichever replica enrols. The free ones below it are then only the released rows' addresses whose
        quarantine is over (one query over the released rows); from the floor up, the pool is probed in batches of
        ``ADDRESS_PROBE_BATCH`` through the unique index. One enrolment after the floor is known reads a few rows,
        not every peer; the first after a start walks the held addresses once.
        """
        first = int(self.network.network_address) + 1
        last = int(self.network.broadcast_address) - 1
        released = (
            await session.execute(
                select(PeerRow.address).where(
                    PeerRow.released_at.is_not(None),
                    PeerRow.released_at <= now - enrolment.ADDRESS_QUARANTINE,
                    PeerRow.address.is_not(None),
                )
            )
        ).scalars()
        stale = min(
            (v for v in (int(ipaddress.IPv4Address(a)) for a in released if a) if first <= v <= last), default=None
        )
        free: int | None = None
        value = max(self._address_floor, first)
        while value <= last and (stale is None or value < stale):
            end = min(last, value + ADDRESS_PROBE_BATCH - 1)
            batch = [str(ipaddress.IPv4Address(v)) for v in range(value, end + 1)]
            held = set((await session.execute(select(PeerRow.address).where(PeerRow.address.in_(batch)))).scalars())
            free = next((value + n for n, text in enumerate(batch) if text not in held), None)
            self._address_floor = max(self._address_floor, end + 1 if free is None else free)
            if free is not None:
                break
            value = end + 1
        choice = min((v for v in (free, stale) if v is not None), default=None)
        if choice is None:
            raise ApiError(409, "address_pool_exhausted", "no free address is left in the pool")
        return str(ipaddress.IPv4Address(choice)), choice == stale

    async def refresh(self, request: web.Request) -> web.Response:
        now = self.clock()
        raw = await self._body(request)
        body = _json_object(raw)
        _fields(body, frozenset({"refresh_token"}))
        token = body.get("refresh_token")
        if not isinstance(token, str):
            raise ApiError(400, "invalid_value", "refresh_token must be a string")
        header_key = request.headers.get(HEADER_KEY)
        if header_key is None:
            raise ApiError(401, "missing_proof", f"the {HEADER_KEY} header is missing")
        try:
            claims = tokens.verify_token(
                token, self._verify_key, expected_type="refresh", now=now, expected_key=header_key.strip()
            )
        except tokens.TokenError as exc:
            raise ApiError(401, exc.code, exc.detail) from None
        await self._proof(request, raw, now, PublicKey.from_base64(claims.wg))
        reused = False
        async with self.transaction() as session:
            row = (
                await session.execute(select(RefreshTokenRow).where(RefreshTokenRow.token_hash == secret_hash(token)))
            ).scalar()
            rule_row = (
                None
                if row is None
                else tokens.RefreshRow(row.jti, row.family, row.peer_id, row.expires_at, row.used_at, row.revoked)
            )
            decision = tokens.decide_refresh(rule_row, claims, now)
            peer = await session.get(PeerRow, claims.sub)
            if peer is None or peer.deleted:
                raise ApiError(401, "unknown_peer", "the token's peer no longer exists")
            if peer.revoked:
                raise self._revoked(peer.id, peer.public_key, now)
            if decision is tokens.RefreshDecision.OK:
                marked = await session.execute(
                    update(RefreshTokenRow)
                    .where(
                        RefreshTokenRow.jti == claims.jti,
                        RefreshTokenRow.used_at.is_(None),
                        RefreshTokenRow.revoked.is_(False),
                    )
                    .values(used_at=now)
                )
                if marked.rowcount != 1:  # type: ignore[attr-defined]
                    decision = tokens.RefreshDecision.REUSED  # another request used it a moment ago
            retry = False
            if decision is tokens.RefreshDecision.REUSED and row is not None and rule_row is not None:
                retry = await self._retire_unused_child(session, row, rule_row, now)
                if retry:
                    decision = tokens.RefreshDecision.OK
            if decision is tokens.RefreshDecision.REUSED:
                await session.execute(
                    update(RefreshTokenRow).where(RefreshTokenRow.family == claims.fam).values(revoked=True)
                )
                audit.record(
                    session,
                    now=now,
                    kind="token_reuse",
                    actor=f"peer:{peer.id[:8]}",
                    peer=peer.id,
                    detail={"family": claims.fam, "action": "family revoked"},
                )
                reused = True
            elif decision is not tokens.RefreshDecision.OK:
                raise ApiError(401, decision.value, "the refresh token is not valid")
            else:
                assert claims.fam is not None  # noqa: S101 (verify_token requires it of refresh tokens)
                pair = self._token_pair(session, peer, claims.fam, now)
                kind = "refresh_retry" if retry else "refresh"
                audit.record(session, now=now, kind=kind, actor=f"peer:{peer.id[:8]}", peer=peer.id, detail={})
        if reused:
            raise ApiError(401, "token_reuse", "the refresh token was used before; its family is revoked")
        return web.json_response(pair)

    @staticmethod
    async def _retire_unused_child(
        session: AsyncSession, row: RefreshTokenRow, rule_row: tokens.RefreshRow, now: float
    ) -> bool:
        """A used refresh token T presented again: ``True`` if this is the device asking again for an answer it
        never got, ``False`` if it is token reuse.

        A retry needs: T used at most ``RETRY_GRACE`` ago (``tokens.within_retry_grace``), no other token of the
        family used at or after T's use, and the pair issued for T (issued at the instant T was used) unused. That
        pair's refresh token is then retired as *used*, at T's old use time: whoever holds it (the device, if the
        answer did arrive after all and someone else asked again) and presents it later is caught as token reuse, and
        the family dies, as it would have without the grace. T's use time moves to now, the instant the pair about
        to be issued carries, so a second lost answer may be asked about again.
        """
        used_at = row.used_at
        if used_at is None or not tokens.within_retry_grace(rule_row, now):
            return False
        await session.execute(select(RefreshTokenRow.jti).where(RefreshTokenRow.jti == row.jti).with_for_update())
        used_since = await session.execute(
            select(func.count())
            .select_from(RefreshTokenRow)
            .where(
                RefreshTokenRow.family == row.family,
                RefreshTokenRow.jti != row.jti,
                RefreshTokenRow.used_at >= used_at,
            )
        )
        if used_since.scalar_one():
            return False  # the family moved on after it: a copy presented late, not the device asking again
        child = await session.execute(
            update(RefreshTokenRow)
            .where(
                RefreshTokenRow.family == row.family,
                RefreshTokenRow.issued_at == used_at,
                RefreshTokenRow.jti != row.jti,
                RefreshTokenRow.used_at.is_(None),
                RefreshTokenRow.revoked.is_(False),
            )
            .values(used_at=used_at)
        )
        if child.rowcount != 1:  # type: ignore[attr-defined]
            return False  # the pair issued for it is used or gone (another request got there first): reuse
        await session.execute(update(RefreshTokenRow).where(RefreshTokenRow.jti == row.jti).values(used_at=now))
        return True

    async def peer_map(self, request: web.Request) -> web.Response:
        now = self.clock()
        auth = await self._peer(request, await self._body(request), now)
        if not auth.row.approved:
            raise ApiError(409, "pending_approval", "the peer awaits approval")
        issued = await self.maps.current(auth.row.id)
        if issued is None:
            raise ApiError(409, "pending_approval", "the peer has no map")
        return web.Response(text=issued.document, content_type="application/json")

    async def peer_endpoint(self, request: web.Request) -> web.Response:
        now = self.clock()
        raw = await self._body(request)
        auth = await self._peer(request, raw, now)
        body = _json_object(raw)
        _fields(body, frozenset({"host", "port"}))
        host, port = _endpoint(body)
        async with self.transaction() as session:
            await session.execute(
                update(PeerRow)
                .where(PeerRow.id == auth.row.id)
                .values(endpoint_host=host, endpoint_port=port, last_seen=now)
            )
            audit.record(
                session,
                now=now,
                kind="peer_endpoint",
                actor=f"peer:{auth.row.id[:8]}",
                peer=auth.row.id,
                detail={"host": host, "port": port},
            )
        self.hub.notify(Change("peer_endpoint", auth.row.id))
        return web.Response(status=204)

    async def peer_logout(self, request: web.Request) -> web.Response:
        now = self.clock()
        auth = await self._peer(request, await self._body(request), now)
        async with self.transaction() as session:
            await self._release(session, auth.row.id, now, deleted=True)
            audit.record(
                session, now=now, kind="peer_logout", actor=f"peer:{auth.row.id[:8]}", peer=auth.row.id, detail={}
            )
        self.hub.notify(Change("peer_left", auth.row.id))
        return web.Response(status=204)

    async def _release(self, session: AsyncSession, peer_id: str, now: float, *, deleted: bool) -> None:
        """Revoke or delete a peer: its tokens die, its address enters quarantine."""
        values: dict[str, object] = {"released_at": now}
        values["deleted" if deleted else "revoked"] = True
        await session.execute(update(PeerRow).where(PeerRow.id == peer_id).values(**values))
        await session.execute(update(RefreshTokenRow).where(RefreshTokenRow.peer_id == peer_id).values(revoked=True))

    async def peer_stream(self, request: web.Request) -> web.StreamResponse:
        now = self.clock()
        auth = await self._peer(request, b"", now)
        ws = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE, heartbeat=WS_HEARTBEAT)
        if not ws.can_prepare(request).ok:
            raise ApiError(400, "not_websocket", "this route needs a WebSocket upgrade")
        await ws.prepare(request)
        stream = self.hub.attach(auth.row.id, ws, auth.row.public_key)
        if stream is None:
            await ws.close(code=1013, message=b"too many connections")
            return ws
        try:
            async for message in ws:
                if message.type != WSMsgType.TEXT:
                    break
                try:
                    data = json.loads(message.data)
                except (ValueError, RecursionError):  # a frame nested thousands deep is no message either
                    break
                if not isinstance(data, dict):
                    break
                kind = data.get("type")
                if kind == "ping":
                    if not stream.send_now({"type": "pong"}):
                        break
                elif kind == "ack":
                    serial = data.get("serial")
                    if isinstance(serial, int) and not isinstance(serial, bool) and serial <= stream.sent_serial:
                        stream.acked_serial = max(stream.acked_serial, serial)
                elif kind in NAT_FRAMES:
                    if not self.nat.handle(stream, data, request.remote):
                        break
                elif kind == "paths":
                    await self._path_report(stream, data)
                else:
                    break  # unknown message: the agent is not speaking this protocol
        finally:
            self.hub.detach(stream)
            await stream.stop()
            if not ws.closed:
                await ws.close(code=1008, message=b"protocol error")
            with contextlib.suppress(Exception):  # best effort: the peer is gone either way
                async with self.transaction() as session:
                    await session.execute(
                        update(PeerRow).where(PeerRow.id == auth.row.id).values(last_seen=self.clock())
                    )
                    await session.execute(
                        update(PeerRow)
                        .where(PeerRow.id == auth.row.id, PeerRow.acked_serial < stream.acked_serial)
                        .values(acked_serial=stream.acked_serial)
                    )
        return ws

    def paths_of(self, peer_id: str) -> Mapping[str, str] | None:
        """The last path report of a peer connected to this replica (``None`` when it is not, or sent none)."""
        stream = self.hub.streams.get(peer_id)
        return stream.paths if stream is not None and stream.paths_at is not None else None

    async def _path_report(self, stream: PeerStream, data: Mapping[str, object]) -> None:
        """Keep a peer's path report, as far as it is about peers in its own map; a bad one is dropped, counted.

        Network input that decides nothing: a malformed or too frequent report is a counted drop, not a closed
        stream (the map keeps flowing)."""
        now = self.clock()
        counts = self.path_reports
        if stream.paths_at is not None and 0 <= now - stream.paths_at < PATH_REPORT_INTERVAL:
            counts["too_frequent"] += 1
            return
        # The peers of the map this stream was last sent (the agent's own key aside): what the agent may speak of.
        try:
            report = parse_path_report(data, stream.map_keys, stream.own_key)
        except PathReportError:
            counts["refused"] += 1
            return
        counts["accepted"] += 1
        counts["dropped_entries"] += report.dropped
        counts["ignored_fields"] += report.ignored_fields
        changed = dict(report.paths) != stream.paths or stream.paths_at is None
        stream.paths, stream.paths_at = dict(report.paths), now
        if changed:
            self.hub.announce(Change("peer_path", stream.peer_id))

    # --- admin routes --------------------------------------------------------------------------------------------

    async def create_setup_key(self, request: web.Request) -> web.Response:
        now = self.clock()
        actor = await self._admin(request)
        body = _json_object(await self._body(request))
        try:
            spec = enrolment.parse_setup_key_request(body)
        except EnrolmentError as exc:
            raise ApiError(exc.status, exc.code, exc.detail) from None
        key = new_secret(SETUP_KEY_PREFIX)
        row = SetupKeyRow(
            id=_new_id(),
            name=spec.name,
            key_hash=secret_hash(key),
            reusable=spec.reusable,
            usage_limit=spec.usage_limit,
            used=0,
            created_at=now,
            expires_at=now + spec.expires_in,
            revoked=False,
            auto_groups=list(spec.auto_groups),
            approval_required=spec.approval_required,
            ephemeral=spec.ephemeral,
            ephemeral_timeout=spec.ephemeral_timeout,
            last_used_at=None,
        )
        async with self.transaction() as session:
            session.add(row)
            audit.record(
                session,
                now=now,
                kind="setup_key_created",
                actor=actor,
                detail={"id": row.id, "name": row.name, "reusable": row.reusable, "usage_limit": row.usage_limit},
            )
        return web.json_response({**setup_key_info(row), "key": key}, status=201)

    async def list_setup_keys(self, request: web.Request) -> web.Response:
        await self._admin(request)
        async with self.readers() as session:
            rows = (
                await session.execute(select(SetupKeyRow).order_by(SetupKeyRow.created_at).limit(MAX_LIST))
            ).scalars()
            return web.json_response([setup_key_info(row) for row in rows])

    async def revoke_setup_key(self, request: web.Request) -> web.Response:
        now = self.clock()
        actor = await self._admin(request)
        key_id = _path_id(request)
        async with self.transaction() as session:
            result = await session.execute(update(SetupKeyRow).where(SetupKeyRow.id == key_id).values(revoked=True))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise ApiError(404, "not_found", "no such setup key")
            audit.record(session, now=now, kind="setup_key_revoked", actor=actor, detail={"id": key_id})
        return web.Response(status=204)

    async def list_peers(self, request: web.Request) -> web.Response:
        await self._admin(request)
        async with self.readers() as session:
            rows = (
                await session.execute(
                    select(PeerRow).where(PeerRow.deleted.is_(False)).order_by(PeerRow.created_at).limit(MAX_LIST)
                )
            ).scalars()
            return web.json_response([peer_info(row, self.hub.online(row.id), self.paths_of(row.id)) for row in rows])

    async def _peer_change(
        self,
        request: web.Request,
        kind: str,
        change: Callable[[AsyncSession, PeerRow, float], Awaitable[dict[str, object]]],
        push: str,
    ) -> web.Response:
        now = self.clock()
        actor = await self._admin(request)
        peer_id = _path_id(request)
        async with self.transaction() as session:
            row = await session.get(PeerRow, peer_id)
            if row is None or row.deleted:
                raise ApiError(404, "not_found", "no such peer")
            detail = await change(session, row, now)
            audit.record(session, now=now, kind=kind, actor=actor, peer=peer_id, detail=detail)
        async with self.readers() as session:
            fresh = await session.get(PeerRow, peer_id)
        assert fresh is not None  # noqa: S101 (peers are never removed from the table)
        self.hub.notify(Change(push, peer_id))
        return web.json_response(peer_info(fresh, self.hub.online(peer_id), self.paths_of(peer_id)))

    async def update_peer(self, request: web.Request) -> web.Response:
        body = _json_object(await self._body(request))
        _fields(body, frozenset({"name", "groups"}))
        values: dict[str, object] = {}
        if "name" in body:
            if not valid_name(body["name"]):
                raise ApiError(400, "invalid_value", "name must be 1-64 characters of [A-Za-z0-9_.:@-]")
            values["name"] = body["name"]
        if "groups" in body:
            groups = body["groups"]
            if (
                not isinstance(groups, list)
                or len(groups) > 1024
                or not all(valid_name(group) for group in groups)
                or len(set(groups)) != len(groups)
            ):
                raise ApiError(400, "invalid_value", "groups must be a list of distinct group names")
            values["groups"] = sorted(str(group) for group in groups)
        if not values:
            raise ApiError(400, "invalid_value", "nothing to change (name, groups)")

        async def change(session: AsyncSession, row: PeerRow, _now: float) -> dict[str, object]:
            if row.revoked:
                raise ApiError(409, "revoked", "a revoked peer cannot be changed")
            await session.execute(update(PeerRow).where(PeerRow.id == row.id).values(**values))
            return dict(values)

        return await self._peer_change(request, "peer_updated", change, "peer_updated")

    async def approve_peer(self, request: web.Request) -> web.Response:
        async def change(session: AsyncSession, row: PeerRow, _now: float) -> dict[str, object]:
            if row.revoked:
                raise ApiError(409, "revoked", "a revoked peer cannot be approved")
            await session.execute(update(PeerRow).where(PeerRow.id == row.id).values(approved=True))
            return {"was_approved": row.approved}

        return await self._peer_change(request, "peer_approved", change, "peer_approved")

    async def revoke_peer(self, request: web.Request) -> web.Response:
        async def change(session: AsyncSession, row: PeerRow, now: float) -> dict[str, object]:
            if not row.revoked:
                await self._release(session, row.id, now, deleted=False)
            return {"public_key": row.public_key, "address": row.address}

        return await self._peer_change(request, "peer_revoked", change, "peer_revoked")

    async def set_policy(self, request: web.Request) -> web.Response:
        now = self.clock()
        actor = await self._admin(request)
        raw = await self._body(request, MAX_POLICY_SIZE)
        try:
            text = raw.decode("utf-8")
            policy = await asyncio.to_thread(parse_policy, text)  # up to 1 MiB of YAML: off the event loop
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_policy", "the policy is not UTF-8 text") from None
        except PolicyError as exc:
            raise ApiError(400, "invalid_policy", exc.detail) from None
        async with self.transaction() as session:
            session.add(PolicyRow(text=text, rules=len(policy.rules), created_at=now, actor=actor))
            existing = set((await session.execute(select(GroupRow.name))).scalars())
            for name in groups_of(policy, ()):
                if name not in existing:
                    session.add(GroupRow(name=name, created_at=now))
            audit.record(
                session,
                now=now,
                kind="policy_set",
                actor=actor,
                detail={"rules": len(policy.rules), "groups": len(policy.groups)},
            )
        self.hub.notify(Change("policy"))
        return web.json_response({"rules": len(policy.rules)})

    async def get_policy(self, request: web.Request) -> web.Response:
        await self._admin(request)
        async with self.readers() as session:
            row = (await session.execute(select(PolicyRow).order_by(PolicyRow.id.desc()).limit(1))).scalar()
        text = row.text if row is not None else "acls: []\n"
        return web.Response(text=text, content_type="application/yaml")

    async def list_audit(self, request: web.Request) -> web.Response:
        await self._admin(request)
        query = _query(request, frozenset({"kind", "peer", "since", "before_id", "after_id", "limit"}))
        statement = select(AuditRow)
        try:
            if "kind" in query:
                statement = statement.where(AuditRow.kind == query["kind"])
            if "peer" in query:
                statement = statement.where(AuditRow.peer == query["peer"])
            if "since" in query:
                statement = statement.where(AuditRow.ts >= float(query["since"]))
            ids = {name: int(query[name]) for name in ("before_id", "after_id") if name in query}
            limit = int(query.get("limit", "100"))
        except ValueError:
            raise ApiError(
                400, "invalid_value", "since is Unix seconds; before_id, after_id and limit are integers"
            ) from None
        # Bound before the database sees it: SQLite refuses an integer past 64 bits, PostgreSQL one past 32.
        if not all(0 <= value <= MAX_AUDIT_ID for value in ids.values()):
            raise ApiError(400, "invalid_value", f"before_id and after_id must be 0-{MAX_AUDIT_ID}")
        if "before_id" in ids:
            statement = statement.where(AuditRow.id < ids["before_id"])
        if "after_id" in ids:
            statement = statement.where(AuditRow.id > ids["after_id"])
        if not 1 <= limit <= MAX_AUDIT_PAGE:
            raise ApiError(400, "invalid_value", f"limit must be 1-{MAX_AUDIT_PAGE}")
        async with self.readers() as session:
            rows = (await session.execute(statement.order_by(AuditRow.id.desc()).limit(limit))).scalars()
            return web.json_response(
                [
                    {
                        "id": row.id,
                        "ts": row.ts,
                        "kind": row.kind,
                        "actor": row.actor,
                        "peer": row.peer,
                        "detail": row.detail,
                    }
                    for row in rows
                ]
            )

    # --- periodic ------------------------------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Note connected peers as seen, delete ephemeral peers offline past their timeout, forget expired nonces."""
        now = self.clock()
        online = list(self.hub.streams)
        expired: list[str] = []
        async with self.transaction() as session:
            for start in range(0, len(online), 500):
                await session.execute(
                    update(PeerRow).where(PeerRow.id.in_(online[start : start + 500])).values(last_seen=now)
                )
            rows = (
                await session.execute(select(PeerRow).where(PeerRow.ephemeral.is_(True), PeerRow.deleted.is_(False)))
            ).scalars()
            for row in rows:
                if enrolment.ephemeral_expired(
                    ephemeral=row.ephemeral,
                    timeout=row.ephemeral_timeout,
                    last_seen=row.last_seen,
                    online=row.id in self.hub.streams,
                    now=now,
                ):
                    await self._release(session, row.id, now, deleted=True)
                    audit.record(session, now=now, kind="peer_expired", actor="server", peer=row.id, detail={})
                    expired.append(row.id)
        for peer_id in expired:
            self.hub.notify(Change("peer_left", peer_id))
        self.nonces.expire(now)
        self._report_drops()
        if self._shared_nonces:
            async with self.writers() as session, session.begin():
                await store.forget_expired_nonces(session, now)

    def _report_drops(self) -> None:
        """One log line per tick saying what the flood defences refused since the last one (never per request)."""
        totals: collections.Counter[str] = collections.Counter()
        for kind, count in self.limiter.refused.items():
            totals[f"http_{kind}"] = count
        for reason, count in self.nat.dropped.items():
            totals[f"nat_{reason}"] = count
        totals["nat_refused"] = self.nat.refused
        fresh = {name: count - self._reported[name] for name, count in totals.items() if count > self._reported[name]}
        self._reported = totals
        if fresh:
            logger.warning("refused or dropped since the last tick: %s", json.dumps(fresh, sort_keys=True))

    # --- first admin token -----------------------------------------------------------------------------------------

    async def create_admin_token(self, name: str = "initial") -> str:
        """Create an admin token; the caller shows it once."""
        now = self.clock()
        token = new_secret(ADMIN_TOKEN_PREFIX)
        token_id = _new_id()
        async with self.transaction() as session:
            session.add(
                AdminToken(id=token_id, name=name, token_hash=secret_hash(token), created_at=now, revoked=False)
            )
            audit.record(
                session, now=now, kind="admin_token_created", actor="cli", detail={"id": token_id, "name": name}
            )
        return token


def _setup_key_rule(row: SetupKeyRow | None) -> enrolment.SetupKeyRow | None:
    if row is None:
        return None
    return enrolment.SetupKeyRow(
        id=row.id,
        reusable=row.reusable,
        usage_limit=row.usage_limit,
        used=row.used,
        expires_at=row.expires_at,
        revoked=row.revoked,
        auto_groups=tuple(row.auto_groups),
        approval_required=row.approval_required,
        ephemeral=row.ephemeral,
        ephemeral_timeout=row.ephemeral_timeout,
    )
