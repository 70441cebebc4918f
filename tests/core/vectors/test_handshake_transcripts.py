"""wgpy reproduces the golden handshake transcripts of ``wgpy/tools/data/handshake_transcripts.json``.

The file was written by ``vectors/make_handshake_transcripts.py``, which cross-checked every value against the
``noiseprotocol`` oracle and a straight-line recomputation of the whitepaper's formulas. Here wgpy plays each role
from the recorded inputs alone (static keys, the ephemeral its ``rng`` returns, preshared key, sender index,
``wall_ns``) and must reproduce every byte of its own message, accept the recorded message of the other side, reach
the recorded chaining key and hash after each message, and derive the recorded transport keys (checked by sealing
with the wgpy keypair and opening with a ChaCha20-Poly1305 built from the recorded key, and the reverse).

The per-token values (after ``e``, ``es``, ``s``, ...) stay inside ``wgpy.noise``'s local variables; only the
end-of-message values are observable, and the file's last step of each message must equal them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from wgpy import crypto
from wgpy.constants import LABEL_MAC1
from wgpy.keypair import Keypair
from wgpy.keys import PresharedKey, PrivateKey, PublicKey
from wgpy.messages import (
    MAC1_OFFSET_INITIATION,
    MAC1_OFFSET_RESPONSE,
    MAC_SIZE,
    Initiation,
    MessageType,
    Response,
    unpack,
)
from wgpy.noise import (
    Handshake,
    HandshakeState,
    StaticIdentity,
    begin_session,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wgpy.tai64n import stamp

VECTORS: Final = Path(__file__).resolve().parents[3] / "wgpy" / "tools" / "data" / "handshake_transcripts.json"
NOW: Final = 1.0
_TRANSPORT_HEADER: Final = struct.Struct("<IIQ")


@dataclass(frozen=True)
class Message:
    raw: bytes  # mac1 and mac2 zero
    mac1_key: bytes
    mac1: bytes
    with_mac1: bytes


@dataclass(frozen=True)
class Step:
    message: str
    token: str
    chaining_key: bytes
    hash: bytes


@dataclass(frozen=True)
class Transcript:
    name: str
    initiator_static: PrivateKey
    initiator_static_public: PublicKey
    responder_static: PrivateKey
    responder_static_public: PublicKey
    initiator_ephemeral: bytes
    initiator_ephemeral_public: bytes
    responder_ephemeral: bytes
    responder_ephemeral_public: bytes
    preshared_key: PresharedKey | None
    initiator_index: int
    responder_index: int
    wall_ns: int
    timestamp: bytes
    initiation: Message
    response: Message
    steps: tuple[Step, ...]
    after_initiation: tuple[bytes, bytes]
    after_response: tuple[bytes, bytes]
    initiator_send_key: bytes
    initiator_recv_key: bytes
    responder_send_key: bytes
    responder_recv_key: bytes

    @classmethod
    def from_json(cls, case: dict[str, Any]) -> Transcript:
        inputs = case["inputs"]

        def h(value: str) -> bytes:
            return bytes.fromhex(value)

        def message(entry: dict[str, str]) -> Message:
            return Message(h(entry["bytes"]), h(entry["mac1_key"]), h(entry["mac1"]), h(entry["bytes_with_mac1"]))

        def state(entry: dict[str, str]) -> tuple[bytes, bytes]:
            return h(entry["chaining_key"]), h(entry["hash"])

        psk = inputs["preshared_key"]
        transport = case["transport"]
        return cls(
            name=case["name"],
            initiator_static=PrivateKey(h(inputs["initiator_static_private"])),
            initiator_static_public=PublicKey(h(inputs["initiator_static_public"])),
            responder_static=PrivateKey(h(inputs["responder_static_private"])),
            responder_static_public=PublicKey(h(inputs["responder_static_public"])),
            initiator_ephemeral=h(inputs["initiator_ephemeral_private"]),
            initiator_ephemeral_public=h(inputs["initiator_ephemeral_public"]),
            responder_ephemeral=h(inputs["responder_ephemeral_private"]),
            responder_ephemeral_public=h(inputs["responder_ephemeral_public"]),
            preshared_key=PresharedKey(h(psk)) if psk is not None else None,
            initiator_index=int(inputs["initiator_sender_index"]),
            responder_index=int(inputs["responder_sender_index"]),
            wall_ns=int(inputs["wall_ns"]),
            timestamp=h(inputs["timestamp"]),
            initiation=message(case["initiation"]),
            response=message(case["response"]),
            steps=tuple(Step(s["message"], s["token"], h(s["chaining_key"]), h(s["hash"])) for s in case["steps"]),
            after_initiation=state(case["after_initiation"]),
            after_response=state(case["after_response"]),
            initiator_send_key=h(transport["initiator_send_key"]),
            initiator_recv_key=h(transport["initiator_recv_key"]),
            responder_send_key=h(transport["responder_send_key"]),
            responder_recv_key=h(transport["responder_recv_key"]),
        )


def _load() -> list[Transcript]:
    document = json.loads(VECTORS.read_text(encoding="utf-8"))
    return [Transcript.from_json(case) for case in document["cases"]]


TRANSCRIPTS: Final = _load()


def _ids(transcript: Transcript) -> str:
    return transcript.name


def _rng_returning(value: bytes) -> Callable[[int], bytes]:
    def rng(size: int) -> bytes:
        assert size == len(value)
        return value

    return rng


def _parse_initiation(data: bytes) -> Initiation:
    message = unpack(data)
    assert isinstance(message, Initiation)
    return message


def _parse_response(data: bytes) -> Response:
    message = unpack(data)
    assert isinstance(message, Response)
    return message


def _check_keys(keypair: Keypair, send_key: bytes, recv_key: bytes) -> None:
    """The keypair seals with ``send_key`` and opens with ``recv_key``, counters 0, 1, 2 and empty AD."""
    sender, receiver = ChaCha20Poly1305(send_key), ChaCha20Poly1305(recv_key)
    for counter in range(3):
        payload = bytes([0x45, counter]) * 8
        nonce = crypto.aead_nonce(counter)
        sealed = keypair.seal(payload)
        assert sealed is not None
        assert sealed[:16] == _TRANSPORT_HEADER.pack(MessageType.TRANSPORT, keypair.remote_index, counter)
        assert sender.decrypt(nonce, sealed[16:], b"") == payload
        incoming = _TRANSPORT_HEADER.pack(MessageType.TRANSPORT, keypair.local_index, counter)
        incoming += receiver.encrypt(nonce, payload, b"")
        assert keypair.open(counter, incoming) == payload


def test_vectors_file_has_both_psk_cases() -> None:
    assert {t.preshared_key is None for t in TRANSCRIPTS} == {True, False}


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=_ids)
def test_recorded_inputs_are_consistent(transcript: Transcript) -> None:
    t = transcript
    assert t.initiator_static.public_key() == t.initiator_static_public
    assert t.responder_static.public_key() == t.responder_static_public
    assert crypto.dh_public(crypto.clamp(t.initiator_ephemeral)) == t.initiator_ephemeral_public
    assert crypto.dh_public(crypto.clamp(t.responder_ephemeral)) == t.responder_ephemeral_public
    assert stamp(t.wall_ns) == t.timestamp


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=_ids)
def test_wgpy_as_initiator(transcript: Transcript) -> None:
    t = transcript
    local = StaticIdentity(t.initiator_static)
    handshake = Handshake(local, t.responder_static_public, t.preshared_key)

    initiation = create_initiation(
        handshake, local, t.initiator_index, t.wall_ns, _rng_returning(t.initiator_ephemeral)
    )
    assert initiation.pack() == t.initiation.raw
    assert (handshake.chaining_key, handshake.hash) == t.after_initiation

    lookup_index: dict[int, Handshake] = {t.initiator_index: handshake}
    assert consume_response(_parse_response(t.response.raw), local, lookup_index.get) is handshake
    assert handshake.state is HandshakeState.CONSUMED_RESPONSE
    assert handshake.remote_index == t.responder_index
    assert handshake.remote_ephemeral == t.responder_ephemeral_public
    assert (handshake.chaining_key, handshake.hash) == t.after_response

    keypair = begin_session(handshake, NOW)
    assert (keypair.local_index, keypair.remote_index, keypair.is_initiator) == (
        t.initiator_index,
        t.responder_index,
        True,
    )
    _check_keys(keypair, t.initiator_send_key, t.initiator_recv_key)


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=_ids)
def test_wgpy_as_responder(transcript: Transcript) -> None:
    t = transcript
    local = StaticIdentity(t.responder_static)
    handshake = Handshake(local, t.initiator_static_public, t.preshared_key)

    def lookup_peer(key: PublicKey) -> Handshake | None:
        return handshake if key == t.initiator_static_public else None

    assert consume_initiation(_parse_initiation(t.initiation.raw), local, lookup_peer, NOW) is handshake
    assert handshake.state is HandshakeState.CONSUMED_INITIATION
    assert handshake.latest_timestamp == t.timestamp
    assert handshake.remote_index == t.initiator_index
    assert handshake.remote_ephemeral == t.initiator_ephemeral_public
    assert (handshake.chaining_key, handshake.hash) == t.after_initiation

    response = create_response(handshake, t.responder_index, _rng_returning(t.responder_ephemeral))
    assert response.pack() == t.response.raw
    assert (handshake.chaining_key, handshake.hash) == t.after_response

    keypair = begin_session(handshake, NOW)
    assert (keypair.local_index, keypair.remote_index, keypair.is_initiator) == (
        t.responder_index,
        t.initiator_index,
        False,
    )
    _check_keys(keypair, t.responder_send_key, t.responder_recv_key)


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=_ids)
def test_messages_with_mac1(transcript: Transcript) -> None:
    """The mac1 form differs from the plain one only in mac1, which is MAC(HASH(LABEL_MAC1 || Spub_receiver),
    msg[:offset]) (whitepaper §5.4.4, computed here with hashlib directly); wgpy.noise ignores the MAC fields."""
    t = transcript
    for message, receiver, offset in (
        (t.initiation, t.responder_static_public, MAC1_OFFSET_INITIATION),
        (t.response, t.initiator_static_public, MAC1_OFFSET_RESPONSE),
    ):
        assert message.mac1_key == hashlib.blake2s(LABEL_MAC1 + receiver.raw).digest()
        assert message.mac1 == hashlib.blake2s(message.raw[:offset], digest_size=16, key=message.mac1_key).digest()
        assert message.with_mac1 == message.raw[:offset] + message.mac1 + bytes(MAC_SIZE)
        assert message.raw[offset:] == bytes(2 * MAC_SIZE)

    local = StaticIdentity(t.responder_static)
    handshake = Handshake(local, t.initiator_static_public, t.preshared_key)
    parsed = _parse_initiation(t.initiation.with_mac1)
    assert parsed.mac1 == t.initiation.mac1
    consume_initiation(parsed, local, lambda key: handshake, NOW)
    assert (handshake.chaining_key, handshake.hash) == t.after_initiation


@pytest.mark.parametrize("transcript", TRANSCRIPTS, ids=_ids)
def test_recorded_steps(transcript: Transcript) -> None:
    """The token order is whitepaper §5.4.2/§5.4.3's; each message's last step is the state wgpy exposes; and the
    transport keys are KDF2(C, empty) of the final chaining key (§5.4.5)."""
    t = transcript
    assert [(s.message, s.token) for s in t.steps] == [
        *(("initiation", token) for token in ("e", "es", "s", "ss", "{t}")),
        *(("response", token) for token in ("e", "ee", "se", "psk", "{}")),
    ]
    assert (t.steps[4].chaining_key, t.steps[4].hash) == t.after_initiation
    assert (t.steps[-1].chaining_key, t.steps[-1].hash) == t.after_response
    # MixHash happens only on e, s, {t}, e, psk and {}: the hash is unchanged by the DH tokens.
    for previous, step in zip(t.steps, t.steps[1:], strict=False):
        if step.token in ("es", "ss", "ee", "se"):
            assert step.hash == previous.hash
    assert crypto.kdf2(t.after_response[0], b"") == (t.initiator_send_key, t.initiator_recv_key)
    assert (t.responder_send_key, t.responder_recv_key) == (t.initiator_recv_key, t.initiator_send_key)
