"""The access policy: parse the operator's YAML and compile it into each peer's network map body.

Theory of operation: the policy is the security model's YAML (``docs/management-api.md``, "Policy"): optional
declared ``groups`` and ordered ``acls`` rules, each naming ``src`` and ``dst`` groups (``"*"`` is anyone), a
protocol, optional destination ports (tcp/udp only; ``"22"`` or ``"8000-8100"``) and an action. ``parse_policy``
refuses anything else with a ``PolicyError`` whose detail starts with the line of the offending node (PyYAML node
marks): unknown fields, bad names (the network map's name pattern), ports on icmp/all, duplicate keys, aliases.

``compile_views`` turns (policy, peers) into each peer's *view*: the peers its map lists (itself plus every peer an
``accept`` rule lets it reach or be reached by) and the rules that concern it (its groups on either side), in
policy order. ``map_body`` adds serial and times and yields the body ``wgpy.mesh.sign_network_map`` signs.

Speed: peers with the same group set (a *signature*) have the same view, and a rule's side matches a peer by its
groups only, so the work is per distinct signature, not per peer pair: the groups -> peers index is built once per
call, each signature's relevant rules are found once, and its visible set is the union of the other sides' peer
sets (shared between signatures that hit the same rules). The output itself is the size of all maps together.

Pure: no database, no clock, no I/O. Times come in as arguments.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NoReturn

import yaml

from ..mesh.netmap import FORMAT_VERSION, RESERVED_RULE_NAMES, WILDCARD_GROUP

__all__ = [
    "EMPTY_POLICY",
    "MAX_POLICY_RULES",
    "MAX_POLICY_SIZE",
    "PeerEntry",
    "PeerView",
    "Policy",
    "PolicyError",
    "PolicyRule",
    "canonical_body",
    "compile_view",
    "compile_views",
    "groups_of",
    "map_body",
    "matches",
    "parse_policy",
    "policy_to_mapping",
    "rule_to_map",
    "valid_name",
]

MAX_POLICY_SIZE: Final = 1024 * 1024  # bytes of YAML accepted (contract: policy over 1 MiB is 413)
MAX_POLICY_RULES: Final = 4096  # netmap.MAX_RULES: a map holds at most this many rules
MAX_POLICY_GROUPS: Final = 4096  # declared groups (ours)
MAX_RULE_ITEMS: Final = 1024  # netmap.MAX_LIST_ITEMS: groups or port ranges in one list
MAX_YAML_DEPTH: Final = 8  # nesting the policy format needs is 4 (ours: bounds the walk)

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,63}$")  # netmap._NAME_PATTERN
_ROTATION_KEY_RE: Final = re.compile(r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")  # netmap._ED25519_KEY_PATTERN
_PORT_RE: Final = re.compile(r"^([0-9]{1,5})(?:-([0-9]{1,5}))?$")
_TOP_KEYS: Final = frozenset({"groups", "acls"})
_RULE_KEYS: Final = frozenset({"name", "src", "dst", "proto", "ports", "action"})
_RULE_REQUIRED: Final = frozenset({"name", "src", "dst", "action"})
_PROTOCOLS: Final = ("tcp", "udp", "icmp", "all")
_ACTIONS: Final = ("accept", "deny")

# libyaml's safe loader when PyYAML was built with it (ten times faster on a large policy); same nodes and marks.
_LOADER: Final = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Protocol = Literal["tcp", "udp", "icmp", "all"]
Action = Literal["accept", "deny"]


class PolicyError(ValueError):
    """The policy YAML is refused. ``detail`` is one line, starting with ``line N:`` where a node is to blame."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def valid_name(name: object) -> bool:
    """Whether ``name`` is a group, peer or rule name of the network map format."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One rule in policy order. ``ports`` are inclusive ranges (empty: any port)."""

    name: str
    src: frozenset[str]
    dst: frozenset[str]
    proto: Protocol
    ports: tuple[tuple[int, int], ...]
    action: Action


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy: the declared groups and the rules, in order."""

    groups: tuple[str, ...]
    rules: tuple[PolicyRule, ...]


EMPTY_POLICY: Final = Policy((), ())


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """What the compiler needs of a peer: id, WireGuard public key (base64), address, groups and endpoint."""

    id: str
    public_key: str
    address: str
    groups: frozenset[str]
    endpoint: tuple[str, int] | None = None
    canonical: str | None = field(default=None, compare=False, repr=False)  # cache of its map entry's JSON

    def map_json(self) -> str:
        """This peer's map entry in canonical JSON (computed once per entry object)."""
        text = self.canonical
        if text is None:
            text = _canonical(_peer_to_map(self))
            object.__setattr__(self, "canonical", text)  # a cache of a pure function of the frozen fields
        return text


@dataclass(frozen=True, slots=True)
class PeerView:
    """A peer's map content without serial and times: the peers it sees (itself included) and its rules."""

    peers: tuple[PeerEntry, ...]
    rules: tuple[PolicyRule, ...]
    digest: bytes | None = field(default=None, compare=False, repr=False)
    parts: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    def fingerprint(self) -> bytes:
        """A digest equal for two views exactly when their map bodies (serial and times aside) are equal.

        Computed once per view object (views are shared between peers of one group signature).
        """
        digest = self.digest
        if digest is None:
            acl, peers = self.canonical_parts()
            digest = hashlib.blake2b(f"{acl}\n{peers}".encode("ascii"), digest_size=32).digest()
            object.__setattr__(self, "digest", digest)  # a cache of a pure function of the frozen fields
        return digest

    def canonical_parts(self) -> tuple[str, str]:
        """The canonical JSON of the map's ``acl`` and ``peers`` arrays (computed once per view object)."""
        parts = self.parts
        if parts is None:
            acl = _canonical([rule_to_map(rule) for rule in self.rules])
            peers = "[" + ",".join(peer.map_json() for peer in self.peers) + "]"
            parts = (acl, peers)
            object.__setattr__(self, "parts", parts)
        return parts


# ----------------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------------


def _fail(node: yaml.Node | None, message: str) -> NoReturn:
    if node is not None:
        raise PolicyError(f"line {node.start_mark.line + 1}: {message}")
    raise PolicyError(message)


def _mapping(node: yaml.Node, what: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        _fail(node, f"{what} must be a mapping")
    seen: set[str] = set()
    items: list[tuple[str, yaml.Node, yaml.Node]] = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
            _fail(key_node, f"{what}: keys must be plain strings")
        key = key_node.value
        if key in seen:
            _fail(key_node, f"{what}: {key[:40]!r} is given twice")
        seen.add(key)
        items.append((key, key_node, value_node))
    return items


def _sequence(node: yaml.Node, what: str, limit: int) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        _fail(node, f"{what} must be a list")
    if len(node.value) > limit:
        _fail(node, f"{what} has more than {limit} items")
    return list(node.value)


def _string(node: yaml.Node, what: str) -> str:
    # Plain scalars resolve to int/bool/null tags; "22" quoted or 22 bare are both accepted for ports by the caller.
    if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:str":
        _fail(node, f"{what} must be a string")
    return str(node.value)


def _names(node: yaml.Node, what: str, *, wildcard: bool) -> frozenset[str]:
    items = _sequence(node, what, MAX_RULE_ITEMS)
    if not items:
        _fail(node, f'{what} is empty (use ["*"] for anyone)')
    names: set[str] = set()
    for item in items:
        name = _string(item, what)
        if not (valid_name(name) or (wildcard and name == WILDCARD_GROUP)):
            _fail(item, f"{what}: {name[:40]!r} is not a group name (1-64 of [A-Za-z0-9_.:@-])")
        if name in names:
            _fail(item, f"{what}: {name[:40]!r} is listed twice")
        names.add(name)
    return frozenset(names)


def _port_range(node: yaml.Node) -> tuple[int, int]:
    if not isinstance(node, yaml.ScalarNode) or node.tag not in ("tag:yaml.org,2002:str", "tag:yaml.org,2002:int"):
        _fail(node, 'a port is "N" or "LO-HI"')
    match = _PORT_RE.fullmatch(str(node.value).strip())
    if match is None:
        _fail(node, f'{str(node.value)[:20]!r} is not a port "N" or a range "LO-HI"')
    lo = int(match.group(1))
    hi = int(match.group(2)) if match.group(2) is not None else lo
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        _fail(node, f"{node.value!r}: ports are 0-65535")
    if lo > hi:
        _fail(node, f"{node.value!r}: the range's first port is greater than its last")
    return lo, hi


def _parse_rule(node: yaml.Node, index: int) -> PolicyRule:
    what = f"acls[{index}]"
    fields: dict[str, yaml.Node] = {}
    for key, key_node, value_node in _mapping(node, what):
        if key not in _RULE_KEYS:
            _fail(key_node, f"{what}: unknown field {key[:40]!r} (known: {', '.join(sorted(_RULE_KEYS))})")
        fields[key] = value_node
    missing = _RULE_REQUIRED - set(fields)
    if missing:
        _fail(node, f"{what}: missing {', '.join(sorted(missing))}")
    name = _string(fields["name"], f"{what}.name")
    if not valid_name(name):
        _fail(fields["name"], f"{what}.name: {name[:40]!r} is not a name (1-64 of [A-Za-z0-9_.:@-])")
    if name in RESERVED_RULE_NAMES:
        _fail(fields["name"], f"{what}.name: {name!r} is reserved for the packet filter's counters")
    src = _names(fields["src"], f"{what}.src", wildcard=True)
    dst = _names(fields["dst"], f"{what}.dst", wildcard=True)
    proto = "all"
    if "proto" in fields:
        proto = _string(fields["proto"], f"{what}.proto")
        if proto not in _PROTOCOLS:
            _fail(fields["proto"], f"{what}.proto: {proto[:20]!r} is not one of {', '.join(_PROTOCOLS)}")
    action = _string(fields["action"], f"{what}.action")
    if action not in _ACTIONS:
        _fail(fields["action"], f"{what}.action: {action[:20]!r} is not accept or deny")
    ports: list[tuple[int, int]] = []
    if "ports" in fields:
        port_nodes = _sequence(fields["ports"], f"{what}.ports", MAX_RULE_ITEMS)
        if port_nodes and proto not in ("tcp", "udp"):
            _fail(fields["ports"], f"{what}.ports: ports apply only to tcp and udp rules (proto is {proto})")
        for port_node in port_nodes:
            ports.append(_port_range(port_node))
    return PolicyRule(
        name,
        src,
        dst,
        "tcp" if proto == "tcp" else "udp" if proto == "udp" else "icmp" if proto == "icmp" else "all",
        tuple(ports),
        "accept" if action == "accept" else "deny",
    )


def _check_depth(text: str) -> None:
    """Refuse, from the parser's events and before composing, a document nested deeper than ``_check_shape``
    allows. libyaml's composer (the C loader's) recurses in C once per level without a limit: 100,000 ``[`` in a
    policy overflowed the stack of the thread composing it and took the whole server down (a segfault), where the
    Python loader would raise ``RecursionError``. The parser itself keeps its stack on the heap."""
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_YAML_DEPTH + 1:  # the collection _check_shape would find at depth MAX_YAML_DEPTH + 1
                mark = event.start_mark
                raise PolicyError(f"line {mark.line + 1}: nested too deeply" if mark else "nested too deeply")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _check_shape(node: yaml.Node, depth: int, seen: set[int]) -> None:
    """Refuse aliases (a node reached twice) and deep nesting before walking the document."""
    if id(node) in seen:
        _fail(node, "YAML aliases are not allowed in a policy")
    seen.add(id(node))
    if depth > MAX_YAML_DEPTH:
        _fail(node, "nested too deeply")
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            _check_shape(child, depth + 1, seen)
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _check_shape(key, depth + 1, seen)
            _check_shape(value, depth + 1, seen)


def parse_policy(text: str | bytes) -> Policy:
    """Parse and validate a policy document.

    Raises:
        PolicyError: the document is not a valid policy; the detail names the line.
    """
    if len(text) > MAX_POLICY_SIZE:
        raise PolicyError(f"the policy is larger than {MAX_POLICY_SIZE} bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("the policy is not UTF-8 text") from None
    try:
        _check_depth(text)
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise PolicyError(f"{where}not valid YAML ({exc.problem or exc.context or 'syntax error'})") from None
    except yaml.YAMLError:
        raise PolicyError("not valid YAML") from None
    except RecursionError:
        raise PolicyError("nested too deeply") from None
    if root is None:
        raise PolicyError("the policy is empty")
    _check_shape(root, 0, set())
    groups: list[str] = []
    rules: list[PolicyRule] = []
    has_acls = False
    for key, key_node, value_node in _mapping(root, "the policy"):
        if key not in _TOP_KEYS:
            _fail(key_node, f"unknown field {key[:40]!r} (known: acls, groups)")
        if key == "groups":
            if isinstance(value_node, yaml.ScalarNode) and value_node.tag == "tag:yaml.org,2002:null":
                continue
            for item in _sequence(value_node, "groups", MAX_POLICY_GROUPS):
                name = _string(item, "groups")
                if not valid_name(name):
                    _fail(item, f"groups: {name[:40]!r} is not a group name (1-64 of [A-Za-z0-9_.:@-])")
                if name in groups:
                    _fail(item, f"groups: {name[:40]!r} is listed twice")
                groups.append(name)
        else:
            has_acls = True
            if isinstance(value_node, yaml.ScalarNode) and value_node.tag == "tag:yaml.org,2002:null":
                continue
            names: dict[str, int] = {}
            for index, rule_node in enumerate(_sequence(value_node, "acls", MAX_POLICY_RULES)):
                rule = _parse_rule(rule_node, index)
                if rule.name in names:
                    _fail(
                        rule_node, f"acls[{index}].name: {rule.name!r} is already the name of acls[{names[rule.name]}]"
                    )
                names[rule.name] = index
                rules.append(rule)
    if not has_acls:
        _fail(root, "missing acls (an empty list denies everything)")
    return Policy(tuple(groups), tuple(rules))


# ----------------------------------------------------------------------------------------------------------------
# Compiling
# ----------------------------------------------------------------------------------------------------------------


def matches(side: frozenset[str], groups: frozenset[str]) -> bool:
    """Whether a peer with ``groups`` is on a rule side naming ``side`` (``"*"`` is anyone)."""
    return WILDCARD_GROUP in side or not side.isdisjoint(groups)


def compile_views(policy: Policy, peers: Sequence[PeerEntry]) -> dict[str, PeerView]:
    """Every peer's view (see the module docstring), keyed by peer id.

    Peers are listed in each view in the order of ``peers``; rules in policy order.
    """
    by_group: dict[str, list[int]] = {}
    signatures: dict[frozenset[str], list[int]] = {}
    for index, peer in enumerate(peers):
        signatures.setdefault(peer.groups, []).append(index)
        for group in peer.groups:
            by_group.setdefault(group, []).append(index)
    everyone = frozenset(range(len(peers)))

    side_cache: dict[frozenset[str], frozenset[int]] = {}

    def members(side: frozenset[str]) -> frozenset[int]:
        cached = side_cache.get(side)
        if cached is None:
            if WILDCARD_GROUP in side:
                cached = everyone
            else:
                collected: set[int] = set()
                for group in side:
                    collected.update(by_group.get(group, ()))
                cached = frozenset(collected)
            side_cache[side] = cached
        return cached

    views: dict[str, PeerView] = {}
    union_cache: dict[tuple[int, ...], frozenset[int]] = {}
    for groups, indices in signatures.items():
        rules: list[PolicyRule] = []
        reached: list[int] = []  # indices of the rule sides whose members this signature sees
        for rule_index, rule in enumerate(policy.rules):
            in_src = matches(rule.src, groups)
            in_dst = matches(rule.dst, groups)
            if not (in_src or in_dst):
                continue
            rules.append(rule)
            if rule.action == "accept":
                if in_src:
                    reached.append(2 * rule_index + 1)  # the rule's dst side
                if in_dst:
                    reached.append(2 * rule_index)  # the rule's src side
        key = tuple(reached)
        visible = union_cache.get(key)
        if visible is None:
            collected: set[int] = set()
            for side_index in key:
                rule = policy.rules[side_index // 2]
                collected.update(members(rule.dst if side_index % 2 else rule.src))
            visible = frozenset(collected)
            union_cache[key] = visible
        rules_tuple = tuple(rules)
        shared: PeerView | None = None
        for index in indices:
            if index in visible:
                # Every peer of the signature that sees itself through a rule has the same view: build it once.
                if shared is None:
                    shared = PeerView(tuple(peers[i] for i in sorted(visible)), rules_tuple)
                views[peers[index].id] = shared
            else:
                listed = sorted(visible | {index})
                views[peers[index].id] = PeerView(tuple(peers[i] for i in listed), rules_tuple)
    return views


def compile_view(policy: Policy, peers: Sequence[PeerEntry], peer_id: str) -> PeerView | None:
    """One peer's view, equal to ``compile_views(policy, peers)[peer_id]`` (``None`` if it is not in ``peers``)."""
    target = next((index for index, peer in enumerate(peers) if peer.id == peer_id), None)
    if target is None:
        return None
    groups = peers[target].groups
    rules: list[PolicyRule] = []
    wanted: set[str] = set()
    anyone = False
    for rule in policy.rules:
        in_src = matches(rule.src, groups)
        in_dst = matches(rule.dst, groups)
        if not (in_src or in_dst):
            continue
        rules.append(rule)
        if rule.action == "accept":
            for side in ((rule.dst,) if in_src else ()) + ((rule.src,) if in_dst else ()):
                anyone = anyone or WILDCARD_GROUP in side
                wanted.update(side)
    listed = [
        peer for index, peer in enumerate(peers) if index == target or anyone or not peer.groups.isdisjoint(wanted)
    ]
    return PeerView(tuple(listed), tuple(rules))


def rule_to_map(rule: PolicyRule) -> dict[str, object]:
    """A policy rule in the network map's ``acl`` format."""
    entry: dict[str, object] = {
        "name": rule.name,
        "src_groups": sorted(rule.src),
        "dst_groups": sorted(rule.dst),
        "protocol": rule.proto,
        "action": rule.action,
    }
    if rule.ports:
        entry["ports"] = [lo if lo == hi else [lo, hi] for lo, hi in rule.ports]
    return entry


def _canonical(value: object) -> str:
    # Exactly wgpy.mesh.netmap.canonical_json's form (RFC 8785 for the map format), as text.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _peer_to_map(peer: PeerEntry) -> dict[str, object]:
    network = ipaddress.ip_network(peer.address)  # "100.64.0.5" -> 100.64.0.5/32
    return {
        "public_key": peer.public_key,
        "allowed_ips": [str(network)],
        "endpoint": None if peer.endpoint is None else {"host": peer.endpoint[0], "port": peer.endpoint[1]},
        "groups": sorted(peer.groups),
        "relay": False,
    }


def map_body(
    view: PeerView, *, serial: int, issued_at: int, expires_at: int, rotation: tuple[str, int] | None = None
) -> dict[str, object]:
    """The network map body for ``view`` (what ``wgpy.mesh.sign_network_map`` signs)."""
    body: dict[str, object] = {
        "version": FORMAT_VERSION,
        "serial": serial,
        "issued_at": issued_at,
        "expires_at": expires_at,
        "peers": [_peer_to_map(peer) for peer in view.peers],
        "acl": [rule_to_map(rule) for rule in view.rules],
    }
    if rotation is not None:
        body["key_rotation"] = {"next_key": rotation[0], "until": rotation[1]}
    return body


def canonical_body(
    view: PeerView, *, serial: int, issued_at: int, expires_at: int, rotation: tuple[str, int] | None = None
) -> bytes:
    """``canonical_json(map_body(view, ...))``, spliced from the view's cached parts (one map per peer is cheap even
    when the view is shared by thousands: only the serial differs). ``rotation`` is ``(next_key base64, until)``
    of a signing-key rotation to announce (the map's ``key_rotation``)."""
    acl, peers = view.canonical_parts()
    announced = ""
    if rotation is not None:
        key, until = rotation
        if not _ROTATION_KEY_RE.fullmatch(key):
            raise ValueError("the next signing key is not 32 bytes in base64")
        announced = f'"key_rotation":{{"next_key":"{key}","until":{int(until)}}},'
    return (
        f'{{"acl":{acl},"expires_at":{int(expires_at)},"issued_at":{int(issued_at)},{announced}'
        f'"peers":{peers},"serial":{int(serial)},"version":{FORMAT_VERSION}}}'
    ).encode("ascii")


def groups_of(policy: Policy, peers: Iterable[PeerEntry]) -> list[str]:
    """Every group the policy declares or a peer holds, sorted."""
    names = set(policy.groups)
    for peer in peers:
        names.update(peer.groups)
    return sorted(names)


def policy_to_mapping(policy: Policy) -> Mapping[str, object]:
    """A plain structure of the policy (for JSON answers and tests)."""
    return {
        "groups": list(policy.groups),
        "acls": [rule_to_map(rule) for rule in policy.rules],
    }
