"""The UAPI socket server and the asyncio driver together, without root: raw UAPI over a unix socket.

Each test runs an asyncio loop with a socket-only ``Tunnel`` (UDP on 127.0.0.1, no TUN device) and a ``UapiServer``
on a socket in a private temporary directory, then speaks the protocol byte for byte, as ``wg`` does. The last test
configures two tunnels only through UAPI text and sends packets between them over real UDP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wgpy import uapi
from wgpy.device import Device
from wgpy.drivers import asyncio_udp, uapi_server
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.uapi_server import UapiServer, bind_uapi_socket, socket_path
from wgpy.keys import PresharedKey, PrivateKey
from wgpy.tools.demo import ipv4_udp_packet

REPLY_TIMEOUT = 5.0


@dataclass
class Served:
    tunnel: Tunnel
    path: Path
    received: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving(
    directory: Path, name: str = "wgu0", *, bind_address: str | None = "127.0.0.1"
) -> AsyncIterator[Served]:
    served = Served(Tunnel(Device(), bind_address=bind_address), socket_path(name, directory))
    served.tunnel.on_packet = served.received.append
    await served.tunnel.start()
    server = UapiServer(served.tunnel, bind_uapi_socket(name, directory))
    await server.start()
    try:
        yield served
    finally:
        server.close()
        served.tunnel.close()


class Client:
    """One UAPI connection: several requests may go over it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, path: Path) -> Client:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def request(self, text: str) -> str:
        """Send ``text`` and return the reply up to and including its blank line ("" if the server closed)."""
        self.writer.write(text.encode())
        await self.writer.drain()
        try:
            reply = await asyncio.wait_for(self.reader.readuntil(b"\n\n"), REPLY_TIMEOUT)
        except asyncio.IncompleteReadError as exc:
            return exc.partial.decode()
        return reply.decode()

    async def closed_by_server(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), REPLY_TIMEOUT) == b""

    def close(self) -> None:
        self.writer.close()


async def request(path: Path, text: str) -> str:
    client = await Client.connect(path)
    try:
        return await client.request(text)
    finally:
        client.close()


async def get(path: Path) -> str:
    reply = await request(path, "get=1\n\n")
    assert reply.endswith("errno=0\n\n"), reply
    return reply


def parse_get(reply: str) -> tuple[dict[str, str], dict[str, dict[str, list[str]]]]:
    """(device keys, {public_key hex: {key: [values]}}) from a ``get=1`` reply."""
    device: dict[str, str] = {}
    peers: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in reply.strip().splitlines():
        key, _, value = line.partition("=")
        if key == "errno":
            continue
        if key == "public_key":
            current = peers.setdefault(value, {})
        elif current is None:
            device[key] = value
        else:
            current.setdefault(key, []).append(value)
    return device, peers


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def errno_line(code: int) -> str:
    return f"errno={-code if code else 0}\n\n"


# -- get / set --------------------------------------------------------------------------------------------------


def test_get_on_an_empty_device(socket_dir: Path) -> None:
    async def main() -> None:
        async with serving(socket_dir) as served:
            assert await request(served.path, "get=1\n\n") == f"listen_port={served.tunnel.local_port}\nerrno=0\n\n"

    asyncio.run(main())


def test_set_full_config_then_get_key_by_key(socket_dir: Path) -> None:
    private = PrivateKey.generate()
    peer1, peer2 = PrivateKey.generate().public_key(), PrivateKey.generate().public_key()
    psk = PresharedKey.generate()
    port = free_udp_port()
    body = (
        f"private_key={private.to_hex()}\nlisten_port={port}\nreplace_peers=true\n"
        f"public_key={peer1.to_hex()}\npreshared_key={psk.to_hex()}\nendpoint=127.0.0.1:9\n"
        "replace_allowed_ips=true\nallowed_ip=10.1.0.0/24\nallowed_ip=fd00:1::/64\nprotocol_version=1\n"
        f"public_key={peer2.to_hex()}\nendpoint=[fd00::2]:51820\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.2.0.1/32\n"
    )

    async def main() -> None:
        async with serving(socket_dir) as served:
            assert await request(served.path, f"set=1\n{body}\n") == "errno=0\n\n"
            device, peers = parse_get(await get(served.path))
            assert device == {"private_key": private.to_hex(), "listen_port": str(port)}
            assert served.tunnel.local_port == port
            assert list(peers) == [peer1.to_hex(), peer2.to_hex()]
            one, two = peers[peer1.to_hex()], peers[peer2.to_hex()]
            assert one["preshared_key"] == [psk.to_hex()]
            assert one["protocol_version"] == ["1"]
            assert one["endpoint"] == ["127.0.0.1:9"]
            assert one["persistent_keepalive_interval"] == ["0"]
            assert sorted(one["allowed_ip"]) == ["10.1.0.0/24", "fd00:1::/64"]
            assert one["last_handshake_time_sec"] == one["last_handshake_time_nsec"] == ["0"]
            assert one["rx_bytes"] == ["0"]
            assert two["preshared_key"] == ["0" * 64]
            assert two["endpoint"] == ["[fd00::2]:51820"]
            assert two["persistent_keepalive_interval"] == ["25"]
            assert two["allowed_ip"] == ["10.2.0.1/32"]
            assert two["tx_bytes"][0].isdigit()  # an initiation may already be counted (keepalive interval set)
            assert set(one) == set(two) == {
                "preshared_key", "protocol_version", "endpoint", "last_handshake_time_sec",
                "last_handshake_time_nsec", "tx_bytes", "rx_bytes", "persistent_keepalive_interval", "allowed_ip",
            }  # fmt: skip

    asyncio.run(main())


BAD_SETS = [
    ("unknown device key", "no_such_key=1", errno.EINVAL),
    ("listen_port too large", "listen_port=70000", errno.EINVAL),
    ("listen_port negative", "listen_port=-1", errno.EINVAL),
    ("fwmark too large", f"fwmark={2**32}", errno.EINVAL),
    ("private_key not hex", "private_key=" + "zz" * 32, errno.EINVAL),
    ("private_key short", "private_key=abcd", errno.EINVAL),
    ("line without '='", "listen_port", errno.EPROTO),
    ("replace_peers=false", "replace_peers=false", errno.EINVAL),
    ("peer key before public_key", "endpoint=127.0.0.1:1", errno.EINVAL),
    ("allowed_ip garbage", "public_key={peer}\nallowed_ip=10.1.2.300/33", errno.EINVAL),
    ("protocol_version=2", "public_key={peer}\nprotocol_version=2", errno.EINVAL),
    ("endpoint without port", "public_key={peer}\nendpoint=127.0.0.1", errno.EINVAL),
    ("keepalive too large", "public_key={peer}\npersistent_keepalive_interval=65536", errno.EINVAL),
    ("unknown peer key", "public_key={peer}\nno_such_key=1", errno.EINVAL),
    ("device key after a peer", "public_key={peer}\nlisten_port=1", errno.EINVAL),
    ("not ASCII", "listen_port=\u00b2", errno.EPROTO),
]


@pytest.mark.parametrize(("what", "body", "code"), BAD_SETS, ids=[case[0] for case in BAD_SETS])
def test_invalid_set_gets_errno_and_changes_nothing(socket_dir: Path, what: str, body: str, code: int) -> None:
    peer = PrivateKey.generate().public_key().to_hex()
    setup = f"set=1\nprivate_key={PrivateKey.generate().to_hex()}\npublic_key={peer}\nallowed_ip=10.0.0.0/8\n\n"

    async def main() -> None:
        async with serving(socket_dir) as served:
            assert await request(served.path, setup) == "errno=0\n\n"
            before = await get(served.path)
            # A valid line first: it must not be applied either.
            text = f"set=1\nlisten_port={free_udp_port()}\n{body.format(peer=peer)}\n\n"
            assert await request(served.path, text) == errno_line(code), what
            assert await get(served.path) == before

    asyncio.run(main())


def test_replies_and_logs_never_carry_key_material(socket_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = PrivateKey.generate().to_hex()
    requests = [
        f"set=1\nprivate_key={secret}\nbogus={secret}\n\n",
        f"set=1\nprivate_key={secret[:-1]}\n\n",
        f"set=1\npublic_key={secret}\npreshared_key={secret}x\n\n",
        f"set=1\npublic_key={secret}\n{secret}\n\n",
    ]

    async def main() -> None:
        async with serving(socket_dir) as served:
            for text in requests:
                reply = await request(served.path, text)
                assert reply.startswith("errno=-") and secret[:16] not in reply

    with caplog.at_level("DEBUG", logger="wgpy"):
        asyncio.run(main())
    assert "UAPI set refused" in caplog.text
    assert secret[:16] not in caplog.text


def test_listen_port_in_use_is_eaddrinuse_and_changes_nothing(socket_dir: Path) -> None:
    async def main() -> None:
        async with serving(socket_dir) as served:
            reply = await request(served.path, f"set=1\nprivate_key={PrivateKey.generate().to_hex()}\n\n")
            assert reply == "errno=0\n\n"
            before = await get(served.path)
            port_before = served.tunnel.local_port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
                taken.bind(("127.0.0.1", 0))
                busy = taken.getsockname()[1]
                text = f"set=1\nprivate_key={PrivateKey.generate().to_hex()}\nfwmark=7\nlisten_port={busy}\n\n"
                assert await request(served.path, text) == errno_line(errno.EADDRINUSE)
            assert await get(served.path) == before
            assert served.tunnel.local_port == port_before
            assert served.tunnel.fwmark == 0
            # The old sockets still work: a new port can still be taken.
            new_port = free_udp_port()
            assert await request(served.path, f"set=1\nlisten_port={new_port}\n\n") == "errno=0\n\n"
            assert served.tunnel.local_port == new_port

    asyncio.run(main())


def test_a_set_overtaken_by_another_change_gets_ebusy_and_keeps_the_old_port(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request whose device half is refused (EBUSY: the device was changed while the request was built) also
    gives back the port and fwmark it had already moved to, so that the refusal changes nothing."""

    async def main() -> None:
        async with serving(socket_dir) as served:
            tunnel = served.tunnel
            port_before = tunnel.local_port
            original = uapi.apply_set_steps

            def overtaken(
                device: Device, request: uapi.SetRequest, now: float, sockets: object = None, peers_per_step: int = 0
            ) -> Iterator[int]:
                steps = original(device, request, now, peers_per_step=1)
                yield next(steps)
                # Another change reaches the device between two steps (the mesh agent applying a map, say).
                tunnel.device.add_peer(PrivateKey.generate().public_key(), allowed_ips=["10.200.0.0/16"])
                yield from steps

            monkeypatch.setattr(uapi, "apply_set_steps", overtaken)
            new_port = free_udp_port()
            peers = "".join(f"public_key={PrivateKey.generate().public_key().to_hex()}\n" for _ in range(3))
            mark = "fwmark=5\n" if os.geteuid() == 0 else ""  # SO_MARK needs CAP_NET_ADMIN
            reply = await request(served.path, f"set=1\nlisten_port={new_port}\n{mark}{peers}\n")
            assert reply == errno_line(errno.EBUSY)
            assert tunnel.local_port == port_before and tunnel.fwmark == 0
            assert len(tunnel.device.peers) == 1  # the other change, and nothing of the refused request
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.bind(("127.0.0.1", new_port))  # the refused request's port was released

    asyncio.run(main())


def _marks(tunnel: Tunnel) -> set[int]:
    return {
        struct.unpack("=I", udp.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK, 4))[0]
        for udp in tunnel._sockets.values()
    }


@pytest.mark.skipif(not hasattr(socket, "SO_MARK"), reason="SO_MARK is Linux only")
def test_a_fwmark_from_2_to_the_31_with_a_new_port_is_applied_or_refused_whole(socket_dir: Path) -> None:
    """Issue #11 item 1: ``wg set IF listen-port N fwmark 0x80000000`` left the tunnel with no sockets (the mark
    does not fit a C int, and setsockopt raised TypeError in the middle of the rebind)."""

    async def main() -> None:
        async with serving(socket_dir, bind_address=None) as served:
            tunnel = served.tunnel
            port_before, families = tunnel.local_port, set(tunnel._sockets)
            new_port = free_udp_port()
            reply = await request(served.path, f"set=1\nlisten_port={new_port}\nfwmark={2**31}\n\n")
            if os.geteuid() == 0:  # SO_MARK needs CAP_NET_ADMIN
                assert reply == "errno=0\n\n"
                assert (tunnel.local_port, tunnel.fwmark) == (new_port, 2**31)
                assert _marks(tunnel) == {2**31}
                device, _ = parse_get(await get(served.path))
                assert device["fwmark"] == str(2**31) and device["listen_port"] == str(new_port)
                assert await request(served.path, f"set=1\nfwmark={2**32 - 1}\n\n") == "errno=0\n\n"
                assert _marks(tunnel) == {2**32 - 1}
            else:
                assert reply == errno_line(errno.EPERM)
                assert (tunnel.local_port, tunnel.fwmark) == (port_before, 0)
            assert set(tunnel._sockets) == families  # never left without sockets

    asyncio.run(main())


def test_a_rebind_that_fails_in_any_way_keeps_the_old_sockets(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        async with serving(socket_dir, bind_address=None) as served:
            tunnel = served.tunnel
            port_before, sockets_before = tunnel.local_port, dict(tunnel._sockets)

            def broken_bind(family: socket.AddressFamily, port: int, fwmark: int = 0) -> socket.socket:
                raise TypeError("not an OSError")

            def broken_group(*args: object) -> list[socket.socket]:
                raise TypeError("not an OSError")

            handshake_before = {family: list(group) for family, group in tunnel._handshake_sockets.items()}
            monkeypatch.setattr(asyncio_udp, "_bind", broken_bind)
            monkeypatch.setattr(asyncio_udp, "bind_steered", broken_group)  # the steered group fails the same way
            reply = await request(served.path, f"set=1\nlisten_port={free_udp_port()}\nfwmark=3\n\n")
            assert reply == errno_line(errno.EIO)
            assert tunnel.local_port == port_before and tunnel.fwmark == 0
            assert tunnel._sockets == sockets_before and all(u.fileno() >= 0 for u in tunnel._sockets.values())
            assert tunnel._handshake_sockets == handshake_before
            assert all(u.fileno() >= 0 for group in handshake_before.values() for u in group)

    asyncio.run(main())


def test_several_requests_on_one_connection(socket_dir: Path) -> None:
    peer = PrivateKey.generate().public_key().to_hex()

    async def main() -> None:
        async with serving(socket_dir) as served:
            client = await Client.connect(served.path)
            try:
                first = await client.request("get=1\n\n")
                assert first.endswith("errno=0\n\n") and "public_key" not in first
                assert await client.request(f"set=1\npublic_key={peer}\nallowed_ip=10.9.0.0/16\n\n") == "errno=0\n\n"
                assert await client.request("set=1\nlisten_port=99999\n\n") == errno_line(errno.EINVAL)
                second = await client.request("get=1\n\n")
                assert f"public_key={peer}\n" in second and "allowed_ip=10.9.0.0/16\n" in second
                # Removing it over the same connection.
                assert await client.request(f"set=1\npublic_key={peer}\nremove=true\n\n") == "errno=0\n\n"
                assert "public_key" not in await client.request("get=1\n\n")
            finally:
                client.close()

    asyncio.run(main())


@pytest.mark.parametrize("operation", ["get=2\n\n", "set=2\n\n", "hello\n", "get=1 \n\n"])
def test_unknown_operation_closes_the_connection(socket_dir: Path, operation: str) -> None:
    async def main() -> None:
        async with serving(socket_dir) as served:
            client = await Client.connect(served.path)
            try:
                client.writer.write(operation.encode())
                await client.writer.drain()
                assert await client.closed_by_server()
            finally:
                client.close()
            # The server still answers new connections.
            await get(served.path)

    asyncio.run(main())


def test_set_cut_short_applies_nothing(socket_dir: Path) -> None:
    async def main() -> None:
        async with serving(socket_dir) as served:
            before = await get(served.path)
            client = await Client.connect(served.path)
            client.writer.write(f"set=1\nprivate_key={PrivateKey.generate().to_hex()}\n".encode())
            await client.writer.drain()
            client.writer.write_eof()
            assert await client.closed_by_server()
            client.close()
            assert await get(served.path) == before

    asyncio.run(main())


def test_socket_refuses_a_second_server(socket_dir: Path) -> None:
    async def main() -> None:
        async with serving(socket_dir, "wgdup"):
            with pytest.raises(OSError) as info:
                bind_uapi_socket("wgdup", socket_dir)
            assert info.value.errno == errno.EADDRINUSE

    asyncio.run(main())
    # Once the server is gone, a stale socket file does not block a new one.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path("wgstale", socket_dir)))
    stale.close()
    bind_uapi_socket("wgstale", socket_dir).close()


# -- two tunnels configured through UAPI text only --------------------------------------------------------------


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def test_two_tunnels_configured_through_uapi_exchange_traffic(socket_dir: Path) -> None:
    key_a, key_b = PrivateKey.generate(), PrivateKey.generate()
    psk = PresharedKey.generate()
    address_a, address_b = bytes([10, 201, 0, 1]), bytes([10, 201, 0, 2])

    async def main() -> None:
        async with serving(socket_dir, "wga") as a, serving(socket_dir, "wgb") as b:
            port_a, port_b = free_udp_port(), free_udp_port()
            for me, key, port in ((a, key_a, port_a), (b, key_b, port_b)):
                reply = await request(me.path, f"set=1\nprivate_key={key.to_hex()}\nlisten_port={port}\n\n")
                assert reply == "errno=0\n\n"
            set_a = (
                f"set=1\npublic_key={key_b.public_key().to_hex()}\npreshared_key={psk.to_hex()}\n"
                f"endpoint=127.0.0.1:{port_b}\nallowed_ip=10.201.0.2/32\n\n"
            )
            set_b = (
                f"set=1\npublic_key={key_a.public_key().to_hex()}\npreshared_key={psk.to_hex()}\n"
                f"endpoint=127.0.0.1:{port_a}\nallowed_ip=10.201.0.1/32\n\n"
            )
            assert await request(a.path, set_a) == "errno=0\n\n"
            assert await request(b.path, set_b) == "errno=0\n\n"

            for i in range(10):
                a.tunnel.send_packet(ipv4_udp_packet(address_a, address_b, f"ping {i}".encode()))
            await _wait_for(lambda: len(b.received) == 10)
            for i in range(10):
                b.tunnel.send_packet(ipv4_udp_packet(address_b, address_a, f"pong {i}".encode()))
            await _wait_for(lambda: len(a.received) == 10)
            assert [p[28:] for p in b.received] == [f"ping {i}".encode() for i in range(10)]
            assert [p[28:] for p in a.received] == [f"pong {i}".encode() for i in range(10)]

            _, peers_a = parse_get(await get(a.path))
            _, peers_b = parse_get(await get(b.path))
            on_a, on_b = peers_a[key_b.public_key().to_hex()], peers_b[key_a.public_key().to_hex()]
            assert on_a["rx_bytes"] == on_b["tx_bytes"] and on_a["tx_bytes"] == on_b["rx_bytes"]
            assert int(on_a["rx_bytes"][0]) > 0 and int(on_a["tx_bytes"][0]) > 0
            assert int(on_a["last_handshake_time_sec"][0]) > 0 and int(on_b["last_handshake_time_sec"][0]) > 0
            assert on_b["endpoint"] == [f"127.0.0.1:{port_a}"]

            # A packet to an address no peer owns goes nowhere; removing the peer stops traffic.
            removal = f"set=1\npublic_key={key_b.public_key().to_hex()}\nremove=true\n\n"
            assert await request(a.path, removal) == "errno=0\n\n"
            a.tunnel.send_packet(ipv4_udp_packet(address_a, address_b, b"after removal"))
            await asyncio.sleep(0.2)
            assert len(b.received) == 10

    asyncio.run(main())


# -- issue #11 items 3 and 4: large requests ---------------------------------------------------------------------


async def large_get(path: Path) -> str:
    """``get=1`` with a client buffer large enough for thousands of peers."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 26)
    try:
        writer.write(b"get=1\n\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readuntil(b"errno=0\n\n"), REPLY_TIMEOUT * 4)
        return reply.decode()
    finally:
        writer.close()


def _peers_body(count: int) -> str:
    return "".join(
        f"public_key={os.urandom(32).hex()}\nallowed_ip=172.{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}/32\n"
        for i in range(count)
    )


def test_a_set_larger_than_the_bound_is_refused_early_and_changes_nothing(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 4: a 1 GB request grew the daemon to 1.07 GB before it was refused. Now the body is bounded in bytes
    (``MAX_SET_REQUEST``, lowered here to 128 KiB), nothing of it is kept once it is too large, the answer is
    EMSGSIZE and the connection closes after the body."""
    monkeypatch.setattr(uapi_server, "MAX_SET_REQUEST", 128 * 1024)

    async def main() -> None:
        async with serving(socket_dir) as served:
            body = _peers_body(10_000)  # about 1 MiB, all of it valid
            assert len(body) > 4 * uapi_server.MAX_SET_REQUEST
            client = await Client.connect(served.path)
            try:
                reply = await client.request("set=1\n" + body + "\n")
                assert reply == errno_line(errno.EMSGSIZE)
                assert await client.closed_by_server()
            finally:
                client.close()
            assert served.tunnel.device.peers == {}
            assert await request(served.path, "set=1\n" + _peers_body(10) + "\n") == "errno=0\n\n"  # still serving
            assert len(served.tunnel.device.peers) == 10

    asyncio.run(main())


def test_a_bad_line_late_in_a_large_set_changes_nothing_and_keeps_the_connection_in_step(socket_dir: Path) -> None:
    async def main() -> None:
        async with serving(socket_dir) as served:
            client = await Client.connect(served.path)
            try:
                reply = await client.request(
                    "set=1\n" + _peers_body(3000) + "allowed_ip=bad\n" + _peers_body(10) + "\n"
                )
                assert reply == errno_line(errno.EINVAL)
                assert served.tunnel.device.peers == {}
                assert (await client.request("get=1\n\n")).endswith("errno=0\n\n")  # the next request is understood
            finally:
                client.close()

    asyncio.run(main())


def test_the_event_loop_runs_during_a_large_set_and_get(socket_dir: Path) -> None:
    """Item 3: a 100,000-peer set held the loop (and every packet) for 12.7 s. Now parsing, applying and
    formatting let the loop run every ``LINES_PER_YIELD`` lines and ``uapi.PEERS_PER_STEP`` peers: a callback that
    re-arms itself keeps running while 5,000 peers are set and listed. This counts turns of the loop, not time."""

    async def main() -> None:
        async with serving(socket_dir) as served:
            loop = asyncio.get_running_loop()
            ticks = [0]
            stop = [False]

            def tick() -> None:
                ticks[0] += 1
                if not stop[0]:
                    loop.call_soon(tick)

            body = _peers_body(5000)
            loop.call_soon(tick)
            before = ticks[0]
            assert await request(served.path, "set=1\n" + body + "\n") == "errno=0\n\n"
            during_set = ticks[0] - before
            before = ticks[0]
            reply = await large_get(served.path)
            during_get = ticks[0] - before
            stop[0] = True
            assert len(served.tunnel.device.peers) == 5000
            assert reply.count("public_key=") == 5000
            steps = 5000 // uapi.PEERS_PER_STEP
            assert during_set >= steps, during_set
            assert during_get >= steps, during_get

    asyncio.run(main())


class _Cyclic:
    """An object in a reference cycle with itself: only the cyclic collector can free it."""

    def __init__(self) -> None:
        self.me = self


def test_after_a_large_configuration_is_removed_the_collector_frees_cycles_again(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 4: a large set called ``gc.freeze()``, which was never undone, so a reference cycle that existed
    during the request was never freed. After the peers are removed the frozen objects are back with the
    collector. The bound on what is given back (``UNFREEZE_BELOW``, sized for the daemon's own 25,000 objects)
    is raised here by what this pytest process held before the request (frozen objects included: a large request of an
    earlier test in the same process may have left some frozen, as the daemon does above ``UNFREEZE_BELOW``)."""
    import weakref

    # What the process held: the collector's objects and those an earlier test's large request left frozen.
    monkeypatch.setattr(uapi_server, "UNFREEZE_BELOW", gc.get_freeze_count() + len(gc.get_objects()) + 50_000)

    async def main() -> None:
        async with serving(socket_dir) as served:
            cyclic = _Cyclic()
            alive = weakref.ref(cyclic)
            keys = [os.urandom(32).hex() for _ in range(2000)]
            body = "".join(f"public_key={key}\nallowed_ip=172.16.{i >> 8}.{i & 255}/32\n" for i, key in enumerate(keys))
            assert await request(served.path, f"set=1\n{body}\n") == "errno=0\n\n"
            del cyclic
            removal = "".join(f"public_key={key}\nremove=true\n" for key in keys)
            assert await request(served.path, f"set=1\n{removal}\n") == "errno=0\n\n"
            assert gc.get_freeze_count() == 0
            gc.collect()
            assert alive() is None

    try:
        asyncio.run(main())
    finally:
        gc.unfreeze()


def test_removing_many_peers_leaves_no_peer_object_behind(socket_dir: Path) -> None:
    """Item 4: after 100,000 peers were removed the daemon's RSS stayed at 193 MB. No Python object is retained
    (checked here with 3,000 peers that had endpoints, keepalives and timers); the pages the allocator keeps are
    given back by ``drivers.memory.release_free_memory`` after large requests."""
    from wgpy.peer import Peer

    async def main() -> None:
        async with serving(socket_dir) as served:
            private = PrivateKey.generate().to_hex()
            keys = [os.urandom(32).hex() for _ in range(3000)]
            body = "".join(
                f"public_key={key}\nendpoint=127.0.0.1:9\npersistent_keepalive_interval=1\n"
                f"allowed_ip=172.16.{i >> 8}.{i & 255}/32\n"
                for i, key in enumerate(keys)
            )
            assert await request(served.path, f"set=1\nprivate_key={private}\n{body}\n") == "errno=0\n\n"
            await asyncio.sleep(1.5)  # keepalive timers fire, handshakes are attempted
            await large_get(served.path)
            removal = "".join(f"public_key={key}\nremove=true\n" for key in keys)
            assert await request(served.path, f"set=1\n{removal}\n") == "errno=0\n\n"
            await asyncio.sleep(0.1)
            gc.collect()
            assert served.tunnel.device.peers == {}
            assert [o for o in gc.get_objects() if type(o) is Peer] == []

    asyncio.run(main())
