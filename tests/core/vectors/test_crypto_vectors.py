"""Published test vectors, run against both the fast backend and the pure-Python reference.

Every vector in ``vectors/*.json`` is checked twice: once through the library wgpy uses in production
(``wgpy.crypto`` where its API can express the input, otherwise ``cryptography`` / ``pynacl`` / ``hashlib``
directly) and once through ``wgpy.crypto.reference``. The backend run doubles as a check of our transcription
of the vectors; the reference run checks the reference. Hypothesis tests then compare the two on random
inputs, and the whitepaper's HASH/MAC/HMAC/KDF of ``wgpy.crypto`` are rebuilt from the reference.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

import wgpy.crypto as wc
from wgpy.crypto import _backend
from wgpy.crypto import reference as ref

VECTORS_DIR = Path(__file__).resolve().parents[3] / "vectors"

Vector = dict[str, Any]

# The reference is slow on purpose: keep the random comparisons few.
_RANDOM = settings(max_examples=25, deadline=None)


@cache
def _load(name: str) -> dict[str, Any]:
    with (VECTORS_DIR / name).open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def _cases(name: str, key: str = "vectors") -> list[Any]:
    """The vectors under ``key`` in ``vectors/<name>``, each wrapped in a pytest.param with a readable id."""
    entries: list[Vector] = _load(name)[key]
    params: list[Any] = []
    for entry in entries:
        if "tcId" in entry:
            case_id = f"tc{entry['tcId']}"
        else:
            case_id = str(entry["source"]).replace("§", "")
        params.append(pytest.param(entry, id=case_id))
    return params


def _b(value: str) -> bytes:
    return bytes.fromhex(value)


# ---------------------------------------------------------------------------------------------------------
# Backend helpers: RFC 8439 inputs that wgpy.crypto's API cannot express go to `cryptography` directly.
# ---------------------------------------------------------------------------------------------------------


def _backend_chacha20(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    """ChaCha20 from OpenSSL, whose 16-byte nonce is the LE32 block counter followed by RFC 8439's nonce."""
    algorithm = algorithms.ChaCha20(key, counter.to_bytes(4, "little") + nonce)
    return Cipher(algorithm, mode=None).encryptor().update(data)


def _is_wireguard_nonce(nonce: bytes) -> bool:
    """True for nonces ``wgpy.crypto.aead_seal`` can express: 4 zero bytes then a 64-bit LE counter."""
    return len(nonce) == 12 and nonce[:4] == b"\x00" * 4


def _backend_aead_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    if _is_wireguard_nonce(nonce):
        return wc.aead_seal(key, int.from_bytes(nonce[4:], "little"), plaintext, ad)
    return _backend.ChaCha20Poly1305(key).encrypt(nonce, plaintext, ad)


def _backend_aead_open(key: bytes, nonce: bytes, data: bytes, ad: bytes) -> bytes:
    if _is_wireguard_nonce(nonce):
        return wc.aead_open(key, int.from_bytes(nonce[4:], "little"), data, ad)
    return _backend.ChaCha20Poly1305(key).decrypt(nonce, data, ad)


def _iterate_x25519(function: Any, iterations: int, k: bytes, u: bytes) -> bytes:
    """RFC 7748 §5.2's iterated test: k becomes X25519(k, u) and u the old k, ``iterations`` times."""
    for _ in range(iterations):
        k, u = function(k, u), k
    return k


# ---------------------------------------------------------------------------------------------------------
# RFC 8439: ChaCha20, Poly1305, AEAD
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("rfc8439_quarter_round.json", "quarter_round"))
def test_quarter_round(vector: Vector) -> None:
    # No backend exposes a bare quarter round; the block-function vectors cover it through OpenSSL.
    words = [int(w, 16) for w in vector["input"]]
    assert ref.quarter_round(*words) == tuple(int(w, 16) for w in vector["output"])


@pytest.mark.parametrize("vector", _cases("rfc8439_quarter_round.json", "state_quarter_round"))
def test_quarter_round_on_state(vector: Vector) -> None:
    state = [int(w, 16) for w in vector["input"]]
    x, y, z, w = vector["indices"]
    state[x], state[y], state[z], state[w] = ref.quarter_round(state[x], state[y], state[z], state[w])
    assert state == [int(word, 16) for word in vector["output"]]


@pytest.mark.parametrize("vector", _cases("rfc8439_chacha20_block.json"))
def test_chacha20_block(vector: Vector) -> None:
    key, nonce, counter = _b(vector["key"]), _b(vector["nonce"]), vector["counter"]
    block = _b(vector["block"])
    assert _backend_chacha20(key, counter, nonce, bytes(64)) == block
    assert ref.chacha20_block(key, counter, nonce) == block


@pytest.mark.parametrize("vector", _cases("rfc8439_chacha20.json"))
def test_chacha20_encrypt(vector: Vector) -> None:
    key, nonce, counter = _b(vector["key"]), _b(vector["nonce"]), vector["counter"]
    plaintext, ciphertext = _b(vector["plaintext"]), _b(vector["ciphertext"])
    assert _backend_chacha20(key, counter, nonce, plaintext) == ciphertext
    assert ref.chacha20_encrypt(key, counter, nonce, plaintext) == ciphertext
    assert ref.chacha20_encrypt(key, counter, nonce, ciphertext) == plaintext


@pytest.mark.parametrize("vector", _cases("rfc8439_poly1305.json"))
def test_poly1305(vector: Vector) -> None:
    key, message, tag = _b(vector["key"]), _b(vector["message"]), _b(vector["tag"])
    assert Poly1305.generate_tag(key, message) == tag
    assert ref.poly1305_mac(key, message) == tag


@pytest.mark.parametrize("vector", _cases("rfc8439_poly1305_key_gen.json"))
def test_poly1305_key_gen(vector: Vector) -> None:
    key, nonce, one_time_key = _b(vector["key"]), _b(vector["nonce"]), _b(vector["one_time_key"])
    assert _backend_chacha20(key, 0, nonce, bytes(32)) == one_time_key
    assert ref.poly1305_key_gen(key, nonce) == one_time_key


@pytest.mark.parametrize("vector", _cases("rfc8439_aead.json"))
def test_chacha20poly1305_rfc(vector: Vector) -> None:
    key, nonce, ad = _b(vector["key"]), _b(vector["nonce"]), _b(vector["ad"])
    plaintext, sealed = _b(vector["plaintext"]), _b(vector["ciphertext"]) + _b(vector["tag"])

    assert _backend_aead_seal(key, nonce, plaintext, ad) == sealed
    assert _backend_aead_open(key, nonce, sealed, ad) == plaintext
    assert ref.chacha20poly1305_encrypt(key, nonce, plaintext, ad) == sealed
    assert ref.chacha20poly1305_decrypt(key, nonce, sealed, ad) == plaintext
    # The intermediate one-time key the RFC prints.
    assert ref.poly1305_key_gen(key, nonce) == _b(vector["one_time_key"])

    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(InvalidTag):
        _backend_aead_open(key, nonce, tampered, ad)
    with pytest.raises(InvalidTag):
        ref.chacha20poly1305_decrypt(key, nonce, tampered, ad)


@pytest.mark.parametrize("vector", _cases("wycheproof_chacha20_poly1305.json", "tests"))
def test_chacha20poly1305_wycheproof(vector: Vector) -> None:
    key, nonce, ad, msg = _b(vector["key"]), _b(vector["iv"]), _b(vector["aad"]), _b(vector["msg"])
    sealed = _b(vector["ct"]) + _b(vector["tag"])

    if "InvalidNonceSize" in vector["flags"]:
        # Only 96-bit nonces exist in RFC 8439; both sides must refuse the call, not guess a layout.
        with pytest.raises(ValueError):
            _backend.ChaCha20Poly1305(key).encrypt(nonce, msg, ad)
        with pytest.raises(ValueError):
            ref.chacha20poly1305_encrypt(key, nonce, msg, ad)
        return
    if vector["result"] == "valid":
        assert _backend_aead_seal(key, nonce, msg, ad) == sealed
        assert _backend_aead_open(key, nonce, sealed, ad) == msg
        assert ref.chacha20poly1305_encrypt(key, nonce, msg, ad) == sealed
        assert ref.chacha20poly1305_decrypt(key, nonce, sealed, ad) == msg
    else:
        with pytest.raises(InvalidTag):
            _backend_aead_open(key, nonce, sealed, ad)
        with pytest.raises(InvalidTag):
            ref.chacha20poly1305_decrypt(key, nonce, sealed, ad)


# ---------------------------------------------------------------------------------------------------------
# draft-irtf-cfrg-xchacha-03: HChaCha20, XChaCha20, AEAD_XChaCha20_Poly1305
# ---------------------------------------------------------------------------------------------------------


def _check_subkey_against_libsodium(key: bytes, nonce16: bytes, subkey: bytes) -> None:
    """No backend exposes HChaCha20, but libsodium's XChaCha20-Poly1305 under (key, nonce16 || n8) must equal
    OpenSSL's ChaCha20-Poly1305 under (subkey, 0^4 || n8) (draft §2.3): an independent check of ``subkey``."""
    tail = bytes(range(8))
    sample = b"HChaCha20 subkey check"
    expected = _backend.ChaCha20Poly1305(subkey).encrypt(b"\x00" * 4 + tail, sample, b"")
    assert wc.xaead_seal(key, nonce16 + tail, sample, b"") == expected


@pytest.mark.parametrize("vector", _cases("xchacha_hchacha20.json"))
def test_hchacha20(vector: Vector) -> None:
    key, nonce, subkey = _b(vector["key"]), _b(vector["nonce"]), _b(vector["subkey"])
    _check_subkey_against_libsodium(key, nonce, subkey)
    assert ref.hchacha20(key, nonce) == subkey


@pytest.mark.parametrize("vector", _cases("xchacha_stream.json"))
def test_xchacha20_stream(vector: Vector) -> None:
    key, nonce, counter = _b(vector["key"]), _b(vector["nonce"]), vector["counter"]
    plaintext, ciphertext = _b(vector["plaintext"]), _b(vector["ciphertext"])

    subkey = ref.hchacha20(key, nonce[:16])
    _check_subkey_against_libsodium(key, nonce[:16], subkey)
    assert _backend_chacha20(subkey, counter, b"\x00" * 4 + nonce[16:], plaintext) == ciphertext
    if counter == 1:
        # The AEAD encrypts from block 1 (draft §2.3), so libsodium's AEAD output is this stream directly.
        assert wc.xaead_seal(key, nonce, plaintext, b"")[: len(plaintext)] == ciphertext
    assert ref.xchacha20_encrypt(key, nonce, plaintext, counter) == ciphertext


@pytest.mark.parametrize("vector", _cases("xchacha_aead.json"))
def test_xchacha20poly1305_draft(vector: Vector) -> None:
    key, nonce, ad = _b(vector["key"]), _b(vector["nonce"]), _b(vector["ad"])
    plaintext, sealed = _b(vector["plaintext"]), _b(vector["ciphertext"]) + _b(vector["tag"])

    assert wc.xaead_seal(key, nonce, plaintext, ad) == sealed
    assert wc.xaead_open(key, nonce, sealed, ad) == plaintext
    assert ref.xchacha20poly1305_encrypt(key, nonce, plaintext, ad) == sealed
    assert ref.xchacha20poly1305_decrypt(key, nonce, sealed, ad) == plaintext
    subkey = ref.hchacha20(key, nonce[:16])
    assert ref.poly1305_key_gen(subkey, b"\x00" * 4 + nonce[16:]) == _b(vector["one_time_key"])


@pytest.mark.parametrize("vector", _cases("wycheproof_xchacha20_poly1305.json", "tests"))
def test_xchacha20poly1305_wycheproof(vector: Vector) -> None:
    key, nonce, ad, msg = _b(vector["key"]), _b(vector["iv"]), _b(vector["aad"]), _b(vector["msg"])
    sealed = _b(vector["ct"]) + _b(vector["tag"])

    if "InvalidNonceSize" in vector["flags"]:
        # A wrong nonce length is local misuse when sealing (ValueError) and a failed open when opening.
        with pytest.raises(ValueError):
            wc.xaead_seal(key, nonce, msg, ad)
        with pytest.raises(InvalidTag):
            wc.xaead_open(key, nonce, sealed, ad)
        with pytest.raises(ValueError):
            ref.xchacha20poly1305_encrypt(key, nonce, msg, ad)
        return
    if vector["result"] == "valid":
        assert wc.xaead_seal(key, nonce, msg, ad) == sealed
        assert wc.xaead_open(key, nonce, sealed, ad) == msg
        assert ref.xchacha20poly1305_encrypt(key, nonce, msg, ad) == sealed
        assert ref.xchacha20poly1305_decrypt(key, nonce, sealed, ad) == msg
    else:
        with pytest.raises(InvalidTag):
            wc.xaead_open(key, nonce, sealed, ad)
        with pytest.raises(InvalidTag):
            ref.xchacha20poly1305_decrypt(key, nonce, sealed, ad)


# ---------------------------------------------------------------------------------------------------------
# RFC 7748: X25519
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("rfc7748_x25519.json"))
def test_x25519_rfc(vector: Vector) -> None:
    scalar, u, output = _b(vector["scalar"]), _b(vector["u"]), _b(vector["output"])
    assert _backend.x25519(scalar, u) == output
    assert wc.dh(scalar, u) == output
    assert ref.x25519(scalar, u) == output


@pytest.mark.parametrize("vector", _cases("rfc7748_x25519.json", "iterated"))
def test_x25519_iterated(vector: Vector) -> None:
    k, u, iterations, result = _b(vector["k"]), _b(vector["u"]), vector["iterations"], _b(vector["result"])
    assert _iterate_x25519(_backend.x25519, iterations, k, u) == result
    assert _iterate_x25519(ref.x25519, iterations, k, u) == result


@pytest.mark.parametrize("vector", _cases("rfc7748_x25519.json", "diffie_hellman"))
def test_x25519_diffie_hellman(vector: Vector) -> None:
    alice_private, alice_public = _b(vector["alice_private"]), _b(vector["alice_public"])
    bob_private, bob_public = _b(vector["bob_private"]), _b(vector["bob_public"])
    shared = _b(vector["shared_secret"])

    assert wc.dh_public(alice_private) == alice_public
    assert wc.dh_public(bob_private) == bob_public
    assert wc.dh(alice_private, bob_public) == shared
    assert wc.dh(bob_private, alice_public) == shared

    assert ref.x25519_base(alice_private) == alice_public
    assert ref.x25519_base(bob_private) == bob_public
    assert ref.x25519(alice_private, bob_public) == shared
    assert ref.x25519(bob_private, alice_public) == shared


@pytest.mark.parametrize("vector", _cases("wycheproof_x25519.json", "tests"))
def test_x25519_wycheproof(vector: Vector) -> None:
    private, public, shared = _b(vector["private"]), _b(vector["public"]), _b(vector["shared"])
    # The raw function is defined for every input (RFC 7748 §5), including twist and non-canonical points.
    assert ref.x25519(private, public) == shared
    if shared == bytes(32):
        # RFC 7748 §6.1 / whitepaper §5.4: the DH layer refuses the all-zero output of a low-order point.
        with pytest.raises(InvalidTag):
            wc.dh(private, public)
    else:
        assert wc.dh(private, public) == shared


# ---------------------------------------------------------------------------------------------------------
# RFC 7693: BLAKE2s
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("blake2s.json"))
def test_blake2s(vector: Vector) -> None:
    data, key, digest = _b(vector["data"]), _b(vector["key"]), _b(vector["digest"])
    size = vector["digest_size"]
    assert hashlib.blake2s(data, digest_size=size, key=key).digest() == digest
    if not key and size == wc.HASH_SIZE:
        assert wc.hash(data) == digest
    assert ref.blake2s(data, digest_size=size, key=key) == digest


# ---------------------------------------------------------------------------------------------------------
# The whitepaper's functions (§5.4) rebuilt from the reference
# ---------------------------------------------------------------------------------------------------------


def _reference_hkdf(key: bytes, data: bytes, n: int) -> tuple[bytes, ...]:
    """HKDF (RFC 5869) over the reference HMAC-BLAKE2s, as the whitepaper's KDF_n (§5.4) defines it."""
    prk = ref.hmac_blake2s(key, data)
    outputs: list[bytes] = []
    previous = b""
    for i in range(1, n + 1):
        previous = ref.hmac_blake2s(prk, previous + bytes([i]))
        outputs.append(previous)
    return tuple(outputs)


_KDF_INPUTS = [
    (b"", b""),
    (bytes(32), b""),
    (bytes(range(32)), b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"),
    (b"\xff" * 32, bytes(range(200))),
]


@pytest.mark.parametrize(("key", "data"), _KDF_INPUTS)
def test_kdf_matches_reference_hkdf(key: bytes, data: bytes) -> None:
    assert (wc.kdf1(key, data),) == _reference_hkdf(key, data, 1)
    assert wc.kdf2(key, data) == _reference_hkdf(key, data, 2)
    assert wc.kdf3(key, data) == _reference_hkdf(key, data, 3)


@pytest.mark.parametrize(("key", "data"), _KDF_INPUTS)
def test_hash_mac_hmac_match_reference(key: bytes, data: bytes) -> None:
    assert wc.hash(data) == ref.blake2s(data)
    assert wc.mac(key, data) == ref.blake2s(data, digest_size=wc.MAC_SIZE, key=key)
    assert wc.hmac(key, data) == ref.hmac_blake2s(key, data)


# ---------------------------------------------------------------------------------------------------------
# Random inputs: reference against backend
# ---------------------------------------------------------------------------------------------------------

_key32 = st.binary(min_size=32, max_size=32)


@_RANDOM
@given(
    key=_key32,
    counter=st.integers(min_value=0, max_value=2**64 - 1),
    plaintext=st.binary(max_size=300),
    ad=st.binary(max_size=64),
)
def test_random_aead(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> None:
    sealed = wc.aead_seal(key, counter, plaintext, ad)
    assert ref.chacha20poly1305_encrypt(key, wc.aead_nonce(counter), plaintext, ad) == sealed
    assert ref.chacha20poly1305_decrypt(key, wc.aead_nonce(counter), sealed, ad) == plaintext


@_RANDOM
@given(
    key=_key32,
    nonce=st.binary(min_size=24, max_size=24),
    plaintext=st.binary(max_size=300),
    ad=st.binary(max_size=64),
)
def test_random_xaead(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> None:
    sealed = wc.xaead_seal(key, nonce, plaintext, ad)
    assert ref.xchacha20poly1305_encrypt(key, nonce, plaintext, ad) == sealed
    assert ref.xchacha20poly1305_decrypt(key, nonce, sealed, ad) == plaintext


@_RANDOM
@given(key=_key32, message=st.binary(max_size=300))
def test_random_poly1305(key: bytes, message: bytes) -> None:
    assert ref.poly1305_mac(key, message) == Poly1305.generate_tag(key, message)


@_RANDOM
@given(private=_key32, peer_private=_key32)
def test_random_x25519(private: bytes, peer_private: bytes) -> None:
    # Use a real public key as the peer point so that the backend never sees a low-order point.
    peer_public = wc.dh_public(peer_private)
    assert ref.x25519_base(peer_private) == peer_public
    assert ref.x25519(private, peer_public) == wc.dh(private, peer_public)


@_RANDOM
@given(
    data=st.binary(max_size=300),
    digest_size=st.integers(min_value=1, max_value=32),
    key=st.binary(max_size=32),
)
def test_random_blake2s(data: bytes, digest_size: int, key: bytes) -> None:
    expected = hashlib.blake2s(data, digest_size=digest_size, key=key).digest()
    assert ref.blake2s(data, digest_size=digest_size, key=key) == expected


@_RANDOM
@given(key=st.binary(max_size=100), data=st.binary(max_size=300))
def test_random_hmac_and_kdf(key: bytes, data: bytes) -> None:
    assert ref.hmac_blake2s(key, data) == wc.hmac(key, data)
    assert wc.kdf3(key, data) == _reference_hkdf(key, data, 3)
