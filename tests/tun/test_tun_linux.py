"""LinuxTun against the real kernel, each test inside a network namespace of its own.

Needs root and /dev/net/tun. Without them the namespace tests are skipped with the reason, except in CI (``CI=true``),
where a missing capability fails the test instead, so that CI cannot pass by skipping them.

How it works: the ``netns`` fixture creates a namespace with a name unique to this run (``wgpyt-<pid>-<random>``) and
deletes it afterwards, even when the test fails. The test then runs one *scenario* in a child process inside that
namespace: ``ip netns exec NS python <this file> <scenario>``. A scenario is a plain function below, registered with
``@_scenario``; it creates its TUN device, configures it with ip(8) and checks the kernel's side of the traffic with
ordinary sockets, all inside the namespace. Nothing here creates, changes or deletes an interface outside the
namespaces it made (the in-process tests at the top only exercise checks that fail before any system call, or
point LinuxTun at a device path that is not a TUN clone device).

The IPv4 and UDP packets written into the TUN device are built by hand with their checksums; the kernel checks
both, and the write test shows it by also writing a copy with a broken UDP checksum that must not arrive.
"""

from __future__ import annotations

import errno
import os
import platform
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from support.netns_harness import fresh_netns, run_in_netns, run_scenario, unavailable

import tun
from tun import TunDevice, TunError, linux, open_tun
from tun.linux import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TUN, LinuxTun, validate_name

REPO_ROOT = Path(__file__).resolve().parents[2]
TUN_NAME = "wgpyt0"  # the namespace is ours, so a fixed name inside it cannot clash
LOCAL_ADDRESS = "10.77.0.1"  # private test subnet 10.77.0.0/24, only ever configured inside our namespaces
REMOTE_ADDRESS = "10.77.0.2"
NOT_A_TUN_DEVICE = "/dev/null"
SCENARIO_TIMEOUT = 60.0
IPPROTO_UDP = 17


# -- environment ---------------------------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace, deleted after the test whatever its outcome."""
    yield from fresh_netns("wgpyt")


def _run_scenario(namespace: str, scenario: str) -> None:
    run_scenario(namespace, __file__, scenario, SCENARIO_TIMEOUT)


# -- in-process tests: no privilege needed, no interface touched -----------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 16,
        "wgpy-too-long-name",
        "\u00e9" * 8,  # 8 characters but 16 bytes in UTF-8
        "wg/0",
        "wg:0",
        "wg 0",
        "wg\t0",
        "wg\n0",
        "wg\x000",
        "wg\u20030",  # EM SPACE
        ".",
        "..",
    ],
)
def test_bad_name_raises_value_error_before_any_syscall(name: str) -> None:
    # If validation let the name through, the missing device path would give TunError(ENOENT), not ValueError,
    # and still nothing would be created.
    with pytest.raises(ValueError, match="interface name"):
        validate_name(name)
    with pytest.raises(ValueError, match="interface name"):
        LinuxTun(name, device_path="/nonexistent/wgpy-test/tun")
    with pytest.raises(ValueError, match="interface name"):
        LinuxTun.open_queues(name, 2, device_path="/nonexistent/wgpy-test/tun")


@pytest.mark.parametrize("name", ["wg0", "a" * 15, "wg%d", "wgpy-test_1.x", "\u00e9" * 7])
def test_good_names_are_accepted(name: str) -> None:
    assert validate_name(name) == os.fsencode(name)


@pytest.mark.parametrize("mtu", [0, 67, 65536])
def test_bad_mtu_raises_value_error_before_any_syscall(mtu: int) -> None:
    with pytest.raises(ValueError, match="MTU"):
        LinuxTun(TUN_NAME, mtu=mtu, device_path="/nonexistent/wgpy-test/tun")


@pytest.mark.parametrize("queues", [0, -1, 257])
def test_bad_queue_count_raises_value_error(queues: int) -> None:
    with pytest.raises(ValueError, match="queues"):
        LinuxTun.open_queues(TUN_NAME, queues, device_path="/nonexistent/wgpy-test/tun")


def test_missing_device_node_gives_tun_error(tmp_path: Path) -> None:
    missing = tmp_path / "net" / "tun"
    with pytest.raises(TunError) as excinfo:
        LinuxTun(TUN_NAME, device_path=str(missing))
    assert excinfo.value.errno == errno.ENOENT
    assert str(missing) in str(excinfo.value)
    assert "missing" in str(excinfo.value)


def test_device_that_is_not_a_tun_clone_gives_tun_error() -> None:
    # TUNSETIFF on /dev/null fails with ENOTTY; no interface can be created this way.
    with pytest.raises(TunError) as excinfo:
        LinuxTun(TUN_NAME, device_path=NOT_A_TUN_DEVICE)
    assert excinfo.value.errno == errno.ENOTTY
    assert TUN_NAME in str(excinfo.value)


def test_from_fd_refuses_a_descriptor_that_is_not_a_tun() -> None:
    read_fd, write_fd = os.pipe()
    try:
        with pytest.raises(TunError, match="not an attached TUN device"):
            LinuxTun.from_fd(read_fd)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_open_tun_off_linux_raises_tun_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(TunError) as excinfo:
        open_tun(TUN_NAME)
    assert excinfo.value.errno == errno.ENOTSUP
    assert "only supported on Linux" in str(excinfo.value)


def test_tun_error_is_an_oserror_with_a_plain_message() -> None:
    error = TunError(errno.EPERM, "creating TUN device 'wg0' needs root or CAP_NET_ADMIN")
    assert isinstance(error, OSError)
    assert error.errno == errno.EPERM
    assert str(error) == "creating TUN device 'wg0' needs root or CAP_NET_ADMIN"


def test_flag_constants_match_pytun() -> None:
    # python-pytun compiles these in from <linux/if_tun.h>, so it is an independent oracle for our copies.
    pytun = pytest.importorskip("pytun")
    assert (IFF_TUN, IFF_NO_PI, IFF_MULTI_QUEUE) == (pytun.IFF_TUN, pytun.IFF_NO_PI, pytun.IFF_MULTI_QUEUE)


def test_ioctl_numbers_match_the_kernel_headers() -> None:
    if platform.machine() not in ("x86_64", "aarch64", "i686", "armv7l", "riscv64", "s390x"):
        pytest.skip(f"values below are for the asm-generic ioctl encoding, not {platform.machine()}")
    # <linux/if_tun.h> as compiled on x86_64: TUNSETIFF 0x400454ca, TUNGETIFF 0x800454d2, TUNSETQUEUE 0x400454d9.
    assert (linux._TUNSETIFF, linux._TUNGETIFF, linux._TUNSETQUEUE) == (0x400454CA, 0x800454D2, 0x400454D9)


# -- tests inside a namespace ----------------------------------------------------------------------------------


def test_create_set_mtu_and_close_removes_interface(netns: str) -> None:
    _run_scenario(netns, "create_set_mtu_close")


def test_open_tun_factory_gives_a_tun_device(netns: str) -> None:
    _run_scenario(netns, "open_tun_factory")


def test_read_ipv4_packet_sent_by_the_kernel(netns: str) -> None:
    _run_scenario(netns, "read_from_kernel")


def test_written_udp_packet_is_accepted_by_the_kernel(netns: str) -> None:
    _run_scenario(netns, "write_to_kernel")


def test_non_blocking_read_raises_blocking_io_error(netns: str) -> None:
    _run_scenario(netns, "non_blocking")


def test_multi_queue_with_two_queues(netns: str) -> None:
    _run_scenario(netns, "multi_queue")


def test_from_fd_adopts_an_open_queue(netns: str) -> None:
    _run_scenario(netns, "from_fd")


def test_kernel_refusals_give_tun_error(netns: str) -> None:
    _run_scenario(netns, "kernel_refusals")


# Runs as the unprivileged caller; prints "<errno> <message>" and exits 0 when LinuxTun raised TunError.
_UNPRIVILEGED_PROBE = """
import sys
from tun import TunError
from tun.linux import LinuxTun
try:
    device = LinuxTun(sys.argv[1])
except TunError as exc:
    print(exc.errno, exc)
    sys.exit(0)
device.close()
print("created a TUN device without privilege")
sys.exit(1)
"""

_DROP_PRIVILEGE = {
    "as-nobody": ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"],
    # Still uid 0, but CAP_NET_ADMIN is gone from the bounding set, so the exec'd Python does not have it.
    "root-without-cap-net-admin": ["setpriv", "--bounding-set=-net_admin"],
}


@pytest.mark.parametrize("how", sorted(_DROP_PRIVILEGE))
def test_without_cap_net_admin_gives_tun_error(netns: str, how: str) -> None:
    if shutil.which("setpriv") is None:
        unavailable("setpriv(1) from util-linux is not installed")
    prefix = _DROP_PRIVILEGE[how]
    if how == "as-nobody":
        probe = run_in_netns(netns, [*prefix, sys.executable, "-c", "import tun.linux"])
        if probe.returncode != 0:
            pytest.skip(
                f"user nobody cannot run {sys.executable} or import tun from {REPO_ROOT}: "
                f"{probe.stderr.strip().splitlines()[-1:]}; the root-without-cap-net-admin case covers this"
            )
    result = run_in_netns(netns, [*prefix, sys.executable, "-c", _UNPRIVILEGED_PROBE, TUN_NAME])
    assert result.returncode == 0, f"stdout: {result.stdout}\nstderr: {result.stderr}"
    code, _, message = result.stdout.strip().partition(" ")
    # Without CAP_NET_ADMIN the kernel answers EPERM (TUNSETIFF); where /dev/net/tun is mode 0600, user nobody
    # cannot even open it and gets EACCES. Both must read as the same one-line cause.
    assert int(code) in (errno.EPERM, errno.EACCES)
    assert f"creating TUN device {TUN_NAME!r} needs root or CAP_NET_ADMIN" in message
    assert "Traceback" not in result.stderr


# -- scenarios (run inside the namespace by the child process) -------------------------------------------------

_SCENARIOS: dict[str, Callable[[], None]] = {}


def _scenario(function: Callable[[], None]) -> Callable[[], None]:
    _SCENARIOS[function.__name__.removeprefix("_scenario_")] = function
    return function


def _ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ip {' '.join(args)} failed: {result.stderr.strip()}"
    return result.stdout


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True, check=False).returncode == 0


def _link_mtu(name: str) -> int:
    words = _ip("link", "show", "dev", name).split()
    return int(words[words.index("mtu") + 1])


def _configure(device: LinuxTun) -> None:
    """Bring ``device`` up with LOCAL_ADDRESS/24, the way wg-quick would after creating it."""
    device.up()
    assert "UP" in _ip("link", "show", "dev", device.name).split(">")[0]
    _ip("addr", "add", f"{LOCAL_ADDRESS}/24", "dev", device.name)


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4_udp(src: str, dst: str, src_port: int, dst_port: int, payload: bytes) -> bytes:
    """An IPv4 + UDP packet with correct header and UDP checksums (RFC 791, RFC 768)."""
    udp_length = 8 + len(payload)
    pseudo_header = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", IPPROTO_UDP, udp_length)
    udp_checksum = _checksum(pseudo_header + struct.pack("!HHHH", src_port, dst_port, udp_length, 0) + payload)
    udp = struct.pack("!HHHH", src_port, dst_port, udp_length, udp_checksum or 0xFFFF) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,  # version 4, IHL 5
        0,
        20 + udp_length,
        0x1234,  # identification
        0x4000,  # don't fragment
        64,  # TTL
        IPPROTO_UDP,
        0,
        socket.inet_aton(src),
        socket.inet_aton(dst),
    )
    return header[:10] + struct.pack("!H", _checksum(header)) + header[12:] + udp


def _read_until(
    queues: Sequence[TunDevice], wanted: Callable[[bytes], bool], timeout: float = 5.0
) -> tuple[int, bytes]:
    """Read from any of ``queues`` until a packet satisfies ``wanted``; return (queue index, packet)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([q.fileno() for q in queues], [], [], remaining)
        for index, queue in enumerate(queues):
            if queue.fileno() in ready:
                packet = queue.read()
                if wanted(packet):
                    return index, packet
                seen.append(packet[:1].hex())
    raise AssertionError(f"no matching packet within {timeout} s; first bytes of the others: {seen}")


def _is_udp_to(dst: str, port: int) -> Callable[[bytes], bool]:
    def wanted(packet: bytes) -> bool:
        return (
            len(packet) >= 28
            and packet[0] >> 4 == 4
            and packet[9] == IPPROTO_UDP
            and packet[16:20] == socket.inet_aton(dst)
            and struct.unpack_from("!H", packet, 22)[0] == port
        )

    return wanted


@_scenario
def _scenario_create_set_mtu_close() -> None:
    device = LinuxTun(TUN_NAME, mtu=1400)
    assert device.name == TUN_NAME
    assert _link_mtu(TUN_NAME) == 1400
    assert device.mtu == 1400
    assert "tun type tun pi off" in _ip("-d", "link", "show", "dev", TUN_NAME)
    device.set_mtu(1380)
    assert (_link_mtu(TUN_NAME), device.mtu) == (1380, 1380)
    assert not device.closed
    device.close()
    assert device.closed
    assert not _link_exists(TUN_NAME), "a non-persistent TUN interface must vanish when its descriptor is closed"
    device.close()  # idempotent
    try:
        device.read()
    except ValueError:
        pass
    else:
        raise AssertionError("read() on a closed device must raise ValueError")


@_scenario
def _scenario_open_tun_factory() -> None:
    device = open_tun(TUN_NAME, mtu=1400)
    try:
        assert isinstance(device, LinuxTun)
        assert isinstance(device, TunDevice)
        assert device.name == TUN_NAME
        assert device.mtu == _link_mtu(TUN_NAME) == 1400
        assert "state DOWN" in _ip("link", "show", "dev", TUN_NAME), "open_tun must leave the link down"
        assert tun.DEFAULT_MTU == 1420
    finally:
        device.close()
    default_device = open_tun(TUN_NAME)
    try:
        assert default_device.mtu == 1420
    finally:
        default_device.close()


@_scenario
def _scenario_read_from_kernel() -> None:
    with LinuxTun(TUN_NAME, mtu=1400) as device:
        _configure(device)
        payload = b"wgpy tun read test"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(payload, (REMOTE_ADDRESS, 5555))
            src_port = sock.getsockname()[1]
        _, packet = _read_until([device], _is_udp_to(REMOTE_ADDRESS, 5555))
        # One read is one whole IPv4 packet with no packet-information header in front.
        assert packet[0] >> 4 == 4
        header_length = (packet[0] & 0x0F) * 4
        assert struct.unpack_from("!H", packet, 2)[0] == len(packet) == header_length + 8 + len(payload)
        assert len(packet) <= 1400
        assert _checksum(packet[:header_length]) == 0, "the kernel's IPv4 header checksum must verify"
        assert packet[12:16] == socket.inet_aton(LOCAL_ADDRESS)
        assert packet[16:20] == socket.inet_aton(REMOTE_ADDRESS)
        assert struct.unpack_from("!HH", packet, header_length) == (src_port, 5555)
        assert packet[header_length + 8 :] == payload


@_scenario
def _scenario_write_to_kernel() -> None:
    with LinuxTun(TUN_NAME, mtu=1400) as device:
        good = _ipv4_udp(REMOTE_ADDRESS, LOCAL_ADDRESS, 4242, 1, b"")
        try:
            device.write(good)
        except OSError as exc:
            assert exc.errno == errno.EIO, f"writing to a down link: expected EIO, got {exc!r}"
        else:
            raise AssertionError("writing to a TUN device whose link is down must fail with EIO")
        _configure(device)
        try:
            device.write(b"\x00" * 28)
        except OSError as exc:
            assert exc.errno == errno.EINVAL, f"writing a non-IP packet: expected EINVAL, got {exc!r}"
        else:
            raise AssertionError("the kernel must refuse a packet that is neither IPv4 nor IPv6")

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((LOCAL_ADDRESS, 0))
            sock.settimeout(5)
            port = sock.getsockname()[1]
            corrupt = bytearray(_ipv4_udp(REMOTE_ADDRESS, LOCAL_ADDRESS, 4242, port, b"corrupt checksum"))
            corrupt[26] ^= 0xFF  # flip the UDP checksum: the kernel must drop this one
            payload = b"wgpy tun write test"
            packet = _ipv4_udp(REMOTE_ADDRESS, LOCAL_ADDRESS, 4242, port, payload)
            assert device.write(bytes(corrupt)) == len(corrupt)
            assert device.write(packet) == len(packet)
            data, sender = sock.recvfrom(2048)
            assert (data, sender) == (payload, (REMOTE_ADDRESS, 4242))


@_scenario
def _scenario_non_blocking() -> None:
    with LinuxTun(TUN_NAME) as device:
        assert device.blocking
        device.set_blocking(False)
        assert not device.blocking
        # The link is down, so the kernel sends nothing into it.
        assert select.select([device.fileno()], [], [], 0.2)[0] == []
        try:
            device.read()
        except BlockingIOError as exc:
            assert exc.errno == errno.EAGAIN
        else:
            raise AssertionError("a non-blocking read with nothing queued must raise BlockingIOError")
        device.set_blocking(True)
        assert device.blocking


@_scenario
def _scenario_multi_queue() -> None:
    queues = LinuxTun.open_queues(TUN_NAME, 2, mtu=1400)
    assert len(queues) == 2
    assert all(q.multi_queue and q.name == TUN_NAME for q in queues)
    assert queues[0].fileno() != queues[1].fileno()
    details = _ip("-d", "link", "show", "dev", TUN_NAME)
    assert "multi_queue" in details
    assert "numqueues 2" in details
    assert _link_mtu(TUN_NAME) == 1400

    _configure(queues[0])
    # Several flows (source ports), all to be read back from whichever queue the kernel picked for each.
    ports = [6000 + i for i in range(8)]
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"flow %d" % port, (REMOTE_ADDRESS, port))
    remaining = set(ports)
    while remaining:
        _, packet = _read_until(queues, lambda p: any(_is_udp_to(REMOTE_ADDRESS, port)(p) for port in remaining))
        port = struct.unpack_from("!H", packet, 22)[0]
        assert packet.endswith(b"flow %d" % port)
        remaining.remove(port)

    # Either queue may be written to; write into the second one.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCAL_ADDRESS, 0))
        sock.settimeout(5)
        packet = _ipv4_udp(REMOTE_ADDRESS, LOCAL_ADDRESS, 4343, sock.getsockname()[1], b"via queue 1")
        assert queues[1].write(packet) == len(packet)
        assert sock.recvfrom(2048) == (b"via queue 1", (REMOTE_ADDRESS, 4343))

    queues[1].set_queue_enabled(False)
    assert "numdisabled 1" in _ip("-d", "link", "show", "dev", TUN_NAME)
    queues[1].set_queue_enabled(True)
    assert "numdisabled 0" in _ip("-d", "link", "show", "dev", TUN_NAME)

    third = queues[0].open_queue()
    assert "numqueues 3" in _ip("-d", "link", "show", "dev", TUN_NAME)
    third.close()
    queues[0].close()
    assert _link_exists(TUN_NAME), "the interface must stay while one queue is open"
    queues[1].close()
    assert not _link_exists(TUN_NAME)

    with LinuxTun(TUN_NAME) as single:
        try:
            single.open_queue()
        except ValueError:
            pass
        else:
            raise AssertionError("open_queue() on a single-queue device must raise ValueError")


@_scenario
def _scenario_from_fd() -> None:
    with LinuxTun(TUN_NAME, mtu=1400) as device:
        fd = os.dup(device.fileno())
        os.set_inheritable(fd, True)
        adopted = LinuxTun.from_fd(fd)
        assert adopted.fileno() == fd
        assert not os.get_inheritable(fd)
        assert adopted.name == TUN_NAME
        assert adopted.mtu == 1400
        assert not adopted.multi_queue
        adopted.close()
        assert _link_exists(TUN_NAME)
    assert not _link_exists(TUN_NAME)

    unattached = os.open("/dev/net/tun", os.O_RDWR)
    try:
        LinuxTun.from_fd(unattached)
    except TunError as exc:
        assert "not an attached TUN device" in str(exc)
    else:
        raise AssertionError("from_fd() on an unattached /dev/net/tun descriptor must raise TunError")
    finally:
        os.close(unattached)


@_scenario
def _scenario_kernel_refusals() -> None:
    with LinuxTun(TUN_NAME):
        try:
            LinuxTun(TUN_NAME)
        except TunError as exc:
            assert exc.errno == errno.EBUSY, exc
            assert "already open" in str(exc)
        else:
            raise AssertionError("a second open of a single-queue TUN device must fail with EBUSY")
        try:
            LinuxTun.open_queues(TUN_NAME, 2)
        except TunError as exc:
            assert exc.errno == errno.EINVAL, exc
        else:
            raise AssertionError("multi-queue attach to a single-queue device must fail")
    try:
        LinuxTun("lo")
    except TunError as exc:
        assert exc.errno == errno.EINVAL, exc
        assert "'lo'" in str(exc)
    else:
        raise AssertionError("TUNSETIFF on the loopback interface's name must fail")
    # A "%d" template is numbered by the kernel.
    with LinuxTun("wgpyt%d") as first, LinuxTun("wgpyt%d") as second:
        assert {first.name, second.name} == {"wgpyt0", "wgpyt1"}
        assert _link_exists(first.name) and _link_exists(second.name)


def _main(argv: Sequence[str]) -> int:
    if len(argv) != 1 or argv[0] not in _SCENARIOS:
        print(f"usage: {Path(__file__).name} {{{','.join(sorted(_SCENARIOS))}}}", file=sys.stderr)
        return 2
    _SCENARIOS[argv[0]]()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
