"""TAI64N timestamps for handshake initiations (whitepaper §5.1, §5.4.2).

Theory of operation: an initiation carries a 12-byte TAI64N label of the initiator's wall clock; the responder
accepts an initiation from a peer only if its label is greater than the last one it accepted (replay protection of
initiations, whitepaper §5.1). The label is big-endian so that byte strings compare in time order.

The wall clock arrives as ``wall_ns`` (nanoseconds since the Unix epoch): this module reads no clock. Like the
kernel's ``tai64n_now`` and wireguard-go's ``tai64n.Now``, the nanoseconds are rounded down to a multiple of
2**24 ns (about 16.8 ms), so that the timestamp does not leak a fine-grained clock that could fingerprint a host
or aid a timing attack. That is still finer than the 20 ms per-peer initiation rate limit.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = ["TAI64N_SIZE", "TIMESTAMP_WHITENER_NS", "stamp", "unstamp"]

TAI64N_SIZE: Final = 12
TAI64_EPOCH: Final = 2**62  # TAI64 label of 1970-01-01 00:00:00 TAI
TAI_UTC_OFFSET: Final = 10  # seconds; the kernel and wireguard-go use this fixed offset too (not leap-second exact)
TIMESTAMP_WHITENER_NS: Final = 2**24  # kernel: "whitened" to ~16 ms
_LABEL: Final = struct.Struct(">QI")


def stamp(wall_ns: int) -> bytes:
    """TAI64N label of ``wall_ns`` with the low bits of the nanoseconds cleared."""
    seconds, nanos = divmod(wall_ns, 1_000_000_000)
    nanos -= nanos % TIMESTAMP_WHITENER_NS
    return _LABEL.pack(TAI64_EPOCH + TAI_UTC_OFFSET + seconds, nanos)


def unstamp(label: bytes) -> int:
    """The Unix time in nanoseconds of a label made by ``stamp`` (used by traces and tests)."""
    seconds: int
    nanos: int
    seconds, nanos = _LABEL.unpack(label)
    return (seconds - TAI64_EPOCH - TAI_UTC_OFFSET) * 1_000_000_000 + nanos
