"""The agent's HTTP and WebSocket client for the peer endpoints of the management API.

Theory of operation: ``ManagementClient`` speaks the peer half of ``docs/management-api.md`` over one aiohttp
session. Every request carries the proof-of-possession headers (``wgpy.management.proof.proof_headers``) made
with the device's private key, so a stolen token is useless on its own; authenticated requests add the access
token, which lives only in this object's memory. The refresh token is handed in by the caller and every new one
handed back through ``on_refresh_token`` *before* the new access token is used (it is single use: losing the new
one would lock the device out, and presenting the old one twice revokes the whole family at the server).

Trust: the server is trusted for nothing that matters. ``fetch_info`` accepts the proof key only if its signature
verifies against the management key pinned at enrolment; a map is never applied here at all (the caller hands it
to ``MeshController.apply_network_map``).

Errors: every failure is a ``ManagementError`` whose ``str`` is one line made of our words, the HTTP status, the
API's error code and its (sanitised, shortened) detail; never a token, a setup key, a proof or a traceback.
``retryable`` says whether trying again later can help (connection problems, 5xx, 429); ``fatal`` says the
credentials are dead (revoked peer, refused refresh token).

When to retry and when to refresh is decided in ``rules.py`` (pure).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from yarl import URL

from .. import crypto
from ..crypto import Ed25519PublicKey
from ..errors import ConfigError
from ..keys import PrivateKey, PublicKey
from ..management.proof import NONCE_SIZE, ProofError, proof_headers
from .rules import Backoff, refresh_delay, token_expiry

__all__ = [
    "Backoff",
    "EnrolResult",
    "ManagementClient",
    "ManagementError",
    "MapStream",
    "ServerInfo",
    "token_expiry",
]

logger = logging.getLogger("wgpy.agent")

REQUEST_TIMEOUT: Final = 15.0  # seconds for one HTTP request (ours)
WS_HEARTBEAT: Final = 15.0  # seconds between WebSocket pings; a missing pong closes the connection (ours)
MAX_MESSAGE: Final = 16 * 1024 * 1024 + 4096  # bytes of one WebSocket message (a map is at most 16 MiB)
MAX_RESPONSE: Final = 17 * 1024 * 1024  # bytes of an HTTP response body read at most
_TRANSIENT_CODES: Final = frozenset({"stale_proof", "replayed_proof", "busy"})  # proof.py error codes
_DETAIL_LIMIT: Final = 200  # characters of a server's error detail shown
_STATUS_WORDS: Final = {
    400: "bad request",
    401: "not authenticated",
    403: "forbidden",
    404: "not found",
    409: "conflict",
    413: "request too large",
    429: "too many requests",
}


class ManagementError(Exception):
    """A request to the management server failed; ``str`` is one line, safe to print and log."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool = False,
        notice: object = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retryable = retryable
        self.notice = notice  # a 403's signed revocation notice, unverified (``wgpy.mesh.revocation``)

    @property
    def fatal(self) -> bool:
        """The peer's credentials are dead: revoked, deleted, or the refresh token refused (never when retryable)."""
        return not self.retryable and (self.status in (401, 403) or self.code == "revoked")


def _printable(text: str, limit: int = _DETAIL_LIMIT) -> str:
    cleaned = "".join(char if " " <= char <= "~" else "?" for char in text.replace("\n", " "))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """``GET /api/v1/info``, checked: the proof key's signature verified against the pinned management key."""

    proof_key: PublicKey
    network: str


@dataclass(frozen=True, slots=True)
class EnrolResult:
    """``POST /api/v1/enrol``: who we are now, and the first map (``None`` while approval is pending)."""

    peer_id: str
    address: str
    name: str | None
    refresh_token: str
    map_document: Mapping[str, object] | None

    def __repr__(self) -> str:
        return f"EnrolResult(peer_id={self.peer_id!r}, address={self.address!r}, refresh_token=<hidden>)"


class ManagementClient:
    """The peer endpoints of the management API, every request signed with proof of possession."""

    def __init__(
        self,
        url: str | Sequence[str],
        private_key: PrivateKey,
        management_key: Ed25519PublicKey,
        *,
        proof_key: PublicKey | None = None,
        refresh_token: str | None = None,
        on_refresh_token: Callable[[str], None] | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        Args:
            url: The server's base URL (``http://host:port``, maybe with a path prefix), or several replicas'
                (a sequence, or one string with commas): requests go to one until it cannot be reached, then to
                the next (``failover``), with the same tokens.
            private_key: The device's WireGuard key: it signs the proofs and never leaves this process.
            management_key: The pinned Ed25519 key; the proof key must be signed by it.
            proof_key: The server's proof key, if known already (after enrolment), else ``fetch_info`` gets it.
            refresh_token: The stored refresh token, for ``refresh``.
            on_refresh_token: Called with each new refresh token before it is used (persist it there).
        """
        texts = [part.strip() for part in url.split(",")] if isinstance(url, str) else [str(u).strip() for u in url]
        bases: list[URL] = []
        for text in texts:
            try:
                base = URL(text)
            except (ValueError, TypeError):
                raise ConfigError("the management URL is not a URL") from None
            if base.scheme not in ("http", "https") or not base.host:
                raise ConfigError("the management URL must be http://HOST[:PORT] or https://HOST[:PORT]")
            bases.append(base)
        if not bases:
            raise ConfigError("no management URL")
        self.base_urls: tuple[URL, ...] = tuple(bases)
        self._current = 0
        self._private_key = private_key
        self.management_key = management_key
        self.proof_key = proof_key
        self._refresh_token = refresh_token
        self._on_refresh_token = on_refresh_token
        self._access_token: str | None = None
        self._access_refresh_at = 0.0
        self._access_expires_at = 0.0
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._rng = rng
        self._refresh_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ManagementClient({str(self.base_url)!r}, private_key=<hidden>, tokens=<hidden>)"

    @property
    def base_url(self) -> URL:
        """The replica requests go to now."""
        return self.base_urls[self._current]

    def failover(self) -> None:
        """Send the next requests to the next replica in the list (no-op with one URL)."""
        if len(self.base_urls) > 1:
            self._current = (self._current + 1) % len(self.base_urls)
            logger.info("switching to the management server %s", self.base_url)

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> ManagementClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def has_access_token(self) -> bool:
        return self._access_token is not None and self._clock() < self._access_expires_at

    @property
    def access_refresh_at(self) -> float:
        """Unix time at which the access token should be refreshed (0 without one)."""
        return self._access_refresh_at if self._access_token is not None else 0.0

    def forget_access_token(self) -> None:
        self._access_token = None

    # --- requests -------------------------------------------------------------------------------------------------

    def _url(self, path: str) -> URL:
        prefix = self.base_url.path.rstrip("/")
        return self.base_url.with_path(prefix + path, encoded=False)

    def _headers(self, method: str, url: URL, body: bytes, *, token: bool) -> dict[str, str]:
        if self.proof_key is None:
            raise ManagementError("the server's proof key is not known yet (fetch /api/v1/info first)")
        try:
            headers = proof_headers(
                self._private_key,
                self.proof_key,
                method,
                url.raw_path_qs,
                body,
                now=self._clock(),
                nonce=self._rng(NONCE_SIZE),
            )
        except ProofError as exc:
            raise ManagementError(f"cannot sign the request: {exc.detail}") from None
        if token:
            if self._access_token is None:
                raise ManagementError("no access token")
            headers["Authorization"] = f"Bearer {self._access_token}"
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        payload: Mapping[str, object] | None = None,
        *,
        token: bool,
        signed: bool = True,
    ) -> tuple[int, Any]:
        # A replica that refuses the connection has seen nothing: the next one is asked at once. Any other failure
        # (a timeout, a dropped connection, 502-504) may come after the request was handled (a refresh token
        # spent): it is raised as retryable, and only the next attempt goes to the next replica.
        for attempt in range(len(self.base_urls)):
            try:
                return await self._request_once(method, path, what, payload, token=token, signed=signed)
            except _Unreachable as exc:
                self.failover()
                if attempt == len(self.base_urls) - 1:
                    raise exc.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request_once(
        self,
        method: str,
        path: str,
        what: str,
        payload: Mapping[str, object] | None,
        *,
        token: bool,
        signed: bool,
    ) -> tuple[int, Any]:
        url = self._url(path)
        body = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode("utf-8")
        headers = self._headers(method, url, body, token=token) if signed else {}
        try:
            async with self._http().request(
                method, url, data=body or None, headers=headers, allow_redirects=False
            ) as response:
                raw = await response.content.read(MAX_RESPONSE)
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc, what, url) from None
        value: Any = None
        if raw:
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):  # not JSON, or nested too deep to be an answer of ours
                value = None
        if 200 <= status < 300:
            return status, value
        if status in (502, 503, 504):
            self.failover()
        raise self._error(what, status, value)

    def _error(self, what: str, status: int, value: object) -> ManagementError:
        code = detail = notice = None
        if isinstance(value, dict):
            code = value.get("error") if isinstance(value.get("error"), str) else None
            detail = value.get("detail") if isinstance(value.get("detail"), str) else None
            notice = value.get("notice")
        words = _STATUS_WORDS.get(status, "server error" if status >= 500 else "unexpected answer")
        line = f"cannot {what}: the management server answered {status} {words}"
        if code:
            line += f" ({_printable(code, 40)})"
        if detail:
            line += f": {_printable(detail)}"
        elif status == 404:
            line += f": is {self.base_url} a wgpy management server?"
        # A proof refused for its timestamp or nonce says nothing about our credentials (a clock off by more than
        # the proof window, a replay cache that is full): trying again later may work, so it is not fatal.
        transient = code in _TRANSIENT_CODES
        return ManagementError(
            line, status=status, code=code, retryable=status >= 500 or status == 429 or transient, notice=notice
        )

    def _take_tokens(self, access: object, refresh: object) -> None:
        if not isinstance(access, str) or not isinstance(refresh, str) or not access or not refresh:
            raise ManagementError("the management server sent no tokens")
        self._refresh_token = refresh
        if self._on_refresh_token is not None:
            self._on_refresh_token(refresh)  # persisted first: it is the only one that will work from now on
        self._access_token = access
        # The token's own clock (iat) may differ from ours: only its lifetime is used, counted from now.
        now = self._clock()
        times = token_expiry(access)
        lifetime = max(1.0, times[1] - times[0]) if times is not None else 3600.0
        self._access_expires_at = now + lifetime
        self._access_refresh_at = now + refresh_delay(lifetime)

    # --- endpoints ------------------------------------------------------------------------------------------------

    async def fetch_info(self) -> ServerInfo:
        """``GET /api/v1/info``; the proof key is accepted only if the pinned management key signed it.

        Raises:
            ManagementError: unreachable, malformed, or signed by another key (not retryable then).
        """
        _, value = await self._request("GET", "/api/v1/info", "get the server's keys", token=False, signed=False)
        if not isinstance(value, dict):
            raise ManagementError("the management server's /api/v1/info answer is not a JSON object")
        try:
            proof_raw = base64.b64decode(str(value["proof_key"]), validate=True)
            signature = base64.b64decode(str(value["proof_key_signature"]), validate=True)
            network = str(value.get("network", "100.64.0.0/16"))
        except (KeyError, ValueError, binascii.Error):
            raise ManagementError("the management server's /api/v1/info answer is malformed") from None
        if len(proof_raw) != 32 or not crypto.ed25519_verify(self.management_key, signature, proof_raw):
            raise ManagementError(
                "the management server's proof key is not signed by the pinned management key"
                " (wrong --management-key, or not the server you enrolled with)"
            )
        self.proof_key = PublicKey(proof_raw)
        return ServerInfo(self.proof_key, network)

    async def enrol(
        self, setup_key: str, name: str | None = None, endpoint: tuple[str, int] | None = None
    ) -> EnrolResult:
        """``POST /api/v1/enrol`` with the public key only; keeps the access token, returns the rest."""
        payload: dict[str, object] = {"setup_key": setup_key, "public_key": self._private_key.public_key().to_base64()}
        if name is not None:
            payload["name"] = name
        if endpoint is not None:
            payload["endpoint"] = {"host": endpoint[0], "port": endpoint[1]}
        _, value = await self._request("POST", "/api/v1/enrol", "enrol", payload, token=False)
        try:
            peer = value["peer"]
            peer_id, address = peer["id"], peer["address"]
            document = value.get("map")
            if not isinstance(peer_id, (str, int)) or not isinstance(address, str):
                raise TypeError("peer")
            if document is not None and not isinstance(document, dict):
                raise TypeError("map")
            name_value = peer.get("name")
        except (KeyError, TypeError):
            raise ManagementError("the management server's enrolment answer is malformed") from None
        self._take_tokens(value.get("access_token"), value.get("refresh_token"))
        assert self._refresh_token is not None  # noqa: S101 - set by _take_tokens
        return EnrolResult(
            str(peer_id),
            address.split("/")[0],
            name_value if isinstance(name_value, str) else None,
            self._refresh_token,
            document,
        )

    async def refresh(self) -> None:
        """``POST /api/v1/token/refresh``: a new access token (memory) and refresh token (``on_refresh_token``)."""
        async with self._refresh_lock:
            if self._refresh_token is None:
                raise ManagementError("no refresh token: enrol again (wgpy logout --force, then wgpy up)", status=401)
            used = self._refresh_token
            _, value = await self._request(
                "POST", "/api/v1/token/refresh", "refresh the tokens", {"refresh_token": used}, token=False
            )
            if not isinstance(value, dict):
                raise ManagementError("the management server's refresh answer is malformed")
            self._take_tokens(value.get("access_token"), value.get("refresh_token"))

    async def ensure_access(self) -> None:
        """Refresh the access token if there is none or it is due."""
        if self._access_token is None or self._clock() >= self._access_refresh_at:
            await self.refresh()

    async def _authorized(
        self, method: str, path: str, what: str, payload: Mapping[str, object] | None = None
    ) -> tuple[int, Any]:
        await self.ensure_access()
        try:
            return await self._request(method, path, what, payload, token=True)
        except ManagementError as exc:
            if exc.status != 401:
                raise
        await self.refresh()  # the access token may have died early (server restart with new keys...): once more
        return await self._request(method, path, what, payload, token=True)

    async def get_map(self) -> Mapping[str, object]:
        """``GET /api/v1/peer/map``: the signed map document (apply it through the controller, never here)."""
        _, value = await self._authorized("GET", "/api/v1/peer/map", "get the network map")
        if not isinstance(value, dict):
            raise ManagementError("the management server's map answer is not a JSON object")
        return value

    async def report_endpoint(self, host: str, port: int) -> None:
        """``POST /api/v1/peer/endpoint``."""
        await self._authorized("POST", "/api/v1/peer/endpoint", "report the endpoint", {"host": host, "port": port})

    async def logout(self) -> None:
        """``POST /api/v1/peer/logout``: the server deletes the peer."""
        await self._authorized("POST", "/api/v1/peer/logout", "log out")

    @asynccontextmanager
    async def stream(self) -> AsyncIterator[MapStream]:
        """``GET /api/v1/peer/stream`` (WebSocket), with the token and a proof on the upgrade request."""
        await self.ensure_access()
        for attempt in range(len(self.base_urls)):
            url = self._url("/api/v1/peer/stream")
            try:
                ws = await self._connect_stream(url)
                break
            except _Unreachable as exc:
                self.failover()
                if attempt == len(self.base_urls) - 1:
                    raise exc.error from None
        try:
            yield MapStream(ws)
        finally:
            await ws.close()

    async def _connect_stream(self, url: URL) -> aiohttp.ClientWebSocketResponse:
        headers = self._headers("GET", url, b"", token=True)
        try:
            return await self._http().ws_connect(
                url, headers=headers, heartbeat=WS_HEARTBEAT, max_msg_size=MAX_MESSAGE, autoping=True
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                self.forget_access_token()
            if exc.status in (502, 503, 504):
                self.failover()
            words = _STATUS_WORDS.get(exc.status, "server error" if exc.status >= 500 else "unexpected answer")
            raise ManagementError(
                f"cannot subscribe to the network map: the management server answered {exc.status} {words}",
                status=exc.status,
                retryable=exc.status >= 500 or exc.status in (401, 409, 429),
            ) from None
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc, "subscribe to the network map", url) from None

    def _transport_error(self, exc: BaseException, what: str, url: URL) -> Exception:
        """What a request or stream that failed below HTTP raises: a refused connection (nothing was sent) is
        ``_Unreachable`` (the caller asks the next replica at once); a timeout or a broken connection may come after
        the server acted, so it is a retryable ``ManagementError`` and only the next attempt goes to the next
        replica. One line, our words, never a header or a body."""
        if isinstance(exc, TimeoutError):
            self.failover()
            return ManagementError(
                f"cannot {what}: the management server {url.origin()} did not answer in time", retryable=True
            )
        reason = _printable(str(exc) or type(exc).__name__, 120)
        error = ManagementError(
            f"cannot {what}: cannot reach the management server {url.origin()} ({reason})", retryable=True
        )
        if isinstance(exc, aiohttp.ClientConnectorError):
            return _Unreachable(error)
        self.failover()
        return error


class _Unreachable(Exception):
    """A replica refused the connection (nothing was sent): try the next one at once."""

    def __init__(self, error: ManagementError) -> None:
        super().__init__(str(error))
        self.error = error


class MapStream:
    """One WebSocket subscription: ``receive`` gives server messages (dicts), ``ack`` answers a map."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def receive(self) -> dict[str, object] | None:
        """The next JSON message, or ``None`` when the connection closed. Non-JSON frames are skipped."""
        while True:
            message = await self._ws.receive()
            if message.type == aiohttp.WSMsgType.TEXT:
                try:
                    value = json.loads(message.data)
                except (ValueError, RecursionError):
                    logger.warning("the management server sent a frame that is not JSON: ignored")
                    continue
                if isinstance(value, dict):
                    return value
                logger.warning("the management server sent a message that is not a JSON object: ignored")
                continue
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return None
            if message.type == aiohttp.WSMsgType.ERROR:
                return None
            # binary, ping/pong: nothing for us

    async def ack(self, serial: int) -> None:
        await self._ws.send_str(json.dumps({"type": "ack", "serial": serial}))

    async def ping(self) -> None:
        await self._ws.send_str(json.dumps({"type": "ping"}))

    async def send(self, message: dict[str, object]) -> None:
        """Any other agent frame (the NAT traversal's ``candidates`` and ``turn``, ``wgpy.nat.signal``)."""
        await self._ws.send_str(json.dumps(message))
