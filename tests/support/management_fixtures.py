"""Fixture code shared by the tests that run a real management server (``tests/agent``, ``tests/dashboard``,
``tests/management``): admin API calls, a dashboard browser over HTTP, and embedded agents enrolled with ``wgpy
up``'s own code (``enrol_device``) running on 127.0.0.1 without TUN."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Protocol

import aiohttp

from wgpy.agent.client import Backoff
from wgpy.agent.enrol import Enrolled, enrol_device
from wgpy.agent.keystore import KeyStore, StateDir
from wgpy.agent.runner import AgentRunner

__all__ = ["Browser", "HasUrl", "admin_request", "enrol_embedded", "start_runner", "wait_until"]

_CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]*)">')


class HasUrl(Protocol):
    """A running server as the tests see it (``wgpy.management.server.RunningServer`` and the agent tests' own)."""

    @property
    def url(self) -> str: ...

    @property
    def admin_token(self) -> str: ...


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> None:
    """Wait until ``predicate()`` holds, for at most ``timeout`` seconds (an AssertionError then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def admin_request(url: str, token: str, method: str, path: str, **kwargs: object) -> tuple[int, object]:
    """One admin API call with ``Authorization: Bearer``: the status and the JSON answer (``None`` for 204).

    ``yaml=TEXT`` sends a policy (``Content-Type: application/yaml``); other keywords go to aiohttp (``json=``)."""
    headers = {"Authorization": f"Bearer {token}"}
    if "yaml" in kwargs:
        headers["Content-Type"] = "application/yaml"
        text = kwargs.pop("yaml")
        kwargs = {**kwargs, "data": str(text).encode()}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url + path, headers=headers, **kwargs) as answer,  # type: ignore[arg-type]
    ):
        body = await answer.json(content_type=None) if answer.status != 204 else None
        return answer.status, body


class Browser:
    """The dashboard over HTTP with its own cookie jar, like one browser (no redirects followed unless asked)."""

    def __init__(self, server: HasUrl) -> None:
        self.server = server
        self.url = server.url
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.http.close()

    async def login(self, token: str | None = None) -> aiohttp.ClientResponse:
        answer = await self.http.post(
            self.url + "/login",
            data={"token": token if token is not None else self.server.admin_token, "next": "/peers"},
            allow_redirects=False,
        )
        await answer.read()
        if answer.status == 303:
            status, text = await self.get("/peers")
            assert status == 200, text
            match = _CSRF.search(text)
            assert match is not None
            self.csrf = match.group(1)
        return answer

    async def get(self, path: str, **kwargs: object) -> tuple[int, str]:
        async with self.http.get(self.url + path, allow_redirects=False, **kwargs) as answer:  # type: ignore[arg-type]
            return answer.status, await answer.text()

    async def post(
        self,
        path: str,
        data: dict[str, str] | None = None,
        *,
        csrf: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, dict[str, str]]:
        form = dict(data or {})
        token = self.csrf if csrf is None else csrf
        if token:
            form["csrf"] = token
        async with self.http.post(self.url + path, data=form, headers=headers or {}, allow_redirects=False) as answer:
            return answer.status, await answer.text(), dict(answer.headers)

    async def api(self, method: str, path: str, **kwargs: object) -> tuple[int, object]:
        return await admin_request(self.url, self.server.admin_token, method, path, **kwargs)


async def enrol_embedded(url: str, signing_key: str, state: StateDir, name: str, setup_key: str) -> Enrolled:
    """Enrol with ``wgpy up``'s own code (file key store, no keyring)."""
    return await enrol_device(
        state,
        KeyStore(state, keyring_backend=False),
        url=url,
        setup_key=setup_key,
        management_key=signing_key,
        name=name,
    )


async def start_runner(
    enrolled: Enrolled, state: StateDir, on_packet: Callable[[bytes], None], bind_address: str = "127.0.0.1"
) -> AgentRunner:
    """Run an enrolled (or resumed) device as an embedded agent: no TUN, packets to ``on_packet``, fast backoff."""
    runner = AgentRunner(
        enrolled.enrolment,
        enrolled.private_key,
        enrolled.client,
        state=state,
        on_packet=on_packet,
        bind_address=bind_address,
        initial_map=enrolled.initial_map,
        backoff=Backoff(base=0.05, cap=0.3),
    )
    await runner.start()
    return runner
