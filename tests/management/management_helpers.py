"""Helpers of the management server tests: a steppable clock, a test agent that signs its requests with proof
headers, and a harness running a whole server on 127.0.0.1 (``wgpy.management.server.running_server``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

from wgpy.keys import PrivateKey, PublicKey
from wgpy.management.proof import proof_headers
from wgpy.management.server import RunningServer, running_server

T = TypeVar("T")
START = 1_800_000_000.0


class Clock:
    """Wall seconds that tests step by hand (the server reads it through ``clock``)."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@dataclass
class Answer:
    status: int
    body: Any
    text: str


@dataclass
class Harness:
    running: RunningServer
    http: aiohttp.ClientSession
    clock: Clock
    peers: list[Agent] = field(default_factory=list)
    secrets: list[str] = field(
        default_factory=list, repr=False
    )  # every secret seen (setup keys, tokens, proofs, private keys)

    @property
    def url(self) -> str:
        return self.running.url

    async def admin(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> Answer:
        headers = {"Authorization": f"Bearer {token if token is not None else self.running.admin_token}"}
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.http.request(method, self.url + path, data=data, headers=headers) as response:
            text = await response.text()
            return Answer(response.status, _maybe_json(text), text)

    async def setup_key(self, **fields: object) -> str:
        answer = await self.admin("POST", "/api/v1/setup-keys", {"name": "k", **fields})
        assert answer.status == 201, answer.text
        key: str = answer.body["key"]
        self.secrets.append(key)
        return key

    def agent(self, seed: int | None = None) -> Agent:
        private = PrivateKey(os.urandom(32) if seed is None else bytes([seed]) * 32)
        agent = Agent(self, private)
        self.peers.append(agent)
        self.secrets.append(private.to_base64())
        return agent


def _maybe_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


@dataclass
class Agent:
    """A minimal agent: enrols, refreshes and calls peer routes with proof headers."""

    harness: Harness
    private: PrivateKey
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    peer_id: str | None = None
    last_headers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def public_key(self) -> str:
        return self.private.public_key().to_base64()

    def headers(
        self, method: str, path: str, body: bytes, *, token: str | None = None, now: float | None = None
    ) -> dict[str, str]:
        proof_key = self.harness.running.keys.proof.public_key()
        headers = proof_headers(
            self.private,
            proof_key,
            method,
            path,
            body,
            now=self.harness.clock() if now is None else now,
            nonce=os.urandom(16),
        )
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self.last_headers = headers
        self.harness.secrets.append(headers["X-Wgpy-Proof"])
        return headers

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        sent = (
            headers
            if headers is not None
            else self.headers(method, path, data, token=token if token is not None else self.access_token)
        )
        if data:
            sent = {**sent, "Content-Type": "application/json"}
        async with self.harness.http.request(method, self.harness.url + path, data=data, headers=sent) as response:
            text = await response.text()
            return Answer(response.status, _maybe_json(text), text)

    async def enrol(self, setup_key: str, **extra: object) -> Answer:
        body = {"setup_key": setup_key, "public_key": self.public_key, **extra}
        raw = json.dumps(body).encode()
        answer = await self.call("POST", "/api/v1/enrol", raw=raw, headers=self.headers("POST", "/api/v1/enrol", raw))
        if answer.status == 201:
            self.harness.secrets += [answer.body["access_token"], answer.body["refresh_token"]]
            self.access_token = answer.body["access_token"]
            self.refresh_token = answer.body["refresh_token"]
            self.peer_id = answer.body["peer"]["id"]
        return answer

    async def refresh(self, token: str | None = None) -> Answer:
        raw = json.dumps({"refresh_token": token or self.refresh_token}).encode()
        answer = await self.call(
            "POST", "/api/v1/token/refresh", raw=raw, headers=self.headers("POST", "/api/v1/token/refresh", raw)
        )
        if answer.status == 200:
            self.harness.secrets += [answer.body["access_token"], answer.body["refresh_token"]]
            self.access_token = answer.body["access_token"]
            self.refresh_token = answer.body["refresh_token"]
        return answer

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        headers = self.headers("GET", "/api/v1/peer/stream", b"", token=self.access_token)
        async with self.harness.http.ws_connect(self.harness.url + "/api/v1/peer/stream", headers=headers) as ws:
            yield ws


async def next_message(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5.0) -> dict[str, Any]:
    message = await ws.receive(timeout)
    if message.type != aiohttp.WSMsgType.TEXT:
        code = message.data if message.type == aiohttp.WSMsgType.CLOSE else ws.close_code
        return {"type": f"<{message.type.name}>", "code": code}
    data: dict[str, Any] = json.loads(message.data)
    return data


@contextlib.asynccontextmanager
async def harness(tmp_path: pathlib.Path, **kwargs: Any) -> AsyncIterator[Harness]:
    clock = Clock()
    async with running_server(tmp_path / "state", clock=clock, **kwargs) as running, aiohttp.ClientSession() as http:
        h = Harness(running, http, clock)
        h.secrets.append(running.admin_token)
        yield h


def with_harness(tmp_path: pathlib.Path, body: Callable[[Harness], Awaitable[None]], **kwargs: Any) -> None:
    async def main() -> None:
        async with harness(tmp_path, **kwargs) as h:
            await body(h)

    asyncio.run(main())


__all__ = ["Agent", "Answer", "Clock", "Harness", "PublicKey", "harness", "next_message", "run", "with_harness"]


def setup_key_row(now: float, **overrides: object) -> Any:
    """A one-off setup key's database row, unused, valid for 10 s after ``now``, with ``overrides`` applied."""
    from wgpy.management.store import SetupKeyRow

    fields: dict[str, object] = {
        "id": "k",
        "reusable": False,
        "usage_limit": 1,
        "used": 0,
        "expires_at": now + 10,
        "revoked": False,
    }
    fields.update(overrides)
    return SetupKeyRow(**fields)
