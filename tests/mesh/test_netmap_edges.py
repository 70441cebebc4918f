"""Edges of network-map validation that the other map tests leave open: every bound met exactly, once inside and
once outside.

Expected values come from sources outside ``wgpy/mesh/netmap.py``: the README's "Mesh mode" section (the
``issued_at - 60 s <= now`` and ``now < expires_at`` checks, "integers below 2^53", ``lo <= hi`` port ranges,
documents "up to 16 MiB"), RFC 7493 §2.2 (I-JSON integers: magnitude at most 2^53 - 1), RFC 768 / RFC 9293 §3.1
(ports are 16-bit fields: 0 to 65535), the IANA port registry (port 0 is reserved, no endpoint listens on it),
RFC 4291 §2.3 (a prefix is written ``address/prefix-length``, with no zone index; RFC 4007 §6: a zone index only
means something on the node that wrote it) and JSON Schema draft 2020-12 validation §6.4.1 (``maxItems``: an array
is valid if its size is *less than, or equal to*, the value), applied to the published ``NETWORK_MAP_SCHEMA``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.helpers import private_key

from wgpy.mesh import (
    NETWORK_MAP_SCHEMA,
    MapRejected,
    RejectReason,
    parse_network_map,
    sign_network_map,
    verify_and_parse,
)

NOW = 1_700_000_000
MANAGEMENT = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
KEY_A = private_key(61).public_key()
KEY_B = private_key(62).public_key()
MIB = 1024 * 1024

Body = dict[str, Any]


def make_body(**changes: Any) -> Body:
    body: Body = {
        "version": 1,
        "serial": 5,
        "issued_at": NOW - 10,
        "expires_at": NOW + 3600,
        "peers": [
            {
                "public_key": KEY_A.to_base64(),
                "allowed_ips": ["10.0.0.1/32"],
                "endpoint": None,
                "groups": ["developers"],
                "relay": False,
            },
            {
                "public_key": KEY_B.to_base64(),
                "allowed_ips": ["10.0.1.1/32"],
                "endpoint": {"host": "192.0.2.7", "port": 51820},
                "groups": ["production"],
                "relay": False,
            },
        ],
        "acl": [
            {
                "name": "dev-ssh",
                "src_groups": ["developers"],
                "dst_groups": ["production"],
                "protocol": "tcp",
                "ports": [22],
                "action": "accept",
            }
        ],
    }
    body.update(changes)
    return body


def verify(body: Body, now: float = NOW, current_serial: int | None = None) -> Any:
    document = sign_network_map(body, MANAGEMENT, validate=False)
    return verify_and_parse(document, MANAGEMENT.public_key(), now, current_serial)


def rejected(body: Body, reason: RejectReason, now: float = NOW) -> MapRejected:
    with pytest.raises(MapRejected) as caught:
        verify(body, now)
    assert caught.value.reason is reason, caught.value.detail
    return caught.value


# --- the validity window (README: issued_at - 60 s <= now; now < expires_at) ---------------------------------------


def test_a_map_issued_60_s_in_our_future_is_valid_and_61_s_is_not_yet() -> None:
    assert verify(make_body(issued_at=NOW + 60)).issued_at == NOW + 60
    rejected(make_body(issued_at=NOW + 61), RejectReason.NOT_YET_VALID)


def test_a_map_is_valid_until_the_second_before_expires_at() -> None:
    assert verify(make_body(expires_at=NOW + 1)).expires_at == NOW + 1
    rejected(make_body(expires_at=NOW), RejectReason.EXPIRED)


# --- integers (README: below 2^53; RFC 7493 §2.2) ------------------------------------------------------------------


@pytest.mark.parametrize("field", ["serial", "expires_at"])
def test_integers_up_to_2_pow_53_minus_1_are_accepted(field: str) -> None:
    body = make_body(**{field: 2**53 - 1})
    assert getattr(parse_network_map(body), field) == 2**53 - 1
    body[field] = 2**53
    rejected(body, RejectReason.MALFORMED)


# --- document size (README: up to 16 MiB) --------------------------------------------------------------------------


def test_a_document_of_exactly_16_mib_is_read_and_one_byte_more_is_refused() -> None:
    document = json.dumps(sign_network_map(make_body(), MANAGEMENT)).encode("ascii")
    padded = document + b" " * (16 * MIB - len(document))  # trailing whitespace is JSON (RFC 8259 §2)
    assert len(padded) == 16 * MIB
    assert verify_and_parse(padded, MANAGEMENT.public_key(), NOW).serial == 5
    with pytest.raises(MapRejected) as caught:
        verify_and_parse(padded + b" ", MANAGEMENT.public_key(), NOW)
    assert caught.value.reason is RejectReason.MALFORMED


# --- allowed IPs: CIDR prefixes, no zone index (RFC 4291 §2.3, RFC 4007 §6) ------------------------------------


@pytest.mark.parametrize("prefix", ["fe80::1%eth0/128", "fe80::%1/64"])
def test_an_allowed_ip_with_a_zone_index_is_refused(prefix: str) -> None:
    body = make_body()
    body["peers"][0]["allowed_ips"] = [prefix]
    rejected(body, RejectReason.MALFORMED)


def test_an_allowed_ip_that_is_not_a_string_is_refused() -> None:
    """README map format: ``allowed_ips`` is a list of CIDR strings; 167772161 is 10.0.0.1 as a number, not one."""
    body = make_body()
    body["peers"][0]["allowed_ips"] = [167772161]
    rejected(body, RejectReason.MALFORMED)


def test_a_prefix_listed_twice_by_one_peer_is_refused() -> None:
    """README: "no prefix owned twice"; the schema's ``uniqueItems`` on ``allowed_ips`` says the same."""
    body = make_body()
    body["peers"][0]["allowed_ips"] = ["10.0.0.1/32", "10.0.0.1/32"]
    rejected(body, RejectReason.MALFORMED)


# --- ports: 16-bit fields (RFC 768, RFC 9293 §3.1); an endpoint is never port 0 (IANA reserved) -----------------


@pytest.mark.parametrize("port", [1, 65535])
def test_endpoint_ports_1_and_65535_are_accepted(port: int) -> None:
    body = make_body()
    body["peers"][1]["endpoint"] = {"host": "192.0.2.7", "port": port}
    assert parse_network_map(body).peers[1].endpoint == ("192.0.2.7", port)


@pytest.mark.parametrize("port", [0, 65536])
def test_endpoint_ports_outside_1_to_65535_are_refused(port: int) -> None:
    body = make_body()
    body["peers"][1]["endpoint"] = {"host": "192.0.2.7", "port": port}
    rejected(body, RejectReason.MALFORMED)


@pytest.mark.parametrize(
    ("ports", "ranges"),
    [
        ([0], ((0, 0),)),
        ([65535], ((65535, 65535),)),
        ([[0, 65535]], ((0, 65535),)),
        ([[22, 22]], ((22, 22),)),  # README: lo <= hi, so a range of one port is a range
    ],
)
def test_rule_ports_cover_the_whole_16_bit_range(ports: list[Any], ranges: tuple[tuple[int, int], ...]) -> None:
    body = make_body()
    body["acl"][0]["ports"] = ports
    assert parse_network_map(body).rules[0].ports == ranges


@pytest.mark.parametrize("ports", [[65536], [[0, 65536]], [[23, 22]]])
def test_rule_ports_outside_the_16_bit_range_or_reversed_are_refused(ports: list[Any]) -> None:
    body = make_body()
    body["acl"][0]["ports"] = ports
    rejected(body, RejectReason.MALFORMED)


# --- list bounds: the published schema's maxItems, read as JSON Schema §6.4.1 reads it ----------------------------


def _max_items(*path: str) -> int:
    node: Any = NETWORK_MAP_SCHEMA["$defs"]
    for step in path:
        node = node[step]
    limit = node["maxItems"]
    assert isinstance(limit, int)
    return limit


def test_a_group_list_of_exactly_max_items_is_valid_and_one_more_is_not() -> None:
    limit = _max_items("peer", "properties", "groups")
    body = make_body()
    body["peers"][0]["groups"] = [f"g{i}" for i in range(limit)]
    assert len(parse_network_map(body).peers[0].groups) == limit
    longer = copy.deepcopy(body)
    longer["peers"][0]["groups"].append("one-more")
    rejected(longer, RejectReason.MALFORMED)


@pytest.mark.parametrize("where", ["peer", "src_groups", "dst_groups"])
def test_a_group_listed_twice_is_refused(where: str) -> None:
    """The schema's group lists carry ``uniqueItems: true`` (JSON Schema 2020-12 §6.4.3: every item distinct)."""
    schema = NETWORK_MAP_SCHEMA["$defs"]
    assert isinstance(schema, dict)
    listed = schema["peer"]["properties"]["groups"] if where == "peer" else schema["rule"]["properties"][where]
    assert listed["uniqueItems"] is True
    body = make_body()
    if where == "peer":
        body["peers"][0]["groups"] = ["developers", "developers"]
    else:
        body["acl"][0][where] = ["production", "production"]
    rejected(body, RejectReason.MALFORMED)


def test_an_acl_of_exactly_max_items_rules_is_valid_and_one_more_is_not() -> None:
    limit = _max_items("body", "properties", "acl")
    template = make_body()["acl"][0]
    body = make_body(acl=[dict(template, name=f"r{i}") for i in range(limit)])
    assert len(parse_network_map(body).rules) == limit
    body["acl"].append(dict(template, name="one-more"))
    rejected(body, RejectReason.MALFORMED)


# The README's "Mesh mode" section, "Limits": the numbers a management server in another language builds against.
DOCUMENTED_LIST_ITEMS = 1024
DOCUMENTED_RULES = 4096
DOCUMENTED_NAME_LENGTH = 64


def test_the_documented_list_limit_holds_for_allowed_ips_groups_and_ports() -> None:
    cases: list[tuple[str, Any]] = [
        ("allowed_ips", lambda n: [f"10.{64 + i // 256}.{i % 256}.1/32" for i in range(n)]),
        ("groups", lambda n: [f"g{i}" for i in range(n)]),
        ("ports", lambda n: list(range(1, n + 1))),
    ]
    for field, items in cases:
        for count, ok in ((DOCUMENTED_LIST_ITEMS, True), (DOCUMENTED_LIST_ITEMS + 1, False)):
            body = make_body()
            if field == "ports":
                body["acl"][0]["ports"] = items(count)
            else:
                body["peers"][0][field] = items(count)
            if ok:
                parse_network_map(body)
            else:
                rejected(body, RejectReason.MALFORMED)


def test_the_documented_rule_limit() -> None:
    template = make_body()["acl"][0]
    body = make_body(acl=[dict(template, name=f"r{i}") for i in range(DOCUMENTED_RULES)])
    assert len(parse_network_map(body).rules) == DOCUMENTED_RULES
    body["acl"].append(dict(template, name="one-more"))
    rejected(body, RejectReason.MALFORMED)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("a" * DOCUMENTED_NAME_LENGTH, True),
        ("a" * (DOCUMENTED_NAME_LENGTH + 1), False),
        ("_ops.team:eu@1-b", True),
        ("", False),
        (".hidden", False),
        ("-x", False),
        ("dev team", False),
        ("développeurs", False),
    ],
)
def test_the_documented_name_rules(name: str, ok: bool) -> None:
    for where in ("group", "rule"):
        body = make_body()
        if where == "group":
            body["peers"][0]["groups"] = [name]
        else:
            body["acl"][0]["name"] = name
        if ok:
            parse_network_map(body)
        else:
            rejected(body, RejectReason.MALFORMED)
