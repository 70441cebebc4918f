"""Edges of proof of possession (wgpy.management.proof) that the mutation audit found untested.

Expected values come from the contract (docs/management-api.md, "Proof of possession": a timestamp *more than*
``PROOF_WINDOW = 60 s`` away is refused, a nonce already seen *within the window* is ``replayed_proof``, the nonce
is remembered *with the peer's public key*, ``X-Wgpy-Nonce`` is base64 of 16 bytes) and RFC 9110 section 5.5 (a
field value carries no leading or trailing whitespace). Headers are made with ``proof_headers``, whose output
``tests/management/test_proof.py`` checks against an independent computation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from wgpy.keys import PrivateKey
from wgpy.management.proof import (
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_PROOF,
    HEADER_TIMESTAMP,
    NonceCache,
    ProofError,
    VerifiedProof,
    proof_headers,
    verify_proof,
)

NOW = 1_800_000_000
WINDOW = 60  # the contract's PROOF_WINDOW, written out
NONCE = bytes(range(16))
PEER = PrivateKey(bytes([7]) * 32)
OTHER_PEER = PrivateKey(bytes([8]) * 32)
SERVER = PrivateKey(bytes([9]) * 32)
PATH = "/api/v1/peer/map"


def _headers(peer: PrivateKey = PEER, *, at: float = NOW, nonce: bytes = NONCE) -> dict[str, str]:
    return proof_headers(peer, SERVER.public_key(), "GET", PATH, b"", now=at, nonce=nonce)


def _verify(headers: dict[str, str], now: float) -> VerifiedProof:
    return verify_proof(headers, SERVER, "GET", PATH, b"", now=now)


@pytest.mark.parametrize("skew", [WINDOW, -WINDOW, WINDOW - 0.5, -(WINDOW - 0.5)])
def test_timestamp_exactly_at_the_window_is_accepted(skew: float) -> None:
    """The contract refuses a timestamp "more than 60 s away from its clock": 60 s away is still accepted."""
    assert _verify(_headers(), NOW + skew).public_key == PEER.public_key()


@pytest.mark.parametrize("skew", [WINDOW + 0.001, -(WINDOW + 0.001)])
def test_timestamp_just_past_the_window_is_stale(skew: float) -> None:
    """The contract: more than 60 s away (by any fraction of a second) is ``stale_proof``."""
    with pytest.raises(ProofError) as caught:
        _verify(_headers(), NOW + skew)
    assert caught.value.code == "stale_proof"


def test_a_proof_dated_in_the_future_is_remembered_until_it_can_no_longer_be_accepted() -> None:
    """The contract: a nonce seen within the window is refused. A proof dated 50 s ahead is accepted until 110 s
    from now, so its replay 100 s from now (and after an expiry sweep) must still be ``replayed_proof``."""
    cache = NonceCache()
    headers = _headers(at=NOW + 50)
    cache.remember(_verify(headers, NOW), NOW)
    later = NOW + 100
    replay = _verify(headers, later)  # the timestamp alone still admits it
    cache.expire(later)
    with pytest.raises(ProofError) as caught:
        cache.remember(replay, later)
    assert caught.value.code == "replayed_proof"


def test_replay_at_the_last_instant_of_the_window_is_refused() -> None:
    """The contract: the server "refuses a nonce it has already seen within the window", and a timestamp exactly
    60 s away is within it. A request replayed at exactly timestamp + 60 s must be ``replayed_proof`` (it was not:
    the nonce was forgotten at that instant, the last one at which its proof is accepted), and the nonce is kept
    until then."""
    cache = NonceCache()
    headers = _headers()
    cache.remember(_verify(headers, NOW), NOW)
    edge = NOW + WINDOW
    replay = _verify(headers, edge)  # accepted by the timestamp check (60 s is not more than 60 s)
    cache.expire(edge)  # a sweep at that instant keeps it
    with pytest.raises(ProofError) as caught:
        cache.remember(replay, edge)
    assert caught.value.code == "replayed_proof"


def test_the_same_nonce_from_two_peers_is_two_requests() -> None:
    """The contract: the nonce is remembered "with the peer's public key", so another peer that happens to use the
    same 16 bytes is not refused as a replay; the same peer's second use is."""
    cache = NonceCache()
    cache.remember(_verify(_headers(PEER), NOW), NOW)
    cache.remember(_verify(_headers(OTHER_PEER), NOW), NOW)
    assert len(cache) == 2
    with pytest.raises(ProofError) as caught:
        cache.remember(_verify(_headers(OTHER_PEER), NOW), NOW + 1)
    assert caught.value.code == "replayed_proof"


def test_expire_keeps_nonces_whose_proofs_are_still_acceptable() -> None:
    """A sweep at a time the proof is still accepted (59 s after its timestamp) must not forget its nonce."""
    cache = NonceCache()
    headers = _headers()
    cache.remember(_verify(headers, NOW), NOW)
    cache.expire(NOW + WINDOW - 1)
    assert len(cache) == 1
    with pytest.raises(ProofError) as caught:
        cache.remember(_verify(headers, NOW + WINDOW - 1), NOW + WINDOW - 1)
    assert caught.value.code == "replayed_proof"


def test_header_whitespace_is_not_part_of_the_value() -> None:
    """RFC 9110 section 5.5: leading and trailing whitespace is not part of a field value, so a proof whose header
    values are padded with spaces verifies."""
    padded = {name: f"  {value} " for name, value in _headers().items()}
    assert _verify(padded, NOW).nonce == NONCE


@pytest.mark.parametrize("header", [HEADER_NONCE, HEADER_PROOF, HEADER_KEY])
def test_base64_with_characters_outside_the_alphabet_is_refused(header: str) -> None:
    """The contract: these headers are base64 (RFC 4648 section 3.3: characters outside the alphabet are an error
    unless the specification says otherwise); a value with one inserted is ``bad_proof``, not silently cleaned."""
    headers = _headers()
    headers[header] = headers[header][:4] + "*" + headers[header][4:]
    with pytest.raises(ProofError) as caught:
        _verify(headers, NOW)
    assert caught.value.code == "bad_proof"


@pytest.mark.parametrize("size", [15, 17])
def test_nonce_must_be_sixteen_bytes(size: int) -> None:
    """The contract: ``X-Wgpy-Nonce`` is base64 of 16 random bytes; 15 or 17 is ``bad_proof`` even with a correct
    MAC (built here by hand over that nonce)."""
    nonce = bytes(range(size))
    shared = X25519PrivateKey.from_private_bytes(PEER.raw).exchange(
        X25519PublicKey.from_public_bytes(SERVER.public_key().raw)
    )
    key = hmac.new(shared, b"wgpy management proof v1", hashlib.blake2s).digest()
    message = b"\n".join(
        [b"GET", PATH.encode(), str(NOW).encode(), base64.b64encode(nonce), hashlib.sha256().hexdigest().encode()]
    )
    headers = {
        HEADER_KEY: PEER.public_key().to_base64(),
        HEADER_TIMESTAMP: str(NOW),
        HEADER_NONCE: base64.b64encode(nonce).decode(),
        HEADER_PROOF: base64.b64encode(hmac.new(key, message, hashlib.blake2s).digest()).decode(),
    }
    with pytest.raises(ProofError) as caught:
        _verify(headers, NOW)
    assert caught.value.code == "bad_proof"
