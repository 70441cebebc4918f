"""Handshake secrets in the key log format of Wireshark's WireGuard dissector (preference ``wg.keylog_file``).

Theory of operation: **this module deliberately writes secrets; that is its only purpose.** With the keys of one side
of a handshake, Wireshark (or tshark) can redo that side's Diffie-Hellman computations, derive the transport keys and
decrypt every transport message of the session, just as wgpy does. The device calls ``KeyLogWriter.on_ephemeral``
right after it created an initiation or a response, while the ephemeral private key still exists; the writer hands
the lines to a ``sink``. Nothing is written unless the user asked for a key log (``--keylog FILE``, which the daemon
opens with mode 0600 and appends to; it refuses a symbolic link, a hard link, anything that is not a regular file
and a file owned by another user, see ``wgpy.drivers.private_file``, which opens ``--audit-log`` too). The key log is
never used by logging, and no log record, exception or ``repr`` ever carries these keys.

The format is the one read by ``wg_keylog_read`` / ``wg_keylog_process_lines`` in Wireshark's
``epan/dissectors/packet-wireguard.c`` (wireshark/wireshark, read at commit 5aba5772e9cb; tshark 4.0 reads it the
same way), whose comment reads::

    File format: each line follows the format "<type>=<key>" (leading spaces
    and spaces around '=' as produced by extract-handshakes.sh are ignored).
    For available <type>s, see below. <key> is the base64-encoded key (44
    characters).

    Example:
     LOCAL_STATIC_PRIVATE_KEY = AKeZaHwBxjiKLFnkY2unvEdOTtg4AL+M9dQXfopFVFk=
     REMOTE_STATIC_PUBLIC_KEY = YDCttCs9e1J52/g9vEnwJJa+2x6RqaayAYMpSVQfGEY=
     LOCAL_EPHEMERAL_PRIVATE_KEY = sLGLJSOQfyz7JNJ5ZDzFf3Uz1rkiCMMjbWerNYcPFFU=
     PRESHARED_KEY = AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=

So one handshake gives the lines ``<TYPE> = <base64>`` for ``LOCAL_STATIC_PRIVATE_KEY``,
``REMOTE_STATIC_PUBLIC_KEY`` and ``LOCAL_EPHEMERAL_PRIVATE_KEY``, then ``PRESHARED_KEY``. The order matters: the
dissector links a ``PRESHARED_KEY`` line to the ``LOCAL_EPHEMERAL_PRIVATE_KEY`` line just before it (and ignores it
otherwise), and tries the all-zero key on its own after the logged ones, so the line is written only when a non-zero
preshared key is configured. The static keys identify the peers: the dissector finds the receiver of a handshake
message by its mac1, keyed by a static public key it knows.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Final

from . import crypto
from .keys import PresharedKey, PrivateKey, PublicKey

__all__ = [
    "LOCAL_EPHEMERAL_PRIVATE_KEY",
    "LOCAL_STATIC_PRIVATE_KEY",
    "PRESHARED_KEY",
    "REMOTE_STATIC_PUBLIC_KEY",
    "KeyLogWriter",
    "format_keylog_entry",
]

# The <type>s of Wireshark's packet-wireguard.c wg_keylog_process_lines.
LOCAL_STATIC_PRIVATE_KEY: Final = "LOCAL_STATIC_PRIVATE_KEY"
REMOTE_STATIC_PUBLIC_KEY: Final = "REMOTE_STATIC_PUBLIC_KEY"
LOCAL_EPHEMERAL_PRIVATE_KEY: Final = "LOCAL_EPHEMERAL_PRIVATE_KEY"
PRESHARED_KEY: Final = "PRESHARED_KEY"


def _line(key_type: str, raw: bytes) -> str:
    return f"{key_type} = {base64.b64encode(raw).decode('ascii')}\n"  # 44 characters for 32 bytes


def format_keylog_entry(
    local_static_private: PrivateKey,
    remote_static_public: PublicKey,
    local_ephemeral_private: bytes,
    preshared_key: PresharedKey | None,
) -> str:
    """The key log lines of one handshake message we created, each ending with a newline.

    Args:
        local_static_private: our static private key.
        remote_static_public: the peer's static public key.
        local_ephemeral_private: the ephemeral private key of the initiation or response just created
            (``Handshake.ephemeral_private``).
        preshared_key: the peer's preshared key; ``None`` or all zeros writes no ``PRESHARED_KEY`` line.

    Raises:
        ValueError: ``local_ephemeral_private`` is not 32 bytes.
    """
    if len(local_ephemeral_private) != crypto.KEY_SIZE:
        raise ValueError(f"an ephemeral private key is {crypto.KEY_SIZE} bytes")
    text = (
        _line(LOCAL_STATIC_PRIVATE_KEY, local_static_private.raw)
        + _line(REMOTE_STATIC_PUBLIC_KEY, remote_static_public.raw)
        + _line(LOCAL_EPHEMERAL_PRIVATE_KEY, bytes(local_ephemeral_private))
    )
    if preshared_key is not None and not preshared_key.is_zero():
        text += _line(PRESHARED_KEY, preshared_key.raw)  # must follow its ephemeral's line
    return text


class KeyLogWriter:
    """Hands the key log lines of each handshake message the device creates to a ``sink``.

    The sink receives whole entries (3 or 4 lines), in the order the messages were created. In the daemon it appends
    to the ``--keylog`` file (opened 0600) and flushes, so that a running Wireshark picks the keys up: the dissector
    reopens and rereads the file as packets arrive. The sink must not raise; the writer adds no buffering of its own.
    """

    __slots__ = ("_sink",)

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink

    def __repr__(self) -> str:
        return "KeyLogWriter()"

    def on_ephemeral(
        self,
        local_static_private: PrivateKey,
        remote_static_public: PublicKey,
        local_ephemeral_private: bytes,
        preshared_key: PresharedKey | None,
    ) -> None:
        """Should be called right after an initiation or a response was created, before the handshake is zeroed.

        Args:
            local_static_private: ``identity.private_key``.
            remote_static_public: ``handshake.remote_static``.
            local_ephemeral_private: ``handshake.ephemeral_private`` (just set by ``create_initiation`` /
                ``create_response``; ``begin_session`` zeroes it, so the responder must call this before it).
            preshared_key: ``handshake.preshared_key``.
        """
        self._sink(
            format_keylog_entry(local_static_private, remote_static_public, local_ephemeral_private, preshared_key)
        )
