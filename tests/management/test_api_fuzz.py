"""Property-based robustness of the management HTTP API, and of the dashboard routes mounted beside it.

Each property runs on both backends (``backend``): SQLite, and PostgreSQL from ``postgres_helpers`` (skipped with the
reason when it is not installed, a failure in CI), with fewer examples there. PostgreSQL is stricter: it refuses a
NUL in text, a lone surrogate has no UTF-8, and its integers are 32 or 64 bits; so the strategies put NUL bytes and
lone surrogates into every path parameter, query parameter and JSON string (``_poisoned``: the real ids, kinds,
addresses and names too, not only garbage), and integers around 2**31 and 2**63 into every integer field and query
parameter (``BIG_INTEGERS``).

Hypothesis sends every route (``API_ROUTES``, checked against the application's router; ``DASHBOARD_ROUTES``)
random JSON values (nested, wrong types, huge, negative, float and bool numbers, long and unicode strings, NUL
bytes, lone surrogates), shaped bodies (the route's own fields with such values), bodies that are no JSON, a wrong
``Content-Type`` or ``Content-Encoding``, missing, garbage, expired, forged or misplaced credentials, garbage path
parameters and query strings, and methods the route does not have. Every answer must be:

- below 500, within ``REPLY_TIMEOUT`` (no hang);
- on ``/api/``, a 4xx is exactly ``{"error": code, "detail": one line}`` (no newline, no traceback);
- free of every secret the test knows (admin tokens, setup keys, access and refresh tokens, proofs, private keys,
  the dashboard cookie), and so is every log line the request caused (caplog), none of which is an error;
- a refused request changes nothing: every table and what the admin API lists are as before. The one refusal the
  contract makes write is ``token_reuse`` (the family is revoked and audited, docs/management-api.md, "Tokens");
  and on PostgreSQL a valid proof's nonce is recorded whatever the answer (``proof_nonces``: the replay check,
  which SQLite keeps in memory), so that table is left out.

Requests are written on a raw socket to 127.0.0.1, so the test controls every byte. It sends only what aiohttp's
HTTP parser accepts: a request the parser itself refuses (a NUL or CR in a header, bytes above 0x7f in the target,
an unknown method such as ``FOO``, a request line over 8190 bytes) is answered by aiohttp before any of our code
runs, as plain text, and cannot reach the application (by design of the server library, not of ours).

The defects it found are pinned by the example tests at the end of the file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gzip
import ipaddress
import json
import logging
import os
import pathlib
import re
import urllib.parse
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from management_helpers import Agent, Harness, harness
from postgres_helpers import postgres_url, reset
from sqlalchemy import select, update

from wgpy import crypto
from wgpy.keys import PrivateKey, PublicKey
from wgpy.management import audit, store, tokens
from wgpy.management.api import MAX_BODY, MAX_HOST
from wgpy.management.proof import HEADER_KEY, HEADER_NONCE, HEADER_PROOF, HEADER_TIMESTAMP, proof_headers
from wgpy.management.ratelimit import Limit, RateLimits

__all__ = ["postgres_url"]  # the fixture, imported for pytest

T = TypeVar("T")
REPLY_TIMEOUT: Final = 10.0  # seconds an answer may take before the test calls it a hang
# Hypothesis examples per route and backend, each route on its own (a few hundred requests in all on SQLite; fewer
# on PostgreSQL, whose cluster and worlds cost more: the whole file runs in about 20 s on 2 cores; wider runs are the way to look for more, the committed counts keep CI short).
API_EXAMPLES: Final = {"sqlite": 4, "postgresql": 1}
DASHBOARD_EXAMPLES: Final = {"sqlite": 2, "postgresql": 1}
FUZZ: Final = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
NO_LIMITS: Final = RateLimits({"credentials": Limit(0.0, 0), "peer": Limit(0.0, 0)})  # thousands of requests


@dataclass(frozen=True)
class Route:
    """One route: method, path (``{id}`` for the path parameter) and who may call it."""

    method: str
    path: str
    auth: str  # "none", "proof" (proof headers, no token), "peer" (token and proof), "admin", "dashboard"


# docs/management-api.md, "Peer endpoints" and "Admin endpoints"; test_route_table_is_the_servers checks it.
API_ROUTES: Final = (
    Route("GET", "/api/v1/info", "none"),
    Route("POST", "/api/v1/enrol", "proof"),
    Route("POST", "/api/v1/token/refresh", "proof"),
    Route("GET", "/api/v1/peer/map", "peer"),
    Route("POST", "/api/v1/peer/endpoint", "peer"),
    Route("POST", "/api/v1/peer/logout", "peer"),
    Route("GET", "/api/v1/peer/stream", "peer"),
    Route("POST", "/api/v1/setup-keys", "admin"),
    Route("GET", "/api/v1/setup-keys", "admin"),
    Route("DELETE", "/api/v1/setup-keys/{id}", "admin"),
    Route("GET", "/api/v1/peers", "admin"),
    Route("PATCH", "/api/v1/peers/{id}", "admin"),
    Route("POST", "/api/v1/peers/{id}/approve", "admin"),
    Route("POST", "/api/v1/peers/{id}/revoke", "admin"),
    Route("PUT", "/api/v1/policy", "admin"),
    Route("GET", "/api/v1/policy", "admin"),
    Route("GET", "/api/v1/audit", "admin"),
)
# wgpy/management/dashboard/app.py, ``Dashboard.add_routes``. ``GET /events`` is left out: with a session it is a
# stream that never ends (an answer the test could not wait for); without one it is refused like the others.
DASHBOARD_ROUTES: Final = (
    Route("GET", "/", "dashboard"),
    Route("GET", "/login", "none"),
    Route("POST", "/login", "none"),
    Route("POST", "/logout", "dashboard"),
    Route("GET", "/peers", "dashboard"),
    Route("GET", "/peers/table", "dashboard"),
    Route("GET", "/peers/{id}", "dashboard"),
    Route("POST", "/peers/{id}/approve", "dashboard"),
    Route("POST", "/peers/{id}/update", "dashboard"),
    Route("GET", "/peers/{id}/revoke", "dashboard"),
    Route("POST", "/peers/{id}/revoke", "dashboard"),
    Route("GET", "/setup-keys", "dashboard"),
    Route("POST", "/setup-keys", "dashboard"),
    Route("GET", "/setup-keys/{id}/revoke", "dashboard"),
    Route("POST", "/setup-keys/{id}/revoke", "dashboard"),
    Route("GET", "/policy", "dashboard"),
    Route("POST", "/policy", "dashboard"),
    Route("GET", "/audit", "dashboard"),
    Route("GET", "/network", "dashboard"),
    Route("GET", "/static/{name}", "none"),
    Route("GET", "/favicon.ico", "none"),
)
# Paths no route has: the router's 404 and 405 must be the API's JSON errors too.
STRAY_PATHS: Final = (
    "/api/v1/",
    "/api/v1/peers/x/y/z",
    "/api/v2/info",
    "/API/V1/INFO",
    "/api/v1/info/",
    "//api/v1/info",
    "/api/v1/./info",
    "/api/v1/../v1/info",
    "/api/v1/setup-keys/",
    "/api/v1/peers//approve",
    "/api/v1/%00",
    "/api/v1/peer/%2e%2e/peers",
    "/api/v1/" + "a" * 3000,
)
METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND")

# Credentials a request may carry (``World.credential_headers`` makes the headers).
CREDENTIALS: Final = (
    "none",
    "garbage",  # Authorization and the proof headers: random bytes
    "admin",
    "admin_unknown",  # well-formed, never issued
    "admin_revoked",
    "setup_key_bearer",  # a setup key where an admin token goes
    "admin_and_proof",  # the admin token with a valid proof of peer A
    "peer",  # peer A: its access token and a valid proof
    "peer_pending",  # peer B, awaiting approval
    "peer_c",  # peer C, whose first refresh token was used already
    "peer_expired",  # A's access token of two hours ago
    "peer_forged",  # signed with another key
    "peer_wrong_type",  # A's refresh token as the access token
    "peer_other_key",  # B's access token with A's proof
    "proof_stale",  # A's token with a proof two minutes old
    "proof_future",  # A's token with a proof two minutes ahead
    "proof_other_body",  # A's proof made over another body
    "proof_garbage",  # A's token and key, the other proof headers random bytes
    "signer",  # a proof by the attempt's own fresh key (for enrolment), no token
)
CONTENT_TYPES: Final = (
    None,
    b"application/json",
    b"application/json; charset=latin-1",
    b"text/plain",
    b"application/yaml",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=zz",
    b"multipart/form-data",
    b"*/*",
    b"json",
    b"\xff/\xfe",
)
CONTENT_ENCODINGS: Final = (*(None,) * 12, b"gzip", b"deflate", b"identity", b"x-unknown")
NASTY_STRINGS: Final = (
    "",
    " ",
    "\x00",
    "a\x00b",
    "\ud800",
    "\udfff",
    "x" * 3000,
    "é",
    "💥",
    "\u2028",
    "\ufeff",
    "line\nbreak",
    "cr\rlf",
    "null",
    "../../etc/passwd",
    "%00",
    "*",
    "a b",
    "-",
    "0",
    "1e999",
    "100.64.0.1",
    "::1",
    "255.255.255.255",
    "<script>alert(1)</script>",
    "{{ 7 * 7 }}",
    "' OR 1=1 --",
)
ODD_KEYS: Final = (
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",  # the all-zero key: a low-order point
    "//////////////////////////////////////////8=",  # all ones: not a reduced field element
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",  # spare bits set
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",  # 31 bytes
)
# What PostgreSQL refuses and SQLite takes: a NUL in text (asyncpg raises), a lone surrogate (no UTF-8 for it), and
# integers past its 32-bit INTEGER and 64-bit BIGINT on either side. ``_poisoned`` puts one such character anywhere
# in a string (route-shaped ones: a real id, a kind, an address, a name), and the strategies draw these integers for
# every integer field and query parameter.
LONE_SURROGATES: Final = ("\ud800", "\udbff", "\udc00", "\udfff")
BIG_INTEGERS: Final = (
    *(2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32),
    *(2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64),
)
NASTY_INTEGERS: Final = (0, -1, 1, 59, 60, 65535, 65536, 2**53 + 1, 10**30, 10**4000, *BIG_INTEGERS)
RAW_BODIES: Final = (
    b"",
    b"{",
    b"}",
    b"\xff\xfe",
    b"\x00",
    b"null",
    b"[]",
    b"{}",
    b"true",
    b'"text"',
    b'{"a": 1, "a": 2}',
    b'{"x": NaN}',
    b'{"x": -Infinity}',
    b"1e99999",
    b"9" * 5000,  # an integer past Python's 4300 digits
    b"[" * 100_000,  # nested past the recursion limit
    b'{"a":' * 50_000,
    b"\xef\xbb\xbf{}",  # a byte order mark
    b"acls: [",
    b"acls: &a [*a]",
    b"acls: !!python/object/apply:os.system ['true']",
    b"acls:\n\t- x",
    b"%YAML 9.9\n---\nacls: []",
    b"--- a\n--- b\n",
    b"token=&next=//evil.example",
    b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n",
    b"x" * (MAX_BODY + 1),
)
# Header values aiohttp's parser accepts: tab, visible ASCII and bytes above 0x7f (obs-text, decoded by aiohttp
# with surrogateescape); no NUL, CR or LF, which the parser refuses before the application (module docstring).
_HEADER_SAFE: Final = bytes([9, *range(32, 127), *range(128, 256)])
_QUERY_FRAGMENTS: Final = ("%ff", "%ED%A0%80", "%00", "%", "%zz", "a=1&a=2", "=", "&&", "+", ";", "limit=1;limit=2")


@dataclass(frozen=True)
class Attempt:
    """One request, as hypothesis draws it (credentials are made when it is sent: proofs carry the clock)."""

    method: str
    path: str  # percent-encoded, without the query
    query: str  # percent-encoded, without "?"
    body: bytes
    credential: str
    content_type: bytes | None = None
    content_encoding: bytes | None = None
    garbage: bytes = b""  # for the "garbage" credentials
    signer: bytes = bytes(32)  # the seed of the "signer" credential's key
    cookie: str = "none"  # "none", "garbage" or "session" (the dashboard's)
    garbage_cookie: bytes = b""
    api: bool = True  # an API route (JSON errors), or one of the dashboard's (HTML pages)
    headers: tuple[tuple[bytes, bytes], ...] = ()  # more headers, as they are (the example tests')

    @property
    def target(self) -> str:
        return self.path + ("?" + self.query if self.query else "")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


async def send_raw(port: int, method: str, target: str, headers: Sequence[tuple[bytes, bytes]], body: bytes) -> Reply:
    """One HTTP/1.1 request on a fresh connection to 127.0.0.1 (``Connection: close``), every byte as given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {target} HTTP/1.1".encode("ascii"), b"Host: 127.0.0.1", b"Connection: close"]
        lines += [name + b": " + value for name, value in headers]
        lines.append(b"Content-Length: %d" % len(body))
        writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        with contextlib.suppress(ConnectionError):  # a 413 may close before the whole body is read
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), REPLY_TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert raw.startswith(b"HTTP/1."), f"no answer to {method} {target[:200]}: {raw[:100]!r}"
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return Reply(int(status_line.split()[1]), parsed, payload, raw)


@dataclass
class World:
    """A running server with peers, setup keys and credentials of every kind, and the secrets the test knows."""

    h: Harness
    caplog: pytest.LogCaptureFixture
    port: int
    a: Agent  # approved
    b: Agent  # awaiting approval
    c: Agent  # its first refresh token used already
    d: Agent  # may be revoked by the fuzz (revoke's real id)
    keys: dict[str, str] = field(repr=False)  # setup keys by role
    key_ids: dict[str, str] = field(default_factory=dict)
    extra_tokens: dict[str, str] = field(default_factory=dict, repr=False)
    session_cookie: str = field(default="", repr=False)
    csrf: str = field(default="", repr=False)
    secrets: list[str] = field(default_factory=list, repr=False)
    loop: asyncio.AbstractEventLoop | None = None
    fixed_secrets: list[str] = field(default_factory=list, repr=False)  # known at the start: the strategies' pool
    unchanged: dict[str, object] | None = field(default=None, repr=False)  # the state after the last refusal

    def __repr__(self) -> str:
        return "World()"

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` in the world's event loop (hypothesis calls the property synchronously)."""
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    @property
    def proof_public(self) -> PublicKey:
        return self.h.running.keys.proof.public_key()

    def all_secrets(self) -> list[str]:
        return sorted({*self.secrets, *self.h.secrets})

    # --- credentials ---------------------------------------------------------------------------------------------

    def _proof(
        self, private: PrivateKey, method: str, target: str, body: bytes, *, shift: float = 0.0
    ) -> list[tuple[bytes, bytes]]:
        made = proof_headers(
            private, self.proof_public, method, target, body, now=self.h.clock() + shift, nonce=os.urandom(16)
        )
        self.secrets.append(made[HEADER_PROOF])
        return [(name.encode(), value.encode()) for name, value in made.items()]

    def credential_headers(self, attempt: Attempt, body: bytes) -> list[tuple[bytes, bytes]]:
        method, target, name = attempt.method, attempt.target, attempt.credential
        a_key, a_token = self.a.private, self.a.access_token or ""

        def bearer(token: str) -> list[tuple[bytes, bytes]]:
            return [(b"Authorization", b"Bearer " + token.encode())]

        if name == "none":
            return []
        if name == "garbage":
            half = len(attempt.garbage) // 2
            scheme = (b"Bearer ", b"bearer ", b"Basic ", b"")[attempt.garbage[0] % 4] if attempt.garbage else b""
            return [
                (b"Authorization", scheme + attempt.garbage[1:half]),
                (HEADER_KEY.encode(), attempt.garbage[half:]),
                (HEADER_TIMESTAMP.encode(), attempt.garbage[:3]),
                (HEADER_NONCE.encode(), attempt.garbage[::-1]),
                (HEADER_PROOF.encode(), attempt.garbage[half:] + attempt.garbage[:half]),
            ]
        if name == "admin":
            return bearer(self.h.running.admin_token)
        if name in ("admin_unknown", "admin_revoked"):
            return bearer(self.extra_tokens[name])
        if name == "setup_key_bearer":
            return bearer(self.keys["reusable"])
        if name == "admin_and_proof":
            return bearer(self.h.running.admin_token) + self._proof(a_key, method, target, body)
        if name == "peer":
            return bearer(a_token) + self._proof(a_key, method, target, body)
        if name == "peer_pending":
            return bearer(self.b.access_token or "") + self._proof(self.b.private, method, target, body)
        if name == "peer_c":
            return bearer(self.c.access_token or "") + self._proof(self.c.private, method, target, body)
        if name in ("peer_expired", "peer_forged"):
            return bearer(self.extra_tokens[name]) + self._proof(a_key, method, target, body)
        if name == "peer_wrong_type":
            return bearer(self.a.refresh_token or "") + self._proof(a_key, method, target, body)
        if name == "peer_other_key":
            return bearer(self.b.access_token or "") + self._proof(a_key, method, target, body)
        if name in ("proof_stale", "proof_future"):
            shift = -120.0 if name == "proof_stale" else 120.0
            return bearer(a_token) + self._proof(a_key, method, target, body, shift=shift)
        if name == "proof_other_body":
            return bearer(a_token) + self._proof(a_key, method, target, body + b" ")
        if name == "proof_garbage":
            return [
                *bearer(a_token),
                (HEADER_KEY.encode(), self.a.public_key.encode()),
                (HEADER_TIMESTAMP.encode(), attempt.garbage[:12] or b"x"),
                (HEADER_NONCE.encode(), attempt.garbage[12:40]),
                (HEADER_PROOF.encode(), attempt.garbage[40:]),
            ]
        if name == "signer":
            signer = PrivateKey(attempt.signer)
            self.secrets.append(signer.to_base64())
            return self._proof(signer, method, target, body)
        raise AssertionError(f"unknown credential {name}")

    # --- sending and checking ------------------------------------------------------------------------------------

    async def send(self, attempt: Attempt) -> Reply:
        body = attempt.body
        if attempt.content_encoding == b"gzip" and attempt.garbage[:1] == b"\x01":
            body = gzip.compress(body)  # sometimes a real gzip body, mostly a body that is not gzip at all
        headers = self.credential_headers(attempt, body) + list(attempt.headers)
        if attempt.content_type is not None:
            headers.append((b"Content-Type", attempt.content_type))
        if attempt.content_encoding is not None:
            headers.append((b"Content-Encoding", attempt.content_encoding))
        if attempt.cookie == "session":
            headers.append((b"Cookie", f"wgpy_session={self.session_cookie}".encode()))
        elif attempt.cookie == "garbage":
            headers.append((b"Cookie", b"wgpy_session=" + attempt.garbage_cookie))
        return await send_raw(self.port, attempt.method, attempt.target, headers, body)

    async def snapshot(self) -> dict[str, object]:
        """What the admin API lists and every row of every table."""
        listed: dict[str, object] = {}
        for path in ("/api/v1/peers", "/api/v1/setup-keys", "/api/v1/policy", "/api/v1/audit?limit=1000"):
            answer = await self.h.admin("GET", path)
            assert answer.status == 200, answer.text
            listed[path] = answer.text
        rows: dict[str, list[tuple[str, ...]]] = {}
        async with self.h.running.server.sessions() as session:
            for model in store.Base.__subclasses__():
                if model is store.ProofNonceRow:
                    # The replay check: every valid proof's nonce is remembered, whatever the answer (in memory on
                    # SQLite; in this table too on PostgreSQL: docs/management-api.md, "Proof of possession").
                    continue
                columns = [column.key for column in model.__table__.columns]
                found = (await session.execute(select(model))).scalars().all()
                rows[model.__tablename__] = sorted(
                    tuple(repr(getattr(row, column)) for column in columns) for row in found
                )
        return {"listed": listed, "rows": rows}

    async def check(self, attempt: Attempt) -> Reply:
        """Send ``attempt`` and assert the robustness rules (module docstring) of its answer."""
        # Nothing changes the state but requests (no stream is open, the clock stands still): after a refusal, the
        # state it left is the next attempt's "before" (half the snapshots).
        before = self.unchanged or await self.snapshot()
        self.unchanged = None
        self.caplog.clear()
        reply = await self.send(attempt)
        records = list(self.caplog.records)
        after = await self.snapshot()
        where = f"{attempt.method} {attempt.target[:200]} -> {reply.status} {reply.text[:300]!r}"
        assert reply.status < 500, where
        # (No input says "Traceback": an unknown field's name is quoted back in its error, by design.)
        assert b"Traceback" not in reply.raw and not re.search(rb'File "[^"]+", line \d+', reply.raw), where
        api = attempt.api
        if 400 <= reply.status < 500 and api and attempt.method != "HEAD":
            assert reply.headers.get("content-type", "").startswith("application/json"), where
            error = reply.json()
            assert isinstance(error, dict) and set(error) == {"error", "detail"}, where
            assert isinstance(error["error"], str) and re.fullmatch(r"[a-z_]{1,40}", error["error"]), where
            detail = error["detail"]
            assert isinstance(detail, str) and detail.strip() and len(detail) <= 200, where
            assert "\n" not in detail and "\r" not in detail, where
        visible = reply.raw
        if not api:
            # The dashboard's redirects carry the browser's own address back (``/login?next=...``, post/redirect/
            # get): by design, and the browser sent it. Its other headers and its pages are checked.
            visible = b"\r\n".join(
                line for line in reply.raw.split(b"\r\n") if not line.lower().startswith(b"location:")
            )
        for secret in self.all_secrets():
            assert secret.encode() not in visible, f"a secret in the answer: {where}"
        for record in records:
            message = record.getMessage()
            assert record.levelno < logging.ERROR and record.exc_info is None, f"{where}: logged {message!r}"
            for secret in self.all_secrets():
                assert secret not in message, f"a secret in the log line {message[:200]!r}: {where}"
        code = reply.json().get("error") if api and reply.status >= 400 and attempt.method != "HEAD" else None
        if reply.status >= 400 and code != "token_reuse":  # token_reuse: the one refusal that writes (docstring)
            assert after == before, f"a refused request changed the state: {where}"
            self.unchanged = after
        return reply


async def start_world(
    stack: contextlib.AsyncExitStack, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, db_url: str | None
) -> World:
    h = await stack.enter_async_context(harness(tmp_path, rate_limits=NO_LIMITS, db_url=db_url))
    port = int(h.url.rsplit(":", 1)[1])
    policy = b"groups: [ops]\nacls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"
    assert (await h.admin("PUT", "/api/v1/policy", raw=policy, content_type="application/yaml")).status == 200
    specs: dict[str, dict[str, object]] = {
        "reusable": {"reusable": True, "usage_limit": 1_000_000},
        "pending": {"reusable": True, "usage_limit": 10, "approval_required": True},
        "one_off": {},
        "revoked": {},
    }
    keys, key_ids = {}, {}
    for role, spec in specs.items():
        created = await h.admin("POST", "/api/v1/setup-keys", {"name": role, **spec})
        assert created.status == 201, created.text
        keys[role], key_ids[role] = created.body["key"], created.body["id"]
        h.secrets.append(keys[role])
    assert (await h.admin("DELETE", f"/api/v1/setup-keys/{key_ids['revoked']}")).status == 204
    a, b, c, d = h.agent(), h.agent(), h.agent(), h.agent()
    for agent, key in ((a, "reusable"), (b, "pending"), (c, "reusable"), (d, "reusable")):
        assert (await agent.enrol(keys[key])).status == 201
    used = c.refresh_token or ""
    assert (await c.refresh()).status == 200
    signing = h.running.keys.signing
    assert a.peer_id is not None
    expired, _ = tokens.issue_token(
        signing, peer_id=a.peer_id, public_key=a.public_key, typ="access", now=h.clock() - 7200, jti="expired"
    )
    forged, _ = tokens.issue_token(
        crypto.Ed25519PrivateKey.generate(),
        peer_id=a.peer_id,
        public_key=a.public_key,
        typ="access",
        now=h.clock(),
        jti="forged",
    )
    revoked_admin = await h.running.server.create_admin_token("revoked")
    async with h.running.server.sessions() as session, session.begin():
        await session.execute(update(store.AdminToken).where(store.AdminToken.name == "revoked").values(revoked=True))
    unknown_admin = "wgat_" + base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
    extra = {
        "peer_expired": expired,
        "peer_forged": forged,
        "admin_revoked": revoked_admin,
        "admin_unknown": unknown_admin,
        "used_refresh": used,
    }
    world = World(h, caplog, port, a, b, c, d, keys, key_ids, extra)
    # A dashboard session (its cookie seals the admin token: a secret) and its CSRF token (shown in every page).
    login = await send_raw(
        port,
        "POST",
        "/login",
        [(b"Content-Type", b"application/x-www-form-urlencoded")],
        urllib.parse.urlencode({"token": h.running.admin_token}).encode(),
    )
    assert login.status == 303, login.text
    world.session_cookie = login.headers["set-cookie"].split("wgpy_session=", 1)[1].split(";", 1)[0]
    page = await send_raw(port, "GET", "/peers", [(b"Cookie", f"wgpy_session={world.session_cookie}".encode())], b"")
    found = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert page.status == 200 and found is not None, page.text[:300]
    world.csrf = found.group(1)
    server_keys = h.running.keys
    world.secrets += [
        *extra.values(),
        world.session_cookie,
        base64.b64encode(server_keys.signing.private_bytes_raw()).decode(),
        base64.b64encode(server_keys.proof.raw).decode(),
    ]
    world.fixed_secrets = world.all_secrets()
    return world


@dataclass(frozen=True)
class Backend:
    """The database a world runs on: SQLite in its state directory (``url`` None) or the module's PostgreSQL."""

    name: str
    url: str | None


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test on both backends; PostgreSQL is ``postgres_helpers.postgres_url`` (skipped with the reason when it
    is not installed, a failure in CI), with an empty schema for each test."""
    if request.param == "sqlite":
        return Backend("sqlite", None)
    url: str = request.getfixturevalue("postgres_url")
    reset(url)
    return Backend("postgresql", url)


def run_world(
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    body: Callable[[World], None],
    backend: Backend = Backend("sqlite", None),
) -> None:
    """Start a world on ``backend`` in a fresh event loop and call ``body(world)`` (``world.run`` runs a coroutine
    in it)."""
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="wgpy")
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    try:
        world = loop.run_until_complete(start_world(stack, tmp_path, caplog, backend.url))
        world.loop = loop
        body(world)
    finally:
        loop.run_until_complete(stack.aclose())
        loop.close()


# --- strategies ----------------------------------------------------------------------------------------------------


@st.composite
def _poisoned(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A string of ``base`` with a NUL or a lone surrogate put in anywhere."""
    text = draw(base)
    at = draw(st.integers(0, len(text)))
    poison = draw(st.just("\x00") | st.sampled_from(LONE_SURROGATES))  # half of them a NUL
    return text[:at] + poison + text[at:]


def _near(values: Sequence[str]) -> st.SearchStrategy[str]:
    """One of ``values``, or one of them poisoned: the value a route looks for, but with what PostgreSQL refuses."""
    return st.one_of(st.sampled_from(values), _poisoned(st.sampled_from(values)))


_strings = st.one_of(st.text(max_size=24), st.sampled_from(NASTY_STRINGS), _poisoned(st.text(max_size=12)))
_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(NASTY_INTEGERS),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
_scalars = st.one_of(st.none(), _numbers, _strings)
json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12) | _strings, children, max_size=4)
    ),
    max_leaves=12,
)


def _dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def _header_bytes(max_size: int = 80) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=max_size).map(lambda raw: bytes(byte for byte in raw if byte in _HEADER_SAFE))


def _quote(text: str) -> str:
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def _path_params(world: World, route: Route) -> st.SearchStrategy[str]:
    """Garbage, tricky encodings, secrets, and the real ids the fuzz may act on without spoiling the world."""
    garbage = st.one_of(
        _strings.map(_quote),
        st.sampled_from(("%00", "%ff", "%ED%A0%80", "..", "%2e%2e", "a%2Fb", "%", "%zz", "%20", "+", "*", "~")),
        st.sampled_from(world.fixed_secrets).map(_quote),
        st.just("0" * 32),
        _poisoned(st.just("0" * 32)).map(_quote),
    )
    real: list[str] = []
    path = route.path
    if path.startswith("/api/v1/setup-keys/") or path.startswith("/setup-keys/"):
        real = [world.key_ids["one_off"], world.key_ids["revoked"]]
    elif path.endswith("/revoke"):
        real = [world.d.peer_id or ""]  # only D may be revoked: A, B and C keep their credentials working
    elif path.startswith("/api/v1/peers/") or path.startswith("/peers/"):
        real = [world.a.peer_id or "", world.d.peer_id or ""]
    elif path.startswith("/static/"):
        real = ["dashboard.css", "dashboard.js", "%2e%2e%2fapp.py"]
    return st.one_of(garbage, st.sampled_from(real), _poisoned(st.sampled_from(real)).map(_quote)) if real else garbage


def _queries(world: World, route: Route) -> st.SearchStrategy[str]:
    keys = st.sampled_from(("kind", "peer", "since", "before_id", "after_id", "limit", "next", "q", "sort", "dir"))
    values = st.one_of(
        _strings,
        st.sampled_from([n for n in NASTY_INTEGERS if n < 10**100]).map(str),  # a request line stays < 8190 bytes
        st.sampled_from(("nan", "inf", "-inf", "1e999", "-0", "1001", "1000", "0x10", "1_000", "٣", " 5 ")),
        st.sampled_from(world.fixed_secrets) if route.auth != "dashboard" else st.just("x"),
        _near((*sorted(audit.KINDS), world.a.peer_id or "", world.d.peer_id or "", "ok-name", "2030-01-01T00:00")),
    )
    pairs = st.lists(st.tuples(keys | st.text(max_size=6), values), max_size=4).map(
        lambda items: "&".join(f"{_quote(k)}={_quote(v)}" for k, v in items)
    )
    # The audit filters with the values they look for, poisoned or past 32 and 64 bits: what reaches the database.
    integers = st.sampled_from(BIG_INTEGERS).map(str)
    audit_values = _near((*sorted(audit.KINDS), world.a.peer_id or "", "ok-name"))
    audit_filters = st.fixed_dictionaries(
        {}, optional={"kind": audit_values, "peer": audit_values, "before_id": integers, "after_id": integers}
    ).map(lambda items: "&".join(f"{k}={_quote(v)}" for k, v in items.items()))
    general = st.one_of(
        st.just(""),
        pairs,
        audit_filters,
        st.sampled_from(_QUERY_FRAGMENTS),
        st.tuples(pairs, st.sampled_from(_QUERY_FRAGMENTS)).map("&".join),
    )
    return audit_filters | general if route.path.endswith("/audit") else general


def _shaped(fields: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[bytes]:
    """A JSON object of the route's own fields (some), values of any kind, perhaps with one unknown field."""
    known = st.fixed_dictionaries({}, optional=fields)
    extra = st.dictionaries(_strings, json_values, max_size=1)
    return st.tuples(known, extra, st.booleans()).map(lambda t: _dumps({**t[0], **t[1]} if t[2] else t[0]))


def _bodies(world: World, route: Route, signer_public: str) -> st.SearchStrategy[bytes]:
    secrets = st.sampled_from(world.fixed_secrets)
    generic = st.one_of(json_values.map(_dumps), st.sampled_from(RAW_BODIES), st.binary(max_size=64))
    path, value = route.path, json_values
    endpoint = st.one_of(
        value,
        st.fixed_dictionaries(
            {
                "host": st.one_of(_strings, _near(("10.0.0.1", "fe80::1%eth0", "1.2.3.4", "::ffff:0:0%x"))),
                "port": st.integers(1, 65535) | _numbers,
            }
        ),
    )
    names = st.one_of(value, _near(("ok-name", "a" * 64, "a" * 65, "_x", "x.y:z@w", "ops")))
    groups = st.one_of(value, st.lists(names, max_size=5))
    shaped: st.SearchStrategy[bytes] | None = None
    if path == "/api/v1/enrol":
        shaped = _shaped(
            {
                "setup_key": st.one_of(value, secrets, _near(list(world.keys.values()))),
                "public_key": st.one_of(
                    value, st.just(signer_public), _near((world.a.public_key, signer_public, *ODD_KEYS))
                ),
                "name": names,
                "endpoint": endpoint,
            }
        )
    elif path == "/api/v1/token/refresh":
        refresh = [world.a.refresh_token or "", world.c.refresh_token or "", world.extra_tokens["used_refresh"]]
        shaped = _shaped({"refresh_token": st.one_of(value, secrets, _near(refresh))})
    elif path == "/api/v1/peer/endpoint":
        shaped = endpoint.map(_dumps)
    elif path == "/api/v1/setup-keys":
        shaped = _shaped(
            {
                "name": names,
                "reusable": st.one_of(value, st.booleans()),
                "usage_limit": _numbers,
                "expires_in": _numbers,
                "auto_groups": groups,
                "approval_required": st.one_of(value, st.booleans()),
                "ephemeral": st.one_of(value, st.booleans()),
                "ephemeral_timeout": _numbers,
            }
        )
    elif path == "/api/v1/peers/{id}":
        shaped = _shaped({"name": names, "groups": groups})
    elif path == "/api/v1/policy":
        rule = st.fixed_dictionaries(
            {},
            optional={
                "name": names,
                "src": groups,
                "dst": groups,
                "proto": st.one_of(value, _near(("tcp", "udp", "icmp", "all", "TCP"))),
                "ports": st.one_of(value, st.lists(st.one_of(value, _near(("22", "1-65535", "0", "9-1"))))),
                "action": st.one_of(value, _near(("accept", "deny"))),
            },
        )
        shaped = _shaped({"groups": groups, "acls": st.one_of(value, st.lists(rule, max_size=3))})
    elif route.auth == "dashboard" or path == "/login":
        text = st.one_of(
            _strings,
            st.sampled_from(NASTY_INTEGERS).map(str),
            _near(("yes", "on", "reusable", "/peers", "//evil.example", "/\\evil", "a, b\nc", "acls: []", "ok-name")),
        )
        tokens_ = (world.h.running.admin_token, world.extra_tokens["admin_revoked"], world.keys["one_off"])
        form_fields: dict[str, st.SearchStrategy[str]] = {
            name: text
            for name in ("next", "name", "groups", "kind", "usage_limit", "expires_in", "ephemeral", "confirm")
        }
        form_fields["csrf"] = st.sampled_from((world.csrf, world.csrf, "", "x" * 43))
        form_fields["token"] = st.one_of(text, st.sampled_from(tokens_))
        form_fields["policy"] = st.one_of(text, json_values.map(json.dumps))
        form = st.tuples(st.fixed_dictionaries({}, optional=form_fields), st.dictionaries(_strings, text, max_size=1))
        shaped = form.map(
            lambda t: urllib.parse.urlencode({**t[0], **t[1]}, encoding="utf-8", errors="surrogatepass").encode()
        )
    return st.one_of(generic, shaped) if shaped is not None else generic


@st.composite
def attempts(draw: st.DrawFn, world: World, routes: Sequence[Route]) -> Attempt:
    route = draw(st.sampled_from(routes))
    stray = draw(st.integers(0, 19)) == 0 and route.auth != "dashboard"
    path = draw(st.sampled_from(STRAY_PATHS)) if stray else route.path
    if "{" in path:
        param = draw(_path_params(world, route))
        path = re.sub(r"\{\w+\}", lambda _match: param, path)
    method = route.method if draw(st.integers(0, 4)) else draw(st.sampled_from(METHODS))
    # Half of the attempts carry the route's own credentials (so that the body is looked at), half any.
    proper = {"admin": ["admin"], "peer": ["peer", "peer_pending", "peer_c"], "none": ["none"]}.get(route.auth)
    if route.path == "/api/v1/enrol":
        proper = ["signer"]
    elif route.path == "/api/v1/token/refresh":
        proper = ["peer", "peer_c"]
    credential = draw(st.sampled_from(proper or CREDENTIALS) | st.sampled_from(CREDENTIALS))
    # By design, not tested here: a valid logout deletes peer A, and a dashboard logout ends the session; both
    # answer 2xx whatever the body (the lifecycle and dashboard tests cover them).
    if credential == "peer" and route.path == "/api/v1/peer/logout":
        credential = "peer_expired"
    cookie = (
        draw(st.sampled_from(("none", "garbage", "session")) | st.just("session"))
        if route.auth == "dashboard"
        else "none"
    )
    if cookie == "session" and route.path == "/logout":
        cookie = "garbage"
    signer = draw(st.binary(min_size=32, max_size=32))
    signer_public = PrivateKey(signer).public_key().to_base64()
    return Attempt(
        method=method,
        path=path,
        query=draw(_queries(world, route)),
        body=draw(_bodies(world, route, signer_public)),
        credential=credential,
        content_type=draw(st.sampled_from(CONTENT_TYPES)),
        content_encoding=draw(st.sampled_from(CONTENT_ENCODINGS)),
        garbage=draw(_header_bytes()),
        signer=signer,
        cookie=cookie,
        garbage_cookie=draw(_header_bytes(40).filter(lambda raw: b";" not in raw and b"," not in raw)),
        api=route.auth != "dashboard" and route.path not in ("/login", "/static/{name}", "/favicon.ico"),
    )


def _fuzz(world: World, routes: Sequence[Route], examples: int) -> None:
    """Each route gets its own examples: drawn from all routes at once, a few hundred would cluster on a few."""
    for route in routes:

        @settings(FUZZ, max_examples=examples)
        @given(attempts(world, [route]))
        def prop(attempt: Attempt) -> None:
            world.run(world.check(attempt))

        prop()


# --- the properties ------------------------------------------------------------------------------------------------


def test_route_table_is_the_servers(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    def body(world: World) -> None:
        app = world.h.running.runner.app
        served = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
        listed = {(route.method, route.path) for route in (*API_ROUTES, *DASHBOARD_ROUTES)}
        assert served - listed == {("GET", "/events")}  # the never-ending stream (DASHBOARD_ROUTES)
        assert listed <= served

    run_world(tmp_path, caplog, body)


@pytest.mark.parametrize("part", ["peer", "admin"])
def test_api_routes_survive_any_input(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, part: str, backend: Backend
) -> None:
    routes = [route for route in API_ROUTES if (route.auth == "admin") == (part == "admin")]
    run_world(tmp_path, caplog, lambda world: _fuzz(world, routes, API_EXAMPLES[backend.name]), backend)


def test_dashboard_routes_survive_any_input(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: Backend
) -> None:
    run_world(tmp_path, caplog, lambda world: _fuzz(world, DASHBOARD_ROUTES, DASHBOARD_EXAMPLES[backend.name]), backend)


# --- the defects the properties found, pinned -------------------------------------------------------------------
# Each on both backends, but for those refused before any query is made (an encoding, a form, a policy's YAML).


def _error(reply: Reply) -> str:
    code = reply.json()["error"]
    assert isinstance(code, str)
    return code


def test_a_token_that_is_not_utf8_is_refused_not_a_500(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: Backend
) -> None:
    """Was a 500: aiohttp decodes a header's bytes with surrogateescape and ``secret_hash`` encoded the lone
    surrogates as strict UTF-8 (UnicodeEncodeError); a JSON ``"\\ud800"`` setup key did the same at enrolment (it is
    now refused with every other JSON string no database can hold, below)."""

    def body(world: World) -> None:
        for raw in (b"Bearer \xff\xfe", b"Bearer wgat_\xc3"):
            for path in ("/api/v1/peers", "/api/v1/policy"):
                attempt = Attempt("GET", path, "", b"", "none", headers=((b"Authorization", raw),))
                reply = world.run(world.check(attempt))
                assert reply.status == 401 and _error(reply) == "invalid_token"
        signer = bytes(range(32))
        public = PrivateKey(signer).public_key().to_base64()
        enrol = json.dumps({"setup_key": "\ud800", "public_key": public}).encode()
        reply = world.run(world.check(Attempt("POST", "/api/v1/enrol", "", enrol, "signer", signer=signer)))
        assert reply.status == 400 and _error(reply) == "invalid_value"

    run_world(tmp_path, caplog, body, backend)


def test_audit_ids_out_of_range_are_refused_not_a_500(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: Backend
) -> None:
    """Was a 500: ``before_id=99999999999999999999`` reached SQLite (OverflowError: a Python int past 64 bits), and
    anything past 2**31 - 1 would reach PostgreSQL's 32-bit ``audit.id``; the dashboard's audit page passes it on."""

    def body(world: World) -> None:
        for query in ("before_id=99999999999999999999", "after_id=2147483648", "before_id=-1", f"after_id={10**30}"):
            reply = world.run(world.check(Attempt("GET", "/api/v1/audit", query, b"", "admin")))
            assert reply.status == 400 and _error(reply) == "invalid_value", reply.text
        reply = world.run(world.check(Attempt("GET", "/api/v1/audit", "after_id=2147483647", b"", "admin")))
        assert reply.status == 200 and reply.json() == []
        page = Attempt("GET", "/audit", "before_id=99999999999999999999", b"", "none", cookie="session", api=False)
        reply = world.run(world.check(page))
        assert reply.status == 400 and "before_id and after_id must be" in reply.text

    run_world(tmp_path, caplog, body, backend)


def test_a_content_encoding_is_refused_not_a_500(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """Was a 500 (``Content-Encoding: gzip`` with a body that is not gzip: aiohttp's RequestPayloadError in the
    handler), a plain-text 400 from aiohttp (``deflate``), or an error logged with a traceback by aiohttp when the
    route does not read the body. Bodies are now read as sent: an encoded one is refused, 415."""

    def body(world: World) -> None:
        setup = _dumps({"name": "gz"})
        for encoding, raw in ((b"gzip", b"{"), (b"deflate", b"{"), (b"gzip", gzip.compress(setup)), (b"br", setup)):
            headers = ((b"Content-Type", b"application/json"), (b"Content-Encoding", encoding))
            attempt = Attempt("POST", "/api/v1/setup-keys", "", raw, "admin", headers=headers)
            reply = world.run(world.check(attempt))
            assert reply.status == 415 and _error(reply) == "unsupported_encoding", reply.text
        # A route that never reads the body: answered as without one, nothing logged as an error.
        for path in ("/api/v1/", "/api/v1/peers"):
            attempt = Attempt("GET", path, "", b"\xff\xfe", "admin", headers=((b"Content-Encoding", b"gzip"),))
            assert world.run(world.check(attempt)).status in (200, 404)
        # The identity coding is no coding.
        identity = ((b"Content-Encoding", b"identity"),)
        reply = world.run(world.check(Attempt("POST", "/api/v1/setup-keys", "", setup, "admin", headers=identity)))
        assert reply.status == 201

    run_world(tmp_path, caplog, body)


def test_a_form_that_is_not_one_is_refused_not_a_500(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """Was a 500: the dashboard's login (and its actions) read the form with ``request.post()``, which raises
    ValueError for a multipart body without a boundary or not starting with it."""

    def body(world: World) -> None:
        for content_type in (b"multipart/form-data", b"multipart/form-data; boundary=zz"):
            headers = ((b"Content-Type", content_type),)
            for path, cookie in (("/login", "none"), ("/setup-keys", "session")):
                attempt = Attempt("POST", path, "", b"token=x", "none", cookie=cookie, api=False, headers=headers)
                reply = world.run(world.check(attempt))
                assert reply.status == 400 and "The form could not be read." in reply.text, reply.text[:300]

    run_world(tmp_path, caplog, body)


def test_a_secret_in_a_path_is_not_logged(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: Backend
) -> None:
    """Was a leak: the refusal log line named the request's path, so a setup key or token pasted where an id goes
    (``DELETE /api/v1/setup-keys/<the key>``) was written to the log. It names the route's template now."""

    def body(world: World) -> None:
        key = world.keys["one_off"]
        for credential in ("admin", "none"):
            attempt = Attempt("DELETE", f"/api/v1/setup-keys/{key}", "", b"", credential)
            assert world.run(world.check(attempt)).status in (401, 404)
        messages = [record.getMessage() for record in caplog.records]
        assert "refused DELETE /api/v1/setup-keys/{id}: 401 missing_token" in messages
        attempt = Attempt("POST", f"/peers/{key}/approve", "", f"csrf={world.csrf}".encode(), "none", cookie="session")
        attempt = dataclasses.replace(attempt, api=False, content_type=b"application/x-www-form-urlencoded")
        assert world.run(world.check(attempt)).status == 404
        assert "refused POST /peers/{id}/approve: 404 not_found" in [record.getMessage() for record in caplog.records]

    run_world(tmp_path, caplog, body, backend)


# What refuses a policy nested too deep: our check of the parser's events (policy._check_depth), or, from PyYAML
# 6.0.4 on, the parser itself, which now has a nesting limit of its own and stops first.
DEEP_POLICY_REFUSALS: Final = (
    {"error": "invalid_policy", "detail": "line 1: nested too deeply"},
    {"error": "invalid_policy", "detail": "line 1: not valid YAML (exceeded maximum nesting depth)"},
)


def test_a_policy_nested_deep_is_refused_not_a_crash(tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    """Was a crash of the whole server (a segfault): libyaml's composer recurses in C once per nesting level, and
    100,000 ``[`` (100 KB, well under the 1 MiB limit) overflowed the stack of the thread parsing the policy. Found
    by a wider run of the properties (more examples per route); the API and the dashboard both refuse it now."""

    def body(world: World) -> None:
        for raw in (b"[" * 100_000, b"- " * 100_000 + b"x", b"acls: " + b"{a: " * 100_000):
            headers = ((b"Content-Type", b"application/yaml"),)
            reply = world.run(world.check(Attempt("PUT", "/api/v1/policy", "", raw, "admin", headers=headers)))
            assert reply.status == 400 and reply.json() in DEEP_POLICY_REFUSALS
        form = urllib.parse.urlencode({"csrf": world.csrf, "policy": "[" * 100_000}).encode()
        page = Attempt("POST", "/policy", "", form, "none", b"application/x-www-form-urlencoded", cookie="session")
        reply = world.run(world.check(dataclasses.replace(page, api=False)))
        assert reply.status == 400
        assert any(str(refusal["detail"]).split(": ", 1)[1] in reply.text for refusal in DEEP_POLICY_REFUSALS)

    run_world(tmp_path, caplog, body)


def test_text_no_database_can_hold_is_refused_not_a_500(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: Backend
) -> None:
    """Was a 500 on PostgreSQL, which refuses a NUL in text (asyncpg's CharacterNotInRepertoireError, "invalid byte
    sequence for encoding UTF8: 0x00"): a NUL in a path's id (``DELETE /api/v1/setup-keys/%00``, ``POST
    /api/v1/peers/%00/approve``, a real id with a NUL inside: found by the properties on PostgreSQL) and in an audit
    filter (``?kind=a%00b``, ``?peer=<id>%00``: read off the handler). Refused on both backends now, 400
    ``invalid_value``. A lone surrogate cannot come through a path or a query: an undecodable ``%ED%A0%80`` stays as
    typed in a path (no such id, 404) and becomes U+FFFD in a query (no such kind)."""

    def body(world: World) -> None:
        a, d = world.a.peer_id or "", world.d.peer_id or ""
        one_off = world.key_ids["one_off"]
        refused = [
            Attempt("DELETE", "/api/v1/setup-keys/%00", "", b"", "admin"),
            Attempt("DELETE", f"/api/v1/setup-keys/{one_off}%00", "", b"", "admin"),
            Attempt("POST", "/api/v1/peers/%00/approve", "", b"", "admin"),
            Attempt("POST", f"/api/v1/peers/{d[:10]}%00{d[10:]}/revoke", "", b"", "admin"),
            Attempt("PATCH", f"/api/v1/peers/{a}%00", "", _dumps({"name": "ok-name"}), "admin"),
            Attempt("GET", "/api/v1/audit", "kind=a%00b", b"", "admin"),
            Attempt("GET", "/api/v1/audit", "kind=enrol%00", b"", "admin"),
            Attempt("GET", "/api/v1/audit", f"peer={a}%00", b"", "admin"),
        ]
        for attempt in refused:
            reply = world.run(world.check(attempt))
            assert reply.status == 400 and _error(reply) == "invalid_value", (attempt.target, reply.text)
            assert "must not contain a NUL character or a lone surrogate" in reply.json()["detail"]
        for path in ("/api/v1/setup-keys/%ED%A0%80", "/api/v1/setup-keys/a%ED%B0%80"):
            assert world.run(world.check(Attempt("DELETE", path, "", b"", "admin"))).status == 404
        reply = world.run(world.check(Attempt("GET", "/api/v1/audit", "kind=%ED%A0%80&peer=%ED%A0%80", b"", "admin")))
        assert reply.status == 200 and reply.json() == []
        # The ids as they are still work.
        assert world.run(world.check(Attempt("GET", "/api/v1/audit", f"peer={a}", b"", "admin"))).json()
        assert world.run(world.check(Attempt("POST", f"/api/v1/peers/{a}/approve", "", b"", "admin"))).status == 200

    run_world(tmp_path, caplog, body, backend)


def test_a_json_string_no_database_can_hold_is_refused_not_a_500(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: Backend
) -> None:
    """Was a 500: an endpoint host's zone may be any text to ``ipaddress`` (``"fe80::1%\\u0000"``), and it was stored:
    PostgreSQL refuses the NUL; a lone surrogate there (``"fe80::1%\\ud800"``) has no UTF-8, which both drivers need
    (SQLite's too); read off ``_endpoint``, then checked by hand on both backends. Every string of a JSON body (keys
    too) is checked now, 400 ``invalid_value``. And an endpoint host
    is bounded as stored (``peers.endpoint_host`` is a VARCHAR(45), which PostgreSQL enforces): Python 3.13 writes an
    IPv4-mapped address dotted, ``"::ffff:0:0%<34 x>"`` (45 characters) as 49."""

    def body(world: World) -> None:
        for host in ("fe80::1%\x00", "fe80::1%\ud800", "fe80::1%eth\udfff0", "10.0.0.1\x00"):
            raw = _dumps({"host": host, "port": 51820})
            reply = world.run(world.check(Attempt("POST", "/api/v1/peer/endpoint", "", raw, "peer")))
            assert reply.status == 400 and _error(reply) == "invalid_value", (host, reply.text)
        signer = bytes(range(1, 33))
        public = PrivateKey(signer).public_key().to_base64()
        for enrol in (
            {
                "setup_key": world.keys["reusable"],
                "public_key": public,
                "endpoint": {"host": "fe80::1%\ud800", "port": 1},
            },
            {"setup_key": world.keys["reusable"], "public_key": public, "name": "ok\x00name"},
            {"setup_key": world.keys["reusable"], "public_key": public, "na\x00me": "x"},
        ):
            attempt = Attempt("POST", "/api/v1/enrol", "", _dumps(enrol), "signer", signer=signer)
            reply = world.run(world.check(attempt))
            assert reply.status == 400 and _error(reply) == "invalid_value", reply.text
        for bad in ({"name": "k\x00"}, {"name": "k", "auto_groups": ["ops", "\udc00"]}):
            reply = world.run(world.check(Attempt("POST", "/api/v1/setup-keys", "", _dumps(bad), "admin")))
            assert reply.status == 400 and _error(reply) == "invalid_value", reply.text
        # The zone as it is, and the longest host there is room for.
        long_host = "::ffff:0:0%" + "a" * 34
        for host in ("fe80::1%eth0", long_host):
            raw = _dumps({"host": host, "port": 51820})
            reply = world.run(world.check(Attempt("POST", "/api/v1/peer/endpoint", "", raw, "peer")))
            expected = 400 if len(str(ipaddress.ip_address(host))) > MAX_HOST else 204
            assert reply.status == expected, (host, reply.text)

    run_world(tmp_path, caplog, body, backend)


def test_the_dashboard_refuses_text_no_database_can_hold(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, backend: Backend
) -> None:
    """Was a 500 on PostgreSQL through the dashboard: its actions and its audit page hand the path's id and the
    filters to the API's handlers, which now refuse a NUL there; the dashboard shows the refusal (400)."""

    def body(world: World) -> None:
        a = world.a.peer_id or ""
        form = b"application/x-www-form-urlencoded"
        actions: tuple[tuple[str, dict[str, str]], ...] = (
            ("/peers/%00/approve", {}),
            (f"/peers/{a}%00/update", {"name": "ok-name"}),
            ("/peers/%00/revoke", {"confirm": "yes"}),
            ("/setup-keys/%00/revoke", {"confirm": "yes"}),
        )
        for path, fields in actions:
            raw = urllib.parse.urlencode({"csrf": world.csrf, **fields}).encode()
            attempt = Attempt("POST", path, "", raw, "none", form, cookie="session", api=False)
            reply = world.run(world.check(attempt))
            assert reply.status == 400 and "must not contain a NUL character" in reply.text, (path, reply.text[:300])
        for query in ("kind=a%00b", f"peer={a}%00"):
            page = Attempt("GET", "/audit", query, b"", "none", cookie="session", api=False)
            reply = world.run(world.check(page))
            assert reply.status == 400 and "must not contain a NUL character" in reply.text, (query, reply.text[:300])

    run_world(tmp_path, caplog, body, backend)
