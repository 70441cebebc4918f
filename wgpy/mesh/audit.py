"""The mesh audit log: one JSON object per line, written through ``logging``.

Theory of operation: ``AuditLog`` turns the security-relevant moments of the mesh into single-line JSON records on
the ``wgpy.audit`` logger at INFO. Where the lines go (a file, journald, a SIEM) is the embedding program's choice
of ``logging`` handlers; this module does no I/O of its own and reads no clock. Each record is passed both as the
message text (``"%s"`` of the JSON line) and as ``extra={"audit": fields}`` for structured handlers.

Events and their fields (every record also has ``"event"`` and ``"time"``, Unix seconds with millisecond precision):

* ``connection``: ``direction`` (``inbound``/``outbound``), ``peer``, ``src``, ``dst``, ``proto`` (``tcp``, ``udp``,
  ``icmp`` or the IP protocol number), ``sport``, ``dport`` (``null`` when the protocol has no ports), ``rule``,
  ``action`` (``accept``/``deny``). Written once per new tracked flow, and for each packet denied or accepted without
  creating a flow (subject to the rate limit below).
* ``handshake``: ``peer``, ``initiator`` (bool).
* ``peer_added``: ``peer``, ``allowed_ips``, ``groups``, ``endpoint``. ``peer_removed``: ``peer``.
* ``map_applied``: ``serial``, ``issued_at``, ``expires_at``, ``added``, ``removed``, ``changed`` (counts).
* ``map_rejected``: ``reason``, ``detail``, ``serial`` (``null`` unless the signature verified).

Peers appear as their base64 *public* keys, which are not secret. No method takes a private or preshared key, so
none can reach a line; ``tests/mesh/test_mesh_audit.py`` checks the log of a whole scenario for them.

Lines that remote input can cause at will (denied or stateless packets, rejected maps) pass through a token bucket
(``rate`` per second, ``burst`` deep, driven by ``now``) so that a flood cannot flood the log; the next line that is
written carries ``"suppressed": n``. New accepted flows are not limited: the connection tracking table bounds them.

``now`` is the device's monotonic clock. ``set_clock(now_wall, now)`` records the offset to the wall clock that the
``time`` field uses; the ``MeshController`` calls it whenever it is given both clocks.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from typing import Final

from ..events import Event, HandshakeCompleted, endpoint_is_ipv6
from ..keys import PublicKey

__all__ = ["AUDIT_BURST", "AUDIT_LOGGER_NAME", "AUDIT_RATE", "AuditLog", "protocol_name"]

AUDIT_LOGGER_NAME: Final = "wgpy.audit"
AUDIT_RATE: Final = 20.0  # rate-limited lines per second (ours)
AUDIT_BURST: Final = 100  # rate-limited lines written back to back before the limit bites (ours)

_PROTOCOL_NAMES: Final = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp"}  # IANA protocol numbers; 58 is ICMPv6


def protocol_name(proto: int) -> str | int:
    """``tcp``, ``udp`` or ``icmp`` (ICMPv6 included), else the IANA protocol number."""
    return _PROTOCOL_NAMES.get(proto, proto)


def _address(raw: bytes) -> str:
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return raw.hex()


class AuditLog:
    """Writes audit records as JSON lines to a ``logging.Logger``."""

    __slots__ = ("_last_refill", "_logger", "_suppressed", "_tokens", "_wall_offset", "burst", "rate")

    def __init__(
        self, logger: logging.Logger | None = None, *, rate: float = AUDIT_RATE, burst: int = AUDIT_BURST
    ) -> None:
        self._logger = logger if logger is not None else logging.getLogger(AUDIT_LOGGER_NAME)
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last_refill: float | None = None
        self._suppressed = 0
        self._wall_offset = 0.0

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def set_clock(self, now_wall: float, now: float) -> None:
        """Record that monotonic ``now`` is wall-clock ``now_wall`` (Unix seconds)."""
        self._wall_offset = now_wall - now

    def wall_time(self, now: float) -> float:
        """The wall-clock time of monotonic ``now``, from the last ``set_clock``."""
        return now + self._wall_offset

    @property
    def enabled(self) -> bool:
        """Whether records would be written at all (lets the packet path skip formatting)."""
        return self._logger.isEnabledFor(logging.INFO)

    # --- events -------------------------------------------------------------------------------------------------

    def connection(
        self,
        now: float,
        *,
        direction: str,
        peer: PublicKey | None,
        src: bytes,
        dst: bytes,
        proto: int,
        sport: int | None,
        dport: int | None,
        rule: str,
        action: str,
        limited: bool,
    ) -> None:
        """A new connection (flow) was accepted or a packet without a flow was decided.

        Args:
            limited: Pass the line through the rate limit (denials and stateless accepts).
        """
        if not self.enabled or (limited and not self._take(now)):
            return
        self._emit(
            "connection",
            now,
            {
                "direction": direction,
                "peer": peer.to_base64() if peer is not None else None,
                "src": _address(src),
                "dst": _address(dst),
                "proto": protocol_name(proto),
                "sport": sport,
                "dport": dport,
                "rule": rule,
                "action": action,
            },
        )

    def handshake(self, now: float, peer: PublicKey, *, is_initiator: bool) -> None:
        """A handshake with ``peer`` completed."""
        self._emit("handshake", now, {"peer": peer.to_base64(), "initiator": is_initiator})

    def peer_added(
        self,
        now: float,
        peer: PublicKey,
        allowed_ips: Iterable[object],
        groups: Iterable[str],
        endpoint: tuple[str, int] | None,
    ) -> None:
        self._emit(
            "peer_added",
            now,
            {
                "peer": peer.to_base64(),
                "allowed_ips": [str(network) for network in allowed_ips],
                "groups": sorted(groups),
                "endpoint": _endpoint(endpoint),
            },
        )

    def peer_removed(self, now: float, peer: PublicKey) -> None:
        self._emit("peer_removed", now, {"peer": peer.to_base64()})

    def map_applied(
        self, now: float, *, serial: int, issued_at: int, expires_at: int, added: int, removed: int, changed: int
    ) -> None:
        self._emit(
            "map_applied",
            now,
            {
                "serial": serial,
                "issued_at": issued_at,
                "expires_at": expires_at,
                "added": added,
                "removed": removed,
                "changed": changed,
            },
        )

    def map_rejected(self, now: float, *, reason: str, detail: str, serial: int | None) -> None:
        if not self.enabled or not self._take(now):
            return
        self._emit("map_rejected", now, {"reason": reason, "detail": detail, "serial": serial})

    def observe(self, event: Event, now: float) -> None:
        """Feed a device event (``Device.next_event()``); handshakes are audited, other events are not.

        Peer additions and removals are audited by the ``MeshController`` when it applies a map, so a
        ``PeerRemoved`` event is not written a second time here.
        """
        if isinstance(event, HandshakeCompleted):
            self.handshake(now, event.peer, is_initiator=event.is_initiator)

    # --- internals ------------------------------------------------------------------------------------------------

    def _take(self, now: float) -> bool:
        """Token bucket: may one rate-limited line be written at ``now``?"""
        last = self._last_refill
        if last is not None and now > last:
            self._tokens = min(float(self.burst), self._tokens + (now - last) * self.rate)
        if last is None or now > last:
            self._last_refill = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self._suppressed += 1
        return False

    def _emit(self, event: str, now: float, fields: dict[str, object]) -> None:
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        record: dict[str, object] = {"event": event, "time": round(self.wall_time(now), 3)}
        record.update(fields)
        if self._suppressed:
            record["suppressed"] = self._suppressed
            self._suppressed = 0
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        logger.info("%s", line, extra={"audit": record})


def _endpoint(endpoint: tuple[str, int] | None) -> str | None:
    """``host:port``, with an IPv6 host in brackets (RFC 3986 §3.2.2), as wg(8) prints endpoints."""
    if endpoint is None:
        return None
    host, port = endpoint
    return f"[{host}]:{port}" if endpoint_is_ipv6(endpoint) else f"{host}:{port}"
