"""``wgpy probe``: a battery of protocol checks against a live WireGuard endpoint, one line of evidence per check.

Theory of operation: the probe is the endpoint's legitimate peer. It runs a real ``Device`` (our private key, the
endpoint's public key, optionally a preshared key, allowed IPs 0.0.0.0/0 and ::/0) on one UDP socket, with a clock
of its own: ``now`` is the boot-time clock plus an offset the probe may jump (``reject-after-time`` jumps it past
REJECT_AFTER_TIME). Everything is synchronous: ``Probe.wait`` receives datagrams with a socket timeout, hands them
to the device, sends what the device wants sent and runs its timers, until a condition holds or time runs out.

Inner traffic is ICMP echo from ``--tunnel-address`` (which the endpoint must accept from us) to ``--target`` (an
address behind the endpoint that answers ping, typically the endpoint's own tunnel address). Hostile messages are
crafted with ``wgpy.tools.conformance`` (which uses ``wgpy.noise`` / ``wgpy.cookie`` / ``wgpy.messages``) next to the
device, sometimes from datagrams the device produced and the probe held back instead of sending.

"Ignored" is proved by silence within ``--timeout`` plus a control wherever one exists: the same message without
the fault is answered (so the fault alone made the difference), and a ping through the session still works
afterwards. The checks and what each proves are listed in ``wgpy.tools.conformance.CHECKS`` and in docs/probe.md.

The command line (argument parsing, the printed lines, the JSON report file) is ``wgpy.cli.probe``'s. Its exit
status: 0 when no check failed, 1 when one did, 2 for bad arguments, keys or a socket that cannot be bound (one line
on stderr, never a traceback).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from .. import crypto, ip, noise
from ..constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT
from ..cookie import CookieChecker, CookieGenerator, MacState
from ..device import Device, endpoint_bytes
from ..drivers.clock import monotonic_now, wall_ns
from ..errors import DropReason
from ..events import Endpoint
from ..keypair import Keypair
from ..keys import PresharedKey, PrivateKey, PublicKey
from ..messages import MAC1_OFFSET_INITIATION, MAC_SIZE, CookieReply, Initiation, MessageType, Response, unpack
from ..noise import StaticIdentity
from . import conformance

__all__ = ["DEFAULT_BURST", "DEFAULT_TIMEOUT", "CheckFailed", "Probe", "ProbeConfig", "ProbeUsageError"]

DEFAULT_TIMEOUT: Final = 2.0  # seconds of silence that count as "ignored"; also the wait for expected answers
DEFAULT_BURST: Final = 4000  # initiations in the cookie-under-load burst (wireguard-go: under load at 128 queued)
INITIATION_SPACING: Final = 0.05  # between our initiations: > 20 ms flood limit and > 16.8 ms TAI64N whitening
REPLAY_PAUSE: Final = 0.1  # before replaying an initiation: past the 20 ms flood limit, so only the timestamp refuses
QUIET_AFTER_BURST: Final = 0.1  # silence that ends the burst's cookie replies; well inside the 1 s under-load tail
SLACK: Final = 3.0  # seconds granted beyond a protocol timer before calling it missed
_KEEPALIVE_SIZE: Final = 32  # transport header + tag of an empty payload
_RESPONSE_INDICES: Final = struct.Struct("<III")  # type, sender index, receiver index
_COOKIE_INDEX: Final = struct.Struct("<II")  # type, receiver index
_INITIATION: Final = int(MessageType.INITIATION)
_RESPONSE: Final = int(MessageType.RESPONSE)
_COOKIE_REPLY: Final = int(MessageType.COOKIE_REPLY)
_TRANSPORT: Final = int(MessageType.TRANSPORT)
_KIND_NAMES: Final = {_INITIATION: "initiation", _RESPONSE: "response", _COOKIE_REPLY: "cookie reply"}


class ProbeUsageError(Exception):
    """Bad arguments, keys or local setup: reported in one line with exit status 2."""


class CheckFailed(Exception):
    """Raised inside a check to end it early with a verdict (FAIL, or SKIP with ``skip=True``)."""

    def __init__(self, evidence: str, *, skip: bool = False) -> None:
        super().__init__(evidence)
        self.evidence = evidence
        self.skip = skip


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# ----------------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ProbeConfig:
    """What the probe needs to know, already parsed and checked."""

    endpoint: Endpoint
    endpoint_text: str
    family: socket.AddressFamily
    peer_public_key: PublicKey
    private_key: PrivateKey
    preshared_key: PresharedKey | None
    tunnel_address: str
    target: str
    listen_port: int = 0
    timeout: float = DEFAULT_TIMEOUT
    checks: tuple[str, ...] = conformance.CHECK_NAMES
    skip_slow: bool = False
    burst: int = DEFAULT_BURST
    json_path: Path | None = None


# ----------------------------------------------------------------------------------------------------------------
# What goes over the wire, as the probe saw it
# ----------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Delivered:
    """An inner packet that came out of the tunnel, and the receiver index of the transport message it came in."""

    packet: bytes
    receiver_index: int
    at: float
    echo: conformance.Echo | None


@dataclass(slots=True)
class Received:
    """One datagram from the network."""

    data: bytes
    source: Endpoint
    at: float  # boot-time seconds (real time, not the probe's clock)
    kind: int | None  # the first four bytes as le32
    authenticated: bool = False
    delivered: list[Delivered] = field(default_factory=list)

    @property
    def reply_index(self) -> int | None:
        """The receiver index of a response or cookie reply: which of our initiations it answers."""
        if self.kind == _RESPONSE and len(self.data) >= _RESPONSE_INDICES.size:
            return int(_RESPONSE_INDICES.unpack_from(self.data)[2])
        if self.kind == _COOKIE_REPLY and len(self.data) >= _COOKIE_INDEX.size:
            return int(_COOKIE_INDEX.unpack_from(self.data)[1])
        return None

    @property
    def is_keepalive(self) -> bool:
        return self.kind == _TRANSPORT and len(self.data) == _KEEPALIVE_SIZE and self.authenticated


@dataclass(slots=True)
class ManualInitiation:
    """An initiation crafted next to the device (the device knows nothing of it)."""

    handshake: noise.Handshake
    identity: StaticIdentity
    index: int
    body: bytes  # mac1 and mac2 zero


# ----------------------------------------------------------------------------------------------------------------
# The probe
# ----------------------------------------------------------------------------------------------------------------


class Probe:
    """A ``Device`` on a real UDP socket with a clock the probe controls, plus the checks."""

    def __init__(self, config: ProbeConfig, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.config = config
        self.rng = rng
        self.sock = socket.socket(config.family, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            self.sock.bind(("::" if config.family == socket.AF_INET6 else "0.0.0.0", config.listen_port))  # noqa: S104
        except OSError as exc:
            self.sock.close()
            raise ProbeUsageError(f"cannot bind UDP port {config.listen_port}: {exc.strerror or exc}") from None
        self.listen_port = int(self.sock.getsockname()[1])
        self.device = Device(config.private_key, rng=rng, listen_port=self.listen_port)
        self.peer = self.device.add_peer(
            config.peer_public_key,
            preshared_key=config.preshared_key,
            endpoint=config.endpoint,
            allowed_ips=["0.0.0.0/0", "::/0"],
        )
        identity = self.device.identity
        if identity is None:  # pragma: no cover - the device was given a key
            raise ProbeUsageError("no private key")
        self.identity = identity
        self.clock_offset = 0.0
        self.received: list[Received] = []
        self.delivered: list[Delivered] = []
        self.manual: dict[int, Keypair] = {}  # sessions made next to the device, by our local index
        self.stale = False  # the endpoint's current session is one the device does not know
        self.echo_id = int.from_bytes(rng(2), "big")
        self.echo_token = rng(8)
        self.next_sequence = 1
        self.last_initiation_at = float("-inf")
        self.send_errors = 0
        self.last_send_error = ""

    def close(self) -> None:
        self.sock.close()

    # --- clocks -------------------------------------------------------------------------------------------------

    @staticmethod
    def real() -> float:
        return monotonic_now()

    def now(self) -> float:
        """The probe's clock: what the device sees. It can run ahead of real time (``reject-after-time``)."""
        return monotonic_now() + self.clock_offset

    # --- sending ------------------------------------------------------------------------------------------------

    def send_raw(self, data: bytes, destination: Endpoint | None = None) -> None:
        if data[:1] == bytes([_INITIATION]):
            self.last_initiation_at = self.real()
        try:
            self.sock.sendto(data, destination or self.peer.endpoint or self.config.endpoint)
        except OSError as exc:  # a full send queue during the burst, or no route: the checks count what arrives
            self.send_errors += 1
            self.last_send_error = exc.strerror or str(exc)

    def held(self) -> list[bytes]:
        """What the device wants to send, taken without sending it."""
        return [data for data, _ in self.device.datagrams_to_send()]

    def transmit(self) -> list[bytes]:
        """Send what the device wants to send; returns it."""
        out = self.device.datagrams_to_send()
        for data, endpoint in out:
            self.send_raw(data, endpoint)
        return [data for data, _ in out]

    def pace(self) -> None:
        """Wait (still receiving) until our next initiation cannot be refused as a flood or an equal timestamp."""
        self.wait(self.last_initiation_at + INITIATION_SPACING - self.real())

    # --- receiving ----------------------------------------------------------------------------------------------

    def _feed(self, received: Received) -> None:
        """Hand a datagram to the device (or to a session made next to it) and record what came out."""
        header = conformance.transport_header(received.data)
        if header is not None and header[0] in self.manual:
            self._feed_manual(received, self.manual[header[0]], header[1])
            return
        before = self.device.stats.packets_received
        self.device.receive_datagram(received.data, received.source, self.now(), wall_ns())
        received.authenticated = self.device.stats.packets_received > before
        index = header[0] if header is not None else 0
        for packet in self.device.packets_to_tun():
            self._deliver(received, packet, index)
        self.transmit()

    def _feed_manual(self, received: Received, keypair: Keypair, counter: int) -> None:
        if not keypair.replay.would_accept(counter):
            return
        try:
            plaintext = keypair.open(counter, received.data)
        except crypto.InvalidTag:
            return
        keypair.replay.accept(counter)
        received.authenticated = True
        header = ip.parse_header(plaintext)
        if plaintext and header is not None:
            self._deliver(received, plaintext[: header[1]], keypair.local_index)

    def _deliver(self, received: Received, packet: bytes, index: int) -> None:
        delivered = Delivered(packet, index, received.at, conformance.parse_icmp_echo(packet))
        received.delivered.append(delivered)
        self.delivered.append(delivered)

    def wait(
        self,
        seconds: float,
        until: Callable[[Received], bool] | None = None,
        *,
        timers: bool = True,
        intercept: Callable[[Received], bool] | None = None,
    ) -> Received | None:
        """Receive for up to ``seconds``, feeding the device and running its timers.

        Args:
            seconds: how long to wait at most (real time).
            until: stop at the first datagram for which this is true, and return it.
            timers: run the device's timers (off while the probe must stay silent).
            intercept: called first with each datagram; when it returns true the device does not see the datagram.
        """
        deadline = self.real() + seconds
        while True:
            remaining = deadline - self.real()
            if remaining <= 0:
                return None
            wait_for = remaining
            if timers:
                due = self.device.get_timer()
                if due is not None:
                    if due <= self.now():
                        self.device.handle_timer(self.now(), wall_ns())
                        self.transmit()
                        due = self.device.get_timer()
                    if due is not None:
                        wait_for = min(wait_for, max(due - self.now(), 0.001))
            self.sock.settimeout(max(wait_for, 0.001))
            try:
                data, source = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                continue
            received = Received(data, source, self.real(), conformance.message_type(data))
            self.received.append(received)
            if intercept is None or not intercept(received):
                self._feed(received)
            if until is not None and until(received):
                return received

    # --- inner traffic ------------------------------------------------------------------------------------------

    def echo_packet(self, *, reply: bool = False) -> tuple[bytes, int]:
        """An ICMP echo request (or an unsolicited reply) from our tunnel address to the target."""
        sequence = self.next_sequence
        self.next_sequence = sequence % 0xFFFF + 1
        payload = self.echo_token + sequence.to_bytes(2, "big") + b"wgpy-probe"
        packet = conformance.icmp_echo(
            self.config.tunnel_address, self.config.target, self.echo_id, sequence, payload, reply=reply
        )
        return packet, sequence

    def is_reply(self, delivered: Delivered, sequence: int) -> bool:
        echo = delivered.echo
        return (
            echo is not None
            and echo.is_reply
            and echo.identifier == self.echo_id
            and echo.sequence == sequence
            and echo.source == self.config.target
            and echo.destination == self.config.tunnel_address
        )

    def replies(self, sequence: int) -> list[Delivered]:
        return [d for d in self.delivered if self.is_reply(d, sequence)]

    def send_echo(self, *, hold: bool = False, reply: bool = False) -> tuple[int, list[bytes]]:
        """Give the device an echo request; returns its sequence and the datagrams (sent unless ``hold``)."""
        packet, sequence = self.echo_packet(reply=reply)
        self.device.send_packet(packet, self.now(), wall_ns())
        return sequence, self.held() if hold else self.transmit()

    def wait_reply(self, sequence: int, seconds: float) -> Delivered | None:
        """The first (new) echo reply to ``sequence`` within ``seconds``."""
        already = len(self.replies(sequence))
        received = self.wait(seconds, lambda r: len(self.replies(sequence)) > already)
        if received is None:
            return None
        return self.replies(sequence)[already]

    def roundtrip(self, seconds: float | None = None) -> float | None:
        """Ping the target through the device; the round-trip time, or ``None`` without a reply."""
        start = self.real()
        sequence, _ = self.send_echo()
        reply = self.wait_reply(sequence, seconds if seconds is not None else self.config.timeout)
        return None if reply is None else reply.at - start

    def resync(self) -> None:
        """Drop the device's sessions so that its next packet starts a new handshake (public API only)."""
        for peer in self.device.peers.values():
            self.device.reset_sessions(peer)
        self.stale = False

    def ensure_session(self) -> float:
        """Make sure the device has a working session with the endpoint; returns a round-trip time.

        Raises:
            CheckFailed: no session could be made (the check fails: an earlier check broke the session).
        """
        if not self.stale:
            rtt = self.roundtrip()
            if rtt is not None:
                return rtt
        self.resync()
        self.pace()
        rtt = self.roundtrip(REKEY_TIMEOUT + self.config.timeout)
        if rtt is None:
            raise CheckFailed("no working session with the endpoint any more (ping through a new handshake failed)")
        return rtt

    def still_works(self) -> str:
        """Evidence that the session survived a check; raises ``CheckFailed`` if it did not."""
        rtt = self.roundtrip()
        if rtt is None:
            raise CheckFailed("the session stopped working: no echo reply after the check's messages")
        return f"session still works ({_ms(rtt)} ping)"

    # --- crafted handshakes -------------------------------------------------------------------------------------

    def new_index(self) -> int:
        while True:
            index = int.from_bytes(self.rng(4), "little")
            if index and index not in self.manual and self.device.index_table.lookup(index) is None:
                return index

    def craft(self, identity: StaticIdentity | None = None) -> ManualInitiation:
        """A fresh initiation from ``identity`` (ours by default), paced after our previous one."""
        self.pace()
        identity = identity if identity is not None else self.identity
        index = self.new_index()
        handshake, body = conformance.craft_initiation(
            identity, self.config.peer_public_key, self.config.preshared_key, index, wall_ns(), self.rng
        )
        return ManualInitiation(handshake, identity, index, body)

    def with_macs(self, body: bytes, cookie: CookieGenerator | None = None) -> bytes:
        return conformance.add_macs(body, self.config.peer_public_key, self.now(), cookie)

    def answer_to(
        self, index: int, seconds: float, kinds: tuple[int, ...] = (_RESPONSE, _COOKIE_REPLY)
    ) -> Received | None:
        """The first response or cookie reply to our initiation ``index`` within ``seconds``."""
        return self.wait(seconds, lambda r: r.kind in kinds and r.reply_index == index)

    def complete(self, initiation: ManualInitiation, response: Received) -> Keypair:
        """Finish a crafted handshake with the endpoint's response; the session is kept next to the device."""
        message = unpack(response.data)
        if not isinstance(message, Response):
            raise CheckFailed("the answer to our initiation is not a response")
        try:
            noise.consume_response(
                message, initiation.identity, lambda i: initiation.handshake if i == initiation.index else None
            )
            keypair = noise.begin_session(initiation.handshake, self.now())
        except noise.HandshakeRejected as rejected:
            raise CheckFailed(f"the endpoint's response does not authenticate ({rejected.reason.name})") from None
        self.manual[keypair.local_index] = keypair
        return keypair

    # --- running ------------------------------------------------------------------------------------------------

    def run(self, report: Callable[[conformance.CheckResult], None]) -> list[conformance.CheckResult]:
        """Run the selected checks in the battery's order, handing each result to ``report`` as it ends."""
        results: list[conformance.CheckResult] = []
        session = True
        for name in self.config.checks:
            info = conformance.check_info(name)
            start = self.real()
            if info.slow and self.config.skip_slow:
                result = conformance.CheckResult(name, conformance.Status.SKIP, "slow check (--skip-slow)")
            elif not session:
                result = conformance.CheckResult(name, conformance.Status.SKIP, "no session with the endpoint")
            else:
                result = self._run_one(name)
                result.duration = self.real() - start
            if name == "handshake" and result.status is not conformance.Status.PASS:
                session = False
            results.append(result)
            report(result)
        return results

    def _run_one(self, name: str) -> conformance.CheckResult:
        method: Callable[[], tuple[str, dict[str, object]]] = getattr(self, "check_" + name.replace("-", "_"))
        try:
            evidence, details = method()
        except CheckFailed as failed:
            status = conformance.Status.SKIP if failed.skip else conformance.Status.FAIL
            return conformance.CheckResult(name, status, failed.evidence)
        except OSError as exc:
            return conformance.CheckResult(name, conformance.Status.FAIL, f"probe I/O error: {exc}")
        return conformance.CheckResult(name, conformance.Status.PASS, evidence, details=details)

    # --- the checks ---------------------------------------------------------------------------------------------
    # Each returns (evidence, details) on PASS and raises CheckFailed otherwise.

    def check_handshake(self) -> tuple[str, dict[str, object]]:
        self.pace()
        start = self.real()
        sequence, out = self.send_echo()
        if not any(conformance.message_type(d) == _INITIATION for d in out):
            raise CheckFailed("internal: the probe's engine did not start a handshake")
        # One retransmission is allowed for (REKEY_TIMEOUT), as a real peer would.
        limit = REKEY_TIMEOUT + self.config.timeout
        response = self.wait(limit, lambda r: r.kind == _RESPONSE)
        cookies = sum(1 for r in self.received if r.kind == _COOKIE_REPLY and r.at >= start)
        if response is None:
            why = (
                f"sending failed: {self.last_send_error}" if self.send_errors else "is our key a peer of the endpoint?"
            )
            raise CheckFailed(f"no handshake response within {limit:.1f} s ({why})")
        if self.peer.keypairs.current is None:
            rejected = self.device.stats.drops[DropReason.HANDSHAKE_FAILED]
            raise CheckFailed(
                f"a response came in {_ms(response.at - self.last_initiation_at)} but does not authenticate "
                f"({rejected} rejected as HANDSHAKE_FAILED): is the preshared key right?"
            )
        handshake_time = response.at - self.last_initiation_at
        reply = self.wait_reply(sequence, self.config.timeout)
        if reply is None:
            raise CheckFailed(
                f"response in {_ms(handshake_time)}, but no echo reply from {self.config.target} within "
                f"{self.config.timeout} s (is {self.config.tunnel_address} in our allowed IPs on the endpoint?)"
            )
        rtt = reply.at - response.at
        extra = f" (after {cookies} cookie reply)" if cookies else ""
        return (
            f"response in {_ms(handshake_time)}{extra}, keypair derived; echo reply from {self.config.target} in "
            f"{_ms(rtt)}",
            {
                "response_ms": round(handshake_time * 1000, 3),
                "echo_ms": round(rtt * 1000, 3),
                "cookie_replies": cookies,
            },
        )

    def check_bad_mac1(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        initiation = self.craft()
        good = self.with_macs(initiation.body)
        bad = conformance.flip_bit(good, 8 * MAC1_OFFSET_INITIATION)
        self.send_raw(bad)
        answer = self.answer_to(initiation.index, self.config.timeout)
        if answer is not None:
            raise CheckFailed(
                f"answered an initiation with a wrong mac1 with a {_KIND_NAMES.get(answer.kind or 0)} after "
                f"{_ms(answer.at - self.last_initiation_at)}"
            )
        self.send_raw(good)
        control = self.answer_to(initiation.index, self.config.timeout, (_RESPONSE,))
        if control is None:
            raise CheckFailed("inconclusive: the same initiation with the right mac1 got no response either")
        control_time = control.at - self.last_initiation_at
        survived = self.still_works()
        return (
            f"no answer to a wrong mac1 within {self.config.timeout} s; with the right mac1 the same initiation got "
            f"a response in {_ms(control_time)}; {survived}",
            {"silence_s": self.config.timeout, "control_response_ms": round(control_time * 1000, 3)},
        )

    def check_unknown_key(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        stranger = StaticIdentity(PrivateKey.generate(self.rng))
        initiation = self.craft(stranger)
        self.send_raw(self.with_macs(initiation.body))
        answer = self.answer_to(initiation.index, self.config.timeout)
        if answer is not None and answer.kind == _RESPONSE:
            raise CheckFailed(
                f"answered an initiation from an unknown key ({stranger.public_key.short()}) with a response"
            )
        note = " (a cookie reply came, which is allowed under load)" if answer is not None else ""
        survived = self.still_works()
        return (
            f"no response to an initiation from unknown key {stranger.public_key.short()} (mac1 correct) within "
            f"{self.config.timeout} s{note}; {survived}",
            {"silence_s": self.config.timeout, "cookie_reply": answer is not None},
        )

    def check_reserved_bytes(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        # An initiation whose mac1 is right for its altered bytes: only the reserved bytes are wrong.
        initiation = self.craft()
        self.send_raw(self.with_macs(conformance.with_reserved(initiation.body)))
        answer = self.answer_to(initiation.index, self.config.timeout)
        if answer is not None:
            raise CheckFailed(
                f"answered an initiation with non-zero reserved bytes (mac1 valid) with a "
                f"{_KIND_NAMES.get(answer.kind or 0)}"
            )
        self.send_raw(self.with_macs(initiation.body))
        if self.answer_to(initiation.index, self.config.timeout, (_RESPONSE,)) is None:
            raise CheckFailed("inconclusive: the same initiation with zero reserved bytes got no response either")
        # A transport message: the reserved bytes are outside the AEAD, so only the type check can refuse it.
        sequence, held = self.send_echo(hold=True)
        transport = self._one_transport(held)
        self.send_raw(conformance.with_reserved(transport))
        if self.wait_reply(sequence, self.config.timeout) is not None:
            raise CheckFailed("delivered a transport message with non-zero reserved bytes (the echo was answered)")
        self.send_raw(transport)
        if self.wait_reply(sequence, self.config.timeout) is None:
            raise CheckFailed("inconclusive: the same transport message with zero reserved bytes was not answered")
        survived = self.still_works()
        return (
            f"initiation (mac1 valid) and transport message with reserved bytes set were ignored for "
            f"{self.config.timeout} s each; both with zero reserved bytes were answered; {survived}",
            {"silence_s": self.config.timeout},
        )

    def _one_transport(self, held: list[bytes]) -> bytes:
        transports = [d for d in held if conformance.transport_header(d) is not None]
        for other in held:
            if other not in transports:
                self.send_raw(other)
        if len(transports) != 1:
            raise CheckFailed(f"internal: expected one transport message from the engine, got {len(transports)}")
        return transports[0]

    def check_replayed_initiation(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        initiation = self.craft()
        message = self.with_macs(initiation.body)
        self.send_raw(message)
        first = self.answer_to(initiation.index, self.config.timeout, (_RESPONSE,))
        if first is None:
            raise CheckFailed("inconclusive: the initiation got no response the first time")
        first_time = first.at - self.last_initiation_at
        self.wait(REPLAY_PAUSE)
        self.send_raw(message)
        again = self.answer_to(initiation.index, self.config.timeout, (_RESPONSE,))
        if again is not None:
            raise CheckFailed(
                f"answered an exact replay of an initiation ({REPLAY_PAUSE} s after the original) with a response "
                f"after {_ms(again.at - self.last_initiation_at)}"
            )
        survived = self.still_works()
        return (
            f"initiation answered in {_ms(first_time)}; its exact replay {REPLAY_PAUSE} s later got no response "
            f"within {self.config.timeout} s; {survived}",
            {"first_response_ms": round(first_time * 1000, 3), "replay_pause_s": REPLAY_PAUSE},
        )

    def check_replayed_transport(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        sequence, sent = self.send_echo()
        transport = [d for d in sent if conformance.transport_header(d) is not None]
        if len(transport) != 1:
            raise CheckFailed(f"internal: expected one transport message from the engine, got {len(transport)}")
        if self.wait_reply(sequence, self.config.timeout) is None:
            raise CheckFailed("inconclusive: no echo reply to the original transport message")
        header = conformance.transport_header(transport[0])
        counter = header[1] if header is not None else -1
        self.send_raw(transport[0])
        self.wait(self.config.timeout, lambda r: len(self.replies(sequence)) > 1)
        count = len(self.replies(sequence))
        if count > 1:
            raise CheckFailed(
                f"a replayed transport message (counter {counter}) was delivered again: {count} echo replies to one request"
            )
        survived = self.still_works()
        return (
            f"one echo reply; the same transport message (counter {counter}) sent again brought no second reply "
            f"within {self.config.timeout} s; {survived}",
            {"counter": counter, "replies": count},
        )

    def check_bit_flip(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        sequence, held = self.send_echo(hold=True)
        transport = self._one_transport(held)
        header_bits = 8 * 16
        payload_bits = 8 * len(transport) - header_bits
        forged = {
            "ciphertext": conformance.flip_bit(transport, header_bits + (payload_bits - 128) // 2),
            "tag": conformance.flip_bit(transport, 8 * len(transport) - 1),
            "counter": conformance.flip_bit(transport, 8 * 8 + 1),
        }
        for copy in forged.values():
            self.send_raw(copy)
        if self.wait_reply(sequence, self.config.timeout) is not None:
            raise CheckFailed("delivered a transport message with a flipped bit (the echo was answered)")
        start = self.real()
        self.send_raw(transport)
        reply = self.wait_reply(sequence, self.config.timeout)
        if reply is None:
            raise CheckFailed(
                "after copies with a flipped bit, the intact message (same counter) was not delivered: "
                "a forgery burned its counter in the replay window"
            )
        survived = self.still_works()
        return (
            f"{len(forged)} copies with one bit flipped ({', '.join(forged)}) got no reply within "
            f"{self.config.timeout} s; the intact message (same counter) then did, in "
            f"{_ms(reply.at - start)}; {survived}",
            {"flipped": list(forged), "silence_s": self.config.timeout},
        )

    def check_keepalive(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        old = self.peer.keypairs.current
        if old is None:
            raise CheckFailed("internal: no current keypair after a ping")
        initiation = self.craft()
        self.send_raw(self.with_macs(initiation.body))
        response = self.answer_to(initiation.index, self.config.timeout, (_RESPONSE,))
        if response is None:
            raise CheckFailed("inconclusive: our new initiation got no response")
        new = self.complete(initiation, response)
        # From here the endpoint's current session may be one the device does not know.
        self.stale = True
        keepalive = new.seal(b"")
        if keepalive is None:  # pragma: no cover - a fresh keypair
            raise CheckFailed("internal: cannot seal a keepalive")
        self.send_raw(keepalive)
        self.wait(INITIATION_SPACING)
        start = self.real()
        sequence, _ = self.send_echo()  # the device still sends on the old keypair
        reply = self.wait_reply(sequence, self.config.timeout)
        if reply is None:
            raise CheckFailed("no echo reply to a request sent on the previous keypair after our keepalive")
        if reply.receiver_index == old.local_index:
            raise CheckFailed(
                "the endpoint still answers on the old keypair: it did not take our keepalive (the only packet on the "
                "new session) as confirmation of the new session"
            )
        if reply.receiver_index != new.local_index:
            raise CheckFailed(f"the echo reply came on an unexpected keypair (index {reply.receiver_index:#010x})")
        return (
            f"after a new handshake our keepalive (32 bytes, counter 0) alone confirmed the session: the echo sent on "
            f"the old keypair was answered on the new one in {_ms(reply.at - start)}",
            {
                "old_index": old.local_index,
                "new_index": new.local_index,
                "echo_ms": round((reply.at - start) * 1000, 3),
            },
        )

    def check_reject_after_time(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        old = self.peer.keypairs.current
        if old is None:
            raise CheckFailed("internal: no current keypair after a ping")
        self.pace()
        self.clock_offset += REJECT_AFTER_TIME + 1.0
        self.device.handle_timer(self.now(), wall_ns())
        out = self.held()
        sequence, more = self.send_echo(hold=True)
        out += more
        on_old = [d for d in out if (h := conformance.transport_header(d)) is not None and h[0] == old.remote_index]
        if on_old:
            raise CheckFailed("internal: the probe's engine sent on a keypair older than REJECT_AFTER_TIME")
        if not any(conformance.message_type(d) == _INITIATION for d in out):
            raise CheckFailed("internal: the probe's engine did not initiate after REJECT_AFTER_TIME")
        start = self.real()
        for data in out:
            self.send_raw(data)
        response = self.wait(self.config.timeout, lambda r: r.kind == _RESPONSE)
        if response is None:
            raise CheckFailed("the endpoint did not answer our new initiation after our REJECT_AFTER_TIME")
        reply = self.wait_reply(sequence, self.config.timeout)
        new = self.peer.keypairs.current
        if reply is None or new is None:
            raise CheckFailed(f"handshake answered in {_ms(response.at - start)} but no echo reply on the new session")
        if reply.receiver_index != new.local_index or new is old:
            raise CheckFailed(f"the echo reply came on keypair {reply.receiver_index:#010x}, not the new one")
        return (
            f"probe clock +{REJECT_AFTER_TIME + 1:.0f} s: our engine refused the old keypair and initiated; the "
            f"endpoint answered in {_ms(response.at - start)} and the echo came back on the new keypair in "
            f"{_ms(reply.at - response.at)}",
            {"clock_jump_s": REJECT_AFTER_TIME + 1.0, "response_ms": round((response.at - start) * 1000, 3)},
        )

    def check_cookie_under_load(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        burst = self.config.burst
        total_cookies = 0
        for attempt in (1, 2):
            junk = conformance.junk_initiations(self.config.peer_public_key, burst, self.rng)
            junk_by_index = dict(junk)
            initiation = self.craft()
            generator = CookieGenerator(self.config.peer_public_key)
            first = generator.add_macs(initiation.body, self.now())
            start = self.real()
            for _, datagram in junk:
                self.send_raw(datagram)
            # Let the burst drain (cookie replies stop coming), then send ours inside the endpoint's 1 s
            # under-load tail, so that it is not lost in a full socket buffer.
            self.wait(self.config.timeout, lambda r: r.kind == _COOKIE_REPLY)
            quiet_deadline = self.real() + max(self.config.timeout, 2.0)
            while self.real() < quiet_deadline and self.wait(QUIET_AFTER_BURST, lambda r: True) is not None:
                pass
            self.send_raw(first)
            answer = self.answer_to(initiation.index, self.config.timeout)
            cookies = [r for r in self.received if r.kind == _COOKIE_REPLY and r.at >= start]
            total_cookies += len(cookies)
            junk_cookie_ok = self._junk_cookie_valid(cookies, junk_by_index)
            if answer is None or answer.kind != _COOKIE_REPLY:
                continue  # not under load when ours arrived: try once more
            reply = unpack(answer.data)
            if not isinstance(reply, CookieReply) or not generator.consume_reply(reply, self.now()):
                raise CheckFailed("the cookie reply to our initiation does not decrypt with the mac1 we sent")
            if junk_cookie_ok is False:
                raise CheckFailed("a cookie reply to the burst does not decrypt with the mac1 of its initiation")
            retry = self.craft()
            self.send_raw(generator.add_macs(retry.body, self.now()))
            retry_start = self.last_initiation_at
            retry_answer = self.answer_to(retry.index, self.config.timeout)
            if retry_answer is None:
                raise CheckFailed("no answer to our retry carrying mac2")
            if retry_answer.kind == _COOKIE_REPLY:
                raise CheckFailed("our retry carrying a valid mac2 got another cookie reply instead of a response")
            survived = self.still_works()
            return (
                f"{len(cookies)} cookie replies to {burst} initiations; the one to ours decrypted for its mac1; the "
                f"retry carrying mac2 got a response in {_ms(retry_answer.at - retry_start)}; {survived}",
                {"burst": burst, "cookie_replies": len(cookies), "attempt": attempt},
            )
        raise CheckFailed(
            f"could not drive the endpoint under load ({total_cookies} cookie replies to 2 × {burst} initiations, "
            "none to ours)",
            skip=True,
        )

    def _junk_cookie_valid(self, cookies: list[Received], junk: dict[int, bytes]) -> bool | None:
        """Whether the first cookie reply to a junk initiation decrypts with that initiation's mac1."""
        for received in cookies:
            index = received.reply_index
            if index is None or index not in junk:
                continue
            reply = unpack(received.data)
            generator = CookieGenerator(self.config.peer_public_key)
            generator.add_macs(junk[index], 0.0)  # remembers that message's mac1, as after sending it
            return isinstance(reply, CookieReply) and generator.consume_reply(reply, 0.0)
        return None

    def check_passive_keepalive(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        self.send_echo(reply=True)  # data the target will not answer
        start = self.real()
        limit = KEEPALIVE_TIMEOUT + SLACK
        keepalive = self.wait(limit, lambda r: r.is_keepalive)
        if keepalive is None:
            raise CheckFailed(f"no keepalive within {limit:.0f} s after data it did not answer")
        delay = keepalive.at - start
        return (
            f"keepalive (32-byte transport) {delay:.1f} s after our unanswered data (KEEPALIVE_TIMEOUT "
            f"{KEEPALIVE_TIMEOUT:.0f} s)",
            {"delay_s": round(delay, 3)},
        )

    def check_cookie_initiator(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        # The endpoint sends data (the echo reply) and then hears nothing from us: after KEEPALIVE_TIMEOUT +
        # REKEY_TIMEOUT it must start a new handshake (whitepaper §6.2). We stay silent: no timers run.
        sequence, _ = self.send_echo()
        reply = self.wait_reply(sequence, self.config.timeout)
        if reply is None:
            raise CheckFailed("inconclusive: no echo reply to start from")
        start = reply.at
        checker = CookieChecker(self.identity.public_key, self.rng)

        def initiation(r: Received) -> bool:
            return r.kind == _INITIATION

        limit = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + SLACK
        first = self.wait(limit, initiation, timers=False, intercept=initiation)
        if first is None:
            self.stale = True
            raise CheckFailed(
                f"the endpoint did not initiate within {limit:.0f} s of silence after its data", skip=True
            )
        waited = first.at - start
        if not checker.check_mac1(first.data):
            raise CheckFailed("the endpoint's initiation has a wrong mac1")
        message = unpack(first.data)
        if not isinstance(message, Initiation):  # pragma: no cover - the kind was checked
            raise CheckFailed("internal: not an initiation")
        source = endpoint_bytes(first.source)
        cookie = checker.create_reply(first.data, message.sender_index, source, self.now())
        self.send_raw(cookie.pack(), first.source)
        cookie_at = self.real()
        retry = self.wait(REKEY_TIMEOUT + SLACK, initiation, timers=False, intercept=initiation)
        if retry is None:
            self.stale = True
            raise CheckFailed(f"no retransmitted initiation within {REKEY_TIMEOUT + SLACK:.0f} s of our cookie reply")
        state = checker.check(retry.data, endpoint_bytes(retry.source), True, self.now())
        if state is not MacState.VALID_MAC_WITH_COOKIE:
            self.stale = True
            mac2 = retry.data[-MAC_SIZE:]
            raise CheckFailed(
                f"its retry {retry.at - cookie_at:.1f} s after our cookie reply carries "
                f"{'no mac2 (zero)' if not any(mac2) else 'a wrong mac2'}"
            )
        # Accept the retry as a real responder would: the device answers it and a session follows. Wait for the
        # endpoint to confirm it (its keepalive) before pinging: an initiator that still holds an unconfirmed
        # keypair from one of our crafted handshakes frees its current keypair (kernel and wireguard-go do), so a
        # ping sent on that one before the confirmation would be lost for reasons of the probe's making.
        self._feed(retry)
        self.wait(self.config.timeout, lambda r: self.peer.keypairs.next is None)
        survived = self.still_works()
        return (
            f"it initiated {waited:.1f} s after its unanswered data; after our cookie reply its retry "
            f"({retry.at - cookie_at:.1f} s later) carried a valid mac2; {survived}",
            {"initiated_after_s": round(waited, 3), "retry_after_s": round(retry.at - cookie_at, 3)},
        )
