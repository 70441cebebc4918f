"""Codec properties (Hypothesis): pack/unpack round trips and the "only MalformedMessage escapes" contract.

``unpack`` is the first thing remote bytes meet (style guide §0 rule 3, §4 step 1), so whatever the input it must
either return one of the four message dataclasses or raise ``MalformedMessage``; and when it returns a message,
packing that message must give back exactly the input bytes (nothing is silently dropped or normalised).
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from wgpy.errors import MalformedMessage
from wgpy.messages import (
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
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

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)


def fixed(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


initiations = st.builds(Initiation, u32, fixed(32), fixed(48), fixed(28), fixed(16), fixed(16))
responses = st.builds(Response, u32, u32, fixed(32), fixed(16), fixed(16), fixed(16))
cookie_replies = st.builds(CookieReply, u32, fixed(24), fixed(32))
transports = st.builds(Transport, u32, u64, st.binary(min_size=16, max_size=1500))
any_message: st.SearchStrategy[Message] = st.one_of(initiations, responses, cookie_replies, transports)

_SIZES = {
    MessageType.INITIATION: MESSAGE_INITIATION_SIZE,
    MessageType.RESPONSE: MESSAGE_RESPONSE_SIZE,
    MessageType.COOKIE_REPLY: MESSAGE_COOKIE_REPLY_SIZE,
    MessageType.TRANSPORT: MESSAGE_TRANSPORT_MIN_SIZE,
}
_CLASSES: dict[MessageType, type[Message]] = {
    MessageType.INITIATION: Initiation,
    MessageType.RESPONSE: Response,
    MessageType.COOKIE_REPLY: CookieReply,
    MessageType.TRANSPORT: Transport,
}


@given(any_message)
def test_pack_then_unpack_is_identity(message: Message) -> None:
    packed = message.pack()
    mtype = message_type(packed)
    assert isinstance(message, _CLASSES[mtype])
    if mtype is MessageType.TRANSPORT:
        assert isinstance(message, Transport)
        assert len(packed) == 16 + len(message.encrypted_packet)
    else:
        assert len(packed) == _SIZES[mtype]
    assert packed[1:4] == b"\0\0\0"
    assert unpack(packed) == message


def _check_unpack_contract(data: bytes) -> Message | None:
    try:
        message = unpack(data)
    except MalformedMessage:
        return None
    # Anything else raised propagates and fails the test.
    assert isinstance(message, Initiation | Response | CookieReply | Transport)
    assert message.pack() == data
    return message


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_unpack_of_arbitrary_bytes_returns_a_message_or_raises_malformed(data: bytes) -> None:
    _check_unpack_contract(data)


@st.composite
def near_valid(draw: st.DrawFn) -> bytes:
    """Bytes that start with a valid type (reserved bytes usually zero) and have a size at or near the valid one."""
    mtype = draw(st.sampled_from(list(MessageType)))
    reserved = draw(st.one_of(st.just(b"\0\0\0"), fixed(3)))
    size = _SIZES[mtype]
    length = draw(
        st.one_of(
            st.just(size),
            st.integers(size - 2, size + 2),
            st.integers(4, 2 * size),
            st.integers(size, size + 1500) if mtype is MessageType.TRANSPORT else st.just(size),
        )
    )
    body = draw(fixed(max(0, length - 4)))
    return bytes([mtype]) + reserved + body


@settings(max_examples=500)
@given(near_valid())
def test_unpack_of_near_valid_bytes_returns_a_message_or_raises_malformed(data: bytes) -> None:
    message = _check_unpack_contract(data)
    (raw_type,) = struct.unpack_from("<I", data)
    valid_shape = raw_type in _SIZES and (
        len(data) == _SIZES[MessageType(raw_type)]
        if raw_type != MessageType.TRANSPORT
        else len(data) >= MESSAGE_TRANSPORT_MIN_SIZE
    )
    # The codec accepts exactly the well-shaped inputs (type with zero reserved bytes, and the right size).
    assert (message is not None) == valid_shape
    if message is not None:
        assert isinstance(message, _CLASSES[MessageType(raw_type)])


@given(any_message, st.integers(1, 3), st.integers(1, 255))
def test_any_nonzero_reserved_byte_is_malformed(message: Message, position: int, value: int) -> None:
    data = bytearray(message.pack())
    data[position] = value
    try:
        unpack(bytes(data))
    except MalformedMessage:
        return
    raise AssertionError("a non-zero reserved byte was accepted")


@given(any_message, st.data())
def test_truncated_or_extended_handshake_is_malformed(message: Message, data: st.DataObject) -> None:
    packed = message.pack()
    if isinstance(message, Transport):
        cut = data.draw(st.integers(0, MESSAGE_TRANSPORT_MIN_SIZE - 1))
        candidate = packed[:cut]
    else:
        candidate = data.draw(
            st.one_of(
                st.integers(0, len(packed) - 1).map(lambda n: packed[:n]),
                st.binary(min_size=1, max_size=64).map(lambda extra: packed + extra),
            )
        )
    try:
        unpack(candidate)
    except MalformedMessage:
        return
    raise AssertionError(f"{type(message).__name__} of {len(candidate)} bytes was accepted")
