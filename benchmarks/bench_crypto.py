"""Crypto primitives: the ``cryptography``/``hashlib`` backend against the pure-Python reference (boringtun crypto_benches).

What each group measures (one call per round unless the name says otherwise):

- ``seal``/``open`` at 64 and 1420 bytes, three ways: ``Keypair.seal``/``Keypair.open`` (the transport hot path, one
  AEAD object per keypair, header packing included), ``crypto.aead_seal``/``aead_open`` (builds a cipher per call,
  as the handshake does), and ``crypto.Aead`` alone (the floor: OpenSSL plus one Python call).
- ``reference``: ``wgpy.crypto.reference.chacha20poly1305_encrypt`` at the same sizes; it runs at well under
  1 MB/s, so these use ``benchmark.pedantic`` with a small, fixed number of rounds.
- ``x25519``: ``crypto.dh`` and ``crypto.dh_public`` against ``reference.x25519`` (pedantic, few rounds).
- ``hash``/``mac``/``hmac``/``kdf2``: the BLAKE2s family as the handshake and the cookie layer call it, plus the
  reference ``blake2s`` for scale.

Every benchmark records ``bytes_per_round`` in ``extra_info`` where a size applies, so MB/s is bytes / mean.
"""

from __future__ import annotations

import os

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wgpy import crypto
from wgpy.crypto import reference
from wgpy.keypair import Keypair

SIZES = (64, 1420)
KEY = bytes(range(32))
NONCE12 = bytes(4) + (7).to_bytes(8, "little")
REFERENCE_ROUNDS = {64: 20, 1420: 5}  # the reference AEAD runs at about 0.5-1 MB/s: 1420 B take 2-3 ms
REFERENCE_X25519_ROUNDS = 5


def _keypair_pair() -> tuple[Keypair, Keypair]:
    """An initiator keypair and the matching responder keypair (send key of one is the receive key of the other)."""
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Keypair(send_key=k1, recv_key=k2, local_index=1, remote_index=2, is_initiator=True, now=0.0)
    b = Keypair(send_key=k2, recv_key=k1, local_index=2, remote_index=1, is_initiator=False, now=0.0)
    return a, b


# --- backend: Keypair (transport hot path) --------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_keypair_seal(benchmark: BenchmarkFixture, size: int) -> None:
    sender, _ = _keypair_pair()
    plaintext = os.urandom(size)
    benchmark.extra_info["bytes_per_round"] = size
    message = benchmark(sender.seal, plaintext)
    assert message is not None and len(message) == 16 + size + 16


@pytest.mark.parametrize("size", SIZES)
def test_keypair_open(benchmark: BenchmarkFixture, size: int) -> None:
    sender, receiver = _keypair_pair()
    plaintext = os.urandom(size)
    message = sender.seal(plaintext)
    assert message is not None
    benchmark.extra_info["bytes_per_round"] = size
    assert benchmark(receiver.open, 0, message) == plaintext


# --- backend: crypto.aead_seal / aead_open (one cipher object per call) ---------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_aead_seal(benchmark: BenchmarkFixture, size: int) -> None:
    plaintext = os.urandom(size)
    benchmark.extra_info["bytes_per_round"] = size
    assert len(benchmark(crypto.aead_seal, KEY, 7, plaintext, b"")) == size + 16


@pytest.mark.parametrize("size", SIZES)
def test_aead_open(benchmark: BenchmarkFixture, size: int) -> None:
    plaintext = os.urandom(size)
    ciphertext = crypto.aead_seal(KEY, 7, plaintext, b"")
    benchmark.extra_info["bytes_per_round"] = size
    assert benchmark(crypto.aead_open, KEY, 7, ciphertext, b"") == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_aead_object_encrypt(benchmark: BenchmarkFixture, size: int) -> None:
    """The floor: one prebuilt ``cryptography`` ChaCha20Poly1305 object, one ``encrypt`` call."""
    aead = crypto.Aead(KEY)
    plaintext = os.urandom(size)
    benchmark.extra_info["bytes_per_round"] = size
    assert len(benchmark(aead.encrypt, NONCE12, plaintext, None)) == size + 16


# --- reference (pure Python) ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
def test_reference_seal(benchmark: BenchmarkFixture, size: int) -> None:
    plaintext = os.urandom(size)
    benchmark.extra_info["bytes_per_round"] = size
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        reference.chacha20poly1305_encrypt,
        args=(KEY, NONCE12, plaintext, b""),
        rounds=REFERENCE_ROUNDS[size],
        iterations=1,
        warmup_rounds=1,
    )
    assert result == crypto.Aead(KEY).encrypt(NONCE12, plaintext, b"")


@pytest.mark.parametrize("size", SIZES)
def test_reference_open(benchmark: BenchmarkFixture, size: int) -> None:
    plaintext = os.urandom(size)
    ciphertext = crypto.Aead(KEY).encrypt(NONCE12, plaintext, b"")
    benchmark.extra_info["bytes_per_round"] = size
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        reference.chacha20poly1305_decrypt,
        args=(KEY, NONCE12, ciphertext, b""),
        rounds=REFERENCE_ROUNDS[size],
        iterations=1,
        warmup_rounds=1,
    )
    assert result == plaintext


# --- X25519 ------------------------------------------------------------------------------------------------


def test_x25519_backend(benchmark: BenchmarkFixture) -> None:
    private, _ = crypto.dh_generate(os.urandom)
    _, public = crypto.dh_generate(os.urandom)
    assert len(benchmark(crypto.dh, private, public)) == 32


def test_x25519_backend_public(benchmark: BenchmarkFixture) -> None:
    private, public = crypto.dh_generate(os.urandom)
    assert benchmark(crypto.dh_public, private) == public


def test_x25519_reference(benchmark: BenchmarkFixture) -> None:
    private, _ = crypto.dh_generate(os.urandom)
    _, public = crypto.dh_generate(os.urandom)
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        reference.x25519, args=(private, public), rounds=REFERENCE_X25519_ROUNDS, iterations=1, warmup_rounds=1
    )
    assert result == crypto.dh(private, public)


# --- BLAKE2s family ---------------------------------------------------------------------------------------------


def test_hash_32(benchmark: BenchmarkFixture) -> None:
    data = os.urandom(64)  # h || 32-byte value: what mix_hash hashes
    benchmark.extra_info["bytes_per_round"] = len(data)
    assert len(benchmark(crypto.hash, data)) == 32


def test_mac_initiation(benchmark: BenchmarkFixture) -> None:
    """mac1 over an initiation body (116 bytes): what the device spends on every handshake message first."""
    data = os.urandom(116)
    benchmark.extra_info["bytes_per_round"] = len(data)
    assert len(benchmark(crypto.mac, KEY, data)) == 16


def test_hmac(benchmark: BenchmarkFixture) -> None:
    data = os.urandom(32)
    assert len(benchmark(crypto.hmac, KEY, data)) == 32


def test_kdf2(benchmark: BenchmarkFixture) -> None:
    """KDF2 = three HMAC-BLAKE2s: the handshake calls the KDFs nine times per side."""
    data = os.urandom(32)
    first, second = benchmark(crypto.kdf2, KEY, data)
    assert len(first) == len(second) == 32


def test_hash_reference(benchmark: BenchmarkFixture) -> None:
    data = os.urandom(64)
    benchmark.extra_info["bytes_per_round"] = len(data)
    result = benchmark.pedantic(reference.blake2s, args=(data,), rounds=50, iterations=1, warmup_rounds=1)  # type: ignore[no-untyped-call]
    assert result == crypto.hash(data)


def test_xaead_seal_cookie(benchmark: BenchmarkFixture) -> None:
    """XChaCha20-Poly1305 of a 16-byte cookie (libsodium through pynacl): the cookie reply's one AEAD."""
    nonce = os.urandom(24)
    assert len(benchmark(crypto.xaead_seal, KEY, nonce, os.urandom(16), os.urandom(16))) == 32
