"""Rekeying on the real clock: two socket-only tunnels on 127.0.0.1 exchange a packet each way every half second
for REKEY_AFTER_TIME + 10 s (no root; ``slow``: run it with ``pytest -m slow``).

Every other timer test steps a hand-made clock; this one lets ``Tunnel`` arm real asyncio timers from
``Device.get_timer()``, with ``time.monotonic``, and checks what the whitepaper §6.2 promises: the initiator starts
a new handshake once its keypair is REKEY_AFTER_TIME old and it sends, the session rolls over without losing the
stream, and the previous keypair is retired.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from support.helpers import det_rng, ipv4_packet, private_key

from wgpy.constants import REKEY_AFTER_TIME
from wgpy.device import Device
from wgpy.drivers.asyncio_udp import Tunnel

pytestmark = pytest.mark.slow

INTERVAL = 0.5
DURATION = REKEY_AFTER_TIME + 10.0


@pytest.mark.parametrize("worker", [False, True], ids=["one-process", "worker"])
def test_session_rolls_over_after_rekey_after_time(worker: bool) -> None:
    async def scenario() -> None:
        a, b = Device(private_key(1), rng=det_rng(1)), Device(private_key(2), rng=det_rng(2))
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        ta = Tunnel(a, on_packet=got_a.append, bind_address="127.0.0.1", worker=worker)
        tb = Tunnel(b, on_packet=got_b.append, bind_address="127.0.0.1", worker=worker)
        await ta.start()
        await tb.start()
        try:
            assert a.public_key is not None and b.public_key is not None
            a.add_peer(b.public_key, endpoint=("127.0.0.1", tb.local_port), allowed_ips=["10.0.0.2/32"])
            b.add_peer(a.public_key, endpoint=("127.0.0.1", ta.local_port), allowed_ips=["10.0.0.1/32"])
            peer_b = a.peer(b.public_key)
            assert peer_b is not None
            first_keypair = None
            sent = 0
            start = time.monotonic()
            while time.monotonic() - start < DURATION:
                ta.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"a%d" % sent))
                await asyncio.sleep(0.05)
                tb.send_packet(ipv4_packet("10.0.0.2", "10.0.0.1", b"b%d" % sent))
                sent += 1
                if first_keypair is None:
                    first_keypair = peer_b.keypairs.current
                await asyncio.sleep(INTERVAL - 0.05)
            await asyncio.sleep(0.5)
            assert first_keypair is not None
            assert a.stats.handshakes_completed == 2, "A (the initiator) must rekey exactly once in 130 s"
            current = peer_b.keypairs.current
            assert current is not None and current is not first_keypair
            assert time.monotonic() - current.created_at < DURATION - REKEY_AFTER_TIME + 1.0
            assert peer_b.keypairs.previous is first_keypair  # kept to drain packets in flight
            # Nothing lost on loopback: the roll-over did not interrupt the stream either way.
            assert len(got_b) == sent and len(got_a) == sent
            assert a.stats.drops.total() == 0 and b.stats.drops.total() == 0
        finally:
            ta.close()
            tb.close()

    asyncio.run(scenario())
