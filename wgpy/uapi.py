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

A server serves large configurations (100,000 peers) without stopping its data plane for seconds: ``SetParser``
validates a body line by line as it arrives, ``apply_set_steps`` builds the new configuration beside the device
``PEERS_PER_STEP`` peers at a time and swaps it in at once (``device.ConfigurationChange``: the data plane sees the
old configuration or the new one, never half of it), and ``format_get_chunks`` writes the answer
``PEERS_PER_STEP`` peers at a time, each a generator the driver resumes between turns of its event loop. ``parse_set``, ``apply_set`` and ``format_get`` are the same
operations in one go.

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
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from .device import ConfigurationChange, Device, IPNetwork
from .errors import ConfigError, UapiError
from .events import Endpoint, endpoint_is_ipv6
from .keys import PresharedKey, PrivateKey, PublicKey

if TYPE_CHECKING:
    from .peer import Peer

__all__ = [
    "PEERS_PER_STEP",
    "PeerChange",
    "SetParser",
    "SetRequest",
    "SocketSettings",
    "SocketState",
    "apply_set",
    "apply_set_steps",
    "format_endpoint",
    "format_errno",
    "format_get",
    "format_get_chunks",
    "parse_endpoint",
    "parse_set",
]

PROTOCOL_VERSION = 1
PEERS_PER_STEP: Final = 500  # peers applied or formatted per step: about 10 ms of work (ours)
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


@dataclass(slots=True)
class PeerChange:
    """What a ``set=1`` request says about one peer.

    The allowed IPs are kept packed (``packed_allowed_ips``: version, prefix length and network address, 6 or 18
    bytes each) until the change is applied: an ``ipaddress`` network object costs about 500 bytes, so a request of
    64 MiB of ``allowed_ip`` lines would otherwise have taken 1.5 GB to hold while it was validated. ``allowed_ips``
    gives them back as networks.
    """

    public_key: PublicKey
    remove: bool = False
    update_only: bool = False
    preshared_key: PresharedKey | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False
    packed_allowed_ips: bytearray = field(default_factory=bytearray)

    def add_allowed_ip(self, network: IPNetwork) -> None:
        self.packed_allowed_ips += bytes((network.version, network.prefixlen)) + network.network_address.packed

    @property
    def allowed_ips(self) -> list[IPNetwork]:
        """The allowed IPs, in request order."""
        networks: list[IPNetwork] = []
        packed, offset = self.packed_allowed_ips, 0
        while offset < len(packed):
            version, prefixlen = packed[offset], packed[offset + 1]
            size = 4 if version == 4 else 16
            address = int.from_bytes(packed[offset + 2 : offset + 2 + size], "big")
            network: IPNetwork
            if version == 4:
                network = ipaddress.IPv4Network((address, prefixlen))
            else:
                network = ipaddress.IPv6Network((address, prefixlen))
            networks.append(network)
            offset += 2 + size
        return networks


@dataclass(slots=True)
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


class SetParser:
    """Validates a ``set=1`` body one line at a time, so that a server can parse while it reads (and never holds
    the lines of a large request): ``feed`` each line, then ``finish``. ``parse_set`` is the same over a list.

    Raises (from ``feed``):
        UapiError: EPROTO for a line that is not ``key=value``; EINVAL for an unknown key or a bad value. Error
            messages never include key material. After an error the parser must not be fed again.
    """

    __slots__ = ("_peer", "request")

    def __init__(self) -> None:
        self.request = SetRequest()
        self._peer: PeerChange | None = None

    def finish(self) -> SetRequest:
        """The validated request (after the last line)."""
        return self.request

    def feed(self, line: str) -> None:
        """Validate one line of the body (without its newline)."""
        request, peer = self.request, self._peer
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
                return
            if key == "listen_port":
                request.listen_port = _parse_int(key, value, 65535)
                return
            if key == "fwmark":
                request.fwmark = _parse_int(key, value, 2**32 - 1)
                return
            if key == "replace_peers":
                request.replace_peers = _parse_bool(key, value)
                return
        if key == "public_key":
            self._peer = PeerChange(_parse_key(PublicKey, key, value))
            request.peers.append(self._peer)
            return
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
                peer.add_allowed_ip(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise _invalid("allowed_ip must be an IP prefix") from None
        elif key == "protocol_version":
            if value != str(PROTOCOL_VERSION):
                raise _invalid("only protocol_version=1 is supported")
        else:
            raise _invalid(f"unknown peer key {_shown(key)}")


def parse_set(lines: Iterable[str]) -> SetRequest:
    """Validate the body of a ``set=1`` request (the lines after ``set=1``, up to the blank line).

    Raises:
        UapiError: EPROTO for a line that is not ``key=value``; EINVAL for an unknown key or a bad value.
            Error messages never include key material.
    """
    parser = SetParser()
    for line in lines:
        parser.feed(line)
    return parser.finish()


def apply_set(device: Device, request: SetRequest, now: float, sockets: SocketSettings | None = None) -> None:
    """Apply a validated request to ``device``, and its ``listen_port`` and ``fwmark`` to ``sockets`` if given.

    A driver with real sockets applies those two itself first (it must bind the new port before anything else
    changes) and passes no ``sockets``.
    """
    for _ in apply_set_steps(device, request, now, sockets):
        pass


def apply_set_steps(
    device: Device,
    request: SetRequest,
    now: float,
    sockets: SocketSettings | None = None,
    peers_per_step: int = PEERS_PER_STEP,
) -> Generator[int, None, None]:
    """``apply_set`` in steps: a generator that yields between slices of ``peers_per_step`` peers, so that a driver
    can let its data plane run between them (a 100,000-peer request takes seconds).

    The change is built beside the device (``Device.begin_change``) and swapped in by one step: until then the
    device, and so the data plane, sees the old configuration whole, and from that step on the new one whole. The
    steps after the swap only finish off removed peers and send the keepalives of new persistent keepalives. A
    generator closed before the swap (or failing) leaves the device as it was. The request was validated whole
    before the first step; a driver must not configure the device otherwise before the generator is exhausted
    (the swap then raises ``UapiError`` EBUSY and changes nothing). ``now`` is the time of the request. Yields the
    number of peer changes applied so far, then that of the peers finished after the swap.
    """
    if sockets is not None:
        if request.listen_port is not None:
            sockets.listen_port = request.listen_port
        if request.fwmark is not None:
            sockets.fwmark = request.fwmark
    if request.clear_private_key:
        change = device.begin_change(private_key=None, replace_peers=request.replace_peers)
    elif request.private_key is not None:
        change = device.begin_change(private_key=request.private_key, replace_peers=request.replace_peers)
    else:
        change = device.begin_change(replace_peers=request.replace_peers)
    try:
        own = change.public_key
        done = 0
        for done, item in enumerate(request.peers, start=1):
            _apply_peer(change, item, own)
            if done % peers_per_step == 0:
                yield done
        try:
            change.commit(now)
        except ConfigError as exc:
            raise UapiError(_errno.EBUSY, str(exc)) from None
    finally:
        change.abandon()  # does nothing once committed
    yield done
    yield from change.finish_steps(now, peers_per_step)


def _apply_peer(change: ConfigurationChange, item: PeerChange, own: PublicKey | None) -> None:
    if item.remove:
        change.remove_peer(item.public_key)
        return
    peer = change.peer(item.public_key)
    if peer is None:
        if item.update_only or (own is not None and item.public_key == own):
            return  # wireguard-go ignores a peer with our own key
        peer = change.add_peer(item.public_key)
    if item.preshared_key is not None:
        change.set_preshared_key(peer, item.preshared_key)
    if item.endpoint is not None:
        change.set_endpoint(peer, item.endpoint)
    networks = item.allowed_ips
    if item.replace_allowed_ips:
        change.set_allowed_ips(peer, networks)
    else:
        for network in networks:
            change.insert_allowed_ip(network, peer)
    if item.persistent_keepalive_interval is not None:
        change.set_persistent_keepalive(peer, item.persistent_keepalive_interval)


def format_get(device: Device, sockets: SocketSettings | None = None) -> str:
    """The ``get=1`` answer, without the closing ``errno=0`` line; ``listen_port`` and ``fwmark`` come from the
    driver's ``sockets`` (none for a device without sockets)."""
    return "".join(format_get_chunks(device, sockets))


def format_get_chunks(
    device: Device, sockets: SocketSettings | None = None, peers_per_chunk: int = PEERS_PER_STEP
) -> Iterator[str]:
    """``format_get`` in pieces of ``peers_per_chunk`` peers, so that a driver can write a large answer while its
    data plane runs. The peers are those of the device when the generator starts; a driver must not change the
    configuration before it is exhausted (counters and handshake times read later are as fresh as the chunk)."""
    out: list[str] = []
    if device.private_key is not None:
        out.append(f"private_key={device.private_key.to_hex()}\n")
    if sockets is not None and sockets.listen_port:
        out.append(f"listen_port={sockets.listen_port}\n")
    if sockets is not None and sockets.fwmark:
        out.append(f"fwmark={sockets.fwmark}\n")
    peers = list(device.peers.values())
    for start in range(0, len(peers), peers_per_chunk):
        for peer in peers[start : start + peers_per_chunk]:
            out.append(_format_peer(device, peer))
        yield "".join(out)
        out = []
    if out or not peers:
        yield "".join(out)


def _format_peer(device: Device, peer: Peer) -> str:
    if peer.last_handshake_at is None:
        seconds = nanos = 0
    else:
        seconds, nanos = divmod(device.wall_ns_at(peer.last_handshake_at), 1_000_000_000)
    lines = [
        f"public_key={peer.public_key.to_hex()}",
        f"preshared_key={peer.preshared_key.to_hex()}",
        f"protocol_version={PROTOCOL_VERSION}",
    ]
    if peer.endpoint is not None:
        lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
    lines += [
        f"last_handshake_time_sec={seconds}",
        f"last_handshake_time_nsec={nanos}",
        f"tx_bytes={peer.tx_bytes}",
        f"rx_bytes={peer.rx_bytes}",
        f"persistent_keepalive_interval={peer.persistent_keepalive_interval}",
    ]
    lines.extend(f"allowed_ip={network}" for network in device.allowed_ips.entries_for_peer(peer))
    return "".join(line + "\n" for line in lines)
