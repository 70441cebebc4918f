"""Shared pieces of the agent tests: IPv4/TCP packets and embedded agents (no TUN) enrolled with a fake server."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fake_server import FakeServer

from wgpy.agent.client import Backoff
from wgpy.agent.enrol import enrol_device
from wgpy.agent.keystore import KeyStore, StateDir
from wgpy.agent.runner import AgentRunner

SYN, ACK = 0x02, 0x10


def tcp_packet(src: str, dst: str, sport: int, dport: int, flags: int = SYN) -> bytes:
    """An IPv4 TCP segment with no payload (checksums zero: only the filter and the peers parse it)."""
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0)
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(segment),
        0,
        0,
        64,
        6,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return header + segment


def tcp_ports(packet: bytes) -> tuple[str, str, int, int, int]:
    """(src, dst, sport, dport, flags) of an IPv4 TCP packet."""
    ihl = (packet[0] & 0x0F) * 4
    sport, dport = struct.unpack_from("!HH", packet, ihl)
    return (
        str(ipaddress.IPv4Address(packet[12:16])),
        str(ipaddress.IPv4Address(packet[16:20])),
        sport,
        dport,
        packet[ihl + 13],
    )


@dataclass
class Agent:
    name: str
    runner: AgentRunner
    state: StateDir
    received: list[bytes] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.runner.enrolment.address

    def send(self, packet: bytes) -> None:
        self.runner.tunnel.send_packet(packet)


async def start_agent(
    server: FakeServer,
    tmp: Path,
    name: str,
    groups: list[str],
    *,
    fail_closed: bool = False,
    on_packet: Callable[[Agent, bytes], None] | None = None,
) -> Agent:
    state = StateDir(tmp / name)
    enrolled = await enrol_device(
        state,
        KeyStore(state, keyring_backend=None),
        url=server.url,
        setup_key=server.add_setup_key(groups),
        management_key=server.management_key_b64,
        name=name,
        fail_closed=fail_closed,
    )
    holder: list[Agent] = []

    def deliver(packet: bytes) -> None:
        agent = holder[0]
        agent.received.append(packet)
        if on_packet is not None:
            on_packet(agent, packet)

    runner = AgentRunner(
        enrolled.enrolment,
        enrolled.private_key,
        enrolled.client,
        state=state,
        on_packet=deliver,
        bind_address="127.0.0.1",
        fail_closed=fail_closed,
        initial_map=enrolled.initial_map,
        backoff=Backoff(base=0.05, cap=0.3),
    )
    agent = Agent(name, runner, state)
    holder.append(agent)
    await runner.start()
    return agent


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> float:
    """Wait until ``condition()`` holds; returns the seconds it took. Raises ``AssertionError`` on timeout."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(step)
    return time.monotonic() - start


def echo_reply(agent: Agent, packet: bytes) -> None:
    """On a SYN, answer SYN-ACK (as a server's TCP would), through the agent's own tunnel."""
    src, dst, sport, dport, flags = tcp_ports(packet)
    if flags == SYN:
        agent.send(tcp_packet(dst, src, dport, sport, SYN | ACK))
