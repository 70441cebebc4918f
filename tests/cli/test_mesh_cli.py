"""Mesh mode outside the core, without root: ``wgpy mesh`` commands, the UAPI extension and the daemon's agent.

The key and signing commands run as subprocesses (``python -m wgpy mesh ...``). ``wgpy mesh apply`` talks to an
in-process socket-only ``Tunnel`` (UDP on 127.0.0.1, no TUN) with a ``MeshAgent`` and a ``UapiServer`` on a socket in
a private temporary directory, as ``tests/drivers/test_uapi_server.py`` runs one. The agent's map file watching,
state file, fail-closed logging and event forwarding are driven on real tunnels too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.helpers import ipv4_packet
from support.helpers import private_key as seeded_key

from wgpy.device import Device
from wgpy.drivers import uapi_server
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.uapi_server import UapiServer, bind_uapi_socket, socket_path
from wgpy.keys import PrivateKey, PublicKey
from wgpy.mesh import AUDIT_LOGGER_NAME, verify_and_parse
from wgpy.mesh import agent as agent_module
from wgpy.mesh.agent import MeshAgent, MeshState, read_state, write_state

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0
REPLY_TIMEOUT = 5.0
MANAGEMENT = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
MANAGEMENT_B64 = base64.b64encode(MANAGEMENT.private_bytes_raw()).decode()
MANAGEMENT_PUBLIC_B64 = base64.b64encode(MANAGEMENT.public_key().public_bytes_raw()).decode()
SEED_ACL = [
    {"name": "dev-ssh", "src_groups": ["developers"], "dst_groups": ["production"], "protocol": "tcp", "ports": [22], "action": "accept"},
    {"name": "dev-https", "src_groups": ["developers"], "dst_groups": ["production"], "protocol": "tcp", "ports": [443], "action": "accept"},
]  # fmt: skip


def wgpy(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgpy", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=REPO_ROOT,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    return lines[0]


def peer_entry(key: PublicKey, address: str, group: str, port: int | None = None) -> dict[str, Any]:
    return {
        "public_key": key.to_base64(),
        "allowed_ips": [f"{address}/32"],
        "endpoint": None if port is None else {"host": "127.0.0.1", "port": port},
        "groups": [group],
        "relay": False,
    }


def map_body(
    serial: int, peers: list[dict[str, Any]], *, validity: int = 3600, now: float | None = None
) -> dict[str, Any]:
    issued_at = int(time.time() if now is None else now) - 5
    return {
        "version": 1,
        "serial": serial,
        "issued_at": issued_at,
        "expires_at": issued_at + validity,
        "peers": peers,
        "acl": SEED_ACL,
    }


def sign(body: dict[str, Any]) -> bytes:
    from wgpy.mesh import sign_network_map

    return json.dumps(sign_network_map(body, MANAGEMENT), indent=2).encode()


# -- keygen / pubkey / sign ---------------------------------------------------------------------------------------


def test_keygen_and_pubkey_round_trip() -> None:
    generated = wgpy("mesh", "keygen")
    assert generated.returncode == 0, generated.stderr
    private_text = generated.stdout.strip()
    assert generated.stdout == private_text + "\n"
    private = Ed25519PrivateKey.from_private_bytes(base64.b64decode(private_text, validate=True))
    expected = base64.b64encode(private.public_key().public_bytes_raw()).decode()
    assert generated.stderr.strip() == f"public key: {expected}"
    derived = wgpy("mesh", "pubkey", stdin=generated.stdout)
    assert derived.returncode == 0 and derived.stdout == expected + "\n"
    assert wgpy("mesh", "keygen").stdout != generated.stdout


@pytest.mark.parametrize("text", ["", "not base64!", base64.b64encode(b"short").decode()])
def test_pubkey_refuses_a_bad_key(text: str) -> None:
    assert one_line_error(wgpy("mesh", "pubkey", stdin=text)) == "wgpy: Key is not the correct length or format"


def test_sign_produces_a_document_that_verifies(tmp_path: Path) -> None:
    key_file = tmp_path / "mgmt.key"
    key_file.write_text(MANAGEMENT_B64 + "\n")
    body = map_body(7, [peer_entry(PrivateKey.generate().public_key(), "10.7.0.1", "developers", 51820)])
    body_file = tmp_path / "map.json"
    body_file.write_text(json.dumps(body, indent=2))
    signed = wgpy("mesh", "sign", "--key", str(key_file), str(body_file))
    assert signed.returncode == 0, signed.stderr
    assert signed.stdout.count("\n") == 1  # one compact line
    netmap = verify_and_parse(signed.stdout, MANAGEMENT.public_key(), time.time())
    assert netmap.serial == 7 and [rule.name for rule in netmap.rules] == ["dev-ssh", "dev-https"]
    # The public key given as --mesh-key is what `mesh pubkey` prints.
    assert wgpy("mesh", "pubkey", stdin=MANAGEMENT_B64).stdout.strip() == MANAGEMENT_PUBLIC_B64
    # From stdin too.
    piped = wgpy("mesh", "sign", "--key", str(key_file), "-", stdin=json.dumps(body))
    assert piped.returncode == 0 and json.loads(piped.stdout) == json.loads(signed.stdout)


BAD_BODIES = [
    ("unknown field", lambda body: {**body, "serail": 1}, "invalid network map: map: unknown field"),
    ("bad key", lambda body: {**body, "peers": [{**body["peers"][0], "public_key": "AAAA"}]}, "public_key"),
    ("expires before issued", lambda body: {**body, "expires_at": body["issued_at"]}, "expires_at"),
    ("ports on icmp", lambda body: {**body, "acl": [{**SEED_ACL[0], "protocol": "icmp"}]}, "ports"),
    ("not an object", lambda body: [body], "does not hold a JSON object"),
    ("already signed", lambda body: {"map": body, "signature": "x"}, "already a signed document"),
]


@pytest.mark.parametrize(("what", "mutate", "expected"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES])
def test_sign_refuses_a_bad_body_in_one_line(tmp_path: Path, what: str, mutate: Any, expected: str) -> None:
    key_file = tmp_path / "mgmt.key"
    key_file.write_text(MANAGEMENT_B64)
    body = map_body(1, [peer_entry(PrivateKey.generate().public_key(), "10.7.0.1", "developers")])
    body_file = tmp_path / "map.json"
    body_file.write_text(json.dumps(mutate(body)))
    assert expected in one_line_error(wgpy("mesh", "sign", "--key", str(key_file), str(body_file))), what


@pytest.mark.parametrize(
    ("text", "expected"),
    [("{", "is not valid JSON"), ('{"serial": 1, "serial": 2}', "repeats the key 'serial'")],
)
def test_sign_refuses_bad_json_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    key_file = tmp_path / "mgmt.key"
    key_file.write_text(MANAGEMENT_B64)
    assert expected in one_line_error(wgpy("mesh", "sign", "--key", str(key_file), "-", stdin=text))


def test_sign_refuses_a_bad_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "mgmt.key"
    key_file.write_text("nope")
    line = one_line_error(wgpy("mesh", "sign", "--key", str(key_file), "-", stdin="{}"))
    assert line == "wgpy: Key is not the correct length or format"
    assert "cannot read the key" in one_line_error(wgpy("mesh", "sign", "--key", str(tmp_path / "missing"), "-"))


# -- daemon options (checked before any interface is created, so no root is needed) ------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--mesh-map", "/nonexistent/map.json", "wgm0"], "--mesh-map need --mesh-key"),
        (["--fail-closed", "--audit-log", "-", "wgm0"], "--fail-closed, --audit-log need --mesh-key"),
        (["--mesh-key", "AAAA", "wgm0"], "--mesh-key: the management public key must be 32 bytes"),
        (
            ["--mesh-key", "/nonexistent/mgmt.pub", "wgm0"],
            "cannot read the mesh key /nonexistent/mgmt.pub: no such file",
        ),
    ],
)
def test_daemon_refuses_bad_mesh_options_in_one_line(args: list[str], expected: str) -> None:
    assert expected in one_line_error(wgpy("-f", *args))


def test_daemon_refuses_an_unreadable_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text("garbage")
    line = one_line_error(wgpy("-f", "--mesh-key", MANAGEMENT_PUBLIC_B64, "--mesh-state", str(state), "wgm0"))
    assert "is not a wgpy state file" in line


# -- the agent and the UAPI extension ------------------------------------------------------------------------------


@dataclass
class Node:
    tunnel: Tunnel
    agent: MeshAgent | None
    path: Path
    private_key: PrivateKey
    received: list[bytes] = field(default_factory=list)

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()


@contextlib.asynccontextmanager
async def serving(
    directory: Path,
    name: str,
    *,
    mesh: bool = True,
    fail_closed: bool = False,
    map_path: Path | None = None,
    state_path: Path | None = None,
    private_key: PrivateKey | None = None,
    wall_clock: Any = time.time,
) -> AsyncIterator[Node]:
    tunnel = Tunnel(Device(), bind_address="127.0.0.1")
    node = Node(tunnel, None, socket_path(name, directory), private_key or PrivateKey.generate())
    tunnel.on_packet = node.received.append
    await tunnel.start()
    if mesh:
        node.agent = MeshAgent.create(
            tunnel,
            MANAGEMENT_PUBLIC_B64,
            fail_closed=fail_closed,
            map_path=map_path,
            state_path=state_path,
            wall_clock=wall_clock,
        )
        node.agent.start()
    server = UapiServer(tunnel, bind_uapi_socket(name, directory), mesh=node.agent)
    await server.start()
    try:
        yield node
    finally:
        server.close()
        if node.agent is not None:
            node.agent.close()
        tunnel.close()


async def request(path: Path, text: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(text)
        await writer.drain()
        try:
            return await asyncio.wait_for(reader.readuntil(b"\n\n"), REPLY_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            return exc.partial
    finally:
        writer.close()


async def get(path: Path) -> str:
    reply = (await request(path, b"get=1\n\n")).decode()
    assert reply.endswith("errno=0\n\n"), reply
    return reply


async def set_private_key(node: Node) -> None:
    assert await request(node.path, f"set=1\nprivate_key={node.private_key.to_hex()}\n\n".encode()) == b"errno=0\n\n"


async def mesh_apply(node: Node, document: Path) -> subprocess.CompletedProcess[str]:
    """``wgpy mesh apply --socket PATH IFNAME FILE`` as a subprocess, while this loop keeps serving."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "wgpy",
        "mesh",
        "apply",
        "--socket",
        str(node.path),
        "wgm0",
        str(document),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return subprocess.CompletedProcess([], process.returncode, stdout.decode(), stderr.decode())


def three_peer_body(node: Node, serial: int, *, with_other: bool = True, **kwargs: Any) -> dict[str, Any]:
    peers = [
        peer_entry(node.public_key, "10.7.0.1", "developers"),
        peer_entry(PrivateKey(bytes([1] * 32)).public_key(), "10.7.1.1", "production", 51001),
    ]
    if with_other:
        peers.append(peer_entry(PrivateKey(bytes([2] * 32)).public_key(), "10.7.2.1", "other", 51002))
    return map_body(serial, peers, **kwargs)


def test_mesh_apply_accepts_a_map_then_refuses_stale_and_tampered_ones(socket_dir: Path, tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"

    async def main() -> None:
        async with serving(socket_dir, "wgm1", state_path=state_path) as node:
            await set_private_key(node)
            first = tmp_path / "first.json"
            first.write_bytes(sign(three_peer_body(node, 5)))
            applied = await mesh_apply(node, first)
            assert applied.returncode == 0, applied.stderr
            assert applied.stdout == "wgm0: network map serial 5 applied: 2 peers added, 0 removed, 0 changed\n"
            before = await get(node.path)
            assert before.count("public_key=") == 2 and "allowed_ip=10.7.2.1/32" in before
            assert read_state(state_path).serial == 5
            assert oct(state_path.stat().st_mode & 0o777) == "0o600"

            stale = tmp_path / "stale.json"
            stale.write_bytes(sign(three_peer_body(node, 4, with_other=False)))
            tampered = tmp_path / "tampered.json"
            document = json.loads(sign(three_peer_body(node, 6, with_other=False)))
            document["map"]["acl"][0]["ports"] = [1, [2, 65535]]
            tampered.write_text(json.dumps(document))
            garbage = tmp_path / "garbage.json"
            garbage.write_text("{ this is not json\n")
            for path, reason in ((stale, "stale_serial"), (tampered, "bad_signature"), (garbage, "malformed")):
                line = one_line_error(await mesh_apply(node, path))
                assert line.startswith(f"wgpy: wgm0: network map rejected ({reason}): "), line
                assert await get(node.path) == before
            assert read_state(state_path).serial == 5

            # A newer map that revokes a peer is applied at once.
            revoke = tmp_path / "revoke.json"
            revoke.write_bytes(sign(three_peer_body(node, 6, with_other=False)))
            applied = await mesh_apply(node, revoke)
            assert applied.returncode == 0 and "serial 6 applied: 0 peers added, 1 removed" in applied.stdout
            assert "10.7.2.1" not in await get(node.path)

    asyncio.run(main())


def test_mesh_apply_before_the_private_key_and_to_a_daemon_without_mesh(socket_dir: Path, tmp_path: Path) -> None:
    document = tmp_path / "map.json"

    async def main() -> None:
        async with serving(socket_dir, "wgm2") as node:
            document.write_bytes(sign(three_peer_body(node, 1)))
            line = one_line_error(await mesh_apply(node, document))
            assert line == "wgpy: wgm0: network map rejected (no_private_key): the device has no private key"
        async with serving(socket_dir, "wgm3", mesh=False) as plain:
            line = one_line_error(await mesh_apply(plain, document))
            assert "does not accept network maps" in line
            await get(plain.path)  # the unknown operation closed only its own connection

    asyncio.run(main())


def test_a_large_map_is_verified_while_the_event_loop_keeps_running(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #11: ``mesh_apply=1`` verified its document on the event loop (a 13 MB map of 65,535 peers held it for
    5.9 s). Now the verification runs in a worker thread: a callback that re-arms itself keeps running while a
    2,000-peer map is verified. This counts turns of the loop during the verification, not time; before, there
    were none (the verification ran on the loop thread itself)."""
    from wgpy.mesh import controller as controller_module

    async def main() -> None:
        async with serving(socket_dir, "wgm8") as node:
            await set_private_key(node)
            peers = [peer_entry(node.public_key, "10.7.0.1", "developers")]
            peers += [peer_entry(PublicKey(os.urandom(32)), f"10.9.{i // 250}.{i % 250}", "other") for i in range(2000)]
            line = json.dumps(sign_compact(map_body(1, peers))).encode()
            loop = asyncio.get_running_loop()
            ticks = [0]
            stop = [False]
            during: list[int] = []

            def tick() -> None:
                ticks[0] += 1
                if not stop[0]:
                    loop.call_soon(tick)

            original = controller_module.MeshController.verifier

            def verifier(self: Any, now_wall: float, **kwargs: Any) -> Any:
                verify = original(self, now_wall, **kwargs)

                def counted(document: Any) -> Any:
                    before = ticks[0]
                    try:
                        return verify(document)
                    finally:
                        during.append(ticks[0] - before)

                return counted

            monkeypatch.setattr(controller_module.MeshController, "verifier", verifier)
            loop.call_soon(tick)
            reply = await request(node.path, b"mesh_apply=1\n" + line + b"\n\n")
            stop[0] = True
            assert reply == b"serial=1\nadded=2000\nremoved=0\nchanged=0\nerrno=0\n\n"
            assert len(during) == 1
            assert during[0] >= 5, during

    asyncio.run(main())


def test_mesh_apply_line_may_be_long_but_is_bounded(
    socket_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with serving(socket_dir, "wgm4") as node:
            await set_private_key(node)
            peers = [peer_entry(node.public_key, "10.7.0.1", "developers")]
            peers += [
                peer_entry(seeded_key(1000 + i).public_key(), f"10.8.{i // 250}.{i % 250}", "other")
                for i in range(1, 301)
            ]
            line = json.dumps(sign_compact(map_body(1, peers))).encode()
            assert len(line) > 10 * uapi_server.MAX_LINE
            reply = await request(node.path, b"mesh_apply=1\n" + line + b"\n\n")
            assert reply == b"serial=1\nadded=300\nremoved=0\nchanged=0\nerrno=0\n\n"
            # Other lines keep their bound: an overlong get/set line still closes the connection.
            assert await request(node.path, b"set=1\nlisten_port=" + b"1" * 5000 + b"\n\n") == b""
            # And the document line has one too.
            monkeypatch.setattr(uapi_server, "MAX_MESH_DOCUMENT", len(line) - 1)
            assert await request(node.path, b"mesh_apply=1\n" + line + b"\n\n") == b""
            monkeypatch.setattr(uapi_server, "MAX_MESH_DOCUMENT", len(line))
            reply = await request(node.path, b"mesh_apply=1\n" + line + b"\n\n")
            assert reply == b"reason=stale_serial\ndetail=serial 1 is not greater than the current 1\nerrno=-22\n\n"
            # A document not followed by the blank line is not applied.
            assert await request(node.path, b"mesh_apply=1\n" + line + b"\nget=1\n\n") == b""

    asyncio.run(main())


def sign_compact(body: dict[str, Any]) -> dict[str, object]:
    from wgpy.mesh import sign_network_map

    return sign_network_map(body, MANAGEMENT)


async def eventually(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def test_watched_map_file_waits_for_the_key_applies_changes_and_survives_a_restart(
    socket_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    map_path = tmp_path / "map.json"
    state_path = tmp_path / "state.json"
    private_key = PrivateKey.generate()

    def write_map(body: dict[str, Any]) -> None:
        temporary = tmp_path / "map.json.new"
        temporary.write_bytes(sign(body))
        os.replace(temporary, map_path)

    async def main() -> None:
        async with serving(socket_dir, "wgm5", map_path=map_path, state_path=state_path, private_key=private_key) as n:
            write_map(three_peer_body(n, 1))
            assert n.agent is not None
            n.agent.poll()
            assert n.tunnel.device.peers == {} and n.agent.controller.serial is None  # no private key yet
            await set_private_key(n)  # the agent is told at once, no need to wait for the poll
            assert len(n.tunnel.device.peers) == 2 and n.agent.controller.serial == 1
            write_map(three_peer_body(n, 2, with_other=False))
            await eventually(lambda: n.agent is not None and n.agent.controller.serial == 2)
            assert len(n.tunnel.device.peers) == 1
            write_map(three_peer_body(n, 1))  # an older map
            n.agent.poll()
            assert n.agent.controller.serial == 2 and len(n.tunnel.device.peers) == 1
            assert read_state(state_path).serial == 2
        # A restart: the saved map comes back as soon as the key is set, and the old file on disk is refused.
        write_map(three_peer_body(n, 1))
        async with serving(socket_dir, "wgm6", map_path=map_path, state_path=state_path, private_key=private_key) as m:
            assert m.agent is not None and m.tunnel.device.peers == {}
            await set_private_key(m)
            assert m.agent.controller.serial == 2 and len(m.tunnel.device.peers) == 1

    with caplog.at_level(logging.INFO, logger="wgpy.mesh"):
        asyncio.run(main())
    rejected = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert (
        rejected
        == [f"network map from {map_path} rejected (stale_serial): serial 1 is not greater than the current 2"] * 2
    )
    assert all(record.exc_info is None for record in caplog.records if record.name.startswith("wgpy"))


def test_state_file_round_trip_and_a_state_that_no_longer_verifies(
    socket_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saved map is verified when it is applied again, not by ``MeshAgent.create``: the controller starts at the
    saved serial, takes the saved map once more if it still verifies (an older map never, nor another map of the
    saved serial), and refuses it, keeping the serial, when it has expired or a newer map came first."""
    monkeypatch.setattr(agent_module, "POLL_INTERVAL", 3600.0)  # the saved map is applied when the key comes only
    state_path = tmp_path / "state.json"
    assert read_state(state_path) == MeshState()
    private_key = PrivateKey.generate()
    body = map_body(3, [peer_entry(private_key.public_key(), "10.7.0.1", "developers")])
    body["peers"].append(peer_entry(PrivateKey(bytes([1] * 32)).public_key(), "10.7.1.1", "production", 51001))
    document = sign(body)
    write_state(state_path, 3, document)
    state = read_state(state_path)
    assert state.serial == 3 and state.document is not None
    assert json.loads(state.document) == json.loads(document)
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left behind
    peer = PrivateKey(bytes([1] * 32)).public_key()

    async def main() -> None:
        # Expired since it was saved: not resumed, and the saved serial still holds.
        late = lambda: 2.0e9  # noqa: E731
        async with serving(socket_dir, "wgs1", state_path=state_path, private_key=private_key, wall_clock=late) as n:
            assert n.agent is not None and n.agent.controller.serial == 3
            await set_private_key(n)
            await n.agent.settled()
            assert n.agent.controller.network_map is None and n.tunnel.device.peers == {}
            assert n.agent.controller.serial == 3
            # Another map of the saved serial (another device's, say, replayed) is no resume: it is refused.
            replayed = tmp_path / "replayed.json"
            replayed.write_bytes(sign({**body, "issued_at": int(2.0e9) - 5, "expires_at": int(2.0e9) + 3600}))
            refused = await mesh_apply(n, replayed)
            assert refused.returncode != 0 and "not greater than the current 3" in refused.stderr, refused.stderr
            assert n.agent.controller.network_map is None and n.tunnel.device.peers == {}
        # Still valid: resumed once the key is there; a map older than the saved one is refused before and after.
        async with serving(socket_dir, "wgs2", state_path=state_path, private_key=private_key) as n:
            assert n.agent is not None and n.agent.controller.serial == 3
            older = tmp_path / "older.json"
            older.write_bytes(sign({**body, "serial": 2}))
            refused = await mesh_apply(n, older)  # no private key yet: refused for that, before any serial check
            assert refused.returncode != 0
            await set_private_key(n)
            await n.agent.settled()
            assert n.agent.controller.network_map is not None and n.agent.controller.serial == 3
            assert set(n.tunnel.device.peers) == {peer}
            refused = await mesh_apply(n, older)
            assert refused.returncode != 0 and "not greater than the current 3" in refused.stderr, refused.stderr
        # Overtaken: a newer map arrives before the key, so the saved map comes second and is stale.
        async with serving(socket_dir, "wgs3", state_path=state_path, private_key=private_key) as n:
            agent = n.agent
            assert agent is not None
            newer = dict(body, serial=5, peers=body["peers"][:1])
            n.tunnel.device.set_private_key(private_key)
            changes = await agent._verify_and_apply(sign(newer), "a test")  # as mesh_apply does, before the poll
            assert changes is not None and changes.serial == 5
            agent.configuration_changed()  # the saved map's turn
            await agent.settled()
            assert agent.controller.serial == 5 and n.tunnel.device.peers == {}

    with caplog.at_level(logging.INFO, logger="wgpy.mesh"):
        asyncio.run(main())
    not_resumed = [r.getMessage() for r in caplog.records if "not resumed" in r.getMessage()]
    assert not_resumed == [
        f"the saved network map (serial 3) is not resumed (expired): expired at {body['expires_at']}, now is 2000000000",
        "the saved network map (serial 3) is not resumed (stale_serial): serial 3 is not greater than the current 5",
    ], not_resumed


def test_fail_closed_denies_everything_once_the_map_expires_and_says_so_once(
    socket_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [time.time()]

    async def main() -> None:
        async with serving(socket_dir, "wgm7", fail_closed=True, wall_clock=lambda: clock[0]) as node:
            agent = node.agent
            assert agent is not None
            await set_private_key(node)
            assert (await agent.apply_document(sign(three_peer_body(node, 1, validity=60, now=clock[0])))).errno == 0
            filter_ = agent.controller.filter
            assert agent.controller.traffic_allowed(clock[0])
            clock[0] += 61
            agent.poll()
            agent.poll()
            assert not agent.controller.traffic_allowed(clock[0])
            syn = ipv4_packet("10.7.0.1", "10.7.1.1", tcp_header(40000, 22), protocol=6)
            node.tunnel.send_packet(syn)
            assert filter_.stats.denied == {"map-expired": 1}
            assert (await agent.apply_document(sign(three_peer_body(node, 2, now=clock[0])))).errno == 0
            node.tunnel.send_packet(syn)
            assert filter_.stats.accepted == {"dev-ssh": 1}

    with caplog.at_level(logging.INFO, logger="wgpy.mesh"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records]
    assert sum("fail closed" in m for m in messages) == 2, messages  # no map at start; the expiry
    assert sum("expired at" in m and "all traffic is denied" in m for m in messages) == 1
    assert sum("traffic flows again" in m for m in messages) == 2


def tcp_header(sport: int, dport: int) -> bytes:
    import struct

    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x02, 65535, 0, 0)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_two_agents_handshake_exchange_acl_traffic_and_audit_it(socket_dir: Path) -> None:
    """Device events reach the audit log through ``Tunnel.on_event``; the ACL holds over real UDP."""
    audit = logging.getLogger(AUDIT_LOGGER_NAME)
    capture = _Lines()
    audit.addHandler(capture)
    old_level = audit.level
    audit.setLevel(logging.INFO)
    dev_key, prod_key = PrivateKey.generate(), PrivateKey.generate()

    async def main() -> None:
        async with (
            serving(socket_dir, "wgm8", private_key=dev_key) as dev,
            serving(socket_dir, "wgm9", private_key=prod_key) as prod,
        ):
            for node in (dev, prod):
                await set_private_key(node)
            body = map_body(
                1,
                [
                    peer_entry(dev.public_key, "10.7.0.1", "developers", dev.tunnel.local_port),
                    peer_entry(prod.public_key, "10.7.1.1", "production", prod.tunnel.local_port),
                ],
            )
            for node in (dev, prod):
                assert node.agent is not None and (await node.agent.apply_document(sign(body))).errno == 0
            blocked = ipv4_packet("10.7.0.1", "10.7.1.1", tcp_header(40000, 80), protocol=6)
            allowed = ipv4_packet("10.7.0.1", "10.7.1.1", tcp_header(40000, 22), protocol=6)
            dev.tunnel.send_packet(blocked)
            dev.tunnel.send_packet(allowed)
            await eventually(lambda: prod.received == [allowed])

    try:
        asyncio.run(main())
    finally:
        audit.removeHandler(capture)
        audit.setLevel(old_level)
    records = [json.loads(line) for line in capture.lines]
    events = [record["event"] for record in records]
    assert events.count("map_applied") == 2 and events.count("handshake") == 2
    connections = [(r["direction"], r["dport"], r["rule"], r["action"]) for r in records if r["event"] == "connection"]
    assert ("outbound", 80, "default-deny", "deny") in connections
    assert ("outbound", 22, "dev-ssh", "accept") in connections and ("inbound", 22, "dev-ssh", "accept") in connections
    text = "\n".join(capture.lines)
    for secret in (dev_key, prod_key):
        assert secret.to_base64() not in text and secret.to_hex() not in text
