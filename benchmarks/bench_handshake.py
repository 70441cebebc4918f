"""Noise_IKpsk2 handshakes and the DoS layer around them (wireguard-go BenchmarkHandshake-style, one role at a time).

Each round of a handshake benchmark does real, fresh work: ``benchmark.pedantic`` with a ``setup`` that advances a
fake clock by one second (so the TAI64N timestamp grows and the 1/50 s flood limit never trips) and produces a
fresh initiation with a fresh ephemeral. A rejected handshake raises ``HandshakeRejected`` inside the measured
function, so a benchmark that silently measured a STALE_TIMESTAMP or HANDSHAKE_FLOOD drop would fail instead.

- ``test_initiator``: ``create_initiation`` + ``consume_response`` + ``begin_session``. The response must answer
  the very initiation that is measured, so ``setup`` makes the initiation with a seeded rng, lets the responder
  answer it (not measured), and the measured code remakes the identical initiation from the same seed.
- ``test_responder``: ``consume_initiation`` + ``create_response`` + ``begin_session`` (noise.py alone).
- ``test_device_responder``: the same through ``Device.receive_datagram`` (mac1, load meter, index table, keypair
  rotation, timers included) with an assertion that a 92-byte response came out.
- ``test_device_under_load_cookie_reply``: a device under load answering an initiation that has no mac2 with a
  64-byte cookie reply (mac1 + one XChaCha20-Poly1305, no X25519), which is what a flood costs the responder.
- ``test_device_under_load_with_cookie``: under load, an initiation carrying a valid mac2 from a new source each
  round (cookie fetched in ``setup``): mac1 + mac2 + rate limiter + the whole handshake.
- ``test_cookie_create_reply``: ``CookieChecker.create_reply`` alone.

``extra_info["per_second"]`` is filled in after each run from the mean (handshakes/s or replies/s).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from wgpy import noise
from wgpy.cookie import CookieChecker, CookieGenerator
from wgpy.device import Device, endpoint_bytes
from wgpy.keypair import Keypair
from wgpy.keys import PrivateKey, PublicKey
from wgpy.messages import MESSAGE_COOKIE_REPLY_SIZE, MESSAGE_RESPONSE_SIZE, CookieReply, Initiation, Response, unpack
from wgpy.noise import Handshake, StaticIdentity

ROUNDS: Final = 200
EPOCH_NS: Final = 1_700_000_000 * 1_000_000_000
ENDPOINT: Final = ("192.0.2.1", 51820)
INITIATOR_INDEX: Final = 0x11111111
RESPONDER_INDEX: Final = 0x22222222


def _key(seed: int) -> PrivateKey:
    return PrivateKey(random.Random(f"bench-key-{seed}").randbytes(32))


class Clock:
    """A fake clock that moves one second per tick, far more than the flood limit and the TAI64N whitening."""

    def __init__(self) -> None:
        self.now = 0.0

    def tick(self) -> tuple[float, int]:
        self.now += 1.0
        return self.now, EPOCH_NS + int(self.now * 1e9)


class Parties:
    """An initiator and a responder that know each other, at the ``noise`` level."""

    def __init__(self) -> None:
        self.initiator = StaticIdentity(_key(1))
        self.responder = StaticIdentity(_key(2))
        self.initiator_handshake = Handshake(self.initiator, self.responder.public_key)
        self.responder_handshake = Handshake(self.responder, self.initiator.public_key)
        self.clock = Clock()

    def lookup_peer(self, public_key: PublicKey) -> Handshake | None:
        return self.responder_handshake if public_key == self.initiator.public_key else None


def _record_rate(benchmark: BenchmarkFixture) -> None:
    stats = benchmark.stats
    if stats is not None:
        benchmark.extra_info["per_second"] = round(1.0 / stats.stats.mean)


def test_initiator(benchmark: BenchmarkFixture) -> None:
    p = Parties()
    state: dict[str, Keypair] = {}

    def setup() -> tuple[tuple[int, int, object, float], dict[str, object]]:
        now, wall = p.clock.tick()
        seed = int(now)
        initiation = noise.create_initiation(
            p.initiator_handshake, p.initiator, INITIATOR_INDEX, wall, random.Random(seed).randbytes
        )
        handshake = noise.consume_initiation(initiation, p.responder, p.lookup_peer, now)
        response = noise.create_response(handshake, RESPONDER_INDEX, random.Random(-seed).randbytes)
        state["responder"] = noise.begin_session(handshake, now)
        p.initiator_handshake.clear()
        return (seed, wall, response, now), {}

    def initiator_role(seed: int, wall: int, response: Response, now: float) -> Keypair:
        # Remakes the initiation that ``setup`` made (same seed, same wall clock): identical bytes and state.
        noise.create_initiation(
            p.initiator_handshake, p.initiator, INITIATOR_INDEX, wall, random.Random(seed).randbytes
        )
        handshake = noise.consume_response(response, p.initiator, lambda _index: p.initiator_handshake)
        return noise.begin_session(handshake, now)

    keypair = benchmark.pedantic(initiator_role, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)  # type: ignore[no-untyped-call]
    _record_rate(benchmark)
    # The keys agree with the responder's: the measured code derived a real session.
    message = keypair.seal(bytes(16))
    assert message is not None
    assert state["responder"].open(0, message) == bytes(16)


def test_responder(benchmark: BenchmarkFixture) -> None:
    p = Parties()
    rng = random.Random(7).randbytes

    def setup() -> tuple[tuple[Initiation, float], dict[str, object]]:
        now, wall = p.clock.tick()
        p.initiator_handshake.clear()
        initiation = noise.create_initiation(p.initiator_handshake, p.initiator, INITIATOR_INDEX, wall, rng)
        return (initiation, now), {}

    def responder_role(initiation: Initiation, now: float) -> Keypair:
        handshake = noise.consume_initiation(initiation, p.responder, p.lookup_peer, now)
        noise.create_response(handshake, RESPONDER_INDEX, rng)
        return noise.begin_session(handshake, now)

    keypair = benchmark.pedantic(responder_role, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)  # type: ignore[no-untyped-call]
    _record_rate(benchmark)
    assert isinstance(keypair, Keypair) and not keypair.is_initiator


# --- through the Device ---------------------------------------------------------------------------------------


class DeviceParties:
    """A responder ``Device`` with one configured peer, and that peer's noise-level initiator."""

    def __init__(self, *, handshake_load_threshold: float) -> None:
        self.device = Device(_key(2), rng=random.Random(3).randbytes, handshake_load_threshold=handshake_load_threshold)
        self.initiator = StaticIdentity(_key(1))
        self.device.add_peer(self.initiator.public_key, allowed_ips=["10.0.0.1/32"], endpoint=ENDPOINT)
        responder_public = self.device.public_key
        assert responder_public is not None
        self.handshake = Handshake(self.initiator, responder_public)
        self.cookie = CookieGenerator(responder_public)
        self.rng = random.Random(4).randbytes
        self.clock = Clock()

    def initiation(self) -> tuple[bytes, float]:
        now, wall = self.clock.tick()
        self.handshake.clear()
        message = noise.create_initiation(self.handshake, self.initiator, INITIATOR_INDEX, wall, self.rng)
        return self.cookie.add_macs(message.pack(), now), now


def _expect_one(device: Device, size: int) -> Callable[[], None]:
    def check() -> None:
        out = device.datagrams_to_send()
        assert len(out) == 1 and len(out[0][0]) == size, out

    return check


def test_device_responder(benchmark: BenchmarkFixture) -> None:
    d = DeviceParties(handshake_load_threshold=1e9)
    device = d.device
    check = _expect_one(device, MESSAGE_RESPONSE_SIZE)

    def setup() -> tuple[tuple[bytes, float], dict[str, object]]:
        return d.initiation(), {}

    calls = 0

    def receive(data: bytes, now: float) -> None:
        nonlocal calls
        calls += 1
        device.receive_datagram(data, ENDPOINT, now)
        check()

    benchmark.pedantic(receive, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)  # type: ignore[no-untyped-call]
    _record_rate(benchmark)
    assert device.stats.handshakes_completed == calls
    assert not device.stats.drops


def test_device_under_load_cookie_reply(benchmark: BenchmarkFixture) -> None:
    d = DeviceParties(handshake_load_threshold=0.0)  # every handshake message counts as "under load"
    device = d.device
    data, now = d.initiation()
    check = _expect_one(device, MESSAGE_COOKIE_REPLY_SIZE)

    def receive() -> None:
        device.receive_datagram(data, ENDPOINT, now)
        check()

    benchmark(receive)
    _record_rate(benchmark)
    assert device.stats.handshakes_completed == 0
    assert device.stats.cookie_replies_sent > 0


def test_device_under_load_with_cookie(benchmark: BenchmarkFixture) -> None:
    d = DeviceParties(handshake_load_threshold=0.0)
    device = d.device
    check = _expect_one(device, MESSAGE_RESPONSE_SIZE)
    sources = iter(range(1, 1 << 20))

    def setup() -> tuple[tuple[bytes, tuple[str, int], float], dict[str, object]]:
        # A new source address each round, so the per-source rate limiter (5 burst, 20/s) never refuses.
        n = next(sources)
        endpoint = (f"198.18.{n >> 8 & 255}.{n & 255}", 40000 + n % 1000)
        data, now = d.initiation()
        device.receive_datagram(data, endpoint, now)  # no mac2 yet: the device answers with a cookie reply
        (reply_data, _), *_ = device.datagrams_to_send()
        reply = unpack(reply_data)
        assert isinstance(reply, CookieReply) and d.cookie.consume_reply(reply, now)
        return (d.cookie.add_macs(data, now), endpoint, now), {}

    calls = 0

    def receive(data: bytes, endpoint: tuple[str, int], now: float) -> None:
        nonlocal calls
        calls += 1
        device.receive_datagram(data, endpoint, now)
        check()

    benchmark.pedantic(receive, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)  # type: ignore[no-untyped-call]
    _record_rate(benchmark)
    assert device.stats.handshakes_completed == calls


def test_cookie_create_reply(benchmark: BenchmarkFixture) -> None:
    d = DeviceParties(handshake_load_threshold=1e9)
    data, now = d.initiation()
    public = d.device.public_key
    assert public is not None
    checker = CookieChecker(public, random.Random(5).randbytes)
    source = endpoint_bytes(ENDPOINT)
    reply = benchmark(checker.create_reply, data, INITIATOR_INDEX, source, now)
    _record_rate(benchmark)
    assert len(reply.pack()) == MESSAGE_COOKIE_REPLY_SIZE


@pytest.mark.parametrize("under_load", [False, True], ids=["mac1", "mac1+mac2"])
def test_cookie_check(benchmark: BenchmarkFixture, under_load: bool) -> None:
    """``CookieChecker.check``: what every handshake message costs before any X25519."""
    d = DeviceParties(handshake_load_threshold=1e9)
    data, now = d.initiation()
    checker = d.device.cookie_checker
    source = endpoint_bytes(ENDPOINT)
    state = benchmark(checker.check, data, source, under_load, now)
    assert state.name.startswith("VALID_MAC")
