"""The cross-platform userspace configuration protocol (UAPI) as pure text functions (wireguard-go device/uapi.go).

Theory of operation: ``wg`` talks to a userspace implementation over a unix socket with a line protocol: a request
``get=1`` answered by ``key=value`` lines, or ``set=1`` followed by ``key=value`` lines, each answered by
``errno=N`` and a blank line. This module knows the text and the Device API and nothing about sockets (the socket
lives in ``drivers/uapi_server.py``):

- ``format_get(device)`` writes the ``get=1`` answer, keys in lowercase hex as wireguard-go writes them;
- ``parse_set(lines)`` reads a whole ``set=1`` body into a ``SetRequest`` and validates every value, raising
  ``UapiError`` (EINVAL, or EPROTO for a line that is not ``key=value``) before anything is applied;
- ``apply_set(device, request, now)`` applies a validated request. Unlike wireguard-go, which applies lines as it
  reads them and can leave half a change behind, a request that fails validation changes nothing.

``listen_port`` and ``fwmark`` are socket state, which the device does not have: they belong to the driver, which
exposes them through the small ``SocketSettings`` protocol (``Tunnel`` is one; ``SocketState`` is a plain holder
for sans-I/O use). ``format_get`` reads them from there. A driver applies the socket half of a request itself,
before ``apply_set`` (so that a port that cannot be bound changes nothing); ``apply_set`` only writes them when it
is given a ``SocketSettings`` to write to.

Errno values travel negated on the wire (``errno=-22``), as wireguard-go writes them; ``wg`` negates them back.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from .device import Device, IPNetwork
from .errors import ConfigError, UapiError
from .events import Endpoint, endpoint_is_ipv6
from .keys import PresharedKey, PrivateKey, PublicKey

__all__ = [
    "PeerChange",
    "SetRequest",
    "SocketSettings",
    "SocketState",
    "apply_set",
    "format_endpoint",
    "format_errno",
    "format_get",
    "parse_endpoint",
    "parse_set",
]

PROTOCOL_VERSION = 1
K = TypeVar("K", PrivateKey, PublicKey, PresharedKey)


def format_errno(errno: int) -> str:
    """The closing line of every answer: ``errno=0``, or the negated errno of a failure (wireguard-go's sign)."""
    return f"errno={-errno if errno else 0}\n\n"


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint[0], endpoint[1]
    if endpoint_is_ipv6(endpoint):
        if len(endpoint) == 4 and endpoint[3] and "%" not in host:
            host = f"{host}%{endpoint[3]}"  # a link-local address means nothing without its interface
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def parse_endpoint(text: str) -> Endpoint:
    """``1.2.3.4:51820`` or ``[fd00::1]:51820`` (optionally ``[fe80::1%eth0]:51820`` or ``[fe80::1%2]:51820``) to a
    socket address tuple."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not _is_decimal(port_text):
        raise UapiError(_errno.EINVAL, "endpoint must be IP:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise UapiError(_errno.EINVAL, "endpoint port out of range")
    if host.startswith("[") and host.endswith("]"):
        address, percent, scope = host[1:-1].partition("%")
        if percent and not scope:
            raise UapiError(_errno.EINVAL, "endpoint has an empty scope")
        try:
            # Normalized (compressed, lowercase) as the socket reports a sender, so that a reply from the
            # configured endpoint is not mistaken for a roam.
            address = str(ipaddress.IPv6Address(address))
        except ValueError:
            raise UapiError(_errno.EINVAL, "endpoint has an invalid IPv6 address") from None
        scope_id = 0
        if _is_decimal(scope):
            scope_id = int(scope)
        elif scope:
            # An interface name, as wg(8) writes a link-local endpoint (getnameinfo gives "fe80::1%eth0"). The core
            # never looks names up: the name stays in the host string, which the driver's sendto resolves.
            if len(scope) > 15 or not scope.isascii() or not scope.isprintable() or any(c in " /%" for c in scope):
                raise UapiError(_errno.EINVAL, "endpoint scope must be an interface name or number")
            address = f"{address}%{scope}"
        return (address, port, 0, scope_id)
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise UapiError(_errno.EINVAL, "endpoint has an invalid IPv4 address") from None
    return (host, port)


def _is_decimal(text: str) -> bool:
    """ASCII digits only, and few enough for ``int()``: ``str.isdigit`` alone accepts "²" and "٣", which ``int``
    rejects or reads, and ``int`` refuses more than 4300 digits."""
    return 0 < len(text) <= 20 and text.isascii() and text.isdigit()


class SocketSettings(Protocol):
    """The driver's socket state that UAPI shows and sets: the UDP port and the fwmark (SO_MARK; 0 for none)."""

    listen_port: int
    fwmark: int


@dataclass
class SocketState:
    """A plain ``SocketSettings`` (tests, in-memory setups): what a driver would bind."""

    listen_port: int = 0
    fwmark: int = 0


@dataclass
class PeerChange:
    """What a ``set=1`` request says about one peer."""

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[IPNetwork] = field(default_factory=list)


@dataclass
class SetRequest:
    """A validated ``set=1`` request."""

    private_key: PrivateKey | None = None
    clear_private_key: bool = False
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerChange] = field(default_factory=list)


def _invalid(message: str) -> UapiError:
    return UapiError(_errno.EINVAL, message)


def _shown(key: str) -> str:
    """A key name for an error message: shown only when it looks like a key name, never when it could be a secret
    pasted in the wrong place (errors never carry key material)."""
    if len(key) <= 32 and key.isascii() and key.replace("_", "").isalpha():
        return repr(key)
    return "(not shown)"


def _parse_bool(key: str, value: str) -> bool:
    if value != "true":
        raise _invalid(f"{key} accepts only true")
    return True


def _parse_int(key: str, value: str, limit: int) -> int:
    if not _is_decimal(value) or int(value) > limit:
        raise _invalid(f"{key} must be an integer between 0 and {limit}")
    return int(value)


def _parse_key(kind: type[K], key: str, value: str) -> K:
    try:
        return kind.from_hex(value)
    except ConfigError:
        raise _invalid(f"{key} must be 64 hex digits") from None


def parse_set(lines: Iterable[str]) -> SetRequest:
    """Validate the body of a ``set=1`` request (the lines after ``set=1``, up to the blank line).

    Raises:
        UapiError: EPROTO for a line that is not ``key=value``; EINVAL for an unknown key or a bad value.
            Error messages never include key material.
    """
    request = SetRequest()
    peer: PeerChange | None = None
    for line in lines:
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(_errno.EPROTO, "a line is not key=value")
        if peer is None:
            if key == "private_key":
                private = _parse_key(PrivateKey, key, value)
                # Test the hex, not the key: PrivateKey clamps, so 32 zero bytes do not stay zero (wg sends zeros
                # for `wg set IF private-key /dev/null`, meaning "remove the key").
                if bytes.fromhex(value) == bytes(32):
                    request.private_key, request.clear_private_key = None, True
                else:
                    request.private_key, request.clear_private_key = private, False
                continue
            if key == "listen_port":
                request.listen_port = _parse_int(key, value, 65535)
                continue
            if key == "fwmark":
                request.fwmark = _parse_int(key, value, 2**32 - 1)
                continue
            if key == "replace_peers":
                request.replace_peers = _parse_bool(key, value)
                continue
        if key == "public_key":
            peer = PeerChange(_parse_key(PublicKey, key, value))
            request.peers.append(peer)
            continue
        if peer is None:
            raise _invalid(f"unknown device key {_shown(key)}")
        if key == "remove":
            peer.remove = _parse_bool(key, value)
        elif key == "update_only":
            peer.update_only = _parse_bool(key, value)
        elif key == "preshared_key":
            peer.preshared_key = _parse_key(PresharedKey, key, value)
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive_interval = _parse_int(key, value, 65535)
        elif key == "replace_allowed_ips":
            peer.replace_allowed_ips = _parse_bool(key, value)
        elif key == "allowed_ip":
            try:
                peer.allowed_ips.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise _invalid("allowed_ip must be an IP prefix") from None
        elif key == "protocol_version":
            if value != str(PROTOCOL_VERSION):
                raise _invalid("only protocol_version=1 is supported")
        else:
            raise _invalid(f"unknown peer key {_shown(key)}")
    return request


def apply_set(device: Device, request: SetRequest, now: float, sockets: SocketSettings | None = None) -> None:
    """Apply a validated request to ``device``, and its ``listen_port`` and ``fwmark`` to ``sockets`` if given.

    A driver with real sockets applies those two itself first (it must bind the new port before anything else
    changes) and passes no ``sockets``.
    """
    if sockets is not None:
        if request.listen_port is not None:
            sockets.listen_port = request.listen_port
        if request.fwmark is not None:
            sockets.fwmark = request.fwmark
    if request.clear_private_key:
        device.set_private_key(None)
    elif request.private_key is not None:
        device.set_private_key(request.private_key)
    if request.replace_peers:
        device.clear_peers()
    own = device.public_key
    for change in request.peers:
        if change.remove:
            device.remove_peer(change.public_key)
            continue
        peer = device.peer(change.public_key)
        if peer is None:
            if change.update_only or (own is not None and change.public_key == own):
                continue  # wireguard-go ignores a peer with our own key
            peer = device.add_peer(change.public_key, now=now)
        if change.preshared_key is not None:
            device.set_preshared_key(peer, change.preshared_key)
        if change.endpoint is not None:
            peer.endpoint = change.endpoint
        if change.replace_allowed_ips:
            device.set_allowed_ips(peer, change.allowed_ips)
        else:
            for network in change.allowed_ips:
                device.allowed_ips.insert(network, peer)
        if change.persistent_keepalive_interval is not None:
            device.set_persistent_keepalive(peer, change.persistent_keepalive_interval, now)


def format_get(device: Device, sockets: SocketSettings | None = None) -> str:
    """The ``get=1`` answer, without the closing ``errno=0`` line; ``listen_port`` and ``fwmark`` come from the
    driver's ``sockets`` (none for a device without sockets)."""
    out: list[str] = []
    if device.private_key is not None:
        out.append(f"private_key={device.private_key.to_hex()}")
    if sockets is not None and sockets.listen_port:
        out.append(f"listen_port={sockets.listen_port}")
    if sockets is not None and sockets.fwmark:
        out.append(f"fwmark={sockets.fwmark}")
    for peer in device.peers.values():
        out.append(f"public_key={peer.public_key.to_hex()}")
        out.append(f"preshared_key={peer.preshared_key.to_hex()}")
        out.append(f"protocol_version={PROTOCOL_VERSION}")
        if peer.endpoint is not None:
            out.append(f"endpoint={format_endpoint(peer.endpoint)}")
        if peer.last_handshake_at is None:
            seconds = nanos = 0
        else:
            seconds, nanos = divmod(device.wall_ns_at(peer.last_handshake_at), 1_000_000_000)
        out.append(f"last_handshake_time_sec={seconds}")
        out.append(f"last_handshake_time_nsec={nanos}")
        out.append(f"tx_bytes={peer.tx_bytes}")
        out.append(f"rx_bytes={peer.rx_bytes}")
        out.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        out.extend(f"allowed_ip={network}" for network in device.allowed_ips.entries_for_peer(peer))
    return "".join(line + "\n" for line in out)
