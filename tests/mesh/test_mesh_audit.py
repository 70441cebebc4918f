"""The mesh audit log: one JSON object per line, the right events and fields, rate limits, and no secrets."""

from __future__ import annotations

import base64
import json
import logging
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.helpers import ENDPOINT_B, ipv4_packet, make_pair, private_key

from wgpy.keys import PresharedKey
from wgpy.mesh import AuditLog, MapRejected, MeshController, PacketFilter, parse_network_map, sign_network_map

NOW_WALL = 1_700_000_000.0
MANAGEMENT = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = 0x02) -> bytes:
    return ipv4_packet(src, dst, struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 0x50, flags, 1024, 0, 0), protocol=6)


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(r.getMessage()) for r in self.records if r.name == "wgpy.audit"]


@pytest.fixture
def capture() -> Any:
    handler = Capture()
    root = logging.getLogger("wgpy")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old_level)


def body_for(pair: Any, serial: int, *, with_b: bool = True) -> dict[str, Any]:
    peers = [
        {
            "public_key": pair.pub_a.to_base64(),
            "allowed_ips": ["10.0.0.1/32"],
            "endpoint": None,
            "groups": ["developers"],
            "relay": False,
        }
    ]
    if with_b:
        peers.append(
            {
                "public_key": pair.pub_b.to_base64(),
                "allowed_ips": ["10.0.0.2/32"],
                "endpoint": {"host": ENDPOINT_B[0], "port": ENDPOINT_B[1]},
                "groups": ["production"],
                "relay": True,
            }
        )
    return {
        "version": 1,
        "serial": serial,
        "issued_at": int(NOW_WALL) - 10,
        "expires_at": int(NOW_WALL) + 3600,
        "peers": peers,
        "acl": [
            {
                "name": "dev-ssh",
                "src_groups": ["developers"],
                "dst_groups": ["production"],
                "protocol": "tcp",
                "ports": [22],
                "action": "accept",
            }
        ],
    }


def test_each_line_is_one_json_object_with_its_fields(capture: Capture) -> None:
    audit = AuditLog()
    audit.set_clock(NOW_WALL, 10.0)
    key = private_key(1).public_key()
    audit.handshake(12.5, key, is_initiator=True)
    audit.peer_added(13.0, key, ["10.0.0.1/32"], {"b", "a"}, ("2001:db8::1", 51820))
    audit.peer_removed(14.0, key)
    audit.map_applied(15.0, serial=3, issued_at=1, expires_at=2, added=1, removed=0, changed=2)
    audit.map_rejected(16.0, reason="expired", detail="expired at 2", serial=4)
    records = [r for r in capture.records if r.name == "wgpy.audit"]
    assert all(r.levelno == logging.INFO and "\n" not in r.getMessage() for r in records)
    assert [r.audit["event"] for r in records] == [  # type: ignore[attr-defined]
        "handshake",
        "peer_added",
        "peer_removed",
        "map_applied",
        "map_rejected",
    ]
    lines = capture.lines()
    assert lines[0] == {"event": "handshake", "time": NOW_WALL + 2.5, "peer": key.to_base64(), "initiator": True}
    assert lines[1]["groups"] == ["a", "b"] and lines[1]["endpoint"] == "[2001:db8::1]:51820"
    assert lines[3]["serial"] == 3 and lines[3]["changed"] == 2
    assert lines[4] == {
        "event": "map_rejected",
        "time": NOW_WALL + 6.0,
        "reason": "expired",
        "detail": "expired at 2",
        "serial": 4,
    }


def test_connection_lines_from_the_filter(capture: Capture) -> None:
    pair = make_pair()
    audit = AuditLog()
    audit.set_clock(NOW_WALL, 0.0)
    packet_filter = PacketFilter(audit=audit)
    packet_filter.load(parse_network_map(body_for(pair, 1)))
    syn = tcp("10.0.0.1", "10.0.0.2", 40000, 22)
    assert packet_filter.check_outbound(syn, pair.pub_b, 1.0)
    assert packet_filter.check_inbound(tcp("10.0.0.2", "10.0.0.1", 22, 40000, 0x12), pair.pub_b, 1.0)
    assert not packet_filter.check_outbound(tcp("10.0.0.1", "10.0.0.2", 40001, 80), pair.pub_b, 2.0)
    lines = capture.lines()
    assert lines == [
        {
            "event": "connection",
            "time": NOW_WALL + 1.0,
            "direction": "outbound",
            "peer": pair.pub_b.to_base64(),
            "src": "10.0.0.1",
            "dst": "10.0.0.2",
            "proto": "tcp",
            "sport": 40000,
            "dport": 22,
            "rule": "dev-ssh",
            "action": "accept",
        },
        {
            "event": "connection",
            "time": NOW_WALL + 2.0,
            "direction": "outbound",
            "peer": pair.pub_b.to_base64(),
            "src": "10.0.0.1",
            "dst": "10.0.0.2",
            "proto": "tcp",
            "sport": 40001,
            "dport": 80,
            "rule": "default-deny",
            "action": "deny",
        },
    ]  # the reply hit the tracked flow: no line


def test_denied_lines_are_rate_limited_and_report_what_was_suppressed(capture: Capture) -> None:
    audit = AuditLog(rate=1.0, burst=3)
    packet_filter = PacketFilter(audit=audit)  # no map: everything is denied
    for i in range(10):
        packet_filter.check_outbound(tcp("10.0.0.1", "10.0.0.2", 1000 + i, 22), None, 5.0)
    assert len(capture.lines()) == 3
    assert packet_filter.stats.denied["default-deny"] == 10  # counting is never limited
    packet_filter.check_outbound(tcp("10.0.0.1", "10.0.0.2", 2000, 22), None, 6.0)
    lines = capture.lines()
    assert len(lines) == 4 and lines[-1]["suppressed"] == 7
    assert "suppressed" not in lines[0]


def test_disabled_logger_writes_nothing(capture: Capture) -> None:
    logging.getLogger("wgpy.audit").setLevel(logging.WARNING)
    try:
        audit = AuditLog()
        assert not audit.enabled
        PacketFilter(audit=audit).check_outbound(tcp("10.0.0.1", "10.0.0.2", 1, 22), None, 1.0)
        audit.handshake(1.0, private_key(1).public_key(), is_initiator=False)
        assert capture.lines() == []
    finally:
        logging.getLogger("wgpy.audit").setLevel(logging.NOTSET)


def test_a_whole_scenario_logs_no_secret(capture: Capture) -> None:
    """Maps applied and rejected, a handshake with a preshared key, traffic, a peer removed: no secret anywhere."""
    pair = make_pair()
    psk = PresharedKey(bytes(range(64, 96)))
    pair.a.set_preshared_key(pair.peer_b, psk)
    pair.b.set_preshared_key(pair.peer_a, psk)
    ctl = MeshController(MANAGEMENT.public_key())
    ctl.apply_network_map(pair.a, sign_network_map(body_for(pair, 1), MANAGEMENT), NOW_WALL, pair.net.now)
    pair.handshake()
    while (event := pair.a.next_event()) is not None:
        ctl.observe_event(event, pair.net.now)
    assert ctl.filter.check_outbound(tcp("10.0.0.1", "10.0.0.2", 4000, 22), pair.pub_b, pair.net.now)
    assert not ctl.filter.check_inbound(tcp("10.0.0.2", "10.0.0.1", 4000, 23), pair.pub_b, pair.net.now)
    with pytest.raises(MapRejected):
        ctl.apply_network_map(pair.a, sign_network_map(body_for(pair, 1), MANAGEMENT), NOW_WALL, pair.net.now)
    ctl.apply_network_map(pair.a, sign_network_map(body_for(pair, 2, with_b=False), MANAGEMENT), NOW_WALL, pair.net.now)

    events = [line["event"] for line in capture.lines()]
    assert events == [
        "map_applied",
        "handshake",
        "connection",
        "connection",
        "map_rejected",
        "peer_removed",
        "map_applied",
    ]
    secrets: list[bytes] = [psk.raw, MANAGEMENT.private_bytes_raw()]
    for device in (pair.a, pair.b):
        assert device.private_key is not None
        secrets.append(device.private_key.raw)
    forms = set()
    for secret in secrets:
        forms |= {base64.b64encode(secret).decode(), secret.hex(), secret.hex().upper(), repr(secret)}
        forms |= {base64.b64encode(secret).decode()[:20], secret.hex()[:24]}  # and recognisable fragments
    text = "\n".join(r.getMessage() for r in capture.records) + "\n".join(
        json.dumps(getattr(r, "audit", None)) for r in capture.records
    )
    assert capture.records
    for form in forms:
        assert form not in text
    # Public keys, on the other hand, name the peers.
    assert pair.pub_b.to_base64() in text


# -- --audit-log is opened like --keylog (issue #11): no symbolic link, FIFO or file of another user ---------------


@pytest.fixture
def audit_logger() -> Any:
    """Restore the ``wgpy.audit`` logger that ``open_audit_log`` reconfigures."""
    from wgpy.mesh import AUDIT_LOGGER_NAME

    audit = logging.getLogger(AUDIT_LOGGER_NAME)
    saved = (audit.handlers[:], audit.level, audit.propagate)
    yield audit
    for handler in audit.handlers:
        if handler not in saved[0]:
            handler.close()
    audit.handlers[:], audit.level, audit.propagate = saved[0], saved[1], saved[2]


def test_the_audit_log_refuses_a_symbolic_link_and_leaves_its_target_alone(tmp_path: Any, audit_logger: Any) -> None:
    """Before, ``os.open`` followed the link: a root daemon appended its audit lines to the link's target."""
    import os

    from wgpy.errors import ConfigError
    from wgpy.mesh.agent import open_audit_log

    target = tmp_path / "victim"
    target.write_text("untouched\n")
    os.chmod(target, 0o644)
    link = tmp_path / "audit.log"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="symbolic link") as info:
        open_audit_log(str(link))
    assert "\n" not in str(info.value)
    assert target.read_text() == "untouched\n"
    assert target.stat().st_mode & 0o777 == 0o644
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        open_audit_log(str(fifo))


def test_the_audit_log_is_our_own_0600_file(tmp_path: Any, audit_logger: Any) -> None:
    import os

    from wgpy.errors import ConfigError
    from wgpy.mesh.agent import open_audit_log

    existing = tmp_path / "audit.log"
    existing.write_text("")
    os.chmod(existing, 0o644)
    handler = open_audit_log(str(existing))
    audit_logger.info('{"kind":"test"}')
    handler.flush()
    assert existing.read_text() == '{"kind":"test"}\n'
    assert existing.stat().st_mode & 0o777 == 0o600
    linked = tmp_path / "second-name"
    os.link(existing, linked)
    with pytest.raises(ConfigError, match="hard links"):
        open_audit_log(str(linked))
    if os.geteuid() == 0:  # only root can give a file to another user; the check itself needs no root
        foreign = tmp_path / "foreign.log"
        foreign.write_text("")
        os.chown(foreign, 65534, 65534)
        with pytest.raises(ConfigError, match="owned by uid 65534"):
            open_audit_log(str(foreign))
