"""A ``wgpy up`` agent (embedded: packets to stdout, no TUN) in a lab namespace, enrolled with the real server.

``python nat_agent.py URL SETUP_KEY MANAGEMENT_KEY NAME STATE_DIR``; JSON lines as in ``nat_peer.py``: out
``ready`` (``public_key``, ``address``), ``packet`` (``payload``), ``status`` (``AgentRunner.status()``); in
``{"cmd": "send", "dst", "payload"}``, ``{"cmd": "status"}``, ``{"cmd": "quit"}``.

The agent keeps its state (and ``status.json``, the pid file) in STATE_DIR as ``wgpy up`` does, so ``wgpy status
--state-dir STATE_DIR`` shows it. ``NAT_AGENT_WORKER=1`` runs the tunnel with its data-plane worker (``wgpy up
--worker``). ``NAT_AGENT_ROGUE=HOST:PORT`` makes this agent a rogue peer: the candidates it sends also name
HOST:PORT (as server-reflexive, and HOST:PORT+1 as relayed), an address the management server never announced for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pathlib
import struct
import sys

from support.helpers import ipv4_packet

from wgpy.agent.enrol import enrol_device
from wgpy.agent.keystore import KeyStore, StateDir
from wgpy.agent.runner import AgentRunner
from wgpy.nat.candidates import Candidate, CandidateKind


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(url: str, setup_key: str, management_key: str, name: str, state_dir: str) -> None:
    state = StateDir(pathlib.Path(state_dir))
    enrolled = await enrol_device(
        state,
        KeyStore(state, keyring_backend=False),
        url=url,
        setup_key=setup_key,
        management_key=management_key,
        name=name,
    )
    runner = AgentRunner(
        enrolled.enrolment,
        enrolled.private_key,
        enrolled.client,
        state=state,
        on_packet=lambda p: emit(event="packet", payload=p[28:].decode(errors="replace")),
        initial_map=enrolled.initial_map,
        worker=os.environ.get("NAT_AGENT_WORKER") == "1",
    )
    rogue = os.environ.get("NAT_AGENT_ROGUE")
    if rogue:
        host, port = rogue.rsplit(":", 1)
        honest = runner.nat.handler.local_candidates

        def with_rogue() -> list[Candidate]:
            extra = [
                Candidate(CandidateKind.SERVER_REFLEXIVE, host, int(port)),
                Candidate(CandidateKind.RELAYED, host, int(port) + 1),
            ]
            return [*honest(), *extra]

        runner.nat.handler.local_candidates = with_rogue  # type: ignore[method-assign]
    state.write_pid()  # as wgpy up does: wgpy status reads the running agent's status.json only with it
    await runner.start()
    address = enrolled.enrolment.address.split("/")[0]
    emit(
        event="ready",
        public_key=enrolled.private_key.public_key().to_base64(),
        address=address,
        port=runner.tunnel.local_port,
    )
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command["cmd"] == "send":
                data = command["payload"].encode()
                udp = (
                    struct.pack("!HHHH", 40000, 40000, 8 + len(data), 0) + data
                )  # a whole UDP header: the ACL reads ports
                runner.tunnel.send_packet(ipv4_packet(address, command["dst"], udp))
            elif command["cmd"] == "status":
                status = runner.status()
                relay = runner.nat.handler.relay
                status["relay_sent"] = relay.sent if relay else 0
                status["relayed_address"] = list(relay.relayed_address) if relay and relay.relayed_address else None
                status["credentials_expire_at"] = runner.nat.credentials_expire_at
                status["relay_errors"] = relay.errors if relay else 0
                status["worker_pid"] = runner.tunnel.worker_pid
                status["worker_failures"] = runner.tunnel.worker_failures
                status["relay_lost"] = relay.lost if relay else None
                status["relayed_targets"] = [
                    f"{h}:{p} {r.relayed_address}" for (h, p), r in runner.nat.handler.relayed.items()
                ]
                status["event"] = "status"
                emit(**status)
            elif command["cmd"] == "quit":
                break
    finally:
        await runner.close()


if __name__ == "__main__":
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("wgpy.nat").setLevel(logging.INFO)  # the path story, for a failing test's message
    asyncio.run(main(*sys.argv[1:6]))
