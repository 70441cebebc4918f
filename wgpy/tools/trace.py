"""A WireGuard handshake replayed one Noise token at a time, for teaching and auditing (whitepaper §5.4).

Theory of operation: ``trace_handshake`` runs one complete handshake between two fixed identities twice, and
refuses to return unless both runs agree:

1. **The protocol code itself**: ``wgpy.noise`` ``create_initiation`` / ``consume_initiation`` / ``create_response``
   / ``consume_response`` / ``begin_session`` and ``wgpy.cookie`` (mac1, mac2), with an ``rng`` that returns the
   ephemeral private keys it was given. Nothing is re-implemented for this side: it is what the device runs.
2. **A straight-line reading of the whitepaper**: the formulas of §5.4.2 (initiation), §5.4.3 (response), §5.4.4
   (mac1/mac2) and §5.4.5 (transport keys), written out one token at a time with the ``wgpy.crypto`` primitives.
   ``wgpy.noise`` keeps the per-token values in local variables; this is where the trace gets them from.

The chaining key and hash after each message, both messages byte for byte, and the transport keys (checked by
sealing with one side's ``Keypair`` and opening with the other's, and with the straight-line keys) must be equal,
otherwise ``TraceMismatch`` is raised: a trace that disagrees with the code it claims to explain is wrong.

The trace holds every secret of the handshake (chaining keys, AEAD keys, the inputs' private keys): it is meant
for test keys and throwaway random keys, never for a live interface's.

The golden transcripts ship inside the package (``wgpy/tools/data/handshake_transcripts.json``, read with
``importlib.resources``), so ``wgpy trace --golden`` works from a plain install; ``load_golden_document`` is the only
file read here. It reads no clock; ``--random`` draws its keys from an injected ``rng`` (``os.urandom`` by default).
Argument parsing and printing are ``wgpy.cli.trace``'s.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Final

from .. import crypto, noise
from ..constants import CONSTRUCTION, IDENTIFIER, LABEL_MAC1
from ..cookie import CookieChecker, CookieGenerator
from ..errors import WgpyError
from ..keypair import Keypair
from ..keys import PresharedKey, PrivateKey, PublicKey
from ..messages import (
    MAC1_OFFSET_INITIATION,
    MAC1_OFFSET_RESPONSE,
    MAC_SIZE,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    TRANSPORT_HEADER,
    Initiation,
    MessageType,
    Response,
    unpack,
)
from ..tai64n import stamp, unstamp

__all__ = [
    "INITIATION_TOKENS",
    "RESPONSE_TOKENS",
    "GoldenCaseError",
    "HandshakeTrace",
    "MessageField",
    "TraceInputs",
    "TraceMismatch",
    "TraceStep",
    "check_against_golden",
    "format_trace",
    "golden_inputs",
    "initiation_fields",
    "load_golden_document",
    "random_inputs",
    "response_fields",
    "trace_handshake",
    "trace_inputs",
    "trace_to_json",
]

INITIATION_TOKENS: Final = ("e", "es", "s", "ss", "{t}")  # whitepaper §5.4.2
RESPONSE_TOKENS: Final = ("e", "ee", "se", "psk", "{}")  # whitepaper §5.4.3
SECTION_INITIATION: Final = "§5.4.2"
SECTION_RESPONSE: Final = "§5.4.3"
SECTION_MACS: Final = "§5.4.4"
SECTION_TRANSPORT: Final = "§5.4.5"
GOLDEN_FILE_NAME: Final = "handshake_transcripts.json"
#: The golden transcripts shipped as package data (``[tool.setuptools.package-data]`` in pyproject.toml).
DEFAULT_GOLDEN: Traversable = files(__package__ or "wgpy.tools") / "data" / GOLDEN_FILE_NAME
_NOW: Final = 0.0  # the monotonic clock the protocol functions are given: no timer matters in a single handshake
_HEADER_INITIATION: Final = struct.Struct("<II")
_HEADER_RESPONSE: Final = struct.Struct("<III")
_RANDOM_EPOCH_NS: Final = 1_577_836_800 * 10**9  # 2020-01-01: --random stamps a time in the 20 years after it
_RANDOM_SPAN_NS: Final = 20 * 365 * 86_400 * 10**9


class TraceMismatch(WgpyError):
    """The straight-line computation and ``wgpy.noise`` disagree: the trace (or the protocol code) is wrong."""


class GoldenCaseError(WgpyError, ValueError):
    """The golden transcript file is missing, unreadable, corrupted or does not hold the requested case."""


@dataclass(frozen=True, slots=True)
class TraceInputs:
    """Everything a handshake depends on. Ephemerals are what the ``rng`` returns (``dh_generate`` clamps them)."""

    initiator_private: PrivateKey
    responder_private: PrivateKey
    preshared_key: PresharedKey | None
    initiator_ephemeral: bytes
    responder_ephemeral: bytes
    wall_ns: int
    sender_indices: tuple[int, int]  # (initiator's, responder's)


@dataclass(frozen=True, slots=True)
class TraceStep:
    """The state once one token (or derivation) of the handshake has been processed.

    Attributes:
        message: ``"initiation"``, ``"response"`` or ``"transport"``.
        token: the Noise token (``e``, ``es``, ``s``, ``ss``, ``{t}``, ``ee``, ``se``, ``psk``, ``{}``), or
            ``init``, ``mac1``, ``mac2``, ``T_send_i``, ``T_recv_i`` for the steps around them.
        section: the whitepaper section that defines the step.
        description: what the step does, in one line.
        formula: the whitepaper's assignments for the step.
        chaining_key: Ci / Cr after the step.
        hash: Hi / Hr after the step.
        key: the key the step produces (κ, the mac1 key or a transport key), if any.
        output: the bytes the step writes into the message (or the derived value), if any.
    """

    message: str
    token: str
    section: str
    description: str
    formula: str
    chaining_key: bytes
    hash: bytes
    key: bytes | None
    output: bytes | None


@dataclass(frozen=True, slots=True)
class MessageField:
    """One field of a handshake message: where it sits and what it holds."""

    name: str
    offset: int
    value: bytes
    note: str


@dataclass(frozen=True, slots=True)
class HandshakeTrace:
    """One traced handshake: its inputs, the steps in order, both messages (with mac1) and the transport keys."""

    inputs: TraceInputs
    steps: tuple[TraceStep, ...]
    initiation: bytes
    response: bytes
    timestamp: bytes
    initiator_send_key: bytes  # = the responder's receiving key
    initiator_recv_key: bytes  # = the responder's sending key

    def step(self, message: str, token: str) -> TraceStep:
        """The step of ``token`` in ``message`` (raises ``KeyError`` if there is none)."""
        for step in self.steps:
            if step.message == message and step.token == token:
                return step
        raise KeyError(f"{message} {token}")


def _rng_returning(value: bytes) -> Callable[[int], bytes]:
    """An rng that hands out ``value`` once: the ephemeral ``dh_generate`` is to draw."""
    handed_out = False

    def rng(size: int) -> bytes:
        nonlocal handed_out
        if handed_out or size != len(value):
            raise TraceMismatch(f"the protocol drew {size} bytes from the rng beyond the ephemeral it was given")
        handed_out = True
        return value

    return rng


def _check(what: str, ours: object, protocol: object) -> None:
    if ours != protocol:
        raise TraceMismatch(f"{what}: the straight-line trace and wgpy.noise disagree")


# --- Run 1: the protocol code -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ProtocolRun:
    initiation: bytes  # with mac1 (and a zero mac2: no cookie)
    response: bytes
    initiator_after_initiation: tuple[bytes, bytes]
    responder_after_initiation: tuple[bytes, bytes]
    responder_after_response: tuple[bytes, bytes]
    initiator_after_response: tuple[bytes, bytes]
    initiator_keypair: Keypair
    responder_keypair: Keypair


def _run_protocol(inputs: TraceInputs) -> _ProtocolRun:
    """Run both sides through ``wgpy.noise`` and ``wgpy.cookie``, as the device does."""
    local_i = noise.StaticIdentity(inputs.initiator_private)
    local_r = noise.StaticIdentity(inputs.responder_private)
    handshake_i = noise.Handshake(local_i, local_r.public_key, inputs.preshared_key)
    handshake_r = noise.Handshake(local_r, local_i.public_key, inputs.preshared_key)
    index_i, index_r = inputs.sender_indices

    def lookup_peer(key: PublicKey) -> noise.Handshake | None:
        return handshake_r if key == local_i.public_key else None

    def lookup_index(index: int) -> noise.Handshake | None:
        return handshake_i if index == index_i else None

    try:
        created = noise.create_initiation(
            handshake_i, local_i, index_i, inputs.wall_ns, _rng_returning(inputs.initiator_ephemeral)
        )
        initiator_after_initiation = (handshake_i.chaining_key, handshake_i.hash)
        initiation = CookieGenerator(local_r.public_key).add_macs(created.pack(), _NOW)
        if not CookieChecker(local_r.public_key, os.urandom).check_mac1(initiation):
            raise TraceMismatch("the responder's cookie checker rejects the initiation's mac1")
        received = unpack(initiation)
        if not isinstance(received, Initiation):
            raise TraceMismatch("the initiation does not parse as one")
        consumed = noise.consume_initiation(received, local_r, lookup_peer, _NOW)
        responder_after_initiation = (consumed.chaining_key, consumed.hash)

        created_response = noise.create_response(handshake_r, index_r, _rng_returning(inputs.responder_ephemeral))
        responder_after_response = (handshake_r.chaining_key, handshake_r.hash)
        response = CookieGenerator(local_i.public_key).add_macs(created_response.pack(), _NOW)
        if not CookieChecker(local_i.public_key, os.urandom).check_mac1(response):
            raise TraceMismatch("the initiator's cookie checker rejects the response's mac1")
        received_response = unpack(response)
        if not isinstance(received_response, Response):
            raise TraceMismatch("the response does not parse as one")
        noise.consume_response(received_response, local_i, lookup_index)
        initiator_after_response = (handshake_i.chaining_key, handshake_i.hash)
        initiator_keypair = noise.begin_session(handshake_i, _NOW)
        responder_keypair = noise.begin_session(handshake_r, _NOW)
    except noise.HandshakeRejected as rejected:
        raise TraceMismatch(f"wgpy.noise rejected the handshake ({rejected.reason.name})") from None
    return _ProtocolRun(
        initiation=initiation,
        response=response,
        initiator_after_initiation=initiator_after_initiation,
        responder_after_initiation=responder_after_initiation,
        responder_after_response=responder_after_response,
        initiator_after_response=initiator_after_response,
        initiator_keypair=initiator_keypair,
        responder_keypair=responder_keypair,
    )


# --- Run 2: the whitepaper, one token at a time ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _StraightLine:
    steps: tuple[TraceStep, ...]
    initiation: bytes
    response: bytes
    after_initiation: tuple[bytes, bytes]
    after_response: tuple[bytes, bytes]
    initiator_send_key: bytes
    initiator_recv_key: bytes


def _straight_line(inputs: TraceInputs) -> _StraightLine:
    """The whitepaper's formulas, each message from the side that creates it."""
    steps: list[TraceStep] = []

    def record(
        message: str,
        token: str,
        section: str,
        description: str,
        formula: str,
        ck: bytes,
        h: bytes,
        key: bytes | None = None,
        output: bytes | None = None,
    ) -> None:
        steps.append(TraceStep(message, token, section, description, formula, ck, h, key, output))

    spriv_i = inputs.initiator_private.raw
    spub_i = crypto.dh_public(spriv_i)
    spriv_r = inputs.responder_private.raw
    spub_r = crypto.dh_public(spriv_r)
    epriv_i = crypto.clamp(inputs.initiator_ephemeral)  # DH-GENERATE clamps what the rng returned
    epub_i = crypto.dh_public(epriv_i)
    epriv_r = crypto.clamp(inputs.responder_ephemeral)
    epub_r = crypto.dh_public(epriv_r)
    psk = inputs.preshared_key.raw if inputs.preshared_key is not None else bytes(32)
    index_i, index_r = inputs.sender_indices
    timestamp = stamp(inputs.wall_ns)

    # §5.4.2: the initiator (i) builds the first message.
    ck = crypto.hash(CONSTRUCTION)
    h = crypto.hash(crypto.hash(ck + IDENTIFIER) + spub_r)
    record(
        "initiation",
        "init",
        SECTION_INITIATION,
        "start from the protocol name and bind the handshake to the identifier and the responder's static key",
        "Ci := HASH(CONSTRUCTION); Hi := HASH(HASH(Ci ‖ IDENTIFIER) ‖ Spub_r)",
        ck,
        h,
    )
    # e
    ck = crypto.kdf1(ck, epub_i)
    h = crypto.hash(h + epub_i)
    record(
        "initiation",
        "e",
        SECTION_INITIATION,
        "send a fresh ephemeral public key in the clear and mix it into both the chaining key and the hash",
        "msg.ephemeral := Epub_i; Ci := KDF1(Ci, Epub_i); Hi := HASH(Hi ‖ msg.ephemeral)",
        ck,
        h,
        output=epub_i,
    )
    # es
    ck, key = crypto.kdf2(ck, crypto.dh(epriv_i, spub_r))
    record(
        "initiation",
        "es",
        SECTION_INITIATION,
        "DH of the initiator's ephemeral and the responder's static key: only the real responder can follow on",
        "(Ci, κ) := KDF2(Ci, DH(Epriv_i, Spub_r))",
        ck,
        h,
        key=key,
    )
    # s
    encrypted_static = crypto.aead_seal(key, 0, spub_i, h)
    h = crypto.hash(h + encrypted_static)
    record(
        "initiation",
        "s",
        SECTION_INITIATION,
        "send the initiator's static public key encrypted under κ, so an observer cannot tell who is calling",
        "msg.static := AEAD(κ, 0, Spub_i, Hi); Hi := HASH(Hi ‖ msg.static)",
        ck,
        h,
        output=encrypted_static,
    )
    # ss
    ck, key = crypto.kdf2(ck, crypto.dh(spriv_i, spub_r))
    record(
        "initiation",
        "ss",
        SECTION_INITIATION,
        "DH of both static keys: authenticates the initiator to the responder",
        "(Ci, κ) := KDF2(Ci, DH(Spriv_i, Spub_r))",
        ck,
        h,
        key=key,
    )
    # {t}
    encrypted_timestamp = crypto.aead_seal(key, 0, timestamp, h)
    h = crypto.hash(h + encrypted_timestamp)
    record(
        "initiation",
        "{t}",
        SECTION_INITIATION,
        f"send an encrypted TAI64N timestamp ({timestamp.hex()}): the responder rejects replayed initiations",
        "msg.timestamp := AEAD(κ, 0, TAI64N(), Hi); Hi := HASH(Hi ‖ msg.timestamp)",
        ck,
        h,
        output=encrypted_timestamp,
    )
    after_initiation = (ck, h)
    body = _HEADER_INITIATION.pack(MessageType.INITIATION, index_i) + epub_i + encrypted_static + encrypted_timestamp
    mac1_key = crypto.hash(LABEL_MAC1 + spub_r)
    mac1 = crypto.mac(mac1_key, body)
    record(
        "initiation",
        "mac1",
        SECTION_MACS,
        "MAC over the message so far, keyed by the responder's public key: checked before any DH is spent",
        "msg.mac1 := MAC(HASH(LABEL_MAC1 ‖ Spub_r), msg_α)",
        ck,
        h,
        key=mac1_key,
        output=mac1,
    )
    mac2 = bytes(MAC_SIZE)
    record(
        "initiation",
        "mac2",
        SECTION_MACS,
        "MAC under a cookie from the responder; zero because no cookie reply was received",
        "msg.mac2 := MAC(Cookie, msg_β) if a fresh cookie is held, else 0^16",
        ck,
        h,
        output=mac2,
    )
    initiation = body + mac1 + mac2

    # §5.4.3: the responder (r) answers, continuing from the state both sides now share.
    # e
    ck = crypto.kdf1(ck, epub_r)
    h = crypto.hash(h + epub_r)
    record(
        "response",
        "e",
        SECTION_RESPONSE,
        "send the responder's fresh ephemeral public key in the clear and mix it in",
        "msg.ephemeral := Epub_r; Cr := KDF1(Cr, Epub_r); Hr := HASH(Hr ‖ msg.ephemeral)",
        ck,
        h,
        output=epub_r,
    )
    # ee
    ck = crypto.kdf1(ck, crypto.dh(epriv_r, epub_i))
    record(
        "response",
        "ee",
        SECTION_RESPONSE,
        "DH of both ephemerals: the forward-secret part, gone once the ephemerals are erased",
        "Cr := KDF1(Cr, DH(Epriv_r, Epub_i))",
        ck,
        h,
    )
    # se
    ck = crypto.kdf1(ck, crypto.dh(epriv_r, spub_i))
    record(
        "response",
        "se",
        SECTION_RESPONSE,
        "DH of the responder's ephemeral and the initiator's static key: only the real initiator can follow on",
        "Cr := KDF1(Cr, DH(Epriv_r, Spub_i))",
        ck,
        h,
    )
    # psk
    ck, tau, key = crypto.kdf3(ck, psk)
    h = crypto.hash(h + tau)
    record(
        "response",
        "psk",
        SECTION_RESPONSE,
        "mix in the preshared key ("
        + ("configured" if inputs.preshared_key is not None else "none configured: 32 zero bytes")
        + "), a post-quantum safeguard",
        "(Cr, τ, κ) := KDF3(Cr, Q); Hr := HASH(Hr ‖ τ)",
        ck,
        h,
        key=key,
        output=tau,
    )
    # {}
    encrypted_nothing = crypto.aead_seal(key, 0, b"", h)
    h = crypto.hash(h + encrypted_nothing)
    record(
        "response",
        "{}",
        SECTION_RESPONSE,
        "encrypt the empty string: a tag that proves the responder derived the same keys",
        "msg.empty := AEAD(κ, 0, ε, Hr); Hr := HASH(Hr ‖ msg.empty)",
        ck,
        h,
        output=encrypted_nothing,
    )
    after_response = (ck, h)
    body = _HEADER_RESPONSE.pack(MessageType.RESPONSE, index_r, index_i) + epub_r + encrypted_nothing
    mac1_key = crypto.hash(LABEL_MAC1 + spub_i)
    mac1 = crypto.mac(mac1_key, body)
    record(
        "response",
        "mac1",
        SECTION_MACS,
        "MAC over the message so far, keyed by the initiator's public key",
        "msg.mac1 := MAC(HASH(LABEL_MAC1 ‖ Spub_i), msg_α)",
        ck,
        h,
        key=mac1_key,
        output=mac1,
    )
    record(
        "response",
        "mac2",
        SECTION_MACS,
        "MAC under a cookie from the initiator; zero because no cookie reply was received",
        "msg.mac2 := MAC(Cookie, msg_β) if a fresh cookie is held, else 0^16",
        ck,
        h,
        output=mac2,
    )
    response = body + mac1 + mac2

    # §5.4.5: both sides split the final chaining key into one key per direction.
    send_i, recv_i = crypto.kdf2(ck, b"")
    record(
        "transport",
        "T_send_i",
        SECTION_TRANSPORT,
        "first output of the split: the key the initiator sends with and the responder receives with",
        "(T_send_i = T_recv_r, T_recv_i = T_send_r) := KDF2(Ci = Cr, ε)",
        ck,
        h,
        key=send_i,
    )
    record(
        "transport",
        "T_recv_i",
        SECTION_TRANSPORT,
        "second output of the split: the key the responder sends with and the initiator receives with",
        "(T_send_i = T_recv_r, T_recv_i = T_send_r) := KDF2(Ci = Cr, ε)",
        ck,
        h,
        key=recv_i,
    )
    return _StraightLine(
        steps=tuple(steps),
        initiation=initiation,
        response=response,
        after_initiation=after_initiation,
        after_response=after_response,
        initiator_send_key=send_i,
        initiator_recv_key=recv_i,
    )


def _check_keypair(what: str, keypair: Keypair, send_key: bytes, recv_key: bytes) -> None:
    """``keypair`` seals with ``send_key`` and opens what ``recv_key`` sealed."""
    plaintext = b"wgpy trace".ljust(16, b"\x00")
    try:
        sealed = keypair.seal(plaintext)
        if sealed is None:
            raise crypto.InvalidTag
        counter = keypair.send_counter - 1
        if crypto.aead_open(send_key, counter, sealed[MESSAGE_TRANSPORT_HEADER_SIZE:], b"") != plaintext:
            raise crypto.InvalidTag
        header = TRANSPORT_HEADER.pack(MessageType.TRANSPORT, keypair.local_index, 0)
        if keypair.open(0, header + crypto.aead_seal(recv_key, 0, plaintext, b"")) != plaintext:
            raise crypto.InvalidTag
    except crypto.InvalidTag:
        raise TraceMismatch(f"{what}: the wgpy keypair does not use the traced transport keys") from None


def _check_session(initiator: Keypair, responder: Keypair) -> None:
    """What one side's keypair seals, the other's opens, in both directions."""
    plaintext = b"key confirmation".ljust(32, b"\x00")
    for sender, receiver in ((initiator, responder), (responder, initiator)):
        sealed = sender.seal(plaintext)
        if sealed is None:
            raise TraceMismatch("a fresh keypair refused to seal")
        counter = sender.send_counter - 1
        try:
            opened = receiver.open(counter, sealed)
        except crypto.InvalidTag:
            raise TraceMismatch("the two sides' keypairs do not match") from None
        if opened != plaintext:
            raise TraceMismatch("the two sides' keypairs do not match")


def trace_inputs(inputs: TraceInputs) -> HandshakeTrace:
    """Trace the handshake of ``inputs`` (see ``trace_handshake``)."""
    index_i, index_r = inputs.sender_indices
    for name, ephemeral in (
        ("initiator_ephemeral", inputs.initiator_ephemeral),
        ("responder_ephemeral", inputs.responder_ephemeral),
    ):
        if len(ephemeral) != crypto.KEY_SIZE:
            raise ValueError(f"{name} must be {crypto.KEY_SIZE} bytes")
    for index in (index_i, index_r):
        if not 0 <= index < 2**32:
            raise ValueError("sender indices must fit in 32 bits")

    run = _run_protocol(inputs)  # first: it rejects, with a reason, keys the handshake cannot use
    try:
        line = _straight_line(inputs)
    except crypto.InvalidTag:
        raise TraceMismatch("a DH of the straight-line trace is all zeros but wgpy.noise accepted it") from None

    _check("the initiation message", line.initiation, run.initiation)
    _check("Ci and Hi after the initiation (initiator)", line.after_initiation, run.initiator_after_initiation)
    _check("Ci and Hi after the initiation (responder)", line.after_initiation, run.responder_after_initiation)
    _check("the response message", line.response, run.response)
    _check("Cr and Hr after the response (responder)", line.after_response, run.responder_after_response)
    _check("Ci and Hi after the response (initiator)", line.after_response, run.initiator_after_response)
    _check_keypair("initiator", run.initiator_keypair, line.initiator_send_key, line.initiator_recv_key)
    _check_keypair("responder", run.responder_keypair, line.initiator_recv_key, line.initiator_send_key)
    _check_session(run.initiator_keypair, run.responder_keypair)
    return HandshakeTrace(
        inputs=inputs,
        steps=line.steps,
        initiation=run.initiation,
        response=run.response,
        timestamp=stamp(inputs.wall_ns),
        initiator_send_key=line.initiator_send_key,
        initiator_recv_key=line.initiator_recv_key,
    )


def trace_handshake(
    initiator_private: PrivateKey,
    responder_private: PrivateKey,
    *,
    preshared_key: PresharedKey | None = None,
    initiator_ephemeral: bytes,
    responder_ephemeral: bytes,
    wall_ns: int,
    sender_indices: tuple[int, int] = (1, 2),
) -> HandshakeTrace:
    """Replay one handshake token by token, checked against ``wgpy.noise``.

    Args:
        initiator_private: the initiator's static private key (Spriv_i).
        responder_private: the responder's static private key (Spriv_r).
        preshared_key: the key both sides configured, or ``None`` (the all-zero Q is mixed in).
        initiator_ephemeral: the 32 bytes the initiator's rng returns for Epriv_i (clamped by DH-GENERATE).
        responder_ephemeral: the same for Epriv_r.
        wall_ns: the initiator's wall clock, nanoseconds since the Unix epoch (for the TAI64N timestamp).
        sender_indices: (the initiator's sender index, the responder's sender index).

    Returns:
        The steps (``init``, the initiation tokens, its mac1/mac2, the response tokens, its mac1/mac2 and the
        two transport keys), both messages with mac1 filled in, and the transport keys.

    Raises:
        TraceMismatch: the straight-line computation and ``wgpy.noise`` / ``wgpy.cookie`` disagree, or
            ``wgpy.noise`` rejected the handshake (for instance a static key that gives an all-zero DH).
        ValueError: an ephemeral is not 32 bytes or an index does not fit in 32 bits.
    """
    return trace_inputs(
        TraceInputs(
            initiator_private=initiator_private,
            responder_private=responder_private,
            preshared_key=preshared_key,
            initiator_ephemeral=bytes(initiator_ephemeral),
            responder_ephemeral=bytes(responder_ephemeral),
            wall_ns=wall_ns,
            sender_indices=sender_indices,
        )
    )


def random_inputs(rng: Callable[[int], bytes] = os.urandom, *, preshared: bool = False) -> TraceInputs:
    """Fresh static keys, ephemerals, indices (and a preshared key if ``preshared``) drawn from ``rng``.

    The wall clock is drawn too (a time in 2020-2039): this module reads no clock, and the timestamp's value does
    not matter to a single handshake.
    """
    initiator_private = PrivateKey(rng(crypto.KEY_SIZE))
    responder_private = PrivateKey(rng(crypto.KEY_SIZE))
    preshared_key = PresharedKey(rng(crypto.KEY_SIZE)) if preshared else None
    initiator_ephemeral = rng(crypto.KEY_SIZE)
    responder_ephemeral = rng(crypto.KEY_SIZE)
    index_i = int.from_bytes(rng(4), "little")
    index_r = int.from_bytes(rng(4), "little")
    wall_ns = _RANDOM_EPOCH_NS + int.from_bytes(rng(8), "little") % _RANDOM_SPAN_NS
    return TraceInputs(
        initiator_private=initiator_private,
        responder_private=responder_private,
        preshared_key=preshared_key,
        initiator_ephemeral=initiator_ephemeral,
        responder_ephemeral=responder_ephemeral,
        wall_ns=wall_ns,
        sender_indices=(index_i, index_r),
    )


# --- The golden transcripts (wgpy/tools/data/handshake_transcripts.json) -------------------------------------


def _golden_case(document: object, name: str) -> dict[str, object]:
    if not isinstance(document, dict) or not isinstance(document.get("cases"), list):
        raise GoldenCaseError("not a golden transcript file: no list of cases")
    names: list[str] = []
    for case in document["cases"]:
        if isinstance(case, dict) and isinstance(case.get("name"), str):
            names.append(case["name"])
            if case["name"] == name:
                return case
    raise GoldenCaseError(f"no case {name!r} (the file has: {', '.join(names) or 'none'})")


def _field(mapping: object, *path: str) -> object:
    value = mapping
    for key in path:
        if not isinstance(value, dict) or key not in value:
            raise GoldenCaseError(f"missing field {'.'.join(path)}")
        value = value[key]
    return value


def _hex_field(mapping: object, *path: str, size: int | None = None) -> bytes:
    value = _field(mapping, *path)
    try:
        if not isinstance(value, str):
            raise ValueError
        raw = bytes.fromhex(value)
    except ValueError:
        raise GoldenCaseError(f"field {'.'.join(path)} is not hex") from None
    if size is not None and len(raw) != size:
        raise GoldenCaseError(f"field {'.'.join(path)} must be {size} bytes, got {len(raw)}")
    return raw


def _int_field(mapping: object, *path: str, bits: int) -> int:
    value = _field(mapping, *path)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**bits:
        raise GoldenCaseError(f"field {'.'.join(path)} must be an integer of {bits} bits")
    return value


def golden_inputs(document: object, name: str) -> TraceInputs:
    """The inputs of golden case ``name`` in a parsed ``handshake_transcripts.json``.

    Raises:
        GoldenCaseError: the case is missing or a field is absent or malformed.
    """
    case = _golden_case(document, name)
    psk_value = _field(case, "inputs", "preshared_key")
    preshared_key = (
        None if psk_value is None else PresharedKey(_hex_field(case, "inputs", "preshared_key", size=crypto.KEY_SIZE))
    )
    return TraceInputs(
        initiator_private=PrivateKey(_hex_field(case, "inputs", "initiator_static_private", size=crypto.KEY_SIZE)),
        responder_private=PrivateKey(_hex_field(case, "inputs", "responder_static_private", size=crypto.KEY_SIZE)),
        preshared_key=preshared_key,
        initiator_ephemeral=_hex_field(case, "inputs", "initiator_ephemeral_private", size=crypto.KEY_SIZE),
        responder_ephemeral=_hex_field(case, "inputs", "responder_ephemeral_private", size=crypto.KEY_SIZE),
        wall_ns=_int_field(case, "inputs", "wall_ns", bits=64),
        sender_indices=(
            _int_field(case, "inputs", "initiator_sender_index", bits=32),
            _int_field(case, "inputs", "responder_sender_index", bits=32),
        ),
    )


def check_against_golden(trace: HandshakeTrace, document: object, name: str) -> None:
    """Compare a trace with the values recorded for golden case ``name``.

    Raises:
        GoldenCaseError: naming the first recorded value the trace does not reproduce.
    """
    case = _golden_case(document, name)
    recorded_steps = _field(case, "steps")
    if not isinstance(recorded_steps, list) or not recorded_steps:
        raise GoldenCaseError("field steps must be a non-empty list")
    for recorded in recorded_steps:
        message = _field(recorded, "message")
        token = _field(recorded, "token")
        if not isinstance(message, str) or not isinstance(token, str):
            raise GoldenCaseError("a step's message and token must be strings")
        try:
            step = trace.step(message, token)
        except KeyError:
            raise GoldenCaseError(f"the recorded step {message} {token} is not a step of the handshake") from None
        where = f"{message} token {token}"
        if _hex_field(recorded, "chaining_key") != step.chaining_key:
            raise GoldenCaseError(f"recorded chaining key after {where} differs from the trace")
        if _hex_field(recorded, "hash") != step.hash:
            raise GoldenCaseError(f"recorded hash after {where} differs from the trace")
        recorded_key = _hex_field(recorded, "key") if isinstance(recorded, dict) and "key" in recorded else None
        if recorded_key != step.key:
            raise GoldenCaseError(f"recorded key of {where} differs from the trace")
    for label, ours in (("initiation", trace.initiation), ("response", trace.response)):
        if _hex_field(case, label, "bytes_with_mac1") != ours:
            raise GoldenCaseError(f"recorded {label} bytes differ from the trace")
        if _hex_field(case, label, "mac1") != trace.step(label, "mac1").output:
            raise GoldenCaseError(f"recorded {label} mac1 differs from the trace")
    if _hex_field(case, "inputs", "timestamp") != trace.timestamp:
        raise GoldenCaseError("recorded timestamp differs from the trace")
    if _hex_field(case, "transport", "initiator_send_key") != trace.initiator_send_key:
        raise GoldenCaseError("recorded initiator_send_key differs from the trace")
    if _hex_field(case, "transport", "initiator_recv_key") != trace.initiator_recv_key:
        raise GoldenCaseError("recorded initiator_recv_key differs from the trace")


# --- Presentation ------------------------------------------------------------------------------------------------


def initiation_fields(message: bytes) -> list[MessageField]:
    """The fields of a 148-byte initiation (whitepaper §5.4.2), with what each holds."""
    if len(message) != MESSAGE_INITIATION_SIZE:
        raise ValueError(f"an initiation is {MESSAGE_INITIATION_SIZE} bytes")
    (sender_index,) = struct.unpack_from("<I", message, 4)
    mac2 = message[MAC1_OFFSET_INITIATION + MAC_SIZE :]
    return [
        MessageField("type", 0, message[0:4], "1 = handshake initiation (le32: type byte + 3 reserved zero bytes)"),
        MessageField("sender", 4, message[4:8], f"sender_index {sender_index:#010x} (le32)"),
        MessageField("ephemeral", 8, message[8:40], "Epub_i in the clear (token e)"),
        MessageField(
            "encrypted_static", 40, message[40:88], "AEAD(κ, 0, Spub_i, Hi): 32 bytes + 16-byte tag (token s)"
        ),
        MessageField(
            "encrypted_timestamp", 88, message[88:116], "AEAD(κ, 0, TAI64N, Hi): 12 bytes + 16-byte tag (token {t})"
        ),
        MessageField("mac1", MAC1_OFFSET_INITIATION, message[116:132], "MAC(HASH(LABEL_MAC1 ‖ Spub_r), msg[0:116])"),
        MessageField(
            "mac2",
            MAC1_OFFSET_INITIATION + MAC_SIZE,
            mac2,
            "zero: no cookie" if mac2 == bytes(MAC_SIZE) else "MAC(cookie, msg[0:132])",
        ),
    ]


def response_fields(message: bytes) -> list[MessageField]:
    """The fields of a 92-byte response (whitepaper §5.4.3), with what each holds."""
    if len(message) != MESSAGE_RESPONSE_SIZE:
        raise ValueError(f"a response is {MESSAGE_RESPONSE_SIZE} bytes")
    sender_index, receiver_index = struct.unpack_from("<II", message, 4)
    mac2 = message[MAC1_OFFSET_RESPONSE + MAC_SIZE :]
    return [
        MessageField("type", 0, message[0:4], "2 = handshake response (le32: type byte + 3 reserved zero bytes)"),
        MessageField("sender", 4, message[4:8], f"sender_index {sender_index:#010x} (le32)"),
        MessageField("receiver", 8, message[8:12], f"receiver_index {receiver_index:#010x}: the initiator's sender"),
        MessageField("ephemeral", 12, message[12:44], "Epub_r in the clear (token e)"),
        MessageField("encrypted_nothing", 44, message[44:60], "AEAD(κ, 0, ε, Hr): just the 16-byte tag (token {})"),
        MessageField("mac1", MAC1_OFFSET_RESPONSE, message[60:76], "MAC(HASH(LABEL_MAC1 ‖ Spub_i), msg[0:60])"),
        MessageField(
            "mac2",
            MAC1_OFFSET_RESPONSE + MAC_SIZE,
            mac2,
            "zero: no cookie" if mac2 == bytes(MAC_SIZE) else "MAC(cookie, msg[0:76])",
        ),
    ]


#: What a step's ``output`` is, by token, for the text form.
_OUTPUT_LABELS: Final = {
    "e": "msg.ephemeral",
    "s": "msg.static",
    "{t}": "msg.timestamp",
    "psk": "τ",
    "{}": "msg.empty",
    "mac1": "msg.mac1",
    "mac2": "msg.mac2",
}
_HEX_PER_LINE: Final = 32  # bytes of hex per line in the message dumps
_MESSAGE_TITLES: Final = {
    "initiation": f"Initiation: initiator → responder (whitepaper {SECTION_INITIATION}, {SECTION_MACS})",
    "response": f"Response: responder → initiator (whitepaper {SECTION_RESPONSE}, {SECTION_MACS})",
    "transport": f"Transport keys (whitepaper {SECTION_TRANSPORT})",
}


class _Style:
    def __init__(self, color: bool) -> None:
        self.color = color

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def title(self, text: str) -> str:
        return self._wrap("1;4", text)

    def token(self, text: str) -> str:
        return self._wrap("1;33", text)

    def label(self, text: str) -> str:
        return self._wrap("36", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


def _format_fields(title: str, message: bytes, fields: list[MessageField], style: _Style) -> list[str]:
    lines = [style.label(f"{title} ({len(message)} bytes on the wire):")]
    width = max(len(f.name) for f in fields)
    for f in fields:
        hex_value = f.value.hex()
        chunks = [hex_value[i : i + 2 * _HEX_PER_LINE] for i in range(0, len(hex_value), 2 * _HEX_PER_LINE)]
        span = f"[{f.offset:3d}:{f.offset + len(f.value):3d}]"
        lines.append(f"  {span} {f.name.ljust(width)}  {chunks[0]}")
        lines.extend(f"  {' ' * len(span)} {' ' * width}  {chunk}" for chunk in chunks[1:])
        lines.append(f"  {' ' * len(span)} {' ' * width}  {style.dim(f.note)}")
    return lines


def format_trace(trace: HandshakeTrace, color: bool = False) -> str:
    """The trace as text: the inputs, one block per step and both messages as annotated hex fields.

    Each block gives the token, its whitepaper section, what it does, its formula, then ``ck = <hex>`` and
    ``h = <hex>`` after it, ``k = <hex>`` when it yields a key and the bytes it writes into the message.
    """
    style = _Style(color)
    inputs = trace.inputs
    index_i, index_r = inputs.sender_indices
    lines = [
        style.title("WireGuard handshake trace: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s (whitepaper §5.4)"),
        f"  Spub_i = {inputs.initiator_private.public_key().to_base64()}  (initiator static public key)",
        f"  Spub_r = {inputs.responder_private.public_key().to_base64()}  (responder static public key)",
        f"  Epub_i = {crypto.dh_public(crypto.clamp(inputs.initiator_ephemeral)).hex()}",
        f"  Epub_r = {crypto.dh_public(crypto.clamp(inputs.responder_ephemeral)).hex()}",
        "  Q      = " + ("preshared key configured" if inputs.preshared_key is not None else "none (32 zero bytes)"),
        f"  sender indices: initiator {index_i:#010x}, responder {index_r:#010x}",
        f"  timestamp: TAI64N {trace.timestamp.hex()} (unix {unstamp(trace.timestamp) / 1e9:.6f} s)",
    ]
    current: str | None = None
    for step in trace.steps:
        if step.message != current:
            if current == "initiation":
                lines += [
                    "",
                    *_format_fields("initiation message", trace.initiation, initiation_fields(trace.initiation), style),
                ]
            elif current == "response":
                lines += [
                    "",
                    *_format_fields("response message", trace.response, response_fields(trace.response), style),
                ]
            current = step.message
            lines += ["", style.title(_MESSAGE_TITLES.get(step.message, step.message))]
        lines += [
            "",
            f"{style.token(step.token)}  {style.dim(step.section)}",
            f"  {step.description}",
            f"  {style.dim(step.formula)}",
            f"  {style.label('ck')} = {step.chaining_key.hex()}",
            f"  {style.label('h')}  = {step.hash.hex()}",
        ]
        if step.key is not None:
            lines.append(f"  {style.label('k')}  = {step.key.hex()}")
        if step.output is not None:
            lines.append(f"  {style.label(_OUTPUT_LABELS.get(step.token, 'out'))} = {step.output.hex()}")
    lines += [
        "",
        "verified: wgpy.noise produced the same messages and the same chaining key and hash after each message,",
        "and its keypairs seal and open with the transport keys above.",
    ]
    return "\n".join(lines) + "\n"


def _step_json(step: TraceStep) -> dict[str, object]:
    entry: dict[str, object] = {
        "message": step.message,
        "token": step.token,
        "section": step.section,
        "description": step.description,
        "formula": step.formula,
        "chaining_key": step.chaining_key.hex(),
        "hash": step.hash.hex(),
    }
    if step.key is not None:
        entry["key"] = step.key.hex()
    if step.output is not None:
        entry["output"] = step.output.hex()
    return entry


def _fields_json(fields: list[MessageField]) -> list[dict[str, object]]:
    return [
        {"name": f.name, "offset": f.offset, "size": len(f.value), "hex": f.value.hex(), "note": f.note} for f in fields
    ]


def trace_to_json(trace: HandshakeTrace) -> dict[str, object]:
    """A JSON-serialisable form of the trace (hex strings for bytes; private inputs included, to replay it)."""
    inputs = trace.inputs
    return {
        "inputs": {
            "initiator_static_private": inputs.initiator_private.to_hex(),
            "initiator_static_public": inputs.initiator_private.public_key().to_hex(),
            "responder_static_private": inputs.responder_private.to_hex(),
            "responder_static_public": inputs.responder_private.public_key().to_hex(),
            "initiator_ephemeral_private": inputs.initiator_ephemeral.hex(),
            "responder_ephemeral_private": inputs.responder_ephemeral.hex(),
            "preshared_key": inputs.preshared_key.to_hex() if inputs.preshared_key is not None else None,
            "initiator_sender_index": inputs.sender_indices[0],
            "responder_sender_index": inputs.sender_indices[1],
            "wall_ns": inputs.wall_ns,
            "timestamp": trace.timestamp.hex(),
        },
        "steps": [_step_json(step) for step in trace.steps],
        "initiation": {"bytes": trace.initiation.hex(), "fields": _fields_json(initiation_fields(trace.initiation))},
        "response": {"bytes": trace.response.hex(), "fields": _fields_json(response_fields(trace.response))},
        "transport": {
            "initiator_send_key": trace.initiator_send_key.hex(),
            "initiator_recv_key": trace.initiator_recv_key.hex(),
            "responder_send_key": trace.initiator_recv_key.hex(),
            "responder_recv_key": trace.initiator_send_key.hex(),
        },
        "verified_against": "wgpy.noise, wgpy.cookie and the wgpy keypairs",
    }


# --- the golden transcripts ---------------------------------------------------------------------------------------


def _golden_source(vectors: Path | None) -> Traversable:
    if vectors is None:
        return DEFAULT_GOLDEN
    return vectors / GOLDEN_FILE_NAME if vectors.is_dir() else vectors


def load_golden_document(vectors: Path | None = None) -> tuple[str, object]:
    """Read the golden transcripts: the file shipped in the package, or ``vectors`` (the file, or a folder holding it).

    Returns:
        Where it was read from (for messages) and the parsed JSON document.

    Raises:
        GoldenCaseError: The file is missing, unreadable, not UTF-8 or not JSON (one line, naming the file).
    """
    source = _golden_source(vectors)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        if vectors is None:
            raise GoldenCaseError(
                f"cannot read the golden transcripts shipped with wgpy ({source}: {error.strerror or error}): "
                f"reinstall wgpy, or pass --vectors PATH to a {GOLDEN_FILE_NAME} or the folder that holds it"
            ) from None
        raise GoldenCaseError(f"cannot read {source}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise GoldenCaseError(f"{source} is not UTF-8 text") from None
    try:
        document: object = json.loads(text)
    except json.JSONDecodeError as error:
        raise GoldenCaseError(f"{source} is not valid JSON (line {error.lineno}, column {error.colno})") from None
    return str(source), document
