"""The management client with a list of replicas: a replica that refuses connections is skipped at once, other
failures move the next attempt to the next replica; URLs come as a list or one string with commas."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from fake_server import FakeServer

from wgpy.agent.client import ManagementClient, ManagementError
from wgpy.errors import ConfigError
from wgpy.keys import PrivateKey
from wgpy.management.server import free_port
from wgpy.mesh import load_management_public_key


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=30))


def test_urls_are_parsed_from_a_list_or_commas() -> None:
    server = FakeServer()
    pinned = load_management_public_key(server.management_key_b64)
    client = ManagementClient("http://a:1, http://b:2/prefix", PrivateKey.generate(), pinned)
    assert [str(url) for url in client.base_urls] == ["http://a:1", "http://b:2/prefix"]
    assert str(client.base_url) == "http://a:1"
    client.failover()
    assert str(client.base_url) == "http://b:2/prefix"
    client.failover()
    assert str(client.base_url) == "http://a:1"
    assert len(ManagementClient(["http://a:1"], PrivateKey.generate(), pinned).base_urls) == 1
    for bad in ("", "http://a:1,ftp://b", "http://a:1,,"):
        with pytest.raises(ConfigError):
            ManagementClient(bad, PrivateKey.generate(), pinned)


def test_a_refusing_replica_is_skipped_and_the_stream_follows() -> None:
    async def scenario() -> None:
        server = FakeServer()
        await server.start()
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        try:
            client = ManagementClient(
                [dead, server.url], PrivateKey.generate(), load_management_public_key(server.management_key_b64)
            )
            await client.fetch_info()  # the first replica refuses: the second answers in the same call
            assert str(client.base_url) == server.url
            await client.enrol(server.add_setup_key(["developers"]))
            client.failover()  # back to the dead one: the stream goes to the live one at once
            async with client.stream() as stream:
                assert str(client.base_url) == server.url
                assert (await stream.receive()) is not None
            await client.close()
            lonely = ManagementClient(
                dead, PrivateKey.generate(), load_management_public_key(server.management_key_b64)
            )
            with pytest.raises(ManagementError) as caught:
                await lonely.fetch_info()
            assert caught.value.retryable
            await lonely.close()
        finally:
            await server.stop()

    run(scenario)
