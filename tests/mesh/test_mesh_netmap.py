"""Network maps: signing, verification, rejection reasons, and atomic application to real Devices.

Every rejected map is checked to change nothing: the device's full state (``support.helpers.snapshot``: peers, sessions,
timers, routing, index table, queues) and the controller's (serial, map, filter) are compared before and after.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from support.helpers import (
    ADDR_A,
    ADDR_A6,
    ADDR_B,
    ADDR_B6,
    ENDPOINT_B,
    Pair,
    make_device,
    make_pair,
    private_key,
    snapshot,
)

from wgpy.errors import ConfigError
from wgpy.events import PeerRemoved
from wgpy.keypair import _DEAD_AEAD
from wgpy.keys import PublicKey
from wgpy.mesh import (
    NETWORK_MAP_SCHEMA,
    MapRejected,
    MeshController,
    RejectReason,
    canonical_json,
    load_management_public_key,
    parse_network_map,
    sign_network_map,
    verify_and_parse,
)
from wgpy.mesh.acl import MAP_EXPIRED

NOW_WALL = 1_700_000_000.0
MANAGEMENT = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
IMPOSTOR = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PUB_C = private_key(97).public_key()
PUB_D = private_key(98).public_key()

Body = dict[str, Any]


def peer_entry(
    key: PublicKey,
    allowed_ips: list[str],
    groups: list[str],
    endpoint: tuple[str, int] | tuple[str, int, int, int] | None = None,
    *,
    relay: bool = False,
) -> dict[str, Any]:
    return {
        "public_key": key.to_base64(),
        "allowed_ips": allowed_ips,
        "endpoint": None if endpoint is None else {"host": endpoint[0], "port": endpoint[1]},
        "groups": groups,
        "relay": relay,
    }


def make_body(pair: Pair, serial: int = 1, *, extra_peers: list[dict[str, Any]] | None = None) -> Body:
    """A map of A (developers), B (production) and C (other), with the seed ACL."""
    peers = [
        peer_entry(pair.pub_a, [f"{ADDR_A}/32", f"{ADDR_A6}/128"], ["developers"]),
        peer_entry(pair.pub_b, [f"{ADDR_B}/32", f"{ADDR_B6}/128"], ["production"], ENDPOINT_B),
        peer_entry(PUB_C, ["10.0.0.3/32"], ["other"], ("192.0.2.3", 51820)),
    ]
    return {
        "version": 1,
        "serial": serial,
        "issued_at": int(NOW_WALL) - 60,
        "expires_at": int(NOW_WALL) + 86400,
        "peers": peers + (extra_peers or []),
        "acl": [
            {
                "name": "dev-ssh",
                "src_groups": ["developers"],
                "dst_groups": ["production"],
                "protocol": "tcp",
                "ports": [22],
                "action": "accept",
            },
            {
                "name": "dev-https",
                "src_groups": ["developers"],
                "dst_groups": ["production"],
                "protocol": "tcp",
                "ports": [443, [8443, 8444]],
                "action": "accept",
            },
        ],
    }


def sign(body: Body, key: Ed25519PrivateKey = MANAGEMENT) -> dict[str, object]:
    return sign_network_map(body, key, validate=False)


def controller(**kwargs: Any) -> MeshController:
    return MeshController(MANAGEMENT.public_key(), **kwargs)


def state(pair: Pair, ctl: MeshController) -> tuple[object, ...]:
    return (snapshot(pair.a), ctl.serial, ctl.network_map, ctl.filter.netmap, len(ctl.filter.conntrack))


@pytest.fixture
def audit_lines(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    caplog.set_level(logging.INFO, logger="wgpy.audit")

    def lines() -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in caplog.records if r.name == "wgpy.audit"]

    yield lines


# ------------------------------------------------------------------------------------------------------------------
# Signing and verification
# ------------------------------------------------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    pair = make_pair()
    body = make_body(pair, serial=7)
    document = sign_network_map(body, MANAGEMENT)
    assert set(document) == {"map", "signature"}
    assert len(base64.b64decode(str(document["signature"]))) == 64
    netmap = verify_and_parse(json.dumps(document), MANAGEMENT.public_key(), NOW_WALL)
    assert netmap.serial == 7
    assert netmap.issued_at == int(NOW_WALL) - 60
    assert [p.public_key for p in netmap.peers] == [pair.pub_a, pair.pub_b, PUB_C]
    b = netmap.peer(pair.pub_b)
    assert b is not None and b.groups == frozenset({"production"}) and b.endpoint == ENDPOINT_B
    assert [str(n) for n in b.allowed_ips] == [f"{ADDR_B}/32", f"{ADDR_B6}/128"]
    assert netmap.rules[1].ports == ((443, 443), (8443, 8444))
    assert netmap.rules[0].protocol == "tcp" and netmap.rules[0].action == "accept"
    # The same document as bytes, as a dict, and re-serialised with other whitespace and key order all verify.
    assert verify_and_parse(json.dumps(document).encode(), MANAGEMENT.public_key(), NOW_WALL) == netmap
    assert verify_and_parse(document, MANAGEMENT.public_key(), NOW_WALL) == netmap
    reordered = json.dumps({"signature": document["signature"], "map": dict(reversed(list(body.items())))}, indent=2)
    assert verify_and_parse(reordered, MANAGEMENT.public_key(), NOW_WALL) == netmap


def test_canonical_json_is_sorted_compact_ascii() -> None:
    assert canonical_json({"b": [1, {"d": None, "c": True}], "a": "x"}) == b'{"a":"x","b":[1,{"c":true,"d":null}]}'


def test_management_key_forms() -> None:
    public = MANAGEMENT.public_key()
    raw = public.public_bytes_raw()
    for form in (public, raw, base64.b64encode(raw).decode()):
        assert load_management_public_key(form).public_bytes_raw() == raw
    for bad in (b"short", "not base64!", base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(ConfigError):
            load_management_public_key(bad)


def test_signing_refuses_a_malformed_body() -> None:
    body = make_body(make_pair())
    body["serial"] = -1
    with pytest.raises(MapRejected) as caught:
        sign_network_map(body, MANAGEMENT)
    assert caught.value.reason is RejectReason.MALFORMED


# ------------------------------------------------------------------------------------------------------------------
# Rejections: each with the right reason, and nothing changed
# ------------------------------------------------------------------------------------------------------------------


def applied_pair(**kwargs: Any) -> tuple[Pair, MeshController]:
    """A connected pair whose A has map serial 5 applied."""
    pair = make_pair()
    ctl = controller(**kwargs)
    ctl.apply_network_map(pair.a, sign(make_body(pair, serial=5)), NOW_WALL, pair.net.now)
    pair.handshake()
    return pair, ctl


def assert_rejected(
    pair: Pair, ctl: MeshController, document: object, reason: RejectReason, now_wall: float = NOW_WALL
) -> MapRejected:
    before = state(pair, ctl)
    with pytest.raises(MapRejected) as caught:
        ctl.apply_network_map(pair.a, document, now_wall, pair.net.now)  # type: ignore[arg-type]
    assert caught.value.reason is reason, caught.value
    assert state(pair, ctl) == before
    return caught.value


def test_tampered_body_is_rejected(audit_lines: Callable[[], list[dict[str, Any]]]) -> None:
    pair, ctl = applied_pair()
    document = sign(make_body(pair, serial=6))
    tampered = copy.deepcopy(document)
    tampered["map"]["peers"][2]["allowed_ips"] = ["10.0.0.2/32"]  # type: ignore[index]
    rejected = assert_rejected(pair, ctl, tampered, RejectReason.BAD_SIGNATURE)
    assert rejected.serial is None  # an unverified serial is not reported as the map's
    line = audit_lines()[-1]
    assert line["event"] == "map_rejected" and line["reason"] == "bad_signature" and line["serial"] is None


def test_every_single_byte_change_is_rejected() -> None:
    pair, ctl = applied_pair()
    text = json.dumps(sign(make_body(pair, serial=6)), separators=(",", ":")).encode()
    before = state(pair, ctl)
    reasons = set()
    for position in range(len(text)):
        for flip in (0x01, 0x20):
            changed = bytearray(text)
            changed[position] ^= flip
            with pytest.raises(MapRejected) as caught:
                ctl.apply_network_map(pair.a, bytes(changed), NOW_WALL, pair.net.now)
            reasons.add(caught.value.reason)
    assert reasons == {RejectReason.BAD_SIGNATURE, RejectReason.MALFORMED}
    assert state(pair, ctl) == before


def test_map_signed_by_another_key_is_rejected() -> None:
    pair, ctl = applied_pair()
    assert_rejected(pair, ctl, sign(make_body(pair, serial=6), IMPOSTOR), RejectReason.BAD_SIGNATURE)


def test_expired_map_is_rejected() -> None:
    pair, ctl = applied_pair()
    body = make_body(pair, serial=6)
    body["issued_at"], body["expires_at"] = int(NOW_WALL) - 7200, int(NOW_WALL) - 1
    assert_rejected(pair, ctl, sign(body), RejectReason.EXPIRED)
    body["expires_at"] = int(NOW_WALL)  # expiry is exclusive: valid strictly before expires_at
    assert_rejected(pair, ctl, sign(body), RejectReason.EXPIRED)


def test_not_yet_valid_map_is_rejected_beyond_the_clock_skew() -> None:
    pair, ctl = applied_pair()
    body = make_body(pair, serial=6)
    body["issued_at"], body["expires_at"] = int(NOW_WALL) + 3600, int(NOW_WALL) + 7200
    assert_rejected(pair, ctl, sign(body), RejectReason.NOT_YET_VALID)
    body["issued_at"] = int(NOW_WALL) + 30  # within MAX_CLOCK_SKEW: our clock may be a little behind
    assert ctl.apply_network_map(pair.a, sign(body), NOW_WALL, pair.net.now).serial == 6


def test_replayed_older_or_same_serial_is_rejected() -> None:
    pair, ctl = applied_pair()
    old = sign(make_body(pair, serial=4))
    same = sign(make_body(pair, serial=5))
    assert_rejected(pair, ctl, old, RejectReason.STALE_SERIAL)
    assert_rejected(pair, ctl, same, RejectReason.STALE_SERIAL)
    # A restarted controller told the persisted serial refuses the replay as well.
    restarted = controller(current_serial=5)
    with pytest.raises(MapRejected) as caught:
        restarted.apply_network_map(pair.a, old, NOW_WALL, pair.net.now)
    assert caught.value.reason is RejectReason.STALE_SERIAL and caught.value.serial == 4
    assert caught.value.detail == "serial 4 is not greater than the current 5"


def test_a_restarted_controller_takes_the_saved_map_once_more_and_nothing_else_of_its_serial() -> None:
    """Resuming: until a map is in force, the saved map (``resuming=True``) may carry the persisted serial itself;
    no other map may, and once a map is in force that serial is stale for the saved one too."""
    pair, _ = applied_pair()
    saved = sign(make_body(pair, serial=5))
    other = make_body(pair, serial=5)
    other["acl"] = []
    restarted = controller(current_serial=5)
    now = pair.net.now
    with pytest.raises(MapRejected) as caught:  # another map with the saved serial: a replay, not a resume
        restarted.apply_network_map(pair.a, sign(other), NOW_WALL, now)
    assert caught.value.detail == "serial 5 is not greater than the current 5"
    assert restarted.apply_network_map(pair.a, saved, NOW_WALL, now, resuming=True).serial == 5
    with pytest.raises(MapRejected) as caught:
        restarted.apply_network_map(pair.a, saved, NOW_WALL, now, resuming=True)
    assert caught.value.reason is RejectReason.STALE_SERIAL
    assert caught.value.detail == "serial 5 is not greater than the current 5"
    # A newer map first: the saved one is stale after it.
    overtaken = controller(current_serial=5)
    assert overtaken.apply_network_map(pair.a, sign(make_body(pair, serial=6)), NOW_WALL, now).serial == 6
    with pytest.raises(MapRejected):
        overtaken.apply_network_map(pair.a, saved, NOW_WALL, now, resuming=True)


def test_verify_and_parse_while_resuming_admits_the_saved_serial_and_nothing_older() -> None:
    pair, ctl = applied_pair()
    key = ctl.management_public_key
    document = sign(make_body(pair, serial=5))
    assert verify_and_parse(document, key, NOW_WALL, 5, resuming=True).serial == 5
    with pytest.raises(MapRejected) as caught:
        verify_and_parse(document, key, NOW_WALL, 5)
    assert caught.value.detail == "serial 5 is not greater than the current 5"
    with pytest.raises(MapRejected) as caught:
        verify_and_parse(document, key, NOW_WALL, 6, resuming=True)
    assert caught.value.reason is RejectReason.STALE_SERIAL
    assert caught.value.detail == "serial 5 is older than the saved 6"


def test_a_map_verified_before_another_of_its_serial_was_applied_is_refused_at_the_commit() -> None:
    """``apply_verified`` checks the serial again: verification (in a worker thread, say) saw serial 5 in force,
    and a map of serial 6 came in meanwhile, so this other map of serial 6 is stale by the time it commits."""
    pair, ctl = applied_pair()
    first = make_body(pair, serial=6)
    second = make_body(pair, serial=6)
    second["acl"] = []
    verified = ctl.verifier(NOW_WALL)(sign(second))
    assert ctl.apply_network_map(pair.a, sign(first), NOW_WALL, pair.net.now).serial == 6
    with pytest.raises(MapRejected) as caught:
        ctl.apply_verified(pair.a, verified, NOW_WALL, pair.net.now)
    assert caught.value.reason is RejectReason.STALE_SERIAL
    assert ctl.network_map is not None and ctl.network_map.rules  # the first map (with rules) is the one in force
    assert not verified.rules


def test_map_without_this_device_is_rejected() -> None:
    pair, ctl = applied_pair()
    body = make_body(pair, serial=6)
    del body["peers"][0]
    assert_rejected(pair, ctl, sign(body), RejectReason.NOT_FOR_THIS_DEVICE)


def test_device_without_key_is_a_config_error() -> None:
    from wgpy.device import Device

    with pytest.raises(ConfigError):
        controller().apply_network_map(Device(), sign(make_body(make_pair())), NOW_WALL, 0.0)


def _mutations() -> list[tuple[str, Callable[[Body], object], str]]:
    """(id, mutate the body in place, a word the detail must contain)."""

    def setter(path: tuple[Any, ...], value: object) -> Callable[[Body], object]:
        def mutate(body: Body) -> object:
            target: Any = body
            for step in path[:-1]:
                target = target[step]
            target[path[-1]] = value
            return None

        return mutate

    def deleter(path: tuple[Any, ...]) -> Callable[[Body], object]:
        def mutate(body: Body) -> object:
            target: Any = body
            for step in path[:-1]:
                target = target[step]
            del target[path[-1]]
            return None

        return mutate

    def copy_key(body: Body) -> object:
        body["peers"][2]["public_key"] = body["peers"][1]["public_key"]
        return None

    return [
        ("missing-serial", deleter(("serial",)), "missing serial"),
        ("unknown-field", setter(("acl", 0, "port"), [22]), "unknown field"),
        ("version-2", setter(("version",), 2), "version"),
        ("serial-bool", setter(("serial",), True), "serial"),
        ("serial-float", setter(("serial",), 6.0), "serial"),
        ("serial-huge", setter(("serial",), 2**60), "serial"),
        ("time-order", setter(("expires_at",), int(NOW_WALL) - 60), "later"),
        ("peers-not-list", setter(("peers",), {}), "peers"),
        ("bad-public-key", setter(("peers", 2, "public_key"), "AAAA"), "public_key"),
        ("key-spare-bits", setter(("peers", 2, "public_key"), PUB_C.to_base64()[:42] + "B="), "public_key"),
        ("host-bits-set", setter(("peers", 2, "allowed_ips"), ["10.0.0.3/24"]), "host bits"),
        ("not-a-cidr", setter(("peers", 2, "allowed_ips"), ["10.0.0.300/32"]), "allowed_ips"),
        ("prefix-twice", setter(("peers", 2, "allowed_ips"), [f"{ADDR_B}/32"]), "another peer"),
        ("duplicate-peer", copy_key, "listed twice"),
        ("endpoint-hostname", setter(("peers", 2, "endpoint"), {"host": "example.com", "port": 1}), "host"),
        ("endpoint-port-0", setter(("peers", 2, "endpoint"), {"host": "192.0.2.3", "port": 0}), "port"),
        ("endpoint-string", setter(("peers", 2, "endpoint"), "192.0.2.3:51820"), "endpoint"),
        ("group-name", setter(("peers", 2, "groups"), ["bad group"]), "group"),
        ("group-newline", setter(("peers", 2, "groups"), ["ops\n"]), "group"),
        ("group-wildcard-on-peer", setter(("peers", 2, "groups"), ["*"]), "group"),
        ("relay-int", setter(("peers", 2, "relay"), 1), "relay"),
        ("protocol", setter(("acl", 0, "protocol"), "sctp"), "protocol"),
        ("action", setter(("acl", 0, "action"), "allow"), "action"),
        ("ports-on-icmp", setter(("acl", 0, "protocol"), "icmp"), "ports"),
        ("range-reversed", setter(("acl", 1, "ports"), [[444, 443]]), "greater"),
        ("range-three", setter(("acl", 1, "ports"), [[1, 2, 3]]), "range"),
        ("port-too-big", setter(("acl", 1, "ports"), [65536]), "port"),
        ("empty-src", setter(("acl", 0, "src_groups"), []), "empty"),
        ("duplicate-rule-name", setter(("acl", 1, "name"), "dev-ssh"), "another rule"),
        ("reserved-rule-name", setter(("acl", 1, "name"), "default-deny"), "reserved"),
    ]


@pytest.mark.parametrize(("mutate", "word"), [(m, w) for _, m, w in _mutations()], ids=[i for i, _, _ in _mutations()])
def test_malformed_bodies_are_rejected(mutate: Callable[[Body], object], word: str) -> None:
    pair, ctl = applied_pair()
    body = make_body(pair, serial=6)
    mutate(body)
    rejected = assert_rejected(pair, ctl, sign(body), RejectReason.MALFORMED)
    assert word in rejected.detail, rejected.detail


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"[]",
        b"{not json",
        b'{"map": {}, "signature": "AAAA", "extra": 1}',
        b'{"map": [], "signature": "' + b"A" * 86 + b'=="}',
        b'{"map": {}, "signature": "' + b"A" * 40 + b'=="}',
        b'{"map": {}, "signature": "' + b"!" * 86 + b'=="}',
        b'{"map": {"serial": 1, "serial": 2}, "signature": "' + b"A" * 86 + b'=="}',
        b'{"map": {"serial": NaN}, "signature": "' + b"A" * 86 + b'=="}',
        b"\xff\xfe\x00",
        b"[" * 100_000,
    ],
    ids=[
        "empty",
        "array",
        "not-json",
        "extra-key",
        "map-not-object",
        "signature-short",
        "signature-not-base64",
        "duplicate-key",
        "nan",
        "not-utf8",
        "deep",
    ],
)
def test_malformed_envelopes_are_rejected(document: bytes) -> None:
    pair, ctl = applied_pair()
    assert_rejected(pair, ctl, document, RejectReason.MALFORMED)


def test_schema_agrees_with_the_validator() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pair = make_pair()
    validator = jsonschema.Draft202012Validator(NETWORK_MAP_SCHEMA)
    validator.check_schema(NETWORK_MAP_SCHEMA)
    good = sign(make_body(pair))
    assert list(validator.iter_errors(good)) == []
    parse_network_map(make_body(pair))
    checked = 0
    for name, mutate, _word in _mutations():
        if name in {"duplicate-peer", "prefix-twice", "range-reversed", "duplicate-rule-name", "time-order"}:
            continue  # cross-field rules the schema cannot state (listed in its description)
        if name in {"host-bits-set", "not-a-cidr", "endpoint-hostname"}:
            continue  # address syntax: described in the schema, checked by ipaddress
        if name == "serial-float":
            continue  # JSON Schema counts 6.0 as an integer; the validator demands an integer literal
        if name == "group-newline":
            continue  # Python's re lets "$" match before a final newline; ECMA-262 regexes (the schema's) do not
        body = make_body(pair)
        mutate(body)
        assert list(validator.iter_errors({"map": body, "signature": good["signature"]})), name
        checked += 1
    assert checked >= 20


# ------------------------------------------------------------------------------------------------------------------
# Application: atomic, keeps sessions, wipes removed peers, moves prefixes
# ------------------------------------------------------------------------------------------------------------------


def test_first_map_configures_the_device(audit_lines: Callable[[], list[dict[str, Any]]]) -> None:
    pair = make_pair()
    ctl = controller()
    changes = ctl.apply_network_map(pair.a, sign(make_body(pair)), NOW_WALL, pair.net.now)
    assert changes.added == (PUB_C,) and changes.removed == () and changes.allowed_ips_changed == ()
    assert ctl.serial == 1 and ctl.network_map is not None
    assert pair.a.public_key not in pair.a.peers  # the local entry is never a peer
    peer_c = pair.a.peer(PUB_C)
    assert peer_c is not None and peer_c.endpoint == ("192.0.2.3", 51820)
    assert pair.a.allowed_ips.lookup_ip("10.0.0.3") is peer_c
    assert [line["event"] for line in audit_lines()] == ["peer_added", "map_applied"]


def test_apply_keeps_unchanged_sessions_and_traffic_flows() -> None:
    pair = make_pair()
    ctl = controller()
    ctl.apply_network_map(pair.a, sign(make_body(pair, serial=1)), NOW_WALL, pair.net.now)
    pair.handshake()
    peer_b = pair.peer_b
    keypair = peer_b.keypairs.current
    assert keypair is not None
    handshakes = pair.a.stats.handshakes_completed
    # Map 2 changes C's allowed IPs and groups and adds D; B is untouched.
    body = make_body(pair, serial=2, extra_peers=[peer_entry(PUB_D, ["10.0.0.4/32"], ["other"])])
    body["peers"][2]["allowed_ips"] = ["10.0.0.3/32", "10.0.3.0/24"]
    body["peers"][2]["groups"] = ["other", "contractors"]
    changes = ctl.apply_network_map(pair.a, sign(body), NOW_WALL + 10, pair.net.now)
    assert changes.added == (PUB_D,) and changes.allowed_ips_changed == (PUB_C,) and changes.removed == ()
    assert pair.a.peer(pair.pub_b) is peer_b
    assert peer_b.keypairs.current is keypair and keypair.valid
    pair.send_a(b"after the map")
    pair.send_b(b"reply after the map")
    assert [p[20:] for p in pair.node_b.delivered] == [b"after the map"]
    assert [p[20:] for p in pair.node_a.delivered] == [b"reply after the map"]
    assert pair.a.stats.handshakes_completed == handshakes  # no new handshake was needed


def test_removed_peer_is_wiped() -> None:
    pair = make_pair()
    ctl = controller()
    ctl.apply_network_map(pair.a, sign(make_body(pair, serial=1)), NOW_WALL, pair.net.now)
    pair.handshake()
    pair.events(pair.a)
    peer_b = pair.peer_b
    keypairs = peer_b.keypairs.all()
    indices = [k.local_index for k in keypairs]
    assert keypairs
    body = make_body(pair, serial=2)
    del body["peers"][1]
    changes = ctl.apply_network_map(pair.a, sign(body), NOW_WALL, pair.net.now)
    assert changes.removed == (pair.pub_b,)
    assert pair.a.peer(pair.pub_b) is None
    assert pair.a.allowed_ips.lookup_ip(ADDR_B) is None and pair.a.allowed_ips.lookup_ip(ADDR_B6) is None
    for keypair in keypairs:
        assert not keypair.valid
        assert keypair._send_aead is _DEAD_AEAD and keypair._recv_aead is _DEAD_AEAD
    assert all(pair.a.index_table.lookup(index) is None for index in indices)
    assert peer_b.handshake.chaining_key == bytes(32)
    assert PeerRemoved(pair.pub_b) in pair.events(pair.a)
    # B's packets no longer reach A.
    pair.send_b(b"are you there")
    assert pair.node_a.delivered == []


def test_allowed_ips_move_between_peers() -> None:
    pair = make_pair()
    ctl = controller()
    body = make_body(pair, serial=1, extra_peers=[peer_entry(PUB_D, ["10.0.0.4/32", "10.0.9.0/24"], ["other"])])
    ctl.apply_network_map(pair.a, sign(body), NOW_WALL, pair.net.now)
    peer_c, peer_d = pair.a.peer(PUB_C), pair.a.peer(PUB_D)
    assert peer_c is not None and peer_d is not None
    assert pair.a.allowed_ips.lookup_ip("10.0.9.1") is peer_d
    body["serial"] = 2
    body["peers"][2]["allowed_ips"] = ["10.0.0.3/32", "10.0.9.0/24"]
    body["peers"][3]["allowed_ips"] = ["10.0.0.4/32"]
    changes = ctl.apply_network_map(pair.a, sign(body), NOW_WALL, pair.net.now)
    assert set(changes.allowed_ips_changed) == {PUB_C, PUB_D}
    assert pair.a.allowed_ips.lookup_ip("10.0.9.1") is peer_c
    assert [str(n) for n in pair.a.allowed_ips.entries_for_peer(peer_d)] == ["10.0.0.4/32"]
    assert [str(n) for n in pair.a.allowed_ips.entries_for_peer(peer_c)] == ["10.0.0.3/32", "10.0.9.0/24"]


def test_map_is_authoritative_over_unlisted_peers() -> None:
    pair = make_pair()
    manual = private_key(55).public_key()
    pair.a.add_peer(manual, allowed_ips=["10.0.0.55/32"])
    changes = controller().apply_network_map(pair.a, sign(make_body(pair)), NOW_WALL, pair.net.now)
    assert changes.removed == (manual,) and pair.a.peer(manual) is None


def test_endpoint_updates_respect_roaming() -> None:
    pair = make_pair()
    ctl = controller()
    ctl.apply_network_map(pair.a, sign(make_body(pair, serial=1)), NOW_WALL, pair.net.now)
    roamed = ("198.51.100.7", 4444)
    pair.peer_b.endpoint = roamed  # as if learnt from B's authenticated packets
    ctl.apply_network_map(pair.a, sign(make_body(pair, serial=2)), NOW_WALL, pair.net.now)
    assert pair.peer_b.endpoint == roamed  # the map still says what it said: the device's knowledge wins
    body = make_body(pair, serial=3)
    body["peers"][1]["endpoint"] = {"host": "2001:db8::2", "port": 51821}
    changes = ctl.apply_network_map(pair.a, sign(body), NOW_WALL, pair.net.now)
    assert changes.endpoints_changed == (pair.pub_b,)
    assert pair.peer_b.endpoint == ("2001:db8::2", 51821)  # the management server has news: apply it


def test_fail_closed_on_expired_map() -> None:
    pair = make_pair()
    ctl = controller(fail_closed=True)
    body = make_body(pair)
    body["expires_at"] = int(NOW_WALL) + 100
    ctl.apply_network_map(pair.a, sign(body), NOW_WALL, 5.0)
    assert ctl.traffic_allowed(NOW_WALL + 99)
    assert not ctl.traffic_allowed(NOW_WALL + 100)
    syn = _tcp_syn(ADDR_A, ADDR_B, 22)
    assert ctl.filter.check_outbound(syn, pair.pub_b, 5.0 + 99)
    assert not ctl.filter.check_outbound(syn, pair.pub_b, 5.0 + 100)  # even the tracked flow stops
    assert ctl.filter.stats.denied[MAP_EXPIRED] == 1
    # A fresh map lifts it.
    body = make_body(pair, serial=2)
    ctl.apply_network_map(pair.a, sign(body), NOW_WALL + 200, 205.0)
    assert ctl.filter.check_outbound(syn, pair.pub_b, 205.0)


def test_without_fail_closed_the_expired_map_stays_in_force() -> None:
    pair = make_pair()
    ctl = controller()
    body = make_body(pair)
    body["expires_at"] = int(NOW_WALL) + 100
    ctl.apply_network_map(pair.a, sign(body), NOW_WALL, 5.0)
    assert ctl.traffic_allowed(NOW_WALL + 1000)
    assert ctl.filter.check_outbound(_tcp_syn(ADDR_A, ADDR_B, 22), pair.pub_b, 1005.0)


def test_new_map_revokes_existing_flows() -> None:
    pair = make_pair()
    ctl = controller()
    ctl.apply_network_map(pair.a, sign(make_body(pair, serial=1)), NOW_WALL, 0.0)
    assert ctl.filter.check_outbound(_tcp_syn(ADDR_A, ADDR_B, 22), pair.pub_b, 1.0)
    assert ctl.filter.check_outbound(_tcp_syn(ADDR_A, ADDR_B, 443), pair.pub_b, 1.0)
    body = make_body(pair, serial=2)
    del body["acl"][0]  # no more ssh
    changes = ctl.apply_network_map(pair.a, sign(body), NOW_WALL, 2.0)
    assert changes.flows_removed == 1
    assert len(ctl.filter.conntrack) == 1


def test_controller_needs_an_ed25519_key() -> None:
    with pytest.raises(ConfigError):
        MeshController(b"\x00" * 5)


def test_two_devices_each_with_a_controller() -> None:
    """Both ends apply the same map; the local entry differs and neither adds itself."""
    pair = make_pair()
    document = sign(make_body(pair))
    ctl_a, ctl_b = controller(), controller()
    ctl_a.apply_network_map(pair.a, document, NOW_WALL, 0.0)
    ctl_b.apply_network_map(pair.b, document, NOW_WALL, 0.0)
    assert set(pair.a.peers) == {pair.pub_b, PUB_C}
    assert set(pair.b.peers) == {pair.pub_a, PUB_C}
    c = make_device(97)
    assert c.public_key == PUB_C


def _tcp_syn(src: str, dst: str, dport: int, sport: int = 40000) -> bytes:
    from support.helpers import ipv4_packet

    header = sport.to_bytes(2, "big") + dport.to_bytes(2, "big") + bytes(8) + bytes([0x50, 0x02]) + bytes(6)
    return ipv4_packet(src, dst, header, protocol=6)


# ------------------------------------------------------------------------------------------------------------------
# Remote input never raises anything but MapRejected
# ------------------------------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_map_rejected(data: bytes) -> None:
    with pytest.raises(MapRejected):
        verify_and_parse(data, MANAGEMENT.public_key(), NOW_WALL)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_random_values_in_a_signed_body_only_ever_raise_map_rejected(data: st.DataObject) -> None:
    """Replace one field anywhere in a valid body by random JSON, sign it, and verify: accepted or MALFORMED."""
    body = make_body(make_pair())
    paths: list[tuple[Any, ...]] = []

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        paths.append(path)
        if isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*path, key))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, (*path, index))

    walk(body, ())
    path = data.draw(st.sampled_from(paths[1:]))
    target: Any = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = data.draw(JSON_VALUES)
    try:
        netmap = verify_and_parse(sign(body), MANAGEMENT.public_key(), NOW_WALL)
    except MapRejected as rejected:
        assert rejected.reason in (RejectReason.MALFORMED, RejectReason.EXPIRED, RejectReason.NOT_YET_VALID)
    else:
        assert netmap.serial == body["serial"]
