"""The tunnel caps its TUN device's TCP super-packets at one UDP GSO send (``Tunnel._fit_tso``); the kernel's side of
it (``LinuxTun.set_gso_max_segs`` honoured by TCP) is checked live in tests/tun/test_tun_offload_linux.py."""

from __future__ import annotations

import errno
import logging
from collections.abc import Sequence

import pytest
from support.helpers import make_device

from tun import TunError
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.udp import GSO_MAX_BYTES


class FakeTun:
    """Just enough of a TSO-reading ``LinuxTun`` for ``_fit_tso``: it records what it is asked to set."""

    def __init__(self, *, tso: bool = True, refuse: bool = False) -> None:
        self.tso = tso
        self.refuse = refuse
        self.segments: list[int] = []
        self.mtu = 1420

    def set_gso_max_segs(self, segments: int) -> None:
        if self.refuse:
            raise TunError(errno.EPERM, "setting gso_max_segs needs root or CAP_NET_ADMIN")
        self.segments.append(segments)

    def write_packets(self, packets: Sequence[bytes]) -> None:  # unused here
        raise AssertionError


def _tunnel(tun: FakeTun) -> Tunnel:
    return Tunnel(make_device(1), tun=tun)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mtu", "expected"), [(1420, 44), (1280, 49), (9000, 7), (1500, 42), (68, 650)])
def test_one_tso_read_fits_one_gso_send(mtu: int, expected: int) -> None:
    """The cap is the most sealed messages (a full-MTU packet, never padded, + 32 bytes each) that one GSO send of
    GSO_MAX_BYTES holds: at the default MTU, 44 messages of 1,452 bytes (63,888 bytes; 45 would be 65,340)."""
    tun = FakeTun()
    _tunnel(tun)._fit_tso(mtu)
    assert tun.segments == [expected]
    assert expected * (mtu + 32) <= GSO_MAX_BYTES < (expected + 1) * (mtu + 32)


def test_no_cap_without_tso_reads_and_a_refusal_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    plain = FakeTun(tso=False)
    _tunnel(plain)._fit_tso(1420)
    assert plain.segments == []
    refusing = FakeTun(refuse=True)
    with caplog.at_level(logging.INFO, logger="wgpy"):
        _tunnel(refusing)._fit_tso(1420)
    assert "gso_max_segs 44 not set" in caplog.text
