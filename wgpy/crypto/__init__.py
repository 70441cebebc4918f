"""The whitepaper's cryptographic primitives (§5.4), under the whitepaper's names.

Theory of operation: this package is the only place in wgpy that imports a crypto library. Every other module
calls ``dh``, ``hash``, ``mac``, ``hmac``, ``kdf1``/``kdf2``/``kdf3``, ``aead_seal``/``aead_open`` and
``xaead_seal``/``xaead_open`` from here, so the backends (``_backend``) can be swapped for the readable pure-Python
``reference`` module in tests. Nothing here keeps state, reads a clock or draws randomness on its own: ``dh_generate``
takes the random source as a parameter.

Failures are uniform: a bad AEAD tag raises ``InvalidTag`` (re-exported from ``cryptography``), a DH that yields the
all-zero point raises ``InvalidTag`` too, so callers that consume remote input catch one exception type.
"""

from __future__ import annotations

import hmac as _std_hmac
from collections.abc import Callable
from typing import Final

from cryptography.exceptions import InvalidTag

from . import _backend

__all__ = [
    "AEAD_TAG_SIZE",
    "HASH_SIZE",
    "KEY_SIZE",
    "MAC_SIZE",
    "XNONCE_SIZE",
    "Aead",
    "DhPrivateKey",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "InvalidTag",
    "aead_nonce",
    "aead_open",
    "aead_seal",
    "clamp",
    "constant_time_equal",
    "dh",
    "dh_generate",
    "dh_generate_key",
    "dh_private_key",
    "dh_public",
    "ed25519_sign",
    "ed25519_verify",
    "hash",
    "hmac",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "xaead_open",
    "xaead_seal",
]

KEY_SIZE: Final = 32  # whitepaper §5.4: DH and symmetric keys are 32 bytes
HASH_SIZE: Final = 32  # BLAKE2s-256
MAC_SIZE: Final = 16  # keyed BLAKE2s-128
AEAD_TAG_SIZE: Final = 16  # Poly1305
XNONCE_SIZE: Final = 24  # XChaCha20 nonce

_ZERO_NONCE_PREFIX: Final = b"\x00" * 4

#: Ed25519 key types (mesh network map signatures, RFC 8032), re-exported so that no other module imports a backend.
Ed25519PrivateKey = _backend.Ed25519PrivateKey
Ed25519PublicKey = _backend.Ed25519PublicKey

#: A loaded X25519 private key. Keeping one saves the scalar multiplication that loading raw bytes costs.
DhPrivateKey = _backend.X25519PrivateKey

#: The AEAD object kept per transport keypair (one per direction), so the hot path builds no cipher per packet.
Aead = _backend.ChaCha20Poly1305


def aead_nonce(counter: int) -> bytes:
    """AEAD nonce of the whitepaper: 32 bits of zeros followed by the 64-bit little-endian counter."""
    return _ZERO_NONCE_PREFIX + counter.to_bytes(8, "little")


def hash(data: bytes) -> bytes:
    """HASH(input): BLAKE2s(input, 32)."""
    return _backend.blake2s_hash(data)


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, input): keyed BLAKE2s(key, input, 16)."""
    return _backend.blake2s_mac(key, data)


def hmac(key: bytes, data: bytes) -> bytes:
    """HMAC(key, input): HMAC-BLAKE2s(key, input, 32) of RFC 2104."""
    return _backend.hmac_blake2s(key, data)


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1: the first output of HKDF over HMAC-BLAKE2s (whitepaper §5.4)."""
    prk = hmac(key, data)
    return hmac(prk, b"\x01")


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    """KDF2: the first two outputs of HKDF over HMAC-BLAKE2s."""
    prk = hmac(key, data)
    t1 = hmac(prk, b"\x01")
    t2 = hmac(prk, t1 + b"\x02")
    return t1, t2


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    """KDF3: the first three outputs of HKDF over HMAC-BLAKE2s."""
    prk = hmac(key, data)
    t1 = hmac(prk, b"\x01")
    t2 = hmac(prk, t1 + b"\x02")
    t3 = hmac(prk, t2 + b"\x03")
    return t1, t2, t3


def aead_seal(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plain, auth): ChaCha20-Poly1305 with the counter as nonce (RFC 8439)."""
    return Aead(key).encrypt(aead_nonce(counter), plaintext, ad)


def aead_open(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of ``aead_seal``. Raises ``InvalidTag`` when authentication fails."""
    return Aead(key).decrypt(aead_nonce(counter), ciphertext, ad)


def xaead_seal(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD(key, nonce, plain, auth): XChaCha20-Poly1305 with a 24-byte nonce (cookie replies)."""
    if len(key) != KEY_SIZE or len(nonce) != XNONCE_SIZE:
        raise ValueError("XChaCha20-Poly1305 takes a 32-byte key and a 24-byte nonce")
    return _backend.xchacha20poly1305_encrypt(key, nonce, plaintext, ad)


def xaead_open(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    """Inverse of ``xaead_seal``. Raises ``InvalidTag`` when authentication fails."""
    if len(ciphertext) < AEAD_TAG_SIZE or len(key) != KEY_SIZE or len(nonce) != XNONCE_SIZE:
        raise InvalidTag
    try:
        return _backend.xchacha20poly1305_decrypt(key, nonce, ciphertext, ad)
    except _backend.CryptoError:
        raise InvalidTag from None


def clamp(private: bytes) -> bytes:
    """Clamp a 32-byte scalar as RFC 7748 §5 decodes it (what ``wg genkey`` stores)."""
    b = bytearray(private)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def dh(private: bytes | DhPrivateKey, public: bytes) -> bytes:
    """DH(private, public): X25519. Raises ``InvalidTag`` when the shared point is all zeros (whitepaper §5.4).

    ``private`` is 32 raw bytes or a key loaded once with ``dh_private_key`` (faster when used more than once).
    """
    try:
        return _backend.x25519(private, public)
    except ValueError:
        raise InvalidTag from None


def dh_private_key(private: bytes) -> DhPrivateKey:
    """Load a raw X25519 private key once, for several ``dh`` calls."""
    return _backend.x25519_private(private)


def dh_public(private: bytes) -> bytes:
    """The X25519 public key of ``private``."""
    return _backend.x25519_public(private)


def dh_generate_key(rng: Callable[[int], bytes]) -> tuple[DhPrivateKey, bytes, bytes]:
    """DH-GENERATE() as a loaded key: (key object, clamped private bytes, public bytes)."""
    private = clamp(rng(KEY_SIZE))
    key = _backend.x25519_private(private)
    return key, private, key.public_key().public_bytes_raw()


def dh_generate(rng: Callable[[int], bytes]) -> tuple[bytes, bytes]:
    """DH-GENERATE(): a fresh clamped private key from ``rng`` and its public key."""
    _, private, public = dh_generate_key(rng)
    return private, public


def ed25519_sign(private_key: Ed25519PrivateKey, data: bytes) -> bytes:
    """An Ed25519 signature (RFC 8032) of ``data``: 64 bytes."""
    return private_key.sign(data)


def ed25519_verify(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``data`` by ``public_key``."""
    try:
        public_key.verify(signature, data)
    except _backend.InvalidSignature:
        return False
    return True


def constant_time_equal(a: bytes, b: bytes) -> bool:
    """Compare two byte strings in time that does not depend on where they differ."""
    return _std_hmac.compare_digest(a, b)
