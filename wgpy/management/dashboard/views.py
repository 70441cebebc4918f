"""What the dashboard's pages show, computed from the API's own answers: pure functions, no I/O, no clock.

Theory of operation: the routes (``app.py``) fetch ``PeerInfo``/``SetupKeyInfo``/``AuditEvent`` lists through the
API's handlers and hand them here to be searched, sorted and laid out; the network view's drawing is computed here
from the parsed policy (``policy.py``) so that it can be tested without a browser.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..policy import Policy, PolicyRule

__all__ = [
    "PEER_SORTS",
    "Edge",
    "Graph",
    "Node",
    "error_line",
    "filter_peers",
    "format_ts",
    "network_graph",
    "path_detail",
    "peer_state",
    "ports_text",
    "sort_peers",
]

PeerInfo = Mapping[str, object]

PEER_SORTS: Final = ("name", "address", "groups", "state", "online", "path", "last_seen", "created_at")
_LINE_RE: Final = re.compile(r"^line (\d+):")


def peer_state(peer: PeerInfo) -> str:
    """``revoked``, ``pending`` (awaiting approval) or ``approved``."""
    if peer.get("revoked"):
        return "revoked"
    return "approved" if peer.get("approved") else "pending"


def path_detail(peer: PeerInfo, names: Mapping[str, str]) -> str:
    """The peer's reported paths in words, ``direct to web; relayed to db`` (names by public key; a peer not listed
    is shown by the start of its key); empty when it reported none."""
    paths = peer.get("paths")
    if not isinstance(paths, dict) or not paths:
        return ""
    by_state: dict[str, list[str]] = {}
    for key, state in paths.items():
        by_state.setdefault(str(state), []).append(names.get(str(key), str(key)[:8] + "…"))
    return "; ".join(f"{state} to {', '.join(sorted(who))}" for state, who in sorted(by_state.items()))


def filter_peers(peers: Sequence[PeerInfo], query: str) -> list[PeerInfo]:
    """The peers whose name, address, public key or a group contains ``query`` (case-insensitive)."""
    needle = query.strip().lower()
    if not needle:
        return list(peers)
    result = []
    for peer in peers:
        groups = peer.get("groups")
        haystack = [str(peer.get("name", "")), str(peer.get("address", "")), str(peer.get("public_key", ""))]
        if isinstance(groups, list):
            haystack.extend(str(group) for group in groups)
        if any(needle in text.lower() for text in haystack):
            result.append(peer)
    return result


def _address_key(value: object) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(value).split("."))
    except ValueError:
        return (1 << 16,)


def sort_peers(peers: Sequence[PeerInfo], key: str, descending: bool) -> list[PeerInfo]:
    """Sort by one of ``PEER_SORTS`` (unknown keys sort by name); ties keep the name order."""
    by_name = sorted(peers, key=lambda peer: str(peer.get("name", "")).lower())
    if key == "address":
        return sorted(by_name, key=lambda peer: _address_key(peer.get("address")), reverse=descending)
    if key == "groups":
        return sorted(by_name, key=_groups_key, reverse=descending)
    if key == "state":
        return sorted(by_name, key=peer_state, reverse=descending)
    if key == "online":
        return sorted(by_name, key=lambda peer: bool(peer.get("online")), reverse=descending)
    if key == "path":
        return sorted(by_name, key=lambda peer: str(peer.get("path") or ""), reverse=descending)
    if key in ("last_seen", "created_at"):
        return sorted(by_name, key=lambda peer: _number(peer.get(key)), reverse=descending)
    return list(reversed(by_name)) if descending else by_name


def _groups_key(peer: PeerInfo) -> str:
    groups = peer.get("groups")
    return ",".join(str(group) for group in groups) if isinstance(groups, list) else ""


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def format_ts(value: object) -> str:
    """Unix seconds as ``2026-12-02 01:47:26 UTC`` (empty for a missing value)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    return datetime.datetime.fromtimestamp(value, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def error_line(detail: str) -> int | None:
    """The line number a policy error names (``line 7: ...``), if it names one."""
    match = _LINE_RE.match(detail)
    return int(match.group(1)) if match else None


def ports_text(rule: PolicyRule) -> str:
    if not rule.ports:
        return "any"
    return ", ".join(str(low) if low == high else f"{low}-{high}" for low, high in rule.ports)


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    x: float
    y: float
    peers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Edge:
    src: str
    dst: str
    rules: tuple[str, ...]
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True, slots=True)
class Graph:
    """Groups on a circle and an arrow for each (source group, destination group) some accept rule allows."""

    size: int
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    reach: Mapping[str, tuple[str, ...]]  # group -> the groups it may reach (accept rules, in name order)


def _side(side: frozenset[str], groups: Sequence[str]) -> list[str]:
    return list(groups) if "*" in side else sorted(side & set(groups))


def network_graph(policy: Policy, peers: Sequence[PeerInfo], *, size: int = 480) -> Graph:
    """Lay out the groups of ``policy`` and of ``peers`` and the accept rules between them."""
    members: dict[str, list[str]] = {}
    for name in policy.groups:
        members.setdefault(name, [])
    for rule in policy.rules:
        for name in rule.src | rule.dst:
            if name != "*":
                members.setdefault(name, [])
    for peer in peers:
        if peer.get("revoked"):
            continue
        groups = peer.get("groups")
        for group in groups if isinstance(groups, list) else []:
            members.setdefault(str(group), []).append(str(peer.get("name", "")))
    names = sorted(members)
    centre, radius = size / 2, size / 2 - 90
    positions: dict[str, tuple[float, float]] = {}
    for index, name in enumerate(names):
        angle = 2 * math.pi * index / max(len(names), 1) - math.pi / 2
        positions[name] = (round(centre + radius * math.cos(angle), 1), round(centre + radius * math.sin(angle), 1))
    nodes = tuple(Node(name, *positions[name], tuple(sorted(members[name]))) for name in names)
    pairs: dict[tuple[str, str], list[str]] = {}
    for rule in policy.rules:
        if rule.action != "accept":
            continue
        for src in _side(rule.src, names):
            for dst in _side(rule.dst, names):
                pairs.setdefault((src, dst), []).append(rule.name)
    edges = []
    for (src, dst), rules in sorted(pairs.items()):
        (x1, y1), (x2, y2) = positions[src], positions[dst]
        length = math.hypot(x2 - x1, y2 - y1)
        if length == 0:
            edges.append(Edge(src, dst, tuple(rules), x1, y1, x2, y2))
            continue
        # Stop the arrow at the node's edge (radius 44) and offset it sideways so a->b and b->a do not overlap.
        ux, uy = (x2 - x1) / length, (y2 - y1) / length
        ox, oy = -uy * 6, ux * 6
        edges.append(
            Edge(
                src,
                dst,
                tuple(rules),
                round(x1 + ux * 46 + ox, 1),
                round(y1 + uy * 46 + oy, 1),
                round(x2 - ux * 50 + ox, 1),
                round(y2 - uy * 50 + oy, 1),
            )
        )
    reach: dict[str, list[str]] = {name: [] for name in names}
    for src, dst in sorted(pairs):
        reach[src].append(dst)
    return Graph(size, nodes, tuple(edges), {name: tuple(targets) for name, targets in reach.items()})
