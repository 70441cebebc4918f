"""Edges of the token rules (wgpy.management.tokens) that the mutation audit found untested.

Expected values come from the contract (docs/management-api.md, "Tokens": EdDSA, the claims ``iss``="wgpy", ``sub``,
``wg``, ``typ``, ``iat``, ``exp``, ``jti``, and ``fam`` on refresh tokens; 1 h and 7 days), RFC 7519 (JWT claim
semantics), RFC 8725 (JWT best practices: the verifier pins its algorithms) and RFC 6749 section 10.4 with the
OAuth 2.0 Security BCP (refresh-token rotation and reuse detection). Tokens are built here by hand (base64url and
the ``cryptography`` Ed25519 key) so that a claim can be left out or changed without the code under test.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from wgpy import crypto
from wgpy.management import tokens
from wgpy.management.tokens import RefreshDecision, RefreshRow, TokenClaims, TokenError

NOW = 1_800_000_000
KEY = crypto.Ed25519PrivateKey.generate()
OTHER = crypto.Ed25519PrivateKey.generate()
WG = "A" * 43 + "="


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _claims(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": "wgpy",
        "sub": "p1",
        "wg": WG,
        "typ": "access",
        "iat": NOW,
        "exp": NOW + 3600,
        "jti": "j1",
    }
    for name, value in changes.items():
        if value is _DROP:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


_DROP = object()


def _signed(
    claims: dict[str, object], key: crypto.Ed25519PrivateKey = KEY, header: dict[str, object] | None = None
) -> str:
    """A JWS compact serialisation (RFC 7515 section 7.1) signed with Ed25519 (RFC 8037), built without PyJWT."""
    head = {"alg": "EdDSA", "typ": "JWT", **(header or {})}
    signing_input = _b64url(json.dumps(head).encode()) + "." + _b64url(json.dumps(claims).encode())
    return signing_input + "." + _b64url(key.sign(signing_input.encode()))


def _code(token: object, **kwargs: object) -> str:
    options: dict[str, object] = {"expected_type": "access", "now": NOW + 10}
    options.update(kwargs)
    with pytest.raises(TokenError) as caught:
        tokens.verify_token(token, KEY.public_key(), **options)  # type: ignore[arg-type]
    return caught.value.code


def test_a_hand_built_token_verifies() -> None:
    """The baseline of this file: a token with exactly the contract's claims verifies (so refusals below are about
    the one change each makes)."""
    claims = tokens.verify_token(_signed(_claims()), KEY.public_key(), expected_type="access", now=NOW + 10)
    assert claims == TokenClaims("p1", WG, "access", NOW, NOW + 3600, "j1", None)


def test_unsigned_token_alg_none_is_refused() -> None:
    """RFC 8725 section 3.1/2.1: a verifier must not accept ``alg: none``; the contract pins EdDSA."""
    signing_input = _b64url(b'{"alg":"none","typ":"JWT"}') + "." + _b64url(json.dumps(_claims()).encode())
    assert _code(signing_input + ".") == "malformed"


def test_hs256_keyed_with_the_public_key_is_refused() -> None:
    """RFC 8725 section 2.1 and 3.1 (algorithm confusion): an HMAC token whose secret is the management key's public
    half (raw and PEM, both of which an attacker knows) must not verify; only EdDSA is accepted."""
    public = KEY.public_key()
    for secret in (
        public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    ):
        signing_input = _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + _b64url(json.dumps(_claims()).encode())
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert _code(signing_input + "." + _b64url(mac)) == "malformed"


def test_other_issuer_and_missing_issuer_are_refused() -> None:
    """RFC 7519 section 4.1.1 and the contract (``iss`` = "wgpy"): a correctly signed token of another issuer, or
    with no issuer, is not one of ours."""
    assert _code(_signed(_claims(iss="wgpy2"))) == "malformed"
    assert _code(_signed(_claims(iss=_DROP))) == "malformed"


@pytest.mark.parametrize("claim", ["sub", "wg", "typ", "iat", "exp", "jti"])
def test_each_required_claim_missing_is_malformed(claim: str) -> None:
    """The contract's table lists the claims every token carries; a signed token without one is refused as
    ``malformed`` (a clean TokenError, never a KeyError)."""
    assert _code(_signed(_claims(**{claim: _DROP}))) == "malformed"


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": str(NOW + 3600)},
        {"exp": True},
        {"iat": float(NOW)},
        {"sub": 1},
        {"wg": None},
        {"jti": 7},
        {"typ": "admin"},
    ],
)
def test_claims_of_the_wrong_type_are_malformed(changes: dict[str, object]) -> None:
    """RFC 7519 section 2 and 4.1.4: ``exp``/``iat`` are NumericDate (JSON numbers; here integers, as issued), the
    other claims strings; a token whose claims are not is refused."""
    assert _code(_signed(_claims(**changes))) == "malformed"


def test_refresh_token_family_claim() -> None:
    """The contract: a refresh token carries ``fam`` (a string, the family id). Without it, or with a non-string
    one, it is malformed; with it, it verifies and ``fam`` is returned."""
    refresh = {"typ": "refresh", "exp": NOW + 7 * 86400}
    assert _code(_signed(_claims(**refresh)), expected_type="refresh") == "malformed"
    assert _code(_signed(_claims(**refresh, fam=5)), expected_type="refresh") == "malformed"
    claims = tokens.verify_token(
        _signed(_claims(**refresh, fam="f1")), KEY.public_key(), expected_type="refresh", now=NOW + 10
    )
    assert claims.fam == "f1" and claims.typ == "refresh"
    # and an access token is still the wrong type where a refresh token is needed
    assert _code(_signed(_claims()), expected_type="refresh") == "wrong_type"


def test_expiry_boundary_has_no_leeway() -> None:
    """RFC 7519 section 4.1.4: ``exp`` is the time *on or after which* the token must not be accepted; the contract
    sets no leeway. Valid a moment before ``exp``, refused at ``exp`` and a minute after it."""
    token = _signed(_claims())
    exp = NOW + 3600
    assert tokens.verify_token(token, KEY.public_key(), expected_type="access", now=exp - 0.001).exp == exp
    assert _code(token, now=exp) == "expired"
    assert _code(token, now=exp + 30) == "expired"
    assert _code(token, now=exp + 61) == "expired"


def test_key_binding_compares_the_token_key_with_the_header_key() -> None:
    """The contract: the access token's ``wg`` claim must equal ``X-Wgpy-Key`` (``other_key`` otherwise); the same
    key in both verifies."""
    token = _signed(_claims())
    other = "B" * 43 + "="
    assert _code(token, expected_key=other) == "other_key"
    assert tokens.verify_token(token, KEY.public_key(), expected_type="access", now=NOW, expected_key=WG).wg == WG


def test_rotation_key_list_accepts_either_key_and_nothing_else() -> None:
    """The contract, "Rotating the signing key": tokens signed with the next (or previous) key verify as well; a
    token signed by neither key has a bad signature."""
    mine, theirs = _signed(_claims(), KEY), _signed(_claims(), OTHER)
    keys = [KEY.public_key(), OTHER.public_key()]
    for token in (mine, theirs):
        assert tokens.verify_token(token, keys, expected_type="access", now=NOW).sub == "p1"
    stranger = crypto.Ed25519PrivateKey.generate()
    with pytest.raises(TokenError) as caught:
        tokens.verify_token(_signed(_claims(), stranger), keys, expected_type="access", now=NOW)
    assert caught.value.code == "bad_signature"


def _token_of_length(length: int) -> str:
    """A valid token of exactly ``length`` characters (a longer ``jti``, and a ``kid`` header to hit every length)."""
    for kid in range(4):
        for size in range(length):
            token = _signed(_claims(jti="x" * size), header={"kid": "k" * kid})
            if len(token) == length:
                return token
            if len(token) > length:
                break
    raise AssertionError(f"no token of {length} characters")


def test_token_size_bound_and_type() -> None:
    """Refused before parsing: a token over ``MAX_TOKEN_SIZE`` characters, non-ASCII text, or something that is
    not text (RFC 7519 section 1: a JWT is a string; a valid token as bytes is not accepted). A token of exactly
    ``MAX_TOKEN_SIZE`` characters is parsed (and here verifies)."""
    longest = _token_of_length(tokens.MAX_TOKEN_SIZE)
    assert tokens.verify_token(longest, KEY.public_key(), expected_type="access", now=NOW).sub == "p1"
    assert _code(_token_of_length(tokens.MAX_TOKEN_SIZE + 1)) == "malformed"
    assert _code(_signed(_claims())[:-2] + "\u00e9\u00e9") == "malformed"
    assert _code(_signed(_claims()).encode()) == "malformed"


def _row(**changes: object) -> RefreshRow:
    fields: dict[str, object] = {
        "jti": "j1",
        "family": "fam1",
        "peer_id": "p1",
        "expires_at": NOW + 100,
        "used_at": None,
        "revoked": False,
    }
    fields.update(changes)
    return RefreshRow(**fields)  # type: ignore[arg-type]


CLAIMS = TokenClaims("p1", WG, "refresh", NOW, NOW + 100, "j1", "fam1")


@pytest.mark.parametrize("changes", [{"jti": "j2"}, {"family": "fam2"}, {"peer_id": "p2"}])
def test_refresh_row_must_match_every_field_of_the_token(changes: dict[str, object]) -> None:
    """The contract: ``invalid_token`` for a refresh token not stored *as presented*: a row of another token id,
    family or peer is not this token's row."""
    assert tokens.decide_refresh(_row(**changes), CLAIMS, NOW) is RefreshDecision.UNKNOWN


def test_refresh_decisions_in_order() -> None:
    """RFC 6749 section 10.4 and the OAuth 2.0 Security BCP (rotation with reuse detection), and the contract:
    an unused, unrevoked, unexpired token rotates; a revoked family stays revoked; a used token presented again is
    reuse (whether or not it has expired since: the copy was stolen either way); expiry is ``now >= expires_at``."""
    assert tokens.decide_refresh(_row(), CLAIMS, NOW + 99.9) is RefreshDecision.OK
    assert tokens.decide_refresh(_row(revoked=True), CLAIMS, NOW) is RefreshDecision.REVOKED
    assert tokens.decide_refresh(_row(used_at=NOW - 1), CLAIMS, NOW) is RefreshDecision.REUSED
    assert tokens.decide_refresh(_row(used_at=NOW - 1), CLAIMS, NOW + 500) is RefreshDecision.REUSED
    assert tokens.decide_refresh(_row(), CLAIMS, NOW + 100) is RefreshDecision.EXPIRED
    assert tokens.decide_refresh(_row(), CLAIMS, NOW + 101) is RefreshDecision.EXPIRED


def test_expiry_is_judged_by_the_callers_clock_only() -> None:
    """RFC 7519 section 4.1.4 judges ``exp`` against "the current date/time", which for the server is its injected
    clock (docs/management-api.md: the server's clock; the tests step it): a token issued and checked in 2001 is
    valid at its ``now`` although the machine's clock is far past its ``exp``, and expired at its ``exp``."""
    then = 1_000_000_000
    token = _signed(_claims(iat=then, exp=then + 3600))
    assert tokens.verify_token(token, KEY.public_key(), expected_type="access", now=then + 10).exp == then + 3600
    assert _code(token, now=then + 3600) == "expired"


def test_the_retry_grace_bounds() -> None:
    """A used token may be a retry up to and including RETRY_GRACE seconds after its use (docs/management-api.md,
    "Tokens"), never when its family is revoked, once it has expired, or when it was never used (that is a plain
    rotation, not a retry)."""
    used = NOW - 10
    assert tokens.within_retry_grace(_row(used_at=used), used)
    assert tokens.within_retry_grace(_row(used_at=used), used + tokens.RETRY_GRACE)
    assert not tokens.within_retry_grace(_row(used_at=used), used + tokens.RETRY_GRACE + 0.001)
    assert not tokens.within_retry_grace(_row(used_at=used), used - 1)  # a clock that went back: not ours to trust
    assert not tokens.within_retry_grace(_row(used_at=used, revoked=True), used + 1)
    assert not tokens.within_retry_grace(_row(used_at=used, expires_at=used + 1), used + 1)
    assert not tokens.within_retry_grace(_row(), NOW)
