"""One peer of the NAT lab, run inside its namespace: ``python nat_peer.py SEED STUN_HOST:PORT``.

A ``Tunnel`` on all addresses with a ``NatHandler``; JSON lines on stdout (events) and stdin (commands):

* out ``{"event": "ready", "port", "public_key"}``, ``{"event": "reflexive", "address"}``,
  ``{"event": "packet", "payload"}`` (each decrypted packet's UDP payload), ``{"event": "status", ...}``;
* in ``{"cmd": "peer", "public_key", "allowed_ip"}``, ``{"cmd": "candidates", "public_key", "candidates",
  "announced"}``, ``{"cmd": "relay", "host", "port", "username", "password"}``, ``{"cmd": "send", "src", "dst",
  "payload"}``, ``{"cmd": "status"}``, ``{"cmd": "quit"}``.

``NAT_PEER_WORKER=1`` gives the tunnel its data-plane worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time

from support.helpers import ipv4_packet, private_key

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


def _src(packet: bytes) -> str:
    return ".".join(str(b) for b in packet[12:16])


def _dst(packet: bytes) -> str:
    return ".".join(str(b) for b in packet[16:20])


STALL_TIME = 0.02  # seconds without an echo before the packets in flight count as lost (ours: 30x the relayed p90 RTT)


async def _bench(
    tunnel: Tunnel, command: dict[str, object], waiter: dict[str, asyncio.Future[bytes] | None], received: list[int]
) -> dict[str, float]:
    """Round trips one at a time (latency), then a window of packets in flight (throughput), to an echoing peer."""
    loop = asyncio.get_running_loop()
    src, dst = str(command["src"]), str(command["dst"])
    count, size, window = int(str(command["count"])), int(str(command["size"])), int(str(command["window"]))
    rtts = []
    for n in range(count):
        future: asyncio.Future[bytes] = loop.create_future()
        waiter["next"] = future
        started = time.perf_counter()
        tunnel.send_packet(ipv4_packet(src, dst, b"\x00" + n.to_bytes(4, "big")))
        await asyncio.wait_for(future, 5.0)
        rtts.append(time.perf_counter() - started)
    rtts.sort()
    payload = b"\x00" + bytes(size - 21)
    received[0] = 0
    total = count * 10
    started = last_arrival = time.perf_counter()
    sent = lost = stalls = 0
    deadline = started + 30.0
    while received[0] + lost < total and time.perf_counter() < deadline:  # bounded by the deadline
        while sent < total and sent - received[0] - lost < window:
            tunnel.send_packet(ipv4_packet(src, dst, payload))
            sent += 1
        before = received[0]
        future = loop.create_future()
        waiter["next"] = future
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(future, STALL_TIME)
        if received[0] == before:  # nothing came back for STALL_TIME: what is in flight is lost; reopen the window
            lost += sent - received[0] - lost
            stalls += 1
        else:
            last_arrival = time.perf_counter()
    elapsed = last_arrival - started
    waiter["next"] = None
    return {
        "rtt_median_ms": 1000 * rtts[len(rtts) // 2],
        "rtt_p90_ms": 1000 * rtts[int(len(rtts) * 0.9)],
        "echoed": received[0],
        "sent": sent,
        "stalls": stalls,
        "mbit_per_second_echoed": 8 * received[0] * size / elapsed / 1e6,
    }


async def main(seed: int, stun: str) -> None:
    host, port = stun.rsplit(":", 1)
    server = (host, int(port))
    device = Device(private_key(seed))
    mode = {"echo": False}
    waiter: dict[str, asyncio.Future[bytes] | None] = {"next": None}
    received: list[int] = [0]

    def on_packet(packet: bytes) -> None:
        if mode["echo"]:  # the benchmark's far end: every packet goes back with the addresses swapped
            tunnel.send_packet(ipv4_packet(_dst(packet), _src(packet), packet[20:]))
            return
        future = waiter["next"]
        if future is not None and packet[20:21] == b"\x00":  # a benchmark packet back
            received[0] += 1
            if not future.done():
                future.set_result(packet)
            return
        emit(event="packet", payload=packet[20:].decode(errors="replace"))

    tunnel = Tunnel(device, on_packet=on_packet, worker=os.environ.get("NAT_PEER_WORKER") == "1")
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
            elif kind == "echo":
                mode["echo"] = True
                emit(event="echoing")
            elif kind == "bench":
                emit(event="bench", **(await _bench(tunnel, command, waiter, received)))
            elif kind == "status":
                peers = {}
                nat.observe_paths()
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
                    worker_pid=tunnel.worker_pid,
                    worker_failures=tunnel.worker_failures,
                    drops={k.name: v for k, v in device.stats.drops.items()},
                )
            elif kind == "quit":
                break
    finally:
        nat.detach()
        tunnel.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
