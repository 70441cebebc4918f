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
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository's wgpy, even without `pip install -e`

import wgpy.noise as noise_module
import wgpy.receive as receive_module
from wgpy.cookie import CookieChecker
from wgpy.device import Device
from wgpy.events import Endpoint
from wgpy.keys import PublicKey
from wgpy.messages import Initiation, Message
from wgpy.noise import Handshake, StaticIdentity
from wgpy.receive import Receiver
from wgpy.replay import ReplayWindow
from wgpy.tai64n import TAI64N_SIZE

_KEEPALIVE_SIZE = 32
_TRANSPORT_TYPE = b"\x04\x00\x00\x00"


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


#: fault name -> (monkeypatch, the probe check it must make fail)
FAULTS: dict[str, tuple[Callable[[], None], str]] = {
    "no-replay-check": (no_replay_check, "replayed-transport"),
    "replay-before-auth": (replay_before_auth, "bit-flip"),
    "accept-bad-mac1": (accept_bad_mac1, "bad-mac1"),
    "accept-reserved": (accept_reserved, "reserved-bytes"),
    "no-timestamp-check": (no_timestamp_check, "replayed-initiation"),
    "ignore-keepalive": (ignore_keepalive, "keepalive"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="wgpy with one protocol fault injected (for testing wgpy probe)")
    parser.add_argument("--fault", required=True, choices=sorted(FAULTS))
    parser.add_argument("interface")
    args = parser.parse_args(argv)
    patch, check = FAULTS[args.fault]
    patch()
    print(f"broken_peer: fault {args.fault} injected (the probe's {check} check should fail)", file=sys.stderr)
    from wgpy.cli import main as wgpy_main

    return wgpy_main(["-f", args.interface])


if __name__ == "__main__":
    sys.exit(main())
