"""Bad input to a running wgpy daemon: malformed UAPI requests and garbage UDP datagrams.

Malformed UAPI requests are sent byte for byte to the daemon's socket; each gets the errno wireguard-go gives for
the same request (checked against the wireguard-go daemon of the same topology), and ``wg showconf`` is the same
before and after. Garbage datagrams come from the other namespace, from the same address as the real peer but
another port, while a ping runs through the tunnel: the ping must not notice, wgpy logs the drops (LOG_LEVEL=verbose)
and keeps the peer's endpoint.
"""

from __future__ import annotations

import base64
import sys
import time

import pytest
from interop_lab import Daemon, Lab

pytestmark = pytest.mark.interop

EINVAL, EPROTO = 22, 71

GARBAGE_SCRIPT = r"""
import os, socket, struct, sys, time
destination = (sys.argv[1], int(sys.argv[2]))
rounds, pause = int(sys.argv[3]), float(sys.argv[4])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def garbage():
    yield os.urandom(os.urandom(1)[0] % 200)                       # random bytes of a random length
    yield os.urandom(3)                                            # shorter than any message
    yield struct.pack("<I", 5) + os.urandom(60)                    # unknown message type
    yield b"\x01\x01\x00\x00" + os.urandom(144)                    # initiation type, reserved bytes not zero
    yield struct.pack("<IIQ", 4, struct.unpack("<I", os.urandom(4))[0], 0) + os.urandom(64)  # transport, random index
    yield struct.pack("<I", 1) + os.urandom(144)                   # initiation of the right size, bad mac1
    yield struct.pack("<I", 2) + os.urandom(88)                    # response of the right size, bad mac1
    yield struct.pack("<I", 3) + os.urandom(60)                    # cookie reply for an unknown index
    yield struct.pack("<I", 4) + os.urandom(12)                    # transport shorter than header + tag
sent = 0
for _ in range(rounds):
    for datagram in garbage():
        sock.sendto(datagram, destination)
        sent += 1
    time.sleep(pause)
print(sent)
"""


def _errno(reply: bytes) -> int:
    lines = reply.decode().strip().splitlines()
    assert reply.endswith(b"\n\n") and lines[-1].startswith("errno="), reply
    return int(lines[-1].removeprefix("errno="))


def _bad_requests(peer_hex: str) -> list[tuple[str, bytes, int | None]]:
    """(what, request, expected errno on the wire, or None for "connection closed without a reply")."""
    peer = f"public_key={peer_hex}\n"
    return [
        ("unknown device key", b"set=1\nno_such_key=1\n\n", -EINVAL),
        ("listen_port out of range", b"set=1\nlisten_port=70000\n\n", -EINVAL),
        ("private_key not hex", b"set=1\nprivate_key=" + b"zz" * 32 + b"\n\n", -EINVAL),
        ("private_key too short", b"set=1\nprivate_key=abcd\n\n", -EINVAL),
        ("line without '='", b"set=1\nlisten_port\n\n", -EPROTO),
        ("allowed_ip garbage", f"set=1\n{peer}allowed_ip=10.1.2.300/33\n\n".encode(), -EINVAL),
        ("protocol_version=2", f"set=1\n{peer}protocol_version=2\n\n".encode(), -EINVAL),
        ("unknown peer key", f"set=1\n{peer}no_such_key=1\n\n".encode(), -EINVAL),
        ("get=2", b"get=2\n\n", None),
    ]


def _public_hex(daemon: Daemon) -> str:
    return base64.b64decode(daemon.public_key).hex()


def test_malformed_uapi_requests(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    before = wgpy.showconf()
    for what, request, expected in _bad_requests(_public_hex(go)):
        reply = wgpy.uapi(request)
        if expected is None:
            assert reply == b"", f"{what}: wgpy answered {reply!r} instead of closing"
        else:
            assert _errno(reply) == expected, f"{what}: wgpy answered {reply!r}"
        # The same request to wireguard-go (about wgpy's key, its peer there) gets the same answer.
        go_request = request.replace(_public_hex(go).encode(), _public_hex(wgpy).encode())
        go_reply = go.uapi(go_request)
        assert (_errno(go_reply) if go_reply else None) == expected, f"{what}: wireguard-go answered {go_reply!r}"
        assert wgpy.showconf() == before, f"{what} changed the configuration"

    # Unlike wireguard-go, which applies the lines it read before the bad one, wgpy applies nothing.
    partial = f"set=1\nlisten_port=40000\npublic_key={_public_hex(go)}\nallowed_ip=nonsense\n\n".encode()
    assert _errno(wgpy.uapi(partial)) == -EINVAL
    assert wgpy.showconf() == before
    # And after all that, the daemon still works.
    assert wgpy.alive()
    assert _errno(wgpy.uapi(b"get=1\n\n")) == 0
    assert lab.ping(go, wgpy.inner, count=2) == 2


def test_garbage_datagrams_during_ping(lab: Lab) -> None:
    wgpy, go = lab.pair("wgpy", "wireguard-go")
    lab.wait_for_ping(wgpy, go.inner)
    endpoints_before = wgpy.show("endpoints")
    ping_log = lab.tmp / "ping.log"
    lab.extra_logs["ping during garbage"] = ping_log
    ping = lab.spawn(wgpy.netns, "ping", "-n", "-q", "-c", "40", "-i", "0.05", "-W", "2", go.inner, log=ping_log)
    time.sleep(0.2)
    sender = lab.run(
        go.netns, sys.executable, "-c", GARBAGE_SCRIPT, wgpy.underlay, str(wgpy.listen_port), "150", "0.01"
    )
    assert ping.wait(timeout=30) == 0, ping_log.read_text()
    summary = ping_log.read_text()
    assert " 40 received" in summary, summary
    print(f"{sender.stdout.strip()} garbage datagrams sent; ping: {summary.strip().splitlines()[-2]}")

    assert wgpy.alive()
    assert wgpy.show("endpoints") == endpoints_before  # unauthenticated datagrams never move the endpoint
    log = wgpy.log()
    for reason in ("BAD_LENGTH", "BAD_TYPE", "UNKNOWN_INDEX", "INVALID_MAC"):
        assert f"dropped a datagram or packet: {reason}" in log, f"no {reason} drop in the wgpy log"
    assert "Traceback" not in log
    assert lab.ping(go, wgpy.inner, count=3) == 3
