"""MemoryTun: the in-memory TUN device the engine's tests use in place of /dev/net/tun.

These tests touch no network interface; the only descriptors are MemoryTun's own readiness pipe.
"""

from __future__ import annotations

import asyncio
import errno
import os
import selectors
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tun import MemoryTun, TunDevice

IPV4_PACKET = bytes.fromhex("4500001c0001000040110000") + bytes([10, 77, 0, 1, 10, 77, 0, 2]) + bytes(8)
IPV6_PACKET = bytes.fromhex("6000000000001140") + bytes(32)


def _readable(fd: int) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        return bool(selector.select(timeout=0))


def test_satisfies_tun_device_protocol() -> None:
    device: TunDevice = MemoryTun()  # checked statically by mypy
    assert isinstance(device, TunDevice)
    device.close()


def test_defaults_and_mtu() -> None:
    with MemoryTun() as tun:
        assert tun.name == "memtun0"
        assert tun.mtu == 1420
        tun.set_mtu(1280)
        assert tun.mtu == 1280
    with MemoryTun("wg7", mtu=68) as tun:
        assert (tun.name, tun.mtu) == ("wg7", 68)


@pytest.mark.parametrize("mtu", [0, 67, 65536, -1])
def test_mtu_out_of_range_is_rejected(mtu: int) -> None:
    with pytest.raises(ValueError, match="MTU"):
        MemoryTun(mtu=mtu)
    with MemoryTun() as tun, pytest.raises(ValueError, match="MTU"):
        tun.set_mtu(mtu)


def test_read_when_empty_raises_blocking_io_error() -> None:
    with MemoryTun() as tun, pytest.raises(BlockingIOError) as excinfo:
        tun.read()
    assert excinfo.value.errno == errno.EAGAIN


def test_injected_packets_are_read_in_order() -> None:
    with MemoryTun() as tun:
        tun.inject(IPV4_PACKET)
        tun.inject(bytearray(IPV6_PACKET))  # copied, so later changes by the caller do not leak in
        assert tun.pending == 2
        assert tun.read() == IPV4_PACKET
        packet = tun.read()
        assert packet == IPV6_PACKET
        assert type(packet) is bytes
        assert tun.pending == 0
        with pytest.raises(BlockingIOError):
            tun.read()


def test_written_packets_are_recorded_and_taken() -> None:
    with MemoryTun() as tun:
        assert tun.write(IPV4_PACKET) == len(IPV4_PACKET)
        assert tun.write(IPV6_PACKET) == len(IPV6_PACKET)
        assert tun.written == [IPV4_PACKET, IPV6_PACKET]
        assert tun.take_written() == [IPV4_PACKET, IPV6_PACKET]
        assert tun.written == []
        assert tun.take_written() == []


def test_write_does_not_loop_back_into_read() -> None:
    with MemoryTun() as tun:
        tun.write(IPV4_PACKET)
        with pytest.raises(BlockingIOError):
            tun.read()


@pytest.mark.parametrize("packet", [b"", b"\x00" * 20, b"\x55hello", b"\xff"])
def test_strict_write_refuses_what_the_kernel_refuses(packet: bytes) -> None:
    with MemoryTun() as tun:
        with pytest.raises(OSError) as excinfo:
            tun.write(packet)
        assert excinfo.value.errno == errno.EINVAL
        assert tun.written == []


def test_non_strict_write_accepts_anything() -> None:
    with MemoryTun(strict=False) as tun:
        assert tun.write(b"hello") == 5
        assert tun.write(b"") == 0
        assert tun.take_written() == [b"hello", b""]


def test_fileno_is_readable_exactly_while_packets_wait() -> None:
    with MemoryTun() as tun:
        fd = tun.fileno()
        assert fd == tun.fileno()
        assert not _readable(fd)
        tun.inject(IPV4_PACKET)
        tun.inject(IPV6_PACKET)
        assert _readable(fd)
        tun.read()
        assert _readable(fd)
        tun.read()
        assert not _readable(fd)
        tun.write(IPV4_PACKET)
        assert not _readable(fd)


def test_packets_injected_before_fileno_make_it_readable() -> None:
    with MemoryTun() as tun:
        tun.inject(IPV4_PACKET)
        assert _readable(tun.fileno())


def test_close_releases_pipe_and_stops_io() -> None:
    tun = MemoryTun()
    fd = tun.fileno()
    tun.inject(IPV4_PACKET)
    tun.write(IPV6_PACKET)
    tun.close()
    assert tun.closed
    with pytest.raises(OSError) as excinfo:
        os.fstat(fd)
    assert excinfo.value.errno == errno.EBADF
    for operation in (tun.read, tun.fileno, lambda: tun.inject(IPV4_PACKET), lambda: tun.write(IPV4_PACKET)):
        with pytest.raises(ValueError, match="closed"):
            operation()
    assert tun.take_written() == [IPV6_PACKET]  # still inspectable after close
    tun.close()  # idempotent


def test_works_with_asyncio_add_reader() -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        received: list[bytes] = []
        done = loop.create_future()
        with MemoryTun() as tun:

            def on_readable() -> None:
                while True:
                    try:
                        received.append(tun.read())
                    except BlockingIOError:
                        break
                if len(received) == 3 and not done.done():
                    done.set_result(None)

            loop.add_reader(tun.fileno(), on_readable)
            try:
                tun.inject(IPV4_PACKET)
                await asyncio.sleep(0)
                loop.call_soon(tun.inject, IPV6_PACKET)
                loop.call_later(0.01, tun.inject, IPV4_PACKET)
                await asyncio.wait_for(done, timeout=5)
            finally:
                loop.remove_reader(tun.fileno())
        return received

    assert asyncio.run(main()) == [IPV4_PACKET, IPV6_PACKET, IPV4_PACKET]


def test_inject_from_another_thread() -> None:
    count = 500
    packets = [IPV4_PACKET + i.to_bytes(2, "big") for i in range(count)]
    with MemoryTun() as tun, selectors.DefaultSelector() as selector:
        selector.register(tun.fileno(), selectors.EVENT_READ)

        def inject_all() -> None:
            for packet in packets:
                tun.inject(packet)

        injector = threading.Thread(target=inject_all)
        injector.start()
        received: list[bytes] = []
        while len(received) < count:
            assert selector.select(timeout=5), "readiness was lost"
            while True:
                try:
                    received.append(tun.read())
                except BlockingIOError:
                    break
        injector.join()
        assert received == packets
        assert not selector.select(timeout=0)


@given(st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=8)), max_size=40))
def test_readiness_matches_queue_under_any_interleaving(operations: list[bytes | None]) -> None:
    # None means "read once"; bytes means "inject". The descriptor must be readable iff read() would succeed,
    # and packets must come out in the order they went in.
    with MemoryTun() as tun:
        fd = tun.fileno()
        model: list[bytes] = []
        for operation in operations:
            if operation is None:
                if model:
                    assert tun.read() == model.pop(0)
                else:
                    with pytest.raises(BlockingIOError):
                        tun.read()
            else:
                tun.inject(operation)
                model.append(operation)
            assert _readable(fd) == bool(model)
            assert tun.pending == len(model)
