"""``wgpy probe`` without root: against an in-process wgpy endpoint over UDP on 127.0.0.1, plus its pure helpers.

The endpoint is a ``Device`` driven by a socket-only ``Tunnel`` in a background thread (its own asyncio loop); its
``on_packet`` plays the target host and answers ICMP echo requests itself. The probe runs in the test's thread with
its blocking socket. A broken endpoint is the same with one fault patched in (on the endpoint's device object where
possible, globally where the fault lives in a class both sides use, which does not change what the probe sees).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Generator
from pathlib import Path

import pytest

from wgpy import noise
from wgpy.cli.probe import main
from wgpy.cookie import CookieChecker
from wgpy.device import Device
from wgpy.drivers.asyncio_udp import Tunnel
from wgpy.events import Endpoint as Address
from wgpy.keypair import Keypair
from wgpy.keys import PresharedKey, PrivateKey, PublicKey
from wgpy.messages import Initiation, unpack
from wgpy.noise import StaticIdentity
from wgpy.replay import ReplayWindow
from wgpy.tools import conformance

REPO_ROOT = Path(__file__).resolve().parents[2]
PROBE_ADDRESS, TARGET = "10.200.0.1", "10.200.0.2"
PROBE_ADDRESS6, TARGET6 = "fd00:200::1", "fd00:200::2"
TIMEOUT = "0.3"  # loopback answers in well under a millisecond
UDP = 17  # IANA protocol number


class Endpoint:
    """A wgpy endpoint in a background thread that answers pings to its inner addresses."""

    def __init__(
        self,
        probe_public_key: PublicKey,
        preshared_key: PresharedKey | None = None,
        *,
        device_class: type[Device] = Device,
        answer_icmp: bool = True,
        udp_echo_port: int | None = None,
    ) -> None:
        self.private_key = PrivateKey.generate()
        self.device = device_class(self.private_key)
        self.answer_icmp = answer_icmp
        self.udp_echo_port = udp_echo_port
        self.device.add_peer(
            probe_public_key, preshared_key=preshared_key, allowed_ips=[f"{PROBE_ADDRESS}/32", f"{PROBE_ADDRESS6}/128"]
        )
        self.pings = 0
        self.loop = asyncio.new_event_loop()
        self.tunnel = Tunnel(self.device, on_packet=self._on_packet, bind_address="127.0.0.1")
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probe-endpoint", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the endpoint did not start")

    @property
    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    @property
    def port(self) -> int:
        return self.tunnel.local_port

    def _on_packet(self, packet: bytes) -> None:
        inner = conformance.parse_ip(packet)
        if self.udp_echo_port is not None and inner is not None and inner.protocol == UDP and len(inner.body) > 8:
            source_port, destination_port = struct.unpack_from("!HH", inner.body)
            if destination_port == self.udp_echo_port and inner.destination in (TARGET, TARGET6):
                reply = conformance.udp_datagram(
                    inner.destination, inner.source, destination_port, source_port, inner.body[8:]
                )
                self.tunnel.send_packet(reply)
            return
        if not self.answer_icmp:
            return
        echo = conformance.parse_icmp_echo(packet)
        if echo is None or echo.is_reply or echo.destination not in (TARGET, TARGET6):
            return
        self.pings += 1
        reply = conformance.icmp_echo(
            echo.destination, echo.source, echo.identifier, echo.sequence, echo.payload, reply=True
        )
        self.tunnel.send_packet(reply)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            await self.tunnel.start()
            self._ready.set()
            await self.tunnel.wait_closed()

        self.loop.run_until_complete(serve())
        self.loop.close()

    def close(self) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.tunnel.close)
            self._thread.join(10)


@pytest.fixture
def probe_key(tmp_path: Path) -> tuple[PrivateKey, Path]:
    key = PrivateKey.generate()
    path = tmp_path / "probe.key"
    path.write_text(key.to_base64() + "\n")
    return key, path


@pytest.fixture
def endpoint(probe_key: tuple[PrivateKey, Path]) -> Generator[Endpoint, None, None]:
    the_endpoint = Endpoint(probe_key[0].public_key())
    try:
        yield the_endpoint
    finally:
        the_endpoint.close()


def probe_argv(endpoint: Endpoint, key_file: Path, *extra: str, v6: bool = False) -> list[str]:
    return [
        "--endpoint",
        f"127.0.0.1:{endpoint.port}",
        "--peer-public-key",
        endpoint.public_key.to_base64(),
        "--private-key-file",
        str(key_file),
        "--tunnel-address",
        PROBE_ADDRESS6 if v6 else PROBE_ADDRESS,
        "--target",
        TARGET6 if v6 else TARGET,
        "--timeout",
        TIMEOUT,
        *extra,
    ]


def run_probe(argv: list[str]) -> tuple[int, list[str]]:
    out = io.StringIO()
    status = main(argv, out=out)
    return status, out.getvalue().splitlines()


def statuses(report_path: Path) -> dict[str, str]:
    report = json.loads(report_path.read_text())
    return {check["name"]: check["status"] for check in report["checks"]}


# -- against a healthy endpoint ----------------------------------------------------------------------------------


def test_every_fast_check_passes_against_healthy_wgpy(
    endpoint: Endpoint, probe_key: tuple[PrivateKey, Path], tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    status, lines = run_probe(probe_argv(endpoint, probe_key[1], "--skip-slow", "--json", str(report_path)))
    assert status == 0, "\n".join(lines)
    assert lines[0].startswith(f"wgpy probe: 127.0.0.1:{endpoint.port} (peer {endpoint.public_key.short()})")
    assert lines[-1].startswith("10 passed, 0 failed, 0 inconclusive, 2 skipped in ")
    body = lines[1:-1]
    assert [line.split()[1] for line in body] == list(conformance.CHECK_NAMES)
    for line, info in zip(body, conformance.CHECKS, strict=True):
        verdict = "SKIP" if info.slow else "PASS"
        assert line.startswith(f"{verdict:<12}  {info.name:<20}"), line
        assert len(line) > 34 + 20, line  # the evidence follows
    report = json.loads(report_path.read_text())
    assert report["ok"] is True
    assert report["summary"] == {"pass": 10, "fail": 0, "skip": 2, "inconclusive": 0}
    assert report["peer_public_key"] == endpoint.public_key.to_base64()
    assert report["our_public_key"] == probe_key[0].public_key().to_base64()
    handshake = report["checks"][0]
    assert handshake["name"] == "handshake" and handshake["status"] == "pass"
    assert set(handshake["details"]) >= {"response_ms", "echo_ms"}
    cookie = next(c for c in report["checks"] if c["name"] == "cookie-under-load")
    assert cookie["details"]["cookie_replies"] > 0
    assert endpoint.device.stats.cookie_replies_sent >= cookie["details"]["cookie_replies"]


def test_preshared_key_and_ipv6_inner_addresses(probe_key: tuple[PrivateKey, Path], tmp_path: Path) -> None:
    psk = PresharedKey.generate()
    psk_file = tmp_path / "psk"
    psk_file.write_text(psk.to_base64())
    the_endpoint = Endpoint(probe_key[0].public_key(), preshared_key=psk)
    try:
        argv = probe_argv(the_endpoint, probe_key[1], "--preshared-key-file", str(psk_file), v6=True)
        status, lines = run_probe([*argv, "--only", "replayed-transport,bit-flip"])
    finally:
        the_endpoint.close()
    assert status == 0, "\n".join(lines)
    assert [line.split()[:2] for line in lines[1:-1]] == [
        ["PASS", "handshake"],
        ["PASS", "replayed-transport"],
        ["PASS", "bit-flip"],
    ]
    assert f"echo reply from {TARGET6}" in lines[1]


def test_wrong_preshared_key_fails_the_handshake_and_skips_the_rest(
    endpoint: Endpoint, probe_key: tuple[PrivateKey, Path], tmp_path: Path
) -> None:
    psk_file = tmp_path / "psk"
    psk_file.write_text(PresharedKey.generate().to_base64())  # the endpoint has no preshared key for us
    argv = probe_argv(endpoint, probe_key[1], "--preshared-key-file", str(psk_file), "--only", "bit-flip,keepalive")
    status, lines = run_probe(argv)
    assert status == 1
    assert lines[1].startswith("FAIL          handshake           a response came in "), lines[1]
    assert lines[1].endswith("does not authenticate (1 rejected as HANDSHAKE_FAILED): is the preshared key right?")
    assert lines[2:4] == [
        "SKIP          bit-flip            no session with the endpoint",
        "SKIP          keepalive           no session with the endpoint",
    ]


@pytest.mark.slow
def test_slow_checks_pass_against_healthy_wgpy(endpoint: Endpoint, probe_key: tuple[PrivateKey, Path]) -> None:
    status, lines = run_probe(probe_argv(endpoint, probe_key[1], "--only", "passive-keepalive,cookie-initiator"))
    assert status == 0, "\n".join(lines)
    assert [line.split()[0] for line in lines[1:-1]] == ["PASS", "PASS", "PASS"]


# -- against broken endpoints -----------------------------------------------------------------------------------


class _AnyMac1Checker(CookieChecker):
    def check_mac1(self, message: bytes) -> bool:
        return True


def _accept_bad_mac1(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint.device.cookie_checker = _AnyMac1Checker(endpoint.public_key, os.urandom)


def _no_replay_check(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ReplayWindow, "would_accept", lambda self, counter: True)


def _no_timestamp_check(endpoint: Endpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    consume = noise.consume_initiation

    def forgetful(
        message: Initiation, local: StaticIdentity, lookup: Callable[[PublicKey], noise.Handshake | None], now: float
    ) -> noise.Handshake:
        for peer in endpoint.device.peers.values():
            peer.handshake.latest_timestamp = bytes(12)
        return consume(message, local, lookup, now)

    monkeypatch.setattr(noise, "consume_initiation", forgetful)


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        (_accept_bad_mac1, "bad-mac1"),
        (_no_replay_check, "replayed-transport"),
        (_no_timestamp_check, "replayed-initiation"),
    ],
    ids=["accept-bad-mac1", "no-replay-check", "no-timestamp-check"],
)
def test_a_broken_endpoint_fails_the_matching_check(
    endpoint: Endpoint,
    probe_key: tuple[PrivateKey, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fault: Callable[[Endpoint, pytest.MonkeyPatch], None],
    check: str,
) -> None:
    fault(endpoint, monkeypatch)
    report_path = tmp_path / "report.json"
    others = "unknown-key,bit-flip"
    status, lines = run_probe(
        probe_argv(endpoint, probe_key[1], "--only", f"{check},{others}", "--json", str(report_path))
    )
    assert status == 1, "\n".join(lines)
    assert statuses(report_path) == {"handshake": "pass", check: "fail", "unknown-key": "pass", "bit-flip": "pass"}
    failed = next(line for line in lines if line.startswith("FAIL"))
    assert failed.startswith(f"FAIL          {check:<20}") and len(failed) > 34 + 20, failed


# -- arguments ---------------------------------------------------------------------------------------------------


@pytest.fixture
def valid_argv(tmp_path: Path) -> dict[str, str]:
    key = tmp_path / "key"
    key.write_text(PrivateKey.generate().to_base64())
    return {
        "--endpoint": "127.0.0.1:9",
        "--peer-public-key": PrivateKey.generate().public_key().to_base64(),
        "--private-key-file": str(key),
        "--tunnel-address": PROBE_ADDRESS,
        "--target": TARGET,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--endpoint": None}, "the following arguments are required: --endpoint"),
        ({"--endpoint": "10.0.0.1"}, "--endpoint: expected HOST:PORT"),
        ({"--endpoint": "10.0.0.1:70000"}, "--endpoint: expected HOST:PORT"),
        ({"--peer-public-key": "not-a-key"}, "--peer-public-key: not a base64 WireGuard public key"),
        ({"--private-key-file": "/nonexistent/key"}, "--private-key-file: cannot read /nonexistent/key"),
        ({"--tunnel-address": "10.0.0.300"}, "--tunnel-address: not an IP address"),
        ({"--target": "fd00::2"}, "must both be IPv4 or both IPv6"),
        ({"--target": PROBE_ADDRESS}, "--target must differ from --tunnel-address"),
        ({"--only": "handshake,no-such-check"}, "--only: unknown check no-such-check"),
        ({"--timeout": "0"}, "--timeout must be between"),
        ({"--timeout": "soon"}, "argument --timeout: invalid float value"),
        ({"--json": "/nonexistent/dir/report.json"}, "--json: directory /nonexistent/dir does not exist"),
        ({"--burst": "0"}, "--burst must be between"),
        ({"--echo": "udp"}, "--echo: expected icmp, udp:PORT or tcp:PORT"),
        ({"--echo": "tcp:70000"}, "--echo: expected icmp, udp:PORT or tcp:PORT"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(
    valid_argv: dict[str, str], change: dict[str, str | None], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    options = {**valid_argv, **change}
    argv = [part for option, value in options.items() if value is not None for part in (option, value)]
    assert main(argv, out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wgpy probe: error: "), err
    assert message in err, err


def test_private_key_file_with_garbage(valid_argv: dict[str, str], tmp_path: Path) -> None:
    Path(valid_argv["--private-key-file"]).write_text("hello\n")
    argv = [part for item in valid_argv.items() for part in item]
    result = subprocess.run(
        [sys.executable, "-m", "wgpy", "probe", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"wgpy probe: error: --private-key-file: {valid_argv['--private-key-file']} does not hold a base64 private key"
    ]


def test_help_lists_the_checks(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert main(["--help"], out=out) == 0
    assert all(name in out.getvalue() for name in conformance.CHECK_NAMES)


# -- the pure helpers --------------------------------------------------------------------------------------------


def test_icmp_echo_checksums_and_round_trip() -> None:
    packet = conformance.icmp_echo(PROBE_ADDRESS, TARGET, 0x1234, 7, b"payload!")
    assert conformance.internet_checksum(packet[:20]) == 0  # a valid IPv4 header sums to zero
    assert conformance.internet_checksum(packet[20:]) == 0
    echo = conformance.parse_icmp_echo(packet)
    assert echo == conformance.Echo(PROBE_ADDRESS, TARGET, False, 0x1234, 7, b"payload!")
    packet6 = conformance.icmp_echo(PROBE_ADDRESS6, TARGET6, 1, 2, b"x", reply=True)
    pseudo = packet6[8:40] + len(packet6[40:]).to_bytes(4, "big") + bytes(3) + bytes([58])
    assert conformance.internet_checksum(pseudo + packet6[40:]) == 0
    assert conformance.parse_icmp_echo(packet6) == conformance.Echo(PROBE_ADDRESS6, TARGET6, True, 1, 2, b"x")
    udp = bytearray(packet)
    udp[9] = 17
    assert conformance.parse_icmp_echo(bytes(udp)) is None
    assert conformance.parse_icmp_echo(b"\x45") is None
    with pytest.raises(ValueError, match="same IP version"):
        conformance.icmp_echo(PROBE_ADDRESS, TARGET6, 1, 1, b"")


def test_crafted_initiations_and_mutations() -> None:
    responder = PrivateKey.generate()
    initiator = StaticIdentity(PrivateKey.generate())
    handshake, body = conformance.craft_initiation(initiator, responder.public_key(), None, 42, 10**18, os.urandom)
    assert handshake.local_index == 42
    message = conformance.add_macs(body, responder.public_key())
    checker = CookieChecker(responder.public_key(), os.urandom)
    assert checker.check_mac1(message)
    assert not checker.check_mac1(conformance.flip_bit(message, 8 * 116))
    reserved = conformance.add_macs(conformance.with_reserved(body), responder.public_key())
    assert checker.check_mac1(reserved) and conformance.message_type(reserved) == 0x101
    parsed = unpack(message)
    assert isinstance(parsed, Initiation)
    known = noise.Handshake(StaticIdentity(responder), initiator.public_key)
    consumed = noise.consume_initiation(parsed, StaticIdentity(responder), lambda key: known, 0.0)
    assert consumed.remote_index == 42
    junk = conformance.junk_initiations(responder.public_key(), 50, os.urandom)
    assert len({index for index, _ in junk}) == 50
    assert all(checker.check_mac1(datagram) for _, datagram in junk)
    assert conformance.flip_bit(b"\x00\x00", 9) == b"\x00\x02"
    with pytest.raises(ValueError):
        conformance.with_reserved(b"\x04\x00\x00\x00", 0)


def test_check_list_is_consistent() -> None:
    assert len(set(conformance.CHECK_NAMES)) == len(conformance.CHECKS)
    assert conformance.CHECK_NAMES[0] == "handshake"
    assert {c.name for c in conformance.CHECKS if c.slow} == {"passive-keepalive", "cookie-initiator"}
    result = conformance.CheckResult("bit-flip", conformance.Status.FAIL, "evidence here")
    assert result.line() == "FAIL          bit-flip            evidence here"
    assert result.to_json()["status"] == "fail"


# -- misbehaving endpoints of issue #17 (in-process; the live ones are in tests/interop/broken_peer.py) ------------


class _ArrivingKeypairDevice(Device):
    """Test-only: answers on the keypair the last authenticated packet arrived on (its sessions' times are equal)."""

    def receive_datagram(self, data: bytes, endpoint: Address, now: float, wall_ns: int | None = None) -> None:
        header = conformance.transport_header(bytes(data))
        entry = self.index_table.lookup(header[0]) if header is not None else None
        before = self.stats.packets_received
        super().receive_datagram(data, endpoint, now, wall_ns)
        if entry is None or self.stats.packets_received == before:
            return
        peer, keypair = entry
        keypairs = peer.keypairs
        if isinstance(keypair, Keypair) and keypair is keypairs.previous and keypairs.current is not None:
            keypairs.current, keypairs.previous = keypair, keypairs.current


class _IgnoreKeepaliveDevice(Device):
    """Test-only: drops keepalives unread, so they confirm no session."""

    def receive_datagram(self, data: bytes, endpoint: Address, now: float, wall_ns: int | None = None) -> None:
        if len(data) == 32 and conformance.transport_header(bytes(data)) is not None:
            return
        super().receive_datagram(data, endpoint, now, wall_ns)


@pytest.mark.parametrize(
    ("device_class", "verdict", "exit_status", "says"),
    [
        (Device, "pass", 0, "the echo sent on the old keypair was answered on the new one"),
        (_ArrivingKeypairDevice, "inconclusive", 0, "it answers on the keypair each request arrives on"),
        (_IgnoreKeepaliveDevice, "fail", 1, "it did not take our keepalive as confirmation"),
    ],
    ids=["healthy", "arriving-keypair", "ignore-keepalive"],
)
def test_keepalive_tells_not_confirming_from_answering_on_the_arriving_keypair(
    probe_key: tuple[PrivateKey, Path],
    tmp_path: Path,
    device_class: type[Device],
    verdict: str,
    exit_status: int,
    says: str,
) -> None:
    the_endpoint = Endpoint(probe_key[0].public_key(), device_class=device_class)
    report_path = tmp_path / "report.json"
    try:
        for _run in range(2):  # the second run must see what the first saw
            status, lines = run_probe(
                probe_argv(the_endpoint, probe_key[1], "--only", "keepalive", "--json", str(report_path))
            )
            assert status == exit_status, "\n".join(lines)
            assert statuses(report_path) == {"handshake": "pass", "keepalive": verdict}, "\n".join(lines)
            line = lines[2]
            assert line.startswith(f"{verdict.upper():<12}  keepalive") and says in line, line
            report = json.loads(report_path.read_text())
            assert report["ok"] is (exit_status == 0)
            keepalive = report["checks"][1]
            assert keepalive["details"]["sequence"][0]["sent_on"] == "old"
            assert lines[-1].startswith(
                f"{1 + (verdict == 'pass')} passed, {exit_status} failed, {int(verdict == 'inconclusive')} inconclusive"
            )
    finally:
        the_endpoint.close()


def test_udp_echo_target_for_an_endpoint_that_ignores_ping(probe_key: tuple[PrivateKey, Path], tmp_path: Path) -> None:
    the_endpoint = Endpoint(probe_key[0].public_key(), answer_icmp=False, udp_echo_port=7)
    try:
        status, lines = run_probe(probe_argv(the_endpoint, probe_key[1], "--only", "bit-flip"))
        assert status == 1, "\n".join(lines)
        assert lines[1].startswith("FAIL          handshake") and "no answer to our ICMP echo" in lines[1], lines[1]
        status, lines = run_probe(probe_argv(the_endpoint, probe_key[1], "--only", "bit-flip", "--echo", "udp:7"))
        assert status == 0, "\n".join(lines)
        assert f"target UDP echo to {TARGET} port 7" in lines[0]
        assert [line.split()[0] for line in lines[1:-1]] == ["PASS", "PASS"], "\n".join(lines)
        assert "UDP echo from" in lines[1]
    finally:
        the_endpoint.close()


@pytest.mark.parametrize(
    ("steps", "status", "says"),
    [
        ([("old", "new")], conformance.Status.PASS, "answered on the new one"),
        ([("old", None)], conformance.Status.INCONCLUSIVE, "got no answer"),
        ([("old", "old"), ("new", "new"), ("old", "new"), ("new", "new")], conformance.Status.FAIL, "did not take"),
        (
            [("old", "old"), ("new", "new"), ("old", "old"), ("new", "new")],
            conformance.Status.INCONCLUSIVE,
            "arrives on",
        ),
        ([("old", "old"), ("new", None), ("old", "old"), ("new", None)], conformance.Status.INCONCLUSIVE, "control"),
        (
            [("old", "old"), ("new", "new"), ("old", None), ("new", "new")],
            conformance.Status.INCONCLUSIVE,
            "no consistent",
        ),
        ([("old", "old")], conformance.Status.INCONCLUSIVE, "unexpected"),
    ],
)
def test_keepalive_verdict_table(steps: list[tuple[str, str | None]], status: conformance.Status, says: str) -> None:
    verdict, evidence = conformance.keepalive_verdict(steps)
    assert verdict is status and says in evidence, evidence


def test_inconclusive_is_counted_apart_and_is_not_a_failure() -> None:
    results = [
        conformance.CheckResult("handshake", conformance.Status.PASS, "ok"),
        conformance.CheckResult("keepalive", conformance.Status.INCONCLUSIVE, "cannot tell", details={"why": 1}),
    ]
    document = conformance.report(results, {}, 1.0)
    assert document["summary"] == {"pass": 1, "fail": 0, "skip": 0, "inconclusive": 1}
    assert document["ok"] is True
    assert results[1].line() == "INCONCLUSIVE  keepalive           cannot tell"
    assert results[1].to_json()["status"] == "inconclusive"
    assert (
        conformance.report([*results, conformance.CheckResult("bit-flip", conformance.Status.FAIL, "x")], {}, 1)["ok"]
        is False
    )


def test_udp_and_tcp_echo_targets() -> None:
    token = bytes(range(8))
    udp = conformance.EchoTarget(conformance.EchoKind.UDP, PROBE_ADDRESS, TARGET, 0x1234, token, 7)
    request = udp.request(42)
    inner = conformance.parse_ip(request)
    assert inner is not None and inner.protocol == UDP and inner.destination == TARGET
    pseudo = bytes([10, 200, 0, 1, 10, 200, 0, 2, 0, UDP]) + len(inner.body).to_bytes(2, "big")
    assert conformance.internet_checksum(pseudo + inner.body) == 0  # RFC 768 checksum over the pseudo-header
    source_port = struct.unpack_from("!H", inner.body)[0]
    echoed = conformance.udp_datagram(TARGET, PROBE_ADDRESS, 7, source_port, inner.body[8:])
    assert udp.answer(echoed) == 42
    assert udp.answer(conformance.udp_datagram(TARGET, PROBE_ADDRESS, 7, source_port, b"x" * 20)) is None
    assert udp.answer(request) is None  # our own request is no answer

    tcp = conformance.EchoTarget(conformance.EchoKind.TCP, PROBE_ADDRESS6, TARGET6, 0x1234, token, 22)
    syn = conformance.parse_ip(tcp.request(7))
    assert syn is not None and syn.protocol == 6
    sport, dport, isn, _ack, offset, flags = struct.unpack_from("!HHIIBB", syn.body)
    assert (dport, offset, flags) == (22, 5 << 4, conformance.TCP_SYN)
    rst = conformance.tcp_segment(
        TARGET6, PROBE_ADDRESS6, 22, sport, 0, isn + 1, conformance.TCP_RST | conformance.TCP_ACK
    )
    assert tcp.answer(rst) == 7 and tcp.abort(rst) is None  # a closed port: nothing to reset
    synack = conformance.tcp_segment(
        TARGET6, PROBE_ADDRESS6, 22, sport, 999, isn + 1, conformance.TCP_SYN | conformance.TCP_ACK
    )
    assert tcp.answer(synack) == 7
    abort = conformance.parse_ip(tcp.abort(synack) or b"")
    assert abort is not None
    assert struct.unpack_from("!HHIIBB", abort.body)[2:] == (isn + 1, 0, 5 << 4, conformance.TCP_RST)
    assert (
        tcp.answer(conformance.tcp_segment(TARGET6, PROBE_ADDRESS6, 22, sport, 0, isn + 1, conformance.TCP_ACK)) is None
    )
