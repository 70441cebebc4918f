"""The checks of ``wgpy probe``: what each one proves, how results are reported, and how hostile messages are made.

Theory of operation: ``wgpy probe`` (``wgpy/tools/probe.py``) tests a live WireGuard endpoint from the outside. It runs
a real ``Device`` as the endpoint's legitimate peer and, next to it, sends messages crafted here: handshake
initiations with a wrong mac1, from a key the endpoint does not know, with non-zero reserved bytes; exact replays;
transport messages with one bit flipped; bursts of initiations that only a cookie can get through. This module owns
the pure half of that work:

- ``CHECKS``: the battery, one ``CheckInfo`` per check with the rule it tests (whitepaper section) and whether it is
  slow (it waits out a protocol timer in real time);
- ``CheckResult`` and ``report``: one line per check (``PASS  handshake  response in 2.1 ms ...``) and the JSON report;
- crafting: ``icmp_echo`` / ``parse_icmp_echo`` (the inner packets, with real checksums, since the endpoint's own IP
  stack answers them), ``craft_initiation`` (a real Noise initiation from any identity), ``add_macs``,
  ``with_reserved``, ``flip_bit`` and ``junk_initiations`` (valid mac1, nothing else valid).

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
    "CheckInfo",
    "CheckResult",
    "Echo",
    "Status",
    "add_macs",
    "check_info",
    "craft_initiation",
    "flip_bit",
    "icmp_echo",
    "internet_checksum",
    "junk_initiations",
    "message_type",
    "parse_icmp_echo",
    "report",
    "summary",
    "transport_header",
    "with_reserved",
]

_TYPE: Final = struct.Struct("<I")
_TRANSPORT_HEADER: Final = struct.Struct("<IIQ")
_INITIATION_HEADER: Final = struct.Struct("<II")  # type, sender index
_IPV4: Final = struct.Struct("!BBHHHBBH4s4s")
_IPV6: Final = struct.Struct("!IHBB16s16s")
_ICMP_ECHO: Final = struct.Struct("!BBHHH")
_IPV4_HEADER_SIZE: Final = 20  # RFC 791 §3.1
_IPV6_HEADER_SIZE: Final = 40  # RFC 8200 §3
_PROTO_ICMP: Final = 1  # IANA protocol numbers
_PROTO_ICMPV6: Final = 58
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
        "(§5.4.5-§5.4.6): an ICMP echo to the target comes back through the tunnel",
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
        "a transport message sent twice is delivered once (§5.4.6 replay window): one echo reply, not two",
    ),
    CheckInfo(
        "bit-flip",
        "transport messages with one bit flipped (in the ciphertext, in the counter) are dropped (AEAD, §5.4.6); "
        "the intact message with the same counter is delivered afterwards (a forgery must not burn a counter)",
    ),
    CheckInfo(
        "keepalive",
        "a keepalive (empty transport message) is authenticated and processed: after a new handshake, our keepalive "
        "alone confirms the new session to the endpoint (§5.4.5, §6.5), which then answers on the new keypair",
    ),
    CheckInfo(
        "reject-after-time",
        "after REJECT_AFTER_TIME (180 s) on the probe's own clock our engine refuses the old keypair and initiates "
        "(§6.1); the endpoint accepts the new handshake and switches to the new keypair",
    ),
    CheckInfo(
        "cookie-under-load",
        "under a burst of initiations the endpoint sends cookie replies (§5.4.7) that decrypt for the mac1 we sent, "
        "and accepts our retry carrying mac2; skipped if the burst cannot drive it under load",
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
        """``PASS  handshake           response in 2.1 ms, keypair derived``."""
        return f"{self.status.name:<4}  {self.name:<{name_width}}{self.evidence}"

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
    """How many checks passed, failed and were skipped."""
    counts = {status.value: 0 for status in Status}
    for result in results:
        counts[result.status.value] += 1
    return counts


def report(results: Sequence[CheckResult], settings: Mapping[str, object], duration: float) -> dict[str, object]:
    """The JSON report: the settings of the run, one object per check, the counts, and ``ok`` (no check failed)."""
    counts = summary(results)
    return {
        **settings,
        "duration_s": round(duration, 3),
        "checks": [result.to_json() for result in results],
        "summary": counts,
        "ok": counts[Status.FAIL.value] == 0,
    }


# ----------------------------------------------------------------------------------------------------------------
# Inner packets: ICMP echo over IPv4 and IPv6, with real checksums (the endpoint's IP stack checks them)
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
    src, dst = _packed(source), _packed(destination)
    if len(src) != len(dst):
        raise ValueError("source and destination must be of the same IP version")
    if not (0 <= identifier <= 0xFFFF and 0 <= sequence <= 0xFFFF):
        raise ValueError("echo identifier and sequence are 16-bit")
    if len(src) == 4:
        kind = _ICMP_ECHO_REPLY if reply else _ICMP_ECHO_REQUEST
        body = _ICMP_ECHO.pack(kind, 0, 0, identifier, sequence) + payload
        body = body[:2] + internet_checksum(body).to_bytes(2, "big") + body[4:]
        header = _IPV4.pack(0x45, 0, _IPV4_HEADER_SIZE + len(body), 0, 0x4000, _TTL, _PROTO_ICMP, 0, src, dst)
        header = header[:10] + internet_checksum(header).to_bytes(2, "big") + header[12:]
        return header + body
    kind = _ICMPV6_ECHO_REPLY if reply else _ICMPV6_ECHO_REQUEST
    body = _ICMP_ECHO.pack(kind, 0, 0, identifier, sequence) + payload
    pseudo = src + dst + struct.pack("!I3xB", len(body), _PROTO_ICMPV6)  # RFC 8200 §8.1 pseudo-header
    body = body[:2] + internet_checksum(pseudo + body).to_bytes(2, "big") + body[4:]
    return _IPV6.pack(6 << 28, len(body), _PROTO_ICMPV6, _TTL, src, dst) + body


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
    if len(packet) < _IPV4_HEADER_SIZE:
        return None
    version = packet[0] >> 4
    if version == 4:
        header_length = (packet[0] & 0x0F) * 4
        total = int.from_bytes(packet[2:4], "big")
        if packet[9] != _PROTO_ICMP or header_length < _IPV4_HEADER_SIZE or total > len(packet):
            return None
        body = packet[header_length:total]
        src, dst = packet[12:16], packet[16:20]
        kinds = {_ICMP_ECHO_REQUEST: False, _ICMP_ECHO_REPLY: True}
    elif version == 6 and len(packet) >= _IPV6_HEADER_SIZE:
        payload_length = int.from_bytes(packet[4:6], "big")
        if packet[6] != _PROTO_ICMPV6 or _IPV6_HEADER_SIZE + payload_length > len(packet):
            return None
        body = packet[_IPV6_HEADER_SIZE : _IPV6_HEADER_SIZE + payload_length]
        src, dst = packet[8:24], packet[24:40]
        kinds = {_ICMPV6_ECHO_REQUEST: False, _ICMPV6_ECHO_REPLY: True}
    else:
        return None
    if len(body) < _ICMP_ECHO.size or body[0] not in kinds or body[1] != 0:
        return None
    kind, _code, _checksum, identifier, sequence = _ICMP_ECHO.unpack_from(body)
    return Echo(
        str(ipaddress.ip_address(src)),
        str(ipaddress.ip_address(dst)),
        kinds[kind],
        identifier,
        sequence,
        bytes(body[_ICMP_ECHO.size :]),
    )


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
