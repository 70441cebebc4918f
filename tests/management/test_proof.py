"""Proof of possession (wgpy.management.proof): the formula checked against an independent computation, and every
way a proof can be wrong refused with its code."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from wgpy.keys import PrivateKey, PublicKey
from wgpy.management.proof import (
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_PROOF,
    HEADER_TIMESTAMP,
    PROOF_WINDOW,
    NonceCache,
    ProofError,
    proof_headers,
    verify_proof,
)

NOW = 1_800_000_000.0
NONCE = bytes(range(16))
PEER = PrivateKey(bytes([7]) * 32)
SERVER = PrivateKey(bytes([9]) * 32)
BODY = b'{"name":"laptop"}'


def _headers(**overrides: str) -> dict[str, str]:
    headers = proof_headers(PEER, SERVER.public_key(), "POST", "/api/v1/peer/endpoint", BODY, now=NOW, nonce=NONCE)
    headers.update(overrides)
    return headers


def test_proof_matches_an_independent_computation() -> None:
    # Independent of wgpy.crypto: cryptography's X25519 and the standard library's HMAC over BLAKE2s.
    shared = X25519PrivateKey.from_private_bytes(PEER.raw).exchange(
        X25519PublicKey.from_public_bytes(SERVER.public_key().raw)
    )
    key = hmac.new(shared, b"wgpy management proof v1", hashlib.blake2s).digest()
    message = b"\n".join(
        [
            b"POST",
            b"/api/v1/peer/endpoint",
            str(int(NOW)).encode(),
            base64.b64encode(NONCE),
            hashlib.sha256(BODY).hexdigest().encode(),
        ]
    )
    expected = hmac.new(key, message, hashlib.blake2s).digest()
    headers = _headers()
    assert base64.b64decode(headers[HEADER_PROOF]) == expected
    assert headers[HEADER_KEY] == PEER.public_key().to_base64()


def test_valid_proof_verifies_with_the_server_key() -> None:
    proof = verify_proof(_headers(), SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW + 5)
    assert proof.public_key == PEER.public_key()
    assert proof.nonce == NONCE


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/v1/peer/endpoint", BODY),
        ("POST", "/api/v1/peer/logout", BODY),
        ("POST", "/api/v1/peer/endpoint?x=1", BODY),
        ("POST", "/api/v1/peer/endpoint", BODY + b" "),
    ],
)
def test_proof_is_bound_to_method_path_and_body(method: str, path: str, body: bytes) -> None:
    with pytest.raises(ProofError) as caught:
        verify_proof(_headers(), SERVER, method, path, body, now=NOW)
    assert caught.value.code == "bad_proof"


def test_proof_made_for_another_server_key_fails() -> None:
    other = PrivateKey(bytes([11]) * 32)
    with pytest.raises(ProofError) as caught:
        verify_proof(_headers(), other, "POST", "/api/v1/peer/endpoint", BODY, now=NOW)
    assert caught.value.code == "bad_proof"


def test_token_of_another_peer_is_refused() -> None:
    someone = PrivateKey(bytes([13]) * 32).public_key()
    with pytest.raises(ProofError, match="another key"):
        verify_proof(_headers(), SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW, expected_key=someone)


def test_claimed_key_swapped_in_headers_fails() -> None:
    # An attacker with a copy of the request but not the private key puts its own key in the header.
    intruder = PrivateKey(bytes([15]) * 32).public_key()
    with pytest.raises(ProofError) as caught:
        verify_proof(
            _headers(**{HEADER_KEY: intruder.to_base64()}), SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW
        )
    assert caught.value.code == "bad_proof"


@pytest.mark.parametrize("skew", [PROOF_WINDOW + 1, -PROOF_WINDOW - 1])
def test_stale_timestamp_is_refused(skew: float) -> None:
    with pytest.raises(ProofError) as caught:
        verify_proof(_headers(), SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW + skew)
    assert caught.value.code == "stale_proof"


@pytest.mark.parametrize(
    "overrides",
    [
        {HEADER_TIMESTAMP: "-5"},
        {HEADER_TIMESTAMP: "1e9"},
        {HEADER_TIMESTAMP: "٣"},  # an Arabic-Indic digit: isdigit() but not ASCII
        {HEADER_NONCE: "AAAA"},
        {HEADER_NONCE: "not base64!"},
        {HEADER_PROOF: base64.b64encode(bytes(31)).decode()},
        {HEADER_KEY: "é"},
        {HEADER_KEY: base64.b64encode(bytes(32)).decode()},  # low-order point: no shared secret
    ],
)
def test_malformed_headers_are_one_clear_error(overrides: dict[str, str]) -> None:
    with pytest.raises(ProofError) as caught:
        verify_proof(_headers(**overrides), SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW)
    assert caught.value.code in ("bad_proof", "stale_proof")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("missing", [HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_PROOF])
def test_missing_header(missing: str) -> None:
    headers = _headers()
    del headers[missing]
    with pytest.raises(ProofError) as caught:
        verify_proof(headers, SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW)
    assert caught.value.code == "missing_proof"


def test_errors_never_carry_key_material() -> None:
    headers = _headers(**{HEADER_PROOF: base64.b64encode(bytes(32)).decode()})
    with pytest.raises(ProofError) as caught:
        verify_proof(headers, SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW)
    text = str(caught.value)
    for secret in (PEER.to_base64(), SERVER.to_base64(), _headers()[HEADER_PROOF]):
        assert secret not in text


def test_nonce_cache_refuses_a_replay_within_the_window_only() -> None:
    cache = NonceCache()
    proof = verify_proof(_headers(), SERVER, "POST", "/api/v1/peer/endpoint", BODY, now=NOW)
    cache.remember(proof, NOW)
    with pytest.raises(ProofError) as caught:
        cache.remember(proof, NOW + 1)
    assert caught.value.code == "replayed_proof"
    # Past the window the timestamp check refuses the request anyway, so the entry may go.
    cache.expire(NOW + PROOF_WINDOW + 1)
    assert len(cache) == 0


def test_nonce_cache_is_bounded() -> None:
    cache = NonceCache(max_entries=2)
    for i in range(2):
        headers = proof_headers(PEER, SERVER.public_key(), "GET", "/", b"", now=NOW, nonce=bytes([i]) * 16)
        cache.remember(verify_proof(headers, SERVER, "GET", "/", b"", now=NOW), NOW)
    headers = proof_headers(PEER, SERVER.public_key(), "GET", "/", b"", now=NOW, nonce=bytes([9]) * 16)
    with pytest.raises(ProofError) as caught:
        cache.remember(verify_proof(headers, SERVER, "GET", "/", b"", now=NOW), NOW)
    assert caught.value.code == "busy"
    assert len(cache) == 2


def test_public_key_type_round_trip() -> None:
    assert PublicKey.from_base64(_headers()[HEADER_KEY]) == PEER.public_key()
