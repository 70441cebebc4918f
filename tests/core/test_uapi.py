"""wgpy.uapi: the UAPI text protocol as pure functions (parse_set, apply_set, format_get, parse_endpoint)."""

from __future__ import annotations

import errno
import ipaddress

import pytest

from wgpy import uapi
from wgpy.device import Device
from wgpy.errors import UapiError
from wgpy.keys import PresharedKey, PrivateKey, PublicKey

NOW = 1000.0


def _key(seed: int) -> PrivateKey:
    return PrivateKey(bytes([seed]) * 32)


def _pub(seed: int) -> PublicKey:
    return _key(seed).public_key()


def _set(device: Device, text: str, now: float = NOW, sockets: uapi.SocketState | None = None) -> None:
    uapi.apply_set(device, uapi.parse_set(text.strip().splitlines()), now, sockets)


def _error(lines: list[str]) -> UapiError:
    with pytest.raises(UapiError) as info:
        uapi.parse_set(lines)
    return info.value


def _allowed(device: Device, key: PublicKey) -> list[str]:
    peer = device.peer(key)
    assert peer is not None
    return sorted(str(n) for n in device.allowed_ips.entries_for_peer(peer))


# -- parse_endpoint ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("192.0.2.1:51820", ("192.0.2.1", 51820)),
        ("127.0.0.1:1", ("127.0.0.1", 1)),
        ("[fd00::1]:51820", ("fd00::1", 51820, 0, 0)),
        ("[FD00:0:0::0001]:65535", ("fd00::1", 65535, 0, 0)),  # normalized as a socket reports the sender
        ("[::ffff:192.0.2.1]:9", ("::ffff:c000:201", 9, 0, 0)),
        ("[fe80::1%3]:51820", ("fe80::1", 51820, 0, 3)),
        # An interface name (as wg writes it) stays in the host string; the driver's sendto resolves it.
        ("[FE80::1%eth0]:51820", ("fe80::1%eth0", 51820, 0, 0)),
        ("[::]:7", ("::", 7, 0, 0)),
    ],
)
def test_parse_endpoint(text: str, endpoint: tuple[object, ...]) -> None:
    assert uapi.parse_endpoint(text) == endpoint


@pytest.mark.parametrize(
    "text",
    [
        "",
        "192.0.2.1",
        "192.0.2.1:",
        "192.0.2.1:0",
        "192.0.2.1:65536",
        "192.0.2.1:-1",
        "192.0.2.1:+5",
        "192.0.2.1: 5",
        "192.0.2.1:\u00b2",  # str.isdigit() is true for a superscript two
        "192.0.2.1:" + "1" * 5000,
        "192.0.2.256:1",
        "010.0.0.1:1",
        "example.com:51820",
        "fd00::1:51820",  # IPv6 needs brackets
        "[fd00::1]",
        "[fd00::g]:1",
        "[192.0.2.1]:1",
        "[fe80::1%]:1",
        "[fe80::1%a b]:1",
        "[fe80::1%a/b]:1",
        "[fe80::1%" + "x" * 16 + "]:1",
    ],
)
def test_parse_endpoint_rejects(text: str) -> None:
    with pytest.raises(UapiError) as info:
        uapi.parse_endpoint(text)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize(
    "endpoint",
    [("192.0.2.1", 51820), ("fd00::1", 51820, 0, 0), ("fe80::1", 1, 0, 3), ("fe80::1%eth0", 1, 0, 0)],
)
def test_format_endpoint_round_trips(endpoint: tuple[str, int] | tuple[str, int, int, int]) -> None:
    assert uapi.parse_endpoint(uapi.format_endpoint(endpoint)) == endpoint


def test_format_endpoint_brackets_ipv6() -> None:
    assert uapi.format_endpoint(("fd00::1", 5, 0, 0)) == "[fd00::1]:5"
    assert uapi.format_endpoint(("10.0.0.1", 5)) == "10.0.0.1:5"
    assert uapi.format_endpoint(("fe80::1", 5, 0, 3)) == "[fe80::1%3]:5"
    assert uapi.format_endpoint(("fe80::1%eth0", 5, 0, 3)) == "[fe80::1%eth0]:5"  # as a socket reports it


# -- parse_set ----------------------------------------------------------------------------------------------------


def test_parse_set_reads_every_key() -> None:
    psk = PresharedKey(bytes(range(32)))
    request = uapi.parse_set(
        [
            f"private_key={_key(1).to_hex()}",
            "listen_port=51820",
            "fwmark=4294967295",
            "replace_peers=true",
            f"public_key={_pub(2).to_hex()}",
            "update_only=true",
            f"preshared_key={psk.to_hex()}",
            "endpoint=[fd00::2]:1",
            "persistent_keepalive_interval=65535",
            "replace_allowed_ips=true",
            "allowed_ip=10.0.0.0/8",
            "allowed_ip=fd00::/64",
            "allowed_ip=192.0.2.77/24",  # host bits are masked, as wireguard-go does
            "protocol_version=1",
            f"public_key={_pub(3).to_hex()}",
            "remove=true",
        ]
    )
    assert request.private_key == _key(1) and not request.clear_private_key
    assert (request.listen_port, request.fwmark, request.replace_peers) == (51820, 2**32 - 1, True)
    first, second = request.peers
    assert first.public_key == _pub(2) and first.update_only and not first.remove
    assert first.preshared_key == psk
    assert first.endpoint == ("fd00::2", 1, 0, 0)
    assert first.persistent_keepalive_interval == 65535
    assert first.replace_allowed_ips
    assert first.allowed_ips == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/64"),
        ipaddress.ip_network("192.0.2.0/24"),
    ]
    assert second.public_key == _pub(3) and second.remove


def test_parse_set_empty_body() -> None:
    request = uapi.parse_set([])
    assert request == uapi.SetRequest()


def test_private_key_of_zeros_means_clear() -> None:
    request = uapi.parse_set(["private_key=" + "0" * 64])
    assert request.private_key is None and request.clear_private_key


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        (["listen_port"], errno.EPROTO),
        (["", "listen_port=1"], errno.EPROTO),
        (["\x00"], errno.EPROTO),
        (["no_such_key=1"], errno.EINVAL),
        (["listen_port=65536"], errno.EINVAL),
        (["listen_port=70000"], errno.EINVAL),
        (["listen_port=-1"], errno.EINVAL),
        (["listen_port="], errno.EINVAL),
        (["listen_port=0x10"], errno.EINVAL),
        (["listen_port=\u00b2"], errno.EINVAL),
        (["listen_port=" + "0" * 5000], errno.EINVAL),
        (["fwmark=4294967296"], errno.EINVAL),
        (["replace_peers=false"], errno.EINVAL),
        (["replace_peers=TRUE"], errno.EINVAL),
        (["private_key=" + "0" * 63], errno.EINVAL),
        (["private_key=" + "0" * 65], errno.EINVAL),
        (["private_key=" + "g" * 64], errno.EINVAL),
        (["public_key=" + "0" * 62], errno.EINVAL),
        (["endpoint=10.0.0.1:1"], errno.EINVAL),  # a peer key before any public_key
        (["public_key=" + "1" * 64, "listen_port=1"], errno.EINVAL),  # a device key inside a peer
        (["public_key=" + "1" * 64, "private_key=" + "1" * 64], errno.EINVAL),
        (["public_key=" + "1" * 64, "remove=false"], errno.EINVAL),
        (["public_key=" + "1" * 64, "update_only=1"], errno.EINVAL),
        (["public_key=" + "1" * 64, "replace_allowed_ips=yes"], errno.EINVAL),
        (["public_key=" + "1" * 64, "preshared_key=abc"], errno.EINVAL),
        (["public_key=" + "1" * 64, "endpoint=nowhere"], errno.EINVAL),
        (["public_key=" + "1" * 64, "persistent_keepalive_interval=65536"], errno.EINVAL),
        (["public_key=" + "1" * 64, "allowed_ip=10.1.2.300/32"], errno.EINVAL),
        (["public_key=" + "1" * 64, "allowed_ip=10.0.0.0/33"], errno.EINVAL),
        (["public_key=" + "1" * 64, "allowed_ip=garbage"], errno.EINVAL),
        (["public_key=" + "1" * 64, "protocol_version=2"], errno.EINVAL),
        (["public_key=" + "1" * 64, "protocol_version=0"], errno.EINVAL),
        (["public_key=" + "1" * 64, "no_such_key=1"], errno.EINVAL),
    ],
)
def test_parse_set_errors(lines: list[str], code: int) -> None:
    assert _error(lines).errno == code


@pytest.mark.parametrize(
    "line",
    [
        "private_key={secret}0",
        "private_key={secret}x",
        "private_key={short}",
        "public_key={short}",
        "unknown_{secret}={secret}",
        "{secret}={secret}",
        "{secret}",
    ],
)
def test_error_messages_never_contain_key_hex(line: str) -> None:
    secret = _key(7).to_hex()
    psk = PresharedKey(bytes([9]) * 32).to_hex()
    for value, prefix in ((secret, []), (psk, [f"public_key={_pub(1).to_hex()}"])):
        text = line.format(secret=value, short=value[:-2])
        error = _error([*prefix, text])
        rendered = f"{error} {error!r} {error.args}"
        assert value[:16] not in rendered and value[-16:] not in rendered, rendered
    # A peer preshared_key that is not 64 hex digits is refused without echoing it.
    error = _error([f"public_key={_pub(1).to_hex()}", f"preshared_key={psk}00"])
    assert psk[:16] not in str(error)


# -- apply_set ------------------------------------------------------------------------------------------------------


def test_apply_sets_device_and_peers() -> None:
    device = Device()
    sockets = uapi.SocketState()
    _set(
        device,
        f"""
        private_key={_key(1).to_hex()}
        listen_port=51820
        fwmark=3
        public_key={_pub(2).to_hex()}
        preshared_key={PresharedKey(bytes([5]) * 32).to_hex()}
        endpoint=192.0.2.2:51820
        allowed_ip=10.0.0.2/32
        allowed_ip=fd00::2/128
        public_key={_pub(3).to_hex()}
        endpoint=[fd00::3]:51820
        allowed_ip=10.0.0.3/32
        """.replace("        ", ""),
        sockets=sockets,
    )
    assert device.private_key == _key(1)
    assert (sockets.listen_port, sockets.fwmark) == (51820, 3)
    assert list(device.peers) == [_pub(2), _pub(3)]
    two = device.peer(_pub(2))
    assert two is not None
    assert two.preshared_key == PresharedKey(bytes([5]) * 32)
    assert two.endpoint == ("192.0.2.2", 51820)
    assert _allowed(device, _pub(2)) == ["10.0.0.2/32", "fd00::2/128"]
    three = device.peer(_pub(3))
    assert three is not None and three.endpoint == ("fd00::3", 51820, 0, 0)


def test_private_key_of_zeros_clears_the_key() -> None:
    device = Device(_key(1))
    _set(device, "private_key=" + "0" * 64)
    assert device.private_key is None and device.public_key is None
    assert "private_key" not in uapi.format_get(device)


def test_replace_peers() -> None:
    device = Device(_key(1))
    device.add_peer(_pub(2), allowed_ips=["10.0.0.2/32"])
    device.add_peer(_pub(3), allowed_ips=["10.0.0.3/32"])
    _set(device, f"replace_peers=true\npublic_key={_pub(4).to_hex()}\nallowed_ip=10.0.0.4/32")
    assert list(device.peers) == [_pub(4)]
    assert device.allowed_ips.lookup(ipaddress.ip_address("10.0.0.2").packed) is None
    _set(device, "replace_peers=true")
    assert device.peers == {}


def test_replace_allowed_ips_versus_adding() -> None:
    device = Device(_key(1))
    device.add_peer(_pub(2), allowed_ips=["10.0.0.2/32", "10.0.1.0/24"])
    _set(device, f"public_key={_pub(2).to_hex()}\nallowed_ip=10.0.2.0/24")
    assert _allowed(device, _pub(2)) == ["10.0.0.2/32", "10.0.1.0/24", "10.0.2.0/24"]
    _set(device, f"public_key={_pub(2).to_hex()}\nreplace_allowed_ips=true\nallowed_ip=fd00::/64")
    assert _allowed(device, _pub(2)) == ["fd00::/64"]
    _set(device, f"public_key={_pub(2).to_hex()}\nreplace_allowed_ips=true")
    assert _allowed(device, _pub(2)) == []


def test_allowed_ip_moves_between_peers() -> None:
    device = Device(_key(1))
    device.add_peer(_pub(2), allowed_ips=["10.0.0.0/24"])
    _set(device, f"public_key={_pub(3).to_hex()}\nallowed_ip=10.0.0.0/24")
    assert _allowed(device, _pub(2)) == []
    assert _allowed(device, _pub(3)) == ["10.0.0.0/24"]


def test_update_only() -> None:
    device = Device(_key(1))
    _set(device, f"public_key={_pub(2).to_hex()}\nupdate_only=true\nallowed_ip=10.0.0.2/32")
    assert device.peers == {}  # a missing peer is not created
    device.add_peer(_pub(2))
    _set(device, f"public_key={_pub(2).to_hex()}\nupdate_only=true\nendpoint=192.0.2.2:1\nallowed_ip=10.0.0.2/32")
    peer = device.peer(_pub(2))
    assert peer is not None and peer.endpoint == ("192.0.2.2", 1)
    assert _allowed(device, _pub(2)) == ["10.0.0.2/32"]


def test_remove() -> None:
    device = Device(_key(1))
    device.add_peer(_pub(2), allowed_ips=["10.0.0.2/32"])
    device.add_peer(_pub(3), allowed_ips=["10.0.0.3/32"])
    _set(device, f"public_key={_pub(2).to_hex()}\nremove=true\nallowed_ip=10.9.9.9/32")
    assert list(device.peers) == [_pub(3)]
    assert device.allowed_ips.lookup(ipaddress.ip_address("10.0.0.2").packed) is None
    assert device.allowed_ips.lookup(ipaddress.ip_address("10.9.9.9").packed) is None
    _set(device, f"public_key={_pub(9).to_hex()}\nremove=true")  # removing an unknown peer is fine
    assert list(device.peers) == [_pub(3)]


def test_peer_with_our_own_public_key_is_ignored() -> None:
    device = Device(_key(1))
    _set(device, f"public_key={_pub(1).to_hex()}\nallowed_ip=10.0.0.1/32")
    assert device.peers == {}


def test_preshared_key_of_zeros_clears_it() -> None:
    device = Device(_key(1))
    psk = PresharedKey(bytes([5]) * 32)
    device.add_peer(_pub(2), preshared_key=psk)
    _set(device, f"public_key={_pub(2).to_hex()}\npreshared_key={'0' * 64}")
    peer = device.peer(_pub(2))
    assert peer is not None and peer.preshared_key.is_zero()


def test_persistent_keepalive_sends_at_once_when_it_can() -> None:
    device = Device(_key(1))
    _set(device, f"public_key={_pub(2).to_hex()}\nendpoint=192.0.2.2:1\npersistent_keepalive_interval=25")
    peer = device.peer(_pub(2))
    assert peer is not None and peer.persistent_keepalive_interval == 25
    sent = device.datagrams_to_send()
    assert len(sent) == 1 and sent[0][1] == ("192.0.2.2", 1)  # no session yet: an initiation
    _set(device, f"public_key={_pub(2).to_hex()}\npersistent_keepalive_interval=0")
    assert peer.persistent_keepalive_interval == 0


def test_apply_set_leaves_listen_port_alone_when_not_given() -> None:
    device = Device(_key(1))
    sockets = uapi.SocketState(listen_port=4242, fwmark=9)
    _set(device, f"public_key={_pub(2).to_hex()}", sockets=sockets)
    assert (sockets.listen_port, sockets.fwmark) == (4242, 9)


def test_apply_set_without_sockets_applies_only_the_device_half() -> None:
    device = Device()
    _set(device, f"private_key={_key(1).to_hex()}\nlisten_port=51820\nfwmark=3")
    assert device.private_key == _key(1)
    assert not hasattr(device, "listen_port") and not hasattr(device, "fwmark")  # socket state is the driver's


# -- format_get -----------------------------------------------------------------------------------------------------


def test_format_get_empty_device() -> None:
    assert uapi.format_get(Device()) == ""
    assert uapi.format_get(Device(), uapi.SocketState()) == ""
    assert uapi.format_get(Device(), uapi.SocketState(listen_port=51820)) == "listen_port=51820\n"


def test_format_get_lines_in_wireguard_go_order() -> None:
    device = Device(_key(1))
    sockets = uapi.SocketState(listen_port=51820, fwmark=7)
    psk = PresharedKey(bytes([5]) * 32)
    device.add_peer(
        _pub(2),
        preshared_key=psk,
        endpoint=("fd00::2", 9, 0, 0),
        allowed_ips=["10.0.0.2/32"],
        persistent_keepalive_interval=0,
    )
    device.add_peer(_pub(3))
    assert uapi.format_get(device, sockets) == (
        f"private_key={_key(1).to_hex()}\n"
        "listen_port=51820\n"
        "fwmark=7\n"
        f"public_key={_pub(2).to_hex()}\n"
        f"preshared_key={psk.to_hex()}\n"
        "protocol_version=1\n"
        "endpoint=[fd00::2]:9\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
        "allowed_ip=10.0.0.2/32\n"
        f"public_key={_pub(3).to_hex()}\n"
        f"preshared_key={'0' * 64}\n"
        "protocol_version=1\n"
        "last_handshake_time_sec=0\n"
        "last_handshake_time_nsec=0\n"
        "tx_bytes=0\n"
        "rx_bytes=0\n"
        "persistent_keepalive_interval=0\n"
    )


def test_format_get_is_lowercase_hex_and_never_base64() -> None:
    device = Device(_key(200))
    device.add_peer(_pub(201), preshared_key=PresharedKey(bytes([0xAB]) * 32))
    text = uapi.format_get(device)
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("_key"):
            assert len(value) == 64 and value == value.lower()
            bytes.fromhex(value)
    assert _key(200).to_base64() not in text


_READ_ONLY = ("last_handshake_time_sec", "last_handshake_time_nsec", "tx_bytes", "rx_bytes")


def test_get_output_fed_to_set_reproduces_the_device() -> None:
    """As ``wg showconf | wg setconf`` does through the socket: get → set on a fresh device → the same get."""
    device = Device(_key(1))
    sockets = uapi.SocketState(listen_port=51820, fwmark=9)
    device.add_peer(
        _pub(2),
        preshared_key=PresharedKey(bytes([5]) * 32),
        endpoint=("192.0.2.2", 51820),
        allowed_ips=["10.0.0.0/24", "fd00::/64"],
    )
    device.add_peer(_pub(3), endpoint=("fd00::3", 1, 0, 0), allowed_ips=["10.1.0.0/16"])
    text = uapi.format_get(device, sockets)
    assert "listen_port=51820\nfwmark=9\n" in text
    lines = [line for line in text.splitlines() if not line.startswith(_READ_ONLY)]
    copy, copy_sockets = Device(), uapi.SocketState()
    uapi.apply_set(copy, uapi.parse_set(lines), NOW, copy_sockets)
    assert uapi.format_get(copy, copy_sockets) == text


def test_format_errno() -> None:
    assert uapi.format_errno(0) == "errno=0\n\n"
    assert uapi.format_errno(errno.EINVAL) == "errno=-22\n\n"
    assert uapi.format_errno(errno.EPROTO) == "errno=-71\n\n"


# -- in steps (issue #11 item 3) ------------------------------------------------------------------------------------


def _many_peers(count: int) -> list[str]:
    lines = []
    for i in range(count):
        lines += [f"public_key={PrivateKey.generate().public_key().to_hex()}", f"allowed_ip=10.{i >> 8}.{i & 255}.0/24"]
    return lines


def test_apply_set_steps_yields_between_slices_and_ends_where_apply_set_does() -> None:
    lines = _many_peers(1200)
    request = uapi.parse_set(lines)
    stepped, whole = Device(), Device()
    progress = list(uapi.apply_set_steps(stepped, request, NOW, peers_per_step=500))
    assert progress[:3] == [500, 1000, 1200]  # built in slices of 500, then swapped in
    uapi.apply_set(whole, uapi.parse_set(lines), NOW)
    assert uapi.format_get(stepped) == uapi.format_get(whole)
    assert len(stepped.peers) == 1200


def test_format_get_chunks_join_to_format_get() -> None:
    device = Device()
    uapi.apply_set(device, uapi.parse_set(["private_key=" + PrivateKey.generate().to_hex(), *_many_peers(1100)]), NOW)
    chunks = list(uapi.format_get_chunks(device, peers_per_chunk=500))
    assert len(chunks) == 3
    assert "".join(chunks) == uapi.format_get(device)
    assert chunks[0].startswith("private_key=")
    assert list(uapi.format_get_chunks(Device())) == [""]


def test_set_parser_fed_line_by_line_equals_parse_set() -> None:
    lines = ["private_key=" + PrivateKey.generate().to_hex(), "listen_port=51820", *_many_peers(3)]
    parser = uapi.SetParser()
    for line in lines:
        parser.feed(line)
    assert parser.finish() == uapi.parse_set(lines)


# -- built beside the device, swapped in at once (issue #11 item 3) ------------------------------------------------


def _view(device: Device) -> tuple[frozenset[PublicKey], tuple[tuple[str, PublicKey | None], ...]]:
    """What the data plane sees: the peer keys, and which peer each probed address routes to."""
    probes = {}
    for address in ("10.0.0.1", "10.0.1.1", "10.0.2.1", "10.1.0.1", "10.1.3.1", "192.168.7.7"):
        peer = device.allowed_ips.lookup_ip(address)
        probes[address] = peer.public_key if peer is not None else None
    return frozenset(device.peers), tuple(probes.items())


def _body(count: int, second_octet: int, *, replace: bool = False) -> tuple[list[str], list[PublicKey]]:
    keys = [PrivateKey.generate().public_key() for _ in range(count)]
    lines = ["replace_peers=true"] if replace else []
    for i, key in enumerate(keys):
        lines += [f"public_key={key.to_hex()}", f"allowed_ip=10.{second_octet}.{i}.0/24", "endpoint=192.0.2.1:9"]
    return lines, keys


def test_a_reader_between_the_steps_of_a_large_set_sees_the_old_or_the_new_configuration_never_half() -> None:
    """Before the change was built beside the device, a reader between two steps saw some new peers and some old
    ones (replace_peers removed them all at the first step). The expected views come from two devices configured
    in one go, independently of the stepping."""
    old_lines, old_keys = _body(250, 0)
    new_lines, _new_keys = _body(250, 1, replace=True)
    new_lines += [f"public_key={old_keys[5].to_hex()}", "allowed_ip=192.168.7.0/24"]  # one old key comes back
    old_only, new_only = Device(), Device()
    uapi.apply_set(old_only, uapi.parse_set(old_lines), NOW)
    uapi.apply_set(new_only, uapi.parse_set(old_lines), NOW)
    uapi.apply_set(new_only, uapi.parse_set(new_lines), NOW)
    old_view, new_view = _view(old_only), _view(new_only)
    assert old_view != new_view

    device = Device()
    uapi.apply_set(device, uapi.parse_set(old_lines), NOW)
    seen = []
    for _ in uapi.apply_set_steps(device, uapi.parse_set(new_lines), NOW, peers_per_step=7):
        seen.append(_view(device))
    assert all(view in (old_view, new_view) for view in seen), "a reader saw a partial configuration"
    assert seen.count(old_view) >= 250 // 7  # the change was built over many steps while the old one served
    assert seen[-1] == new_view == _view(device)
    assert uapi.format_get(device) == uapi.format_get(new_only)


def test_settings_of_live_peers_and_a_new_private_key_wait_for_the_swap() -> None:
    device = Device()
    _set(device, f"private_key={_key(1).to_hex()}\npublic_key={_pub(2).to_hex()}\nendpoint=192.0.2.1:1\n")
    psk = PresharedKey(bytes(range(32)))
    lines = [f"private_key={_key(3).to_hex()}", f"public_key={_pub(2).to_hex()}", "endpoint=192.0.2.2:2"]
    lines += [f"preshared_key={psk.to_hex()}", "persistent_keepalive_interval=25", "allowed_ip=10.9.0.0/16"]
    lines += [f"public_key={_pub(4).to_hex()}"]
    for _ in range(200):
        lines += [f"public_key={PrivateKey.generate().public_key().to_hex()}", "remove=true"]  # padding steps
    steps = uapi.apply_set_steps(device, uapi.parse_set(lines), NOW, peers_per_step=10)
    next(steps)
    next(steps)
    peer = device.peer(_pub(2))
    assert peer is not None
    assert peer.endpoint == ("192.0.2.1", 1)
    assert peer.preshared_key == PresharedKey.zero()
    assert peer.persistent_keepalive_interval == 0
    assert device.public_key == _pub(1)
    assert device.peer(_pub(4)) is None
    assert device.allowed_ips.lookup_ip("10.9.1.1") is None
    for _ in steps:
        pass
    assert device.peer(_pub(2)) is peer  # the same object: its sessions and counters carry over
    assert peer.endpoint == ("192.0.2.2", 2)
    assert peer.preshared_key == psk
    assert peer.persistent_keepalive_interval == 25
    assert device.public_key == _pub(3)
    assert device.peer(_pub(4)) is not None
    assert device.allowed_ips.lookup_ip("10.9.1.1") is peer
    assert device.datagrams_to_send()  # the new keepalive started a handshake (after the swap)


def test_a_set_dropped_half_way_leaves_the_old_configuration_as_it_was() -> None:
    old_lines, _ = _body(50, 0)
    device = Device()
    uapi.apply_set(device, uapi.parse_set([f"private_key={_key(1).to_hex()}", *old_lines]), NOW)
    before = uapi.format_get(device)
    new_lines, _ = _body(100, 1, replace=True)
    steps = uapi.apply_set_steps(
        device, uapi.parse_set([f"private_key={_key(3).to_hex()}", *new_lines]), NOW, peers_per_step=10
    )
    for _ in range(5):
        next(steps)
    steps.close()  # the driver gave up (connection lost, exception in a step)
    assert uapi.format_get(device) == before


def test_a_change_made_through_the_device_while_a_set_is_built_refuses_the_swap() -> None:
    """The copies would overwrite it: the request fails with EBUSY and the device keeps the other change."""
    lines, _ = _body(30, 1)
    device = Device()
    steps = uapi.apply_set_steps(device, uapi.parse_set(lines), NOW, peers_per_step=10)
    next(steps)
    device.add_peer(_pub(9), allowed_ips=["10.200.0.0/16"])
    with pytest.raises(UapiError) as info:
        for _ in steps:
            pass
    assert info.value.errno == errno.EBUSY
    assert set(device.peers) == {_pub(9)}
    assert device.allowed_ips.lookup_ip("10.200.1.1") is device.peer(_pub(9))
    assert device.allowed_ips.lookup_ip("10.1.0.1") is None
