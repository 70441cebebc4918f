"""The daemon's map file and saved map go the way of ``mesh_apply=1`` (issue #11): verified in a worker thread,
applied in steps under the lock the UAPI server serialises its requests with.

Each test runs a socket-only ``Tunnel`` (UDP on 127.0.0.1, no TUN) with a ``MeshAgent`` and a ``UapiServer`` on a
socket in a private temporary directory, as ``tests/cli/test_mesh_cli.py`` does. Maps are signed here with a test
management key; what a test expects comes from the map bodies it wrote, never from the agent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from wgpy import crypto as wgpy_crypto
from wgpy.agent.runner import ServerMeshAgent
from wgpy.device import Device
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.uapi_server import UapiServer, bind_uapi_socket, socket_path
from wgpy.keys import PrivateKey, PublicKey
from wgpy.mesh import MapRejected, RejectReason, sign_network_map
from wgpy.mesh import controller as controller_module
from wgpy.mesh.agent import INLINE_DOCUMENT, MeshAgent, read_state, write_state

MANAGEMENT = Ed25519PrivateKey.from_private_bytes(bytes(range(40, 72)))
MANAGEMENT_PUBLIC_B64 = base64.b64encode(MANAGEMENT.public_key().public_bytes_raw()).decode()
REPLY_TIMEOUT = 10.0
BIG = 600  # peers in a "large" map: its compact JSON is well over INLINE_DOCUMENT (checked in each test)
HUGE = 5000  # peers in a map whose verification (about 50 ms here) spans many switches of the GIL (5 ms)


def peer_entry(key: PublicKey, address: str, group: str) -> dict[str, Any]:
    return {"public_key": key.to_base64(), "allowed_ips": [f"{address}/32"], "endpoint": None, "groups": [group],
            "relay": False}  # fmt: skip


def map_body(serial: int, peers: list[dict[str, Any]]) -> dict[str, Any]:
    issued_at = int(time.time()) - 5
    return {"version": 1, "serial": serial, "issued_at": issued_at, "expires_at": issued_at + 3600, "peers": peers,
            "acl": []}  # fmt: skip


def big_map(local: PublicKey, serial: int, count: int = BIG) -> tuple[bytes, set[PublicKey]]:
    """A signed map of ``count`` random peers besides ``local``, as one compact line, and the peers' keys."""
    keys = [PublicKey(os.urandom(32)) for _ in range(count)]
    peers = [peer_entry(local, "10.7.0.1", "developers")]
    peers += [peer_entry(key, f"10.9.{i // 250}.{i % 250}", "other") for i, key in enumerate(keys)]
    document = json.dumps(sign_network_map(map_body(serial, peers), MANAGEMENT), separators=(",", ":")).encode()
    assert len(document) > INLINE_DOCUMENT
    return document, set(keys)


@dataclass
class Node:
    tunnel: Tunnel
    agent: MeshAgent
    path: Path
    private_key: PrivateKey


@contextlib.asynccontextmanager
async def serving(
    directory: Path, *, map_path: Path | None = None, state_path: Path | None = None
) -> AsyncIterator[Node]:
    tunnel = Tunnel(Device(), bind_address="127.0.0.1")
    await tunnel.start()
    agent = MeshAgent.create(tunnel, MANAGEMENT_PUBLIC_B64, map_path=map_path, state_path=state_path)
    agent.start()
    server = UapiServer(tunnel, bind_uapi_socket("wgma0", directory), mesh=agent)
    await server.start()
    try:
        yield Node(tunnel, agent, socket_path("wgma0", directory), PrivateKey.generate())
    finally:
        server.close()
        agent.close()
        tunnel.close()


async def request(path: Path, text: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(text)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\n\n"), REPLY_TIMEOUT)
    finally:
        writer.close()


async def set_private_key(node: Node) -> None:
    assert await request(node.path, f"set=1\nprivate_key={node.private_key.to_hex()}\n\n".encode()) == b"errno=0\n\n"


def write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class Turns:
    """Counts turns of the event loop (a callback that re-arms itself), and the turns during each verification
    (in the worker thread) and each stepwise apply (first step to return value) of the controller."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ticks = 0
        self.stopped = False
        self.verifying: list[int] = []
        self.applying: list[int] = []
        self.active = 0
        self.most_active = 0
        original_verifier = controller_module.MeshController.verifier
        original_steps = controller_module.MeshController.apply_verified_steps
        turns = self

        def verifier(controller: Any, now_wall: float, **kwargs: Any) -> Any:
            verify = original_verifier(controller, now_wall, **kwargs)

            def counted(document: Any) -> Any:
                before = turns.ticks
                try:
                    return verify(document)
                finally:
                    turns.verifying.append(turns.ticks - before)

            return counted

        def steps(controller: Any, *args: Any, **kwargs: Any) -> Generator[int, None, Any]:
            before = turns.ticks
            turns.active += 1
            turns.most_active = max(turns.most_active, turns.active)
            try:
                return (yield from original_steps(controller, *args, **kwargs))
            finally:
                turns.active -= 1
                turns.applying.append(turns.ticks - before)

        monkeypatch.setattr(controller_module.MeshController, "verifier", verifier)
        monkeypatch.setattr(controller_module.MeshController, "apply_verified_steps", steps)

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def tick() -> None:
            self.ticks += 1
            if not self.stopped:
                loop.call_soon(tick)

        loop.call_soon(tick)


@pytest.mark.parametrize("source", ["file", "state"])
def test_a_large_file_or_saved_map_is_applied_while_the_event_loop_keeps_running(
    socket_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """Before, the map file and the saved map were verified and applied inside the poll (or the UAPI ``set`` that
    brought the private key): no turn of the loop in either. Now the loop turns during both, and the ``set`` is
    answered before the map is in force. ``MeshAgent.create`` verifies nothing (it used to verify the saved map on
    the loop): the one verification is the worker thread's."""
    map_path = tmp_path / "map.json"
    state_path = tmp_path / "state.json"
    private_key = PrivateKey.generate()
    document, keys = big_map(private_key.public_key(), 4, HUGE)
    if source == "file":
        write_atomically(map_path, document)
    else:
        write_state(state_path, 4, document)
    turns = Turns(monkeypatch)
    verified_on: list[str] = []  # the thread of every Ed25519 verification, create() included
    ed25519_verify = wgpy_crypto.ed25519_verify

    def counted_verify(*args: Any) -> bool:
        verified_on.append(threading.current_thread().name)
        return ed25519_verify(*args)

    monkeypatch.setattr(wgpy_crypto, "ed25519_verify", counted_verify)  # netmap looks it up on each call

    async def main() -> None:
        async with serving(socket_dir, map_path=map_path, state_path=state_path) as node:
            assert verified_on == []  # MeshAgent.create and start, without the private key, verify nothing
            node.private_key = private_key
            turns.start()
            await set_private_key(node)  # the key arrives: the waiting map is applied
            assert node.agent.controller.network_map is None  # the set was answered before the map was in force
            await asyncio.wait_for(node.agent.settled(), REPLY_TIMEOUT)
            turns.stopped = True
            assert node.agent.controller.serial == 4
            assert set(node.tunnel.device.peers) == keys
            assert len(turns.verifying) == 1 and turns.verifying[0] >= 5, turns.verifying
            assert len(verified_on) == 1 and verified_on[0] != threading.main_thread().name, verified_on
            # One turn between two steps of PEERS_PER_STEP (500) peers: 5000 peers are planned in 10 of them.
            assert len(turns.applying) == 1 and turns.applying[0] >= 9, turns.applying
            assert read_state(state_path).serial == 4

    asyncio.run(main())


def test_a_large_map_from_the_management_server_is_applied_while_the_event_loop_keeps_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wgpy up``'s maps (``ServerMeshAgent.apply_from_server``) take the same way: before, each was verified and
    applied in one call on the loop. A stale one after it is refused with the serial in force, and changes nothing."""
    state_path = tmp_path / "state.json"
    private_key = PrivateKey.generate()
    document, keys = big_map(private_key.public_key(), 7, HUGE)
    turns = Turns(monkeypatch)

    async def main() -> None:
        tunnel = Tunnel(Device(private_key=private_key), bind_address="127.0.0.1")
        await tunnel.start()
        agent = ServerMeshAgent.create(tunnel, MANAGEMENT_PUBLIC_B64, state_path=state_path)
        assert isinstance(agent, ServerMeshAgent)
        agent.start()
        try:
            turns.start()
            changes = await asyncio.wait_for(agent.apply_from_server(document), REPLY_TIMEOUT)
            turns.stopped = True
            assert changes is not None and changes.serial == 7
            assert agent.controller.serial == 7 and set(tunnel.device.peers) == keys
            assert len(turns.verifying) == 1 and turns.verifying[0] >= 5, turns.verifying
            assert len(turns.applying) == 1 and turns.applying[0] >= 9, turns.applying
            assert read_state(state_path).serial == 7
            stale, _ = big_map(private_key.public_key(), 6)
            with pytest.raises(MapRejected) as refused:
                await asyncio.wait_for(agent.apply_from_server(stale), REPLY_TIMEOUT)
            assert refused.value.reason is RejectReason.STALE_SERIAL
            assert agent.controller.serial == 7 and set(tunnel.device.peers) == keys
        finally:
            agent.close()
            tunnel.close()

    asyncio.run(main())


@pytest.mark.parametrize("stage", ["verifying", "applying"])
def test_closing_the_agent_while_a_large_saved_map_is_applied_brings_none_of_it_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    """What ``AgentRunner.revoke`` relies on (it closes the agent before it drops the peers): a saved map still
    being verified or applied in steps is abandoned by ``close``, so no peer of it arrives after the revocation and
    the state file is not written again."""
    state_path = tmp_path / "state.json"
    private_key = PrivateKey.generate()
    document, _ = big_map(private_key.public_key(), 4, HUGE)
    write_state(state_path, 4, document)
    saved = state_path.read_bytes()
    turns = Turns(monkeypatch)

    async def main() -> None:
        tunnel = Tunnel(Device(private_key=private_key), bind_address="127.0.0.1")
        await tunnel.start()
        agent = ServerMeshAgent.create(tunnel, MANAGEMENT_PUBLIC_B64, state_path=state_path)
        try:
            turns.start()
            agent.start()  # the key is there: the saved map's task starts
            deadline = time.monotonic() + REPLY_TIMEOUT
            while (turns.active == 0 if stage == "applying" else turns.ticks < 2) and time.monotonic() < deadline:
                await asyncio.sleep(0)
            assert (turns.active == 1) if stage == "applying" else not turns.verifying
            agent.close()
            await asyncio.wait_for(agent.settled(), REPLY_TIMEOUT)
            await asyncio.sleep(0.05)
            turns.stopped = True
            assert tunnel.device.peers == {} and agent.controller.network_map is None
            assert state_path.read_bytes() == saved
        finally:
            agent.close()
            tunnel.close()

    asyncio.run(main())


@pytest.mark.parametrize(("first", "file_serial", "uapi_serial"), [
    ("file", 2, 3), ("file", 3, 2), ("uapi", 2, 3), ("uapi", 3, 2),
])  # fmt: skip
def test_a_file_map_and_a_uapi_map_racing_end_with_the_higher_serial(
    socket_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: str, file_serial: int, uapi_serial: int
) -> None:
    """One apply at a time: the second waits for the first (never two stepwise applies at once), and the map with
    the higher serial is in force at the end, whichever came first (the lower one, if second, is refused as
    stale)."""
    map_path = tmp_path / "map.json"
    turns = Turns(monkeypatch)

    async def main() -> None:
        async with serving(socket_dir, map_path=map_path) as node:
            await set_private_key(node)
            local = node.private_key.public_key()
            file_document, file_keys = big_map(local, file_serial)
            uapi_document, uapi_keys = big_map(local, uapi_serial)
            uapi: asyncio.Task[bytes] | None = None
            if first == "uapi":
                uapi = asyncio.ensure_future(request(node.path, b"mesh_apply=1\n" + uapi_document + b"\n\n"))
                deadline = time.monotonic() + REPLY_TIMEOUT
                while not node.agent.apply_lock.locked():  # the server is verifying it
                    assert time.monotonic() < deadline and not uapi.done()
                    await asyncio.sleep(0.001)
            write_atomically(map_path, file_document)
            node.agent.poll()
            if first == "file":
                assert node.agent.controller.serial is None  # queued, not applied inside the poll
                uapi = asyncio.ensure_future(request(node.path, b"mesh_apply=1\n" + uapi_document + b"\n\n"))
            assert uapi is not None
            reply = await uapi
            await asyncio.wait_for(node.agent.settled(), REPLY_TIMEOUT)
            if uapi_serial > file_serial or first == "uapi":
                assert reply.endswith(b"errno=0\n\n"), reply
            else:
                assert reply.startswith(b"reason=stale_serial\n"), reply
            assert node.agent.controller.serial == max(file_serial, uapi_serial)
            assert set(node.tunnel.device.peers) == (uapi_keys if uapi_serial > file_serial else file_keys)
            assert turns.most_active == 1

    asyncio.run(main())


def test_a_rejected_file_map_leaves_the_old_map_in_force(
    socket_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    map_path = tmp_path / "map.json"
    state_path = tmp_path / "state.json"

    async def main() -> None:
        async with serving(socket_dir, map_path=map_path, state_path=state_path) as node:
            await set_private_key(node)
            document, keys = big_map(node.private_key.public_key(), 1)
            write_atomically(map_path, document)
            node.agent.poll()
            await asyncio.wait_for(node.agent.settled(), REPLY_TIMEOUT)
            assert node.agent.controller.serial == 1 and set(node.tunnel.device.peers) == keys
            # A newer map whose body was changed after signing: the signature no longer covers it.
            newer, _ = big_map(node.private_key.public_key(), 2)
            tampered = newer.replace(b'"10.9.0.0/32"', b'"10.9.0.99/32"', 1)
            assert tampered != newer
            write_atomically(map_path, tampered)
            node.agent.poll()
            await asyncio.wait_for(node.agent.settled(), REPLY_TIMEOUT)
            assert node.agent.controller.serial == 1 and set(node.tunnel.device.peers) == keys
            assert read_state(state_path).serial == 1
            # The file is not tried again until it changes.
            node.agent.poll()
            await asyncio.wait_for(node.agent.settled(), REPLY_TIMEOUT)

    with caplog.at_level(logging.INFO, logger="wgpy.mesh"):
        asyncio.run(main())
    rejected = [r.getMessage() for r in caplog.records if " rejected (" in r.getMessage()]
    assert len(rejected) == 1 and rejected[0].startswith(f"network map from {map_path} rejected (bad_signature)")
    assert all(record.exc_info is None for record in caplog.records if record.name.startswith("wgpy"))
