"""With a data-plane worker, the seal jobs of relayed endpoints stay in the main process (``worker.split_jobs``,
``NatHandler.relays``): the worker sends from the WireGuard socket, and only the main process holds the TURN
allocation. The live proof is ``test_agents_behind_symmetric_nats_relay_through_coturn_with_the_data_plane_worker``.
"""

from __future__ import annotations

from wgpy import crypto
from wgpy.drivers.worker import split_jobs
from wgpy.nat.io.handler import NatHandler
from wgpy.nat.io.relay import TurnRelay
from wgpy.send import KeypairRetired, SealJob

RELAYED = ("192.0.2.50", 49160)
DIRECT = ("198.51.100.7", 40000)


def _job(index: int, endpoint: tuple[str, int]) -> SealJob:
    key = bytes([index]) * 32
    return SealJob(index, 100 + index, 0, [b""], endpoint, crypto.Aead(key), key)


def test_relayed_jobs_stay_here_in_order_and_retirements_go_to_the_worker() -> None:
    handler = NatHandler([])
    assert not handler.relays(RELAYED)  # no relay yet: everything goes to the worker
    handler.relayed[RELAYED] = TurnRelay(("192.0.2.50", 3478), "u", "p", lambda _d, _a: None)
    assert handler.relays(RELAYED) and handler.relays((RELAYED[0], RELAYED[1], 0, 0))
    assert not handler.relays(DIRECT) and not handler.relays((RELAYED[0], RELAYED[1] + 1))
    jobs: list[SealJob | KeypairRetired] = [
        _job(1, DIRECT),
        _job(2, RELAYED),
        KeypairRetired(2),
        _job(3, RELAYED),
        _job(4, DIRECT),
    ]
    to_worker, here = split_jobs(jobs, handler.relays)
    assert to_worker == [jobs[0], jobs[2], jobs[4]]
    assert here == [jobs[1], jobs[3]]
    assert split_jobs(jobs, lambda _e: False) == (jobs, [])
