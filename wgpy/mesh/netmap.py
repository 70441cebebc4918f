"""Network maps: the signed configuration that a mesh management server hands each peer.

Theory of operation: a *network map* lists every peer of the mesh (the local device included, found by its own
public key) with its allowed IPs, endpoint, groups and relay flag, plus the ordered ACL rules that say which groups
may open which connections to which. The management server signs the map with its Ed25519 key; each device holds
only the management *public* key and accepts a map only if (in this order, cheapest and least trusting first):

1. the document is a JSON object ``{"map": body, "signature": base64}`` no larger than ``MAX_DOCUMENT_SIZE``;
2. the Ed25519 signature verifies over ``canonical_json(body)`` (``BAD_SIGNATURE``): nothing of the body is looked
   at before this, so a tampered or foreign map is always reported as such;
3. the body has exactly the structure of ``NETWORK_MAP_SCHEMA`` and the cross-field rules that a schema cannot say
   (unique public keys, unique rule names, no prefix listed twice, ports only with tcp/udp, ``lo <= hi``...)
   (``MALFORMED``);
4. its serial is greater than the serial of the map in force (``STALE_SERIAL``: a replayed older map), or equal
   to it for the map saved before a restart, applied again (``resuming``);
5. it is already valid (``issued_at - max_clock_skew <= now_wall``, else ``NOT_YET_VALID``) and not yet expired
   (``now_wall < expires_at``, else ``EXPIRED``).

Key rotation. A body may carry ``"key_rotation": {"next_key": base64, "until": unix_seconds}``: the management
server announces, in a map signed by a key the device trusts, the key that replaces it; until ``until`` the device
accepts maps signed by either key, from then on only by the next one (``MeshController`` keeps that state). The
field is optional, so maps without it are unchanged. ``verify_and_parse`` takes one key or several (the
signature must verify with one of them).

Whatever fails raises ``MapRejected(reason, detail)``; nothing else escapes (the document is remote input). The
detail text is our own words plus indices and field names, never key material.

Canonical form. The signature covers ``json.dumps(body, sort_keys=True, separators=(",", ":"),
ensure_ascii=True, allow_nan=False)`` encoded as ASCII. The verifier recomputes it from the *parsed* body, so what
is verified is exactly what is used, whatever whitespace or key order the document had on the wire. The format
allows only objects, arrays, ASCII strings from a small alphabet, integers of magnitude below 2**53, booleans and
null; for such values this form is byte for byte RFC 8785 (JCS), so a management server written in another language
can sign with any JCS library. Times are therefore integers (Unix seconds), never floats.

Everything here is pure: time comes in as ``now_wall`` (Unix seconds from the caller's wall clock), nothing is read
from the environment. Ed25519 comes through ``wgpy.crypto`` (``ed25519_sign`` / ``ed25519_verify``), like every other
primitive.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal, NoReturn

from .. import crypto
from ..allowedips import Network
from ..errors import ConfigError, WgpyError
from ..keys import PublicKey

__all__ = [
    "FORMAT_VERSION",
    "MAX_CLOCK_SKEW",
    "MAX_DOCUMENT_SIZE",
    "NETWORK_MAP_SCHEMA",
    "RESERVED_RULE_NAMES",
    "WILDCARD_GROUP",
    "AclRule",
    "KeyRotation",
    "MapPeer",
    "MapRejected",
    "NetworkMap",
    "Protocol",
    "RejectReason",
    "canonical_json",
    "load_management_public_key",
    "parse_network_map",
    "sign_network_map",
    "stale_detail",
    "verify_and_parse",
]

FORMAT_VERSION: Final = 1  # the "version" field of the map body (ours)
MAX_DOCUMENT_SIZE: Final = 16 * 1024 * 1024  # bytes of JSON accepted before parsing (ours)
MAX_CLOCK_SKEW: Final = 60.0  # seconds a map may be early (issued_at in our future) and still be accepted (ours)
MAX_PEERS: Final = 65536  # peers per map (ours: bounds memory and apply time)
MAX_RULES: Final = 4096  # ACL rules per map (ours)
MAX_LIST_ITEMS: Final = 1024  # allowed IPs, groups or port ranges in one list (ours)
MAX_INTEGER: Final = 2**53 - 1  # RFC 8785 §3.2.2.3 / I-JSON: larger integers are not portable
SIGNATURE_SIZE: Final = 64  # RFC 8032 §5.1.6: an Ed25519 signature is 64 bytes
ED25519_PUBLIC_KEY_SIZE: Final = 32  # RFC 8032 §5.1.5

WILDCARD_GROUP: Final = "*"  # in a rule's src_groups/dst_groups: any address, in the map or not
DEFAULT_DENY: Final = "default-deny"  # counter name of packets no rule matched
# Counter names the packet filter uses for drops that no rule made; a rule may not take one of them.
RESERVED_RULE_NAMES: Final = frozenset(
    {DEFAULT_DENY, "malformed", "spoofed-source", "table-full", "map-expired", "fragment"}
)

Protocol = Literal["tcp", "udp", "icmp", "all"]
Action = Literal["accept", "deny"]
_PROTOCOLS: Final[tuple[Protocol, ...]] = ("tcp", "udp", "icmp", "all")
_ACTIONS: Final[tuple[Action, ...]] = ("accept", "deny")

_NAME_PATTERN: Final = r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,63}$"
_NAME_RE: Final = re.compile(_NAME_PATTERN)
# 32 bytes in base64: 43 characters whose last carries two zero spare bits, then one "=" (as wg prints keys).
_PUBLIC_KEY_PATTERN: Final = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"
_SIGNATURE_PATTERN: Final = r"^[A-Za-z0-9+/]{85}[AQgw]==$"  # 64 bytes in base64

_BODY_REQUIRED: Final = frozenset({"version", "serial", "issued_at", "expires_at", "peers", "acl"})
_BODY_KEYS: Final = _BODY_REQUIRED | {"key_rotation"}
_ROTATION_KEYS: Final = frozenset({"next_key", "until"})
_ED25519_KEY_PATTERN: Final = r"^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$"  # 32 bytes in base64
_PEER_KEYS: Final = frozenset({"public_key", "allowed_ips", "endpoint", "groups", "relay"})
_RULE_KEYS: Final = frozenset({"name", "src_groups", "dst_groups", "protocol", "ports", "action"})
_RULE_REQUIRED: Final = _RULE_KEYS - {"ports"}
_ENDPOINT_KEYS: Final = frozenset({"host", "port"})


def _group_list_schema() -> dict[str, object]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_LIST_ITEMS,
        "uniqueItems": True,
        "items": {"anyOf": [{"$ref": "#/$defs/name"}, {"const": WILDCARD_GROUP}]},
    }


NETWORK_MAP_SCHEMA: Final[dict[str, object]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "wgpy signed network map (format version 1)",
    "description": (
        "The signature is Ed25519 (RFC 8032) by the management key over the canonical JSON of `map`: "
        'json.dumps(map, sort_keys=True, separators=(",", ":"), ensure_ascii=True), which for this schema equals '
        "RFC 8785 (JCS). Rules the schema cannot express: public keys unique, rule names unique, no prefix listed by "
        "two peers, port ranges with lo <= hi, integers without fraction or exponent, expires_at > issued_at."
    ),
    "type": "object",
    "additionalProperties": False,
    "required": ["map", "signature"],
    "properties": {
        "signature": {"type": "string", "pattern": _SIGNATURE_PATTERN, "description": "base64 of 64 bytes"},
        "map": {"$ref": "#/$defs/body"},
    },
    "$defs": {
        "name": {"type": "string", "pattern": _NAME_PATTERN},
        "uint": {"type": "integer", "minimum": 0, "maximum": MAX_INTEGER},
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "body": {
            "type": "object",
            "additionalProperties": False,
            "required": sorted(_BODY_REQUIRED),
            "properties": {
                "version": {"const": FORMAT_VERSION},
                "key_rotation": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": sorted(_ROTATION_KEYS),
                    "description": "the next management key, accepted beside the current one until `until`",
                    "properties": {
                        "next_key": {"type": "string", "pattern": _ED25519_KEY_PATTERN},
                        "until": {"$ref": "#/$defs/uint", "description": "Unix seconds"},
                    },
                },
                "serial": {"$ref": "#/$defs/uint", "description": "strictly increasing; replays are rejected"},
                "issued_at": {"$ref": "#/$defs/uint", "description": "Unix seconds"},
                "expires_at": {"$ref": "#/$defs/uint", "description": "Unix seconds, > issued_at"},
                "peers": {"type": "array", "maxItems": MAX_PEERS, "items": {"$ref": "#/$defs/peer"}},
                "acl": {"type": "array", "maxItems": MAX_RULES, "items": {"$ref": "#/$defs/rule"}},
            },
        },
        "peer": {
            "type": "object",
            "additionalProperties": False,
            "required": sorted(_PEER_KEYS),
            "properties": {
                "public_key": {"type": "string", "pattern": _PUBLIC_KEY_PATTERN},
                "allowed_ips": {
                    "type": "array",
                    "maxItems": MAX_LIST_ITEMS,
                    "uniqueItems": True,
                    "items": {"type": "string", "description": "CIDR with host bits clear, e.g. 10.0.0.1/32"},
                },
                "endpoint": {
                    "anyOf": [
                        {"type": "null"},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["host", "port"],
                            "properties": {
                                "host": {"type": "string", "description": "an IPv4 or IPv6 address literal"},
                                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                            },
                        },
                    ]
                },
                "groups": {
                    "type": "array",
                    "maxItems": MAX_LIST_ITEMS,
                    "uniqueItems": True,
                    "items": {"$ref": "#/$defs/name"},
                },
                "relay": {"type": "boolean"},
            },
        },
        "rule": {
            "type": "object",
            "additionalProperties": False,
            "required": sorted(_RULE_REQUIRED),
            "properties": {
                "name": {"allOf": [{"$ref": "#/$defs/name"}, {"not": {"enum": sorted(RESERVED_RULE_NAMES)}}]},
                "src_groups": _group_list_schema(),
                "dst_groups": _group_list_schema(),
                "protocol": {"enum": list(_PROTOCOLS)},
                "ports": {
                    "type": "array",
                    "maxItems": MAX_LIST_ITEMS,
                    "description": "destination ports; empty or absent = any; [lo, hi] is an inclusive range",
                    "items": {
                        "anyOf": [
                            {"$ref": "#/$defs/port"},
                            {
                                "type": "array",
                                "minItems": 2,
                                "maxItems": 2,
                                "items": {"$ref": "#/$defs/port"},
                            },
                        ]
                    },
                },
                "action": {"enum": list(_ACTIONS)},
            },
            "if": {"properties": {"protocol": {"enum": ["icmp", "all"]}}},
            "then": {"properties": {"ports": {"maxItems": 0}}},
        },
    },
}


class RejectReason(enum.Enum):
    """Why a network map was refused. The value is the word the audit log writes."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    STALE_SERIAL = "stale_serial"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    NOT_FOR_THIS_DEVICE = "not_for_this_device"


class MapRejected(WgpyError):
    """A network map was refused; nothing was changed.

    Attributes:
        reason: The ``RejectReason``.
        detail: A short explanation in our own words (never key material).
        serial: The map's serial once its signature has verified, else ``None``.
    """

    def __init__(self, reason: RejectReason, detail: str, serial: int | None = None) -> None:
        super().__init__(f"network map rejected ({reason.value}): {detail}")
        self.reason = reason
        self.detail = detail
        self.serial = serial


@dataclass(frozen=True, slots=True)
class MapPeer:
    """One peer of the mesh as the map describes it."""

    public_key: PublicKey
    allowed_ips: tuple[Network, ...]
    endpoint: tuple[str, int] | None
    groups: frozenset[str]
    relay: bool = False


@dataclass(frozen=True, slots=True)
class AclRule:
    """One ACL rule: ``src_groups`` may open ``protocol`` connections to ``ports`` of ``dst_groups``.

    ``ports`` holds inclusive ``(lo, hi)`` destination-port ranges; empty means any port (and is the only value
    allowed for ``icmp`` and ``all``). ``"*"`` in a group set matches any address.
    """

    name: str
    src_groups: frozenset[str]
    dst_groups: frozenset[str]
    protocol: Protocol
    ports: tuple[tuple[int, int], ...]
    action: Action


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """A rotation announced in a signed map: ``next_key`` is accepted beside the current key until ``until``."""

    next_key: bytes  # 32 bytes, an Ed25519 public key
    until: int  # Unix seconds

    def public_key(self) -> crypto.Ed25519PublicKey:
        return crypto.Ed25519PublicKey.from_public_bytes(self.next_key)


@dataclass(frozen=True, slots=True)
class NetworkMap:
    """A verified network map. ``peers`` includes the local device; ``rules`` are in evaluation order."""

    serial: int
    issued_at: int
    expires_at: int
    peers: tuple[MapPeer, ...]
    rules: tuple[AclRule, ...]
    version: int = FORMAT_VERSION
    key_rotation: KeyRotation | None = None

    def peer(self, public_key: PublicKey) -> MapPeer | None:
        """The map's entry for ``public_key``, or ``None``."""
        for peer in self.peers:
            if peer.public_key == public_key:
                return peer
        return None


# ----------------------------------------------------------------------------------------------------------------
# Canonical form, signing and key loading (the management plane's side, also used by tests)
# ----------------------------------------------------------------------------------------------------------------


def canonical_json(body: Mapping[str, object]) -> bytes:
    """The bytes the signature covers: sorted keys, no whitespace, ASCII only (RFC 8785 for this format).

    Raises:
        TypeError, ValueError: ``body`` holds something JSON cannot represent (a set, NaN, ...).
    """
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text.encode("ascii")


def sign_network_map(
    body: Mapping[str, object], private_key: crypto.Ed25519PrivateKey, *, validate: bool = True
) -> dict[str, object]:
    """Sign a map body for distribution: ``{"map": body, "signature": base64}``.

    Args:
        body: The map body (see ``NETWORK_MAP_SCHEMA``).
        private_key: The management Ed25519 private key.
        validate: Check the body's structure first (``parse_network_map``), so a management server cannot sign
            a map every device would refuse. Tests turn it off to sign deliberately malformed bodies.

    Raises:
        MapRejected: ``validate`` is set and the body is malformed.
    """
    if validate:
        parse_network_map(body)
    signature = crypto.ed25519_sign(private_key, canonical_json(body))
    return {"map": dict(body), "signature": base64.b64encode(signature).decode("ascii")}


def load_management_public_key(value: crypto.Ed25519PublicKey | bytes | str) -> crypto.Ed25519PublicKey:
    """The management public key from a ``cryptography`` key, 32 raw bytes or their base64.

    Raises:
        ConfigError: ``value`` is not a 32-byte Ed25519 public key.
    """
    if isinstance(value, crypto.Ed25519PublicKey):
        return value
    if isinstance(value, str):
        try:
            value = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the management public key must be 32 bytes in base64") from None
    if not isinstance(value, bytes | bytearray) or len(value) != ED25519_PUBLIC_KEY_SIZE:
        raise ConfigError("the management public key must be 32 bytes")
    try:
        return crypto.Ed25519PublicKey.from_public_bytes(bytes(value))
    except ValueError:
        raise ConfigError("not an Ed25519 public key") from None


# ----------------------------------------------------------------------------------------------------------------
# Verification (the device's side)
# ----------------------------------------------------------------------------------------------------------------


def stale_detail(serial: int, current_serial: int, resuming: bool) -> str:
    if resuming:
        return f"serial {serial} is older than the saved {current_serial}"
    return f"serial {serial} is not greater than the current {current_serial}"


def verify_and_parse(
    document: bytes | str | Mapping[str, object],
    management_public_key: crypto.Ed25519PublicKey | Sequence[crypto.Ed25519PublicKey],
    now_wall: float,
    current_serial: int | None = None,
    *,
    max_clock_skew: float = MAX_CLOCK_SKEW,
    resuming: bool = False,
) -> NetworkMap:
    """Verify a signed map document and return the map it carries.

    Args:
        document: The JSON text (``bytes``/``str``) or the already-parsed object.
        management_public_key: The key the map must be signed with, or the keys (during a rotation) one of
            which must have signed it.
        now_wall: The current wall-clock time in Unix seconds.
        current_serial: The serial of the map in force, or ``None`` before the first map.
        max_clock_skew: Seconds by which ``issued_at`` may lie in the future (our clock may be behind).
        resuming: ``document`` is the map saved before a restart, ``current_serial`` its serial, and no map has been
            applied since: its serial may equal ``current_serial`` (the saved map, resumed); an older one is refused.

    Returns:
        The parsed ``NetworkMap``.

    Raises:
        MapRejected: With the first reason that applies, in the order of the module docstring.
    """
    body, signature = _load_envelope(document)
    try:
        signed = canonical_json(body)
    except (TypeError, ValueError, RecursionError):
        _malformed("the map holds a value JSON cannot represent")
    keys = (
        (management_public_key,)
        if isinstance(management_public_key, crypto.Ed25519PublicKey)
        else management_public_key
    )
    if not any(crypto.ed25519_verify(key, signature, signed) for key in keys):
        raise MapRejected(RejectReason.BAD_SIGNATURE, "the signature does not verify with the management key")
    netmap = parse_network_map(body)
    serial = netmap.serial
    if current_serial is not None and (serial < current_serial or (serial == current_serial and not resuming)):
        raise MapRejected(RejectReason.STALE_SERIAL, stale_detail(serial, current_serial, resuming), serial)
    if now_wall + max_clock_skew < netmap.issued_at:
        raise MapRejected(RejectReason.NOT_YET_VALID, f"issued at {netmap.issued_at}, now is {now_wall:.0f}", serial)
    if now_wall >= netmap.expires_at:
        raise MapRejected(RejectReason.EXPIRED, f"expired at {netmap.expires_at}, now is {now_wall:.0f}", serial)
    return netmap


def _malformed(detail: str) -> NoReturn:
    raise MapRejected(RejectReason.MALFORMED, detail)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            _malformed("a JSON object repeats a key")
        result[key] = value
    return result


def _reject_constant(_name: str) -> NoReturn:
    _malformed("NaN and Infinity are not JSON")


def _load_envelope(document: bytes | str | Mapping[str, object]) -> tuple[Mapping[str, object], bytes]:
    parsed: object
    if isinstance(document, bytes | bytearray | str):
        if len(document) > MAX_DOCUMENT_SIZE:
            _malformed(f"the document is larger than {MAX_DOCUMENT_SIZE} bytes")
        try:
            parsed = json.loads(document, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)
        except MapRejected:
            raise
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            _malformed("the document is not valid JSON")
    else:
        parsed = document
    if not isinstance(parsed, Mapping):
        _malformed("the document is not a JSON object")
    if set(parsed) != {"map", "signature"}:
        _malformed('the document must have exactly the keys "map" and "signature"')
    body = parsed["map"]
    signature_text = parsed["signature"]
    if not isinstance(body, Mapping) or not all(isinstance(key, str) for key in body):
        _malformed('"map" is not a JSON object')
    if not isinstance(signature_text, str):
        _malformed('"signature" is not a string')
    try:
        signature = base64.b64decode(signature_text, validate=True)
    except (binascii.Error, ValueError):
        _malformed('"signature" is not base64')
    if len(signature) != SIGNATURE_SIZE:
        _malformed(f'"signature" must be {SIGNATURE_SIZE} bytes')
    return body, signature


# ----------------------------------------------------------------------------------------------------------------
# Structure of the body (hand-written against NETWORK_MAP_SCHEMA, with clear messages)
# ----------------------------------------------------------------------------------------------------------------


def parse_network_map(body: Mapping[str, object]) -> NetworkMap:
    """Check a map body's structure and build the ``NetworkMap``; the signature is not looked at.

    Raises:
        MapRejected: ``MALFORMED``, with the path of the first offending field.
    """
    if not isinstance(body, Mapping):
        _malformed('"map" is not a JSON object')
    _exact_keys(body, _BODY_KEYS, _BODY_REQUIRED, "map")
    if _integer(body["version"], "map.version") != FORMAT_VERSION:
        _malformed(f"map.version: only format version {FORMAT_VERSION} is understood")
    serial = _integer(body["serial"], "map.serial")
    issued_at = _integer(body["issued_at"], "map.issued_at")
    expires_at = _integer(body["expires_at"], "map.expires_at")
    if expires_at <= issued_at:
        _malformed("map.expires_at must be later than map.issued_at")
    peers_raw = _array(body["peers"], "map.peers", MAX_PEERS)
    rules_raw = _array(body["acl"], "map.acl", MAX_RULES)

    peers: list[MapPeer] = []
    seen_keys: set[PublicKey] = set()
    seen_prefixes: set[Network] = set()
    for index, raw in enumerate(peers_raw):
        peer = _parse_peer(raw, f"map.peers[{index}]")
        if peer.public_key in seen_keys:
            _malformed(f"map.peers[{index}].public_key: listed twice")
        seen_keys.add(peer.public_key)
        for network in peer.allowed_ips:
            if network in seen_prefixes:
                _malformed(f"map.peers[{index}].allowed_ips: {network} is listed by another peer too")
            seen_prefixes.add(network)
        peers.append(peer)

    rules: list[AclRule] = []
    seen_names: set[str] = set()
    for index, raw in enumerate(rules_raw):
        rule = _parse_rule(raw, f"map.acl[{index}]")
        if rule.name in seen_names:
            _malformed(f"map.acl[{index}].name: {rule.name!r} is used by another rule")
        seen_names.add(rule.name)
        rules.append(rule)
    rotation = _parse_rotation(body["key_rotation"], issued_at) if "key_rotation" in body else None
    return NetworkMap(serial, issued_at, expires_at, tuple(peers), tuple(rules), key_rotation=rotation)


def _parse_rotation(raw: object, issued_at: int) -> KeyRotation:
    path = "map.key_rotation"
    if not isinstance(raw, Mapping):
        _malformed(f"{path}: not an object")
    _exact_keys(raw, _ROTATION_KEYS, _ROTATION_KEYS, path)
    text = raw["next_key"]
    if not isinstance(text, str) or not re.fullmatch(_ED25519_KEY_PATTERN, text):
        _malformed(f"{path}.next_key: not 32 bytes in base64")
    key = base64.b64decode(text, validate=True)
    try:
        crypto.Ed25519PublicKey.from_public_bytes(key)
    except ValueError:
        _malformed(f"{path}.next_key: not an Ed25519 public key")
    until = _integer(raw["until"], f"{path}.until")
    if until <= issued_at:
        _malformed(f"{path}.until must be later than map.issued_at")
    return KeyRotation(key, until)


def _parse_peer(raw: object, path: str) -> MapPeer:
    if not isinstance(raw, Mapping):
        _malformed(f"{path}: not an object")
    _exact_keys(raw, _PEER_KEYS, _PEER_KEYS, path)
    key_text = raw["public_key"]
    if not isinstance(key_text, str):
        _malformed(f"{path}.public_key: not a string")
    try:
        public_key = PublicKey.from_base64(key_text)
    except ConfigError:
        _malformed(f"{path}.public_key: not a 32-byte key in base64")
    networks: list[Network] = []
    for index, item in enumerate(_array(raw["allowed_ips"], f"{path}.allowed_ips", MAX_LIST_ITEMS)):
        if not isinstance(item, str) or not item.isascii() or "%" in item:
            # (A zone index, fe80::1%eth0, names an interface of the sender: meaningless in a shared map.)
            _malformed(f"{path}.allowed_ips[{index}]: not a string holding a CIDR prefix")
        try:
            network = ipaddress.ip_network(item, strict=True)
        except ValueError:
            _malformed(f"{path}.allowed_ips[{index}]: not a CIDR prefix with its host bits clear")
        if network in networks:
            _malformed(f"{path}.allowed_ips[{index}]: listed twice")
        networks.append(network)
    endpoint = _parse_endpoint(raw["endpoint"], f"{path}.endpoint")
    groups = _names(raw["groups"], f"{path}.groups", allow_wildcard=False, allow_empty=True)
    relay = raw["relay"]
    if not isinstance(relay, bool):
        _malformed(f"{path}.relay: not a boolean")
    return MapPeer(public_key, tuple(networks), endpoint, groups, relay)


def _parse_endpoint(raw: object, path: str) -> tuple[str, int] | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        _malformed(f"{path}: not an object or null")
    _exact_keys(raw, _ENDPOINT_KEYS, _ENDPOINT_KEYS, path)
    host = raw["host"]
    if not isinstance(host, str) or not host.isascii():
        _malformed(f"{path}.host: not a string")
    try:
        # An address literal only: a host name would make the driver resolve it, which is I/O the map must not cause.
        address = ipaddress.ip_address(host)
    except ValueError:
        _malformed(f"{path}.host: not an IPv4 or IPv6 address")
    port = _integer(raw["port"], f"{path}.port")
    if not 1 <= port <= 65535:
        _malformed(f"{path}.port: not between 1 and 65535")
    return str(address), port


def _parse_rule(raw: object, path: str) -> AclRule:
    if not isinstance(raw, Mapping):
        _malformed(f"{path}: not an object")
    _exact_keys(raw, _RULE_KEYS, _RULE_REQUIRED, path)
    name = raw["name"]
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        _malformed(f"{path}.name: not a name of 1-64 characters from [A-Za-z0-9_.:@-]")
    if name in RESERVED_RULE_NAMES:
        _malformed(f"{path}.name: {name!r} is reserved for the filter's own counters")
    src_groups = _names(raw["src_groups"], f"{path}.src_groups", allow_wildcard=True, allow_empty=False)
    dst_groups = _names(raw["dst_groups"], f"{path}.dst_groups", allow_wildcard=True, allow_empty=False)
    protocol = raw["protocol"]
    if not isinstance(protocol, str) or protocol not in _PROTOCOLS:
        _malformed(f"{path}.protocol: not one of {', '.join(_PROTOCOLS)}")
    action = raw["action"]
    if not isinstance(action, str) or action not in _ACTIONS:
        _malformed(f"{path}.action: not accept or deny")
    ports: list[tuple[int, int]] = []
    for index, item in enumerate(_array(raw.get("ports", []), f"{path}.ports", MAX_LIST_ITEMS)):
        item_path = f"{path}.ports[{index}]"
        if isinstance(item, list):
            if len(item) != 2:
                _malformed(f"{item_path}: a range is [lo, hi]")
            lo, hi = _port(item[0], item_path), _port(item[1], item_path)
            if lo > hi:
                _malformed(f"{item_path}: lo is greater than hi")
        else:
            lo = hi = _port(item, item_path)
        ports.append((lo, hi))
    if ports and protocol not in ("tcp", "udp"):
        _malformed(f"{path}.ports: ports apply only to tcp and udp rules")
    return AclRule(
        name,
        src_groups,
        dst_groups,
        _PROTOCOLS[_PROTOCOLS.index(protocol)],
        tuple(ports),
        _ACTIONS[_ACTIONS.index(action)],
    )


def _exact_keys(raw: Mapping[str, object], allowed: frozenset[str], required: frozenset[str], path: str) -> None:
    keys = set(raw)
    missing = required - keys
    if missing:
        _malformed(f"{path}: missing {', '.join(sorted(missing))}")
    unknown = keys - allowed
    if unknown:
        # Unknown fields are refused rather than ignored: a misspelt "ports" must not silently mean "any port".
        shown = ", ".join(repr(key)[:40] for key in sorted(str(key) for key in unknown)[:3])
        _malformed(f"{path}: unknown field {shown}")


def _integer(raw: object, path: str) -> int:
    # bool is an int subclass in Python; JSON true is not a number.
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= MAX_INTEGER:
        _malformed(f"{path}: not an integer between 0 and 2**53 - 1")
    return raw


def _port(raw: object, path: str) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= 65535:
        _malformed(f"{path}: not a port between 0 and 65535")
    return raw


def _array(raw: object, path: str, limit: int) -> Sequence[object]:
    if not isinstance(raw, list | tuple):
        _malformed(f"{path}: not an array")
    if len(raw) > limit:
        _malformed(f"{path}: more than {limit} items")
    return raw


def _names(raw: object, path: str, *, allow_wildcard: bool, allow_empty: bool) -> frozenset[str]:
    items = _array(raw, path, MAX_LIST_ITEMS)
    if not items and not allow_empty:
        _malformed(f"{path}: empty (use [{WILDCARD_GROUP!r}] for any)")
    names: set[str] = set()
    for index, item in enumerate(items):
        if not isinstance(item, str) or not (_NAME_RE.fullmatch(item) or (allow_wildcard and item == WILDCARD_GROUP)):
            _malformed(f"{path}[{index}]: not a group name")
        if item in names:
            _malformed(f"{path}[{index}]: listed twice")
        names.add(item)
    return frozenset(names)
