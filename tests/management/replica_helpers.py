"""Several management replicas in one event loop, sharing one state directory (the key files) and one PostgreSQL
database, each with its own engine, push hub and LISTEN connection: ``replicas(tmp_path, url, 2)`` yields one
``Harness`` per replica (one clock, one HTTP session), and ``moved(agent, harness)`` is the same agent (key,
tokens, peer id) talking to another replica."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
from collections.abc import AsyncIterator

import aiohttp
from management_helpers import Agent, Clock, Harness

from wgpy.management.server import running_replica, running_server

__all__ = ["moved", "replicas"]


@contextlib.asynccontextmanager
async def replicas(tmp_path: pathlib.Path, db_url: str, count: int = 2) -> AsyncIterator[list[Harness]]:
    clock = Clock()
    state = tmp_path / "state"
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(running_server(state, db_url=db_url, clock=clock))
        running = [first]
        for _ in range(count - 1):
            running.append(
                await stack.enter_async_context(
                    running_replica(state, db_url=db_url, admin_token=first.admin_token, clock=clock)
                )
            )
        http = await stack.enter_async_context(aiohttp.ClientSession())
        for replica in running:
            assert replica.fanout is not None
            await asyncio.wait_for(replica.fanout.connected.wait(), 10)
        harnesses = [Harness(replica, http, clock) for replica in running]
        for h in harnesses:
            h.secrets.append(first.admin_token)
        yield harnesses


def moved(agent: Agent, harness: Harness) -> Agent:
    """``agent`` (same key, tokens and peer id) making its requests to ``harness``'s replica."""
    other = Agent(harness, agent.private, agent.access_token, agent.refresh_token, agent.peer_id)
    harness.peers.append(other)
    return other
