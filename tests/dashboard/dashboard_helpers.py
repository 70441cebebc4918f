"""Shared pieces of the dashboard tests (the HTTP browser and embedded agents come from ``support.management_fixtures``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from support.management_fixtures import Browser, enrol_embedded, start_runner, wait_until

from wgpy.agent.keystore import StateDir
from wgpy.agent.runner import AgentRunner
from wgpy.management.server import RunningServer

__all__ = ["POLICY", "Agent", "Browser", "agent_peers", "enrol_agent", "run", "spawn_up", "stop_process", "wait_for"]


def run(test: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=timeout))


wait_for = wait_until


@dataclass
class Agent:
    name: str
    runner: AgentRunner
    peer_id: str


async def enrol_agent(server: RunningServer, tmp: pathlib.Path, name: str, setup_key: str) -> Agent:
    """Enrol with ``wgpy up``'s own code (``enrol_device``) and run the agent on 127.0.0.1 (no TUN, no namespace)."""
    state = StateDir(tmp / name)
    enrolled = await enrol_embedded(server.url, server.signing_key_b64, state, name, setup_key)
    runner = await start_runner(enrolled, state, lambda _packet: None)
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
