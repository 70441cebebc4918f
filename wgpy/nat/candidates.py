"""Candidates (host, server-reflexive, relayed) and what a peer's candidates may make us send to.

Theory of operation: a candidate is a transport address where a peer may be reachable (RFC 8445 §5.1.1 kinds,
without ICE's priorities: WireGuard initiations are the connectivity checks). Candidates travel as JSON in the
management stream (``signal.py``) and are remote input: ``admit`` keeps only those whose IP the management server
itself announced for that peer (the address it saw the peer's stream come from, the peer's endpoint in the map, the
TURN servers it hands out), so a peer cannot make us send initiations to a third party (a reflection lever).
Everything here is pure.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "MAX_CANDIDATES",
    "Candidate",
    "CandidateError",
    "CandidateKind",
    "admit",
    "parse_candidates",
    "usable_address",
]

MAX_CANDIDATES: Final = 8  # candidates per peer and message (ours: host + srflx per STUN server + relayed)


class CandidateKind(enum.Enum):
    HOST = "host"
    SERVER_REFLEXIVE = "srflx"
    RELAYED = "relay"


class CandidateError(ValueError):
    """A candidate list that is not well formed (remote input: the caller drops the frame)."""


@dataclass(frozen=True, slots=True)
class Candidate:
    kind: CandidateKind
    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind.value, "host": self.host, "port": self.port}

    def __str__(self) -> str:
        return f"{self.kind.value} {self.host}:{self.port}"


def usable_address(host: str) -> bool:
    """An IP address a peer can be reached at: not loopback, multicast or unspecified."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not (ip.is_multicast or ip.is_unspecified or ip.is_loopback)


def parse_candidates(raw: object) -> tuple[Candidate, ...]:
    """Candidates from their JSON form. Raises ``CandidateError`` for anything malformed."""
    if not isinstance(raw, list) or len(raw) > MAX_CANDIDATES:
        raise CandidateError(f"candidates: a list of at most {MAX_CANDIDATES}")
    out: list[Candidate] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) != {"kind", "host", "port"}:
            raise CandidateError(f"candidates[{index}]: an object with kind, host, port")
        kind, host, port = item["kind"], item["host"], item["port"]
        try:
            parsed_kind = CandidateKind(kind)
        except ValueError:
            raise CandidateError(f"candidates[{index}].kind: not host, srflx or relay") from None
        if not isinstance(host, str) or len(host) > 45:
            raise CandidateError(f"candidates[{index}].host: not an IP address")
        if not usable_address(host):
            raise CandidateError(f"candidates[{index}].host: {host!r} is no address a peer can have")
        ip = ipaddress.ip_address(host)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise CandidateError(f"candidates[{index}].port: not a port")
        candidate = Candidate(parsed_kind, ip.compressed, port)
        if candidate not in out:
            out.append(candidate)
    return tuple(out)


def admit(candidates: Iterable[Candidate], announced: Mapping[str, object] | Iterable[str]) -> tuple[Candidate, ...]:
    """The candidates whose IP is one the management server announced for this peer; the rest are refused."""
    allowed = {ipaddress.ip_address(host).compressed for host in announced}
    return tuple(c for c in candidates if c.host in allowed)
