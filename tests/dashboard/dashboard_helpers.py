"""Shared pieces of the dashboard tests (the HTTP browser and embedded agents come from ``support.management_fixtures``)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import secrets
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from support.management_fixtures import Browser, enrol_embedded, start_runner, wait_until
from support.netns_harness import fresh_netns

from wgpy.agent.keystore import StateDir
from wgpy.agent.runner import AgentRunner
from wgpy.management.server import RunningServer

__all__ = [
    "POLICY",
    "Agent",
    "Browser",
    "VethNamespace",
    "agent_peers",
    "enrol_agent",
    "run",
    "run_in",
    "spawn_up",
    "stop_process",
    "veth_namespace",
    "wait_for",
]


def run(test: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=timeout))


wait_for = wait_until


@dataclass
class Agent:
    name: str
    runner: AgentRunner
    peer_id: str


async def enrol_agent(
    server: RunningServer, tmp: pathlib.Path, name: str, setup_key: str, bind_address: str = "127.0.0.1"
) -> Agent:
    """Enrol with ``wgpy up``'s own code (``enrol_device``) and run the agent in this process (no TUN) on
    ``bind_address``."""
    state = StateDir(tmp / name)
    enrolled = await enrol_embedded(server.url, server.signing_key_b64, state, name, setup_key)
    runner = await start_runner(enrolled, state, lambda _packet: None, bind_address)
    return Agent(name, runner, enrolled.enrolment.peer_id)


REPO = pathlib.Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class VethNamespace:
    """A network namespace of this test reached from the host over a veth pair: ``host`` is the host side's
    address (the management server listens there), ``inside`` the namespace side's."""

    name: str
    host: str
    inside: str


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def veth_namespace(prefix: str) -> Iterator[VethNamespace]:
    """A fresh namespace (``support.netns_harness.fresh_netns``: skipped with the reason without root, failed in
    CI) with a veth pair to the host on a /30 of 10.96.0.0/16 picked at random for this run; for a fixture to
    ``yield from``. Deleting the namespace deletes the pair (and any TUN device made inside it)."""
    for name in fresh_netns(prefix):
        base = 4 * secrets.randbelow(1 << 14)  # a /30 in 10.96.0.0/16
        host, inside = f"10.96.{base >> 8}.{(base & 0xFF) + 1}", f"10.96.{base >> 8}.{(base & 0xFF) + 2}"
        outer, inner = f"wgdh{secrets.token_hex(3)}", f"wgdn{secrets.token_hex(3)}"
        try:
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner, "netns", name)
            _ip("addr", "add", f"{host}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("-n", name, "addr", "add", f"{inside}/30", "dev", inner)
            _ip("-n", name, "link", "set", inner, "up")
            _ip("-n", name, "link", "set", "lo", "up")
            yield VethNamespace(name, host, inside)
        finally:
            subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=20, check=False)


async def spawn_up(
    server: RunningServer,
    state: pathlib.Path,
    setup_key: str,
    name: str,
    *,
    namespace: str | None = None,
    interface: str | None = None,
) -> tuple[asyncio.subprocess.Process, pathlib.Path]:
    """``wgpy up -f`` itself, as a process: in ``namespace`` with the TUN device ``interface``, or (neither given)
    ``--no-tun`` on 127.0.0.1. Its output goes to a log file beside the state directory (returned)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WGPY_KEYRING": "0", "LOG_LEVEL": "info"}
    env.pop("WG_PROCESS_FOREGROUND", None)
    argv = [sys.executable, "-m", "wgpy", "up", "-f", "--management", server.url]
    argv += ["--management-key", server.signing_key_b64, "--setup-key", setup_key, "--name", name]
    argv += ["--state-dir", str(state)]
    if interface is not None:
        argv += ["--interface", interface]
    else:
        argv += ["--no-tun", "--endpoint-host", "127.0.0.1"]
    if namespace is not None:
        argv = ["ip", "netns", "exec", namespace, *argv]  # ip(8) execs the command: the PID is wgpy's
    log = state.with_name(state.name + ".log")
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    return process, log


async def stop_process(process: asyncio.subprocess.Process, log: pathlib.Path) -> str:
    """Stop a process this test started (by its PID: SIGTERM, then SIGKILL); what it wrote to its log."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
    return log.read_text(errors="replace") if log.exists() else ""


async def run_in(namespace: str, *argv: str, timeout: float = 20.0) -> int:
    """Run a short command inside ``namespace`` (bounded by ``timeout``); its exit status."""
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        process.kill()
        return await process.wait()


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
