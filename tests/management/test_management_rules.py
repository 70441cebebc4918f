"""The pure rules: tokens (wgpy.management.tokens) and enrolment (wgpy.management.enrolment), driven by ``now``."""

from __future__ import annotations

import ipaddress

import jwt
import pytest
from management_helpers import setup_key_row

from wgpy import crypto
from wgpy.management import enrolment, tokens
from wgpy.management.enrolment import EnrolmentError, SetupKeyRow
from wgpy.management.tokens import RefreshDecision, RefreshRow, TokenError

NOW = 1_800_000_000.0
KEY = crypto.Ed25519PrivateKey.generate()
WG = "A" * 43 + "="
OTHER_WG = "B" * 43 + "="


def _issue(typ: tokens.TokenType = "access", **kwargs: object) -> tuple[str, tokens.TokenClaims]:
    family = "fam1" if typ == "refresh" else None
    return tokens.issue_token(KEY, peer_id="p1", public_key=WG, typ=typ, now=NOW, jti="j1", family=family)


def test_access_token_round_trip_and_lifetimes() -> None:
    token, claims = _issue()
    verified = tokens.verify_token(token, KEY.public_key(), expected_type="access", now=NOW + 10, expected_key=WG)
    assert verified == claims and verified.exp - verified.iat == 3600
    _, refresh = _issue("refresh")
    assert refresh.exp - refresh.iat == 7 * 86400 and refresh.fam == "fam1"
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda t: t, None),
        (lambda t: t[:-4] + ("AAAA" if not t.endswith("AAAA") else "BBBB"), "bad_signature"),
        (lambda t: "x.y.z", "malformed"),
        (lambda t: "", "malformed"),
        (lambda t: "a" * 5000, "malformed"),
    ],
)
def test_verification_codes(mutate: object, code: str | None) -> None:
    token, _ = _issue()
    assert callable(mutate)
    candidate = mutate(token)
    if code is None:
        tokens.verify_token(candidate, KEY.public_key(), expected_type="access", now=NOW)
        return
    with pytest.raises(TokenError) as caught:
        tokens.verify_token(candidate, KEY.public_key(), expected_type="access", now=NOW)
    assert caught.value.code == code
    assert token not in str(caught.value)


def test_expired_wrong_type_other_key_and_foreign_signer() -> None:
    token, _ = _issue()
    with pytest.raises(TokenError, match="expired") as caught:
        tokens.verify_token(token, KEY.public_key(), expected_type="access", now=NOW + 3600)
    assert caught.value.code == "expired"
    with pytest.raises(TokenError) as caught:
        tokens.verify_token(token, KEY.public_key(), expected_type="refresh", now=NOW)
    assert caught.value.code == "wrong_type"
    with pytest.raises(TokenError) as caught:
        tokens.verify_token(token, KEY.public_key(), expected_type="access", now=NOW, expected_key=OTHER_WG)
    assert caught.value.code == "other_key"
    with pytest.raises(TokenError) as caught:
        tokens.verify_token(token, crypto.Ed25519PrivateKey.generate().public_key(), expected_type="access", now=NOW)
    assert caught.value.code == "bad_signature"
    # an HS256 token (the classic algorithm confusion) is not accepted
    forged = jwt.encode({"sub": "p1"}, "secret-secret-secret-secret-secret", algorithm="HS256")
    with pytest.raises(TokenError) as caught:
        tokens.verify_token(forged, KEY.public_key(), expected_type="access", now=NOW)
    assert caught.value.code == "malformed"


def test_refresh_rotation_and_reuse() -> None:
    _, claims = _issue("refresh")
    row = RefreshRow("j1", "fam1", "p1", NOW + 100, None, False)
    assert tokens.decide_refresh(row, claims, NOW) is RefreshDecision.OK
    assert tokens.decide_refresh(None, claims, NOW) is RefreshDecision.UNKNOWN
    assert (
        tokens.decide_refresh(RefreshRow("j1", "fam1", "p2", NOW + 100, None, False), claims, NOW)
        is RefreshDecision.UNKNOWN
    )
    assert (
        tokens.decide_refresh(RefreshRow("j1", "fam1", "p1", NOW + 100, NOW - 5, False), claims, NOW)
        is RefreshDecision.REUSED
    )
    assert (
        tokens.decide_refresh(RefreshRow("j1", "fam1", "p1", NOW + 100, NOW - 5, True), claims, NOW)
        is RefreshDecision.REVOKED
    )
    assert (
        tokens.decide_refresh(RefreshRow("j1", "fam1", "p1", NOW, None, False), claims, NOW) is RefreshDecision.EXPIRED
    )


def _key(**overrides: object) -> SetupKeyRow:
    row: SetupKeyRow = setup_key_row(NOW, **overrides)
    return row


@pytest.mark.parametrize(
    ("row", "code"),
    [
        (None, "unknown_setup_key"),
        (_key(revoked=True), "revoked_setup_key"),
        (_key(expires_at=NOW), "expired_setup_key"),
        (_key(used=1), "used_setup_key"),
        (_key(reusable=True, usage_limit=5, used=5), "used_setup_key"),
    ],
)
def test_setup_key_refusals(row: SetupKeyRow | None, code: str) -> None:
    with pytest.raises(EnrolmentError) as caught:
        enrolment.check_setup_key(row, NOW)
    assert caught.value.code == code


def test_setup_key_usable() -> None:
    assert enrolment.check_setup_key(_key(reusable=True, usage_limit=5, used=4), NOW).used == 4


def test_setup_key_request_defaults_and_refusals() -> None:
    spec = enrolment.parse_setup_key_request({"name": "laptop"})
    assert (spec.reusable, spec.usage_limit, spec.expires_in, spec.auto_groups) == (False, 1, 86400, ())
    assert not spec.approval_required and not spec.ephemeral
    for body, fragment in [
        ({"name": "x", "reusable": False, "usage_limit": 2}, "one-off"),
        ({"name": "x", "expires_in": 10}, "expires_in"),
        ({"name": "x", "auto_groups": ["a", "a"]}, "distinct"),
        ({"name": "x", "ephemeral_timeout": 100}, "only for ephemeral"),
        ({"name": "x", "extra": 1}, "unknown field"),
        ({}, "name"),
        ([], "JSON object"),
    ]:
        with pytest.raises(EnrolmentError, match=fragment):
            enrolment.parse_setup_key_request(body)


def test_address_allocation_skips_network_broadcast_and_taken() -> None:
    network = enrolment.parse_network("10.0.0.0/30")
    assert enrolment.allocate_address(network, set()) == "10.0.0.1"
    assert enrolment.allocate_address(network, {int(ipaddress.IPv4Address("10.0.0.1"))}) == "10.0.0.2"
    with pytest.raises(EnrolmentError) as caught:
        enrolment.allocate_address(network, {int(ipaddress.IPv4Address(a)) for a in ("10.0.0.1", "10.0.0.2")})
    assert caught.value.code == "address_pool_exhausted"
    default = enrolment.parse_network(enrolment.DEFAULT_NETWORK)
    assert enrolment.allocate_address(default, set()) == "100.64.0.1"
    for bad in ("10.0.0.1/24", "fd00::/64", "10.0.0.0/31", "nonsense"):
        with pytest.raises(ValueError):
            enrolment.parse_network(bad)


def test_quarantine_and_ephemeral_expiry() -> None:
    assert enrolment.quarantined(NOW, NOW + 86399)
    assert not enrolment.quarantined(NOW, NOW + 86400)
    assert not enrolment.quarantined(None, NOW)
    assert enrolment.ephemeral_expired(ephemeral=True, timeout=60, last_seen=NOW, online=False, now=NOW + 60)
    assert not enrolment.ephemeral_expired(ephemeral=True, timeout=60, last_seen=NOW, online=True, now=NOW + 600)
    assert not enrolment.ephemeral_expired(ephemeral=False, timeout=60, last_seen=NOW, online=False, now=NOW + 600)


def test_reprs_hide_secrets() -> None:
    from wgpy.keys import PrivateKey
    from wgpy.management.api import ServerKeys
    from wgpy.management.server import RunningServer

    keys = ServerKeys(crypto.Ed25519PrivateKey.generate(), PrivateKey.generate())
    assert repr(keys) == "ServerKeys(<hidden>)"
    running = RunningServer("http://x", "wgat_secret", keys, None, None, "", None)  # type: ignore[arg-type]
    assert "wgat_secret" not in repr(running)
