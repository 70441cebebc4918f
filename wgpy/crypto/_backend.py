"""Fast primitives from well-kept libraries; the rest of wgpy reaches them only through ``wgpy.crypto``.

- ChaCha20-Poly1305 and X25519: ``cryptography`` (OpenSSL).
- XChaCha20-Poly1305 (cookie replies only): ``pynacl`` (libsodium); OpenSSL does not offer it.
- Ed25519 (signed mesh network maps, not WireGuard itself): ``cryptography``.
- BLAKE2s and HMAC-BLAKE2s: the standard library's ``hashlib``/``hmac`` (pyblake2 no longer builds on 3.11).
"""

from __future__ import annotations

import hashlib
import hmac as _hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

__all__ = [
    "ChaCha20Poly1305",
    "CryptoError",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "InvalidSignature",
    "X25519PrivateKey",
    "blake2s_hash",
    "blake2s_mac",
    "hmac_blake2s",
    "x25519",
    "x25519_private",
    "x25519_public",
    "xchacha20poly1305_decrypt",
    "xchacha20poly1305_encrypt",
]


def blake2s_hash(data: bytes) -> bytes:
    return hashlib.blake2s(data).digest()


def blake2s_mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, digest_size=16, key=key).digest()


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    return _hmac.digest(key, data, hashlib.blake2s)


def x25519(private: bytes | X25519PrivateKey, public: bytes) -> bytes:
    """Raw X25519. Raises ``ValueError`` when the result is all zeros (a low-order public key).

    ``private`` may be a key object made once with ``x25519_private``: loading raw bytes makes OpenSSL compute the
    public key too, a second scalar multiplication that a kept object does not pay again.
    """
    key = private if isinstance(private, X25519PrivateKey) else X25519PrivateKey.from_private_bytes(private)
    return key.exchange(X25519PublicKey.from_public_bytes(public))


def x25519_private(private: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(private)


def x25519_public(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    return bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, ad, nonce, key))


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, ad, nonce, key))
