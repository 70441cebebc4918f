"""Readable pure-Python reference of every primitive WireGuard uses: a teaching aid and a test oracle.

Theory of operation: each function below is a direct, line-by-line rendering of the pseudocode in its
specification, with the spec's own names (``quarter_round``, ``chacha20_block``, ``poly1305_key_gen``,
``decodeScalar25519`` as ``decode_scalar25519``, BLAKE2's ``G`` and ``F``), so a reader can hold the RFC
and this file side by side. It uses nothing but Python integers and the standard library; the only import from
outside is ``cryptography``'s ``InvalidTag`` class, so that a failed tag check raises the same exception as
the fast backend in ``wgpy.crypto._backend``.

What it must never do: sit on the hot path. It is slow on purpose (a few hundred KB/s for ChaCha20 and
about a millisecond per X25519) because every step is spelled out rather than vectorised, and Python
integers give no constant-time guarantee, so it leaks timing. ``wgpy.crypto`` never imports it; the tests
in ``tests/core/vectors`` compare it with the backend on the published vectors and on random inputs.

Which specification each part follows:

- ``quarter_round``, ``chacha20_block``: RFC 8439 §2.1-§2.3 (the ChaCha20 block function).
- ``chacha20_encrypt``: RFC 8439 §2.4 (the ChaCha20 stream cipher).
- ``poly1305_mac``: RFC 8439 §2.5; ``poly1305_key_gen``: RFC 8439 §2.6.
- ``chacha20poly1305_encrypt`` / ``chacha20poly1305_decrypt``: RFC 8439 §2.8 (AEAD_CHACHA20_POLY1305).
- ``hchacha20``: draft-irtf-cfrg-xchacha-03 §2.2; ``xchacha20_encrypt``: §2.3;
  ``xchacha20poly1305_encrypt`` / ``xchacha20poly1305_decrypt``: §2 (AEAD_XChaCha20_Poly1305).
- ``x25519`` / ``x25519_base``: RFC 7748 §5 (Montgomery ladder), with ``decode_scalar25519`` and
  ``decode_u_coordinate`` / ``encode_u_coordinate`` from the same section.
- ``blake2s``: RFC 7693 §2-§3 (BLAKE2s, digest 1..32 bytes, key 0..32 bytes).
- ``hmac_blake2s``: RFC 2104 HMAC over BLAKE2s (64-byte block), as the WireGuard whitepaper §5.4 uses it.
"""

from __future__ import annotations

import hmac as _hmac
from typing import Final

from cryptography.exceptions import InvalidTag

__all__ = [
    "blake2s",
    "chacha20_block",
    "chacha20_encrypt",
    "chacha20poly1305_decrypt",
    "chacha20poly1305_encrypt",
    "decode_scalar25519",
    "decode_u_coordinate",
    "encode_u_coordinate",
    "hchacha20",
    "hmac_blake2s",
    "poly1305_key_gen",
    "poly1305_mac",
    "quarter_round",
    "x25519",
    "x25519_base",
    "xchacha20_encrypt",
    "xchacha20poly1305_decrypt",
    "xchacha20poly1305_encrypt",
]

_MASK32: Final = 0xFFFFFFFF

# ---------------------------------------------------------------------------------------------------------
# ChaCha20 (RFC 8439 §2.1-§2.4)
# ---------------------------------------------------------------------------------------------------------

CHACHA20_KEY_SIZE: Final = 32  # RFC 8439 §2.3: a 256-bit key
CHACHA20_NONCE_SIZE: Final = 12  # RFC 8439 §2.3: a 96-bit nonce
CHACHA20_BLOCK_SIZE: Final = 64  # RFC 8439 §2.3: "The output is 64 random-looking bytes"
HCHACHA20_NONCE_SIZE: Final = 16  # draft-irtf-cfrg-xchacha-03 §2.2: a 128-bit nonce
XCHACHA20_NONCE_SIZE: Final = 24  # draft-irtf-cfrg-xchacha-03 §2: a 192-bit nonce
POLY1305_KEY_SIZE: Final = 32  # RFC 8439 §2.5: a 32-byte one-time key (r, s)
POLY1305_TAG_SIZE: Final = 16  # RFC 8439 §2.5: a 16-byte tag

# RFC 8439 §2.3: words 0-3 of the state are the ASCII of "expand 32-byte k", read as little-endian words.
_SIGMA: Final = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)


def _rotl32(value: int, shift: int) -> int:
    """``value <<< shift`` on a 32-bit word: the "n-bit left roll" of RFC 8439 §2.1."""
    return ((value << shift) | (value >> (32 - shift))) & _MASK32


def _words_le(data: bytes) -> list[int]:
    """Read ``data`` as consecutive 32-bit little-endian words (RFC 8439 §2.3: key and nonce loading)."""
    return [int.from_bytes(data[i : i + 4], "little") for i in range(0, len(data), 4)]


def _bytes_le(words: list[int]) -> bytes:
    """Serialize 32-bit words in little-endian order (RFC 8439 §2.3.2, "serialize the state")."""
    return b"".join(w.to_bytes(4, "little") for w in words)


def _check_size(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(value)}")


def quarter_round(a: int, b: int, c: int, d: int) -> tuple[int, int, int, int]:
    """The ChaCha quarter round on four 32-bit words (RFC 8439 §2.1).

    Args:
        a: First word.
        b: Second word.
        c: Third word.
        d: Fourth word.

    Returns:
        The four words after the round, in the same order.
    """
    # RFC 8439 §2.1, line by line ("+" is addition modulo 2^32).
    a = (a + b) & _MASK32
    d = _rotl32(d ^ a, 16)
    c = (c + d) & _MASK32
    b = _rotl32(b ^ c, 12)
    a = (a + b) & _MASK32
    d = _rotl32(d ^ a, 8)
    c = (c + d) & _MASK32
    b = _rotl32(b ^ c, 7)
    return a, b, c, d


def _qr_on_state(state: list[int], x: int, y: int, z: int, w: int) -> None:
    """QUARTERROUND(x, y, z, w) applied in place to the 16-word state (RFC 8439 §2.2)."""
    state[x], state[y], state[z], state[w] = quarter_round(state[x], state[y], state[z], state[w])


def _inner_block(state: list[int]) -> None:
    """One column round then one diagonal round: the ``inner_block`` of RFC 8439 §2.3.1."""
    # Column round.
    _qr_on_state(state, 0, 4, 8, 12)
    _qr_on_state(state, 1, 5, 9, 13)
    _qr_on_state(state, 2, 6, 10, 14)
    _qr_on_state(state, 3, 7, 11, 15)
    # Diagonal round.
    _qr_on_state(state, 0, 5, 10, 15)
    _qr_on_state(state, 1, 6, 11, 12)
    _qr_on_state(state, 2, 7, 8, 13)
    _qr_on_state(state, 3, 4, 9, 14)


def _chacha20_rounds(state: list[int]) -> list[int]:
    """Run the 20 rounds (10 double rounds) on a copy of ``state``; no final addition."""
    working = list(state)
    for _ in range(10):
        _inner_block(working)
    return working


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """The ChaCha20 block function (RFC 8439 §2.3, pseudocode in §2.3.1).

    Args:
        key: 32-byte key.
        counter: 32-bit block counter, 0 <= counter < 2**32.
        nonce: 12-byte nonce.

    Returns:
        The 64-byte serialized block.

    Raises:
        ValueError: on a wrong key or nonce size, or a counter outside 32 bits.
    """
    _check_size("key", key, CHACHA20_KEY_SIZE)
    _check_size("nonce", nonce, CHACHA20_NONCE_SIZE)
    if not 0 <= counter <= _MASK32:
        raise ValueError("counter must fit in 32 bits")
    # RFC 8439 §2.3: constants | key (8 words) | block count | nonce (3 words).
    state = [*_SIGMA, *_words_le(key), counter, *_words_le(nonce)]
    working = _chacha20_rounds(state)
    # RFC 8439 §2.3: "we add the original input words to the output words" - this feed-forward is what
    # makes the block function one-way; HChaCha20 (below) deliberately leaves it out.
    return _bytes_le([(s + w) & _MASK32 for s, w in zip(state, working, strict=True)])


def chacha20_encrypt(key: bytes, counter: int, nonce: bytes, plaintext: bytes) -> bytes:
    """ChaCha20 encryption (RFC 8439 §2.4, pseudocode in §2.4.1). Decryption is the same operation.

    Args:
        key: 32-byte key.
        counter: Initial 32-bit block counter (usually 0, or 1 inside the AEAD of §2.8).
        nonce: 12-byte nonce.
        plaintext: Data of any length.

    Returns:
        ``plaintext`` XORed with the keystream, same length.

    Raises:
        ValueError: on bad sizes, or if the message would run the 32-bit block counter past 2**32 - 1.
    """
    out = bytearray()
    for j in range(0, len(plaintext), CHACHA20_BLOCK_SIZE):
        key_stream = chacha20_block(key, counter + j // CHACHA20_BLOCK_SIZE, nonce)
        block = plaintext[j : j + CHACHA20_BLOCK_SIZE]
        # zip() stops at the shorter input, which discards the unused tail of the last keystream block.
        out += bytes(p ^ k for p, k in zip(block, key_stream, strict=False))
    return bytes(out)


# ---------------------------------------------------------------------------------------------------------
# Poly1305 (RFC 8439 §2.5-§2.6)
# ---------------------------------------------------------------------------------------------------------

_P1305: Final = (1 << 130) - 5  # RFC 8439 §2.5: the prime 2^130 - 5
# RFC 8439 §2.5: r's top four bits of bytes 3, 7, 11, 15 and bottom two bits of bytes 4, 8, 12 are cleared.
_R_CLAMP: Final = 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF


def poly1305_mac(key: bytes, message: bytes) -> bytes:
    """The Poly1305 one-time authenticator (RFC 8439 §2.5, pseudocode in §2.5.1).

    Args:
        key: 32-byte one-time key: ``r`` (16 bytes, clamped here) then ``s`` (16 bytes).
        message: Data of any length.

    Returns:
        The 16-byte tag.

    Raises:
        ValueError: if the key is not 32 bytes.
    """
    _check_size("key", key, POLY1305_KEY_SIZE)
    r = int.from_bytes(key[:16], "little") & _R_CLAMP
    s = int.from_bytes(key[16:], "little")
    accumulator = 0
    for i in range(0, len(message), 16):
        block = message[i : i + 16]
        # RFC 8439 §2.5: append a 0x01 byte past the end of the block (bit 8 * len(block)), so that a
        # trailing run of zero bytes still changes the tag.
        n = int.from_bytes(block + b"\x01", "little")
        accumulator = ((accumulator + n) * r) % _P1305
    accumulator += s
    # RFC 8439 §2.5: "the lowest 128 bits of the accumulator are serialized in little-endian order".
    return (accumulator & ((1 << 128) - 1)).to_bytes(16, "little")


def poly1305_key_gen(key: bytes, nonce: bytes) -> bytes:
    """The one-time Poly1305 key: the first 32 bytes of ChaCha20 block 0 (RFC 8439 §2.6, §2.6.1).

    Args:
        key: 32-byte ChaCha20 key.
        nonce: 12-byte nonce.

    Returns:
        The 32-byte one-time key.
    """
    return chacha20_block(key, 0, nonce)[:32]


# ---------------------------------------------------------------------------------------------------------
# AEAD_CHACHA20_POLY1305 (RFC 8439 §2.8)
# ---------------------------------------------------------------------------------------------------------


def _pad16(data: bytes) -> bytes:
    """Zero bytes up to the next multiple of 16 (``pad16`` in RFC 8439 §2.8.1); empty if already aligned."""
    return b"\x00" * (-len(data) % 16)


def _aead_mac_data(ad: bytes, ciphertext: bytes) -> bytes:
    """Poly1305 input of RFC 8439 §2.8: AAD | pad16 | ciphertext | pad16 | le64(len AAD) | le64(len CT)."""
    return (
        ad
        + _pad16(ad)
        + ciphertext
        + _pad16(ciphertext)
        + len(ad).to_bytes(8, "little")
        + len(ciphertext).to_bytes(8, "little")
    )


def chacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD_CHACHA20_POLY1305 encryption (RFC 8439 §2.8, pseudocode in §2.8.1).

    Args:
        key: 32-byte key.
        nonce: 12-byte nonce.
        plaintext: Data to encrypt.
        ad: Associated data, authenticated but not encrypted.

    Returns:
        ``ciphertext || tag`` (the tag is the last 16 bytes), the layout ``cryptography`` uses.

    Raises:
        ValueError: on a wrong key or nonce size.
    """
    _check_size("key", key, CHACHA20_KEY_SIZE)
    _check_size("nonce", nonce, CHACHA20_NONCE_SIZE)
    otk = poly1305_key_gen(key, nonce)
    # RFC 8439 §2.8: encryption starts at block counter 1, since block 0 gave the one-time key.
    ciphertext = chacha20_encrypt(key, 1, nonce, plaintext)
    tag = poly1305_mac(otk, _aead_mac_data(ad, ciphertext))
    return ciphertext + tag


def chacha20poly1305_decrypt(key: bytes, nonce: bytes, data: bytes, ad: bytes) -> bytes:
    """AEAD_CHACHA20_POLY1305 decryption (RFC 8439 §2.8; worked example in Appendix A.5).

    The tag is checked before anything is decrypted, and compared in constant time (``hmac.compare_digest``)
    so that the comparison itself leaks nothing (RFC 8439 §4).

    Args:
        key: 32-byte key.
        nonce: 12-byte nonce.
        data: ``ciphertext || tag``.
        ad: Associated data.

    Returns:
        The plaintext.

    Raises:
        InvalidTag: when ``data`` is shorter than a tag or the tag does not authenticate.
        ValueError: on a wrong key or nonce size.
    """
    _check_size("key", key, CHACHA20_KEY_SIZE)
    _check_size("nonce", nonce, CHACHA20_NONCE_SIZE)
    if len(data) < POLY1305_TAG_SIZE:
        raise InvalidTag
    ciphertext, tag = data[:-POLY1305_TAG_SIZE], data[-POLY1305_TAG_SIZE:]
    otk = poly1305_key_gen(key, nonce)
    expected = poly1305_mac(otk, _aead_mac_data(ad, ciphertext))
    if not _hmac.compare_digest(expected, tag):
        raise InvalidTag
    return chacha20_encrypt(key, 1, nonce, ciphertext)


# ---------------------------------------------------------------------------------------------------------
# HChaCha20 and XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03)
# ---------------------------------------------------------------------------------------------------------


def hchacha20(key: bytes, nonce: bytes) -> bytes:
    """HChaCha20: derive a 32-byte subkey from a key and a 16-byte nonce (draft-irtf-cfrg-xchacha-03 §2.2).

    Args:
        key: 32-byte key.
        nonce: 16-byte nonce; its first word takes the place of ChaCha20's block counter.

    Returns:
        The 32-byte subkey: words 0-3 and 12-15 of the state after the 20 rounds.

    Raises:
        ValueError: on a wrong key or nonce size.
    """
    _check_size("key", key, CHACHA20_KEY_SIZE)
    _check_size("nonce", nonce, HCHACHA20_NONCE_SIZE)
    state = [*_SIGMA, *_words_le(key), *_words_le(nonce)]
    working = _chacha20_rounds(state)
    # draft §2.2: no feed-forward addition; return the first and last rows. Those rows held public input
    # (constants and nonce), so adding them back would reveal nothing: skipping it loses nothing either,
    # which is the XSalsa20 argument the draft cites.
    return _bytes_le(working[0:4] + working[12:16])


def _xchacha20_subkey_and_nonce(key: bytes, nonce: bytes) -> tuple[bytes, bytes]:
    """Turn a 24-byte XChaCha20 nonce into the HChaCha20 subkey and a 12-byte ChaCha20 nonce (draft §2.3)."""
    _check_size("nonce", nonce, XCHACHA20_NONCE_SIZE)
    subkey = hchacha20(key, nonce[:16])
    # draft §2.3: the remaining 8 bytes, "prefixed by 4 NUL bytes" to make RFC 8439's 12-byte nonce.
    return subkey, b"\x00" * 4 + nonce[16:]


def xchacha20_encrypt(key: bytes, nonce: bytes, plaintext: bytes, counter: int = 0) -> bytes:
    """XChaCha20 stream cipher (draft-irtf-cfrg-xchacha-03 §2.3, pseudocode in §2.3.1).

    Args:
        key: 32-byte key.
        nonce: 24-byte nonce.
        plaintext: Data of any length.
        counter: Initial block counter (the draft's ``blk_ctr``, default 0).

    Returns:
        ``plaintext`` XORed with the XChaCha20 keystream.

    Raises:
        ValueError: on bad sizes.
    """
    subkey, chacha_nonce = _xchacha20_subkey_and_nonce(key, nonce)
    return chacha20_encrypt(subkey, counter, chacha_nonce, plaintext)


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD_XChaCha20_Poly1305 encryption (draft-irtf-cfrg-xchacha-03 §2): RFC 8439 §2.8 under the subkey.

    Args:
        key: 32-byte key.
        nonce: 24-byte nonce.
        plaintext: Data to encrypt.
        ad: Associated data.

    Returns:
        ``ciphertext || tag``.

    Raises:
        ValueError: on a wrong key or nonce size.
    """
    _check_size("key", key, CHACHA20_KEY_SIZE)
    subkey, chacha_nonce = _xchacha20_subkey_and_nonce(key, nonce)
    return chacha20poly1305_encrypt(subkey, chacha_nonce, plaintext, ad)


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, data: bytes, ad: bytes) -> bytes:
    """AEAD_XChaCha20_Poly1305 decryption (draft-irtf-cfrg-xchacha-03 §2).

    Args:
        key: 32-byte key.
        nonce: 24-byte nonce.
        data: ``ciphertext || tag``.
        ad: Associated data.

    Returns:
        The plaintext.

    Raises:
        InvalidTag: when the tag does not authenticate.
        ValueError: on a wrong key or nonce size.
    """
    _check_size("key", key, CHACHA20_KEY_SIZE)
    subkey, chacha_nonce = _xchacha20_subkey_and_nonce(key, nonce)
    return chacha20poly1305_decrypt(subkey, chacha_nonce, data, ad)


# ---------------------------------------------------------------------------------------------------------
# X25519 (RFC 7748 §5)
# ---------------------------------------------------------------------------------------------------------

X25519_SIZE: Final = 32  # RFC 7748 §5: scalars and u-coordinates are 32 bytes
_P25519: Final = (1 << 255) - 19  # RFC 7748 §4.1: p = 2^255 - 19
_A24: Final = 121665  # RFC 7748 §5: a24 = (486662 - 2) / 4 for curve25519
_BASE_U: Final = 9  # RFC 7748 §4.1: the base point has u = 9


def decode_scalar25519(scalar: bytes) -> int:
    """``decodeScalar25519`` of RFC 7748 §5: clamp the 32-byte scalar and read it little-endian.

    Clearing the low three bits makes the scalar a multiple of the cofactor 8, so a point of small order
    contributes nothing; setting bit 254 fixes the ladder's length (the reasons RFC 7748 §5 gives).
    """
    _check_size("scalar", scalar, X25519_SIZE)
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def decode_u_coordinate(u: bytes) -> int:
    """``decodeUCoordinate`` of RFC 7748 §5: little-endian, with the unused top bit (bit 255) masked off.

    Non-canonical values in [p, 2^255) are accepted as RFC 7748 §5 requires; the field arithmetic below
    reduces them modulo p.
    """
    _check_size("u-coordinate", u, X25519_SIZE)
    masked = bytearray(u)
    masked[31] &= 127
    return int.from_bytes(masked, "little")


def encode_u_coordinate(u: int) -> bytes:
    """``encodeUCoordinate`` of RFC 7748 §5: reduce modulo p and write 32 bytes little-endian."""
    return (u % _P25519).to_bytes(X25519_SIZE, "little")


def _cswap(swap: int, x_2: int, x_3: int) -> tuple[int, int]:
    """``cswap`` of RFC 7748 §5: swap the pair when ``swap`` is 1, using a mask rather than a branch.

    The mask form mirrors the RFC; in Python it documents intent only (big integers are not constant time).
    """
    mask = -swap  # 0 -> 0b000..., 1 -> 0b111... (two's complement of an unbounded int)
    dummy = mask & (x_2 ^ x_3)
    return x_2 ^ dummy, x_3 ^ dummy


def x25519(scalar: bytes, u: bytes) -> bytes:
    """The X25519 function of RFC 7748 §5: the Montgomery ladder on curve25519's u-coordinate.

    This is the raw function: it returns the all-zero string for a low-order ``u`` instead of raising.
    Rejecting that result is the Diffie-Hellman layer's job (RFC 7748 §6.1; ``wgpy.crypto.dh`` does it).

    Args:
        scalar: 32-byte scalar (clamped here by ``decode_scalar25519``).
        u: 32-byte u-coordinate.

    Returns:
        The 32-byte u-coordinate of ``scalar * u``.

    Raises:
        ValueError: if an argument is not 32 bytes.
    """
    k = decode_scalar25519(scalar)
    x_1 = decode_u_coordinate(u) % _P25519
    x_2, z_2 = 1, 0
    x_3, z_3 = x_1, 1
    swap = 0
    # RFC 7748 §5: 255 ladder steps, from bit 254 down to bit 0.
    for t in reversed(range(255)):
        k_t = (k >> t) & 1
        swap ^= k_t
        x_2, x_3 = _cswap(swap, x_2, x_3)
        z_2, z_3 = _cswap(swap, z_2, z_3)
        swap = k_t

        a = (x_2 + z_2) % _P25519
        aa = (a * a) % _P25519
        b = (x_2 - z_2) % _P25519
        bb = (b * b) % _P25519
        e = (aa - bb) % _P25519
        c = (x_3 + z_3) % _P25519
        d = (x_3 - z_3) % _P25519
        da = (d * a) % _P25519
        cb = (c * b) % _P25519
        x_3 = pow(da + cb, 2, _P25519)
        z_3 = (x_1 * pow(da - cb, 2, _P25519)) % _P25519
        x_2 = (aa * bb) % _P25519
        z_2 = (e * (aa + _A24 * e)) % _P25519

    x_2, x_3 = _cswap(swap, x_2, x_3)
    z_2, z_3 = _cswap(swap, z_2, z_3)
    # RFC 7748 §5: "Return x_2 * (z_2^(p - 2))" - Fermat inversion; z_2 = 0 gives 0, the all-zero output.
    return encode_u_coordinate(x_2 * pow(z_2, _P25519 - 2, _P25519))


def x25519_base(scalar: bytes) -> bytes:
    """``X25519(scalar, 9)``: the public key of ``scalar`` (RFC 7748 §6.1).

    Args:
        scalar: 32-byte private scalar.

    Returns:
        The 32-byte public key.
    """
    return x25519(scalar, _BASE_U.to_bytes(X25519_SIZE, "little"))


# ---------------------------------------------------------------------------------------------------------
# BLAKE2s (RFC 7693)
# ---------------------------------------------------------------------------------------------------------

BLAKE2S_BLOCK_SIZE: Final = 64  # RFC 7693 §2.1: bb = 64 bytes for BLAKE2s
BLAKE2S_MAX_DIGEST_SIZE: Final = 32  # RFC 7693 §2.1: nn <= 32
BLAKE2S_MAX_KEY_SIZE: Final = 32  # RFC 7693 §2.1: kk <= 32

# RFC 7693 §2.6: the same IV as SHA-256 (the first 32 bits of the fractional parts of the square roots of the
# first eight primes).
_B2S_IV: Final = (
    0x6A09E667,
    0xBB67AE85,
    0x3C6EF372,
    0xA54FF53A,
    0x510E527F,
    0x9B05688C,
    0x1F83D9AB,
    0x5BE0CD19,
)

# RFC 7693 §2.7: the message word schedule SIGMA; BLAKE2s runs 10 rounds and so uses rows 0-9.
_B2S_SIGMA: Final = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    (14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3),
    (11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4),
    (7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8),
    (9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13),
    (2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9),
    (12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11),
    (13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10),
    (6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5),
    (10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0),
)


def _rotr32(value: int, shift: int) -> int:
    """``x >>> n``: 32-bit right rotation (RFC 7693 §2.3 uses right rotations, unlike ChaCha's left ones)."""
    return ((value >> shift) | (value << (32 - shift))) & _MASK32


def _b2s_g(v: list[int], a: int, b: int, c: int, d: int, x: int, y: int) -> None:
    """The mixing function G of RFC 7693 §3.1, with BLAKE2s's rotation constants (R1..R4) = (16, 12, 8, 7)."""
    v[a] = (v[a] + v[b] + x) & _MASK32
    v[d] = _rotr32(v[d] ^ v[a], 16)
    v[c] = (v[c] + v[d]) & _MASK32
    v[b] = _rotr32(v[b] ^ v[c], 12)
    v[a] = (v[a] + v[b] + y) & _MASK32
    v[d] = _rotr32(v[d] ^ v[a], 8)
    v[c] = (v[c] + v[d]) & _MASK32
    v[b] = _rotr32(v[b] ^ v[c], 7)


def _b2s_compress(h: list[int], block: bytes, t: int, last: bool) -> None:
    """The compression function F of RFC 7693 §3.2, updating the chain value ``h`` in place.

    Args:
        h: The eight-word state vector.
        block: One 64-byte message block.
        t: Total bytes of input so far, the 2w-bit offset counter (64 bits for BLAKE2s).
        last: The final block indicator flag f.
    """
    m = _words_le(block)
    v = [*h, *_B2S_IV]  # RFC 7693 §3.2: v[0..7] = h, v[8..15] = IV
    v[12] ^= t & _MASK32  # low word of the offset
    v[13] ^= t >> 32  # high word of the offset
    if last:
        v[14] ^= _MASK32  # "invert all bits" of v[14] on the last block
    for s in _B2S_SIGMA:
        # Columns, then diagonals (RFC 7693 §3.2).
        _b2s_g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _b2s_g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _b2s_g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _b2s_g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _b2s_g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _b2s_g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _b2s_g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _b2s_g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


def blake2s(data: bytes, digest_size: int = 32, key: bytes = b"") -> bytes:
    """BLAKE2s of RFC 7693 §3.3 (sequential mode, no salt or personalization).

    Args:
        data: Message of any length.
        digest_size: Output length nn in bytes, 1..32.
        key: Optional key of 0..32 bytes; with a key this is the keyed MAC of RFC 7693 §2.

    Returns:
        The ``digest_size``-byte digest.

    Raises:
        ValueError: if ``digest_size`` or the key length is out of range.
    """
    if not 1 <= digest_size <= BLAKE2S_MAX_DIGEST_SIZE:
        raise ValueError("digest_size must be 1..32")
    if len(key) > BLAKE2S_MAX_KEY_SIZE:
        raise ValueError("key must be at most 32 bytes")
    h = list(_B2S_IV)
    # RFC 7693 §3.3: parameter block word 0 = 0x0101kknn (depth 1, fanout 1, key length, digest length).
    h[0] ^= 0x01010000 ^ (len(key) << 8) ^ digest_size

    # RFC 7693 §3.3: a key is padded to one full block and processed as the first block of the message.
    message = (key + b"\x00" * (BLAKE2S_BLOCK_SIZE - len(key)) if key else b"") + data
    # At least one block is compressed, even for an empty unkeyed message.
    block_count = max(1, -(-len(message) // BLAKE2S_BLOCK_SIZE))
    for i in range(block_count - 1):
        block = message[i * BLAKE2S_BLOCK_SIZE : (i + 1) * BLAKE2S_BLOCK_SIZE]
        _b2s_compress(h, block, (i + 1) * BLAKE2S_BLOCK_SIZE, last=False)
    last_block = message[(block_count - 1) * BLAKE2S_BLOCK_SIZE :]
    # The counter counts real bytes only (key block included), not the zero padding of the last block.
    _b2s_compress(h, last_block.ljust(BLAKE2S_BLOCK_SIZE, b"\x00"), len(message), last=True)
    return _bytes_le(h)[:digest_size]


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s-256: RFC 2104 HMAC with BLAKE2s as H and a 64-byte block (whitepaper §5.4 ``HMAC``).

    Args:
        key: Key of any length (hashed first if longer than one block, per RFC 2104 §2).
        data: Message.

    Returns:
        The 32-byte MAC.
    """
    if len(key) > BLAKE2S_BLOCK_SIZE:
        key = blake2s(key)
    key = key.ljust(BLAKE2S_BLOCK_SIZE, b"\x00")
    # RFC 2104 §2: ipad = 0x36 and opad = 0x5C repeated over the block.
    inner = blake2s(bytes(k ^ 0x36 for k in key) + data)
    return blake2s(bytes(k ^ 0x5C for k in key) + inner)
