"""LinuxTun in offload mode (IFF_VNET_HDR + TSO) against the real kernel, each test inside a namespace of its own.

Needs root and /dev/net/tun; without them the namespace tests are skipped with the reason, except in CI (``CI=true``),
where that fails them instead. The layout is the one of ``test_tun_linux.py``: the ``netns`` fixture makes a
namespace with a name unique to this run and deletes it afterwards; each test runs one *scenario* of this file in a
child process inside it (``ip netns exec NS python <this file> <scenario>``).

The TUN device has no real peer, so the scenarios play the remote TCP endpoint themselves: a listening socket in
the namespace gets a SYN written into the TUN, its SYN-ACK is read back from the TUN, the handshake is completed
with a written ACK, and from then on the test is a TCP sender/receiver built from hand-made segments (their
checksums are computed by the RFC 1071 routine below, not by ``tun.offload``):

- **write side**: 20 data segments go through ``write_packets`` (glued by ``handle_gro`` into one TCPV4/TCPV6
  super-packet, which is checked) and the accepted socket must receive every byte in order. The same is done with
  ``needs_csum=True`` records (CHECKSUM_PARTIAL), and with one corrupted segment, for which the kernel must drop the
  whole glued super-packet (its complete checksum no longer matches) and count a TCP checksum error.
- **read side**: the accepted socket sends 40 KB back; the records read from the TUN must include TSO
  super-packets (gso_type TCPV4/TCPV6), which ``handle_virtio_read`` must cut into segments that each carry valid
  IP and TCP checksums, are no larger than the MSS, and whose payloads concatenate to the bytes sent.
"""

from __future__ import annotations

import errno
import os
import random
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from support.netns_harness import fresh_netns, run_scenario

import tun.offload
from tun.linux import IFF_VNET_HDR, OFFLOAD_READ_SIZE, LinuxTun
from tun.offload import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_SIZE,
    VirtioNetHdr,
    handle_gro,
    handle_virtio_read,
    handle_virtio_read_run,
)

TUN_NAME = "wgpyo0"  # the namespace is ours, so a fixed name inside it cannot clash
LOCAL_V4 = "10.79.0.1"  # private test subnet, only ever configured inside our namespaces
REMOTE_V4 = "10.79.0.2"
LOCAL_V6 = "fd00:79::1"  # ULA test prefix, same
REMOTE_V6 = "fd00:79::2"
TUN_MTU = 1500
SCENARIO_TIMEOUT = 60.0
IO_TIMEOUT = 5.0
SYN_ATTEMPTS = 5
SYN_RETRY_TIME = 1.0  # seconds to wait for a SYN-ACK before sending the SYN again
IPPROTO_TCP = 6
SEGMENTS = 20
SEGMENT_SIZE = 1400
READ_BACK_SIZE = 40_000
GSO_MAX_SEGS = 8  # set on the device (set_gso_max_segs): the kernel's super-packets must keep to it

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


# -- environment (as in test_tun_linux.py) ---------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, deleted after the test whatever its outcome."""
    yield from fresh_netns("wgpyo")


def _run_scenario(namespace: str, scenario: str) -> None:
    run_scenario(namespace, __file__, scenario, SCENARIO_TIMEOUT)


# -- tests -----------------------------------------------------------------------------------------------------


def test_offload_flags_and_queues(netns: str) -> None:
    _run_scenario(netns, "flags_and_queues")


@pytest.mark.parametrize("version", [4, 6])
def test_glued_super_packets_are_delivered_and_kernel_super_packets_split(netns: str, version: int) -> None:
    _run_scenario(netns, f"tcp_v{version}")


def test_writes_are_glued_when_tso_is_off(netns: str) -> None:
    _run_scenario(netns, "tcp_v4_without_tso")


def test_batch_calls_without_offload(netns: str) -> None:
    _run_scenario(netns, "plain_batch_calls")


def test_offload_on_a_device_that_is_not_a_tun_clone_gives_tun_error() -> None:
    from tun import TunError

    with pytest.raises(TunError) as excinfo:
        LinuxTun(TUN_NAME, offload=True, device_path="/dev/null")
    assert excinfo.value.errno == errno.ENOTTY


def test_ioctl_numbers_match_the_kernel_headers() -> None:
    import platform

    from tun import linux

    if platform.machine() not in ("x86_64", "aarch64", "i686", "armv7l", "riscv64", "s390x"):
        pytest.skip(f"values below are for the asm-generic ioctl encoding, not {platform.machine()}")
    # <linux/if_tun.h> on x86_64: TUNSETOFFLOAD 0x400454d0, TUNGETVNETHDRSZ 0x800454d7, TUNSETVNETHDRSZ 0x400454d8.
    assert (linux._TUNSETOFFLOAD, linux._TUNGETVNETHDRSZ, linux._TUNSETVNETHDRSZ) == (
        0x400454D0,
        0x800454D7,
        0x400454D8,
    )
    assert IFF_VNET_HDR == 0x4000


# -- scenario helpers (run inside the namespace) ---------------------------------------------------------------

_SCENARIOS: dict[str, Callable[[], None]] = {}


def _scenario(function: Callable[[], None]) -> Callable[[], None]:
    _SCENARIOS[function.__name__.removeprefix("_scenario_")] = function
    return function


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ip {' '.join(args)} failed: {result.stderr.strip()}"
    return result.stdout


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071), written plainly: an oracle independent of tun.offload."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_header(packet: bytes) -> bytes:
    if packet[0] >> 4 == 4:
        ip_len = (packet[0] & 0x0F) * 4
        return packet[12:20] + struct.pack("!xBH", IPPROTO_TCP, len(packet) - ip_len)
    return packet[8:40] + struct.pack("!I3xB", len(packet) - 40, IPPROTO_TCP)


def _ip_header_length(packet: bytes) -> int:
    return (packet[0] & 0x0F) * 4 if packet[0] >> 4 == 4 else 40


def _assert_valid_checksums(packet: bytes) -> None:
    ip_len = _ip_header_length(packet)
    if packet[0] >> 4 == 4:
        assert _checksum(packet[:ip_len]) == 0, "IPv4 header checksum"
        assert struct.unpack_from("!H", packet, 2)[0] == len(packet), "IPv4 total length"
    else:
        assert struct.unpack_from("!H", packet, 4)[0] == len(packet) - 40, "IPv6 payload length"
    assert _checksum(_pseudo_header(packet) + packet[ip_len:]) == 0, "TCP checksum"


class _RemoteTcp:
    """The far end of one TCP connection, played by writing hand-made segments into the TUN device."""

    def __init__(self, device: LinuxTun, version: int, local_port: int, timestamps: bool) -> None:
        self.device = device
        self.version = version
        self.local = LOCAL_V4 if version == 4 else LOCAL_V6
        self.remote = REMOTE_V4 if version == 4 else REMOTE_V6
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        self.local_raw = socket.inet_pton(family, self.local)
        self.remote_raw = socket.inet_pton(family, self.remote)
        self.local_port = local_port
        self.remote_port = random.randint(20000, 60000)
        self.seq = random.getrandbits(32)
        self.ack = 0
        self.timestamps = timestamps
        self.ts_echo = 0
        self.ip_id = random.getrandbits(16)
        self.partial_checksums = 0  # plain records whose checksum the kernel left to us (NEEDS_CSUM)
        self.runs = 0  # super-packets that handle_virtio_read_run also cut into one buffer (compared below)

    def segment(
        self, flags: int, payload: bytes = b"", *, seq: int | None = None, options: bytes | None = None
    ) -> bytes:
        """One TCP segment from the remote end, with correct IP and TCP checksums."""
        if options is None:
            options = struct.pack("!BBBBII", 1, 1, 8, 10, 1000, self.ts_echo) if self.timestamps else b""
        tcp_len = 20 + len(options)
        seq = self.seq if seq is None else seq
        tcp = struct.pack(
            "!HHIIBBHHH", self.remote_port, self.local_port, seq, self.ack, (tcp_len // 4) << 4, flags, 65535, 0, 0
        )
        tcp += options + payload
        if self.version == 4:
            self.ip_id = (self.ip_id + 1) & 0xFFFF
            header = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), self.ip_id, 0x4000, 64, IPPROTO_TCP, 0,
                self.remote_raw, self.local_raw,
            )  # fmt: skip
            header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
        else:
            header = struct.pack("!IHBB16s16s", 0x60000000, len(tcp), IPPROTO_TCP, 64, self.remote_raw, self.local_raw)
        tcp_checksum = _checksum(_pseudo_header(header + tcp) + tcp)
        return header + tcp[:16] + struct.pack("!H", tcp_checksum) + tcp[18:]

    def is_from_local(self, packet: bytes) -> bool:
        ip_len = _ip_header_length(packet)
        if packet[0] >> 4 == 4:
            if packet[9] != IPPROTO_TCP or packet[12:16] != self.local_raw or packet[16:20] != self.remote_raw:
                return False
        elif packet[0] >> 4 != 6 or packet[6] != IPPROTO_TCP or packet[8:24] != self.local_raw:
            return False
        return struct.unpack_from("!HH", packet, ip_len) == (self.local_port, self.remote_port)

    def read_records(self, timeout: float = IO_TIMEOUT) -> Iterator[tuple[VirtioNetHdr, list[bytes]]]:
        """Raw records from the TUN (header, packets after splitting), until ``timeout`` passes without one."""
        fd = self.device.fileno()
        while select.select([fd], [], [], timeout)[0]:
            record = os.read(fd, OFFLOAD_READ_SIZE)
            every = handle_virtio_read(record)
            run = handle_virtio_read_run(record)  # what LinuxTun.read_run returns for the same record
            if isinstance(run, tuple):
                buffer, count, stride, size, last_size = run
                cut = [bytes(buffer[i * stride : i * stride + size]) for i in range(count - 1)]
                cut.append(bytes(buffer[(count - 1) * stride : (count - 1) * stride + last_size]))
                assert cut == every, "gso_split_into cut a kernel super-packet otherwise than gso_split"
                self.runs += 1
            else:
                assert run == every
            packets = [p for p in every if self.is_from_local(p)]
            if packets:
                hdr = VirtioNetHdr.unpack(record)
                if hdr.gso_type == VIRTIO_NET_HDR_GSO_NONE and hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
                    self.partial_checksums += 1
                yield hdr, packets

    def handshake(self) -> None:
        mss = struct.pack("!BBH", 2, 4, TUN_MTU - (40 if self.version == 4 else 60))
        syn_options = mss + (struct.pack("!BBBBII", 1, 1, 8, 10, 1000, 0) if self.timestamps else b"\x01\x01\x01\x01")
        # Like a real TCP client, send the SYN again when no SYN-ACK comes: on a loaded machine the first one can
        # race the new interface's address and route setup (seen once with IPv6 in CI).
        server_seq = None
        for _attempt in range(SYN_ATTEMPTS):
            self.device.write_packets([self.segment(TCP_SYN, options=syn_options)])
            for _, packets in self.read_records(timeout=SYN_RETRY_TIME):
                packet = packets[0]
                ip_len = _ip_header_length(packet)
                flags = packet[ip_len + 13]
                assert flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK, f"expected SYN-ACK, got flags {flags:#x}"
                _assert_valid_checksums(packet)
                server_seq = struct.unpack_from("!I", packet, ip_len + 4)[0]
                self._note_timestamp(packet)
                break
            if server_seq is not None:
                break
        else:
            raise AssertionError(f"no SYN-ACK came out of the TUN device after {SYN_ATTEMPTS} SYNs")
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.ack = (server_seq + 1) & 0xFFFFFFFF
        self.device.write_packets([self.segment(TCP_ACK)])

    def _note_timestamp(self, packet: bytes) -> None:
        ip_len = _ip_header_length(packet)
        options = packet[ip_len + 20 : ip_len + (packet[ip_len + 12] >> 4) * 4]
        at = options.find(b"\x08\x0a")
        if self.timestamps and at >= 0:
            self.ts_echo = struct.unpack_from("!I", options, at + 2)[0]

    def data_segments(self, data: bytes, size: int) -> list[bytes]:
        """``data`` as segments of ``size`` bytes with PSH on the last; advances ``seq``."""
        segments = []
        for at in range(0, len(data), size):
            chunk = data[at : at + size]
            last = at + size >= len(data)
            segments.append(self.segment(TCP_ACK | (TCP_PSH if last else 0), chunk))
            self.seq = (self.seq + len(chunk)) & 0xFFFFFFFF
        return segments


def _receive_exactly(conn: socket.socket, size: int) -> bytes:
    conn.settimeout(IO_TIMEOUT)
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        assert chunk, f"connection closed after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def _tcp_checksum_errors() -> int:
    """InCsumErrors of the Tcp line of /proc/net/snmp (per network namespace)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Tcp:")]
    names, values = lines[0], lines[1]
    return int(values[names.index("InCsumErrors")])


def _open_device(version: int, tso: bool = True) -> LinuxTun:
    device = LinuxTun(TUN_NAME, mtu=TUN_MTU, offload=True, tso=tso)
    assert device.offload and device.tso == tso
    device.up()
    if version == 4:
        _ip("addr", "add", f"{LOCAL_V4}/24", "dev", TUN_NAME)
    else:
        _ip("-6", "addr", "add", f"{LOCAL_V6}/64", "dev", TUN_NAME, "nodad")
    return device


def _tcp_scenario(version: int, tso: bool = True) -> None:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if version == 4 else VIRTIO_NET_HDR_GSO_TCPV6
    with _open_device(version, tso) as device, socket.socket(family, socket.SOCK_STREAM) as listener:
        if tso:  # before the connection: TCP takes the cap when it starts; ip(8) reads it back
            device.set_gso_max_segs(GSO_MAX_SEGS)
            shown = _ip("-d", "link", "show", TUN_NAME)
            assert f"gso_max_segs {GSO_MAX_SEGS} " in shown, shown
        listener.bind((LOCAL_V4 if version == 4 else LOCAL_V6, 0))
        listener.listen(1)
        listener.settimeout(IO_TIMEOUT)
        # IPv6 also exercises TCP options in GRO: the timestamps option is the same in every glued segment.
        remote = _RemoteTcp(device, version, listener.getsockname()[1], timestamps=version == 6)
        remote.handshake()
        conn, _ = listener.accept()
        with conn:
            # Write side, default mode: a complete checksum derived from the segments' own.
            data = os.urandom(SEGMENTS * SEGMENT_SIZE)
            segments = remote.data_segments(data, SEGMENT_SIZE)
            records = handle_gro(segments)
            assert len(records) == 1, f"{SEGMENTS} contiguous segments must glue into one record, got {len(records)}"
            hdr = VirtioNetHdr.unpack(records[0])
            assert (hdr.gso_type, hdr.gso_size, hdr.flags) == (gso_type, SEGMENT_SIZE, 0), hdr
            device.write_packets(segments)
            assert _receive_exactly(conn, len(data)) == data

            # Write side, NEEDS_CSUM mode (CHECKSUM_PARTIAL with the pseudo-header seed), written by hand.
            data = os.urandom(SEGMENTS * SEGMENT_SIZE)
            records = handle_gro(remote.data_segments(data, SEGMENT_SIZE), needs_csum=True)
            assert len(records) == 1 and VirtioNetHdr.unpack(records[0]).flags == 1
            os.write(device.fileno(), records[0])
            assert _receive_exactly(conn, len(data)) == data

            # One corrupted segment: the glued super-packet's checksum is wrong and the kernel drops all of it.
            data = os.urandom(SEGMENTS * SEGMENT_SIZE)
            start_seq = remote.seq
            segments = remote.data_segments(data, SEGMENT_SIZE)
            corrupt = bytearray(segments[7])
            corrupt[-1] ^= 0x5A
            errors_before = _tcp_checksum_errors()
            device.write_packets([*segments[:7], bytes(corrupt), *segments[8:]])
            assert select.select([conn], [], [], 0.5)[0] == [], "a super-packet with a bad segment was delivered"
            assert _tcp_checksum_errors() == errors_before + 1
            # The retransmission (the same segments, intact) is delivered once and in order; it goes from one
            # buffer (``write_run``: what the receive path hands over after a UDP GRO read).
            remote.seq = start_seq
            segments = remote.data_segments(data, SEGMENT_SIZE)
            stride = -(-len(segments[0]) // 16) * 16
            buffer = bytearray(stride * len(segments))
            for i, segment in enumerate(segments):
                buffer[i * stride : i * stride + len(segment)] = segment
            device.write_run(buffer, len(segments), stride, len(segments[0]), len(segments[-1]))
            assert _receive_exactly(conn, len(data)) == data

            _read_side(remote, conn, gso_type if tso else None)


def _read_side(remote: _RemoteTcp, conn: socket.socket, gso_type: int | None) -> None:
    """``gso_type`` is what super-packets must be, or ``None`` when TSO is off and there must be none at all."""
    # The accepted socket sends 40 KB; the test reads it from the TUN, checks the super-packets and ACKs.
    sent = os.urandom(READ_BACK_SIZE)
    sender = threading.Thread(target=conn.sendall, args=(sent,), daemon=True)
    sender.start()
    mss = TUN_MTU - (40 if remote.version == 4 else 60) - (12 if remote.timestamps else 0)
    received = bytearray()
    expected_seq = remote.ack
    super_packets = 0
    deadline = time.monotonic() + IO_TIMEOUT
    for hdr, packets in remote.read_records():
        for packet in packets:
            _assert_valid_checksums(packet)
            assert len(packet) <= TUN_MTU
            ip_len = _ip_header_length(packet)
            tcp_len = (packet[ip_len + 12] >> 4) * 4
            payload = packet[ip_len + tcp_len :]
            if not payload:
                continue  # a pure ACK
            assert len(payload) <= mss, f"a {len(payload)}-byte segment is larger than the MSS {mss}"
            seq = struct.unpack_from("!I", packet, ip_len + 4)[0]
            assert seq == expected_seq, f"segment at seq {seq}, expected {expected_seq}"
            received += payload
            expected_seq = (expected_seq + len(payload)) & 0xFFFFFFFF
            remote._note_timestamp(packet)
        if hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE:
            assert gso_type is not None, f"a super-packet ({hdr}) although TSO is off"
            assert hdr.gso_type == gso_type, hdr
            assert len(packets) > 1, f"a super-packet ({hdr}) gave one segment"
            assert len(packets) <= GSO_MAX_SEGS, f"{len(packets)} segments in one read, over gso_max_segs"
            flags = [p[_ip_header_length(p) + 13] for p in packets]
            assert all(not f & (TCP_PSH | TCP_FIN) for f in flags[:-1]), "PSH/FIN before the last segment"
            super_packets += 1
        remote.ack = expected_seq
        remote.device.write_packets([remote.segment(TCP_ACK)])
        if len(received) >= len(sent) or time.monotonic() > deadline:
            break
    sender.join(IO_TIMEOUT)
    assert bytes(received) == sent, f"read back {len(received)} of {len(sent)} bytes, or different ones"
    if gso_type is None:
        assert super_packets == remote.partial_checksums == 0, "TSO off: the kernel must send complete packets"
        return
    assert super_packets >= 1, "the kernel sent no TSO super-packet into the offload TUN device"
    if vars(tun.offload)["_np"] is not None:
        assert remote.runs >= super_packets, "handle_virtio_read_run did not cut the super-packets into runs"
    # With TUN_F_CSUM the kernel leaves the checksum of plain packets (SYN-ACK, pure ACKs) to us too; every packet
    # above was checked, so gso_none_checksum is verified against the kernel's pseudo-header seed.
    assert remote.partial_checksums >= 1, "no NEEDS_CSUM record without GSO was seen"
    how = "numpy row sums" if vars(tun.offload)["_np"] is not None else "int.from_bytes sums"
    print(f"IPv{remote.version}: {super_packets} super-packets among the records of {len(sent)} bytes, cut by {how}")


@_scenario
def _scenario_tcp_v4() -> None:
    # The segments' payload sums come from numpy here (when it is installed), so the kernel checks that path; the
    # IPv6 scenario hides numpy and checks the int.from_bytes sums (the unit tests show the two give the same bytes).
    _tcp_scenario(4)


@_scenario
def _scenario_tcp_v4_without_tso() -> None:
    _tcp_scenario(4, tso=False)


@_scenario
def _scenario_tcp_v6() -> None:
    if Path("/proc/sys/net/ipv6/conf/all/disable_ipv6").read_text().strip() == "1":
        print("IPv6 is disabled in this namespace: nothing to test")
        return
    vars(tun.offload)["_np"] = None  # this scenario runs in its own process
    _tcp_scenario(6)


@_scenario
def _scenario_plain_batch_calls() -> None:
    """Without offload, read_packets() is one plain read and write_packets() one plain write per packet."""
    with LinuxTun(TUN_NAME, mtu=TUN_MTU) as device, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        assert not device.offload
        device.up()
        _ip("addr", "add", f"{LOCAL_V4}/24", "dev", TUN_NAME)
        sock.bind((LOCAL_V4, 0))
        sock.settimeout(IO_TIMEOUT)
        remote = _RemoteTcp(device, 4, 9, timestamps=False)
        # Three TCP segments to a port nobody listens on: the kernel answers each with a RST, which we read back.
        segments = remote.data_segments(b"x" * 300, 100)
        device.write_packets(segments)
        resets = 0
        while resets < len(segments) and select.select([device.fileno()], [], [], IO_TIMEOUT)[0]:
            packets = device.read_packets()
            assert len(packets) == 1, "without offload one read is one packet"
            packet = packets[0]
            if remote.is_from_local(packet):
                _assert_valid_checksums(packet)  # the kernel computed it: no NEEDS_CSUM without a vnet header
                assert packet[20 + 13] & TCP_RST
                resets += 1
        assert resets == len(segments), f"{resets} RSTs for {len(segments)} segments written"
        with pytest.raises(OSError) as excinfo:
            device.write_packets([b"\x00" * 28, segments[0]])  # not IP: EINVAL, raised once the rest is written
        assert excinfo.value.errno == errno.EINVAL


@_scenario
def _scenario_flags_and_queues() -> None:
    with LinuxTun(TUN_NAME, offload=True) as device:
        assert device.offload
        assert "vnet_hdr on" in _ip("-d", "link", "show", "dev", TUN_NAME)
        try:
            device.read()
        except ValueError as exc:
            assert "read_packets" in str(exc)
        else:
            raise AssertionError("read() must refuse in offload mode")
        # Adopting the descriptor keeps offload mode, since its records carry a virtio_net_hdr.
        adopted = LinuxTun.from_fd(os.dup(device.fileno()))
        assert adopted.offload
        adopted.close()
        # A plain write goes out behind a zero header; the link is down, so the kernel says EIO.
        try:
            device.write(bytes(20))
        except OSError as exc:
            assert exc.errno in (errno.EIO, errno.EINVAL), exc
    with LinuxTun(TUN_NAME, mtu=TUN_MTU, offload=True, tso=False) as no_tso:
        assert no_tso.offload and not no_tso.tso
        assert "vnet_hdr on" in _ip("-d", "link", "show", "dev", TUN_NAME)
        no_tso.up()
        _ip("addr", "add", f"{LOCAL_V4}/24", "dev", TUN_NAME)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x" * 3000, (REMOTE_V4, 9))  # fragmented by the kernel: two whole packets
        fragments: list[bytes] = []
        while len(fragments) < 2 and select.select([no_tso.fileno()], [], [], IO_TIMEOUT)[0]:
            packet = no_tso.read()  # without TSO one read is one packet, so read() works
            if packet[0] == 0x45 and packet[16:20] == socket.inet_aton(REMOTE_V4):
                assert _checksum(packet[:20]) == 0, "IPv4 header checksum"
                fragments.append(packet)
        assert len(fragments) == 2, f"read {len(fragments)} of the 2 fragments of a 3000-byte datagram"
        adopted = LinuxTun.from_fd(os.dup(no_tso.fileno()), tso=False)
        assert adopted.offload and not adopted.tso
        adopted.close()
    with LinuxTun(TUN_NAME) as plain:
        assert not plain.offload
        assert "vnet_hdr off" in _ip("-d", "link", "show", "dev", TUN_NAME)
        assert not LinuxTun.from_fd(os.dup(plain.fileno())).offload
    queues = LinuxTun.open_queues(TUN_NAME, 2, offload=True)
    try:
        assert all(q.offload for q in queues)
        third = queues[0].open_queue()
        assert third.offload
        third.close()
        assert "vnet_hdr on" in _ip("-d", "link", "show", "dev", TUN_NAME), "a new queue must keep the vnet header"
    finally:
        for queue in queues:
            queue.close()
    assert VIRTIO_NET_HDR_SIZE == 10


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in _SCENARIOS:
        print(f"usage: {Path(__file__).name} {{{','.join(sorted(_SCENARIOS))}}}", file=sys.stderr)
        return 2
    _SCENARIOS[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
