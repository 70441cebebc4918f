"""Key value types: parsing, known pairs, secrecy of repr/str and of error messages.

Known pairs:

* wg-compatible pair: private key ``yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=`` is the ``PrivateKey`` of the example
  configuration in the wg(8) man page (wireguard-tools); its public key ``HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=``
  is the output of ``echo yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk= | wg pubkey`` published in Pro Custodibus'
  WireGuard documentation, "Public & Private Keys" (https://docs.procustodibus.com/guide/peers/private-key/).
* RFC 7748 §6.1 (Curve25519 Diffie-Hellman example): Alice's and Bob's private keys, public keys and shared secret K.
  RFC 7748's X25519 clamps the scalar, as wgpy's ``PrivateKey`` does when it stores the key, so the published public
  keys must come out unchanged.

wg's own base64 decoder, ``key_from_base64`` in wireguard-tools ``src/encoding.c`` (repository
``WireGuard/wireguard-tools``), is the reference for which base64 texts are keys: exactly 44 characters ending in
``=``, and the two leftover bits of the 43rd character must be zero.
"""

from __future__ import annotations

import base64
import traceback

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgpy import crypto
from wgpy.errors import ConfigError
from wgpy.keys import PresharedKey, PrivateKey, PublicKey

WG8_PRIVATE = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
WG8_PUBLIC = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="

RFC7748_ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
RFC7748_ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
RFC7748_BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
RFC7748_BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
RFC7748_SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"

KeyClass = type[PrivateKey] | type[PublicKey] | type[PresharedKey]
ALL_CLASSES: list[KeyClass] = [PrivateKey, PublicKey, PresharedKey]
SECRET_CLASSES: list[type[PrivateKey] | type[PresharedKey]] = [PrivateKey, PresharedKey]

keys32 = st.binary(min_size=32, max_size=32)


def _clamp(raw: bytes) -> bytes:
    # RFC 7748 §5 decodeScalar25519, written out here rather than calling wgpy's own clamp.
    b = bytearray(raw)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


# --- known pairs ------------------------------------------------------------------------------------------------


def test_wg8_example_pair() -> None:
    private = PrivateKey.from_base64(WG8_PRIVATE)
    assert private.public_key() == PublicKey.from_base64(WG8_PUBLIC)
    assert private.public_key().to_base64() == WG8_PUBLIC
    # `wg genkey` output is already clamped, so it round-trips unchanged.
    assert private.to_base64() == WG8_PRIVATE


@pytest.mark.parametrize(
    ("private_hex", "public_hex"),
    [(RFC7748_ALICE_PRIVATE, RFC7748_ALICE_PUBLIC), (RFC7748_BOB_PRIVATE, RFC7748_BOB_PUBLIC)],
    ids=["alice", "bob"],
)
def test_rfc7748_pairs(private_hex: str, public_hex: str) -> None:
    private = PrivateKey.from_hex(private_hex)
    assert private.public_key().to_hex() == public_hex
    # The stored scalar is the clamped one.
    assert private.raw == _clamp(bytes.fromhex(private_hex))


def test_rfc7748_shared_secret_with_clamped_keys() -> None:
    alice = PrivateKey.from_hex(RFC7748_ALICE_PRIVATE)
    bob = PrivateKey.from_hex(RFC7748_BOB_PRIVATE)
    assert crypto.dh(alice.raw, bob.public_key().raw).hex() == RFC7748_SHARED
    assert crypto.dh(bob.raw, alice.public_key().raw).hex() == RFC7748_SHARED


@given(keys32)
def test_private_key_is_stored_clamped_and_clamping_does_not_change_the_public_key(raw: bytes) -> None:
    key = PrivateKey(raw)
    assert key.raw == _clamp(raw)
    assert PrivateKey(key.raw) == key
    assert PrivateKey(key.raw).public_key() == key.public_key()


def test_generate_uses_the_injected_rng() -> None:
    calls: list[int] = []

    def rng(n: int) -> bytes:
        calls.append(n)
        return bytes(range(n))

    assert PrivateKey.generate(rng).raw == _clamp(bytes(range(32)))
    assert PresharedKey.generate(rng).raw == bytes(range(32))
    assert calls == [32, 32]


# --- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PublicKey, PresharedKey])
@given(raw=keys32)
def test_base64_and_hex_round_trip(cls: type[PublicKey] | type[PresharedKey], raw: bytes) -> None:
    key = cls(raw)
    assert key.raw == raw
    assert bytes(key) == raw
    text = key.to_base64()
    assert text == base64.b64encode(raw).decode()
    assert len(text) == 44
    assert cls.from_base64(text) == key
    assert key.to_hex() == raw.hex()
    assert cls.from_hex(key.to_hex()) == key
    assert cls.from_hex(key.to_hex().upper()) == key  # wg's key_from_hex accepts both cases


@given(keys32)
def test_private_key_round_trip(raw: bytes) -> None:
    key = PrivateKey(raw)
    assert PrivateKey.from_base64(key.to_base64()) == key
    assert PrivateKey.from_hex(key.to_hex()) == key
    assert PrivateKey.from_base64(key.to_base64()).raw == _clamp(raw)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_surrounding_whitespace_is_ignored(cls: KeyClass) -> None:
    key = cls.from_base64(WG8_PUBLIC)
    assert cls.from_base64(f"  {WG8_PUBLIC}\n") == key
    assert cls.from_hex(f"\t{key.to_hex()} \n") == key


# --- secrecy ----------------------------------------------------------------------------------------------------


def _forms(raw: bytes, text_b64: str) -> list[str]:
    return [text_b64, text_b64[:-1], raw.hex(), raw.hex().upper(), repr(raw), str(raw)]


@pytest.mark.parametrize("cls", SECRET_CLASSES)
@given(raw=keys32)
def test_repr_and_str_of_secrets_hide_the_key(cls: type[PrivateKey] | type[PresharedKey], raw: bytes) -> None:
    key = cls(raw)
    shown = [repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})]
    assert repr(key) == f"{cls.__name__}(<hidden>)"
    assert str(key) == f"{cls.__name__}(<hidden>)"
    for text in shown:
        for secret in _forms(key.raw, key.to_base64()):
            assert secret not in text
        # Not even a recognisable 8-character slice of the base64 or hex.
        assert key.to_base64()[:8] not in text
        assert key.to_hex()[:8] not in text


def test_public_key_repr_shows_the_key() -> None:
    key = PublicKey.from_base64(WG8_PUBLIC)
    assert repr(key) == f"PublicKey({WG8_PUBLIC!r})"
    assert key.short() == f"{WG8_PUBLIC[:4]}…{WG8_PUBLIC[39:43]}"


# --- bad input --------------------------------------------------------------------------------------------------

# Secret-looking inputs that are not keys. Each is long enough that a leak would be unmistakable.
BAD_BASE64 = [
    "",
    "not base64 at all, not base64 at all, not b=",  # 44 characters, spaces are not base64
    WG8_PRIVATE[:-1],  # 43 characters: padding missing
    WG8_PRIVATE[:-2] + "==",  # wrong padding
    base64.b64encode(bytes(range(31))).decode(),  # 31 bytes
    base64.b64encode(bytes(range(33))).decode(),  # 33 bytes
    base64.b64encode(bytes(range(64))).decode(),  # 64 bytes
    WG8_PRIVATE + WG8_PRIVATE,
    WG8_PRIVATE[:20] + "*" + WG8_PRIVATE[21:],  # a non-alphabet character
    base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),  # url-safe alphabet (- and _) is not wg's
]
BAD_HEX = [
    "",
    "zz" * 32,
    "0x" + "ab" * 31,
    "ab" * 31,  # 62 digits
    "ab" * 33,  # 66 digits
    "ab" * 31 + "g0",
    "ab " * 21 + "a",  # 64 characters with spaces
]


def _assert_hidden(error: ConfigError, secret: str) -> None:
    text = "".join(traceback.format_exception(error))
    for shown in (str(error), repr(error), text):
        if len(secret) >= 8:
            assert secret not in shown
            assert secret.strip()[:12] not in shown


@pytest.mark.parametrize("cls", ALL_CLASSES)
@pytest.mark.parametrize("text", BAD_BASE64)
def test_bad_base64_raises_config_error_without_the_input(cls: KeyClass, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        cls.from_base64(text)
    _assert_hidden(info.value, text)


@pytest.mark.parametrize("cls", ALL_CLASSES)
@pytest.mark.parametrize("text", BAD_HEX)
def test_bad_hex_raises_config_error_without_the_input(cls: KeyClass, text: str) -> None:
    with pytest.raises(ConfigError) as info:
        cls.from_hex(text)
    _assert_hidden(info.value, text)


@pytest.mark.parametrize("cls", ALL_CLASSES)
@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_wrong_raw_length_raises_config_error_without_the_bytes(cls: KeyClass, length: int) -> None:
    raw = bytes((0xA5 ^ i) & 0xFF for i in range(length))
    with pytest.raises(ConfigError) as info:
        cls(raw)
    assert isinstance(info.value, ValueError)
    _assert_hidden(info.value, raw.hex())
    if length:
        assert repr(raw)[2:-1] not in str(info.value)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_non_bytes_raises_type_error(cls: KeyClass) -> None:
    with pytest.raises(TypeError):
        cls("a" * 32)  # type: ignore[arg-type]


def test_base64_with_nonzero_padding_bits_is_rejected() -> None:
    # wg's key_from_base64 (wireguard-tools src/encoding.c) rejects a key whose 43rd character carries non-zero bits
    # in its two low (padding) positions: `ret |= ... | (val & 0xff)`. Python's base64.b64decode(validate=True)
    # silently drops those bits, so wgpy accepts texts that `wg` refuses, and the key it parses does not round-trip to
    # the text it was given. Fix: in _Key.from_base64, also require `base64.b64encode(raw).decode() == text`.
    canonical = "A" * 42 + "A="
    assert PublicKey.from_base64(canonical).to_base64() == canonical
    for cls in ALL_CLASSES:
        for last in "BCDFJ+/9":  # each has a non-zero low 2 bits
            with pytest.raises(ConfigError):
                cls.from_base64("A" * 42 + last + "=")


# --- equality and hashing ---------------------------------------------------------------------------------------


@given(keys32, keys32)
def test_equality_and_hash_follow_the_bytes(a: bytes, b: bytes) -> None:
    assert PublicKey(a) == PublicKey(a)
    assert hash(PublicKey(a)) == hash(PublicKey(a))
    assert (PublicKey(a) == PublicKey(b)) is (a == b)
    assert (PresharedKey(a) != PresharedKey(b)) is (a != b)
    assert len({PublicKey(a), PublicKey(bytes(a)), PublicKey(b)}) == (1 if a == b else 2)


def test_keys_of_different_kinds_are_never_equal() -> None:
    raw = PrivateKey.from_base64(WG8_PRIVATE).raw
    public, psk, private = PublicKey(raw), PresharedKey(raw), PrivateKey(raw)
    assert public != psk
    assert psk != private
    assert private != public
    assert public != raw
    assert len({public, psk, private}) == 3
    assert {public: 1}.get(PublicKey(raw)) == 1


def test_zero_preshared_key() -> None:
    zero = PresharedKey.zero()
    assert zero.is_zero()
    assert zero == PresharedKey(bytes(32))
    assert not PresharedKey(b"\x01" + bytes(31)).is_zero()
    assert repr(zero) == "PresharedKey(<hidden>)"
