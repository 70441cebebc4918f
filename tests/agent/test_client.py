"""The management client: proof on every request, token refresh and rotation, errors, backoff and reconnects."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from agent_helpers import start_agent, wait_for
from fake_server import FakeServer

from wgpy.agent.client import Backoff, ManagementClient, ManagementError, token_expiry
from wgpy.crypto import Ed25519PrivateKey
from wgpy.keys import PrivateKey
from wgpy.mesh import load_management_public_key


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


def test_backoff_is_exponential_jittered_and_bounded() -> None:
    high = Backoff(base=0.5, cap=8.0, rng=lambda: 1.0)
    assert [high.next_delay() for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    low = Backoff(base=0.5, cap=8.0, rng=lambda: 0.0)
    assert [low.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    for _ in range(200):
        assert high.next_delay() <= 8.0  # no overflow after many attempts
    high.reset()
    assert high.next_delay() == 0.5
    jittered = Backoff(base=1.0, cap=1.0)
    assert len({jittered.next_delay() for _ in range(20)}) > 1  # two agents rarely pick the same delay
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base=0.0)


def test_token_expiry_reads_the_claims_only() -> None:
    body = base64.urlsafe_b64encode(json.dumps({"iat": 100, "exp": 3700}).encode()).decode().rstrip("=")
    assert token_expiry(f"h.{body}.s") == (100.0, 3700.0)
    assert token_expiry("not a token") is None
    assert token_expiry("a.!!!.c") is None


async def _client(server: FakeServer, **options: object) -> tuple[ManagementClient, list[str]]:
    saved: list[str] = []
    client = ManagementClient(
        server.url,
        PrivateKey.generate(),
        load_management_public_key(server.management_key_b64),
        on_refresh_token=saved.append,
        **options,  # type: ignore[arg-type]
    )
    await client.fetch_info()
    return client, saved


def test_refresh_rotates_and_saves_the_new_token_first() -> None:
    async def scenario() -> None:
        server = FakeServer()
        await server.start()
        try:
            client, saved = await _client(server)
            await client.enrol(server.add_setup_key(["developers"]), "n")
            first = saved[-1]
            await client.refresh()
            assert len(saved) == 2 and saved[-1] != first
            # the old refresh token is single use: presenting it again is refused, in one line
            replay, _ = await _client(server, refresh_token=first)
            with pytest.raises(ManagementError) as info:
                await replay.refresh()
            assert info.value.status == 401 and info.value.fatal and "token_reuse" in str(info.value)
            assert first not in str(info.value)
            await replay.close()
            await client.close()
        finally:
            await server.stop()

    run(scenario)


def test_short_lived_access_tokens_are_refreshed_before_expiry(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = FakeServer(access_lifetime=2)
        await server.start()
        agent = await start_agent(server, tmp_path, "laptop", ["developers"])
        try:
            await wait_for(lambda: agent.runner.connected)
            before = server.refreshes
            await asyncio.sleep(4.5)
            assert server.refreshes >= before + 2  # every ~1.6 s (80 % of 2 s)
            assert agent.runner.connected and agent.runner.client.has_access_token
            assert agent.state.read_refresh_token() is not None
            await agent.runner.client.get_map()  # the current access token works
        finally:
            await agent.runner.close()
            await server.stop()

    run(scenario)


@pytest.mark.parametrize(
    ("status", "words", "retryable"),
    [
        (400, "400 bad request (injected)", False),
        (403, "403 forbidden (injected)", False),
        (404, "404 not found (injected)", False),
        (409, "409 conflict (injected)", False),
        (413, "413 request too large (injected)", False),
        (429, "429 too many requests (injected)", True),
        (500, "500 server error (injected)", True),
        (503, "503 server error (injected)", True),
    ],
)
def test_every_http_error_is_one_clean_line(status: int, words: str, retryable: bool) -> None:
    async def scenario() -> None:
        server = FakeServer()
        await server.start()
        try:
            client, _ = await _client(server)
            await client.enrol(server.add_setup_key(["developers"]))
            server.fail_status = status
            with pytest.raises(ManagementError) as info:
                await client.report_endpoint("127.0.0.1", 1)
            message = str(info.value)
            assert message.startswith("cannot report the endpoint: the management server answered "), message
            assert words in message and "\n" not in message
            assert info.value.retryable is retryable
            assert "Bearer" not in message and "eyJ" not in message
            await client.close()
        finally:
            await server.stop()

    run(scenario)


def test_401_refreshes_once_then_reports() -> None:
    async def scenario() -> None:
        server = FakeServer()
        await server.start()
        try:
            client, saved = await _client(server)
            await client.enrol(server.add_setup_key(["developers"]))
            server._access.clear()  # the server forgot every access token (a restart with new keys, say)
            await client.get_map()  # refreshed and retried
            assert len(saved) == 2
            server.fail_status = 401
            with pytest.raises(ManagementError, match="401 not authenticated") as info:
                await client.get_map()
            assert info.value.fatal
            await client.close()
        finally:
            await server.stop()

    run(scenario)


def test_unreachable_and_foreign_servers() -> None:
    async def scenario() -> None:
        client = ManagementClient(
            "http://127.0.0.1:1", PrivateKey.generate(), Ed25519PrivateKey.generate().public_key()
        )
        with pytest.raises(ManagementError, match="cannot reach the management server") as info:
            await client.fetch_info()
        assert info.value.retryable and "\n" not in str(info.value)
        await client.close()
        server = FakeServer()
        await server.start()
        try:
            stranger = ManagementClient(server.url, PrivateKey.generate(), Ed25519PrivateKey.generate().public_key())
            with pytest.raises(ManagementError, match="not signed by the pinned management key"):
                await stranger.fetch_info()
            assert stranger.proof_key is None
            await stranger.close()
        finally:
            await server.stop()

    run(scenario)


def test_reconnects_back_off_while_the_server_fails(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = FakeServer()
        await server.start()
        agent = await start_agent(server, tmp_path, "laptop", ["developers"])  # backoff base 0.05, cap 0.3
        try:
            await wait_for(lambda: agent.runner.connected)
            server.fail_status = 503
            for ws in list(server._streams.get("p1", ())):
                await ws.close()
            await wait_for(lambda: not agent.runner.connected)
            start = len(server.requests)
            began = time.monotonic()
            await asyncio.sleep(2.0)
            attempts = len(server.requests) - start
            elapsed = time.monotonic() - began
            assert 3 <= attempts <= elapsed / 0.15 + 2, attempts  # bounded by the backoff, not a hot loop
            assert agent.runner.last_error is not None and "503" in agent.runner.last_error
            server.fail_status = None
            took = await wait_for(lambda: agent.runner.connected, timeout=2.0)
            assert took < 1.0
        finally:
            await agent.runner.close()
            await server.stop()

    run(scenario)


def test_client_repr_hides_secrets() -> None:
    key = PrivateKey.generate()
    client = ManagementClient(
        "http://127.0.0.1:9",
        key,
        Ed25519PrivateKey.generate().public_key(),
        refresh_token="secret.refresh.token",  # noqa: S106
    )
    assert key.to_base64() not in repr(client) and "secret.refresh.token" not in repr(client)
    with pytest.raises(Exception, match="management URL"):
        ManagementClient("ftp://x", key, Ed25519PrivateKey.generate().public_key())


def test_refresh_delay() -> None:
    from wgpy.agent.rules import refresh_delay

    assert refresh_delay(3600) == 2880.0  # 80 % of an hour (earlier than a minute before expiry)
    assert refresh_delay(200) == 140.0  # a minute before expiry is earlier than 80 %
    assert refresh_delay(2) == 1.6
    assert refresh_delay(0.1) == 0.5  # never a hot loop


def test_a_clock_off_by_more_than_the_proof_window_is_not_fatal() -> None:
    async def scenario() -> None:
        server = FakeServer()
        await server.start()
        try:
            client, _ = await _client(server, clock=lambda: time.time() + 600)
            with pytest.raises(ManagementError, match="stale_proof") as info:
                await client.enrol(server.add_setup_key(["developers"]))
            assert info.value.retryable and not info.value.fatal
            await client.close()
        finally:
            await server.stop()

    run(scenario)
