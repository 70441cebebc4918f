"""``wgpy probe``: a battery of protocol checks against a live WireGuard endpoint, one line of evidence per check.

Theory of operation: the probe is the endpoint's legitimate peer. It runs a real ``Device`` (our private key, the
endpoint's public key, optionally a preshared key, allowed IPs 0.0.0.0/0 and ::/0) on one UDP socket, with a clock
of its own: ``now`` is the boot-time clock plus an offset the probe may jump (``reject-after-time`` jumps it past
REJECT_AFTER_TIME). Everything is synchronous: ``Probe.wait`` receives datagrams with a socket timeout, hands each
to the device it is for, drains that device with ``wgpy.transmit.drain`` (the drivers' one drain contract) into a
datagram sink (the socket) and a packet sink (the probe's record of what came out of the tunnel), and runs the
timers, until a condition holds or time runs out.

Transport receive is the engine's, never the probe's: every datagram goes to ``Device.receive_datagram`` and the
decrypted packets come out of the device's TUN output. A check that needs a second session next to the main one
(``keepalive``) gets a *sibling*: a second ``Device`` with the same key and the same peer, whose sessions the
endpoint sees as ours; datagrams are routed to the device that owns their receiver index.

Inner traffic goes from ``--tunnel-address`` (which the endpoint must accept from us) to ``--target`` (an address
behind the endpoint, typically its own tunnel address): ICMP echo by default, or with ``--echo udp:PORT`` a UDP
datagram to an echo service, or with ``--echo tcp:PORT`` a TCP SYN answered by SYN-ACK or RST
(``wgpy.tools.conformance.EchoTarget``). Hostile messages are crafted with ``wgpy.tools.conformance`` next to the
device, sometimes from datagrams the device produced and the probe held back instead of sending.

Crafted initiations behave as a real initiator's: they carry mac2 while the probe holds a fresh cookie from the
endpoint, and a cookie reply to one is consumed and the same initiation sent again with mac2 (the engine's own
initiations do the same, after REKEY_TIMEOUT, and the waits allow for it). Every verdict that involved a cookie
reply names it.

"Ignored" is proved by silence within ``--timeout`` plus a control wherever one exists: the same message without
the fault is answered (so the fault alone made the difference), and a ping through the session still works
afterwards. When a control fails, or the endpoint's behaviour cannot tell the two possible answers apart, the
check is INCONCLUSIVE with its reason: neither PASS nor FAIL. The checks and what each proves are listed in
``wgpy.tools.conformance.CHECKS`` and in docs/probe.md.

The command line (argument parsing, the printed lines, the JSON report file) is ``wgpy.cli.probe``'s. Its exit
status: 0 when no check failed (inconclusive checks are not failures), 1 when one did, 2 for bad arguments, keys or
a socket that cannot be bound (one line on stderr, never a traceback).
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..constants import KEEPALIVE_TIMEOUT, REJECT_AFTER_TIME, REKEY_TIMEOUT, REKEY_TIMEOUT_JITTER_MAX
from ..cookie import CookieChecker, CookieGenerator, MacState
from ..device import Device, endpoint_bytes
from ..drivers.clock import monotonic_now, wall_ns
from ..errors import DropReason
from ..events import Endpoint
from ..keys import PresharedKey, PrivateKey, PublicKey
from ..messages import MAC1_OFFSET_INITIATION, MAC_SIZE, CookieReply, Initiation, MessageType, unpack
from ..noise import StaticIdentity
from ..peer import Peer
from ..transmit import drain
from . import conformance

__all__ = [
    "DEFAULT_BURST",
    "DEFAULT_TIMEOUT",
    "CheckFailed",
    "CheckInconclusive",
    "CheckSkipped",
    "Probe",
    "ProbeConfig",
    "ProbeUsageError",
]

DEFAULT_TIMEOUT: Final = 2.0  # seconds of silence that count as "ignored"; also the wait for expected answers
DEFAULT_BURST: Final = 4000  # initiations in the cookie-under-load burst (wireguard-go: under load at 128 queued)
INITIATION_SPACING: Final = 0.05  # between our initiations: > 20 ms flood limit and > 16.8 ms TAI64N whitening
REPLAY_PAUSE: Final = 0.1  # before replaying an initiation: past the 20 ms flood limit, so only the timestamp refuses
QUIET_AFTER_BURST: Final = 0.1  # silence that ends the burst's cookie replies; well inside the 1 s under-load tail
UNDER_LOAD_TAIL: Final = 1.5  # wait between looks at the load state: past wireguard-go's and the kernel's 1 s tail
LOAD_LOOKS: Final = 3  # initiations without mac2 before the burst that must all get cookie replies to say "already"
BASELINE_SAMPLES: Final = 3  # initiations timed before the burst; the fastest is the endpoint's unloaded time
LOADED_FACTOR: Final = 10.0  # an answer this many times slower than before the burst shows the burst loaded it ...
LOADED_MIN_DELAY: Final = 0.02  # ... and at least this much slower (seconds), so jitter on a fast link does not
MAC2_RETRIES: Final = 3  # initiations carrying mac2 after the cookie reply of cookie-under-load
KEEPALIVE_COPIES: Final = 3  # our keepalive is sent this often (exact copies), so one lost datagram decides nothing
SLACK: Final = 3.0  # seconds granted beyond a protocol timer before calling it missed
ENGINE_RETRY: Final = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX  # the engine's retry after a cookie reply
_KEEPALIVE_SIZE: Final = 32  # transport header + tag of an empty payload
_RESPONSE_INDICES: Final = struct.Struct("<III")  # type, sender index, receiver index
_COOKIE_INDEX: Final = struct.Struct("<II")  # type, receiver index
_INITIATION: Final = int(MessageType.INITIATION)
_RESPONSE: Final = int(MessageType.RESPONSE)
_COOKIE_REPLY: Final = int(MessageType.COOKIE_REPLY)
_TRANSPORT: Final = int(MessageType.TRANSPORT)
_KIND_NAMES: Final = {_INITIATION: "initiation", _RESPONSE: "response", _COOKIE_REPLY: "cookie reply"}
_BURST_POLL: Final = 64  # junk initiations between looks for cookie replies during the burst
_SIBLING_KEEPALIVE_INTERVAL: Final = 65535  # a persistent keepalive that never fires while the probe runs


class ProbeUsageError(Exception):
    """Bad arguments, keys or local setup: reported in one line with exit status 2."""


class CheckFailed(Exception):
    """Raised inside a check to end it early with a verdict: FAIL here, SKIP or INCONCLUSIVE in the subclasses.

    ``details`` is the evidence behind the sentence (times, counts, indices), written to the JSON report.
    """

    status = conformance.Status.FAIL

    def __init__(self, evidence: str, **details: object) -> None:
        super().__init__(evidence)
        self.evidence = evidence
        self.details = details


class CheckSkipped(CheckFailed):
    """The check does not apply to this endpoint (it never initiated, say)."""

    status = conformance.Status.SKIP


class CheckInconclusive(CheckFailed):
    """The probe cannot decide: a control failed, or both answers fit what the endpoint did."""

    status = conformance.Status.INCONCLUSIVE


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _rounded_ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


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
    echo: conformance.EchoKind = conformance.EchoKind.ICMP
    echo_port: int = 0


# ----------------------------------------------------------------------------------------------------------------
# What goes over the wire, as the probe saw it
# ----------------------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Delivered:
    """An inner packet that came out of the tunnel, and the receiver index of the transport message it came in."""

    packet: bytes
    receiver_index: int
    at: float
    answers: int | None  # the sequence number of our request it answers, if it is an answer


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

    identity: StaticIdentity
    index: int
    body: bytes  # mac1 and mac2 zero


@dataclass(slots=True)
class Exchange:
    """How the endpoint answered one of our crafted initiations, sent as a real initiator sends it."""

    answer: Received | None  # the response (or, when the retry also got one, the last cookie reply)
    sent_at: float  # when the initiation that got ``answer`` went out
    cookie_replies: int = 0  # cookie replies to it that we consumed before retrying with mac2
    cookie_invalid: bool = False  # a cookie reply did not decrypt for the mac1 we sent
    message: bytes = b""  # the bytes of the last send (with the MACs it carried)
    with_mac2: bool = False  # the last send carried mac2 (a cookie we held from before, or the one just received)

    @property
    def response(self) -> Received | None:
        return self.answer if self.answer is not None and self.answer.kind == _RESPONSE else None

    def how(self) -> str:
        """`` (after a cookie reply; retried with mac2)`` or empty: what the verdict must say about cookies."""
        if self.cookie_replies:
            return f" (after {self.cookie_replies} cookie reply; retried with mac2)"
        if self.with_mac2:
            return " (carrying mac2 from the endpoint's earlier cookie)"
        return ""

    def no_response(self, what: str, timeout: float) -> str:
        """Why ``what`` (a control) got no response: silence, a cookie reply and a silent retry, or a bad cookie."""
        if self.cookie_invalid:
            return f"{what} got a cookie reply that does not decrypt for the mac1 we sent, so no retry with mac2"
        if self.answer is not None and self.answer.kind == _COOKIE_REPLY:
            return f"{what} got a cookie reply, and so did its retry carrying mac2"
        if self.cookie_replies:
            return f"{what} got a cookie reply, and its retry carrying mac2 got no response within {timeout} s"
        return f"{what} got no response within {timeout} s{self.how()}"


class _Outbox:
    """The probe's ``transmit.DatagramSink``: everything the engines want sent goes out of the one socket."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.sent: list[bytes] = []  # every datagram a device sent, in order (a check may resend one)

    def send_datagrams(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        for data, endpoint in datagrams:
            self.sent.append(data)
            self.probe.send_raw(data, endpoint)


class _Holder:
    """A ``transmit.DatagramSink`` that keeps the datagrams instead of sending them (the probe sends them, or a variant)."""

    def __init__(self) -> None:
        self.held: list[bytes] = []

    def send_datagrams(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        self.held += [data for data, _ in datagrams]


class _Inbox:
    """The probe's ``transmit.PacketSink``: the decrypted packets of one received datagram, recorded against it."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.received: Received | None = None  # none when the packets were not decrypted from a datagram just now
        self.index = 0

    def write_packets(self, packets: Sequence[bytes]) -> None:
        for packet in packets:
            self.probe.deliver(self.received, packet, self.index)


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
        self.device, self.peer = self._new_device()
        identity = self.device.identity
        if identity is None:  # pragma: no cover - the device was given a key
            raise ProbeUsageError("no private key")
        self.identity = identity
        self.siblings: list[tuple[Device, Peer]] = []  # devices for sessions next to the main one (keepalive)
        self.outbox = _Outbox(self)
        self.inbox = _Inbox(self)
        self.clock_offset = 0.0
        self.received: list[Received] = []
        self.delivered: list[Delivered] = []
        self.stale = False  # the endpoint's current session is one the main device does not know
        self.cookie = CookieGenerator(config.peer_public_key)  # our crafted initiations' mac2, as a real initiator's
        self.echo = conformance.EchoTarget(
            config.echo,
            config.tunnel_address,
            config.target,
            int.from_bytes(rng(2), "big"),
            rng(8),
            config.echo_port,
        )
        self.next_sequence = 1
        self.last_initiation_at = float("-inf")
        self.send_errors = 0
        self.last_send_error = ""

    def _new_device(self) -> tuple[Device, Peer]:
        device = Device(self.config.private_key, rng=self.rng)
        peer = device.add_peer(
            self.config.peer_public_key,
            preshared_key=self.config.preshared_key,
            endpoint=self.config.endpoint,
            allowed_ips=["0.0.0.0/0", "::/0"],
        )
        return device, peer

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

    def held(self, device: Device | None = None) -> list[bytes]:
        """What the device wants to send, taken without sending it."""
        holder = _Holder()
        drain(device or self.device, holder, _Inbox(self))
        return holder.held

    def transmit(self, device: Device | None = None) -> list[bytes]:
        """Send what the device wants to send; returns it."""
        mark = len(self.outbox.sent)
        drain(device or self.device, self.outbox, _Inbox(self))
        return self.outbox.sent[mark:]

    def pace(self) -> None:
        """Wait (still receiving) until our next initiation cannot be refused as a flood or an equal timestamp."""
        self.wait(self.last_initiation_at + INITIATION_SPACING - self.real())

    # --- receiving ----------------------------------------------------------------------------------------------

    def _owner(self, received: Received) -> Device:
        """The device a datagram is for: the one whose index table holds its receiver index (the main one if none)."""
        index: int | None
        header = conformance.transport_header(received.data)
        index = header[0] if header is not None else received.reply_index
        if index is not None:
            for device, _ in self.siblings:
                if device.index_table.lookup(index) is not None:
                    return device
        return self.device

    def _feed(self, received: Received) -> None:
        """Hand a datagram to its device and drain that device: datagrams to the socket, packets to the inbox."""
        device = self._owner(received)
        header = conformance.transport_header(received.data)
        before = device.stats.packets_received
        device.receive_datagram(received.data, received.source, self.now(), wall_ns())
        received.authenticated = device.stats.packets_received > before
        self.inbox.received, self.inbox.index = received, header[0] if header is not None else 0
        drain(device, self.outbox, self.inbox)

    def deliver(self, received: Received | None, packet: bytes, index: int) -> None:
        """Record an inner packet the engine decrypted (and reset a half-open TCP connection it answers)."""
        at = received.at if received is not None else self.real()
        delivered = Delivered(packet, index, at, self.echo.answer(packet))
        if received is not None:
            received.delivered.append(delivered)
        self.delivered.append(delivered)
        abort = self.echo.abort(packet)
        if abort is not None:
            self.device.send_packet(abort, self.now(), wall_ns())
            self.transmit()

    def _run_timers(self) -> float | None:
        """Run every device's due timers and send what they produce; returns the next deadline (probe clock)."""
        deadlines = []
        for device in [self.device, *(d for d, _ in self.siblings)]:
            due = device.get_timer()
            if due is not None and due <= self.now():
                device.handle_timer(self.now(), wall_ns())
                self.transmit(device)
                due = device.get_timer()
            if due is not None:
                deadlines.append(due)
        return min(deadlines) if deadlines else None

    def wait(
        self,
        seconds: float,
        until: Callable[[Received], bool] | None = None,
        *,
        timers: bool = True,
        intercept: Callable[[Received], bool] | None = None,
    ) -> Received | None:
        """Receive for up to ``seconds``, feeding the devices and running their timers.

        Args:
            seconds: how long to wait at most (real time).
            until: stop at the first datagram for which this is true, and return it.
            timers: run the devices' timers (off while the probe must stay silent).
            intercept: called first with each datagram; when it returns true no device sees the datagram.
        """
        deadline = self.real() + seconds
        while True:
            remaining = deadline - self.real()
            if remaining <= 0:
                return None
            wait_for = remaining
            if timers:
                due = self._run_timers()
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

    def receive_ready(self) -> None:
        """Take in the datagrams already waiting on the socket, without waiting for more (and without timers)."""
        self.sock.settimeout(0.0)
        while True:
            try:
                data, source = self.sock.recvfrom(65535)
            except OSError:  # BlockingIOError: nothing more is waiting
                return
            received = Received(data, source, self.real(), conformance.message_type(data))
            self.received.append(received)
            self._feed(received)

    def since(self, mark: int, kind: int | None = None) -> list[Received]:
        """The datagrams received since ``len(self.received)`` was ``mark`` (of one kind, if given)."""
        return [r for r in self.received[mark:] if kind is None or r.kind == kind]

    # --- inner traffic ------------------------------------------------------------------------------------------

    def echo_packet(self, *, reply: bool = False) -> tuple[bytes, int]:
        """A request to the target (or, with ``reply``, an ICMP echo reply: data the target will not answer)."""
        sequence = self.next_sequence
        self.next_sequence = sequence % 0xFFFF + 1
        if reply:
            payload = self.echo.token + sequence.to_bytes(2, "big") + b"wgpy-probe"
            packet = conformance.icmp_echo(
                self.config.tunnel_address, self.config.target, self.echo.identifier, sequence, payload, reply=True
            )
            return packet, sequence
        return self.echo.request(sequence), sequence

    def replies(self, sequence: int) -> list[Delivered]:
        return [d for d in self.delivered if d.answers == sequence]

    def send_echo(
        self, *, hold: bool = False, reply: bool = False, device: Device | None = None
    ) -> tuple[int, list[bytes]]:
        """Give a device an echo request; returns its sequence and the datagrams (sent unless ``hold``)."""
        packet, sequence = self.echo_packet(reply=reply)
        engine = device or self.device
        engine.send_packet(packet, self.now(), wall_ns())
        return sequence, self.held(engine) if hold else self.transmit(engine)

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
        self.siblings.clear()
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
        # A new handshake, retransmitted once after REKEY_TIMEOUT (with mac2 if a cookie reply came) as a real peer.
        rtt = self.roundtrip(ENGINE_RETRY + self.config.timeout)
        if rtt is None:
            raise CheckFailed(
                "no working session with the endpoint any more (ping through a new handshake failed)",
                handshake_wait_s=round(ENGINE_RETRY + self.config.timeout, 3),
            )
        return rtt

    def still_works(self) -> str:
        """Evidence that the session survived a check; raises ``CheckFailed`` if it did not."""
        rtt = self.roundtrip()
        if rtt is None:
            raise CheckFailed("the session stopped working: no echo reply after the check's messages")
        return f"session still works ({_ms(rtt)} ping)"

    def wait_session(self, device: Device | None = None) -> tuple[Received | None, int]:
        """Wait for the response to the engine's handshake the way a real peer does: ``--timeout``, and if a cookie
        reply came instead, the engine's retry carrying mac2 after REKEY_TIMEOUT (plus jitter) and ``--timeout``
        more. Returns the response (or ``None``) and how many cookie replies to the engine's initiations came."""
        engine = device or self.device
        cookies = 0

        def response(r: Received) -> bool:
            nonlocal cookies
            index = r.reply_index
            if index is None or engine.index_table.lookup(index) is None:
                return False  # not for this engine (looked up on arrival: a retry has an index of its own)
            cookies += r.kind == _COOKIE_REPLY
            return r.kind == _RESPONSE

        answer = self.wait(self.config.timeout, response)
        if answer is None and cookies:
            answer = self.wait(ENGINE_RETRY + self.config.timeout, response)
        return answer, cookies

    # --- crafted handshakes -------------------------------------------------------------------------------------

    def new_index(self) -> int:
        while True:
            index = int.from_bytes(self.rng(4), "little")
            devices = [self.device, *(d for d, _ in self.siblings)]
            if index and all(d.index_table.lookup(index) is None for d in devices):
                return index

    def craft(self, identity: StaticIdentity | None = None) -> ManualInitiation:
        """A fresh initiation from ``identity`` (ours by default), paced after our previous one."""
        self.pace()
        identity = identity if identity is not None else self.identity
        index = self.new_index()
        _handshake, body = conformance.craft_initiation(
            identity, self.config.peer_public_key, self.config.preshared_key, index, wall_ns(), self.rng
        )
        return ManualInitiation(identity, index, body)

    def with_macs(self, body: bytes, cookie: CookieGenerator | None = None) -> bytes:
        """``body`` with mac1, and mac2 when ``cookie`` (the probe's own by default) holds a fresh cookie."""
        return conformance.add_macs(body, self.config.peer_public_key, self.now(), cookie or self.cookie)

    def answer_to(
        self, index: int, seconds: float, kinds: tuple[int, ...] = (_RESPONSE, _COOKIE_REPLY)
    ) -> Received | None:
        """The first response or cookie reply to our initiation ``index`` within ``seconds``."""
        return self.wait(seconds, lambda r: r.kind in kinds and r.reply_index == index)

    def exchange(self, initiation: ManualInitiation, cookie: CookieGenerator | None = None) -> Exchange:
        """Send a crafted initiation as a real initiator does and wait for its answer.

        It carries mac2 when ``cookie`` (the probe's own by default, shared by our crafted initiations as a real
        peer's cookie state is) holds a fresh cookie. A cookie reply is consumed and the same initiation sent again
        with mac2 (its timestamp is still new: the endpoint did not process it), once more if that also gets one.
        """
        generator = cookie or self.cookie
        exchange = Exchange(None, self.real())
        for _attempt in range(2):
            exchange.with_mac2 = generator.has_fresh_cookie(self.now())
            exchange.message = self.with_macs(initiation.body, generator)
            self.send_raw(exchange.message)
            exchange.sent_at = self.last_initiation_at
            exchange.answer = self.answer_to(initiation.index, self.config.timeout)
            if exchange.answer is None or exchange.answer.kind != _COOKIE_REPLY:
                return exchange
            reply = unpack(exchange.answer.data)
            if not isinstance(reply, CookieReply) or not generator.consume_reply(reply, self.now()):
                exchange.cookie_invalid = True
                return exchange
            exchange.cookie_replies += 1
        return exchange

    # --- running ------------------------------------------------------------------------------------------------

    def run(self, report: Callable[[conformance.CheckResult], None]) -> list[conformance.CheckResult]:
        """Run the selected checks in the battery's order, handing each result to ``report`` as it ends."""
        results: list[conformance.CheckResult] = []
        session = True
        for name in self.config.checks:
            info = conformance.check_info(name)
            start = self.real()
            if info.slow and self.config.skip_slow:
                result = conformance.CheckResult(
                    name, conformance.Status.SKIP, "slow check (--skip-slow)", details={"reason": "--skip-slow"}
                )
            elif not session:
                result = conformance.CheckResult(
                    name,
                    conformance.Status.SKIP,
                    "no session with the endpoint",
                    details={"reason": "the handshake check did not pass"},
                )
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
        mark, drops, errors = len(self.received), Counter(self.device.stats.drops), self.send_errors
        try:
            evidence, details = method()
        except CheckFailed as failed:
            details = dict(failed.details)
            details.setdefault("traffic", self._traffic(mark, drops, errors))
            return conformance.CheckResult(name, failed.status, failed.evidence, details=details)
        except OSError as exc:
            details = {"error": str(exc), "traffic": self._traffic(mark, drops, errors)}
            return conformance.CheckResult(name, conformance.Status.FAIL, f"probe I/O error: {exc}", details=details)
        return conformance.CheckResult(name, conformance.Status.PASS, evidence, details=details)

    def _traffic(self, mark: int, drops: Counter[DropReason], errors: int) -> dict[str, object]:
        """What the endpoint sent during a check, and what the probe's engine dropped: the evidence of a verdict."""
        kinds = Counter(
            _KIND_NAMES.get(r.kind or 0, "transport" if r.kind == _TRANSPORT else "other") for r in self.received[mark:]
        )
        dropped = Counter(self.device.stats.drops)
        dropped.subtract(drops)
        traffic: dict[str, object] = {
            "received": dict(sorted(kinds.items())),
            "inner_packets": sum(len(r.delivered) for r in self.received[mark:]),
            "engine_drops": {reason.name: count for reason, count in sorted(dropped.items(), key=str) if count > 0},
        }
        if self.send_errors > errors:
            traffic["send_errors"] = self.send_errors - errors
            traffic["last_send_error"] = self.last_send_error
        return traffic

    # --- the checks ---------------------------------------------------------------------------------------------
    # Each returns (evidence, details) on PASS and raises CheckFailed (or CheckSkipped, CheckInconclusive) otherwise.

    def check_handshake(self) -> tuple[str, dict[str, object]]:
        self.pace()
        mark = len(self.received)
        start = self.real()
        sequence, out = self.send_echo()
        if not any(conformance.message_type(d) == _INITIATION for d in out):
            raise CheckFailed("internal: the probe's engine did not start a handshake")
        # One retransmission is allowed for (REKEY_TIMEOUT, with mac2 after a cookie reply), as a real peer would.
        limit = ENGINE_RETRY + self.config.timeout
        response = self.wait(limit, lambda r: r.kind == _RESPONSE)
        cookies = len(self.since(mark, _COOKIE_REPLY))
        if response is None:
            if self.send_errors:
                why = f"sending failed: {self.last_send_error}"
            elif cookies:
                why = f"{cookies} cookie reply came, and the engine's retry carrying mac2 was not answered"
            else:
                why = "is our key a peer of the endpoint?"
            raise CheckFailed(
                f"no handshake response within {limit:.1f} s ({why})", wait_s=round(limit, 3), cookie_replies=cookies
            )
        if self.peer.keypairs.current is None:
            rejected = self.device.stats.drops[DropReason.HANDSHAKE_FAILED]
            raise CheckFailed(
                f"a response came in {_ms(response.at - self.last_initiation_at)} but does not authenticate "
                f"({rejected} rejected as HANDSHAKE_FAILED): is the preshared key right?",
                response_ms=_rounded_ms(response.at - self.last_initiation_at),
                handshake_failed=rejected,
            )
        handshake_time = response.at - self.last_initiation_at
        reply = self.wait_reply(sequence, self.config.timeout)
        if reply is None:
            raise CheckFailed(
                f"response in {_ms(handshake_time)}, but no answer to our {self.echo.describe()} within "
                f"{self.config.timeout} s (is {self.config.tunnel_address} in our allowed IPs on the endpoint? does "
                "the target answer this kind of request? see --echo)",
                response_ms=_rounded_ms(handshake_time),
                echo=self.echo.describe(),
            )
        rtt = reply.at - response.at
        extra = f" (after {cookies} cookie reply; the engine retried with mac2)" if cookies else ""
        return (
            f"response in {_ms(handshake_time)}{extra}, keypair derived; {self._answer_name()} from "
            f"{self.config.target} in {_ms(rtt)}",
            {
                "response_ms": _rounded_ms(handshake_time),
                "echo_ms": _rounded_ms(rtt),
                "cookie_replies": cookies,
                "echo": self.echo.describe(),
                "since_first_initiation_ms": _rounded_ms(response.at - start),
            },
        )

    def _answer_name(self) -> str:
        return {
            conformance.EchoKind.ICMP: "echo reply",
            conformance.EchoKind.UDP: "UDP echo",
            conformance.EchoKind.TCP: "TCP answer",
        }[self.echo.kind]

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
                f"{_ms(answer.at - self.last_initiation_at)}",
                answered_with=_KIND_NAMES.get(answer.kind or 0),
                after_ms=_rounded_ms(answer.at - self.last_initiation_at),
            )
        control = self.exchange(initiation)
        if control.response is None:
            raise CheckInconclusive(
                control.no_response("the same initiation with the right mac1", self.config.timeout),
                silence_s=self.config.timeout,
                control_cookie_replies=control.cookie_replies,
            )
        control_time = control.response.at - control.sent_at
        survived = self.still_works()
        return (
            f"no answer to a wrong mac1 within {self.config.timeout} s; with the right mac1 the same initiation got "
            f"a response in {_ms(control_time)}{control.how()}; {survived}",
            {
                "silence_s": self.config.timeout,
                "control_response_ms": _rounded_ms(control_time),
                "control_cookie_replies": control.cookie_replies,
                "control_mac2": control.with_mac2,
            },
        )

    def check_unknown_key(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        stranger = StaticIdentity(PrivateKey.generate(self.rng))
        initiation = self.craft(stranger)
        # The cookie binds our source address, not our key: the stranger's retry may carry it too.
        exchange = self.exchange(initiation)
        if exchange.response is not None:
            raise CheckFailed(
                f"answered an initiation from an unknown key ({stranger.public_key.short()}) with a response"
                f"{exchange.how()}",
                stranger=stranger.public_key.to_base64(),
                after_ms=_rounded_ms(exchange.response.at - exchange.sent_at),
            )
        note = exchange.how()
        if exchange.answer is not None:
            note = " (it answered with a cookie reply even with mac2, which is allowed under load)"
        survived = self.still_works()
        return (
            f"no response to an initiation from unknown key {stranger.public_key.short()} (mac1 correct) within "
            f"{self.config.timeout} s{note}; {survived}",
            {
                "silence_s": self.config.timeout,
                "cookie_replies": exchange.cookie_replies + (exchange.answer is not None),
                "mac2": exchange.with_mac2,
            },
        )

    def check_reserved_bytes(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        # An initiation whose MACs are right for its altered bytes: only the reserved bytes are wrong.
        initiation = self.craft()
        self.send_raw(self.with_macs(conformance.with_reserved(initiation.body)))
        answer = self.answer_to(initiation.index, self.config.timeout)
        if answer is not None:
            raise CheckFailed(
                f"answered an initiation with non-zero reserved bytes (mac1 valid) with a "
                f"{_KIND_NAMES.get(answer.kind or 0)}",
                answered_with=_KIND_NAMES.get(answer.kind or 0),
                after_ms=_rounded_ms(answer.at - self.last_initiation_at),
            )
        control = self.exchange(initiation)
        if control.response is None:
            raise CheckInconclusive(
                control.no_response("the same initiation with zero reserved bytes", self.config.timeout),
                silence_s=self.config.timeout,
                control_cookie_replies=control.cookie_replies,
            )
        # A transport message: the reserved bytes are outside the AEAD, so only the type check can refuse it.
        sequence, held = self.send_echo(hold=True)
        transport = self._one_transport(held)
        self.send_raw(conformance.with_reserved(transport))
        if self.wait_reply(sequence, self.config.timeout) is not None:
            raise CheckFailed(
                f"delivered a transport message with non-zero reserved bytes (the {self._answer_name()} came back)",
                counter=conformance.transport_header(transport),
            )
        self.send_raw(transport)
        if self.wait_reply(sequence, self.config.timeout) is None:
            raise CheckInconclusive(
                f"the same transport message with zero reserved bytes was not answered within {self.config.timeout} s",
                silence_s=self.config.timeout,
            )
        survived = self.still_works()
        return (
            f"initiation (mac1 valid) and transport message with reserved bytes set were ignored for "
            f"{self.config.timeout} s each; both with zero reserved bytes were answered{control.how()}; {survived}",
            {"silence_s": self.config.timeout, "control_cookie_replies": control.cookie_replies},
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
        first = self.exchange(initiation)
        if first.response is None:
            raise CheckInconclusive(
                first.no_response("the initiation", self.config.timeout), cookie_replies=first.cookie_replies
            )
        first_time = first.response.at - first.sent_at
        self.wait(REPLAY_PAUSE)
        self.send_raw(first.message)  # byte for byte what was answered, mac2 included
        again = self.answer_to(initiation.index, self.config.timeout)
        if again is not None and again.kind == _RESPONSE:
            raise CheckFailed(
                f"answered an exact replay of an initiation ({REPLAY_PAUSE} s after the original) with a response "
                f"after {_ms(again.at - self.last_initiation_at)}",
                replay_pause_s=REPLAY_PAUSE,
                after_ms=_rounded_ms(again.at - self.last_initiation_at),
            )
        note = " (a cookie reply came, not a response)" if again is not None else ""
        survived = self.still_works()
        return (
            f"initiation answered in {_ms(first_time)}{first.how()}; its exact replay {REPLAY_PAUSE} s later got no "
            f"response within {self.config.timeout} s{note}; {survived}",
            {
                "first_response_ms": _rounded_ms(first_time),
                "replay_pause_s": REPLAY_PAUSE,
                "cookie_replies": first.cookie_replies,
            },
        )

    def check_replayed_transport(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        sequence, sent = self.send_echo()
        transport = [d for d in sent if conformance.transport_header(d) is not None]
        if len(transport) != 1:
            raise CheckFailed(f"internal: expected one transport message from the engine, got {len(transport)}")
        if self.wait_reply(sequence, self.config.timeout) is None:
            raise CheckInconclusive(f"no answer to the original transport message within {self.config.timeout} s")
        header = conformance.transport_header(transport[0])
        counter = header[1] if header is not None else -1
        self.send_raw(transport[0])
        self.wait(self.config.timeout, lambda r: len(self.replies(sequence)) > 1)
        count = len(self.replies(sequence))
        if count > 1:
            raise CheckFailed(
                f"a replayed transport message (counter {counter}) was delivered again: {count} answers to one request",
                counter=counter,
                replies=count,
            )
        survived = self.still_works()
        return (
            f"one {self._answer_name()}; the same transport message (counter {counter}) sent again brought no "
            f"second one within {self.config.timeout} s; {survived}",
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
            raise CheckFailed(
                f"delivered a transport message with a flipped bit (the {self._answer_name()} came back)",
                flipped=list(forged),
            )
        start = self.real()
        self.send_raw(transport)
        reply = self.wait_reply(sequence, self.config.timeout)
        if reply is None:
            raise CheckFailed(
                "after copies with a flipped bit, the intact message (same counter) was not delivered: "
                "a forgery burned its counter in the replay window",
                flipped=list(forged),
                wait_s=self.config.timeout,
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
        # The new session is a sibling engine's (same key, same peer, so the endpoint sees one peer). Asked for a
        # keepalive it initiates, and after the response the keepalive is its first and only packet on it.
        device, peer = self._new_device()
        self.siblings.append((device, peer))
        self.pace()
        sent_mark = len(self.outbox.sent)
        device.handle_timer(self.now(), wall_ns())  # nothing is due: it gives the engine the wall clock for TAI64N
        device.set_persistent_keepalive(peer, _SIBLING_KEEPALIVE_INTERVAL, self.now())
        self.transmit(device)
        self.stale = True  # from here the endpoint's current session may be one the main device does not know
        response, cookies = self.wait_session(device)
        new = peer.keypairs.current
        if response is None or new is None:
            raise CheckInconclusive(
                "our new handshake (for the new session) got no response"
                + (f" ({cookies} cookie reply; the engine's retry carrying mac2 got none either)" if cookies else ""),
                cookie_replies=cookies,
            )
        keepalives = [
            d
            for d in self.outbox.sent[sent_mark:]
            if len(d) == _KEEPALIVE_SIZE
            and (h := conformance.transport_header(d)) is not None
            and h[0] == new.remote_index
        ]
        if len(keepalives) != 1:
            raise CheckFailed(f"internal: the engine sent {len(keepalives)} keepalives on the new session, not one")
        for _ in range(KEEPALIVE_COPIES - 1):  # exact copies: a second one is a replay, a lost one is made good
            self.send_raw(keepalives[0])
        self.wait(INITIATION_SPACING)
        names = {old.local_index: "old", new.local_index: "new"}
        steps: list[tuple[str, str | None]] = []
        timings: list[float] = []

        def echo(on: str) -> None:
            start = self.real()
            sequence, _ = self.send_echo(device=self.device if on == "old" else device)
            reply = self.wait_reply(sequence, self.config.timeout)
            if reply is None:
                steps.append((on, None))
                return
            steps.append((on, names.get(reply.receiver_index, f"{reply.receiver_index:#010x}")))
            timings.append(reply.at - start)

        echo("old")
        if steps[0][1] == "old":  # the controls: which keypair does it answer on, and why?
            for on in ("new", "old", "new"):
                echo(on)
        status, verdict = conformance.keepalive_verdict(steps)
        details: dict[str, object] = {
            "old_index": old.local_index,
            "new_index": new.local_index,
            "keepalive_copies": KEEPALIVE_COPIES,
            "sequence": [{"sent_on": sent, "answered_on": got} for sent, got in steps],
            "cookie_replies": cookies,
        }
        how = f" (after {cookies} cookie reply; the engine retried with mac2)" if cookies else ""
        if status is conformance.Status.PASS:
            return (
                f"after a new handshake{how} our keepalive (32 bytes, counter 0, the only packet on the new session) "
                f"confirmed it: {verdict} in {_ms(timings[0])}",
                {**details, "echo_ms": _rounded_ms(timings[0])},
            )
        if status is conformance.Status.FAIL:
            raise CheckFailed(verdict + how, **details)
        raise CheckInconclusive(verdict + how, **details)

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
        response, cookies = self.wait_session()
        if response is None:
            if cookies:
                raise CheckInconclusive(
                    f"the endpoint answered our new initiation with {cookies} cookie reply, and the engine's retry "
                    f"carrying mac2 (after REKEY_TIMEOUT) got no response within {self.config.timeout} s",
                    cookie_replies=cookies,
                    wait_s=round(ENGINE_RETRY + 2 * self.config.timeout, 3),
                )
            raise CheckFailed(
                f"the endpoint did not answer our new initiation after our REJECT_AFTER_TIME within "
                f"{self.config.timeout} s",
                wait_s=self.config.timeout,
            )
        how = f" (after {cookies} cookie reply; the engine retried with mac2)" if cookies else ""
        reply = self.wait_reply(sequence, self.config.timeout)
        new = self.peer.keypairs.current
        if reply is None or new is None:
            raise CheckFailed(
                f"handshake answered in {_ms(response.at - start)}{how} but no {self._answer_name()} on the new "
                "session",
                response_ms=_rounded_ms(response.at - start),
                cookie_replies=cookies,
            )
        if reply.receiver_index != new.local_index or new is old:
            raise CheckFailed(
                f"the {self._answer_name()} came on keypair {reply.receiver_index:#010x}, not the new one",
                reply_index=reply.receiver_index,
                new_index=new.local_index,
            )
        return (
            f"probe clock +{REJECT_AFTER_TIME + 1:.0f} s: our engine refused the old keypair and initiated; the "
            f"endpoint answered in {_ms(response.at - start)}{how} and the {self._answer_name()} came back on the new "
            f"keypair in {_ms(reply.at - response.at)}",
            {
                "clock_jump_s": REJECT_AFTER_TIME + 1.0,
                "response_ms": _rounded_ms(response.at - start),
                "cookie_replies": cookies,
            },
        )

    def _load_before_burst(self) -> float:
        """The endpoint's state before the burst: the time it takes to answer an initiation without mac2 (the
        fastest of ``BASELINE_SAMPLES``).

        Raises:
            CheckInconclusive: it answered ``LOAD_LOOKS`` of them, ``UNDER_LOAD_TAIL`` apart, with cookie replies
                (it is under load already, so cookie replies during the burst would not be the burst's doing).
            CheckFailed: the retry carrying the cookie's mac2 got a cookie reply again.
        """
        looks: list[Exchange] = []
        for look in range(LOAD_LOOKS):
            if look:
                self.wait(UNDER_LOAD_TAIL)
            generator = CookieGenerator(self.config.peer_public_key)  # no cookie: only load brings a cookie reply
            exchange = self.exchange(self.craft(), generator)
            if exchange.answer is not None and exchange.answer.kind == _COOKIE_REPLY and exchange.cookie_replies:
                raise CheckFailed(
                    "before the burst, our retry carrying a valid mac2 got another cookie reply instead of a response",
                    cookie_replies=exchange.cookie_replies + 1,
                )
            if exchange.cookie_invalid:
                raise CheckFailed(
                    "before the burst, a cookie reply to our initiation does not decrypt with the mac1 we sent"
                )
            if not exchange.cookie_replies:
                if exchange.response is None:
                    raise CheckInconclusive(
                        exchange.no_response("before the burst, our initiation", self.config.timeout)
                    )
                return self._fastest_response(exchange.response.at - exchange.sent_at)
            looks.append(exchange)
        last = looks[-1]
        retry = (
            f"the retry carrying mac2 got a response in {_ms(last.response.at - last.sent_at)}"
            if last.response is not None
            else f"the retry carrying mac2 got no response within {self.config.timeout} s"
        )
        raise CheckInconclusive(
            f"the endpoint was under load before our burst: {LOAD_LOOKS} initiations without mac2, "
            f"{UNDER_LOAD_TAIL} s apart, each got a cookie reply ({retry}); cookie replies during a burst could not "
            "be told from that state, so the burst was not sent",
            looks=LOAD_LOOKS,
            look_interval_s=UNDER_LOAD_TAIL,
            retry_response_ms=_rounded_ms(last.response.at - last.sent_at) if last.response is not None else None,
        )

    def _fastest_response(self, first: float) -> float:
        """The fastest of ``BASELINE_SAMPLES`` answers to initiations without mac2: the endpoint's unloaded
        handshake time, with the noise of a busy host taken out (the slowest answer would hide a loaded one)."""
        fastest = first
        for _ in range(BASELINE_SAMPLES - 1):
            exchange = self.exchange(self.craft(), CookieGenerator(self.config.peer_public_key))
            if exchange.response is not None and not exchange.cookie_replies:
                fastest = min(fastest, exchange.response.at - exchange.sent_at)
        return fastest

    def _await_ours(self, index: int, ours: bytes, sent_at: list[float], seconds: float) -> None:
        """Wait up to ``seconds`` for the answer to our initiation ``index``, sent during or after a burst.

        A full handshake queue drops ours silently; an endpoint that has caught up with the burst stays under load
        for its tail (1 s in wireguard-go and the kernel) and then answers with a response. So the first silence of
        ``QUIET_AFTER_BURST`` with ours unanswered (the queue has drained) sends ours once more, inside that tail.
        Every copy's send time goes to ``sent_at``.
        """
        deadline = self.real() + seconds
        resent = False
        while self.real() < deadline:
            got = self.wait(min(QUIET_AFTER_BURST, max(deadline - self.real(), 0.0)), lambda r: True)
            if got is not None:
                if got.reply_index == index and got.kind in (_RESPONSE, _COOKIE_REPLY):
                    return
                continue
            if not resent:
                self.send_raw(ours)
                sent_at.append(self.last_initiation_at)
                resent = True

    def check_cookie_under_load(self) -> tuple[str, dict[str, object]]:
        self.ensure_session()
        burst = self.config.burst
        baseline = self._load_before_burst()
        total_cookies = 0
        unloaded: list[float] = []  # how long ours took to be answered (with a response) after a burst
        lost = responded = 0
        for attempt in (1, 2):
            junk = conformance.junk_initiations(self.config.peer_public_key, burst, self.rng)
            junk_by_index = dict(junk)
            generator = CookieGenerator(self.config.peer_public_key)  # no cookie: only load brings a cookie reply
            initiation = self.craft()
            ours = generator.add_macs(initiation.body, self.now())
            mark = len(self.received)
            start = self.real()
            sent_at: list[float] = []
            for i, (_, datagram) in enumerate(junk):
                self.send_raw(datagram)
                if not sent_at and i % _BURST_POLL == _BURST_POLL - 1:
                    # Ours goes out as soon as a cookie reply to the burst shows the endpoint under load, and the
                    # rest of the burst keeps it there while ours waits in its queue.
                    self.receive_ready()
                    if any(r.reply_index in junk_by_index for r in self.since(mark, _COOKIE_REPLY)):
                        self.send_raw(ours)
                        sent_at.append(self.last_initiation_at)
            burst_s = self.real() - start
            sent_during = bool(sent_at)
            if not sent_at:
                # No sign of load during the burst: ours right behind it, where its wait measures how busy the
                # burst made the endpoint.
                self.send_raw(ours)
                sent_at.append(self.last_initiation_at)
            self._await_ours(initiation.index, ours, sent_at, max(self.config.timeout, 2.0))
            # Let the burst drain (cookie replies stop coming).
            quiet_deadline = self.real() + max(self.config.timeout, 2.0)
            while self.real() < quiet_deadline and self.wait(QUIET_AFTER_BURST, lambda r: True) is not None:
                pass
            answers = [r for r in self.since(mark) if r.reply_index == initiation.index]
            if not answers:
                # Lost (a full socket buffer): once more, inside the endpoint's under-load tail.
                self.send_raw(ours)
                sent_at.append(self.last_initiation_at)
                answer = self.answer_to(initiation.index, self.config.timeout)
                answers = [answer] if answer is not None else []
            cookies = [r for r in self.since(mark, _COOKIE_REPLY) if r.reply_index in junk_by_index]
            total_cookies += len(cookies)
            if not answers:
                lost += 1
                continue
            answer = answers[0]
            answered_copy_at = max(t for t in sent_at if t <= answer.at)
            if answer.kind == _RESPONSE:
                responded += 1
                if not cookies:
                    unloaded.append(answer.at - answered_copy_at)
                continue  # not under load (any more) when ours arrived: try once more
            reply = unpack(answer.data)
            if not isinstance(reply, CookieReply) or not generator.consume_reply(reply, self.now()):
                raise CheckFailed("the cookie reply to our initiation does not decrypt with the mac1 we sent")
            if self._junk_cookie_valid(cookies, junk_by_index) is False:
                raise CheckFailed("a cookie reply to the burst does not decrypt with the mac1 of its initiation")
            # The retry is a new initiation (the cookie binds our address, not a message), so that a late cookie
            # reply to a copy of the first can never pass for the answer to it.
            retry = Exchange(None, self.real())
            for _ in range(MAC2_RETRIES):  # more than one, in case the endpoint's queue is still full of the burst
                again = self.craft()
                retry.message = generator.add_macs(again.body, self.now())
                retry.with_mac2 = generator.has_fresh_cookie(self.now())
                self.send_raw(retry.message)
                retry.sent_at = self.last_initiation_at
                retry.answer = self.answer_to(again.index, self.config.timeout)
                if retry.answer is not None:
                    break
            if retry.answer is None:
                raise CheckInconclusive(
                    f"the cookie reply to ours decrypted for its mac1, but none of {MAC2_RETRIES} retries carrying "
                    f"mac2 got an answer within {self.config.timeout} s each (its queue may still have been full, "
                    "or it rate-limits our address)",
                    cookie_replies=len(cookies),
                    retries=MAC2_RETRIES,
                )
            if retry.answer.kind == _COOKIE_REPLY:
                raise CheckFailed(
                    "our retry carrying a valid mac2 got another cookie reply instead of a response",
                    cookie_replies=len(cookies),
                    retry_mac2=retry.message[-MAC_SIZE:].hex(),
                )
            where = "during the burst once cookie replies came" if sent_during else "right after the burst"
            survived = self.still_works()
            return (
                f"before the burst an initiation without mac2 got a response ({_ms(baseline)}); {len(cookies)} "
                f"cookie replies to the burst's {burst} initiations; ours, sent {where}, got a cookie reply that "
                f"decrypted for its mac1, and the same initiation with mac2 got a response in "
                f"{_ms(retry.answer.at - retry.sent_at)}; {survived}",
                {
                    "burst": burst,
                    "burst_send_ms": _rounded_ms(burst_s),
                    "cookie_replies": len(cookies),
                    "attempt": attempt,
                    "ours_sent_during_burst": sent_during,
                    "baseline_response_ms": _rounded_ms(baseline),
                },
            )
        details: dict[str, object] = {
            "burst": burst,
            "attempts": 2,
            "cookie_replies": total_cookies,
            "baseline_response_ms": _rounded_ms(baseline),
            "after_burst_response_ms": [_rounded_ms(d) for d in unloaded],
            "ours_lost": lost,
            "ours_responded": responded,
        }
        if total_cookies:
            fate = {
                (0, 2): "got no answer either time (lost in a full queue? sent twice each time)",
                (2, 0): "got a response, not a cookie reply, both times: its load state ended before ours arrived",
            }.get((responded, lost), "got no answer once (sent twice) and a response, not a cookie reply, once")
            raise CheckInconclusive(
                f"the burst drove it under load ({total_cookies} cookie replies to 2 × {burst} initiations), but "
                f"ours {fate}, so its handling of mac2 was not seen",
                **details,
            )
        if unloaded:
            slowest = max(unloaded)
            if slowest >= max(LOADED_FACTOR * baseline, baseline + LOADED_MIN_DELAY):
                raise CheckFailed(
                    f"no cookie defence: the burst loaded the endpoint (our initiation right after it waited "
                    f"{_ms(slowest)} for its response, {_ms(baseline)} before the burst), yet none of the 2 × {burst} "
                    "initiations with a valid mac1 got a cookie reply, and ours got a full response: the load was there "
                    "and no cookie defence answered it, which a larger --burst cannot change",
                    **details,
                )
            raise CheckInconclusive(
                f"no cookie reply to 2 × {burst} initiations, and the burst did not measurably load the endpoint "
                f"(ours right after it was answered in {_ms(slowest)}, {_ms(baseline)} before): its load threshold "
                "is above this rate (try a larger --burst), or it has no cookie defence",
                **details,
            )
        raise CheckInconclusive(
            f"no cookie reply to 2 × {burst} initiations, and ours right after each burst got no answer either (sent "
            "twice): the burst may not have reached the endpoint, so its load state is unknown",
            **details,
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
        self.send_echo(reply=True)  # data the target will not answer (an ICMP echo reply, whatever --echo is)
        start = self.real()
        limit = KEEPALIVE_TIMEOUT + SLACK
        keepalive = self.wait(limit, lambda r: r.is_keepalive)
        if keepalive is None:
            raise CheckFailed(
                f"no keepalive within {limit:.0f} s after data it did not answer", wait_s=limit, keepalives=0
            )
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
            raise CheckInconclusive(f"no {self._answer_name()} to start from within {self.config.timeout} s")
        start = reply.at
        checker = CookieChecker(self.identity.public_key, self.rng)

        def initiation(r: Received) -> bool:
            return r.kind == _INITIATION

        limit = KEEPALIVE_TIMEOUT + REKEY_TIMEOUT + SLACK
        first = self.wait(limit, initiation, timers=False, intercept=initiation)
        if first is None:
            self.stale = True
            raise CheckSkipped(
                f"the endpoint did not initiate within {limit:.0f} s of silence after its data", wait_s=limit
            )
        waited = first.at - start
        if not checker.check_mac1(first.data):
            raise CheckFailed("the endpoint's initiation has a wrong mac1", initiated_after_s=round(waited, 3))
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
            raise CheckFailed(
                f"no retransmitted initiation within {REKEY_TIMEOUT + SLACK:.0f} s of our cookie reply",
                initiated_after_s=round(waited, 3),
                wait_s=REKEY_TIMEOUT + SLACK,
            )
        state = checker.check(retry.data, endpoint_bytes(retry.source), True, self.now())
        if state is not MacState.VALID_MAC_WITH_COOKIE:
            self.stale = True
            mac2 = retry.data[-MAC_SIZE:]
            raise CheckFailed(
                f"its retry {retry.at - cookie_at:.1f} s after our cookie reply carries "
                f"{'no mac2 (zero)' if not any(mac2) else 'a wrong mac2'}",
                initiated_after_s=round(waited, 3),
                retry_after_s=round(retry.at - cookie_at, 3),
                mac2=mac2.hex(),
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
