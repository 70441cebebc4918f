"""Embedded agents against the real management server (``wgpy.management``, SQLite in a temporary folder).

What the fake server cannot show: the server's own maps (a peer sees only the peers a rule lets it reach or be
reached by), a restart of the server process that loses nothing (same addresses, tokens still valid, serials
still increasing so the agents accept the new maps), here from a copy of its state directory restored into a new
folder (a backup), and logout removing a peer from the others' maps.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from agent_helpers import SYN, Agent, echo_reply, tcp_packet, tcp_ports, wait_for
from aiohttp import web
from support.management_fixtures import admin_request, enrol_embedded, start_runner

from wgpy import crypto
from wgpy.agent.client import ManagementClient, ManagementError
from wgpy.agent.enrol import Enrolled, resume_device
from wgpy.agent.keystore import KeyStore, StateDir
from wgpy.keys import PrivateKey
from wgpy.management.server import free_port, init_state, serve
from wgpy.tools.mesh_demo import POLICY


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=60))


@dataclass
class Server:
    state_dir: pathlib.Path
    port: int
    admin_token: str
    signing_key: str
    task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        ready = asyncio.Event()
        self.task = asyncio.create_task(
            serve(self.state_dir, None, "127.0.0.1", self.port, ready=lambda _u: ready.set())
        )
        await asyncio.wait_for(ready.wait(), 10)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def admin(self, method: str, path: str, **kwargs: object) -> tuple[int, object]:
        return await admin_request(self.url, self.admin_token, method, path, **kwargs)


@contextlib.asynccontextmanager
async def management(tmp: pathlib.Path) -> AsyncIterator[Server]:
    keys, token = await init_state(tmp / "server")
    server = Server(tmp / "server", free_port(), token, keys.info()["signing_key"])
    await server.start()
    try:
        status, _ = await server.admin("PUT", "/api/v1/policy", yaml=POLICY)
        assert status == 200
        yield server
    finally:
        await server.stop()


async def enrol(server: Server, tmp: pathlib.Path, name: str, group: str, **runner_options: object) -> Agent:
    status, body = await server.admin("POST", "/api/v1/setup-keys", json={"name": name, "auto_groups": [group]})
    assert status == 201 and isinstance(body, dict)
    state = StateDir(tmp / name)
    enrolled = await enrol_embedded(server.url, server.signing_key, state, name, str(body["key"]))
    return await _start(state, enrolled, name, **runner_options)


async def _start(state: StateDir, enrolled: Enrolled, name: str, **options: object) -> Agent:
    holder: list[Agent] = []
    on_packet = options.pop("on_packet", None)

    def deliver(packet: bytes) -> None:
        if not holder:  # (nothing arrives before the runner has started: no handshake can have completed)
            return
        holder[0].received.append(packet)
        if on_packet is not None:
            on_packet(holder[0], packet)  # type: ignore[operator]

    holder.append(Agent(name, await start_runner(enrolled, state, deliver), state))
    return holder[0]


def syns_at(agent: Agent, port: int) -> int:
    return sum(1 for p in agent.received if tcp_ports(p)[3] == port and tcp_ports(p)[4] == SYN)


def test_restart_loses_nothing_and_logout_removes_the_peer(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with management(tmp_path) as server:
            laptop = await enrol(server, tmp_path, "laptop", "developers")
            prod = await enrol(server, tmp_path, "prod", "production", on_packet=echo_reply)
            agents = [laptop, prod]
            try:
                prod_key = prod.runner.device.public_key
                await wait_for(lambda: laptop.runner.device.peer(prod_key) is not None)  # type: ignore[arg-type]
                await wait_for(lambda: all(p.endpoint for p in laptop.runner.device.peers.values()))
                laptop.send(tcp_packet(laptop.address, prod.address, 45022, 22))
                await wait_for(lambda: syns_at(prod, 22) == 1)
                # Both agents now report their path to the other as direct (a handshake completed on 127.0.0.1, no
                # relay exists here), and the server's peer listing shows it (docs/management-api.md "paths").
                keys = {"laptop": laptop.runner.device.public_key, "prod": prod_key}
                assert all(key is not None for key in keys.values())

                async def paths() -> dict[str, object]:
                    _status, listed = await server.admin("GET", "/api/v1/peers")
                    assert isinstance(listed, list)
                    return {str(peer["name"]): (peer["path"], peer["paths"]) for peer in listed}

                deadline = asyncio.get_running_loop().time() + 10
                want = {
                    "laptop": ("direct", {keys["prod"].to_base64(): "direct"}),  # type: ignore[union-attr]
                    "prod": ("direct", {keys["laptop"].to_base64(): "direct"}),  # type: ignore[union-attr]
                }
                while (seen := await paths()) != want:
                    assert asyncio.get_running_loop().time() < deadline, seen
                    await asyncio.sleep(0.2)
                addresses = (laptop.address, prod.address)
                assert laptop.runner.mesh is not None
                serial = laptop.runner.mesh.controller.serial
                assert serial is not None

                await server.stop()
                await wait_for(lambda: not laptop.runner.connected and not prod.runner.connected)
                laptop.send(tcp_packet(laptop.address, prod.address, 45023, 22))
                await wait_for(lambda: syns_at(prod, 22) == 2)  # the mesh works on its last maps

                # The server comes back from a backup: its state directory (SQLite database and key files) copied
                # to a new folder, the old one gone.
                restored = tmp_path / "restored"
                shutil.copytree(server.state_dir, restored)
                shutil.rmtree(server.state_dir)
                server.state_dir = restored
                await server.start()
                await wait_for(lambda: laptop.runner.connected and prod.runner.connected, timeout=5)
                status, peers = await server.admin("GET", "/api/v1/peers")
                assert status == 200 and isinstance(peers, list)
                assert sorted(str(p["address"]).split("/")[0] for p in peers) == sorted(addresses)
                # maps issued after the restart are accepted (serials did not start again from 1): a new
                # developer enrolled now appears in production's map
                newcomer = await enrol(server, tmp_path, "laptop2", "developers")
                agents.append(newcomer)
                await wait_for(lambda: newcomer.runner.device.public_key in prod.runner.device.peers, timeout=3)
                assert prod.runner.mesh is not None and prod.runner.mesh.controller.serial is not None
                now_serial = laptop.runner.mesh.controller.serial
                assert now_serial is not None and now_serial >= serial

                # a second `wgpy up`: resume from the state directory with the refresh token, no setup key
                await laptop.runner.close()
                agents.remove(laptop)
                resumed = resume_device(laptop.state, KeyStore(laptop.state, keyring_backend=False))
                laptop = await _start(laptop.state, resumed, "laptop")
                agents.append(laptop)
                await wait_for(lambda: laptop.runner.connected, timeout=5)
                assert laptop.address == addresses[0]

                laptop_key = laptop.runner.device.public_key
                await laptop.runner.client.logout()
                await wait_for(lambda: laptop_key not in prod.runner.device.peers, timeout=2)
                status, peers = await server.admin("GET", "/api/v1/peers")
                assert isinstance(peers, list) and sorted(p["name"] for p in peers) == ["laptop2", "prod"]
            finally:
                for agent in agents:
                    await agent.runner.close()

    run(scenario)


def test_a_peer_awaiting_approval_gets_its_map_once_approved(tmp_path: pathlib.Path) -> None:
    async def scenario() -> None:
        async with management(tmp_path) as server:
            prod = await enrol(server, tmp_path, "prod", "production")
            status, body = await server.admin(
                "POST",
                "/api/v1/setup-keys",
                json={"name": "laptop", "auto_groups": ["developers"], "approval_required": True},
            )
            assert status == 201 and isinstance(body, dict)
            state = StateDir(tmp_path / "laptop")
            enrolled = await enrol_embedded(server.url, server.signing_key, state, "laptop", str(body["key"]))
            assert enrolled.initial_map is None  # pending approval
            laptop = await _start(state, enrolled, "laptop")
            try:
                await asyncio.sleep(0.5)
                assert laptop.runner.mesh is not None and laptop.runner.mesh.controller.network_map is None
                assert laptop.runner.device.peers == {}
                status, _ = await server.admin("POST", f"/api/v1/peers/{enrolled.enrolment.peer_id}/approve")
                assert status == 200
                await wait_for(lambda: prod.runner.device.public_key in laptop.runner.device.peers, timeout=5)
            finally:
                await laptop.runner.close()
                await prod.runner.close()

    run(scenario)


def test_an_answer_nested_too_deep_for_json_is_a_clean_error() -> None:
    """A server (or something posing as one) answering JSON nested 20,000 deep: one clean ``ManagementError``, not a
    RecursionError out of the client (which would end the agent's control loop)."""

    async def scenario() -> None:
        async def info(_request: web.Request) -> web.Response:
            return web.Response(text="[" * 20000 + "]" * 20000, content_type="application/json")

        app = web.Application()
        app.router.add_get("/api/v1/info", info)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        client = ManagementClient(
            f"http://127.0.0.1:{port}", PrivateKey.generate(), crypto.Ed25519PrivateKey.generate().public_key()
        )
        try:
            with pytest.raises(ManagementError, match="not a JSON object"):
                await client.fetch_info()
        finally:
            await client.close()
            await runner.cleanup()

    run(scenario)


def test_a_refresh_answer_lost_on_the_way_back_costs_no_enrolment(tmp_path: pathlib.Path) -> None:
    """The server rotates the refresh token but its answer never reaches the agent (the connection drops after the
    request was handled): the agent's retry presents the spent token, and the real server takes it as the device
    asking again (``refresh_retry``), not as token reuse."""

    async def scenario() -> None:
        async with management(tmp_path) as server:
            status, body = await server.admin(
                "POST", "/api/v1/setup-keys", json={"name": "k", "auto_groups": ["developers"]}
            )
            assert status == 201 and isinstance(body, dict)
            state = StateDir(tmp_path / "laptop")
            enrolled = await enrol_embedded(server.url, server.signing_key, state, "laptop", str(body["key"]))
            client = enrolled.client
            session = client._http()

            class LosesTheAnswer:
                """The real request, handled by the server, then the connection lost before the agent reads it."""

                @contextlib.asynccontextmanager
                async def request(self, method: str, url: object, **options: object) -> AsyncIterator[object]:
                    async with session.request(method, url, **options) as answer:  # type: ignore[arg-type]
                        await answer.read()
                    raise aiohttp.ServerDisconnectedError()
                    yield  # pragma: no cover (a generator for the context manager; never reached)

            try:
                wrapper = LosesTheAnswer()
                client._http = lambda: wrapper  # type: ignore[assignment,method-assign,return-value]
                with pytest.raises(ManagementError) as lost:
                    await client.refresh()
                assert lost.value.retryable
                del client._http  # the class's own method again
                await client.refresh()  # the same (spent) refresh token: asked again
                status, retries = await server.admin("GET", "/api/v1/audit?kind=refresh_retry")
                assert status == 200 and isinstance(retries, list) and len(retries) == 1
                status, reuse = await server.admin("GET", "/api/v1/audit?kind=token_reuse")
                assert status == 200 and reuse == []
                await client.refresh()  # and the family goes on
            finally:
                await client.close()

    run(scenario)
