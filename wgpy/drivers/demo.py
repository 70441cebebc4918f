"""``wgpy demo``: two wgpy peers in one process, talking WireGuard over real UDP sockets on 127.0.0.1.

No TUN device and no root: each side is a ``Device`` driven by a socket-only ``Tunnel`` (with ``--worker``, each
tunnel also starts its data-plane worker process, which seals on another core). Peer A sends IPv4/UDP
packets to 10.200.0.2 (peer B's allowed IP); B echoes each one back. Every half second a line shows handshakes,
packets through the tunnel and the per-peer byte counters, as ``wg show`` would report them.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import sys
import time
from collections.abc import Sequence

from ..device import Device
from ..keys import PrivateKey
from .asyncio_udp import Tunnel

__all__ = ["ipv4_udp_packet", "main"]

ADDRESS_A = bytes([10, 200, 0, 1])
ADDRESS_B = bytes([10, 200, 0, 2])


def ipv4_udp_packet(source: bytes, destination: bytes, payload: bytes, port: int = 7) -> bytes:
    """A minimal IPv4/UDP packet (checksums zero: nothing but the peers parse it here)."""
    udp = struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, source, destination)
    return header + udp


async def run_demo(seconds: float, payload_size: int, out: object = None, *, worker: bool = False) -> dict[str, int]:
    stream = out if out is not None else sys.stdout
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    device_a, device_b = Device(key_a), Device(key_b)
    received_a: list[int] = [0]
    received_b: list[int] = [0]
    tunnel_b: Tunnel | None = None

    def on_packet_a(packet: bytes) -> None:
        received_a[0] += 1

    def on_packet_b(packet: bytes) -> None:
        received_b[0] += 1
        if tunnel_b is not None:  # echo: swap the addresses
            tunnel_b.send_packet(packet[:12] + packet[16:20] + packet[12:16] + packet[20:])

    tunnel_a = Tunnel(device_a, on_packet=on_packet_a, bind_address="127.0.0.1", worker=worker)
    tunnel_b = Tunnel(device_b, on_packet=on_packet_b, bind_address="127.0.0.1", worker=worker)
    await tunnel_a.start()
    await tunnel_b.start()
    device_a.add_peer(key_b.public_key(), endpoint=("127.0.0.1", tunnel_b.local_port), allowed_ips=["10.200.0.2/32"])
    device_b.add_peer(key_a.public_key(), endpoint=("127.0.0.1", tunnel_a.local_port), allowed_ips=["10.200.0.1/32"])
    print(
        f"peer A {key_a.public_key().short()} on 127.0.0.1:{tunnel_a.local_port}  <->  "
        f"peer B {key_b.public_key().short()} on 127.0.0.1:{tunnel_b.local_port}",
        file=stream,  # type: ignore[arg-type]
    )
    payload = bytes(payload_size)
    sent = 0
    start = time.monotonic()
    next_report = start + 0.5
    peer_b_on_a = device_a.peers[key_b.public_key()]
    try:
        while (now := time.monotonic()) - start < seconds:
            # Keep a bounded number of echoes in flight, so that loopback never drops them.
            while sent - received_a[0] < 64:
                tunnel_a.send_packet(ipv4_udp_packet(ADDRESS_A, ADDRESS_B, payload))
                sent += 1
            await asyncio.sleep(0)
            if now >= next_report:
                next_report += 0.5
                elapsed = now - start
                print(
                    f"[{elapsed:4.1f}s] handshakes={device_a.stats.handshakes_completed} "
                    f"sent={sent} echoed={received_a[0]} ({received_a[0] / elapsed:,.0f} round trips/s)  "
                    f"peer A: tx={peer_b_on_a.tx_bytes:,} rx={peer_b_on_a.rx_bytes:,} bytes",
                    file=stream,  # type: ignore[arg-type]
                )
        await asyncio.sleep(0.2)
    finally:
        tunnel_a.close()
        tunnel_b.close()
    result = {
        "sent": sent,
        "delivered_to_b": received_b[0],
        "echoed_to_a": received_a[0],
        "handshakes": device_a.stats.handshakes_completed,
        "drops": sum(device_a.stats.drops.values()) + sum(device_b.stats.drops.values()),
    }
    print(
        f"done: {result['delivered_to_b']} packets A->B and {result['echoed_to_a']} back, "
        f"{result['handshakes']} handshake(s), {result['drops']} drops",
        file=stream,  # type: ignore[arg-type]
    )
    return result


def main(argv: Sequence[str]) -> int:
    if "--mesh" in argv:  # the mesh demo: management server, policy, three peers (wgpy/agent/demo.py)
        from ..agent.demo import main as mesh_main

        return mesh_main([arg for arg in argv if arg != "--mesh"])
    parser = argparse.ArgumentParser(prog="wgpy demo", description="two wgpy peers over UDP on 127.0.0.1")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=1000, help="UDP payload bytes per packet")
    parser.add_argument(
        "--worker", action="store_true", help="give each peer a data-plane worker process (sealing on a second core)"
    )
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 3600 or not 0 <= args.size <= 1400:
        print("wgpy demo: --seconds must be in (0, 3600] and --size in [0, 1400]", file=sys.stderr)
        return 1
    result = asyncio.run(run_demo(args.seconds, args.size, worker=args.worker))
    return 0 if result["echoed_to_a"] > 0 else 1
