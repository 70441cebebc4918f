"""The wire codec: sizes, strictness, and field offsets checked against the whitepaper.

Offset source: J. A. Donenfeld, "WireGuard: Next Generation Kernel Network Tunnel" (the whitepaper,
https://www.wireguard.com/papers/wireguard.pdf), §5.4.2 (first message, initiator to responder), §5.4.3 (second
message, responder to initiator), §5.4.7 (cookie reply) and §5.4.6 (transport data). Each section lists the fields in
order with their sizes: ``type`` (1 byte), ``reserved`` (3 zero bytes), 4-byte little-endian indices, 32-byte
ephemeral, ``AEAD-LEN(n) = n + 16`` for encrypted fields, 16-byte ``mac1``/``mac2``, 24-byte cookie nonce and an 8-byte
little-endian counter. The offset tables below are the running sums of those sizes, written by hand from the paper.
They agree with the struct layout in the Linux kernel's ``drivers/net/wireguard/messages.h`` (repository
``torvalds/linux``), which was read as a second, independent check.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
from typing import Any, cast

import pytest

from wgpy import messages
from wgpy.errors import MalformedMessage
from wgpy.messages import (
    MAC1_OFFSET_INITIATION,
    MAC1_OFFSET_RESPONSE,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    MESSAGE_TRANSPORT_MIN_SIZE,
    CookieReply,
    Initiation,
    Message,
    MessageType,
    Response,
    Transport,
    message_type,
    unpack,
)

# (field, offset, size) per whitepaper section. "type" and "reserved" are not dataclass fields.
WHITEPAPER_INITIATION = [  # §5.4.2
    ("type", 0, 1),
    ("reserved", 1, 3),
    ("sender_index", 4, 4),
    ("unencrypted_ephemeral", 8, 32),
    ("encrypted_static", 40, 32 + 16),
    ("encrypted_timestamp", 88, 12 + 16),
    ("mac1", 116, 16),
    ("mac2", 132, 16),
]
WHITEPAPER_RESPONSE = [  # §5.4.3
    ("type", 0, 1),
    ("reserved", 1, 3),
    ("sender_index", 4, 4),
    ("receiver_index", 8, 4),
    ("unencrypted_ephemeral", 12, 32),
    ("encrypted_nothing", 44, 0 + 16),
    ("mac1", 60, 16),
    ("mac2", 76, 16),
]
WHITEPAPER_COOKIE_REPLY = [  # §5.4.7
    ("type", 0, 1),
    ("reserved", 1, 3),
    ("receiver_index", 4, 4),
    ("nonce", 8, 24),
    ("encrypted_cookie", 32, 16 + 16),
]
WHITEPAPER_TRANSPORT = [  # §5.4.6 (the encrypted packet runs to the end of the datagram)
    ("type", 0, 1),
    ("reserved", 1, 3),
    ("receiver_index", 4, 4),
    ("counter", 8, 8),
    ("encrypted_packet", 16, -1),
]


def _sample_initiation() -> Initiation:
    return Initiation(
        sender_index=0x04030201,
        unencrypted_ephemeral=bytes(range(0x10, 0x10 + 32)),
        encrypted_static=bytes(range(0x40, 0x40 + 48)),
        encrypted_timestamp=bytes(range(0x80, 0x80 + 28)),
        mac1=b"\xa1" * 16,
        mac2=b"\xa2" * 16,
    )


def _sample_response() -> Response:
    return Response(
        sender_index=0x11223344,
        receiver_index=0x55667788,
        unencrypted_ephemeral=bytes(range(0x20, 0x20 + 32)),
        encrypted_nothing=bytes(range(0x90, 0x90 + 16)),
        mac1=b"\xb1" * 16,
        mac2=b"\xb2" * 16,
    )


def _sample_cookie_reply() -> CookieReply:
    return CookieReply(
        receiver_index=0xDEADBEEF,
        nonce=bytes(range(0x30, 0x30 + 24)),
        encrypted_cookie=bytes(range(0xC0, 0xC0 + 32)),
    )


def _sample_transport(payload_size: int = 48) -> Transport:
    return Transport(
        receiver_index=0xCAFEBABE,
        counter=0x0102030405060708,
        encrypted_packet=bytes((i * 7) & 0xFF for i in range(payload_size)),
    )


def _encode(message: Message, name: str) -> bytes:
    value: Any = getattr(message, name)
    if name == "counter":
        return struct.pack("<Q", value)
    if isinstance(value, int):
        return struct.pack("<I", value)
    assert isinstance(value, bytes)
    return value


LAYOUTS: list[tuple[Message, list[tuple[str, int, int]], int, MessageType]] = [
    (_sample_initiation(), WHITEPAPER_INITIATION, MESSAGE_INITIATION_SIZE, MessageType.INITIATION),
    (_sample_response(), WHITEPAPER_RESPONSE, MESSAGE_RESPONSE_SIZE, MessageType.RESPONSE),
    (_sample_cookie_reply(), WHITEPAPER_COOKIE_REPLY, MESSAGE_COOKIE_REPLY_SIZE, MessageType.COOKIE_REPLY),
    (_sample_transport(), WHITEPAPER_TRANSPORT, MESSAGE_TRANSPORT_HEADER_SIZE + 48, MessageType.TRANSPORT),
]
LAYOUT_IDS = ["initiation", "response", "cookie_reply", "transport"]


@pytest.mark.parametrize(("message", "layout", "size", "mtype"), LAYOUTS, ids=LAYOUT_IDS)
def test_fields_sit_at_the_whitepaper_offsets(
    message: Message, layout: list[tuple[str, int, int]], size: int, mtype: MessageType
) -> None:
    packed = message.pack()
    assert len(packed) == size
    for name, offset, length in layout:
        end = len(packed) if length < 0 else offset + length
        if name == "type":
            assert packed[offset:end] == bytes([mtype])
        elif name == "reserved":
            assert packed[offset:end] == b"\0\0\0"
        else:
            assert packed[offset:end] == _encode(message, name), name


@pytest.mark.parametrize(("message", "layout", "size", "mtype"), LAYOUTS, ids=LAYOUT_IDS)
def test_whitepaper_layout_covers_every_dataclass_field(
    message: Message, layout: list[tuple[str, int, int]], size: int, mtype: MessageType
) -> None:
    names = {name for name, _, _ in layout} - {"type", "reserved"}
    assert names == {f.name for f in dataclasses.fields(message)}
    # The layouts are contiguous; the handshake ones end exactly at the message size.
    for (_, offset, length), (_, next_offset, _) in itertools.pairwise(layout):
        assert offset + length == next_offset
    _, last_offset, last_length = layout[-1]
    if mtype is MessageType.TRANSPORT:
        assert last_offset == MESSAGE_TRANSPORT_HEADER_SIZE
    else:
        assert last_offset + last_length == size


def test_size_constants() -> None:
    assert MESSAGE_INITIATION_SIZE == 148
    assert MESSAGE_RESPONSE_SIZE == 92
    assert MESSAGE_COOKIE_REPLY_SIZE == 64
    assert MESSAGE_TRANSPORT_HEADER_SIZE == 16
    assert MESSAGE_TRANSPORT_MIN_SIZE == 32
    # mac1 offsets, from the whitepaper tables above.
    assert MAC1_OFFSET_INITIATION == dict((n, o) for n, o, _ in WHITEPAPER_INITIATION)["mac1"] == 116
    assert MAC1_OFFSET_RESPONSE == dict((n, o) for n, o, _ in WHITEPAPER_RESPONSE)["mac1"] == 60


def test_message_type_values() -> None:
    # whitepaper §5.4.2/5.4.3/5.4.7/5.4.6: type := 1, 2, 3, 4
    assert [int(t) for t in MessageType] == [1, 2, 3, 4]
    assert [t.name for t in MessageType] == ["INITIATION", "RESPONSE", "COOKIE_REPLY", "TRANSPORT"]


@pytest.mark.parametrize(("message", "layout", "size", "mtype"), LAYOUTS, ids=LAYOUT_IDS)
def test_unpack_inverts_pack(
    message: Message, layout: list[tuple[str, int, int]], size: int, mtype: MessageType
) -> None:
    packed = message.pack()
    assert message_type(packed) is mtype
    assert unpack(packed) == message


def test_keepalive_is_the_minimum_transport() -> None:
    keepalive = Transport(receiver_index=1, counter=0, encrypted_packet=bytes(16))
    packed = keepalive.pack()
    assert len(packed) == MESSAGE_TRANSPORT_MIN_SIZE
    assert unpack(packed) == keepalive
    with pytest.raises(MalformedMessage):
        unpack(packed[:-1])


# --- strictness -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_shorter_than_the_type_is_malformed(length: int) -> None:
    with pytest.raises(MalformedMessage):
        unpack(b"\x01" * length)
    with pytest.raises(MalformedMessage):
        message_type(b"\x04" * length)


@pytest.mark.parametrize(
    ("mtype", "size"),
    [
        (MessageType.INITIATION, MESSAGE_INITIATION_SIZE),
        (MessageType.RESPONSE, MESSAGE_RESPONSE_SIZE),
        (MessageType.COOKIE_REPLY, MESSAGE_COOKIE_REPLY_SIZE),
    ],
)
def test_handshake_messages_have_exact_sizes(mtype: MessageType, size: int) -> None:
    header = struct.pack("<I", mtype)
    for length in (4, size - 1, size + 1, size + 16, 2 * size):
        with pytest.raises(MalformedMessage):
            unpack(header + bytes(length - 4))
    assert message_type(header + bytes(size - 4)) is mtype


@pytest.mark.parametrize("length", [4, 16, 31])
def test_short_transport_is_malformed(length: int) -> None:
    with pytest.raises(MalformedMessage):
        unpack(struct.pack("<I", MessageType.TRANSPORT) + bytes(length - 4))


@pytest.mark.parametrize("mtype", list(MessageType))
@pytest.mark.parametrize("position", [1, 2, 3])
@pytest.mark.parametrize("value", [0x01, 0x80, 0xFF])
def test_nonzero_reserved_byte_is_malformed(mtype: MessageType, position: int, value: int) -> None:
    size = {
        MessageType.INITIATION: MESSAGE_INITIATION_SIZE,
        MessageType.RESPONSE: MESSAGE_RESPONSE_SIZE,
        MessageType.COOKIE_REPLY: MESSAGE_COOKIE_REPLY_SIZE,
        MessageType.TRANSPORT: MESSAGE_TRANSPORT_MIN_SIZE,
    }[mtype]
    data = bytearray(struct.pack("<I", mtype) + bytes(size - 4))
    unpack(bytes(data))  # well-formed with zero reserved bytes
    data[position] = value
    with pytest.raises(MalformedMessage):
        unpack(bytes(data))
    with pytest.raises(MalformedMessage):
        message_type(bytes(data))


@pytest.mark.parametrize("first_byte", [0, 5, 6, 0x7F, 0x80, 0xFF])
@pytest.mark.parametrize("size", [4, 32, 64, 92, 148, 200])
def test_unknown_type_is_malformed(first_byte: int, size: int) -> None:
    with pytest.raises(MalformedMessage):
        unpack(bytes([first_byte]) + bytes(size - 1))


def test_malformed_message_is_exactly_malformed_message_and_a_value_error() -> None:
    with pytest.raises(MalformedMessage) as info:
        unpack(b"\x09\0\0\0" + bytes(60))
    assert type(info.value) is MalformedMessage
    assert isinstance(info.value, ValueError)


# --- dataclass constructors -------------------------------------------------------------------------------------

_BYTES_FIELDS: list[tuple[type[Message], str, int]] = [
    (Initiation, "unencrypted_ephemeral", 32),
    (Initiation, "encrypted_static", 48),
    (Initiation, "encrypted_timestamp", 28),
    (Initiation, "mac1", 16),
    (Initiation, "mac2", 16),
    (Response, "unencrypted_ephemeral", 32),
    (Response, "encrypted_nothing", 16),
    (Response, "mac1", 16),
    (Response, "mac2", 16),
    (CookieReply, "nonce", 24),
    (CookieReply, "encrypted_cookie", 32),
]


def _replace(message: Message, **changes: object) -> Message:
    # dataclasses.replace through Any: mypy cannot type **changes against a union of four dataclasses.
    replaced: Message = dataclasses.replace(cast(Any, message), **changes)
    return replaced


_SAMPLES: dict[type[Message], Message] = {
    Initiation: _sample_initiation(),
    Response: _sample_response(),
    CookieReply: _sample_cookie_reply(),
    Transport: _sample_transport(),
}


@pytest.mark.parametrize(("cls", "name", "size"), _BYTES_FIELDS, ids=[f"{c.__name__}.{n}" for c, n, _ in _BYTES_FIELDS])
@pytest.mark.parametrize("delta", [-1, 1, -10])
def test_constructor_rejects_wrong_field_length(cls: type[Message], name: str, size: int, delta: int) -> None:
    sample = _SAMPLES[cls]
    assert len(getattr(sample, name)) == size
    with pytest.raises(ValueError, match=name):
        _replace(sample, **{name: bytes(size + delta)})


_INDEX_FIELDS: list[tuple[type[Message], str]] = [
    (Initiation, "sender_index"),
    (Response, "sender_index"),
    (Response, "receiver_index"),
    (CookieReply, "receiver_index"),
    (Transport, "receiver_index"),
]


@pytest.mark.parametrize(("cls", "name"), _INDEX_FIELDS, ids=[f"{c.__name__}.{n}" for c, n in _INDEX_FIELDS])
def test_constructor_rejects_indices_outside_u32(cls: type[Message], name: str) -> None:
    sample = _SAMPLES[cls]
    for bad in (-1, 2**32, 2**40):
        with pytest.raises(ValueError, match=name):
            _replace(sample, **{name: bad})
    for good in (0, 2**32 - 1):
        assert getattr(_replace(sample, **{name: good}), name) == good


def test_transport_constructor_limits() -> None:
    sample = _sample_transport()
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="counter"):
            dataclasses.replace(sample, counter=bad)
    assert dataclasses.replace(sample, counter=2**64 - 1).counter == 2**64 - 1
    with pytest.raises(ValueError, match="encrypted_packet"):
        dataclasses.replace(sample, encrypted_packet=bytes(15))
    assert len(dataclasses.replace(sample, encrypted_packet=bytes(16)).pack()) == MESSAGE_TRANSPORT_MIN_SIZE


def test_messages_are_frozen() -> None:
    message = _sample_initiation()
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.sender_index = 5  # type: ignore[misc]


def test_all_exports_exist() -> None:
    for name in messages.__all__:
        assert hasattr(messages, name), name
