"""Behaviour of the ``wgpy.crypto`` API: sizes, failure modes, clamping and the injected random source."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

import wgpy.crypto as wc
from wgpy.crypto import reference as ref

KEY = bytes(range(32))
XNONCE = bytes(range(100, 124))
PLAINTEXT = b"an inner IP packet, more or less" * 3
AD = b"associated data"

_P25519 = (1 << 255) - 19

# u-coordinates of points of small order on curve25519 (the identity, the point of order 2 and the two of
# order 8, plus p - 1, p and p + 1, which are non-canonical encodings of small-order points): X25519 of any
# of them is all zeros whatever the scalar.
LOW_ORDER_POINTS = [
    bytes(32),
    (1).to_bytes(32, "little"),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    (_P25519 - 1).to_bytes(32, "little"),
    _P25519.to_bytes(32, "little"),
    (_P25519 + 1).to_bytes(32, "little"),
]


def _flip(data: bytes, index: int, bit: int = 0) -> bytes:
    mutable = bytearray(data)
    mutable[index] ^= 1 << bit
    return bytes(mutable)


# --- sizes and encodings --------------------------------------------------------------------------------


def test_hash_mac_hmac_sizes() -> None:
    assert len(wc.hash(b"x")) == wc.HASH_SIZE == 32
    assert len(wc.mac(KEY, b"x")) == wc.MAC_SIZE == 16
    assert len(wc.hmac(KEY, b"x")) == wc.HASH_SIZE


def test_mac_is_keyed_blake2s_128() -> None:
    assert wc.mac(KEY, b"abc") == ref.blake2s(b"abc", digest_size=16, key=KEY)


def test_kdf_outputs_extend_each_other() -> None:
    t1, t2, t3 = wc.kdf3(KEY, b"input")
    assert wc.kdf2(KEY, b"input") == (t1, t2)
    assert wc.kdf1(KEY, b"input") == t1
    assert len({t1, t2, t3}) == 3
    assert all(len(t) == wc.HASH_SIZE for t in (t1, t2, t3))


def test_aead_nonce_is_zero_prefix_and_le64_counter() -> None:
    assert wc.aead_nonce(0) == bytes(12)
    assert wc.aead_nonce(1) == bytes(4) + b"\x01" + bytes(7)
    assert wc.aead_nonce(0x0102030405060708) == bytes(4) + bytes.fromhex("0807060504030201")
    assert wc.aead_nonce(2**64 - 1) == bytes(4) + b"\xff" * 8


# --- AEAD -----------------------------------------------------------------------------------------------


def test_aead_round_trip_and_tag_size() -> None:
    sealed = wc.aead_seal(KEY, 7, PLAINTEXT, AD)
    assert len(sealed) == len(PLAINTEXT) + wc.AEAD_TAG_SIZE
    assert wc.aead_open(KEY, 7, sealed, AD) == PLAINTEXT
    # The per-keypair object of the hot path gives the same bytes.
    assert wc.Aead(KEY).encrypt(wc.aead_nonce(7), PLAINTEXT, AD) == sealed


def test_aead_empty_plaintext_is_a_bare_tag() -> None:
    sealed = wc.aead_seal(KEY, 0, b"", b"")
    assert len(sealed) == wc.AEAD_TAG_SIZE
    assert wc.aead_open(KEY, 0, sealed, b"") == b""


@pytest.mark.parametrize("index", [0, 17, len(PLAINTEXT) - 1, len(PLAINTEXT), len(PLAINTEXT) + 15])
@pytest.mark.parametrize("bit", [0, 7])
def test_aead_open_rejects_flipped_bit(index: int, bit: int) -> None:
    sealed = wc.aead_seal(KEY, 3, PLAINTEXT, AD)
    with pytest.raises(InvalidTag):
        wc.aead_open(KEY, 3, _flip(sealed, index, bit), AD)


def test_aead_open_rejects_wrong_counter_ad_key_or_truncation() -> None:
    sealed = wc.aead_seal(KEY, 3, PLAINTEXT, AD)
    with pytest.raises(InvalidTag):
        wc.aead_open(KEY, 4, sealed, AD)
    with pytest.raises(InvalidTag):
        wc.aead_open(KEY, 3, sealed, _flip(AD, 0))
    with pytest.raises(InvalidTag):
        wc.aead_open(_flip(KEY, 31, 7), 3, sealed, AD)
    with pytest.raises(InvalidTag):
        wc.aead_open(KEY, 3, sealed[:-1], AD)
    with pytest.raises(InvalidTag):
        wc.aead_open(KEY, 3, sealed[: wc.AEAD_TAG_SIZE - 1], AD)


def test_xaead_round_trip() -> None:
    sealed = wc.xaead_seal(KEY, XNONCE, PLAINTEXT, AD)
    assert len(sealed) == len(PLAINTEXT) + wc.AEAD_TAG_SIZE
    assert wc.xaead_open(KEY, XNONCE, sealed, AD) == PLAINTEXT


@pytest.mark.parametrize("index", [0, len(PLAINTEXT) - 1, len(PLAINTEXT) + 15])
def test_xaead_open_rejects_flipped_bit(index: int) -> None:
    sealed = wc.xaead_seal(KEY, XNONCE, PLAINTEXT, AD)
    with pytest.raises(InvalidTag):
        wc.xaead_open(KEY, XNONCE, _flip(sealed, index), AD)


def test_xaead_open_rejects_wrong_nonce_ad_or_truncation() -> None:
    sealed = wc.xaead_seal(KEY, XNONCE, PLAINTEXT, AD)
    # Both halves of the 24-byte nonce matter: the first 16 feed HChaCha20, the last 8 ChaCha20.
    with pytest.raises(InvalidTag):
        wc.xaead_open(KEY, _flip(XNONCE, 0), sealed, AD)
    with pytest.raises(InvalidTag):
        wc.xaead_open(KEY, _flip(XNONCE, 23), sealed, AD)
    with pytest.raises(InvalidTag):
        wc.xaead_open(KEY, XNONCE, sealed, AD + b"!")


def test_xaead_open_rejects_input_shorter_than_a_tag() -> None:
    sealed = wc.xaead_seal(KEY, XNONCE, PLAINTEXT, AD)
    with pytest.raises(InvalidTag):
        wc.xaead_open(KEY, XNONCE, sealed[: wc.AEAD_TAG_SIZE - 1], AD)


# --- X25519 ---------------------------------------------------------------------------------------------


def test_dh_is_symmetric() -> None:
    a_private, a_public = wc.dh_generate(lambda n: b"\x11" * n)
    b_private, b_public = wc.dh_generate(lambda n: b"\x22" * n)
    shared = wc.dh(a_private, b_public)
    assert shared == wc.dh(b_private, a_public)
    assert len(shared) == wc.KEY_SIZE


@pytest.mark.parametrize("public", LOW_ORDER_POINTS, ids=lambda p: p.hex()[:8])
def test_dh_rejects_low_order_public_key(public: bytes) -> None:
    private = wc.clamp(bytes(range(1, 33)))
    assert ref.x25519(private, public) == bytes(32)  # the raw function yields the all-zero point...
    with pytest.raises(InvalidTag):  # ...which the DH layer refuses (whitepaper §5.4, RFC 7748 §6.1)
        wc.dh(private, public)


def test_dh_rejects_all_zero_public_key() -> None:
    with pytest.raises(InvalidTag):
        wc.dh(wc.clamp(b"\x42" * 32), bytes(32))


def test_clamp_sets_and_clears_the_rfc7748_bits() -> None:
    # RFC 7748 §5 decodeScalar25519: clear bits 0-2 and 255, set bit 254.
    assert wc.clamp(b"\xff" * 32) == b"\xf8" + b"\xff" * 30 + b"\x7f"
    assert wc.clamp(bytes(32)) == bytes(31) + b"\x40"
    sample = bytes(range(200, 232))
    clamped = wc.clamp(sample)
    assert len(clamped) == 32
    assert clamped[0] & 0b111 == 0
    assert clamped[31] & 0x80 == 0
    assert clamped[31] & 0x40 == 0x40
    assert clamped[1:31] == sample[1:31]
    assert int.from_bytes(clamped, "little") == ref.decode_scalar25519(sample)
    assert wc.clamp(clamped) == clamped


def test_dh_public_ignores_clamped_bits() -> None:
    # X25519 clamps internally, so the public key of a raw and of a clamped scalar agree.
    raw = b"\xff" * 32
    assert wc.dh_public(raw) == wc.dh_public(wc.clamp(raw)) == ref.x25519_base(raw)


def test_dh_generate_uses_the_given_rng() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes(range(n))

    private, public = wc.dh_generate(rng)
    assert calls == [wc.KEY_SIZE]
    assert private == wc.clamp(bytes(range(32)))
    assert public == wc.dh_public(private) == ref.x25519_base(private)


def test_dh_generate_is_deterministic_in_the_rng() -> None:
    assert wc.dh_generate(lambda n: b"\x05" * n) == wc.dh_generate(lambda n: b"\x05" * n)
    assert wc.dh_generate(lambda n: b"\x05" * n) != wc.dh_generate(lambda n: b"\x06" * n)
