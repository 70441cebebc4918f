"""The data-plane worker: its channel format in process, and live worker processes under socket-only tunnels on
127.0.0.1 (no root; the TUN side is covered by tests/interop/test_worker_live.py)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from collections.abc import Sequence

import pytest
from support.helpers import ENDPOINT_B, det_rng, ipv4_packet, private_key

from wgpy.device import Device, KeypairRetired, SealJob
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.drivers.worker import MESSAGE_LIMIT, _Worker, encode
from wgpy.events import Endpoint
from wgpy.keypair import Keypair
from wgpy.packetrun import PacketRun

# --- the channel format, in process ----------------------------------------------------------------------------


class FakeUdp:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Endpoint]] = []

    def send_batch(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        self.sent += list(datagrams)


class FakeTun:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_packets(self, packets: Sequence[bytes]) -> None:
        self.written += list(packets)


def _worker() -> tuple[_Worker, FakeUdp, FakeUdp, FakeTun]:
    udp4, udp6, tun = FakeUdp(), FakeUdp(), FakeTun()
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # unused by handle()
    return _Worker(channel, {socket.AF_INET: udp4, socket.AF_INET6: udp6}, tun), udp4, udp6, tun  # type: ignore[dict-item]


def _deliver(worker: _Worker, messages: list[list[bytes]]) -> None:
    for message in messages:
        data = b"".join(message)
        assert len(data) <= MESSAGE_LIMIT
        worker.handle(memoryview(data))


def _job(keypair: Keypair, count: int, endpoint: Endpoint, size: int = 1420) -> SealJob:
    rng = random.Random(count)
    plaintexts = [rng.randbytes(size) for _ in range(count)]
    first, granted = keypair.reserve(count)
    assert granted == count
    return SealJob(
        keypair.local_index,
        keypair.remote_index,
        first,
        plaintexts,
        endpoint,
        keypair.send_aead,
        keypair.export_send_key(),
    )


def _keypair(index: int) -> Keypair:
    key = random.Random(index).randbytes(32)
    return Keypair(send_key=key, recv_key=key, local_index=index, remote_index=index + 1, is_initiator=True, now=0.0)


def test_worker_seals_what_the_job_would_seal() -> None:
    worker, udp4, udp6, tun = _worker()
    k1, k2 = _keypair(7), _keypair(9)
    v6: Endpoint = ("fd00::2", 51820, 0, 0)
    jobs: list[SealJob | KeypairRetired] = [_job(k1, 3, ENDPOINT_B), _job(k2, 2, v6, 64), _job(k1, 1, ENDPOINT_B, 0)]
    packets = [ipv4_packet("10.0.0.2", "10.0.0.1", b"p%d" % i) for i in range(5)]
    installed: set[int] = set()
    _deliver(worker, encode(jobs, packets, installed))
    expected4 = [(m, ENDPOINT_B) for job in (jobs[0], jobs[2]) for m in job.run()]  # type: ignore[union-attr]
    assert udp4.sent == expected4
    assert udp6.sent == [(m, v6) for m in jobs[1].run()]  # type: ignore[union-attr]
    assert tun.written == packets
    assert installed == {7, 9}
    assert worker.bad_records == 0


def test_a_job_holding_a_packet_run_is_sealed_as_its_list_would_be() -> None:
    """``Device.send_run`` hands out jobs whose plaintexts are a ``PacketRun`` (a TSO read): the worker's records
    carry them as they carry a list, and what the worker sends is ``job.run()``, byte for byte."""
    worker, udp4, _, _ = _worker()
    k1 = _keypair(5)
    listed = _job(k1, 47, ENDPOINT_B, 1408)
    stride = 1424
    buffer = bytearray(47 * stride)
    for i, plaintext in enumerate(listed.plaintexts):
        buffer[i * stride : i * stride + len(plaintext)] = plaintext
    run = PacketRun(buffer, 47, stride, 1408, zero_padded=False)
    first, granted = k1.reserve(47)
    assert granted == 47
    job = SealJob(k1.local_index, k1.remote_index, first, run, ENDPOINT_B, k1.send_aead, k1.export_send_key())
    _deliver(worker, encode([job], [], set()))
    assert udp4.sent == [(m, ENDPOINT_B) for m in job.run()]
    as_list = SealJob(k1.local_index, k1.remote_index, first, run.packets(), ENDPOINT_B, k1.send_aead, b"")
    assert job.run() == as_list.run()
    assert len(udp4.sent) == 47 and worker.bad_records == 0


def test_forget_drops_the_key_and_keys_are_sent_once() -> None:
    worker, udp4, _, _ = _worker()
    k1 = _keypair(7)
    installed: set[int] = set()
    first = encode([_job(k1, 1, ENDPOINT_B)], [], installed)
    second = encode([_job(k1, 1, ENDPOINT_B)], [], installed)
    assert len(b"".join(first[0])) > len(b"".join(second[0]))  # the key went only with the first
    _deliver(worker, first + second)
    assert len(udp4.sent) == 2 and 7 in worker.aeads
    _deliver(worker, encode([KeypairRetired(7)], [], installed))
    assert 7 not in worker.aeads and not installed
    # A SEAL record for a forgotten keypair (the main process never sends one) is dropped and counted.
    stale = _job(k1, 1, ENDPOINT_B)
    messages = encode([stale], [], {7})  # pretend the key were installed: no KEY record goes out
    _deliver(worker, messages)
    assert len(udp4.sent) == 2 and worker.bad_records == 1


def test_large_batches_are_cut_into_messages() -> None:
    worker, udp4, _, tun = _worker()
    k1 = _keypair(3)
    jobs: list[SealJob | KeypairRetired] = [_job(k1, 700, ENDPOINT_B)]
    packets = [os.urandom(1400) for _ in range(300)] + [os.urandom(65000)]
    messages = encode(jobs, packets, set())
    assert len(messages) > 4
    _deliver(worker, messages)
    assert udp4.sent == [(m, ENDPOINT_B) for m in jobs[0].run()]  # type: ignore[union-attr]
    assert tun.written == packets


@pytest.mark.parametrize("cut", [1, 5, 14, 30])
def test_a_damaged_message_is_counted_not_raised(cut: int) -> None:
    worker, udp4, _, _ = _worker()
    message = b"".join(encode([_job(_keypair(5), 2, ENDPOINT_B)], [], set())[0])
    worker.handle(memoryview(message[:-cut]))
    worker.handle(memoryview(b"\xff" + message))
    assert worker.bad_records == 2
    assert not udp4.sent  # nothing of a damaged message goes out


# --- live worker processes ---------------------------------------------------------------------------------------


class LoopbackPair:
    def __init__(self, worker_a: bool, worker_b: bool) -> None:
        self.a = Device(private_key(1), rng=det_rng(1))
        self.b = Device(private_key(2), rng=det_rng(2))
        self.got_a: list[bytes] = []
        self.got_b: list[bytes] = []
        self.ta = Tunnel(self.a, on_packet=self.got_a.append, bind_address="127.0.0.1", worker=worker_a)
        self.tb = Tunnel(self.b, on_packet=self.got_b.append, bind_address="127.0.0.1", worker=worker_b)

    async def start(self) -> None:
        await self.ta.start()
        await self.tb.start()
        self.connect()
        await self.handshake()

    async def handshake(self) -> None:
        """One packet A -> B first: a simultaneous first packet from both sides makes both initiate, and one of
        them then waits out REKEY_TIMEOUT (as in any WireGuard)."""
        self.ta.send_packet(ipv4_packet("10.0.0.1", "10.0.0.2", b"hello"))
        deadline = time.monotonic() + 10.0
        while not self.got_b and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert self.got_b, "no handshake"

    def connect(self) -> None:
        assert self.a.public_key is not None and self.b.public_key is not None
        self.a.add_peer(self.b.public_key, endpoint=("127.0.0.1", self.tb.local_port), allowed_ips=["10.0.0.2/32"])
        self.b.add_peer(self.a.public_key, endpoint=("127.0.0.1", self.ta.local_port), allowed_ips=["10.0.0.1/32"])

    async def exchange(self, count: int, tag: bytes) -> None:
        """``count`` packets each way, in bursts; waits until all arrived (loopback does not lose them)."""
        sent_a = [ipv4_packet("10.0.0.1", "10.0.0.2", tag + b"a%d" % i) for i in range(count)]
        sent_b = [ipv4_packet("10.0.0.2", "10.0.0.1", tag + b"b%d" % i) for i in range(count)]
        self.got_a.clear()
        self.got_b.clear()
        for start in range(0, count, 32):
            self.ta.device.send_packets(sent_a[start : start + 32], time.monotonic())
            self.ta.flush()
            self.tb.device.send_packets(sent_b[start : start + 32], time.monotonic())
            self.tb.flush()
            await asyncio.sleep(0.002)
        deadline = time.monotonic() + 10.0
        while (len(self.got_b) < count or len(self.got_a) < count) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # The first packets wait for the handshake; order is kept per direction.
        assert self.got_b == sent_a
        assert self.got_a == sent_b

    def close(self) -> None:
        self.ta.close()
        self.tb.close()

    async def __aenter__(self) -> LoopbackPair:
        try:
            await self.start()
        except BaseException:
            self.close()  # a failed start must not leave worker processes behind
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


def _run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def test_two_workers_carry_traffic_across_rekeys() -> None:
    async def scenario() -> None:
        async with LoopbackPair(True, True) as pair:
            pids = [pair.ta.worker_pid, pair.tb.worker_pid]
            assert None not in pids
            for device in (pair.a, pair.b):
                device.rekey_after_messages = 150  # a new session every ~150 packets: KEY and FORGET records flow
            assert pair.b.public_key is not None
            peer_b = pair.a.peer(pair.b.public_key)
            assert peer_b is not None
            for round_ in range(6):
                peer_b.last_sent_handshake_at = None  # test hook: lift the 5 s limit between initiations
                await pair.exchange(100, b"r%d" % round_)
            assert pair.a.stats.handshakes_completed + pair.b.stats.handshakes_completed >= 3
            assert pair.ta.worker_failures == pair.tb.worker_failures == 0
            worker = pair.ta._worker
            assert worker is not None and worker.jobs_sent > 0
        for pid in pids:
            assert pid is not None
            with pytest.raises(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reaped by close(): it is gone

    _run(scenario())


def test_losing_the_worker_falls_back_to_one_process() -> None:
    async def scenario() -> None:
        async with LoopbackPair(True, False) as pair:
            await pair.exchange(50, b"before")
            pid = pair.ta.worker_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)  # the worker this test's tunnel started
            deadline = time.monotonic() + 5.0
            while pair.ta.worker_pid is not None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert pair.ta.worker_pid is None and pair.ta.worker_failures == 1
            assert pair.a.seal_offload == pair.ta.seal_in_place  # sealed in this process again (in place)
            await pair.exchange(50, b"after")

    _run(scenario())


def test_a_new_listen_port_gets_a_new_worker() -> None:
    async def scenario() -> None:
        async with LoopbackPair(True, False) as pair:
            await pair.exchange(20, b"old port")
            old_pid = pair.ta.worker_pid
            await pair.ta.rebind(0)
            assert pair.ta.worker_pid not in (None, old_pid)
            assert pair.b.public_key is not None
            peer = pair.b.peer(pair.a.public_key)  # type: ignore[arg-type]
            assert peer is not None
            peer.endpoint = ("127.0.0.1", pair.ta.local_port)
            await pair.exchange(20, b"new port")
            assert pair.ta.worker_failures == 0

    _run(scenario())
