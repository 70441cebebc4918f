"""TAI64N timestamps of handshake initiations.

Sources:

* D. J. Bernstein, "TAI64, TAI64N, and TAI64NA" (libtai, https://cr.yp.to/libtai/tai64.html; also
  http://cr.yp.to/proto/tai64.txt): label 2**62 + s is the TAI second s seconds after the beginning of 1970 TAI,
  stored as 8 big-endian bytes; TAI64N appends the nanoseconds as 4 big-endian bytes (12 bytes in all).
* wireguard-go ``tai64n/tai64n.go`` (repository ``WireGuard/wireguard-go``): ``base = uint64(0x400000000000000a)``,
  i.e. 2**62 + 10 (1970-01-01 00:00:00 UTC is 00:00:10 TAI, a fixed offset, not leap-second exact), and
  ``whitenerMask = uint32(0x1000000 - 1)``: the low 24 bits of the nanoseconds are cleared. The kernel's
  ``tai64n_now`` in noise.c does the same (rounding down to rounddown_pow_of_two(NSEC_PER_SEC / 50) = 2**24 ns).
"""

from __future__ import annotations

import struct

from hypothesis import assume, given
from hypothesis import strategies as st

from wgpy.tai64n import TAI64N_SIZE, TIMESTAMP_WHITENER_NS, stamp, unstamp

NS = 1_000_000_000
BASE = 0x400000000000000A  # wireguard-go tai64n.go `base`
WHITENER_MASK = 0x1000000 - 1  # wireguard-go tai64n.go `whitenerMask`

# Wall clocks from 1970 to far beyond any real clock (the label has 62 bits of seconds).
wall_ns = st.integers(0, 2**40 * NS)


def _split(label: bytes) -> tuple[int, int]:
    seconds, nanos = struct.unpack(">QI", label)
    return seconds, nanos


def test_constants() -> None:
    assert TAI64N_SIZE == 12
    assert TIMESTAMP_WHITENER_NS == 2**24 == WHITENER_MASK + 1
    assert BASE == 2**62 + 10


def test_unix_epoch() -> None:
    # 1970-01-01 00:00:00 UTC: the TAI64 label 400000000000000a (libtai's 1970 TAI label plus the 10 s offset).
    assert stamp(0) == bytes.fromhex("400000000000000a") + bytes(4)
    assert unstamp(stamp(0)) == 0


def test_known_instant() -> None:
    # The TAI64N page of keks (http://www.keks.cypherpunks.su/TAI64.html) gives 2024-11-20 12:19:08.921772500 UTC as
    # the true TAI64N label 40000000673DD3E1 36F121D4, using TAI - UTC = 37 s. WireGuard's fixed +10 s offset ignores
    # the 27 leap seconds added since 1972, so its seconds part is 27 less; its nanoseconds are masked.
    seconds, nanos = 1732105148, 921772500
    assert nanos == 0x36F121D4
    label = stamp(seconds * NS + nanos)
    assert label[:8] == (0x40000000673DD3E1 - 27).to_bytes(8, "big")
    assert label[8:] == bytes.fromhex("36000000")


@given(wall_ns)
def test_layout(ns: int) -> None:
    label = stamp(ns)
    assert isinstance(label, bytes)
    assert len(label) == TAI64N_SIZE
    seconds, nanos = _split(label)
    assert seconds == 2**62 + 10 + ns // NS
    # The low 24 bits of the nanoseconds are cleared, and nothing else changes.
    assert nanos == (ns % NS) & ~WHITENER_MASK
    assert nanos % 2**24 == 0
    assert nanos <= ns % NS < nanos + 2**24
    assert nanos < NS


@given(wall_ns, wall_ns)
def test_monotone(a: int, b: int) -> None:
    assume(a <= b)
    assert stamp(a) <= stamp(b)


@given(wall_ns, st.integers(2**24, 10 * NS))
def test_strictly_increasing_after_one_whitening_step(a: int, gap: int) -> None:
    b = a + gap
    assert stamp(a) < stamp(b)
    assert stamp(b) > stamp(a)


def test_strict_increase_needs_the_full_step() -> None:
    # Inside one 2**24 ns bucket the label does not move; that is the point of whitening.
    assert stamp(5 * NS) == stamp(5 * NS + 2**24 - 1)
    assert stamp(5 * NS) < stamp(5 * NS + 2**24)
    # 20 ms, the per-peer initiation rate limit, always moves the label.
    for start in range(0, NS, 7_777_777):
        assert stamp(start) < stamp(start + 20_000_000)


@given(wall_ns)
def test_unstamp_inverts_stamp(ns: int) -> None:
    label = stamp(ns)
    back = unstamp(label)
    assert back == ns - (ns % NS) % 2**24
    assert stamp(back) == label
    assert 0 <= ns - back < 2**24


@given(st.integers(0, 2**40), st.integers(0, NS - 1).map(lambda n: n & ~WHITENER_MASK))
def test_stamp_inverts_unstamp_on_whitened_labels(seconds: int, nanos: int) -> None:
    label = struct.pack(">QI", BASE + seconds, nanos)
    assert stamp(unstamp(label)) == label
