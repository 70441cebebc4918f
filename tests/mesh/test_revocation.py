"""Signed revocation notices (``wgpy.mesh.revocation``): what an agent believes before it destroys its enrolment.

The expected outcomes follow from the format in the module's docstring and RFC 8032 (an Ed25519 signature verifies
only for the exact signed bytes and the signer's key); none of them is read off the code under test.
"""

from __future__ import annotations

import base64
import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy import crypto
from wgpy.mesh import MapRejected, RejectReason, canonical_json, verify_and_parse
from wgpy.mesh.revocation import CONTEXT, RevocationRejected, sign_revocation, verify_revocation

SERVER = crypto.Ed25519PrivateKey.generate()
KEYS = (SERVER.public_key(),)
PEER = "0123456789abcdef0123456789abcdef"
WG_KEY = base64.b64encode(bytes(range(32))).decode()


def notice(key: crypto.Ed25519PrivateKey = SERVER, **fields: object) -> dict[str, object]:
    values: dict[str, object] = {"peer_id": PEER, "public_key": WG_KEY, "reason": "revoked", "issued_at": 1_700_000_000}
    values.update(fields)
    return sign_revocation(key, **values)  # type: ignore[arg-type]


def test_a_notice_for_this_peer_verifies_and_survives_json() -> None:
    document = json.loads(json.dumps(notice(reason="deleted")))
    verified = verify_revocation(document, KEYS, peer_id=PEER, public_key=WG_KEY)
    assert (verified.peer_id, verified.public_key, verified.reason, verified.issued_at) == (
        PEER,
        WG_KEY,
        "deleted",
        1_700_000_000,
    )


def test_a_notice_for_another_peer_id_or_key_is_refused() -> None:
    with pytest.raises(RevocationRejected, match="another peer"):
        verify_revocation(notice(), KEYS, peer_id="f" * 32, public_key=WG_KEY)
    other_key = base64.b64encode(bytes(32)).decode()
    with pytest.raises(RevocationRejected, match="another peer"):
        verify_revocation(notice(), KEYS, peer_id=PEER, public_key=other_key)


def test_another_key_or_any_changed_field_breaks_the_signature() -> None:
    with pytest.raises(RevocationRejected, match="signature"):
        verify_revocation(notice(crypto.Ed25519PrivateKey.generate()), KEYS, peer_id=PEER, public_key=WG_KEY)
    for field, value in (("reason", "deleted"), ("issued_at", 1), ("peer_id", PEER[::-1]), ("version", 2)):
        tampered = copy.deepcopy(notice())
        tampered["revocation"][field] = value  # type: ignore[index]
        with pytest.raises(RevocationRejected, match="signature"):
            verify_revocation(tampered, KEYS, peer_id=PEER, public_key=WG_KEY)


def test_during_a_rotation_either_key_in_force_is_accepted() -> None:
    following = crypto.Ed25519PrivateKey.generate()
    both = (SERVER.public_key(), following.public_key())
    for key in (SERVER, following):
        assert verify_revocation(notice(key), both, peer_id=PEER, public_key=WG_KEY).peer_id == PEER


def test_a_notice_and_a_map_never_stand_in_for_each_other() -> None:
    """Domain separation: the notice's signature covers CONTEXT + the canonical body, a map's the body alone."""
    body = notice()["revocation"]
    assert isinstance(body, dict)
    # the same body signed the way maps are signed (no context) is not a notice
    as_map_signature = base64.b64encode(crypto.ed25519_sign(SERVER, canonical_json(body))).decode()
    with pytest.raises(RevocationRejected, match="signature"):
        verify_revocation({"revocation": body, "signature": as_map_signature}, KEYS, peer_id=PEER, public_key=WG_KEY)
    # a notice's signature offered as a map's is refused before the body is read
    signature = notice()["signature"]
    with pytest.raises(MapRejected) as refused:
        verify_and_parse({"map": body, "signature": signature}, KEYS[0], 1_700_000_000)
    assert refused.value.reason is RejectReason.BAD_SIGNATURE
    assert CONTEXT.endswith(b"\n") and b"{" not in CONTEXT  # no canonical JSON body starts with the context


@pytest.mark.parametrize(
    "document",
    [
        None,
        "revoked",
        [],
        {},
        {"revocation": {}, "signature": "x", "extra": 1},
        {"revocation": "body", "signature": "AAAA"},
        {"revocation": {"version": 1}, "signature": 7},
        {"revocation": {"version": 1}, "signature": "not base64!"},
        {"revocation": {"version": 1}, "signature": base64.b64encode(bytes(63)).decode()},
        {"revocation": {"big": "x" * 2000}, "signature": base64.b64encode(bytes(64)).decode()},
    ],
)
def test_malformed_notices_are_refused_in_one_line(document: object) -> None:
    with pytest.raises(RevocationRejected) as refused:
        verify_revocation(document, KEYS, peer_id=PEER, public_key=WG_KEY)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("version", 2), ("version", True), ("version", 1.0), ("reason", "bored"), ("issued_at", -1), ("issued_at", True), ("issued_at", 1.5),
     ("public_key", "short"), ("peer_id", ""), ("peer_id", "x" * 65)],
)  # fmt: skip
def test_a_signed_body_of_the_wrong_shape_is_refused(field: str, value: object) -> None:
    """Signed by the real key but not a version-1 notice (a server bug, not an attacker): still refused."""
    values: dict[str, object] = {
        "version": 1, "peer_id": PEER, "public_key": WG_KEY, "reason": "revoked", "issued_at": 1, field: value,
    }  # fmt: skip
    signature = base64.b64encode(crypto.ed25519_sign(SERVER, CONTEXT + canonical_json(values))).decode()
    with pytest.raises(RevocationRejected):
        verify_revocation({"revocation": values, "signature": signature}, KEYS, peer_id=PEER, public_key=WG_KEY)


def test_the_signer_refuses_an_unknown_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        notice(reason="maybe")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(body=json_values, signature=json_values)
def test_any_json_is_refused_with_revocation_rejected_only(body: object, signature: object) -> None:
    with pytest.raises(RevocationRejected):
        verify_revocation({"revocation": body, "signature": signature}, KEYS, peer_id=PEER, public_key=WG_KEY)
