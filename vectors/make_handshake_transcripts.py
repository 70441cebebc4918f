"""Generate ``wgpy/tools/data/handshake_transcripts.json``: golden WireGuard handshakes with every intermediate value.

Run ``python vectors/make_handshake_transcripts.py`` from the repository root. The output depends only on the fixed
inputs in ``CASES`` (static keys, ephemerals, preshared key, sender indices, wall clock), so running it again
rewrites the same file byte for byte.

Every value is computed three times and the script refuses to write anything unless all three agree:

1. **Straight-line**: the formulas of the whitepaper §5.4.2 (initiation) and §5.4.3 (response) written out one token
   at a time with the ``wgpy.crypto`` primitives (``hash``, ``kdf1/2/3``, ``dh``, ``aead_seal``). This is the only
   place the per-token values (after ``e, es, s, ss, {t}`` and ``e, ee, se, psk, {}``) can come from on the wgpy
   side, because ``wgpy.noise`` keeps them in local variables.
2. **wgpy.noise**: ``create_initiation`` / ``consume_initiation`` / ``create_response`` / ``consume_response`` /
   ``begin_session`` with the same inputs: the messages, ``Handshake.chaining_key`` / ``Handshake.hash`` after
   each message, and the keypairs (checked by sealing and opening with the straight-line transport keys).
3. **The independent oracle**: the ``noiseprotocol`` package running ``Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s``
   with the WireGuard identifier as prologue, the psk at position 2 (all-zero when none) and the ephemerals
   injected. Its ``ck``/``h`` are recorded after every token (by wrapping each message pattern in an iterator that
   snapshots the symmetric state once a token has been processed), its handshake messages must equal bytes
   [8:116] of the initiation and [12:60] of the response, its decrypted payloads must be the TAI64N timestamp and
   the empty string, and its transport cipher keys must equal the split keys.

mac1 is not part of Noise, so the oracle cannot check it: it is computed as the whitepaper §5.4.4 says,
``MAC(HASH(LABEL_MAC1 || Spub_receiver), msg[:offset])``, with ``wgpy.crypto`` and again with ``hashlib.blake2s``
called directly. mac2 stays zero (no cookie).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from noise.connection import Keypair as NoiseKeypair
from noise.connection import NoiseConnection

from wgpy import crypto
from wgpy.constants import CONSTRUCTION, IDENTIFIER, LABEL_MAC1
from wgpy.keypair import Keypair
from wgpy.keys import PresharedKey, PrivateKey, PublicKey
from wgpy.messages import (
    MAC1_OFFSET_INITIATION,
    MAC1_OFFSET_RESPONSE,
    Initiation,
    MessageType,
    Response,
    unpack,
)
from wgpy.noise import (
    Handshake,
    StaticIdentity,
    begin_session,
    consume_initiation,
    consume_response,
    create_initiation,
    create_response,
)
from wgpy.tai64n import stamp

#: Package data (``wgpy trace --golden`` reads it from an installed wgpy too); the other vector files stay in vectors/.
OUTPUT: Final = Path(__file__).resolve().parents[1] / "wgpy" / "tools" / "data" / "handshake_transcripts.json"
NOISE_PROTOCOL_NAME: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
INITIATION_TOKENS: Final = ("e", "es", "s", "ss", "{t}")
RESPONSE_TOKENS: Final = ("e", "ee", "se", "psk", "{}")
#: Tokens after which WireGuard holds a fresh AEAD key kappa; the transcript records it for them.
KEYED_TOKENS: Final = frozenset({"es", "ss", "psk"})
_TAI64N: Final = struct.Struct(">QI")


def _key(first: int) -> bytes:
    """32 fixed bytes ``first, first+1, ...`` (mod 256): the "bytes(range(32))" family of test keys."""
    return bytes((first + i) % 256 for i in range(32))


@dataclass(frozen=True)
class Case:
    """The fixed inputs of one transcript. Private keys are stored clamped, as ``wg genkey`` stores them."""

    name: str
    description: str
    initiator_static_private: bytes
    responder_static_private: bytes
    initiator_ephemeral_private: bytes
    responder_ephemeral_private: bytes
    preshared_key: bytes | None
    initiator_sender_index: int
    responder_sender_index: int
    wall_ns: int


CASES: Final = (
    Case(
        name="no_psk",
        description="no preshared key configured: the all-zero Q of whitepaper §5.4.3 is mixed in",
        initiator_static_private=crypto.clamp(_key(0x00)),
        responder_static_private=crypto.clamp(_key(0x20)),
        initiator_ephemeral_private=crypto.clamp(_key(0x40)),
        responder_ephemeral_private=crypto.clamp(_key(0x60)),
        preshared_key=None,
        initiator_sender_index=0x11223344,
        responder_sender_index=0x55667788,
        wall_ns=1_700_000_000_123_456_789,
    ),
    Case(
        name="psk",
        description="a preshared key configured on both sides",
        initiator_static_private=crypto.clamp(_key(0x80)),
        responder_static_private=crypto.clamp(_key(0xA0)),
        initiator_ephemeral_private=crypto.clamp(_key(0xC0)),
        responder_ephemeral_private=crypto.clamp(_key(0xE0)),
        preshared_key=_key(0x35),
        initiator_sender_index=0xDEADBEEF,
        responder_sender_index=0x0BADF00D,
        wall_ns=1_735_689_600_987_654_321,
    ),
)


@dataclass(frozen=True)
class Step:
    """The chaining key and hash once a token (or the payload, ``{t}`` / ``{}``) has been processed."""

    message: str  # "initiation" or "response"
    token: str
    chaining_key: bytes
    hash: bytes
    key: bytes | None  # kappa, for the tokens in KEYED_TOKENS


@dataclass
class Transcript:
    """What one way of running the handshake produced."""

    steps: list[Step] = field(default_factory=list)
    initiation_noise: bytes = b""  # the Noise message: initiation bytes [8:116]
    response_noise: bytes = b""  # response bytes [12:60]
    initiator_send_key: bytes = b""
    initiator_recv_key: bytes = b""


class TranscriptMismatch(Exception):
    """Two computations of the same value disagree: nothing is written."""


def _check_equal(case: Case, what: str, **values: object) -> None:
    first_name, first = next(iter(values.items()))
    for name, value in values.items():
        if value != first:
            raise TranscriptMismatch(f"case {case.name}: {what}: {name} != {first_name}")


def _public(private: bytes) -> bytes:
    return crypto.dh_public(private)


def _psk(case: Case) -> bytes:
    return case.preshared_key if case.preshared_key is not None else bytes(32)


def _rng_returning(value: bytes) -> Callable[[int], bytes]:
    def rng(size: int) -> bytes:
        if size != len(value):
            raise TranscriptMismatch(f"rng asked for {size} bytes, expected {len(value)}")
        return value

    return rng


# --- 1. Straight-line recomputation (whitepaper §5.4.2, §5.4.3, §5.4.5) --------------------------------------------


def straight_line(case: Case) -> tuple[Transcript, bytes, bytes]:
    """Return the transcript and the full initiation and response (mac1/mac2 zero)."""
    t = Transcript()
    spriv_i, spub_i = case.initiator_static_private, _public(case.initiator_static_private)
    spub_r = _public(case.responder_static_private)  # the initiator's side of the formulas: no Spriv_r needed
    epriv_i, epub_i = case.initiator_ephemeral_private, _public(case.initiator_ephemeral_private)
    epriv_r, epub_r = case.responder_ephemeral_private, _public(case.responder_ephemeral_private)
    timestamp = stamp(case.wall_ns)

    def record(message: str, token: str, ck: bytes, h: bytes, key: bytes | None = None) -> None:
        t.steps.append(Step(message, token, ck, h, key))

    # §5.4.2 initiation
    ck = crypto.hash(CONSTRUCTION)  # Ci := HASH(CONSTRUCTION)
    h = crypto.hash(ck + IDENTIFIER)  # Hi := HASH(Ci || IDENTIFIER)
    h = crypto.hash(h + spub_r)  # Hi := HASH(Hi || Spub_r)
    # e
    ck = crypto.kdf1(ck, epub_i)
    h = crypto.hash(h + epub_i)
    record("initiation", "e", ck, h)
    # es
    ck, key = crypto.kdf2(ck, crypto.dh(epriv_i, spub_r))
    record("initiation", "es", ck, h, key)
    # s
    encrypted_static = crypto.aead_seal(key, 0, spub_i, h)
    h = crypto.hash(h + encrypted_static)
    record("initiation", "s", ck, h)
    # ss
    ck, key = crypto.kdf2(ck, crypto.dh(spriv_i, spub_r))
    record("initiation", "ss", ck, h, key)
    # {t}
    encrypted_timestamp = crypto.aead_seal(key, 0, timestamp, h)
    h = crypto.hash(h + encrypted_timestamp)
    record("initiation", "{t}", ck, h)
    initiation = (
        struct.pack("<II", MessageType.INITIATION, case.initiator_sender_index)
        + epub_i
        + encrypted_static
        + encrypted_timestamp
        + bytes(32)
    )

    # §5.4.3 response
    # e
    ck = crypto.kdf1(ck, epub_r)
    h = crypto.hash(h + epub_r)
    record("response", "e", ck, h)
    # ee
    ck = crypto.kdf1(ck, crypto.dh(epriv_r, epub_i))
    record("response", "ee", ck, h)
    # se
    ck = crypto.kdf1(ck, crypto.dh(epriv_r, spub_i))
    record("response", "se", ck, h)
    # psk
    ck, tau, key = crypto.kdf3(ck, _psk(case))
    h = crypto.hash(h + tau)
    record("response", "psk", ck, h, key)
    # {}
    encrypted_nothing = crypto.aead_seal(key, 0, b"", h)
    h = crypto.hash(h + encrypted_nothing)
    record("response", "{}", ck, h)
    response = (
        struct.pack("<III", MessageType.RESPONSE, case.responder_sender_index, case.initiator_sender_index)
        + epub_r
        + encrypted_nothing
        + bytes(32)
    )

    # §5.4.5 (T_send_i, T_recv_i) := KDF2(Ci, epsilon)
    t.initiator_send_key, t.initiator_recv_key = crypto.kdf2(ck, b"")
    t.initiation_noise = initiation[8:MAC1_OFFSET_INITIATION]
    t.response_noise = response[12:MAC1_OFFSET_RESPONSE]
    return t, initiation, response


def tai64n_label(wall_ns: int) -> bytes:
    """Whitepaper §5.1 TAI64N, nanoseconds whitened to a multiple of 2**24 (as the kernel's tai64n_now)."""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    return _TAI64N.pack(2**62 + 10 + seconds, nanos - nanos % 2**24)


def mac1(receiver_static_public: bytes, message: bytes, offset: int) -> tuple[bytes, bytes]:
    """(mac1 key, mac1) of whitepaper §5.4.4, cross-checked against hashlib called directly."""
    mac1_key = crypto.hash(LABEL_MAC1 + receiver_static_public)
    value = crypto.mac(mac1_key, message[:offset])
    direct_key = hashlib.blake2s(LABEL_MAC1 + receiver_static_public).digest()
    direct = hashlib.blake2s(message[:offset], digest_size=16, key=direct_key).digest()
    if (mac1_key, value) != (direct_key, direct):
        raise TranscriptMismatch("mac1: wgpy.crypto != hashlib")
    return mac1_key, value


# --- 2. wgpy.noise ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WgpyRun:
    initiation: bytes
    response: bytes
    initiator_after_initiation: tuple[bytes, bytes]
    responder_after_initiation: tuple[bytes, bytes]
    responder_after_response: tuple[bytes, bytes]
    initiator_after_response: tuple[bytes, bytes]
    initiator_keypair: Keypair
    responder_keypair: Keypair


def run_wgpy(case: Case) -> WgpyRun:
    local_i = StaticIdentity(PrivateKey(case.initiator_static_private))
    local_r = StaticIdentity(PrivateKey(case.responder_static_private))
    psk = PresharedKey(case.preshared_key) if case.preshared_key is not None else None
    handshake_i = Handshake(local_i, local_r.public_key, psk)
    handshake_r = Handshake(local_r, local_i.public_key, psk)

    def lookup_peer(key: PublicKey) -> Handshake | None:
        return handshake_r if key == local_i.public_key else None

    def lookup_index(index: int) -> Handshake | None:
        return handshake_i if index == case.initiator_sender_index else None

    initiation = create_initiation(
        handshake_i,
        local_i,
        case.initiator_sender_index,
        case.wall_ns,
        _rng_returning(case.initiator_ephemeral_private),
    ).pack()
    initiator_after_initiation = (handshake_i.chaining_key, handshake_i.hash)
    initiation_message = unpack(initiation)
    if not isinstance(initiation_message, Initiation):
        raise TranscriptMismatch("the initiation does not parse as one")
    consumed = consume_initiation(initiation_message, local_r, lookup_peer, now=1.0)
    responder_after_initiation = (consumed.chaining_key, consumed.hash)
    response = create_response(
        handshake_r, case.responder_sender_index, _rng_returning(case.responder_ephemeral_private)
    ).pack()
    responder_after_response = (handshake_r.chaining_key, handshake_r.hash)
    response_message = unpack(response)
    if not isinstance(response_message, Response):
        raise TranscriptMismatch("the response does not parse as one")
    consume_response(response_message, local_i, lookup_index)
    initiator_after_response = (handshake_i.chaining_key, handshake_i.hash)
    return WgpyRun(
        initiation=initiation,
        response=response,
        initiator_after_initiation=initiator_after_initiation,
        responder_after_initiation=responder_after_initiation,
        responder_after_response=responder_after_response,
        initiator_after_response=initiator_after_response,
        initiator_keypair=begin_session(handshake_i, now=1.0),
        responder_keypair=begin_session(handshake_r, now=1.0),
    )


# --- 3. The noiseprotocol oracle ---------------------------------------------------------------------------------


def oracle_connection(
    *, initiator: bool, static_private: bytes, ephemeral_private: bytes, psk: bytes, remote_static: bytes | None
) -> Any:
    """A ``noiseprotocol`` connection set up as WireGuard uses Noise, with its ephemeral injected."""
    connection = NoiseConnection.from_name(NOISE_PROTOCOL_NAME)
    connection.set_prologue(IDENTIFIER)
    connection.set_psks(psk=psk)
    if initiator:
        connection.set_as_initiator()
    else:
        connection.set_as_responder()
    connection.set_keypair_from_private_bytes(NoiseKeypair.STATIC, static_private)
    if remote_static is not None:
        connection.set_keypair_from_public_bytes(NoiseKeypair.REMOTE_STATIC, remote_static)
    connection.set_keypair_from_private_bytes(NoiseKeypair.EPHEMERAL, ephemeral_private)
    with warnings.catch_warnings():
        # noiseprotocol warns that a preset ephemeral is for testing only, which is what this is.
        warnings.filterwarnings("ignore", message="One of ephemeral keypairs is already set")
        connection.start_handshake()
    return connection


class TokenRecorder:
    """Snapshots an oracle's symmetric state after each token it processes.

    noiseprotocol runs ``for token in message_pattern: ...`` over the patterns in ``message_patterns``; replacing
    each pattern by a generator that yields the same tokens lets us look at ``ck``/``h`` (and ``k``) when the loop
    comes back for the next token, i.e. just after the previous one was processed. References to the symmetric
    and handshake states are kept because noiseprotocol deletes them from the protocol object after ``Split()``.
    """

    def __init__(self, connection: Any) -> None:
        protocol = connection.noise_protocol
        self.symmetric_state = protocol.symmetric_state
        self.handshake_state = protocol.handshake_state
        self.steps: list[Step] = []
        patterns = self.handshake_state.message_patterns
        self.handshake_state.message_patterns = [
            self._watch(message, list(tokens))
            for message, tokens in zip(("initiation", "response"), patterns, strict=True)
        ]

    def _watch(self, message: str, tokens: Iterable[str]) -> Iterator[str]:
        for token in tokens:
            yield token
            self.record(message, token)

    def record(self, message: str, token: str) -> None:
        """Snapshot now; called by ``_watch`` after each token and by the caller after each payload."""
        state = self.symmetric_state
        key = bytes(state.cipher_state.k) if token in KEYED_TOKENS else None
        self.steps.append(Step(message, token, bytes(state.ck), bytes(state.h), key))


def run_oracle(case: Case) -> tuple[Transcript, Transcript]:
    """The transcripts seen by an oracle initiator and an oracle responder talking to each other."""
    spub_i = _public(case.initiator_static_private)
    spub_r = _public(case.responder_static_private)
    initiator = oracle_connection(
        initiator=True,
        static_private=case.initiator_static_private,
        ephemeral_private=case.initiator_ephemeral_private,
        psk=_psk(case),
        remote_static=spub_r,
    )
    responder = oracle_connection(
        initiator=False,
        static_private=case.responder_static_private,
        ephemeral_private=case.responder_ephemeral_private,
        psk=_psk(case),
        remote_static=None,  # IK: the responder learns it from the initiation
    )
    recorder_i, recorder_r = TokenRecorder(initiator), TokenRecorder(responder)
    timestamp = stamp(case.wall_ns)

    initiation_noise = bytes(initiator.write_message(timestamp))  # the initiation's payload is the TAI64N label
    recorder_i.record("initiation", "{t}")
    if bytes(responder.read_message(initiation_noise)) != timestamp:
        raise TranscriptMismatch(f"case {case.name}: the oracle responder read a different timestamp")
    recorder_r.record("initiation", "{t}")
    if bytes(recorder_r.handshake_state.rs.public_bytes) != spub_i:
        raise TranscriptMismatch(f"case {case.name}: the oracle responder learned a different static key")

    response_noise = bytes(responder.write_message(b""))  # the response's payload is empty
    recorder_r.record("response", "{}")
    if bytes(initiator.read_message(response_noise)) != b"":
        raise TranscriptMismatch(f"case {case.name}: the oracle initiator read a non-empty response payload")
    recorder_i.record("response", "{}")

    transcripts = []
    for connection, recorder, is_initiator in ((initiator, recorder_i, True), (responder, recorder_r, False)):
        if bytes(connection.get_handshake_hash()) != recorder.steps[-1].hash:
            raise TranscriptMismatch(f"case {case.name}: oracle handshake hash != its last h")
        send_key = bytes(connection.noise_protocol.cipher_state_encrypt.k)
        recv_key = bytes(connection.noise_protocol.cipher_state_decrypt.k)
        transcripts.append(
            Transcript(
                steps=recorder.steps,
                initiation_noise=initiation_noise,
                response_noise=response_noise,
                initiator_send_key=send_key if is_initiator else recv_key,
                initiator_recv_key=recv_key if is_initiator else send_key,
            )
        )
    return transcripts[0], transcripts[1]


# --- Cross-check and write -------------------------------------------------------------------------------------------


def check_keypair(case: Case, keypair: Keypair, send_key: bytes, recv_key: bytes) -> None:
    """``keypair`` seals with ``send_key`` and opens what ``recv_key`` sealed (counter 0, empty AD)."""
    plaintext = b"golden transcript".ljust(32, b"\x00")
    try:
        sealed = keypair.seal(plaintext)
        if sealed is None or crypto.aead_open(send_key, 0, sealed[16:], b"") != plaintext:
            raise crypto.InvalidTag
        header = struct.pack("<IIQ", MessageType.TRANSPORT, keypair.local_index, 0)
        if keypair.open(0, header + crypto.aead_seal(recv_key, 0, plaintext, b"")) != plaintext:
            raise crypto.InvalidTag
    except crypto.InvalidTag:
        raise TranscriptMismatch(f"case {case.name}: a wgpy keypair does not use the split keys") from None


def _pair(step: Step) -> tuple[bytes, bytes]:
    return step.chaining_key, step.hash


def _state_json(step: Step) -> dict[str, str]:
    return {"chaining_key": step.chaining_key.hex(), "hash": step.hash.hex()}


def _message_json(message: bytes, receiver_static_public: bytes, offset: int) -> dict[str, str]:
    mac1_key, mac1_value = mac1(receiver_static_public, message, offset)
    with_mac1 = message[:offset] + mac1_value + message[offset + 16 :]
    return {
        "bytes": message.hex(),
        "mac1_key": mac1_key.hex(),
        "mac1": mac1_value.hex(),
        "bytes_with_mac1": with_mac1.hex(),
    }


def build_case(case: Case) -> dict[str, object]:
    """Compute one case three ways, cross-check everything and return its JSON form."""
    line, initiation, response = straight_line(case)
    oracle_i, oracle_r = run_oracle(case)
    wg = run_wgpy(case)

    _check_equal(
        case,
        "per-token values",
        straight_line=line.steps,
        oracle_initiator=oracle_i.steps,
        oracle_responder=oracle_r.steps,
    )
    _check_equal(
        case,
        "token order",
        straight_line=[s.token for s in line.steps],
        expected=[*INITIATION_TOKENS, *RESPONSE_TOKENS],
    )
    _check_equal(case, "initiation", straight_line=initiation, wgpy=wg.initiation)
    _check_equal(case, "response", straight_line=response, wgpy=wg.response)
    _check_equal(
        case,
        "Noise initiation message (initiation[8:116])",
        straight_line=line.initiation_noise,
        oracle=oracle_i.initiation_noise,
    )
    _check_equal(
        case,
        "Noise response message (response[12:60])",
        straight_line=line.response_noise,
        oracle=oracle_r.response_noise,
    )
    after_initiation, after_response = line.steps[len(INITIATION_TOKENS) - 1], line.steps[-1]
    _check_equal(
        case,
        "state after the initiation",
        straight_line=_pair(after_initiation),
        wgpy_initiator=wg.initiator_after_initiation,
        wgpy_responder=wg.responder_after_initiation,
    )
    _check_equal(
        case,
        "state after the response",
        straight_line=_pair(after_response),
        wgpy_responder=wg.responder_after_response,
        wgpy_initiator=wg.initiator_after_response,
    )
    _check_equal(
        case,
        "transport keys",
        straight_line=(line.initiator_send_key, line.initiator_recv_key),
        oracle_initiator=(oracle_i.initiator_send_key, oracle_i.initiator_recv_key),
        oracle_responder=(oracle_r.initiator_send_key, oracle_r.initiator_recv_key),
    )
    check_keypair(case, wg.initiator_keypair, line.initiator_send_key, line.initiator_recv_key)
    check_keypair(case, wg.responder_keypair, line.initiator_recv_key, line.initiator_send_key)
    _check_equal(case, "TAI64N label", straight_line=tai64n_label(case.wall_ns), wgpy=stamp(case.wall_ns))

    spub_i = _public(case.initiator_static_private)
    spub_r = _public(case.responder_static_private)
    steps: list[dict[str, str]] = []
    for step in line.steps:
        entry = {"message": step.message, "token": step.token, **_state_json(step)}
        if step.key is not None:
            entry["key"] = step.key.hex()
        steps.append(entry)
    return {
        "name": case.name,
        "description": case.description,
        "inputs": {
            "initiator_static_private": case.initiator_static_private.hex(),
            "initiator_static_public": spub_i.hex(),
            "responder_static_private": case.responder_static_private.hex(),
            "responder_static_public": spub_r.hex(),
            "initiator_ephemeral_private": case.initiator_ephemeral_private.hex(),
            "initiator_ephemeral_public": _public(case.initiator_ephemeral_private).hex(),
            "responder_ephemeral_private": case.responder_ephemeral_private.hex(),
            "responder_ephemeral_public": _public(case.responder_ephemeral_private).hex(),
            "preshared_key": case.preshared_key.hex() if case.preshared_key is not None else None,
            "initiator_sender_index": case.initiator_sender_index,
            "responder_sender_index": case.responder_sender_index,
            "wall_ns": case.wall_ns,
            "timestamp": stamp(case.wall_ns).hex(),
        },
        "initiation": _message_json(initiation, spub_r, MAC1_OFFSET_INITIATION),
        "response": _message_json(response, spub_i, MAC1_OFFSET_RESPONSE),
        "steps": steps,
        "after_initiation": _state_json(after_initiation),
        "after_response": _state_json(after_response),
        "transport": {
            "initiator_send_key": line.initiator_send_key.hex(),
            "initiator_recv_key": line.initiator_recv_key.hex(),
            "responder_send_key": line.initiator_recv_key.hex(),
            "responder_recv_key": line.initiator_send_key.hex(),
        },
    }


def build_document() -> dict[str, object]:
    return {
        "description": (
            "Golden WireGuard handshakes (whitepaper §5.4.2-§5.4.5) with fixed keys, ephemerals, indices and "
            "wall clock: full messages, the chaining key and hash after every Noise token, and the transport keys."
        ),
        "generator": "vectors/make_handshake_transcripts.py",
        "cross_checked_with": (
            "wgpy.noise, a straight-line recomputation with wgpy.crypto, and the noiseprotocol package "
            "(Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s, prologue = WireGuard identifier, psk at position 2)"
        ),
        "conventions": {
            "private keys": "stored clamped (RFC 7748 §5); the *_ephemeral_private value is what rng returns",
            "preshared_key": "null means none configured: the all-zero key is mixed in",
            "bytes": "mac1 and mac2 zero, as wgpy.noise builds the message",
            "bytes_with_mac1": "mac1 = MAC(HASH(LABEL_MAC1 || Spub_receiver), bytes[:mac1 offset]); mac2 zero",
            "steps": "chaining key and hash once each token has been processed; key = the AEAD key it yields",
            "transport": "initiator_send_key == responder_recv_key and initiator_recv_key == responder_send_key",
        },
        "cases": [build_case(case) for case in CASES],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=OUTPUT, help="where to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="only verify that the file is up to date")
    args = parser.parse_args(argv)
    try:
        text = json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"
    except TranscriptMismatch as error:
        print(f"refusing to write: {error}", file=sys.stderr)
        return 1
    output: Path = args.output
    if args.check:
        if not output.exists() or output.read_text(encoding="utf-8") != text:
            print(f"{output} is out of date: run {sys.argv[0]}", file=sys.stderr)
            return 1
        print(f"{output} is up to date; all values cross-checked")
        return 0
    output.write_text(text, encoding="utf-8")
    print(f"wrote {output}: {len(CASES)} cases, all values cross-checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
