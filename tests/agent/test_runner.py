"""Embedded agents (real UDP on 127.0.0.1, no TUN) against the fake management server.

Three devices enrol with setup keys (laptop in developers, production server in production, other), receive
their maps over the stream, and the security model's ACL holds through real WireGuard sessions. Then: revocation,
a server that goes away and comes back, a map signed by another key, and expired maps with and without
fail-closed.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
from agent_helpers import SYN, Agent, echo_reply, start_agent, tcp_packet, tcp_ports, wait_for
from fake_server import FakeServer

from wgpy.agent.rules import Backoff
from wgpy.agent.runner import RunnerExit
from wgpy.crypto import Ed25519PrivateKey


@asynccontextmanager
async def mesh(
    tmp: Path, *, fail_closed: bool = False, **server_options: int
) -> AsyncIterator[tuple[FakeServer, Agent, Agent, Agent]]:
    server = FakeServer(**server_options)  # type: ignore[arg-type]
    await server.start()
    agents: list[Agent] = []
    try:
        laptop = await start_agent(server, tmp, "laptop", ["developers"], fail_closed=fail_closed)
        agents.append(laptop)
        prod = await start_agent(server, tmp, "prod", ["production"], fail_closed=fail_closed, on_packet=echo_reply)
        agents.append(prod)
        other = await start_agent(server, tmp, "other", ["other"], fail_closed=fail_closed)
        agents.append(other)
        # Everyone knows everyone's endpoint once the last one has reported its own.
        await wait_for(lambda: all(len(a.runner.device.peers) == 2 for a in agents))
        await wait_for(lambda: all(p.endpoint is not None for a in agents for p in a.runner.device.peers.values()))
        # ... and has acknowledged the map it runs (a test counting acks must not count one still on its way).
        await wait_for(lambda: all(acknowledged(server, a) for a in agents))
        yield server, laptop, prod, other
    finally:
        for agent in agents:
            await agent.runner.close()
        await server.stop()


def acknowledged(server: FakeServer, agent: Agent) -> bool:
    """Whether the serial ``agent`` runs has reached the server as an acknowledgement."""
    controller = agent.runner.mesh.controller if agent.runner.mesh is not None else None
    peer = agent.runner.enrolment.peer_id
    return controller is not None and (peer, controller.serial) in server.acks


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


def syns(agent: Agent, port: int) -> list[bytes]:
    return [p for p in agent.received if tcp_ports(p)[3] == port and tcp_ports(p)[4] == SYN]


def test_the_model_acl_through_the_tunnels(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, prod, other):
            for port in (22, 443):
                laptop.send(tcp_packet(laptop.address, prod.address, 40000 + port, port))
                await wait_for(lambda port=port: len(syns(prod, port)) == 1)  # type: ignore[misc]
                # the SYN-ACK comes back through conntrack (production may not open connections to the laptop)
                await wait_for(
                    lambda port=port: any(tcp_ports(p)[2] == port for p in laptop.received)  # type: ignore[misc]
                )
            laptop.send(tcp_packet(laptop.address, prod.address, 40080, 80))
            other.send(tcp_packet(other.address, prod.address, 40022, 22))
            prod.send(tcp_packet(prod.address, laptop.address, 50022, 22))
            await asyncio.sleep(0.3)
            assert syns(prod, 80) == []
            assert len(syns(prod, 22)) == 1  # other's SYN to 22 was not delivered
            assert [p for p in laptop.received if tcp_ports(p)[4] == SYN] == []
            assert laptop.runner.mesh is not None and prod.runner.mesh is not None and other.runner.mesh is not None
            assert laptop.runner.mesh.controller.filter.stats.accepted["allow-dev-to-prod"] == 2
            assert laptop.runner.mesh.controller.filter.stats.denied["deny-all-other"] >= 1  # tcp/80 outbound
            assert other.runner.mesh.controller.filter.stats.denied["deny-all-other"] >= 1
            assert prod.runner.mesh.controller.filter.stats.denied["deny-all-other"] >= 1
            # every map was acknowledged by serial
            assert {peer for peer, _ in server.acks} == {"p1", "p2", "p3"}
            status = laptop.runner.status()
            assert status["connected"] is True and status["map_serial"] is not None
            assert len(status["peers"]) == 2  # type: ignore[arg-type]

    run(scenario)


def test_revocation_cuts_the_laptop_within_a_second(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, prod, _other):
            laptop.send(tcp_packet(laptop.address, prod.address, 41022, 22))
            await wait_for(lambda: len(syns(prod, 22)) == 1)
            laptop_key = laptop.runner.device.public_key
            await server.revoke("p1")
            took = await wait_for(lambda: laptop_key not in prod.runner.device.peers, timeout=1.0)
            assert took < 1.0
            await wait_for(lambda: laptop.runner.exit_reason is RunnerExit.REVOKED, timeout=1.0)
            assert laptop.runner.device.peers == {}
            laptop.send(tcp_packet(laptop.address, prod.address, 41023, 22))
            await asyncio.sleep(0.2)
            assert len(syns(prod, 22)) == 1
            assert not laptop.state.file("refresh_token").exists()

    run(scenario)


def _forged_notices(server: FakeServer, laptop: Agent, prod: Agent) -> dict[str, object]:
    """Revocation notices that someone on a plain-HTTP path could send, or that a server never meant for the laptop:
    none, another key's, the prod peer's (signed by the real key), a signed map in the notice's place, garbage."""
    laptop_peer, prod_peer = server.peers[laptop.runner.enrolment.peer_id], server.peers[prod.runner.enrolment.peer_id]
    tampered = server.notice(laptop_peer)
    tampered["revocation"] = {**tampered["revocation"], "reason": "deleted"}  # type: ignore[dict-item]
    return {
        "none": None,
        "another key": server.notice(laptop_peer, Ed25519PrivateKey.generate()),
        "another peer": server.notice(prod_peer),
        "tampered": tampered,
        "a signed map": server.build_map(laptop_peer),
        "garbage": {"revocation": "yes", "signature": "AAAA"},
    }


FORGERIES = ("none", "another key", "another peer", "tampered", "a signed map", "garbage")


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_revocation_frame_without_a_valid_notice_changes_nothing(tmp_path: Path, forgery: str) -> None:
    """A frame and close code that anyone on a plain-HTTP path could forge: the laptop keeps its peers, its state and
    its traffic, and reconnects; a real revocation after it still cuts it off."""

    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, prod, _other):
            peer_id = laptop.runner.enrolment.peer_id
            connects = server.stream_connects
            await server.say_revoked(peer_id, _forged_notices(server, laptop, prod)[forgery])
            await wait_for(lambda: server.stream_connects > connects and server.connected(peer_id))
            assert laptop.runner.exit_reason is None
            assert prod.runner.device.public_key in laptop.runner.device.peers
            assert laptop.state.file("refresh_token").exists() and laptop.state.file("map.json").exists()
            laptop.send(tcp_packet(laptop.address, prod.address, 43022, 22))
            await wait_for(lambda: len(syns(prod, 22)) == 1)
            await server.revoke(peer_id)
            await wait_for(lambda: laptop.runner.exit_reason is RunnerExit.REVOKED, timeout=2.0)
            assert laptop.runner.device.peers == {}

    run(scenario)


@pytest.mark.parametrize("forgery", ("none", "another key", "another peer"))
def test_a_403_without_a_valid_notice_is_retried_not_believed(tmp_path: Path, forgery: str) -> None:
    """Every request refused 403 "revoked" without a notice the laptop can verify: it keeps its map and state and
    goes on retrying; once the path is clean again it reconnects."""

    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, prod, _other):
            peer_id = laptop.runner.enrolment.peer_id
            server.forged_403 = _forged_notices(server, laptop, prod)[forgery]
            refused = len(server.requests)
            await server.say_revoked(peer_id)  # the stream drops; every request from now on is refused
            await wait_for(lambda: len(server.requests) >= refused + 4)  # a reconnect or three, all refused
            counted, began = len(server.requests), time.monotonic()
            await asyncio.sleep(1.0)
            # The backoff (base 0.05 s, cap 0.3 s here) spaces the attempts: a handful a second, not a hot loop.
            assert len(server.requests) - counted <= 2 * ((time.monotonic() - began) / 0.025 + 2)
            assert laptop.runner.exit_reason is None and not laptop.runner.connected
            assert (
                laptop.runner.last_error is not None and "no valid signed revocation notice" in laptop.runner.last_error
            )
            assert prod.runner.device.public_key in laptop.runner.device.peers
            assert laptop.state.file("refresh_token").exists()
            server.forged_403 = False
            await wait_for(lambda: laptop.runner.connected)

    run(scenario)


def test_a_peer_away_during_a_revocation_drops_the_revoked_peer_when_it_comes_back(tmp_path: Path) -> None:
    """Prod has lost the server when the laptop is revoked: until it reconnects it runs its last map (the laptop
    still in it: that is the bound the map's expiry sets), and its first map after the reconnect drops the laptop."""

    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, prod, _other):
            prod_id, laptop_key = prod.runner.enrolment.peer_id, laptop.runner.device.public_key
            await server.cut_off(prod_id)
            await wait_for(lambda: not prod.runner.connected)
            await server.revoke(laptop.runner.enrolment.peer_id)
            await wait_for(lambda: laptop.runner.exit_reason is RunnerExit.REVOKED)
            await asyncio.sleep(0.3)
            assert laptop_key in prod.runner.device.peers  # prod has heard nothing yet
            server.away.clear()
            took = await wait_for(lambda: laptop_key not in prod.runner.device.peers)
            assert took < 5.0 and prod.runner.connected

    run(scenario)


def test_forged_revocations_after_each_map_do_not_defeat_the_backoff(tmp_path: Path) -> None:
    """Someone on the path lets each map through, then forges a revocation: the agent reconnects (it believes
    nothing), but its backoff goes on growing as if the connection had failed, so it is not kept reconnecting at the
    base delay (each reconnect costs the server a map)."""

    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, _prod, _other):
            peer_id = laptop.runner.enrolment.peer_id
            first, began = server.stream_connects, time.monotonic()
            while time.monotonic() - began < 2.0:  # bounded: 2 s of forgeries
                if server.connected(peer_id) and laptop.runner.connected:
                    await server.say_revoked(peer_id)
                await asyncio.sleep(0.01)
            connects = server.stream_connects - first
            # Reset to the base delay each time, it would be one connect per 0.025-0.05 s (40-80 in 2 s); growing to
            # the cap of 0.3 s, at most 2 / 0.15 + a few.
            assert 1 <= connects <= 2 / 0.15 + 4, connects
            assert laptop.runner.exit_reason is None

    run(scenario)


def test_a_revocation_first_seen_as_the_streams_handshake_403_ends_the_agent_without_a_second_wait(
    tmp_path: Path,
) -> None:
    """The laptop's stream drops while it is revoked and its access token still works: its next stream handshake
    gets a 403 with no body, hence no notice; it asks again at once (a refresh), whose 403 carries the notice. With
    a backoff of exactly 2 s, the agent ends about 2 s after the drop, not 4."""

    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, _prod, _other):
            peer_id = laptop.runner.enrolment.peer_id
            laptop.runner.backoff = Backoff(base=2.0, cap=2.0, rng=lambda: 1.0)
            server.peers[peer_id].revoked = True  # no frame: the stream just ends
            for ws in list(server._streams.get(peer_id, ())):
                await ws.close(code=1001)
            took = await wait_for(lambda: laptop.runner.exit_reason is RunnerExit.REVOKED, timeout=6.0)
            assert took < 3.5, took
            assert laptop.runner.device.peers == {}

    run(scenario)


def test_access_tokens_stay_in_memory(tmp_path: Path) -> None:
    """The model keeps access tokens in memory only: after enrolment, maps, a reconnect and a refresh, none of the
    access tokens the server issued is in any file of the agents' state directories (the refresh token is)."""

    async def scenario() -> None:
        async with mesh(tmp_path, access_lifetime=2) as (server, laptop, _prod, _other):
            peer_id = laptop.runner.enrolment.peer_id
            await server.say_revoked(peer_id)  # not believed: a reconnect, with a new access token
            await wait_for(lambda: server.refreshes >= 4, timeout=10.0)  # and refreshes before each expiry
            await wait_for(lambda: laptop.runner.connected)
            issued = list(server._access)
            assert len(issued) >= 4
            files = [path for path in tmp_path.rglob("*") if path.is_file()]
            assert laptop.state.file("refresh_token") in files
            for path in files:
                data = path.read_bytes()
                assert not any(token.encode() in data for token in issued), path

    run(scenario)


def test_server_away_keeps_the_mesh_and_reconnect_comes_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, prod, _other):
            port = server.port
            await server.stop()
            await wait_for(lambda: not laptop.runner.connected)
            laptop.send(tcp_packet(laptop.address, prod.address, 42022, 22))
            await wait_for(lambda: len(syns(prod, 22)) == 1)  # peers go on talking on the last map
            assert laptop.runner.last_error is not None and "\n" not in laptop.runner.last_error
            server.port = port
            await server.start()
            await wait_for(lambda: laptop.runner.connected and prod.runner.connected, timeout=5.0)

    run(scenario)


@contextmanager
def wgpy_logs(caplog: pytest.LogCaptureFixture, level: int) -> Iterator[None]:
    """Capture the ``wgpy`` loggers directly (another test may have stopped them propagating to the root)."""
    logger = logging.getLogger("wgpy")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(level)
    caplog.handler.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(old_level)


def test_a_map_signed_by_another_key_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, prod, _other):
            assert laptop.runner.mesh is not None
            serial = laptop.runner.mesh.controller.serial
            acks = len(server.acks)
            server.sign_with = Ed25519PrivateKey.generate()
            server.acl = []  # a rogue map would open nothing... but it must not even be looked at
            await server.push_all()
            await asyncio.sleep(0.3)
            assert laptop.runner.mesh.controller.serial == serial
            assert len(server.acks) == acks  # refused maps are not acknowledged
            assert "bad_signature" in caplog.text
            laptop.send(tcp_packet(laptop.address, prod.address, 43022, 22))
            await wait_for(lambda: len(syns(prod, 22)) == 1)

    with wgpy_logs(caplog, logging.INFO):
        run(scenario)


@pytest.mark.parametrize("fail_closed", [False, True])
def test_an_expired_map(tmp_path: Path, fail_closed: bool) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path, fail_closed=fail_closed, map_lifetime=2) as (server, laptop, prod, _other):
            await server.stop()  # no fresh map will come
            assert laptop.runner.mesh is not None
            netmap = laptop.runner.mesh.controller.network_map
            assert netmap is not None
            await asyncio.sleep(max(0.0, netmap.expires_at - laptop.runner.wall_clock()) + 0.3)
            laptop.send(tcp_packet(laptop.address, prod.address, 44022, 22))
            await asyncio.sleep(0.3)
            delivered = len(syns(prod, 22))
            if fail_closed:
                assert delivered == 0
                assert laptop.runner.mesh.controller.filter.stats.denied["map-expired"] >= 1
                assert laptop.runner.status()["traffic_allowed"] is False
            else:
                assert delivered == 1
                assert laptop.runner.status()["traffic_allowed"] is True

    run(scenario)


def test_the_private_key_never_reaches_the_server(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, _prod, _other):
            private = laptop.runner.device.private_key
            assert private is not None
            secrets = {private.to_base64(), private.to_hex(), base64.urlsafe_b64encode(private.raw).decode()}
            for request in server.requests:
                blob = request.body.decode("latin-1") + repr(request.headers) + request.path
                assert not any(secret in blob for secret in secrets)
            assert not any(secret in caplog.text for secret in secrets)
            laptop.runner._write_status()
            for name in ("state.json", "status.json", "map.json", "refresh_token"):
                text = laptop.state.file(name).read_text()
                assert not any(secret in text for secret in secrets), name
            assert private.to_base64() not in repr(laptop.runner) + repr(laptop.runner.client)
            # and every request was signed (the fake server checks each proof with the real verifier)
            assert all("X-Wgpy-Proof" in r.headers for r in server.requests)

    with wgpy_logs(caplog, logging.DEBUG):
        run(scenario)


def test_a_changed_local_address_is_reported_again_after_a_reconnect(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with mesh(tmp_path) as (server, laptop, _prod, _other):
            assert server.peers["p1"].endpoint == {"host": "127.0.0.1", "port": laptop.runner.tunnel.local_port}
            laptop.runner.advertise_host = "127.0.0.2"  # as if the laptop had moved to another network
            for ws in list(server._streams.get("p1", ())):
                await ws.close()
            await wait_for(lambda: (server.peers["p1"].endpoint or {}).get("host") == "127.0.0.2")

    run(scenario)
