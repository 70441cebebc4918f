"""The Noise_IKpsk2 handshake of WireGuard (whitepaper §5.4; kernel noise.c; wireguard-go noise-protocol.go).

Theory of operation: each peer owns one ``Handshake`` that walks through ``HandshakeState``. The four functions
below are the protocol's four steps, named as in the kernel:

- ``create_initiation`` (initiator): tokens ``e, es, s, ss, {t}`` → ``Initiation`` (state CREATED_INITIATION)
- ``consume_initiation`` (responder): the same tokens read back → the peer's ``Handshake`` (CONSUMED_INITIATION)
- ``create_response`` (responder): tokens ``e, ee, se, psk, {}`` → ``Response`` (CREATED_RESPONSE)
- ``consume_response`` (initiator): the same tokens read back (CONSUMED_RESPONSE)

and ``begin_session`` turns a finished handshake into a transport ``Keypair`` and zeroes the handshake.

Each ``consume_*`` computes into local variables and commits to the ``Handshake`` only after every check passed
(the kernel's "Success! Copy everything to peer"), so a forged or replayed message changes nothing. They raise
``HandshakeRejected`` carrying a ``DropReason``; ``InvalidTag`` from a failed decryption is turned into
``HANDSHAKE_FAILED`` here, so callers catch one type.

MACs (mac1/mac2) are not this module's business: ``cookie.py`` adds and checks them around these messages, before
any Diffie-Hellman is spent. This module reads no clock and draws no randomness of its own: ``now`` (monotonic
seconds), ``wall_ns`` (for TAI64N) and ``rng`` are parameters.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from . import crypto
from .constants import CONSTRUCTION, HANDSHAKE_INITIATION_RATE, IDENTIFIER
from .errors import DropReason, WgpyError
from .keypair import Keypair
from .keys import PresharedKey, PrivateKey, PublicKey
from .messages import Initiation, Response
from .tai64n import TAI64N_SIZE, stamp

__all__ = [
    "Handshake",
    "HandshakeRejected",
    "HandshakeState",
    "StaticIdentity",
    "begin_session",
    "consume_initiation",
    "consume_response",
    "create_initiation",
    "create_response",
    "initial_chaining_key",
    "initial_hash",
]

_EMPTY: Final = b""
#: Ci := HASH(CONSTRUCTION), the same for every handshake (whitepaper §5.4.2).
INITIAL_CHAINING_KEY: Final = crypto.hash(CONSTRUCTION)
#: HASH(Ci || IDENTIFIER): the responder's static key is mixed in next.
_INITIAL_HASH_PREFIX: Final = crypto.hash(INITIAL_CHAINING_KEY + IDENTIFIER)


def initial_chaining_key() -> bytes:
    """Ci = HASH(CONSTRUCTION)."""
    return INITIAL_CHAINING_KEY


def initial_hash(responder_static: PublicKey) -> bytes:
    """Hi = HASH(HASH(Ci || IDENTIFIER) || Spub_r)."""
    return crypto.hash(_INITIAL_HASH_PREFIX + responder_static.raw)


class HandshakeState(enum.Enum):
    """Where a peer's handshake stands (kernel ``enum noise_handshake_state``)."""

    ZEROED = enum.auto()
    CREATED_INITIATION = enum.auto()
    CONSUMED_INITIATION = enum.auto()
    CREATED_RESPONSE = enum.auto()
    CONSUMED_RESPONSE = enum.auto()


class HandshakeRejected(WgpyError):
    """A handshake message was refused; ``reason`` says why. Carries no key material."""

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason.name)
        self.reason = reason


class StaticIdentity:
    """The local device's static key pair and what is derived from it alone."""

    __slots__ = ("dh_key", "hash0", "private_key", "public_key")

    def __init__(self, private_key: PrivateKey) -> None:
        self.private_key = private_key
        self.public_key = private_key.public_key()
        self.dh_key = crypto.dh_private_key(private_key.raw)  # loaded once: every handshake uses it
        self.hash0 = initial_hash(self.public_key)  # Hi when we are the responder

    def __repr__(self) -> str:
        return f"StaticIdentity({self.public_key!r})"


class Handshake:
    """Per-peer handshake state (kernel ``struct noise_handshake``).

    ``precomputed_static_static`` is DH(Spriv_local, Spub_remote): it depends only on the two static keys, so the
    kernel computes it once per peer, saving one X25519 per handshake. It is ``None`` when that DH is invalid
    (the remote key is a low-order point), in which case no handshake with the peer can succeed. Unlike the kernel,
    wgpy computes it at the first handshake that needs it, not when the peer is added or the private key changes:
    one X25519 costs about 80 µs in Python, so doing it eagerly made a 100,000-peer ``set`` (or a new private key
    with 100,000 peers) hold the event loop for 8 s (issue #11 item 3). The cost per peer is paid once either way.
    """

    __slots__ = (
        "_local",
        "_static_static",
        "_static_static_known",
        "chaining_key",
        "ephemeral_key",
        "ephemeral_private",
        "hash",
        "last_initiation_consumption",
        "latest_timestamp",
        "local_index",
        "preshared_key",
        "remote_ephemeral",
        "remote_index",
        "remote_static",
        "state",
    )

    def __init__(
        self, local: StaticIdentity | None, remote_static: PublicKey, preshared_key: PresharedKey | None = None
    ) -> None:
        self.remote_static = remote_static
        self.preshared_key = preshared_key if preshared_key is not None else PresharedKey.zero()
        self.latest_timestamp = bytes(TAI64N_SIZE)
        self.last_initiation_consumption: float | None = None
        self.set_identity(local)
        self._zero()

    def __repr__(self) -> str:
        return f"Handshake(peer({self.remote_static.short()}), {self.state.name})"

    def _zero(self) -> None:
        """Forget the ephemeral part of the handshake (kernel ``handshake_zero``)."""
        self.state = HandshakeState.ZEROED
        self.chaining_key = bytes(32)
        self.hash = bytes(32)
        self.ephemeral_private = bytes(32)
        self.ephemeral_key: crypto.DhPrivateKey | None = None  # ephemeral_private, loaded
        self.remote_ephemeral = bytes(32)
        self.local_index = 0
        self.remote_index = 0

    def clear(self) -> None:
        """Abandon any handshake in progress (state goes back to ZEROED)."""
        self._zero()

    def set_identity(self, local: StaticIdentity | None) -> None:
        """Forget the static-static DH after the local private key changed (kernel
        ``wg_noise_precompute_static_static``); it is computed again when a handshake first needs it."""
        self._local = local
        self._static_static: bytes | None = None
        self._static_static_known = local is None

    @property
    def precomputed_static_static(self) -> bytes | None:
        """DH(Spriv_local, Spub_remote), computed on first use; ``None`` without a local key or for a low-order
        remote key."""
        if not self._static_static_known:
            local = self._local
            if local is not None:
                try:
                    self._static_static = crypto.dh(local.dh_key, self.remote_static.raw)
                except crypto.InvalidTag:
                    self._static_static = None
            self._static_static_known = True
        return self._static_static


def _mix_hash(h: bytes, data: bytes) -> bytes:
    return crypto.hash(h + data)


def _mix_dh(ck: bytes, private: bytes | crypto.DhPrivateKey, public: bytes) -> tuple[bytes, bytes]:
    """(ck, k) := KDF2(ck, DH(private, public)). Raises ``InvalidTag`` on an all-zero DH result."""
    return crypto.kdf2(ck, crypto.dh(private, public))


def create_initiation(
    handshake: Handshake,
    local: StaticIdentity,
    sender_index: int,
    wall_ns: int,
    rng: Callable[[int], bytes],
) -> Initiation:
    """Build a handshake initiation to the handshake's peer (whitepaper §5.4.2). mac1/mac2 are left zero.

    Raises:
        HandshakeRejected: ``HANDSHAKE_FAILED`` if the peer's static key gives an all-zero DH.
    """
    if handshake.precomputed_static_static is None:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED)
    ck = INITIAL_CHAINING_KEY
    h = initial_hash(handshake.remote_static)
    # e
    ephemeral_key, ephemeral_private, ephemeral_public = crypto.dh_generate_key(rng)
    ck = crypto.kdf1(ck, ephemeral_public)
    h = _mix_hash(h, ephemeral_public)
    try:
        # es
        ck, key = _mix_dh(ck, ephemeral_key, handshake.remote_static.raw)
    except crypto.InvalidTag:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED) from None
    # s
    encrypted_static = crypto.aead_seal(key, 0, local.public_key.raw, h)
    h = _mix_hash(h, encrypted_static)
    # ss
    ck, key = crypto.kdf2(ck, handshake.precomputed_static_static)
    # {t}
    encrypted_timestamp = crypto.aead_seal(key, 0, stamp(wall_ns), h)
    h = _mix_hash(h, encrypted_timestamp)

    handshake.state = HandshakeState.CREATED_INITIATION
    handshake.chaining_key = ck
    handshake.hash = h
    handshake.ephemeral_private = ephemeral_private
    handshake.ephemeral_key = ephemeral_key
    handshake.local_index = sender_index
    return Initiation(sender_index, ephemeral_public, encrypted_static, encrypted_timestamp)


def consume_initiation(
    message: Initiation,
    local: StaticIdentity,
    lookup_peer: Callable[[PublicKey], Handshake | None],
    now: float,
) -> Handshake:
    """Read a handshake initiation (whitepaper §5.4.2) and return the sending peer's updated ``Handshake``.

    Args:
        message: the parsed initiation (its mac1 already checked by the cookie layer).
        local: our static identity.
        lookup_peer: finds the handshake of a configured peer by its static public key.
        now: monotonic seconds, for the per-peer initiation flood limit.

    Raises:
        HandshakeRejected: HANDSHAKE_FAILED (decryption or DH failed), UNKNOWN_PEER, STALE_TIMESTAMP (replayed or
            older timestamp) or HANDSHAKE_FLOOD (more than 50 initiations a second from this peer).
    """
    ck = INITIAL_CHAINING_KEY
    h = local.hash0
    try:
        # e
        remote_ephemeral = message.unencrypted_ephemeral
        ck = crypto.kdf1(ck, remote_ephemeral)
        h = _mix_hash(h, remote_ephemeral)
        # es
        ck, key = _mix_dh(ck, local.dh_key, remote_ephemeral)
        # s
        remote_static_raw = crypto.aead_open(key, 0, message.encrypted_static, h)
        h = _mix_hash(h, message.encrypted_static)
    except crypto.InvalidTag:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED) from None

    handshake = lookup_peer(PublicKey(remote_static_raw))
    if handshake is None:
        raise HandshakeRejected(DropReason.UNKNOWN_PEER)
    if handshake.precomputed_static_static is None:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED)
    try:
        # ss
        ck, key = crypto.kdf2(ck, handshake.precomputed_static_static)
        # {t}
        timestamp = crypto.aead_open(key, 0, message.encrypted_timestamp, h)
    except crypto.InvalidTag:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED) from None
    h = _mix_hash(h, message.encrypted_timestamp)

    # TAI64N labels are big-endian, so byte order is time order (whitepaper §5.1).
    if timestamp <= handshake.latest_timestamp:
        raise HandshakeRejected(DropReason.STALE_TIMESTAMP)
    last = handshake.last_initiation_consumption
    if last is not None and now - last < HANDSHAKE_INITIATION_RATE:
        raise HandshakeRejected(DropReason.HANDSHAKE_FLOOD)

    # Success: copy everything to the peer.
    handshake.remote_ephemeral = remote_ephemeral
    handshake.latest_timestamp = timestamp
    if last is None or now > last:
        handshake.last_initiation_consumption = now
    handshake.remote_index = message.sender_index
    handshake.chaining_key = ck
    handshake.hash = h
    handshake.state = HandshakeState.CONSUMED_INITIATION
    return handshake


def create_response(handshake: Handshake, sender_index: int, rng: Callable[[int], bytes]) -> Response:
    """Build the response to a consumed initiation (whitepaper §5.4.3). mac1/mac2 are left zero.

    Raises:
        HandshakeRejected: HANDSHAKE_FAILED if the handshake is not in CONSUMED_INITIATION or a DH is all-zero.
    """
    if handshake.state is not HandshakeState.CONSUMED_INITIATION:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED)
    ck = handshake.chaining_key
    h = handshake.hash
    try:
        # e
        ephemeral_key, ephemeral_private, ephemeral_public = crypto.dh_generate_key(rng)
        ck = crypto.kdf1(ck, ephemeral_public)
        h = _mix_hash(h, ephemeral_public)
        # ee
        ck = crypto.kdf1(ck, crypto.dh(ephemeral_key, handshake.remote_ephemeral))
        # se
        ck = crypto.kdf1(ck, crypto.dh(ephemeral_key, handshake.remote_static.raw))
    except crypto.InvalidTag:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED) from None
    # psk
    ck, tau, key = crypto.kdf3(ck, handshake.preshared_key.raw)
    h = _mix_hash(h, tau)
    # {}
    encrypted_nothing = crypto.aead_seal(key, 0, _EMPTY, h)
    h = _mix_hash(h, encrypted_nothing)

    handshake.ephemeral_private = ephemeral_private
    handshake.ephemeral_key = ephemeral_key
    handshake.chaining_key = ck
    handshake.hash = h
    handshake.local_index = sender_index
    handshake.state = HandshakeState.CREATED_RESPONSE
    return Response(sender_index, handshake.remote_index, ephemeral_public, encrypted_nothing)


def consume_response(
    message: Response,
    local: StaticIdentity,
    lookup_index: Callable[[int], Handshake | None],
) -> Handshake:
    """Read the response to our initiation (whitepaper §5.4.3) and return the updated ``Handshake``.

    Args:
        message: the parsed response (mac1 already checked).
        local: our static identity.
        lookup_index: finds the handshake that created the initiation with this local (receiver) index.

    Raises:
        HandshakeRejected: UNKNOWN_INDEX, or HANDSHAKE_FAILED when the handshake is not waiting for a response or
            the message does not authenticate.
    """
    handshake = lookup_index(message.receiver_index)
    if handshake is None:
        raise HandshakeRejected(DropReason.UNKNOWN_INDEX)
    if handshake.state is not HandshakeState.CREATED_INITIATION or handshake.local_index != message.receiver_index:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED)
    ck = handshake.chaining_key
    h = handshake.hash
    try:
        # e
        remote_ephemeral = message.unencrypted_ephemeral
        ck = crypto.kdf1(ck, remote_ephemeral)
        h = _mix_hash(h, remote_ephemeral)
        # ee
        ck = crypto.kdf1(ck, crypto.dh(handshake.ephemeral_key or handshake.ephemeral_private, remote_ephemeral))
        # se
        ck = crypto.kdf1(ck, crypto.dh(local.dh_key, remote_ephemeral))
        # psk
        ck, tau, key = crypto.kdf3(ck, handshake.preshared_key.raw)
        h = _mix_hash(h, tau)
        # {}
        crypto.aead_open(key, 0, message.encrypted_nothing, h)
    except crypto.InvalidTag:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED) from None
    h = _mix_hash(h, message.encrypted_nothing)

    # Success: copy everything to the peer.
    handshake.remote_ephemeral = remote_ephemeral
    handshake.remote_index = message.sender_index
    handshake.chaining_key = ck
    handshake.hash = h
    handshake.state = HandshakeState.CONSUMED_RESPONSE
    return handshake


def begin_session(handshake: Handshake, now: float) -> Keypair:
    """Derive the transport keypair of a finished handshake and zero the handshake (whitepaper §5.4.5).

    The initiator is the side in CONSUMED_RESPONSE, the responder the side in CREATED_RESPONSE.
    (T_send_i, T_recv_i) = (T_recv_r, T_send_r) = KDF2(ck, ε).

    Raises:
        HandshakeRejected: HANDSHAKE_FAILED if the handshake is in neither state.
    """
    if handshake.state is HandshakeState.CONSUMED_RESPONSE:
        is_initiator = True
    elif handshake.state is HandshakeState.CREATED_RESPONSE:
        is_initiator = False
    else:
        raise HandshakeRejected(DropReason.HANDSHAKE_FAILED)
    first, second = crypto.kdf2(handshake.chaining_key, _EMPTY)
    send_key, recv_key = (first, second) if is_initiator else (second, first)
    keypair = Keypair(
        send_key=send_key,
        recv_key=recv_key,
        local_index=handshake.local_index,
        remote_index=handshake.remote_index,
        is_initiator=is_initiator,
        now=now,
    )
    handshake._zero()
    return keypair
