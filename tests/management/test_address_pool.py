"""Address allocation without reading every peer: the lowest free address, as a model of the pool says.

The model is the test's own: it records each peer's address and when it was released, and asks the pure
``enrolment.allocate_address`` (lowest address not live and not quarantined, a plain scan over the pool) what the next
address must be; the server answers through the API from its floor, the released rows and its probes.
"""

from __future__ import annotations

import ipaddress
import pathlib
import random

from management_helpers import Agent, Harness, with_harness

from wgpy.management import enrolment
from wgpy.management.ratelimit import Limit, RateLimits
from wgpy.management.store import PeerRow

NO_LIMITS = RateLimits({"credentials": Limit(0.0, 0), "peer": Limit(0.0, 0)})  # hundreds of enrolments at once
ALL = b"acls:\n  - {name: all, src: ['*'], dst: ['*'], action: accept}\n"


def test_allocation_matches_a_model_of_the_pool_through_enrolments_releases_and_quarantine(
    tmp_path: pathlib.Path,
) -> None:
    rng = random.Random(7)  # fixed: the same sequence every run

    async def body(h: Harness) -> None:
        await h.admin("PUT", "/api/v1/policy", raw=ALL)
        key = await h.setup_key(reusable=True, usage_limit=1000, expires_in=365 * 86400)
        network = ipaddress.IPv4Network("100.64.0.0/16")
        live: dict[str, Agent] = {}  # address -> its peer
        released: dict[str, float] = {}  # address -> when its peer was released (until reassigned)
        reused = 0
        for step in range(120):
            action = rng.random()
            if action < 0.6 or not live:
                now = h.clock()
                taken = {int(ipaddress.IPv4Address(a)) for a in live}
                taken |= {int(ipaddress.IPv4Address(a)) for a, at in released.items() if enrolment.quarantined(at, now)}
                expected = enrolment.allocate_address(network, taken)
                agent = h.agent()
                answer = await agent.enrol(key)
                assert answer.status == 201, answer.text
                assert answer.body["peer"]["address"] == expected, step
                reused += expected in released  # a released address whose quarantine is over, given again
                released.pop(expected, None)
                live[expected] = agent
            elif action < 0.8:
                address = rng.choice(sorted(live))
                agent = live.pop(address)
                if rng.random() < 0.5 and (await agent.refresh()).status == 200:  # a fresh access token first
                    assert (await agent.call("POST", "/api/v1/peer/logout")).status == 204
                else:
                    assert (await h.admin("POST", f"/api/v1/peers/{agent.peer_id}/revoke")).status == 200
                released[address] = h.clock()
            else:
                h.clock.now += rng.choice([60.0, 3600.0, enrolment.ADDRESS_QUARANTINE / 2])
        assert len(live) > 40 and reused > 0  # the sequence went through both ways to a free address

    with_harness(tmp_path, body, rate_limits=NO_LIMITS)


def test_a_restarted_server_finds_the_lowest_free_address_past_the_held_ones(tmp_path: pathlib.Path) -> None:
    """A fresh process has no floor: it walks the held addresses (more than one probe batch) to the first free one.
    The held rows are written straight into the store (as 260 enrolments would have: fields of ``_enrol_once``)."""

    async def body(h: Harness) -> None:
        key = await h.setup_key(reusable=True, usage_limit=10, expires_in=30 * 86400)
        server = h.running.server
        base = int(ipaddress.IPv4Address("100.64.0.0"))
        async with server.transaction() as session:
            for n in range(1, 261):  # more than one probe batch (ADDRESS_PROBE_BATCH = 256)
                session.add(
                    PeerRow(
                        id=f"{n:032x}",
                        name=f"held-{n}",
                        public_key=f"held-{n}",
                        address=str(ipaddress.IPv4Address(base + n)),
                        groups=[],
                        approved=True,
                        revoked=n == 7,  # a released address within its quarantine is held too
                        deleted=False,
                        released_at=h.clock() if n == 7 else None,
                        ephemeral=False,
                        ephemeral_timeout=0,
                        setup_key_id=None,
                        endpoint_host=None,
                        endpoint_port=None,
                        created_at=h.clock(),
                        last_seen=h.clock(),
                        map_serial=0,
                        acked_serial=0,
                    )
                )
        assert server._address_floor == 0  # as after a restart: nothing was allocated by this process yet
        answer = await h.agent().enrol(key)
        assert answer.status == 201, answer.text
        assert answer.body["peer"]["address"] == str(ipaddress.IPv4Address(base + 261))
        assert server._address_floor == base + 261
        # once the quarantine is over, the released address is the lowest free one, below the floor
        h.clock.now += enrolment.ADDRESS_QUARANTINE
        assert (await h.agent().enrol(key)).body["peer"]["address"] == str(ipaddress.IPv4Address(base + 7))
        assert (await h.agent().enrol(key)).body["peer"]["address"] == str(ipaddress.IPv4Address(base + 262))

    with_harness(tmp_path, body, rate_limits=NO_LIMITS)
