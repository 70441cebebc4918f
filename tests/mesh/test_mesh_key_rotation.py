"""Signing-key rotation in the network map (``key_rotation``): the field is validated like the rest of the body,
and the controller accepts maps from the old and the new key during the announced window, from the new one alone
afterwards, and never from a key no trusted map announced."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.helpers import ADDR_A, ADDR_B, make_pair

from wgpy.mesh import NETWORK_MAP_SCHEMA, MapRejected, MeshController, RejectReason, parse_network_map, sign_network_map

NOW = 1_700_000_000
OLD = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
NEW = Ed25519PrivateKey.from_private_bytes(bytes(range(2, 34)))
IMPOSTOR = Ed25519PrivateKey.from_private_bytes(bytes(range(5, 37)))


def _b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(key.public_key().public_bytes_raw()).decode()


def _body(pair: Any, serial: int, rotation: dict[str, object] | None = None, issued_at: int = NOW) -> dict[str, Any]:
    body: dict[str, Any] = {
        "version": 1,
        "serial": serial,
        "issued_at": issued_at,
        "expires_at": issued_at + 86400 * 3,
        "peers": [
            {
                "public_key": pair.pub_a.to_base64(),
                "allowed_ips": [f"{ADDR_A}/32"],
                "endpoint": None,
                "groups": ["x"],
                "relay": False,
            },
            {
                "public_key": pair.pub_b.to_base64(),
                "allowed_ips": [f"{ADDR_B}/32"],
                "endpoint": None,
                "groups": ["x"],
                "relay": False,
            },
        ],
        "acl": [],
    }
    if rotation is not None:
        body["key_rotation"] = rotation
    return body


def test_the_field_is_optional_validated_and_in_the_schema() -> None:
    pair = make_pair()
    plain = _body(pair, 1)
    assert parse_network_map(plain).key_rotation is None
    body = _body(pair, 1, {"next_key": _b64(NEW), "until": NOW + 3600})
    rotation = parse_network_map(body).key_rotation
    assert rotation is not None and rotation.until == NOW + 3600
    assert rotation.next_key == NEW.public_key().public_bytes_raw()
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(NETWORK_MAP_SCHEMA)
    validator.validate(sign_network_map(body, OLD))
    for bad, schema_sees_it in (
        ({"next_key": _b64(NEW)}, True),
        ({"next_key": _b64(NEW), "until": NOW + 1, "extra": 1}, True),
        ({"next_key": "AAAA", "until": NOW + 1}, True),
        ({"next_key": _b64(NEW), "until": NOW}, False),  # not later than issued_at: a cross-field rule
        ({"next_key": _b64(NEW), "until": True}, True),
        ({"next_key": _b64(NEW), "until": 2**53}, True),
        ("not an object", True),
    ):
        malformed = copy.deepcopy(body)
        malformed["key_rotation"] = bad
        with pytest.raises(MapRejected) as caught:
            parse_network_map(malformed)
        assert caught.value.reason is RejectReason.MALFORMED
        assert validator.is_valid(sign_network_map(malformed, OLD, validate=False)) is not schema_sees_it


def test_old_and_new_keys_during_the_window_then_the_new_key_alone() -> None:
    pair = make_pair()
    ctl = MeshController(OLD.public_key())
    until = NOW + 3600
    rotation = {"next_key": _b64(NEW), "until": until}
    # Before any announcement the new key is not trusted.
    with pytest.raises(MapRejected) as caught:
        ctl.apply_network_map(pair.a, sign_network_map(_body(pair, 1), NEW), NOW, pair.net.now)
    assert caught.value.reason is RejectReason.BAD_SIGNATURE
    ctl.apply_network_map(pair.a, sign_network_map(_body(pair, 2, rotation), OLD), NOW, pair.net.now)
    assert [k.public_bytes_raw() for k in ctl.accepted_keys(NOW)] == [
        OLD.public_key().public_bytes_raw(),
        NEW.public_key().public_bytes_raw(),
    ]
    # Replicas already switched sign with NEW, the others still with OLD: both are accepted in the window.
    ctl.apply_network_map(pair.a, sign_network_map(_body(pair, 3, rotation), NEW), NOW + 10, pair.net.now)
    ctl.apply_network_map(pair.a, sign_network_map(_body(pair, 4), OLD), NOW + 20, pair.net.now)
    assert ctl.rotation is not None  # a map without the field leaves the rotation as it is
    with pytest.raises(MapRejected):
        ctl.apply_network_map(pair.a, sign_network_map(_body(pair, 5), IMPOSTOR), NOW + 30, pair.net.now)
    # From `until` on, only the new key.
    with pytest.raises(MapRejected) as caught:
        ctl.apply_network_map(pair.a, sign_network_map(_body(pair, 6, issued_at=until), OLD), until, pair.net.now)
    assert caught.value.reason is RejectReason.BAD_SIGNATURE
    assert ctl.management_public_key.public_bytes_raw() == NEW.public_key().public_bytes_raw()
    assert ctl.rotation is None
    ctl.apply_network_map(
        pair.a, sign_network_map(_body(pair, 7, rotation, issued_at=until - 1), NEW), until, pair.net.now
    )
    assert ctl.rotation is None  # the new key announcing itself after the switch changes nothing
    assert ctl.serial == 7


def test_an_announcement_in_a_map_we_do_not_trust_changes_nothing() -> None:
    pair = make_pair()
    ctl = MeshController(OLD.public_key())
    rotation = {"next_key": _b64(IMPOSTOR), "until": NOW + 3600}
    with pytest.raises(MapRejected):
        ctl.apply_network_map(pair.a, sign_network_map(_body(pair, 1, rotation), IMPOSTOR), NOW, pair.net.now)
    assert ctl.rotation is None
    assert len(ctl.accepted_keys(NOW)) == 1
