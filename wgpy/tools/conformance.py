"""The checks of ``wgpy probe``: what each one proves, how results are reported, and how hostile messages are made.

Theory of operation: ``wgpy probe`` (``wgpy/tools/probe.py``) tests a live WireGuard endpoint from the outside. It runs
a real ``Device`` as the endpoint's legitimate peer and, next to it, sends messages crafted here: handshake
initiations with a wrong mac1, from a key the endpoint does not know, with non-zero reserved bytes; exact replays;
transport messages with one bit flipped; bursts of initiations that only a cookie can get through. This module owns
the pure half of that work:

- ``CHECKS``: the battery, one ``CheckInfo`` per check with the rule it tests (whitepaper section) and whether it is
  slow (it waits out a protocol timer in real time);
- ``Status`` (PASS, FAIL, SKIP, and INCONCLUSIVE when the probe cannot decide: neither a pass nor a failure),
  ``CheckResult`` and ``report``: one line per check (``PASS          handshake  response in 2.1 ms ...``) and the
  JSON report;
- ``keepalive_verdict``: the decision table of the ``keepalive`` check and its controls, apart from any I/O;
- the inner packets, with real checksums, since the endpoint's own IP stack answers them: ``icmp_echo``,
  ``udp_datagram``, ``tcp_segment``, ``parse_ip`` / ``parse_icmp_echo``, and ``EchoTarget``, which builds the probe's
  requests to the target (ICMP echo, UDP echo, TCP SYN) and recognises the answers;
- crafting: ``craft_initiation`` (a real Noise initiation from any identity), ``add_macs``, ``with_reserved``,
  ``flip_bit`` and ``junk_initiations`` (valid mac1, nothing else valid).

Everything is computed with the library's own ``noise``, ``cookie`` and ``messages`` code, so the probe holds the
endpoint to exactly what wgpy itself sends and accepts. Like the rest of the core this module does no I/O, reads no
clock (``now`` and ``wall_ns`` are arguments) and draws randomness only from an injected ``rng``.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from ..cookie import CookieGenerator
from ..keys import PresharedKey, PublicKey
from ..messages import MAC_SIZE, MESSAGE_INITIATION_SIZE, MESSAGE_TRANSPORT_HEADER_SIZE, MessageType
from ..noise import Handshake, StaticIdentity, create_initiation

__all__ = [
    "CHECKS",
    "CHECK_NAMES",
    "STATUS_WIDTH",
    "TCP_ACK",
    "TCP_RST",
    "TCP_SYN",
    "CheckInfo",
    "CheckResult",
    "Echo",
    "EchoKind",
    "EchoTarget",
    "Inner",
    "Status",
    "add_macs",
    "check_info",
    "craft_initiation",
    "flip_bit",
    "icmp_echo",
    "internet_checksum",
    "junk_initiations",
    "keepalive_verdict",
    "message_type",
    "parse_icmp_echo",
    "parse_ip",
    "report",
    "summary",
    "tcp_segment",
    "transport_header",
    "udp_datagram",
    "with_reserved",
]

_TYPE: Final = struct.Struct("<I")
_TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
_INITIATION_HEADER: Final = struct.Struct("<II")  # type, sender index
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_IPV6: Final = struct.Struct("!IHBB16s16s")
_ICMP_ECHO: Final = struct.Struct("!BBHHH")
_UDP: Final = struct.Struct("!HHHH")  # RFC 768
_TCP: Final = struct.Struct("!HHIIBBHHH")  # RFC 9293 §3.1, no options
TCP_SYN: Final = 0x02  # RFC 9293 §3.1 control bits
TCP_RST: Final = 0x04
TCP_ACK: Final = 0x10
_TCP_WINDOW: Final = 64240
_EPHEMERAL_PORT_BASE: Final = 49152  # RFC 6335 §6: the dynamic ports, 49152-65535
_EPHEMERAL_PORT_COUNT: Final = 16384
_IPV4_HEADER_SIZE: Final = 20  # RFC 791 §3.1
_IPV6_HEADER_SIZE: Final = 40  # RFC 8200 §3
_PROTO_ICMP: Final = 1  # IANA protocol numbers
_PROTO_ICMPV6: Final = 58
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_ICMP_ECHO_REQUEST: Final = 8  # RFC 792
_ICMP_ECHO_REPLY: Final = 0
_ICMPV6_ECHO_REQUEST: Final = 128  # RFC 4443 §4
_ICMPV6_ECHO_REPLY: Final = 129
_TTL: Final = 64


# ----------------------------------------------------------------------------------------------------------------
# The battery
# ----------------------------------------------------------------------------------------------------------------


class Status(enum.Enum):
    """The verdict of one check."""

    PASS = "pass"  # noqa: S105 - a verdict, not a password
    FAIL = "fail"
    SKIP = "skip"
    #: The probe could not decide: a control failed, or the endpoint's behaviour does not tell the two answers apart.
    #: Neither PASS nor FAIL; it does not make the exit status a failure.
    INCONCLUSIVE = "inconclusive"


STATUS_WIDTH: Final = max(len(status.name) for status in Status)


@dataclass(frozen=True, slots=True)
class CheckInfo:
    """One check of the battery: its name on the command line, what it proves, and whether it is slow."""

    name: str
    proves: str
    slow: bool = False


CHECKS: Final[tuple[CheckInfo, ...]] = (
    CheckInfo(
        "handshake",
        "a valid initiation gets a response (whitepaper §5.4.2-§5.4.3), the derived keys work in both directions "
        "(§5.4.5-§5.4.6): the target's answer (ICMP echo, or the --echo kind) comes back through the tunnel",
    ),
    CheckInfo(
        "bad-mac1",
        "an initiation whose mac1 is wrong is dropped silently, without a response or a cookie reply (§5.4.4); the "
        "same initiation with the right mac1 is then answered (so the mac1 alone made the difference)",
    ),
    CheckInfo(
        "unknown-key",
        "an initiation from a static key the endpoint does not know (mac1 correct) gets no response (§5.4.2)",
    ),
    CheckInfo(
        "reserved-bytes",
        "messages whose three reserved bytes are not zero are dropped (§5.4: type is one le32): an initiation "
        "(mac1 recomputed, so only the reserved bytes are wrong) and a transport message; both controls with the "
        "reserved bytes zero are answered",
    ),
    CheckInfo(
        "replayed-initiation",
        "an exact replay of an initiation the endpoint already answered gets no response (§5.1: TAI64N timestamps "
        "must increase), replayed after the 20 ms per-peer flood limit so only the timestamp can refuse it",
    ),
    CheckInfo(
        "replayed-transport",
        "a transport message sent twice is delivered once (§5.4.6 replay window): one answer, not two",
    ),
    CheckInfo(
        "bit-flip",
        "transport messages with one bit flipped (in the ciphertext, in the counter) are dropped (AEAD, §5.4.6); "
        "the intact message with the same counter is delivered afterwards (a forgery must not burn a counter)",
    ),
    CheckInfo(
        "keepalive",
        "a keepalive (empty transport message) is authenticated and processed: after a new handshake, our keepalive "
        "alone confirms the new session to the endpoint (§5.4.5, §6.5), which then answers an echo sent on the old "
        "keypair on the new one; controls (echo on new, old, new) tell 'did not confirm' (FAIL) from 'answers on the "
        "arriving keypair' (inconclusive)",
    ),
    CheckInfo(
        "reject-after-time",
        "after REJECT_AFTER_TIME (180 s) on the probe's own clock our engine refuses the old keypair and initiates "
        "(§6.1); the endpoint accepts the new handshake and switches to the new keypair",
    ),
    CheckInfo(
        "cookie-under-load",
        "not under load before the burst (an initiation without mac2 gets a response), under a burst of initiations "
        "the endpoint sends cookie replies (§5.4.7) that decrypt for the mac1 we sent, and accepts our retry "
        "carrying mac2; FAIL 'no cookie defence' if the burst visibly loaded it and no cookie reply came; "
        "inconclusive if it was under load already or the burst did not load it",
    ),
    CheckInfo(
        "passive-keepalive",
        "after receiving data it does not answer, the endpoint sends a keepalive within KEEPALIVE_TIMEOUT (§6.5)",
        slow=True,
    ),
    CheckInfo(
        "cookie-initiator",
        "as initiator (after sending data and hearing nothing for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT, §6.2) the "
        "endpoint takes our cookie reply and its retransmitted initiation carries a valid mac2 (§5.4.7)",
        slow=True,
    ),
)
CHECK_NAMES: Final[tuple[str, ...]] = tuple(check.name for check in CHECKS)
_BY_NAME: Final[Mapping[str, CheckInfo]] = {check.name: check for check in CHECKS}


def check_info(name: str) -> CheckInfo:
    """The ``CheckInfo`` of a check name. Raises ``KeyError`` for an unknown name."""
    return _BY_NAME[name]


@dataclass(slots=True)
class CheckResult:
    """The outcome of one check: a verdict, one line of evidence, and the numbers behind it."""

    name: str
    status: Status
    evidence: str
    duration: float = 0.0
    details: dict[str, object] = field(default_factory=dict)

    def line(self, name_width: int = 20) -> str:
        """``PASS          handshake           response in 2.1 ms, keypair derived``."""
        return f"{self.status.name:<{STATUS_WIDTH}}  {self.name:<{name_width}}{self.evidence}"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "status": self.status.value,
            "evidence": self.evidence,
            "duration_s": round(self.duration, 3),
            "slow": check_info(self.name).slow if self.name in _BY_NAME else False,
            "details": dict(self.details),
        }


def summary(results: Iterable[CheckResult]) -> dict[str, int]:
    """How many checks passed, failed, were skipped and were inconclusive."""
    counts = {status.value: 0 for status in Status}
    for result in results:
        counts[result.status.value] += 1
    return counts


def report(results: Sequence[CheckResult], settings: Mapping[str, object], duration: float) -> dict[str, object]:
    """The JSON report: the settings of the run, one object per check, the counts, and ``ok`` (no check failed;
    an inconclusive check is not a failure)."""
    counts = summary(results)
    return {
        **settings,
        "duration_s": round(duration, 3),
        "checks": [result.to_json() for result in results],
        "summary": counts,
        "ok": counts[Status.FAIL.value] == 0,
    }


def keepalive_verdict(steps: Sequence[tuple[str, str | None]]) -> tuple[Status, str]:
    """The verdict of the ``keepalive`` check from the keypairs its echoes were sent and answered on.

    After a new handshake whose only packet is our keepalive, the probe sends an echo on the *old* keypair. An
    endpoint that took the keepalive as confirmation answers on the *new* one (PASS). An answer on the old one has
    two readings: it did not confirm, or it answers on whichever keypair a request arrives on. The controls tell
    them apart: an echo on the new keypair (data, which confirms for certain), on the old one again, on the new one
    again. If after the data the old-keypair echo is answered on the new keypair, the endpoint answers on its
    current session, so the first answer on the old one means the keepalive confirmed nothing (FAIL). If it is
    answered on the old one again, the endpoint follows the arriving keypair and the check cannot decide.

    Args:
        steps: ``(sent_on, answered_on)`` for each echo in order, each ``"old"`` or ``"new"``; ``answered_on`` is
            ``None`` without an answer (or another index, as text). The first is the echo on the old keypair
            after the keepalive, then the controls (new, old, new) when the first was answered on the old one.
    """
    trail = "; ".join(f"{sent} -> {got or 'no answer'}" for sent, got in steps)
    if not steps:
        return Status.INCONCLUSIVE, "no echo was sent"
    first = steps[0][1]
    if first == "new":
        return Status.PASS, "the echo sent on the old keypair was answered on the new one"
    if first is None:
        return Status.INCONCLUSIVE, (
            "the echo sent on the old keypair after our keepalive got no answer, so it shows nothing about the new "
            f"session (sent on -> answered on: {trail})"
        )
    if first != "old" or len(steps) < 4:
        return Status.INCONCLUSIVE, f"answers came on unexpected keypairs (sent on -> answered on: {trail})"
    after_data, old_again, new_again = (got for _, got in steps[1:4])
    if after_data != "new":
        return Status.INCONCLUSIVE, (
            f"the control echo on the new keypair was not answered on it (sent on -> answered on: {trail})"
        )
    if old_again == "new":
        return Status.FAIL, (
            "it did not take our keepalive as confirmation of the new session: the echo on the old keypair after "
            "the keepalive was answered on the old one, and once data had come on the new keypair the same echo "
            f"was answered on the new one, so it answers on its current session (sent on -> answered on: {trail})"
        )
    if old_again == "old" and new_again == "new":
        return Status.INCONCLUSIVE, (
            "it answers on the keypair each request arrives on, so an echo on the old keypair cannot show whether "
            f"our keepalive confirmed the new session (sent on -> answered on: {trail})"
        )
    return Status.INCONCLUSIVE, f"the controls gave no consistent picture (sent on -> answered on: {trail})"


# ----------------------------------------------------------------------------------------------------------------
# Inner packets: ICMP echo, UDP and TCP over IPv4 and IPv6, with real checksums (the endpoint's IP stack checks them)
# ----------------------------------------------------------------------------------------------------------------


def internet_checksum(data: bytes) -> int:
    """The 16-bit ones' complement checksum of RFC 1071."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _packed(address: str | bytes) -> bytes:
    return address if isinstance(address, bytes) else ipaddress.ip_address(address).packed


def _ip(source: bytes, destination: bytes, protocol: int, body: bytes, checksum_offset: int | None) -> bytes:
    """An IPv4 or IPv6 packet carrying ``body``, with the body's checksum (at ``checksum_offset``) filled in.

    The checksum covers the RFC 768 / RFC 793 / RFC 8200 §8.1 pseudo-header, except for ICMPv4 (RFC 792), which
    sums only its own bytes.
    """
    if checksum_offset is not None:
        if len(source) == 4 and protocol == _PROTO_ICMP:
            pseudo = b""
        elif len(source) == 4:
            pseudo = source + destination + struct.pack("!xBH", protocol, len(body))
        else:
            pseudo = source + destination + struct.pack("!I3xB", len(body), protocol)
        checksum = internet_checksum(pseudo + body)
        if protocol == _PROTO_UDP and checksum == 0:
            checksum = 0xFFFF  # RFC 768: a computed zero is sent as all ones (zero means "no checksum")
        body = body[:checksum_offset] + checksum.to_bytes(2, "big") + body[checksum_offset + 2 :]
    if len(source) == 4:
        header = _IPV4.pack(0x45, 0, _IPV4_HEADER_SIZE + len(body), 0, 0x4000, _TTL, protocol, 0, source, destination)
        header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
        return header + body
    return _IPV6.pack(6 << 28, len(body), protocol, _TTL, source, destination) + body


def _addresses(source: str | bytes, destination: str | bytes) -> tuple[bytes, bytes]:
    src, dst = _packed(source), _packed(destination)
    if len(src) != len(dst):
        raise ValueError("source and destination must be of the same IP version")
    return src, dst


def icmp_echo(
    source: str | bytes,
    destination: str | bytes,
    identifier: int,
    sequence: int,
    payload: bytes,
    *,
    reply: bool = False,
) -> bytes:
    """An IPv4 ICMP (RFC 792) or IPv6 ICMPv6 (RFC 4443) echo request, or reply, with valid checksums.

    Args:
        source: our inner address (text or packed); its family picks IPv4 or IPv6.
        destination: the target's inner address, of the same family.
        identifier: the echo identifier (16 bits).
        sequence: the echo sequence number (16 bits).
        payload: the echo data, returned by the target in its reply.
        reply: build an echo reply instead (data the target will not answer).

    Raises:
        ValueError: the addresses are of different families, or a field does not fit.
    """
    src, dst = _addresses(source, destination)
    if not (0 <= identifier <= 0xFFFF and 0 <= sequence <= 0xFFFF):
        raise ValueError("echo identifier and sequence are 16-bit")
    if len(src) == 4:
        kind, protocol = (_ICMP_ECHO_REPLY if reply else _ICMP_ECHO_REQUEST), _PROTO_ICMP
    else:
        kind, protocol = (_ICMPV6_ECHO_REPLY if reply else _ICMPV6_ECHO_REQUEST), _PROTO_ICMPV6
    return _ip(src, dst, protocol, _ICMP_ECHO.pack(kind, 0, 0, identifier, sequence) + payload, 2)


def udp_datagram(
    source: str | bytes, destination: str | bytes, source_port: int, destination_port: int, payload: bytes
) -> bytes:
    """An IPv4 or IPv6 packet carrying one UDP datagram (RFC 768) with a valid checksum."""
    src, dst = _addresses(source, destination)
    if not (0 < source_port <= 0xFFFF and 0 < destination_port <= 0xFFFF):
        raise ValueError("UDP ports are 1-65535")
    body = _UDP.pack(source_port, destination_port, _UDP.size + len(payload), 0) + payload
    return _ip(src, dst, _PROTO_UDP, body, 6)


def tcp_segment(
    source: str | bytes,
    destination: str | bytes,
    source_port: int,
    destination_port: int,
    sequence: int,
    acknowledgement: int,
    flags: int,
) -> bytes:
    """An IPv4 or IPv6 packet carrying one TCP segment (RFC 9293) without options or data, checksum valid."""
    src, dst = _addresses(source, destination)
    if not (0 < source_port <= 0xFFFF and 0 < destination_port <= 0xFFFF):
        raise ValueError("TCP ports are 1-65535")
    body = _TCP.pack(
        source_port,
        destination_port,
        sequence & 0xFFFFFFFF,
        acknowledgement & 0xFFFFFFFF,
        5 << 4,
        flags,
        _TCP_WINDOW,
        0,
        0,
    )
    return _ip(src, dst, _PROTO_TCP, body, 16)


@dataclass(frozen=True, slots=True)
class Inner:
    """The addresses, protocol and transport bytes of an inner IPv4/IPv6 packet."""

    source: str
    destination: str
    protocol: int
    body: bytes


def parse_ip(packet: bytes) -> Inner | None:
    """The inner packet's addresses, protocol and transport bytes, or ``None`` if it is not IP. Never raises."""
    if len(packet) < _IPV4_HEADER_SIZE:
        return None
    version = packet[0] >> 4
    if version == 4:
        header_length = (packet[0] & 0x0F) * 4
        total = int.from_bytes(packet[2:4], "big")
        if header_length < _IPV4_HEADER_SIZE or total > len(packet) or total < header_length:
            return None
        return Inner(
            str(ipaddress.ip_address(packet[12:16])),
            str(ipaddress.ip_address(packet[16:20])),
            packet[9],
            bytes(packet[header_length:total]),
        )
    if version == 6 and len(packet) >= _IPV6_HEADER_SIZE:
        payload_length = int.from_bytes(packet[4:6], "big")
        if _IPV6_HEADER_SIZE + payload_length > len(packet):
            return None
        return Inner(
            str(ipaddress.ip_address(packet[8:24])),
            str(ipaddress.ip_address(packet[24:40])),
            packet[6],
            bytes(packet[_IPV6_HEADER_SIZE : _IPV6_HEADER_SIZE + payload_length]),
        )
    return None


@dataclass(frozen=True, slots=True)
class Echo:
    """An ICMP/ICMPv6 echo request or reply read back from an inner packet."""

    source: str
    destination: str
    is_reply: bool
    identifier: int
    sequence: int
    payload: bytes


def parse_icmp_echo(packet: bytes) -> Echo | None:
    """The echo request or reply carried by an IPv4/IPv6 packet, or ``None`` for anything else. Never raises."""
    inner = parse_ip(packet)
    if inner is None:
        return None
    if inner.protocol == _PROTO_ICMP and ":" not in inner.source:
        kinds = {_ICMP_ECHO_REQUEST: False, _ICMP_ECHO_REPLY: True}
    elif inner.protocol == _PROTO_ICMPV6 and ":" in inner.source:
        kinds = {_ICMPV6_ECHO_REQUEST: False, _ICMPV6_ECHO_REPLY: True}
    else:
        return None
    body = inner.body
    if len(body) < _ICMP_ECHO.size or body[0] not in kinds or body[1] != 0:
        return None
    kind, _code, _checksum, identifier, sequence = _ICMP_ECHO.unpack_from(body)
    return Echo(inner.source, inner.destination, kinds[kind], identifier, sequence, body[_ICMP_ECHO.size :])


# ----------------------------------------------------------------------------------------------------------------
# The echo target: what the probe sends through the tunnel to see that a session works, and how it knows the answer
# ----------------------------------------------------------------------------------------------------------------


class EchoKind(enum.Enum):
    """How the target is asked for an answer."""

    ICMP = "icmp"  # ICMP / ICMPv6 echo request; the answer is the echo reply
    UDP = "udp"  # a UDP datagram to an echo service (RFC 862, port 7, or any that returns the payload)
    TCP = "tcp"  # a TCP SYN to a port; the answer is SYN-ACK (open) or RST (closed), which we then reset


@dataclass(frozen=True, slots=True)
class EchoTarget:
    """Where the probe's inner requests go (``--target`` and ``--echo``) and how an answer is recognised.

    Each request carries a sequence number (16 bits), and ``answer`` returns the sequence a packet answers: the
    echo sequence (ICMP), a sequence after our random token in the returned payload (UDP), or the acknowledgement
    number of the SYN-ACK or RST minus our initial sequence number (TCP, whose ISN is token-derived).
    """

    kind: EchoKind
    source: str  # our tunnel address
    address: str  # the target
    identifier: int  # ICMP echo identifier; picks our UDP/TCP source port
    token: bytes  # 8 random bytes: the UDP payload prefix and the TCP ISN base
    port: int = 0  # UDP/TCP destination port

    def describe(self) -> str:
        if self.kind is EchoKind.ICMP:
            return f"ICMP echo to {self.address}"
        if self.kind is EchoKind.UDP:
            return f"UDP echo to {self.address} port {self.port}"
        return f"TCP SYN to {self.address} port {self.port}"

    @property
    def source_port(self) -> int:
        return _EPHEMERAL_PORT_BASE + self.identifier % _EPHEMERAL_PORT_COUNT

    def _isn(self, sequence: int) -> int:
        return (int.from_bytes(self.token[:4], "big") + sequence) & 0xFFFFFFFF

    def request(self, sequence: int) -> bytes:
        """The inner packet that asks the target for answer number ``sequence``."""
        if self.kind is EchoKind.ICMP:
            payload = self.token + sequence.to_bytes(2, "big") + b"wgpy-probe"
            return icmp_echo(self.source, self.address, self.identifier, sequence, payload)
        if self.kind is EchoKind.UDP:
            payload = self.token + sequence.to_bytes(2, "big") + b"wgpy-probe"
            return udp_datagram(self.source, self.address, self.source_port, self.port, payload)
        return tcp_segment(self.source, self.address, self.source_port, self.port, self._isn(sequence), 0, TCP_SYN)

    def answer(self, packet: bytes) -> int | None:
        """The sequence number ``packet`` answers, or ``None`` if it is not an answer to one of our requests."""
        if self.kind is EchoKind.ICMP:
            echo = parse_icmp_echo(packet)
            if (
                echo is None
                or not echo.is_reply
                or echo.identifier != self.identifier
                or echo.source != self.address
                or echo.destination != self.source
            ):
                return None
            return echo.sequence
        inner = parse_ip(packet)
        if inner is None or inner.source != self.address or inner.destination != self.source:
            return None
        if self.kind is EchoKind.UDP:
            if inner.protocol != _PROTO_UDP or len(inner.body) < _UDP.size + len(self.token) + 2:
                return None
            source_port, destination_port, _length, _checksum = _UDP.unpack_from(inner.body)
            payload = inner.body[_UDP.size :]
            if (source_port, destination_port) != (self.port, self.source_port) or not payload.startswith(self.token):
                return None
            return int.from_bytes(payload[len(self.token) : len(self.token) + 2], "big")
        if inner.protocol != _PROTO_TCP or len(inner.body) < _TCP.size:
            return None
        source_port, destination_port, _seq, ack, _offset, flags, *_ = _TCP.unpack_from(inner.body)
        if (source_port, destination_port) != (self.port, self.source_port) or not flags & TCP_ACK:
            return None
        if not flags & (TCP_RST | TCP_SYN):
            return None
        sequence = (ack - 1 - self._isn(0)) & 0xFFFFFFFF
        return sequence if sequence <= 0xFFFF else None

    def abort(self, packet: bytes) -> bytes | None:
        """For a SYN-ACK to one of our SYNs: the RST that closes the half-open connection (RFC 9293 §3.10.7.3),
        so that the target does not retransmit its SYN-ACK (data through the tunnel the probe did not ask for)."""
        if self.kind is not EchoKind.TCP or self.answer(packet) is None:
            return None
        inner = parse_ip(packet)
        if inner is None:  # pragma: no cover - answer() parsed it
            return None
        _sport, _dport, _seq, ack, _offset, flags, *_ = _TCP.unpack_from(inner.body)
        if not flags & TCP_SYN:
            return None
        return tcp_segment(self.source, self.address, self.source_port, self.port, ack, 0, TCP_RST)


# ----------------------------------------------------------------------------------------------------------------
# Outer messages: reading headers and crafting hostile variants
# ----------------------------------------------------------------------------------------------------------------


def message_type(datagram: bytes) -> int | None:
    """The first four bytes as one le32 (type plus reserved bytes), or ``None`` when the datagram is shorter."""
    return int(_TYPE.unpack_from(datagram)[0]) if len(datagram) >= _TYPE.size else None


def transport_header(datagram: bytes) -> tuple[int, int] | None:
    """``(receiver_index, counter)`` of a transport message (reserved bytes zero), or ``None``."""
    if len(datagram) < MESSAGE_TRANSPORT_HEADER_SIZE + 16:
        return None
    kind, receiver_index, counter = _TRANSPORT_HEADER.unpack_from(datagram)
    return (receiver_index, counter) if kind == MessageType.TRANSPORT else None


def with_reserved(datagram: bytes, value: int = 0x01) -> bytes:
    """``datagram`` with its first reserved byte (offset 1) set to ``value``. Recompute mac1 afterwards if needed."""
    if not 1 <= value <= 0xFF:
        raise ValueError("a reserved byte value must be 1-255 (0 is the valid value)")
    return datagram[:1] + bytes([value]) + datagram[2:]


def flip_bit(datagram: bytes, bit: int) -> bytes:
    """``datagram`` with bit number ``bit`` (0 = the lowest bit of byte 0) inverted."""
    if not 0 <= bit < 8 * len(datagram):
        raise ValueError("bit index out of range")
    data = bytearray(datagram)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


def craft_initiation(
    identity: StaticIdentity,
    responder: PublicKey,
    preshared_key: PresharedKey | None,
    sender_index: int,
    wall_ns: int,
    rng: Callable[[int], bytes],
) -> tuple[Handshake, bytes]:
    """A real handshake initiation from ``identity`` to ``responder``, with mac1 and mac2 still zero.

    Returns the ``Handshake`` (state CREATED_INITIATION, ready for ``noise.consume_response``) and the packed message.
    """
    handshake = Handshake(identity, responder, preshared_key)
    message = create_initiation(handshake, identity, sender_index, wall_ns, rng)
    return handshake, message.pack()


def add_macs(message: bytes, responder: PublicKey, now: float = 0.0, cookie: CookieGenerator | None = None) -> bytes:
    """``message`` (an initiation or response) with mac1 for ``responder`` computed over its bytes as they are.

    mac2 is filled in from ``cookie`` when it holds a fresh cookie, and is zero otherwise. A message whose header was
    altered (reserved bytes) gets the mac1 of the altered bytes, so only the alteration is wrong.
    """
    generator = cookie if cookie is not None else CookieGenerator(responder)
    return generator.add_macs(message, now)


def junk_initiations(responder: PublicKey, count: int, rng: Callable[[int], bytes]) -> list[tuple[int, bytes]]:
    """``count`` initiation-sized messages with a correct mac1 and random contents: ``(sender_index, bytes)``.

    Each costs the endpoint a mac1 check and, unless it is under load, a Diffie-Hellman that fails: the load that a
    real cookie mechanism exists for. The sender indices are distinct, so cookie replies can be matched to them.
    """
    generator = CookieGenerator(responder)
    body_size = MESSAGE_INITIATION_SIZE - 2 * MAC_SIZE - 8
    seen: set[int] = set()
    out: list[tuple[int, bytes]] = []
    while len(out) < count:
        index = int.from_bytes(rng(4), "little")
        if index in seen or index == 0:
            continue
        seen.add(index)
        body = _INITIATION_HEADER.pack(MessageType.INITIATION, index) + rng(body_size)
        out.append((index, generator.add_macs(body + bytes(2 * MAC_SIZE), 0.0)))
    return out
