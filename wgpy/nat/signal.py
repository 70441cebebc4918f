"""The candidate exchange's frames on the management stream (pure: parsing and building, no I/O).

agent -> server ``{"type": "candidates", "peer": B64 public key, "candidates": [Candidate...]}``: my candidates,
for that peer. server -> agent ``{"type": "candidates", "peer": B64 public key of the sender, "candidates": [...],
"announced": [IP...]}``: the sender's candidates, forwarded unchanged, with the IPs the server vouches for (the
address it saw the sender's stream come from, the sender's endpoint host, the TURN servers). The agent admits only
candidates on those IPs (``candidates.admit``). The server forwards only between two peers that see each other in
their maps, and learns no key material: candidates are transport addresses.

agent -> server ``{"type": "turn"}``; server -> agent ``{"type": "turn", "servers": [{"host", "port"}],
"username", "password", "expires_at"}``: fresh TURN credentials for this peer (``credentials.py``), asked again
before ``expires_at``; all three are null when the server has no TURN secret (the servers are then for STUN).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from .candidates import Candidate, CandidateError, parse_candidates
from .credentials import TurnCredentials

__all__ = ["NAT_FRAMES", "CandidatesFrame", "forwarded_candidates", "parse_candidates_frame", "turn_frame"]


NAT_FRAMES: Final = frozenset({"candidates", "turn"})  # the stream frame types of this module


@dataclass(frozen=True, slots=True)
class CandidatesFrame:
    peer: str  # base64 public key of the other peer
    candidates: tuple[Candidate, ...]


def _key(raw: object) -> str:
    if not isinstance(raw, str) or len(raw) != 44:
        raise CandidateError("peer: a base64 public key")
    try:
        if len(base64.b64decode(raw, validate=True)) != 32:
            raise CandidateError("peer: a base64 public key")
    except binascii.Error:
        raise CandidateError("peer: a base64 public key") from None
    return raw


def parse_candidates_frame(data: Mapping[str, object]) -> CandidatesFrame:
    """An agent's ``candidates`` frame. Raises ``CandidateError`` (the server closes the stream, 1008)."""
    if set(data) != {"type", "peer", "candidates"} or data["type"] != "candidates":
        raise CandidateError("a candidates frame has type, peer and candidates")
    return CandidatesFrame(_key(data["peer"]), parse_candidates(data["candidates"]))


def forwarded_candidates(sender: str, candidates: Sequence[Candidate], announced: Iterable[str]) -> dict[str, object]:
    return {
        "type": "candidates",
        "peer": sender,
        "candidates": [c.to_json() for c in candidates],
        "announced": sorted(set(announced)),
    }


def turn_frame(credentials: TurnCredentials | None, servers: Sequence[tuple[str, int]]) -> dict[str, object]:
    """The answer to ``{"type": "turn"}``; without credentials (no TURN secret configured) the servers are for STUN."""
    return {
        "type": "turn",
        "servers": [{"host": h, "port": p} for h, p in servers],
        "username": credentials.username if credentials else None,
        "password": credentials.password if credentials else None,
        "expires_at": credentials.expires_at if credentials else None,
    }
