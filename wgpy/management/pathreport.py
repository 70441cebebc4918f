"""The agent's path report (``{"type": "paths"}`` on the map stream): which of its peers it reaches directly and
which through the relay. Pure: parsing and validation against the reporting peer's own map, and the summary the
API's peer listing shows; no I/O, no clock.

Theory of operation: an agent reports, on its authenticated stream, the state of its path to each peer of its map
(``wgpy.nat.paths.PeerPaths``: ``direct``, ``relayed``, ``checking``). The server believes a report only about
itself: it is the agent's view, shown to admins, never used for a decision. So it is bounded (``MAX_PATH_PEERS``
entries, and the stream's frame size), an entry naming a peer that is not in the reporter's map or a state that
is not one of ``PATH_STATES`` is dropped, and fields other than ``type`` and ``paths`` are ignored; each of those
is counted (``PathReport.dropped``, ``ignored_fields``) so that a misbehaving agent shows in the server's numbers.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["MAX_PATH_PEERS", "PATH_STATES", "PathReport", "PathReportError", "parse_path_report", "summary"]

MAX_PATH_PEERS: Final = 1000  # peers one report may name (ours; a larger frame is refused whole)
PATH_STATES: Final = frozenset({"direct", "relayed", "checking"})  # wgpy.nat.paths.PathState values, less idle
_KEY_SIZE: Final = 44  # characters of a base64 WireGuard public key


class PathReportError(ValueError):
    """The frame is not a path report at all (``paths`` missing, not an object, or too many entries)."""


@dataclass(frozen=True, slots=True)
class PathReport:
    """What was kept of one report: ``paths`` (peer public key -> state) and what was dropped or ignored."""

    paths: Mapping[str, str]
    dropped: int  # entries naming a peer outside the reporter's map, or an unknown state
    ignored_fields: int  # top-level fields other than type and paths


def parse_path_report(data: Mapping[str, object], allowed: Collection[str], own: str | None = None) -> PathReport:
    """Validate ``data`` (the decoded frame) against ``allowed``, the public keys in the reporter's map, less its
    own key ``own`` (a map lists its own peer too).

    Raises:
        PathReportError: ``paths`` is missing, is not a JSON object, or names more than ``MAX_PATH_PEERS`` peers.
    """
    raw = data.get("paths")
    if not isinstance(raw, dict):
        raise PathReportError("a paths frame carries a paths object")
    if len(raw) > MAX_PATH_PEERS:
        raise PathReportError(f"a paths frame names at most {MAX_PATH_PEERS} peers")
    kept: dict[str, str] = {}
    dropped = 0
    for key, state in raw.items():
        unknown = not isinstance(key, str) or len(key) != _KEY_SIZE or key == own or key not in allowed
        if unknown or state not in PATH_STATES:
            dropped += 1
            continue
        kept[key] = str(state)
    ignored = sum(1 for name in data if name not in ("type", "paths"))
    return PathReport(kept, dropped, ignored)


def summary(paths: Mapping[str, str] | None) -> str | None:
    """One word for a peer's paths: ``direct`` or ``relayed`` when all agree, ``mixed``, ``checking``; or ``None``
    when the peer reported nothing (offline, an old agent, or no peer it has talked to yet)."""
    if not paths:
        return None
    states = set(paths.values())
    if states == {"checking"}:
        return "checking"
    states.discard("checking")
    return states.pop() if len(states) == 1 else "mixed"
