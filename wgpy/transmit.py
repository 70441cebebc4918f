"""The one drain contract between a ``Device`` and whatever carries its output (aioquic's ``transmit()``).

Theory of operation: after every input, a driver takes the device's outputs and moves them on: datagrams to a
``DatagramSink`` (the UDP sockets, or an in-memory network), decrypted packets to a ``PacketSink`` (the TUN device,
a callback, a list), and, when sealing is offloaded, the ``SealJob``s to a ``SealJobSink`` (a worker process) that
may take them or leave them. ``drain`` is that loop, written once: the asyncio driver, the worker path and
``MemoryNetwork`` all use it, so the order of the outputs and what happens to jobs nobody takes (they are sealed
here, in order, and sent like any datagram) is the same everywhere. Events and the timer stay with the driver,
which reads ``next_event()`` and ``get_timer()`` after draining. Nothing here does I/O; the sinks do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from .events import Endpoint
from .packetrun import PacketRun
from .send import KeypairRetired, SealJob

if TYPE_CHECKING:
    from .device import Device

__all__ = [
    "DatagramSink",
    "PacketSink",
    "RunSink",
    "SealJobSink",
    "drain",
    "run_seal_jobs",
    "write_items",
]


class DatagramSink(Protocol):
    """Where datagrams go: the driver's sockets, or an in-memory network."""

    def send_datagrams(self, datagrams: Sequence[tuple[bytes, Endpoint]]) -> None:
        """Send ``datagrams`` in order (each to its own endpoint). Must not raise for a datagram it cannot send."""
        ...


class PacketSink(Protocol):
    """Where decrypted IP packets go: a ``tun.TunDevice`` is one as it is."""

    def write_packets(self, packets: Sequence[bytes]) -> None:
        """Deliver ``packets`` in order."""
        ...


class RunSink(PacketSink, Protocol):
    """A ``PacketSink`` that also takes a run of packets as it lies in its buffer (the tunnel: ``LinuxTun.write_run``
    glues it without a ``bytes`` object per packet). ``drain`` hands runs to ``write_run`` when the sink has it."""

    def write_run(self, run: PacketRun) -> None:
        """Deliver the packets of ``run`` in order."""
        ...


class SealJobSink(Protocol):
    """Who runs the offloaded sealing (a worker process): it may take the jobs and the packets, or leave them."""

    def submit(
        self, jobs: list[SealJob | KeypairRetired], packets: Sequence[bytes | PacketRun]
    ) -> tuple[list[SealJob | KeypairRetired], Sequence[bytes | PacketRun]]:
        """Take what it can; return the jobs and the packets it did not take (the drain does them here). A
        ``PacketRun`` among the packets stands for its packets, in its place."""
        ...


def run_seal_jobs(jobs: Sequence[SealJob | KeypairRetired], datagrams: DatagramSink) -> None:
    """Seal the jobs here, in order, and send their messages (``KeypairRetired`` needs nothing here)."""
    for job in jobs:
        if isinstance(job, SealJob):
            messages = job.run()
            endpoint = job.endpoint
            datagrams.send_datagrams([(message, endpoint) for message in messages])


def drain(
    device: Device, datagrams: DatagramSink, packets: PacketSink | None, offload: SealJobSink | None = None
) -> None:
    """Move everything ``device`` produced since the last drain to the sinks.

    Args:
        device: the engine to drain.
        datagrams: receives the datagrams first (handshake and inline-sealed transport messages, in order), then
            the messages of the seal jobs that ``offload`` did not take.
        packets: receives the decrypted packets that ``offload`` did not take; ``None`` discards them.
        offload: offered the seal jobs and the packets first, when there are any.
    """
    out = device.datagrams_to_send()
    if out:
        datagrams.send_datagrams(out)
    jobs = device.seal_jobs()
    runs = device.runs_pending
    delivered = device.packet_items_to_tun()
    if offload is not None and (jobs or delivered):
        jobs, delivered = offload.submit(jobs, delivered)
    if jobs:
        run_seal_jobs(jobs, datagrams)
    if delivered and packets is not None:
        if runs:
            write_items(delivered, packets)
        else:
            packets.write_packets(delivered)  # type: ignore[arg-type]  # no run among them: all bytes


def write_items(items: Sequence[bytes | PacketRun], sink: PacketSink) -> None:
    """Hand ``items`` to ``sink`` in order: packets to ``write_packets``, runs to ``write_run`` when the sink has
    it (``RunSink``), else as their packets."""
    write_run = getattr(sink, "write_run", None)
    pending: list[bytes] = []
    for item in items:
        if isinstance(item, PacketRun):
            if write_run is None:
                pending += item.packets()
                continue
            if pending:
                sink.write_packets(pending)
                pending = []
            write_run(item)
        else:
            pending.append(item)
    if pending:
        sink.write_packets(pending)
