"""Shared pieces of the dashboard tests: a logged-in HTTP client and an embedded agent enrolled for real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from wgpy.agent.client import Backoff
from wgpy.agent.enrol import enrol_device
from wgpy.agent.keystore import KeyStore, StateDir
from wgpy.agent.runner import AgentRunner
from wgpy.management.server import RunningServer

_CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]*)">')


def run(test: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=timeout))


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Browser:
    """An HTTP client with its own cookie jar, like one browser (no redirects followed unless asked)."""

    def __init__(self, server: RunningServer) -> None:
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
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        if "yaml" in kwargs:
            headers["Content-Type"] = "application/yaml"
            kwargs = {"data": str(kwargs.pop("yaml")).encode()}
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                method,
                self.url + path,
                headers=headers,
                **kwargs,  # type: ignore[arg-type]
            ) as answer,
        ):
            body = await answer.json(content_type=None) if answer.status != 204 else None
            return answer.status, body


@dataclass
class Agent:
    name: str
    runner: AgentRunner
    peer_id: str


async def enrol_agent(server: RunningServer, tmp: pathlib.Path, name: str, setup_key: str) -> Agent:
    """Enrol with ``wgpy up``'s own code (``enrol_device``) and run the agent on 127.0.0.1 (no TUN, no namespace)."""
    state = StateDir(tmp / name)
    enrolled = await enrol_device(
        state,
        KeyStore(state, keyring_backend=False),
        url=server.url,
        setup_key=setup_key,
        management_key=server.signing_key_b64,
        name=name,
    )
    runner = AgentRunner(
        enrolled.enrolment,
        enrolled.private_key,
        enrolled.client,
        state=state,
        on_packet=lambda _packet: None,
        bind_address="127.0.0.1",
        initial_map=enrolled.initial_map,
        backoff=Backoff(base=0.05, cap=0.3),
    )
    await runner.start()
    return Agent(name, runner, enrolled.enrolment.peer_id)


REPO = pathlib.Path(__file__).resolve().parents[2]


async def spawn_up(server: RunningServer, state: pathlib.Path, setup_key: str, name: str) -> asyncio.subprocess.Process:
    """``wgpy up -f --no-tun`` itself, as a process on 127.0.0.1 (no namespace, so no root needed)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WGPY_KEYRING": "0", "LOG_LEVEL": "info"}
    env.pop("WG_PROCESS_FOREGROUND", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wgpy",
        "up",
        "-f",
        "--no-tun",
        "--management",
        server.url,
        "--management-key",
        server.signing_key_b64,
        "--setup-key",
        setup_key,
        "--name",
        name,
        "--endpoint-host",
        "127.0.0.1",
        "--state-dir",
        str(state),
        env=env,
        cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop_process(process: asyncio.subprocess.Process) -> bytes:
    """Stop a process this test started (by its PID: SIGTERM, then SIGKILL); its standard error."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    with contextlib.suppress(Exception):
        return await asyncio.wait_for(process.stderr.read(), 5)
    return b""


def agent_peers(state: pathlib.Path) -> list[str] | None:
    """The public keys in the agent's current map, from its ``status.json`` (None before it has one)."""
    try:
        value = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return None
    peers = value.get("peers") if isinstance(value, dict) else None
    if not isinstance(peers, list):
        return None
    return [str(peer.get("public_key")) for peer in peers if isinstance(peer, dict)]


POLICY = """\
groups: [developers, production, guests]
acls:
  - name: dev-to-prod
    src: [developers]
    dst: [production]
    proto: tcp
    ports: ["22", "443"]
    action: accept
  - name: deny-rest
    src: ["*"]
    dst: ["*"]
    action: deny
"""
