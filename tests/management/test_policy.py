"""Policy parsing (clear errors with the line) and compilation into map bodies (wgpy.management.policy), checked
against a naive pairwise evaluator and against the data plane's own ACL filter built from each compiled map."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import ipv4_packet, private_key

from wgpy import crypto
from wgpy.keys import PublicKey
from wgpy.management.policy import (
    Action,
    PeerEntry,
    Policy,
    PolicyError,
    PolicyRule,
    Protocol,
    canonical_body,
    compile_view,
    compile_views,
    map_body,
    matches,
    parse_policy,
)
from wgpy.mesh import INBOUND, OUTBOUND, PacketFilter, canonical_json, sign_network_map, verify_and_parse

MODEL_POLICY = """\
groups:
  - developers
  - production
acls:
  - name: allow-dev-to-prod
    src: ["developers"]
    dst: ["production"]
    proto: tcp
    ports: ["22", "443", "8000-8100"]
    action: accept
  - name: deny-all-other
    src: ["*"]
    dst: ["*"]
    action: deny
"""

KEYS = [private_key(seed).public_key().to_base64() for seed in range(12)]
SIGNING = crypto.Ed25519PrivateKey.generate()


def _peer(index: int, *groups: str) -> PeerEntry:
    return PeerEntry(f"p{index}", KEYS[index], f"100.64.0.{index + 1}", frozenset(groups))


def test_model_policy_parses() -> None:
    policy = parse_policy(MODEL_POLICY)
    assert policy.groups == ("developers", "production")
    first, second = policy.rules
    assert first == PolicyRule(
        "allow-dev-to-prod",
        frozenset({"developers"}),
        frozenset({"production"}),
        "tcp",
        ((22, 22), (443, 443), (8000, 8100)),
        "accept",
    )
    assert second.proto == "all" and second.ports == () and second.action == "deny"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("acls: []\nextra: 1\n", "line 2: unknown field 'extra'"),
        (
            "acls:\n  - name: r\n    src: [a]\n    dst: [b]\n    action: accept\n    prot: tcp\n",
            "line 6: acls[0]: unknown field 'prot'",
        ),
        (
            "acls:\n  - name: r\n    src: [a]\n    dst: [b]\n    proto: icmp\n    ports: ['22']\n    action: accept\n",
            "line 6: acls[0].ports: ports apply only to tcp and udp",
        ),
        (
            "acls:\n  - name: r\n    src: [a]\n    dst: [b]\n    proto: tcp\n    ports: ['9-3']\n    action: accept\n",
            "line 6: '9-3'",
        ),
        (
            "acls:\n  - name: r\n    src: [a]\n    dst: [b]\n    proto: tcp\n    ports: ['70000']\n    action: accept\n",
            "ports are 0-65535",
        ),
        (
            "acls:\n  - name: r\n    src: ['bad group']\n    dst: [b]\n    action: accept\n",
            "line 3: acls[0].src: 'bad group' is not a group name",
        ),
        (
            "acls:\n  - name: r\n    src: [a]\n    dst: [b]\n    action: allow\n",
            "line 5: acls[0].action: 'allow' is not accept or deny",
        ),
        ("acls:\n  - name: r\n    src: [a]\n    action: accept\n", "line 2: acls[0]: missing dst"),
        (
            "acls:\n  - name: r\n    src: [a]\n    dst: [b]\n    action: accept\n  - name: r\n    src: [a]\n    dst: [b]\n    action: deny\n",
            "line 6: acls[1].name: 'r' is already",
        ),
        (
            "acls:\n  - name: default-deny\n    src: [a]\n    dst: [b]\n    action: deny\n",
            "line 2: acls[0].name: 'default-deny' is reserved",
        ),
        ("acls: [\n", "line 2: not valid YAML"),
        ("acls: []\nacls: []\n", "line 2: the policy: 'acls' is given twice"),
        ("x: &a [1]\ny: *a\nacls: []\n", "aliases are not allowed"),
        ("groups: [a]\n", "line 1: missing acls"),
        ("", "the policy is empty"),
        ("- 1\n", "line 1: the policy must be a mapping"),
        ("acls:\n  - name: r\n    src: []\n    dst: [b]\n    action: accept\n", "line 3: acls[0].src is empty"),
    ],
)
def test_malformed_policy_names_the_line(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert expected in caught.value.detail
    assert "\n" not in caught.value.detail


def test_oversized_and_non_utf8_policies_are_refused() -> None:
    with pytest.raises(PolicyError, match="larger than"):
        parse_policy("#" * (1024 * 1024 + 1))
    with pytest.raises(PolicyError, match="UTF-8"):
        parse_policy(b"acls: []\n\xff")


def test_model_example_compiles_to_valid_signed_maps() -> None:
    policy = parse_policy(MODEL_POLICY)
    laptop = _peer(0, "developers", "engineering")
    server = _peer(1, "infrastructure", "production")
    printer = _peer(2, "office")
    views = compile_views(policy, [laptop, server, printer])
    assert [p.id for p in views["p0"].peers] == ["p0", "p1"]
    assert [p.id for p in views["p1"].peers] == ["p0", "p1"]
    assert [p.id for p in views["p2"].peers] == ["p2"]  # only a deny rule concerns it
    body = map_body(views["p0"], serial=5, issued_at=1000, expires_at=1900)
    netmap = verify_and_parse(sign_network_map(body, SIGNING), SIGNING.public_key(), 1000.0)
    assert netmap.serial == 5
    assert [rule.name for rule in netmap.rules] == ["allow-dev-to-prod", "deny-all-other"]
    assert netmap.rules[0].ports == ((22, 22), (443, 443), (8000, 8100))
    assert body["peers"][1] == {  # type: ignore[index]
        "public_key": KEYS[1],
        "allowed_ips": ["100.64.0.2/32"],
        "endpoint": None,
        "groups": ["infrastructure", "production"],
        "relay": False,
    }


def test_compile_scales_by_signature() -> None:
    policy = Policy((), (PolicyRule("all", frozenset("*"), frozenset("*"), "all", (), "accept"),))
    peers = [
        PeerEntry(
            f"p{i}", PublicKey(i.to_bytes(32, "little")).to_base64(), f"100.64.{i >> 8}.{i & 255}", frozenset({"g"})
        )
        for i in range(2, 2002)
    ]
    views = compile_views(policy, peers)
    assert len(views) == 2000
    assert len({id(view) for view in views.values()}) == 1  # one shared view for one signature
    assert len(views["p2"].peers) == 2000


# ----------------------------------------------------------------------------------------------------------------
# Property: the compiler against a naive pairwise evaluator, and the data plane's filter against the naive verdict
# ----------------------------------------------------------------------------------------------------------------

GROUPS = ["a", "b", "c", "d"]
ACTIONS: list[Action] = ["accept", "deny"]
_group_sets = st.frozensets(st.sampled_from(GROUPS), max_size=3)
_sides = st.one_of(st.just(frozenset({"*"})), st.frozensets(st.sampled_from(GROUPS), min_size=1, max_size=2))
_ports = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10)).map(lambda t: (t[0], t[0] + t[1])), max_size=2).map(
    tuple
)


@st.composite
def _rules(draw: st.DrawFn) -> tuple[PolicyRule, ...]:
    count = draw(st.integers(0, 6))
    rules = []
    for index in range(count):
        proto: Protocol = draw(st.sampled_from(["tcp", "udp", "icmp", "all"]))
        ports = draw(_ports) if proto in ("tcp", "udp") else ()
        rules.append(
            PolicyRule(f"r{index}", draw(_sides), draw(_sides), proto, ports, draw(st.sampled_from(["accept", "deny"])))
        )
    return tuple(rules)


def _naive_connected(policy: Policy, a: PeerEntry, b: PeerEntry) -> bool:
    return any(
        rule.action == "accept"
        and (
            (matches(rule.src, a.groups) and matches(rule.dst, b.groups))
            or (matches(rule.src, b.groups) and matches(rule.dst, a.groups))
        )
        for rule in policy.rules
    )


def _naive_verdict(policy: Policy, src: PeerEntry, dst: PeerEntry, proto: str, port: int) -> bool:
    for rule in policy.rules:
        if not (matches(rule.src, src.groups) and matches(rule.dst, dst.groups)):
            continue
        if rule.proto not in ("all", proto):
            continue
        if rule.ports and not any(lo <= port <= hi for lo, hi in rule.ports):
            continue
        return rule.action == "accept"
    return False


def _packet(src: str, dst: str, proto: str, port: int) -> bytes:
    if proto == "tcp":
        return ipv4_packet(src, dst, struct.pack("!HHIIBBHHH", 40000, port, 0, 0, 0x50, 0x02, 1024, 0, 0), protocol=6)
    if proto == "udp":
        return ipv4_packet(src, dst, struct.pack("!HHHH", 40000, port, 8, 0), protocol=17)
    return ipv4_packet(src, dst, struct.pack("!BBHHH", 8, 0, 0, 1, 1), protocol=1)


@settings(max_examples=150, deadline=None)
@given(rules=_rules(), group_sets=st.lists(_group_sets, min_size=1, max_size=6), data=st.data())
def test_compiled_maps_agree_with_the_naive_evaluator(
    rules: tuple[PolicyRule, ...], group_sets: list[frozenset[str]], data: st.DataObject
) -> None:
    policy = Policy((), rules)
    peers = [_peer(index, *groups) for index, groups in enumerate(group_sets)]
    views = compile_views(policy, peers)
    for a in peers:
        assert compile_view(policy, peers, a.id) == views[a.id]
        listed = {peer.id for peer in views[a.id].peers}
        expected = {b.id for b in peers if b is a or _naive_connected(policy, a, b)}
        assert listed == expected
        body = map_body(views[a.id], serial=1, issued_at=0, expires_at=900)
        assert canonical_body(views[a.id], serial=1, issued_at=0, expires_at=900) == canonical_json(body)
        netmap = verify_and_parse(sign_network_map(body, SIGNING), SIGNING.public_key(), 1.0)
        packet_filter = PacketFilter()
        packet_filter.load(netmap)
        for b in peers:
            if b is a or b.id not in listed:
                continue
            key = PublicKey.from_base64(b.public_key)
            proto = data.draw(st.sampled_from(["tcp", "udp", "icmp"]))
            port = data.draw(st.integers(0, 55))
            out = packet_filter.decide(_packet(a.address, b.address, proto, port), OUTBOUND, key)
            assert out.accept == _naive_verdict(policy, a, b, proto, port), (out, a, b, proto, port)
            into = packet_filter.decide(_packet(b.address, a.address, proto, port), INBOUND, key)
            assert into.accept == _naive_verdict(policy, b, a, proto, port), (into, a, b, proto, port)


@settings(max_examples=50, deadline=None)
@given(rules=_rules())
def test_yaml_round_trip(rules: tuple[PolicyRule, ...]) -> None:
    lines = ["acls:"] if rules else ["acls: []"]
    for rule in rules:
        lines.append(f"  - name: {rule.name}")
        lines.append(f"    src: {sorted(rule.src)!r}")
        lines.append(f"    dst: {sorted(rule.dst)!r}")
        lines.append(f"    proto: {rule.proto}")
        if rule.ports:
            lines.append(f"    ports: {[f'{lo}-{hi}' if lo != hi else str(lo) for lo, hi in rule.ports]!r}")
        lines.append(f"    action: {rule.action}")
    assert parse_policy("\n".join(lines) + "\n").rules == rules
