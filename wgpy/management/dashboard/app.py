"""The admin dashboard's routes (issue #16): server-rendered pages over the API's own handlers.

Theory of operation: every page and action is one aiohttp handler here. It first authenticates the browser's
session cookie (``session.py``: the sealed admin token), then the admin token through
``ManagementServer.authenticate_admin`` (the API's own check, the dashboard's seam into it), then the session's row
in ``dashboard_sessions`` (not logged out, not expired: every replica sharing the database refuses a session that
ended through any of them); for a state change also the CSRF token and the request's origin (``Origin`` and
``Sec-Fetch-Site`` must say same-origin when the browser sends them; the cookie is ``SameSite=Strict`` besides). It
then calls the **API's handler** for the action (``ManagementServer.update_peer`` and the others) with an
in-process request that carries the session's admin token and a JSON body: validation, the transaction, the audit
row and the push are the API's, never a second copy. Reads go the same way (``list_peers``, ``list_audit`` ...),
and the pages render their JSON with Jinja2 (autoescaped: a name is always text). The live peers page listens to
``/events`` (server-sent events), pushed by ``LiveFeed`` from the push hub's change hook (``PushHub.watchers``):
the changes of this replica, those of the others (LISTEN/NOTIFY), streams opening and closing, path reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import importlib.resources
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Final, cast

import jinja2
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy
from sqlalchemy import update

from .. import audit, store
from ..api import AdminIdentity, ApiError, route_of
from ..audit import KINDS
from ..policy import PolicyError, parse_policy
from ..push import Change, PushHub
from ..store import DashboardSessionRow
from . import views
from .session import REVEAL_LIFETIME, Session, SessionKeys

if TYPE_CHECKING:
    from ..api import ManagementServer

__all__ = ["COOKIE_NAME", "Dashboard", "mount"]

COOKIE_NAME: Final = "wgpy_session"
REVEAL_COOKIE: Final = "wgpy_reveal"  # a new setup key on its way to the page that shows it once
CSRF_FIELD: Final = "csrf"
CSRF_HEADER: Final = "X-CSRF-Token"
EVENTS_COALESCE: Final = 0.05  # seconds a stream waits after a change for the rest of its burst (ours)
EVENTS_MIN_GAP: Final = 0.5  # seconds at least between two events of one stream, however busy the server (ours)
EVENTS_HEARTBEAT: Final = 15.0  # seconds between keep-alive comments (and session checks) on an idle stream (ours)
AUDIT_PAGE: Final = 50  # events per audit page (ours)
AUDIT_KINDS: Final = tuple(sorted(KINDS))  # the audit filter offers every kind the server records
EXPIRY_CHOICES: Final = ((3600, "1 hour"), (86400, "1 day"), (7 * 86400, "7 days"), (30 * 86400, "30 days"))
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

logger = logging.getLogger("wgpy.management")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Body:
    """The ``request.content`` of an in-process request: a body already in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = len(self._data)
        chunk, self._data = self._data[:n], self._data[n:]
        return chunk


class _InternalRequest:
    """What the API's handlers read from a request, for calling them in-process with the session's admin token."""

    def __init__(
        self,
        method: str,
        path: str,
        token: str,
        *,
        body: bytes = b"",
        content_type: str = "application/json",
        match_info: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> None:
        self.method = method
        self.path = self.raw_path = path
        self.headers = CIMultiDictProxy(CIMultiDict({"Authorization": f"Bearer {token}", "Content-Type": content_type}))
        self.content_length = len(body)
        self.content = _Body(body)
        self.match_info = dict(match_info or {})
        self.query = MultiDictProxy(MultiDict(query or {}))


class _Refused(Exception):
    """The dashboard refuses a request before it reaches any action (no session, bad CSRF token, cross-site)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _json(response: web.StreamResponse) -> object:
    body = cast(web.Response, response).body
    return json.loads(body) if isinstance(body, bytes) and body else None


async def _form(request: web.Request) -> dict[str, str]:
    """The posted form's fields; a body that is no form of its Content-Type is refused (400), not a 500."""
    try:
        posted = await request.post()
    except ValueError:  # aiohttp's multipart reader: no boundary, or the body does not start with it
        raise _Refused(400, "The form could not be read.") from None
    return {key: str(value) for key, value in posted.items()}


def _split_groups(text: str) -> list[str]:
    return sorted({part.strip() for part in text.replace("\n", ",").split(",") if part.strip()})


def _int_field(form: Mapping[str, str], name: str, default: int) -> int:
    value = form.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "invalid_value", f"{name} must be a whole number") from None


class LiveFeed:
    """One change counter for every open ``/events`` stream, fed by the push hub's change hook: no polling.

    ``PushHub.watchers`` tells it of every change this replica commits (enrolment, approval, change, revocation,
    logout, expiry, endpoint), of every change another replica made (the LISTEN/NOTIFY fan-out hands those to the
    hub too), of streams opening and closing (online, offline) and of path reports. Each bumps ``version`` and wakes
    the streams' waits; a stream that wakes sends one ``peers`` event for however many bumps it finds.
    """

    def __init__(self, hub: PushHub) -> None:
        self.version = 0
        self._changed = asyncio.Event()
        self._hub = hub
        hub.watchers.append(self.note)

    def note(self, _change: Change) -> None:
        self.bump()

    def bump(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self._hub.watchers.remove(self.note)
        self.bump()  # wakes the streams' waits at once (they see the shutdown)

    async def wait(self, version: int, timeout: float) -> tuple[int, bool]:
        """Wait up to ``timeout`` for a version after ``version``; the current version and whether it is newer."""
        if self.version == version:
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), timeout)
        return self.version, self.version != version


class Dashboard:
    """The dashboard of one ``ManagementServer``: its routes, templates and session keys."""

    def __init__(self, server: ManagementServer) -> None:
        self.server = server
        secret = hashlib.sha256(b"wgpy dashboard v1" + server.keys.signing.private_bytes_raw()).digest()
        self.sessions = SessionKeys(secret)
        # Session id -> expiry, logged out through this replica: ends its open event streams at once (every
        # replica refuses the session itself through its row in ``dashboard_sessions``).
        self.ended_here: dict[str, float] = {}
        self.shutting_down = asyncio.Event()
        self.feed = LiveFeed(server.hub)
        server.hub.tick_hooks.append(self.sweep)
        self.templates = jinja2.Environment(
            loader=jinja2.PackageLoader("wgpy.management.dashboard", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.templates.filters["ts"] = views.format_ts
        self.templates.filters["ports"] = views.ports_text
        self.templates.globals["peer_state"] = views.peer_state

    # --- routes --------------------------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        page = self._page
        action = self._action
        r.add_get("/", self.index)
        r.add_get("/login", self.login_page)
        r.add_post("/login", self.login)
        r.add_post("/logout", action(self.logout))
        r.add_get("/peers", page(self.peers_page))
        r.add_get("/peers/table", page(self.peers_table))
        r.add_get("/peers/{id}", page(self.peer_page))
        r.add_post("/peers/{id}/approve", action(self.approve))
        r.add_post("/peers/{id}/update", action(self.update))
        r.add_get("/peers/{id}/revoke", page(self.revoke_page))
        r.add_post("/peers/{id}/revoke", action(self.revoke))
        r.add_get("/setup-keys", page(self.setup_keys_page))
        r.add_post("/setup-keys", action(self.create_setup_key))
        r.add_get("/setup-keys/{id}/revoke", page(self.revoke_key_page))
        r.add_post("/setup-keys/{id}/revoke", action(self.revoke_key))
        r.add_get("/policy", page(self.policy_page))
        r.add_post("/policy", action(self.set_policy))
        r.add_get("/audit", page(self.audit_page))
        r.add_get("/network", page(self.network_page))
        r.add_get("/events", page(self.events))
        r.add_get("/static/{name}", self.static)
        r.add_get("/favicon.ico", self.favicon)
        app.on_shutdown.insert(0, self._on_shutdown)

    async def _on_shutdown(self, _app: web.Application) -> None:
        self.shutting_down.set()  # ends the event streams, so the server does not wait for them
        self.feed.stop()

    async def sweep(self) -> None:
        """Forget the sessions past their expiry (the hub's tick)."""
        async with self.server.transaction() as db:
            await store.forget_expired_sessions(db, self.server.clock())

    # --- authentication ------------------------------------------------------------------------------------------

    async def _session(self, request: web.Request) -> tuple[Session, AdminIdentity]:
        now = self.server.clock()
        session = self.sessions.open(request.cookies.get(COOKIE_NAME), now)
        if session is None or session.sid in self.ended_here:
            raise _Refused(401, "Please log in.")
        return session, await self._check(session, now)

    async def _check(self, session: Session, now: float) -> AdminIdentity:
        """The session's admin token as the API checks it, and its row: not logged out, not expired, same token."""
        try:
            admin = await self.server.authenticate_admin(session.token)
        except ApiError:
            raise _Refused(401, "Your admin token is no longer valid; please log in again.") from None
        async with self.server.readers() as db:
            row = await db.get(DashboardSessionRow, session.sid)
        if row is None or row.ended_at is not None or now >= row.expires_at or row.admin_token_id != admin.token_id:
            raise _Refused(401, "Please log in.")
        return admin

    @staticmethod
    def _same_origin(request: web.Request) -> None:
        """Refuse a state change that the browser says comes from another site."""
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise _Refused(403, "Cross-site requests are refused.")
        origin = request.headers.get("Origin")
        # The host only, not the scheme: behind a TLS-terminating proxy the server sees http for an https origin.
        if origin is not None and (origin == "null" or urllib.parse.urlsplit(origin).netloc != request.host):
            raise _Refused(403, "Cross-site requests are refused.")

    def _page(self, handler: Callable[[web.Request, Session], Awaitable[web.StreamResponse]]) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                session, _actor = await self._session(request)
            except _Refused as exc:
                if request.path in ("/peers/table", "/events"):
                    return self._refusal(request, exc)
                next_path = urllib.parse.quote(request.path_qs, safe="")
                return self._secure(web.Response(status=303, headers={"Location": f"/login?next={next_path}"}))
            return self._secure(await handler(request, session))

        return wrapped

    def _action(self, handler: Callable[[web.Request, Session, Mapping[str, str]], Awaitable[web.Response]]) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                self._same_origin(request)
                session, _actor = await self._session(request)
                if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
                    raise _Refused(415, "Send the form.")
                form = await _form(request)
                presented = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
                if not self.sessions.check_csrf(session, presented):
                    raise _Refused(403, "The form's security token is missing or wrong; reload the page and retry.")
            except _Refused as exc:
                logger.info("dashboard refused %s %s: %d", request.method, route_of(request), exc.status)
                return self._refusal(request, exc)
            return self._secure(await handler(request, session, form))

        return wrapped

    def _refusal(self, request: web.Request, exc: _Refused) -> web.Response:
        response = self._render("refused.html", None, status=exc.status, message=exc.message)
        if exc.status == 401:
            response.del_cookie(COOKIE_NAME, path="/")
        return response

    @staticmethod
    def _secure(response: web.StreamResponse) -> web.StreamResponse:
        if not response.prepared:
            headers = response.headers
            headers.setdefault("Content-Security-Policy", _CSP)
            headers.setdefault("X-Content-Type-Options", "nosniff")
            headers.setdefault("X-Frame-Options", "DENY")
            headers.setdefault("Referrer-Policy", "same-origin")
            headers.setdefault("Cache-Control", "no-store")
        return response

    def _render(self, template: str, session: Session | None, *, status: int = 200, **context: object) -> web.Response:
        return self._render_context(template, session, context, status=status)

    def _render_context(
        self, template: str, session: Session | None, context: Mapping[str, object], *, status: int = 200
    ) -> web.Response:
        text = self.templates.get_template(template).render(
            csrf=self.sessions.csrf(session) if session is not None else "",
            logged_in=session is not None,
            **context,
        )
        response = web.Response(text=text, status=status, content_type="text/html", charset="utf-8")
        self._secure(response)
        return response

    async def _api(
        self,
        session: Session,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
        method: str,
        path: str,
        *,
        body: object = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
        match_info: Mapping[str, str] | None = None,
        query: Mapping[str, str] | None = None,
    ) -> object:
        """Call one of the API's handlers in-process with the session's admin token; its JSON answer."""
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        request = _InternalRequest(
            method, path, session.token, body=data, content_type=content_type, match_info=match_info, query=query
        )
        return _json(await handler(cast(web.Request, request)))

    async def _peers(self, session: Session) -> list[dict[str, object]]:
        return cast(list[dict[str, object]], await self._api(session, self.server.list_peers, "GET", "/api/v1/peers"))

    def _back(self, location: str, message: str = "") -> web.Response:
        if message:
            separator = "&" if "?" in location else "?"
            location += f"{separator}done={urllib.parse.quote(message)}"
        return web.Response(status=303, headers={"Location": location})

    # --- login and logout ----------------------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._secure(web.Response(status=303, headers={"Location": "/peers"}))

    @staticmethod
    def _next(value: str | None) -> str:
        # Only a path of this site: never "//evil.example" or "https://...".
        if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
            return value
        return "/peers"

    async def login_page(self, request: web.Request) -> web.StreamResponse:
        return self._render("login.html", None, next=self._next(request.query.get("next")), error="")

    async def login(self, request: web.Request) -> web.StreamResponse:
        try:
            self._same_origin(request)
            form = await _form(request)
        except _Refused as exc:
            return self._refusal(request, exc)
        token = form.get("token", "").strip()
        target = self._next(form.get("next", ""))
        try:
            admin = await self.server.authenticate_admin(token)
        except ApiError:
            logger.info("dashboard refused POST /login: 401")
            return self._render("login.html", None, status=401, next=target, error="That is not a valid admin token.")
        now = self.server.clock()
        cookie, session = self.sessions.seal(token, now)
        async with self.server.transaction() as db:
            db.add(
                DashboardSessionRow(
                    sid=session.sid,
                    admin_token_id=admin.token_id,
                    created_at=now,
                    expires_at=session.expires_at,
                    ended_at=None,
                )
            )
            # Who logged in and from where; never the token nor the session's id (the cookie is what grants).
            audit.record(
                db,
                now=now,
                kind="dashboard_login",
                actor=admin.actor,
                detail={"token_id": admin.token_id, "source": request.remote},
            )
        response = web.Response(status=303, headers={"Location": target})
        response.set_cookie(
            COOKIE_NAME, cookie, path="/", httponly=True, secure=request.secure, samesite="Strict", max_age=None
        )
        return cast(web.Response, self._secure(response))

    async def logout(self, request: web.Request, session: Session, _form: Mapping[str, str]) -> web.Response:
        now = self.server.clock()
        async with self.server.transaction() as db:
            row = await db.get(DashboardSessionRow, session.sid)
            await db.execute(
                update(DashboardSessionRow).where(DashboardSessionRow.sid == session.sid).values(ended_at=now)
            )
            token_id = row.admin_token_id if row is not None else ""
            audit.record(
                db,
                now=now,
                kind="dashboard_logout",
                actor=f"admin:{token_id[:8]}",
                detail={"token_id": token_id, "source": request.remote},
            )
        self.ended_here = {sid: expiry for sid, expiry in self.ended_here.items() if expiry > now}
        self.ended_here[session.sid] = session.expires_at
        self.feed.bump()  # this session's open event streams end now
        response = web.Response(status=303, headers={"Location": "/login"})
        response.del_cookie(COOKIE_NAME, path="/")
        return response

    # --- peers ---------------------------------------------------------------------------------------------------

    def _peer_rows(self, request: web.Request, peers: list[dict[str, object]]) -> dict[str, object]:
        query = request.query.get("q", "")
        sort = request.query.get("sort", "name")
        if sort not in views.PEER_SORTS:
            sort = "name"
        descending = request.query.get("dir") == "desc"
        names = {str(peer["public_key"]): str(peer["name"]) for peer in peers}
        for peer in peers:
            peer["path_detail"] = views.path_detail(peer, names)
        rows = views.sort_peers(views.filter_peers(peers, query), sort, descending)
        return {"peers": rows, "q": query, "sort": sort, "descending": descending, "total": len(peers)}

    async def peers_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        peers = await self._peers(session)
        context = {"page": "peers", "done": request.query.get("done", ""), **self._peer_rows(request, peers)}
        return self._render_context("peers.html", session, context)

    async def peers_table(self, request: web.Request, session: Session) -> web.StreamResponse:
        peers = await self._peers(session)
        return self._render_context("peers_table.html", session, self._peer_rows(request, peers))

    async def _find_peer(self, session: Session, peer_id: str) -> dict[str, object] | None:
        for peer in await self._peers(session):
            if peer["id"] == peer_id:
                return peer
        return None

    async def peer_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        peer_id = request.match_info["id"]
        peers = await self._peers(session)
        by_id = {str(peer["id"]): peer for peer in peers}
        peer = by_id.get(peer_id)
        if peer is None:
            return self._render("refused.html", session, status=404, message="No such peer.")
        peer["path_detail"] = views.path_detail(peer, {str(p["public_key"]): str(p["name"]) for p in peers})
        snapshot = await self.server.maps.snapshot()
        view = snapshot.views.get(peer_id)
        reach = (
            []
            if view is None
            else [by_id[entry.id] for entry in view.peers if entry.id in by_id and entry.id != peer_id]
        )
        rules = [] if view is None else list(view.rules)
        return self._render(
            "peer.html",
            session,
            page="peers",
            peer=peer,
            reach=reach,
            rules=rules,
            has_map=view is not None,
            done=request.query.get("done", ""),
            error="",
        )

    async def _peer_action(
        self, request: web.Request, session: Session, call: Callable[[], Awaitable[object]], done: str
    ) -> web.Response:
        peer_id = request.match_info["id"]
        try:
            await call()
        except ApiError as exc:
            logger.info("refused %s %s: %d %s", request.method, route_of(request), exc.status, exc.code)
            return self._render("refused.html", session, status=exc.status, message=exc.detail)
        return self._back(f"/peers/{urllib.parse.quote(peer_id)}", done)

    async def approve(self, request: web.Request, session: Session, _form: Mapping[str, str]) -> web.Response:
        peer_id = request.match_info["id"]
        return await self._peer_action(
            request,
            session,
            lambda: self._api(
                session,
                self.server.approve_peer,
                "POST",
                f"/api/v1/peers/{peer_id}/approve",
                match_info={"id": peer_id},
            ),
            "approved",
        )

    async def update(self, request: web.Request, session: Session, form: Mapping[str, str]) -> web.Response:
        peer_id = request.match_info["id"]
        body: dict[str, object] = {}
        if "name" in form:
            body["name"] = form["name"].strip()
        if "groups" in form:
            body["groups"] = _split_groups(form["groups"])
        return await self._peer_action(
            request,
            session,
            lambda: self._api(
                session,
                self.server.update_peer,
                "PATCH",
                f"/api/v1/peers/{peer_id}",
                body=body,
                match_info={"id": peer_id},
            ),
            "saved",
        )

    async def revoke_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        peer = await self._find_peer(session, request.match_info["id"])
        if peer is None:
            return self._render("refused.html", session, status=404, message="No such peer.")
        return self._render("revoke.html", session, page="peers", peer=peer)

    async def revoke(self, request: web.Request, session: Session, form: Mapping[str, str]) -> web.Response:
        peer_id = request.match_info["id"]
        if form.get("confirm") != "yes":
            return self._back(f"/peers/{urllib.parse.quote(peer_id)}/revoke")
        return await self._peer_action(
            request,
            session,
            lambda: self._api(
                session, self.server.revoke_peer, "POST", f"/api/v1/peers/{peer_id}/revoke", match_info={"id": peer_id}
            ),
            "revoked",
        )

    # --- setup keys ----------------------------------------------------------------------------------------------

    async def _setup_keys(self, session: Session) -> list[dict[str, object]]:
        keys = await self._api(session, self.server.list_setup_keys, "GET", "/api/v1/setup-keys")
        return sorted(cast(list[dict[str, object]], keys), key=lambda key: -float(cast(float, key["created_at"])))

    async def setup_keys_page(
        self,
        request: web.Request,
        session: Session,
        *,
        created: Mapping[str, object] | None = None,
        error: str = "",
        form: Mapping[str, str] | None = None,
        status: int = 200,
    ) -> web.Response:
        if created is None and REVEAL_COOKIE in request.cookies:
            created = self.sessions.open_reveal(session, request.cookies[REVEAL_COOKIE], self.server.clock())
        response = self._render(
            "setup_keys.html",
            session,
            status=status,
            page="setup-keys",
            keys=await self._setup_keys(session),
            created=created,
            error=error,
            form=form or {},
            expiry_choices=EXPIRY_CHOICES,
            now=self.server.clock(),
            done=request.query.get("done", ""),
        )
        if REVEAL_COOKIE in request.cookies:
            response.del_cookie(REVEAL_COOKIE, path="/setup-keys")
        return response

    async def create_setup_key(self, request: web.Request, session: Session, form: Mapping[str, str]) -> web.Response:
        try:
            reusable = form.get("kind") == "reusable"
            body: dict[str, object] = {
                "name": form.get("name", "").strip(),
                "reusable": reusable,
                "usage_limit": _int_field(form, "usage_limit", 1) if reusable else 1,
                "expires_in": _int_field(form, "expires_in", 86400),
                "auto_groups": _split_groups(form.get("groups", "")),
                "approval_required": form.get("approval_required") == "on",
                "ephemeral": form.get("ephemeral") == "on",
            }
            if body["ephemeral"] and form.get("ephemeral_timeout", "").strip():
                body["ephemeral_timeout"] = _int_field(form, "ephemeral_timeout", 600)
            created = await self._api(session, self.server.create_setup_key, "POST", "/api/v1/setup-keys", body=body)
        except ApiError as exc:
            logger.info("refused %s %s: %d %s", request.method, route_of(request), exc.status, exc.code)
            return await self.setup_keys_page(request, session, error=exc.detail, form=form, status=exc.status)
        # Post/redirect/get, the new key crossing the redirect sealed in a cookie that the next page consumes: it is
        # shown once, and a reload neither shows it again nor creates a second key.
        response = self._back("/setup-keys")
        shown = cast(dict[str, object], created)
        reveal = self.sessions.seal_reveal(session, {"name": shown["name"], "key": shown["key"]}, self.server.clock())
        response.set_cookie(
            REVEAL_COOKIE,
            reveal,
            path="/setup-keys",
            httponly=True,
            secure=request.secure,
            samesite="Strict",
            max_age=REVEAL_LIFETIME,
        )
        return response

    async def revoke_key_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        key_id = request.match_info["id"]
        key = next((key for key in await self._setup_keys(session) if key["id"] == key_id), None)
        if key is None:
            return self._render("refused.html", session, status=404, message="No such setup key.")
        return self._render("revoke_key.html", session, page="setup-keys", key=key)

    async def revoke_key(self, request: web.Request, session: Session, form: Mapping[str, str]) -> web.Response:
        key_id = request.match_info["id"]
        if form.get("confirm") != "yes":
            return self._back(f"/setup-keys/{urllib.parse.quote(key_id)}/revoke")
        try:
            await self._api(
                session,
                self.server.revoke_setup_key,
                "DELETE",
                f"/api/v1/setup-keys/{key_id}",
                match_info={"id": key_id},
            )
        except ApiError as exc:
            return self._render("refused.html", session, status=exc.status, message=exc.detail)
        return self._back("/setup-keys", "setup key revoked")

    # --- policy --------------------------------------------------------------------------------------------------

    async def _policy_text(self, session: Session) -> str:
        request = _InternalRequest("GET", "/api/v1/policy", session.token)
        response = await self.server.get_policy(cast(web.Request, request))
        return response.text or ""

    async def policy_page(
        self, request: web.Request, session: Session, *, text: str | None = None, error: str = "", status: int = 200
    ) -> web.Response:
        current = await self._policy_text(session)
        try:
            rules = list(parse_policy(current).rules)
        except PolicyError:
            rules = []
        shown = current if text is None else text
        return self._render(
            "policy.html",
            session,
            status=status,
            page="policy",
            text=shown,
            lines=shown.split("\n"),
            error=error,
            error_line=views.error_line(error) if error else None,
            rules=rules,
            done=request.query.get("done", ""),
        )

    async def set_policy(self, request: web.Request, session: Session, form: Mapping[str, str]) -> web.Response:
        text = form.get("policy", "").replace("\r\n", "\n")
        try:
            await self._api(
                session,
                self.server.set_policy,
                "PUT",
                "/api/v1/policy",
                raw=text.encode("utf-8"),
                content_type="application/yaml",
            )
        except ApiError as exc:
            logger.info("refused %s %s: %d %s", request.method, route_of(request), exc.status, exc.code)
            return await self.policy_page(request, session, text=text, error=exc.detail, status=exc.status)
        return self._back("/policy", "policy saved")

    # --- audit ---------------------------------------------------------------------------------------------------

    async def audit_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        peers = await self._peers(session)
        names = {str(peer["id"]): str(peer["name"]) for peer in peers}
        query: dict[str, str] = {"limit": str(AUDIT_PAGE + 1)}
        kind = request.query.get("kind", "")
        peer = request.query.get("peer", "").strip()
        since = request.query.get("since", "").strip()
        before = request.query.get("before_id", "").strip()
        error = ""
        if kind:
            query["kind"] = kind
        if peer:
            by_name = [peer_id for peer_id, name in names.items() if name == peer]
            query["peer"] = by_name[0] if by_name else peer
        if since:
            try:
                moment = datetime.datetime.fromisoformat(since)
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=datetime.UTC)
                query["since"] = str(moment.timestamp())
            except ValueError:
                error = "The time is not a date and time (YYYY-MM-DDTHH:MM, UTC)."
        if before:
            query["before_id"] = before
        events: list[dict[str, object]] = []
        if not error:
            try:
                events = cast(
                    list[dict[str, object]],
                    await self._api(session, self.server.list_audit, "GET", "/api/v1/audit", query=query),
                )
            except ApiError as exc:
                error = exc.detail
        more = len(events) > AUDIT_PAGE
        events = events[:AUDIT_PAGE]
        older = ""
        if more and events:
            params = {key: value for key, value in (("kind", kind), ("peer", peer), ("since", since)) if value}
            params["before_id"] = str(events[-1]["id"])
            older = "/audit?" + urllib.parse.urlencode(params)
        for event in events:
            event["detail_text"] = json.dumps(event.get("detail"), sort_keys=True, separators=(", ", ": "))
            event["peer_name"] = names.get(str(event.get("peer")), event.get("peer") or "")
        return self._render(
            "audit.html",
            session,
            status=400 if error else 200,
            page="audit",
            events=events,
            kinds=AUDIT_KINDS,
            kind=kind,
            peer=peer,
            since=since,
            older=older,
            newest=bool(before),
            error=error,
        )

    # --- network -------------------------------------------------------------------------------------------------

    async def network_page(self, request: web.Request, session: Session) -> web.StreamResponse:
        text = await self._policy_text(session)
        try:
            policy = parse_policy(text)
        except PolicyError:
            policy = parse_policy("acls: []\n")
        peers = await self._peers(session)
        graph = views.network_graph(policy, peers)
        return self._render("network.html", session, page="network", graph=graph, rules=policy.rules)

    # --- live updates --------------------------------------------------------------------------------------------

    async def events(self, request: web.Request, session: Session) -> web.StreamResponse:
        """Server-sent events: ``peers`` whenever a peer connects, disconnects, enrols, changes or is revoked.

        Pushed from the hub's change hook (``LiveFeed``), here or on another replica. Every ``EVENTS_HEARTBEAT`` of
        quiet the session is checked again (a logout through another replica, a revoked admin token) and a comment
        keeps proxies from closing the stream; a logout through this replica ends it at once."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
        self._secure(response)
        await response.prepare(request)
        version = self.feed.version
        loop = asyncio.get_running_loop()
        sent_at = -EVENTS_MIN_GAP
        try:
            await response.write(b"retry: 2000\n\n")
            while not self.shutting_down.is_set():
                version, changed = await self.feed.wait(version, EVENTS_HEARTBEAT)
                if self.shutting_down.is_set() or session.sid in self.ended_here:
                    break
                if self.server.clock() >= session.expires_at:
                    break
                if changed:
                    # A burst of changes makes one refresh of the table, and a busy server (thousands of agents
                    # reporting) at most one every EVENTS_MIN_GAP: each refresh is a full peer listing.
                    await asyncio.sleep(max(EVENTS_COALESCE, sent_at + EVENTS_MIN_GAP - loop.time()))
                    version = self.feed.version
                    await response.write(b"event: peers\ndata: changed\n\n")
                    sent_at = loop.time()
                    continue
                try:
                    await self._check(session, self.server.clock())
                except _Refused:
                    break
                await response.write(b": keep-alive\n\n")
        except (ConnectionError, RuntimeError):
            pass  # the browser went away
        return response

    # --- static files --------------------------------------------------------------------------------------------

    async def favicon(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(status=204, headers={"Cache-Control": "max-age=86400"})

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        types = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
        if name not in types:
            return web.Response(status=404, text="not found")
        data = importlib.resources.files("wgpy.management.dashboard").joinpath("static", name).read_bytes()
        response = web.Response(body=data, content_type=types[name], headers={"Cache-Control": "no-cache"})
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount(app: web.Application, server: ManagementServer) -> Dashboard:
    """Add the dashboard's routes to the API's application (called from ``ManagementServer.app``)."""
    dashboard = Dashboard(server)
    dashboard.add_routes(app)
    return dashboard
