"""A deliberately broken WireGuard peer: the wgpy daemon with one protocol fault injected, for testing ``wgpy probe``.

Run inside a lab namespace like the daemon itself (it serves a TUN interface and the UAPI socket, and is configured
with ``wg set``)::

    ip netns exec NS python tests/interop/broken_peer.py --fault no-replay-check IFNAME

Each fault is a monkeypatch applied in this process only, before the daemon starts; the library is never edited.
The probe check that each fault must make fail is in ``FAULTS``:

- ``no-replay-check``: the transport replay window accepts every counter (``ReplayWindow`` checks nothing).
- ``replay-before-auth``: the replay window records a counter before the AEAD has authenticated the packet, so a
  forged packet burns the counter of the genuine one.
- ``accept-bad-mac1``: ``CookieChecker.check_mac1`` always says yes.
- ``accept-reserved``: the message type is read from the first byte only, so non-zero reserved bytes pass.
- ``no-timestamp-check``: ``consume_initiation`` forgets the last TAI64N timestamp, so a replayed initiation passes.
- ``ignore-keepalive``: empty transport messages (keepalives) are dropped unread, so they confirm nothing.

Four more reproduce what a boringtun-based endpoint whose embedding never runs boringtun's timers did to the probe
(issue #17). Each makes a check FAIL where the behaviour is a defect and INCONCLUSIVE where the probe cannot decide
(``EXPECTED`` holds the verdicts that are not PASS):

- ``arriving-keypair``: answers on whichever keypair the last authenticated packet arrived on (its sessions'
  timestamps are all equal), so an echo on the old keypair switches it back to the old session.
- ``limiter-never-resets``: after ``STORM_AFTER`` completed handshakes, every initiation without a valid mac2 gets
  a cookie reply (a per-peer handshake limiter that never resets); with mac2 it is processed as usual.
- ``no-timers``: the engine's timers never run (no keepalive, no retransmission, no rekey, no initiation of its own).
- ``no-cookie-defence``: never under load: every initiation is decrypted, whatever the rate, and no cookie reply is
  ever sent.

Several faults can be combined (``--fault a --fault b``). Every patch takes the class to patch, ``Device`` itself in
the daemon; a test may pass a subclass so that only its endpoint misbehaves.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's wgpy, even without `pip install -e`

import wgpy.noise as noise_module
import wgpy.receive as receive_module
from wgpy.cookie import CookieChecker, MacState
from wgpy.device import Device, endpoint_bytes
from wgpy.events import Endpoint
from wgpy.keys import PublicKey
from wgpy.messages import Initiation, Message
from wgpy.noise import Handshake, StaticIdentity
from wgpy.receive import Receiver
from wgpy.replay import ReplayWindow
from wgpy.tai64n import TAI64N_SIZE

_KEEPALIVE_SIZE = 32
_TRANSPORT_TYPE = b"\x04\x00\x00\x00"
_INITIATION_TYPE = b"\x01\x00\x00\x00"
_INITIATION_SIZE = 148
_TRANSPORT_MIN_SIZE = 32
STORM_AFTER = 3  # completed handshakes before limiter-never-resets answers every initiation with a cookie reply


def no_replay_check() -> None:
    commit = ReplayWindow.commit

    def would_accept(self: ReplayWindow, counter: int) -> bool:
        return True

    def accept(self: ReplayWindow, counter: int) -> bool:
        commit(self, counter)
        return True

    ReplayWindow.would_accept = would_accept  # type: ignore[method-assign]
    ReplayWindow.accept = accept  # type: ignore[method-assign]


def replay_before_auth() -> None:
    check, commit = ReplayWindow.would_accept, ReplayWindow.commit

    def would_accept(self: ReplayWindow, counter: int) -> bool:
        if not check(self, counter):
            return False
        commit(self, counter)  # the fault: recorded before the packet is authenticated
        return True

    def accept(self: ReplayWindow, counter: int) -> bool:
        return True

    def no_commit(self: ReplayWindow, counter: int) -> None:
        return None

    ReplayWindow.would_accept = would_accept  # type: ignore[method-assign]
    ReplayWindow.accept = accept  # type: ignore[method-assign]
    ReplayWindow.commit = no_commit  # type: ignore[method-assign]


def accept_bad_mac1() -> None:
    def check_mac1(self: CookieChecker, message: bytes) -> bool:
        return True

    CookieChecker.check_mac1 = check_mac1  # type: ignore[method-assign]


class _FirstByteType:
    """Stands in for the receive path's ``struct.Struct("<I")`` type reader: reads the type byte, skips the reserved
    ones."""

    size = 4

    def unpack_from(self, data: bytes, offset: int = 0) -> tuple[int]:
        return (data[offset],)


def accept_reserved() -> None:
    unpack: Callable[[bytes], Message] = getattr(receive_module, "unpack")  # noqa: B009 - not re-exported

    def unpack_ignoring_reserved(data: bytes) -> Message:
        return unpack(bytes(data[:1]) + bytes(3) + bytes(data[4:]))

    receive_module._TYPE = _FirstByteType()  # type: ignore[misc, assignment]
    setattr(receive_module, "unpack", unpack_ignoring_reserved)  # noqa: B010 - not re-exported


def no_timestamp_check() -> None:
    consume = noise_module.consume_initiation

    def consume_initiation(
        message: Initiation,
        local: StaticIdentity,
        lookup_peer: Callable[[PublicKey], Handshake | None],
        now: float,
    ) -> Handshake:
        def lookup(public_key: PublicKey) -> Handshake | None:
            handshake = lookup_peer(public_key)
            if handshake is not None:
                handshake.latest_timestamp = bytes(TAI64N_SIZE)  # the fault: any timestamp is new
            return handshake

        return consume(message, local, lookup, now)

    noise_module.consume_initiation = consume_initiation


def ignore_keepalive() -> None:
    receive = Device.receive_datagram

    def receive_datagram(
        self: Receiver, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None
    ) -> None:
        if len(data) == _KEEPALIVE_SIZE and bytes(data[:4]) == _TRANSPORT_TYPE:
            return  # the fault: a keepalive is never authenticated, so it confirms no session
        receive(self, data, endpoint, now, wall_ns)

    Device.receive_datagram = receive_datagram  # type: ignore[method-assign]


def arriving_keypair(cls: type[Device] = Device) -> None:
    receive = cls.receive_datagram

    def receive_datagram(self: Device, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None) -> None:
        entry = None
        if len(data) >= _TRANSPORT_MIN_SIZE and bytes(data[:4]) == _TRANSPORT_TYPE:
            entry = self.index_table.lookup(int.from_bytes(data[4:8], "little"))
        before = self.stats.packets_received
        receive(self, data, endpoint, now, wall_ns)
        if entry is None or self.stats.packets_received == before:
            return
        peer, keypair = entry
        keypairs = peer.keypairs
        if keypair is keypairs.previous and keypairs.current is not None:
            # The fault: the session a packet arrived on becomes the one we send on (equal timestamps, no timers).
            keypairs.current, keypairs.previous = keypairs.previous, keypairs.current

    cls.receive_datagram = receive_datagram  # type: ignore[method-assign, assignment]


_PENDING: dict[int, list[tuple[bytes, Endpoint]]] = {}  # cookie replies of limiter-never-resets, by id(device)


def limiter_never_resets(cls: type[Device] = Device) -> None:
    receive, outputs = cls.receive_datagram, cls.datagrams_to_send

    def receive_datagram(self: Device, data: bytes, endpoint: Endpoint, now: float, wall_ns: int | None = None) -> None:
        if (
            len(data) == _INITIATION_SIZE
            and bytes(data[:4]) == _INITIATION_TYPE
            and self.stats.handshakes_completed >= STORM_AFTER
        ):
            source = endpoint_bytes(endpoint)
            message = bytes(data)
            if self.cookie_checker.check(message, source, True, now) is MacState.VALID_MAC_BUT_NO_COOKIE:
                # The fault: the limiter says "over the limit" for ever, so it demands a cookie every time.
                sender_index = int.from_bytes(message[4:8], "little")
                reply = self.cookie_checker.create_reply(message, sender_index, source, now)
                _PENDING.setdefault(id(self), []).append((reply.pack(), endpoint))
                return
        receive(self, data, endpoint, now, wall_ns)

    def datagrams_to_send(self: Device) -> list[tuple[bytes, Endpoint]]:
        return _PENDING.pop(id(self), []) + outputs(self)

    cls.receive_datagram = receive_datagram  # type: ignore[method-assign, assignment]
    cls.datagrams_to_send = datagrams_to_send  # type: ignore[method-assign]


def no_timers(cls: type[Device] = Device) -> None:
    def get_timer(self: Device) -> float | None:
        return None  # the fault: no deadline is ever armed

    def handle_timer(self: Device, now: float, wall_ns: int | None = None) -> None:
        return None

    cls.get_timer = get_timer  # type: ignore[method-assign]
    cls.handle_timer = handle_timer  # type: ignore[method-assign]


def no_cookie_defence(cls: type[Device] = Device) -> None:
    init = cls.__init__

    def __init__(self: Device, *args: object, **kwargs: object) -> None:
        kwargs["handshake_load_threshold"] = math.inf  # the fault: never under load, so every initiation is decrypted
        init(self, *args, **kwargs)  # type: ignore[arg-type]

    cls.__init__ = __init__  # type: ignore[method-assign]
    if cls is Device:
        # The daemon's driver has flood defences of its own in front of the device (steered handshake queues and a
        # per-address allowance, issue #11): an endpoint without a cookie defence has none of those either, so the
        # burst loads it as the probe expects to see.
        from wgpy.drivers import asyncio_udp

        for name in ("HANDSHAKE_SOURCE_RATE", "HANDSHAKE_SOURCE_BURST"):
            setattr(asyncio_udp, name, 10**9)  # read when a Tunnel is made
        tunnel_init = asyncio_udp.Tunnel.__init__

        def unsteered(self: asyncio_udp.Tunnel, *args: Any, **kwargs: Any) -> None:
            kwargs["steer_handshakes"] = False
            tunnel_init(self, *args, **kwargs)

        asyncio_udp.Tunnel.__init__ = unsteered  # type: ignore[method-assign]


#: fault name -> (monkeypatch, the probe check it must make fail)
FAULTS: dict[str, tuple[Callable[[], None], str]] = {
    "no-replay-check": (no_replay_check, "replayed-transport"),
    "replay-before-auth": (replay_before_auth, "bit-flip"),
    "accept-bad-mac1": (accept_bad_mac1, "bad-mac1"),
    "accept-reserved": (accept_reserved, "reserved-bytes"),
    "no-timestamp-check": (no_timestamp_check, "replayed-initiation"),
    "ignore-keepalive": (ignore_keepalive, "keepalive"),
}

#: fault name -> (monkeypatch, the verdicts other than PASS it must bring, whether the probe must run slow checks)
BEHAVIOURS: dict[str, tuple[Callable[[], None], dict[str, str], bool]] = {
    "arriving-keypair": (arriving_keypair, {"keepalive": "inconclusive"}, False),
    "limiter-never-resets": (limiter_never_resets, {"cookie-under-load": "inconclusive"}, False),
    "no-timers": (no_timers, {"passive-keepalive": "fail", "cookie-initiator": "skip"}, True),
    "no-cookie-defence": (no_cookie_defence, {"cookie-under-load": "fail"}, False),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wgpy with protocol faults injected (for testing wgpy probe)")
    parser.add_argument("--fault", required=True, action="append", choices=sorted([*FAULTS, *BEHAVIOURS]))
    parser.add_argument("interface")
    args = parser.parse_args(argv)
    for fault in args.fault:
        if fault in FAULTS:
            patch, check = FAULTS[fault]
            expected = f"the probe's {check} check should fail"
        else:
            patch, verdicts, _ = BEHAVIOURS[fault]
            expected = "expected verdicts: " + ", ".join(f"{name} {status}" for name, status in verdicts.items())
        patch()
        print(f"broken_peer: fault {fault} injected ({expected})", file=sys.stderr)
    from wgpy.cli import main as wgpy_main

    return wgpy_main(["-f", args.interface])


if __name__ == "__main__":
    sys.exit(main())
