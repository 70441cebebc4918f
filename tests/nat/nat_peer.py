"""One peer of the NAT lab, run inside its namespace: ``python nat_peer.py SEED STUN_HOST:PORT``.

A ``Tunnel`` on all addresses with a ``NatHandler``; JSON lines on stdout (events) and stdin (commands):

* out ``{"event": "ready", "port", "public_key"}``, ``{"event": "reflexive", "address"}``,
  ``{"event": "packet", "payload"}`` (each decrypted packet's UDP payload), ``{"event": "status", ...}``;
* in ``{"cmd": "peer", "public_key", "allowed_ip"}``, ``{"cmd": "candidates", "public_key", "candidates",
  "announced"}``, ``{"cmd": "relay", "host", "port", "username", "password"}``, ``{"cmd": "send", "src", "dst",
  "payload"}``, ``{"cmd": "status"}``, ``{"cmd": "quit"}``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys

from helpers import ipv4_packet, private_key

from wgpy.device import Device
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.keys import PublicKey
from wgpy.nat.io.handler import NatHandler
from wgpy.nat.io.relay import TurnRelay


def emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def local_ip_towards(host: str) -> str:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((host, 9))
        return str(probe.getsockname()[0])
    finally:
        probe.close()


async def main(seed: int, stun: str) -> None:
    host, port = stun.rsplit(":", 1)
    server = (host, int(port))
    device = Device(private_key(seed))
    tunnel = Tunnel(device, on_packet=lambda p: emit(event="packet", payload=p[20:].decode(errors="replace")))
    await tunnel.start()
    nat = NatHandler([server])
    nat.host_candidates = [(local_ip_towards(host), tunnel.local_port)]
    nat.on_reflexive = lambda _s, a: emit(event="reflexive", address=list(a))
    nat.attach(tunnel)
    assert device.public_key is not None
    emit(event="ready", port=tunnel.local_port, public_key=device.public_key.to_base64())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            kind = command["cmd"]
            if kind == "peer":
                device.add_peer(PublicKey.from_base64(command["public_key"]), allowed_ips=[command["allowed_ip"]])
            elif kind == "candidates":
                n = nat.set_remote_candidates(
                    PublicKey.from_base64(command["public_key"]), command["candidates"], command["announced"]
                )
                emit(event="admitted", count=n)
            elif kind == "relay":
                relay = TurnRelay((command["host"], command["port"]), command["username"], command["password"], print)
                address = await nat.start_relay(relay)
                emit(event="relayed", address=list(address))
            elif kind == "local":
                emit(event="local", candidates=[c.to_json() for c in nat.local_candidates()])
            elif kind == "send":
                tunnel.send_packet(ipv4_packet(command["src"], command["dst"], command["payload"].encode()))
            elif kind == "status":
                peers = {}
                for key, paths in nat.paths.items():
                    peer = device.peer(key)
                    peers[key.to_base64()] = {
                        "state": paths.state.value,
                        "selected": list(paths.selected) if paths.selected else None,
                        "endpoint": list(peer.endpoint[:2]) if peer and peer.endpoint else None,
                        "reason": paths.reason,
                        "refused": paths.refused,
                        "handshakes": device.stats.handshakes_completed,
                        "probes": {f"{h}:{p}": n for (h, p), n in paths.probes_sent.items()},
                        "candidates": [str(c) for c in paths.remote],
                    }
                emit(
                    event="status",
                    peers=peers,
                    stun_drops={k.name: v for k, v in nat.discovery.stats.drops.items()},
                    relay_sent=nat.relay.sent if nat.relay else 0,
                    drops={k.name: v for k, v in device.stats.drops.items()},
                )
            elif kind == "quit":
                break
    finally:
        nat.detach()
        tunnel.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
