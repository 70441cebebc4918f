"""wgpy.keylog writes what Wireshark's WireGuard dissector reads, and what it writes is enough to decrypt a session.

Three levels:

1. Format: the lines equal, byte for byte, the example in the comment of ``wg_keylog_read`` in Wireshark's
   ``epan/dissectors/packet-wireguard.c``, and they parse with the rules of ``wg_keylog_process_lines``
   (re-implemented below from that C code).
2. Sufficiency: from one side's logged keys and the captured initiation and response of a wgpy handshake, the
   dissector's computation (``wg_process_initiation`` / ``wg_process_response``, redone here with ``wgpy.crypto``)
   reaches the transport keys and decrypts transport messages in both directions.
3. End to end (needs ``tshark``): a hand-built pcap of that handshake plus two transport messages carrying ICMP
   echoes, read by tshark with ``-o wg.keylog_file:...``, shows the decrypted inner packets.
"""

from __future__ import annotations

import ast
import base64
import ipaddress
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from support.helpers import det_rng, ipv4_packet, private_key

from wgpy import crypto, keylog, noise
from wgpy.constants import CONSTRUCTION, IDENTIFIER, LABEL_MAC1
from wgpy.cookie import CookieGenerator
from wgpy.keylog import KeyLogWriter, format_keylog_entry
from wgpy.keypair import Keypair, padded_length
from wgpy.keys import PresharedKey, PrivateKey, PublicKey
from wgpy.messages import Initiation, Response, unpack

# The example of the key log comment in Wireshark's packet-wireguard.c (wg_keylog_read).
WIRESHARK_EXAMPLE: Final = (
    "LOCAL_STATIC_PRIVATE_KEY = AKeZaHwBxjiKLFnkY2unvEdOTtg4AL+M9dQXfopFVFk=\n"
    "REMOTE_STATIC_PUBLIC_KEY = YDCttCs9e1J52/g9vEnwJJa+2x6RqaayAYMpSVQfGEY=\n"
    "LOCAL_EPHEMERAL_PRIVATE_KEY = sLGLJSOQfyz7JNJ5ZDzFf3Uz1rkiCMMjbWerNYcPFFU=\n"
)
KEY_TYPES: Final = (
    "LOCAL_STATIC_PRIVATE_KEY",
    "REMOTE_STATIC_PUBLIC_KEY",
    "LOCAL_EPHEMERAL_PRIVATE_KEY",
    "PRESHARED_KEY",
)
PORT: Final = 51820
OUTER_I: Final = "192.0.2.1"  # TEST-NET-1 (RFC 5737): the initiator's endpoint
OUTER_R: Final = "192.0.2.2"
INNER_I: Final = "10.0.0.1"
INNER_R: Final = "10.0.0.2"
MARKER: Final = b"wgpy keylog end-to-end marker"
WALL_NS: Final = 1_700_000_000_000_000_000
_TRANSPORT_HEADER: Final = struct.Struct("<IIQ")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


# --- 1. Format -------------------------------------------------------------------------------------------------


def parse_like_wireshark(text: str) -> list[tuple[str, bytes]]:
    """The rules of wg_keylog_process_lines: one ``type = key`` per line (LF, optional CR), leading spaces and spaces
    around '=' ignored, a type shorter than ``sizeof("LOCAL_EPHEMERAL_PRIVATE_KEY")``, a value of at most 44
    characters that decodes to 32 bytes. Lines it would ignore make this test helper fail instead."""
    entries = []
    for line in text.split("\n")[:-1]:
        line = line.removesuffix("\r").lstrip(" ")
        key_type, sep, value = line.partition("=")
        assert sep, line
        key_type = key_type.rstrip(" ")
        value = value.lstrip(" ")
        assert 0 < len(key_type) < len("LOCAL_EPHEMERAL_PRIVATE_KEY") + 1, line
        assert 0 < len(value) < 45, line
        assert key_type in KEY_TYPES, line
        raw = base64.b64decode(value, validate=True)
        assert len(raw) == 32, line
        entries.append((key_type, raw))
    assert text.endswith("\n")
    return entries


def test_format_equals_the_dissector_documented_example() -> None:
    static = base64.b64decode("AKeZaHwBxjiKLFnkY2unvEdOTtg4AL+M9dQXfopFVFk=")
    remote = base64.b64decode("YDCttCs9e1J52/g9vEnwJJa+2x6RqaayAYMpSVQfGEY=")
    ephemeral = base64.b64decode("sLGLJSOQfyz7JNJ5ZDzFf3Uz1rkiCMMjbWerNYcPFFU=")
    text = format_keylog_entry(PrivateKey(static), PublicKey(remote), ephemeral, None)
    assert text == WIRESHARK_EXAMPLE


def test_psk_line_only_for_a_nonzero_key_and_after_the_ephemeral() -> None:
    static, remote, ephemeral = private_key(1), private_key(2).public_key(), private_key(3).raw
    without = format_keylog_entry(static, remote, ephemeral, None)
    assert format_keylog_entry(static, remote, ephemeral, PresharedKey.zero()) == without
    psk = PresharedKey(bytes(range(1, 33)))
    with_psk = format_keylog_entry(static, remote, ephemeral, psk)
    assert with_psk == without + f"PRESHARED_KEY = {b64(psk.raw)}\n"
    assert [t for t, _ in parse_like_wireshark(with_psk)] == list(KEY_TYPES)
    assert parse_like_wireshark(with_psk) == [
        ("LOCAL_STATIC_PRIVATE_KEY", static.raw),
        ("REMOTE_STATIC_PUBLIC_KEY", remote.raw),
        ("LOCAL_EPHEMERAL_PRIVATE_KEY", ephemeral),
        ("PRESHARED_KEY", psk.raw),
    ]


def test_each_line_is_short_enough_for_the_dissector_buffer() -> None:
    text = format_keylog_entry(private_key(1), private_key(2).public_key(), bytes(32), PresharedKey(bytes([7]) * 32))
    assert all(len(line) + 1 < 512 for line in text.splitlines())  # char buf[512] in wg_keylog_read
    assert text.count("\n") == 4


def test_ephemeral_must_be_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        format_keylog_entry(private_key(1), private_key(2).public_key(), bytes(31), None)


def test_writer_hands_one_entry_per_call_to_the_sink() -> None:
    written: list[str] = []
    writer = KeyLogWriter(written.append)
    writer.on_ephemeral(private_key(1), private_key(2).public_key(), bytes(range(32)), None)
    writer.on_ephemeral(private_key(1), private_key(2).public_key(), bytes(range(1, 33)), PresharedKey(bytes([9]) * 32))
    assert len(written) == 2
    assert written[0].count("\n") == 3 and written[1].count("\n") == 4
    assert "<" not in repr(writer) and b64(private_key(1).raw) not in repr(writer)


def test_keylog_is_a_core_module_without_io() -> None:
    tree = ast.parse(Path(keylog.__file__).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"socket", "asyncio", "select", "fcntl", "threading", "time", "subprocess", "os", "logging"}


# --- A wgpy handshake with both sides' key logs ------------------------------------------------------------------


@dataclass
class Session:
    initiation: bytes  # as sent: mac1 filled in
    response: bytes
    initiator_log: str
    responder_log: str
    initiator: Keypair
    responder: Keypair
    initiator_public: PublicKey
    responder_public: PublicKey


def run_handshake(preshared_key: PresharedKey | None, seed: int = 1) -> Session:
    """One handshake through wgpy.noise and wgpy.cookie, each side logging as the device will (right after create_*)."""
    identity_i = noise.StaticIdentity(private_key(seed))
    identity_r = noise.StaticIdentity(private_key(seed + 100))
    handshake_i = noise.Handshake(identity_i, identity_r.public_key, preshared_key)
    handshake_r = noise.Handshake(identity_r, identity_i.public_key, preshared_key)
    logs_i: list[str] = []
    logs_r: list[str] = []
    writer_i, writer_r = KeyLogWriter(logs_i.append), KeyLogWriter(logs_r.append)

    created = noise.create_initiation(handshake_i, identity_i, 0x0A0B0C0D, WALL_NS, det_rng(seed))
    writer_i.on_ephemeral(
        identity_i.private_key, handshake_i.remote_static, handshake_i.ephemeral_private, handshake_i.preshared_key
    )
    initiation = CookieGenerator(identity_r.public_key).add_macs(created.pack(), 0.0)
    received = unpack(initiation)
    assert isinstance(received, Initiation)
    noise.consume_initiation(received, identity_r, lambda key: handshake_r, 0.0)

    created_response = noise.create_response(handshake_r, 0x01020304, det_rng(seed + 1))
    writer_r.on_ephemeral(
        identity_r.private_key, handshake_r.remote_static, handshake_r.ephemeral_private, handshake_r.preshared_key
    )
    response = CookieGenerator(identity_i.public_key).add_macs(created_response.pack(), 0.0)
    received_response = unpack(response)
    assert isinstance(received_response, Response)
    noise.consume_response(received_response, identity_i, lambda index: handshake_i)
    return Session(
        initiation=initiation,
        response=response,
        initiator_log="".join(logs_i),
        responder_log="".join(logs_r),
        initiator=noise.begin_session(handshake_i, 0.0),
        responder=noise.begin_session(handshake_r, 0.0),
        initiator_public=identity_i.public_key,
        responder_public=identity_r.public_key,
    )


# --- 2. The logged keys suffice (the dissector's computation, with wgpy.crypto) ---------------------------------


def derive_transport_keys(log: str, initiation: bytes, response: bytes) -> tuple[bytes, bytes]:
    """(T_send_i, T_recv_i) from one side's key log and the two handshake messages, as packet-wireguard.c does.

    The side is found the way the dissector finds it: mac1 names the receiver among the known static public keys,
    and the logged ephemeral private key matches the ephemeral of the initiation (initiator) or response (responder).
    """
    keys = dict(parse_like_wireshark(log))
    static_private = keys["LOCAL_STATIC_PRIVATE_KEY"]
    remote_public = keys["REMOTE_STATIC_PUBLIC_KEY"]
    ephemeral_private = keys["LOCAL_EPHEMERAL_PRIVATE_KEY"]
    psk = keys.get("PRESHARED_KEY", bytes(32))  # the dissector tries the all-zero key last
    static_public = crypto.dh_public(static_private)
    ephemeral_public = crypto.dh_public(ephemeral_private)
    epub_i, encrypted_static, encrypted_timestamp = initiation[8:40], initiation[40:88], initiation[88:116]
    epub_r, encrypted_empty = response[12:44], response[44:60]
    is_initiator = ephemeral_public == epub_i
    assert is_initiator or ephemeral_public == epub_r, "the logged ephemeral belongs to neither message"
    spub_r = remote_public if is_initiator else static_public
    spub_i_expected = static_public if is_initiator else remote_public
    # wg_mac1_key: the dissector recognises the responder's static key by the initiation's mac1.
    assert crypto.mac(crypto.hash(LABEL_MAC1 + spub_r), initiation[:116]) == initiation[116:132]
    assert crypto.mac(crypto.hash(LABEL_MAC1 + spub_i_expected), response[:60]) == response[60:76]

    # wg_process_initiation
    c = crypto.hash(CONSTRUCTION)
    h = crypto.hash(crypto.hash(c + IDENTIFIER) + spub_r)
    c = crypto.kdf1(c, epub_i)
    h = crypto.hash(h + epub_i)
    dh1 = crypto.dh(ephemeral_private, spub_r) if is_initiator else crypto.dh(static_private, epub_i)
    c, k = crypto.kdf2(c, dh1)
    spub_i = crypto.aead_open(k, 0, encrypted_static, h)
    assert spub_i == spub_i_expected
    h = crypto.hash(h + encrypted_static)
    dh2 = crypto.dh(static_private, spub_r) if is_initiator else crypto.dh(static_private, spub_i)
    c, k = crypto.kdf2(c, dh2)
    timestamp = crypto.aead_open(k, 0, encrypted_timestamp, h)
    assert len(timestamp) == 12
    h = crypto.hash(h + encrypted_timestamp)

    # wg_process_response
    c = crypto.kdf1(c, epub_r)
    h = crypto.hash(h + epub_r)
    ee = crypto.dh(ephemeral_private, epub_r) if is_initiator else crypto.dh(ephemeral_private, epub_i)
    c = crypto.kdf1(c, ee)
    se = crypto.dh(static_private, epub_r) if is_initiator else crypto.dh(ephemeral_private, spub_i)
    c = crypto.kdf1(c, se)
    c, t, k = crypto.kdf3(c, psk)
    h = crypto.hash(h + t)
    assert crypto.aead_open(k, 0, encrypted_empty, h) == b""
    return crypto.kdf2(c, b"")


@pytest.mark.parametrize("side", ["initiator", "responder"])
@pytest.mark.parametrize("psk", [None, PresharedKey(bytes(range(100, 132)))], ids=["no_psk", "psk"])
def test_logged_keys_decrypt_the_session(side: str, psk: PresharedKey | None) -> None:
    session = run_handshake(psk)
    log = session.initiator_log if side == "initiator" else session.responder_log
    assert ("PRESHARED_KEY = " in log) is (psk is not None)
    send_i, recv_i = derive_transport_keys(log, session.initiation, session.response)

    to_responder = session.initiator.seal(b"from the initiator".ljust(32, b"\0"))
    to_initiator = session.responder.seal(b"from the responder".ljust(32, b"\0"))
    assert to_responder is not None and to_initiator is not None
    for message, key, plaintext in (
        (to_responder, send_i, b"from the initiator"),
        (to_initiator, recv_i, b"from the responder"),
    ):
        _, _, counter = _TRANSPORT_HEADER.unpack_from(message)
        assert crypto.aead_open(key, counter, message[16:], b"").rstrip(b"\0") == plaintext


def test_a_wrong_preshared_key_does_not_decrypt() -> None:
    session = run_handshake(PresharedKey(bytes([5]) * 32))
    forged = session.initiator_log.replace(
        f"PRESHARED_KEY = {b64(bytes([5]) * 32)}", f"PRESHARED_KEY = {b64(bytes([6]) * 32)}"
    )
    assert forged != session.initiator_log
    with pytest.raises(crypto.InvalidTag):
        derive_transport_keys(forged, session.initiation, session.response)


# --- 3. tshark end to end ------------------------------------------------------------------------------------------

_PCAP_HEADER: Final = struct.Struct("<IHHiIII")  # classic libpcap, microsecond timestamps
_PCAP_RECORD: Final = struct.Struct("<IIII")
PCAP_MAGIC: Final = 0xA1B2C3D4
LINKTYPE_RAW: Final = 101  # raw IPv4/IPv6, no link-layer header
_UDP: Final = struct.Struct("!HHHH")
_ICMP_ECHO: Final = struct.Struct("!BBHHH")


def _internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmp_echo(kind: int, payload: bytes) -> bytes:
    """An ICMP echo request (8) or reply (0) with a correct checksum (RFC 792)."""
    message = _ICMP_ECHO.pack(kind, 0, 0, 0x4711, 1) + payload
    return message[:2] + struct.pack("!H", _internet_checksum(message)) + message[4:]


def udp_datagram(src: str, dst: str, payload: bytes) -> bytes:
    """IPv4 + UDP from port 51820 to port 51820; UDP checksum 0 (none, allowed over IPv4 by RFC 768)."""
    assert ipaddress.ip_address(src).version == 4
    return ipv4_packet(src, dst, _UDP.pack(PORT, PORT, _UDP.size + len(payload), 0) + payload, protocol=17)


def write_pcap(path: Path, packets: list[bytes]) -> None:
    records = b"".join(
        _PCAP_RECORD.pack(1_700_000_000 + n, 0, len(packet), len(packet)) + packet for n, packet in enumerate(packets)
    )
    path.write_bytes(_PCAP_HEADER.pack(PCAP_MAGIC, 2, 4, 0, 0, 65535, LINKTYPE_RAW) + records)


def _transport(keypair: Keypair, inner: bytes) -> bytes:
    sealed = keypair.seal(inner.ljust(padded_length(len(inner), None), b"\0"))
    assert sealed is not None
    return sealed


def tshark_fields(pcap: Path, keylog_path: Path, *fields: str, display_filter: str) -> list[list[str]]:
    tshark = shutil.which("tshark")
    assert tshark is not None
    command = [
        tshark,
        "-n",
        "-r",
        str(pcap),
        "-o",
        f"wg.keylog_file:{keylog_path}",
        "-o",
        "wg.dissect_packet:TRUE",
        "-d",
        f"udp.port=={PORT},wg",
        "-Y",
        display_filter,
        "-T",
        "fields",
    ]
    for field in fields:
        command += ["-e", field]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()]


@pytest.mark.parametrize("side", ["initiator", "responder"])
@pytest.mark.parametrize("psk", [None, PresharedKey(bytes(range(100, 132)))], ids=["no_psk", "psk"])
def test_tshark_decrypts_with_the_key_log(tmp_path: Path, side: str, psk: PresharedKey | None) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark): the end-to-end key log check needs it")
    session = run_handshake(psk, seed=7)
    request = ipv4_packet(INNER_I, INNER_R, icmp_echo(8, MARKER), protocol=1)
    reply = ipv4_packet(INNER_R, INNER_I, icmp_echo(0, MARKER), protocol=1)
    pcap = tmp_path / "wgpy.pcap"
    write_pcap(
        pcap,
        [
            udp_datagram(OUTER_I, OUTER_R, session.initiation),
            udp_datagram(OUTER_R, OUTER_I, session.response),
            udp_datagram(OUTER_I, OUTER_R, _transport(session.initiator, request)),
            udp_datagram(OUTER_R, OUTER_I, _transport(session.responder, reply)),
        ],
    )
    keys = tmp_path / "wg.keys"
    keys.write_text(session.initiator_log if side == "initiator" else session.responder_log, encoding="ascii")

    handshake = tshark_fields(
        pcap, keys, "frame.number", "wg.static", "wg.handshake_ok", display_filter="wg.type == 1 || wg.type == 2"
    )
    assert [row[0] for row in handshake] == ["1", "2"]
    assert handshake[0][1] == session.initiator_public.to_base64()  # the decrypted encrypted_static
    assert handshake[1][2] == "1"  # the response's empty payload authenticated

    decrypted = tshark_fields(
        pcap, keys, "frame.number", "ip.src", "ip.dst", "icmp.type", "data.data", display_filter="icmp"
    )
    # ip.src / ip.dst list the outer header, then the decrypted inner one.
    assert decrypted == [
        ["3", f"{OUTER_I},{INNER_I}", f"{OUTER_R},{INNER_R}", "8", MARKER.hex()],
        ["4", f"{OUTER_R},{INNER_R}", f"{OUTER_I},{INNER_I}", "0", MARKER.hex()],
    ]


def test_tshark_sees_nothing_without_the_key_log(tmp_path: Path) -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed (apt-get install tshark): the end-to-end key log check needs it")
    session = run_handshake(None, seed=8)
    pcap = tmp_path / "wgpy.pcap"
    inner = ipv4_packet(INNER_I, INNER_R, icmp_echo(8, MARKER), protocol=1)
    write_pcap(
        pcap,
        [
            udp_datagram(OUTER_I, OUTER_R, session.initiation),
            udp_datagram(OUTER_R, OUTER_I, session.response),
            udp_datagram(OUTER_I, OUTER_R, _transport(session.initiator, inner)),
        ],
    )
    empty = tmp_path / "empty.keys"
    empty.write_text("", encoding="ascii")
    assert tshark_fields(pcap, empty, "frame.number", display_filter="icmp") == []
    assert tshark_fields(pcap, empty, "frame.number", display_filter="wg.type == 4") == [["3"]]
