"""Agents fail over between replicas (issue #14): two ``wgpy management serve`` processes share one state directory
(the signing and proof key files) and one PostgreSQL database; agents are given both URLs. Killing replica A
(SIGKILL) moves its peers to B within seconds, with the same tokens and no re-enrolment, and a policy change made
through B reaches them there."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from postgres_helpers import postgres_url, reset

from wgpy.agent.client import Backoff
from wgpy.agent.enrol import enrol_device
from wgpy.agent.keystore import KeyStore, StateDir
from wgpy.agent.runner import AgentRunner
from wgpy.management.server import free_port

__all__ = ["postgres_url"]  # the fixture, imported for pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALL = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"
NONE = b"acls: []\n"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@asynccontextmanager
async def _replica(state: pathlib.Path, db_url: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wgpy",
        "management",
        "serve",
        "--state-dir",
        str(state),
        "--db",
        db_url,
        "--listen",
        f"127.0.0.1:{port}",
        "--log-level",
        "warning",
        stdout=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        assert line.startswith(b"listening on "), line
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait(condition: object, timeout: float) -> float:
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def test_killing_replica_a_moves_its_peers_to_b_without_re_enrolment(postgres_url: str, tmp_path: pathlib.Path) -> None:
    reset(postgres_url)
    state = tmp_path / "server"
    init = subprocess.run(
        [sys.executable, "-m", "wgpy", "management", "init", "--state-dir", str(state), "--db", postgres_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=True,
    )
    token = init.stdout.strip().splitlines()[-1]

    async def main() -> None:
        async with (
            _replica(state, postgres_url) as (url_a, process_a),
            _replica(state, postgres_url) as (url_b, _process_b),
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        ):

            async def admin(url: str, method: str, path: str, **kwargs: object) -> object:
                async with http.request(method, url + path, **kwargs) as answer:  # type: ignore[arg-type]
                    assert answer.status < 300, await answer.text()
                    return await answer.json(content_type=None) if answer.status != 204 else None

            await admin(url_a, "PUT", "/api/v1/policy", data=ALL)
            key = await admin(
                url_a, "POST", "/api/v1/setup-keys", json={"name": "k", "reusable": True, "usage_limit": 5}
            )
            async with http.get(url_a + "/api/v1/info") as answer:
                management_key = (await answer.json())["signing_key"]
            assert isinstance(key, dict)
            runners: list[AgentRunner] = []
            try:
                for name in ("laptop", "server"):
                    device = StateDir(tmp_path / name)
                    enrolled = await enrol_device(
                        device,
                        KeyStore(device, keyring_backend=False),
                        url=f"{url_a},{url_b}",
                        setup_key=str(key["key"]),
                        management_key=management_key,
                        name=name,
                    )
                    runner = AgentRunner(
                        enrolled.enrolment,
                        enrolled.private_key,
                        enrolled.client,
                        state=device,
                        bind_address="127.0.0.1",
                        on_packet=lambda _packet: None,
                        initial_map=enrolled.initial_map,
                        backoff=Backoff(base=0.05, cap=0.5),
                    )
                    await runner.start()
                    runners.append(runner)
                await _wait(lambda: all(r.connected for r in runners), 10)
                assert all(str(r.client.base_url) == url_a for r in runners)
                await _wait(lambda: all(len(r.device.peers) == 1 for r in runners), 10)
                peer_ids = [r.enrolment.peer_id for r in runners]

                process_a.send_signal(signal.SIGKILL)  # no goodbye: the streams just break
                await process_a.wait()
                took = await _wait(lambda: all(r.connected and str(r.client.base_url) == url_b for r in runners), 10)
                assert took < 5.0, took
                assert [r.enrolment.peer_id for r in runners] == peer_ids
                peers = await admin(url_b, "GET", "/api/v1/peers")
                assert isinstance(peers, list) and sorted(p["id"] for p in peers) == sorted(peer_ids)
                keys = await admin(url_b, "GET", "/api/v1/setup-keys")
                assert isinstance(keys, list) and keys[0]["used"] == 2  # nobody enrolled again
                # B pushes them their maps: a policy change through B empties both.
                await admin(url_b, "PUT", "/api/v1/policy", data=NONE)
                await _wait(lambda: all(len(r.device.peers) == 0 for r in runners), 5)
                # The tokens issued through A are refreshed through B.
                for runner in runners:
                    await runner.client.refresh()
                    assert runner.client.has_access_token
            finally:
                for runner in runners:
                    await runner.close()

    asyncio.run(asyncio.wait_for(main(), 120))
