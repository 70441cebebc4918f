"""STUN on a live tunnel's socket (127.0.0.1): the tunnel's hook sends STUN to the NAT layer, never to the device.

A fake STUN server (a plain socket) answers, and a forger on another socket (and the server itself, misbehaving)
sends forged and malformed responses: each is dropped and counted, and neither the reflexive address nor any
peer's endpoint changes, while WireGuard traffic between two tunnels flows through the same socket.
"""

from __future__ import annotations

import asyncio
import socket

from aioice import stun as aio
from support.helpers import det_rng, ipv4_packet, private_key

from wgpy.device import Device
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.nat.io.handler import NatHandler
from wgpy.nat.stun import StunDrop


def _answer(request: bytes, mapped: tuple[str, int], tid: bytes | None = None) -> bytes:
    message = aio.Message(aio.Method.BINDING, aio.Class.RESPONSE, transaction_id=tid or request[8:20])
    message.attributes["XOR-MAPPED-ADDRESS"] = mapped
    message.add_fingerprint()
    return bytes(message)


def test_forged_stun_on_the_wireguard_socket_is_dropped_counted_and_changes_no_endpoint() -> None:
    async def scenario() -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        forger.bind(("127.0.0.1", 0))
        server.settimeout(5)
        a, b = Device(private_key(1), rng=det_rng(1)), Device(private_key(2), rng=det_rng(2))
        got_b: list[bytes] = []
        ta = Tunnel(a, bind_address="127.0.0.1")
        tb = Tunnel(b, on_packet=got_b.append, bind_address="127.0.0.1")
        await ta.start()
        await tb.start()
        nat = NatHandler([server.getsockname()])
        try:
            assert a.public_key is not None and b.public_key is not None
            a.add_peer(b.public_key, endpoint=("127.0.0.1", tb.local_port), allowed_ips=["10.0.0.2/32"])
            b.add_peer(a.public_key, endpoint=("127.0.0.1", ta.local_port), allowed_ips=["10.0.0.1/32"])
            nat.attach(ta)
            loop = asyncio.get_running_loop()
            request, source = await loop.run_in_executor(None, server.recvfrom, 2048)
            assert source == ("127.0.0.1", ta.local_port), "the request left from the WireGuard socket"
            server.sendto(_answer(request, ("203.0.113.5", 51820)), source)
            learnt = await nat.wait_reflexive(5)
            assert learnt == {server.getsockname(): ("203.0.113.5", 51820)}

            ta.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"first"))
            for _ in range(50):  # bounded: the handshake on loopback takes milliseconds
                if got_b:
                    break
                await asyncio.sleep(0.02)
            assert got_b, "WireGuard traffic flows on the socket that carries STUN"
            peer_b = a.peer(b.public_key)
            assert peer_b is not None
            endpoint_before = peer_b.endpoint
            device_drops_before = a.stats.drops.total()

            nat.refresh()  # a transaction is outstanding now: the forgeries aim at it
            request, _ = await loop.run_in_executor(None, server.recvfrom, 2048)
            target = ("127.0.0.1", ta.local_port)
            genuine = _answer(request, ("198.51.100.9", 1))
            forger.sendto(genuine, target)  # right transaction id, wrong source
            server.sendto(_answer(request, ("198.51.100.9", 1), tid=b"y" * 12), target)  # unknown transaction
            server.sendto(genuine[:-2], target)  # truncated
            server.sendto(genuine[:-1] + bytes([genuine[-1] ^ 0xFF]), target)  # bad fingerprint
            server.sendto(b"\x00\x01\x00\x00\x21\x12\xa4\x42" + request[8:20], target)  # a request
            for _ in range(100):
                if sum(nat.discovery.stats.drops.values()) >= 5:
                    break
                await asyncio.sleep(0.02)
            assert nat.discovery.stats.drops == {
                StunDrop.WRONG_SOURCE: 1,
                StunDrop.UNKNOWN_TRANSACTION: 1,
                StunDrop.MALFORMED: 2,
                StunDrop.NOT_A_RESPONSE: 1,
            }
            assert nat.discovery.reflexive == {server.getsockname(): ("203.0.113.5", 51820)}
            assert peer_b.endpoint == endpoint_before
            assert a.stats.drops.total() == device_drops_before, "STUN never reached the device"
            ta.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"second"))
            for _ in range(50):
                if len(got_b) == 2:
                    break
                await asyncio.sleep(0.02)
            assert got_b[-1].endswith(b"second")
        finally:
            nat.detach()
            ta.close()
            tb.close()
            server.close()
            forger.close()

    asyncio.run(scenario())
