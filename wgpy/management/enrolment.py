"""Enrolment rules: setup keys, the address pool and ephemeral peers, as functions of stored rows and ``now``.

Theory of operation: an operator creates a *setup key* (one-off, or reusable up to ``usage_limit`` uses; expires
after ``expires_in``, 24 h by default; may add the new peer to ``auto_groups``, hold it for approval, or make it
*ephemeral*: deleted once offline for ``ephemeral_timeout``). A device presents the key once to enrol its WireGuard
public key. ``check_setup_key`` says whether a stored key may be used now; the store then applies the use with a
guarded ``UPDATE ... WHERE used < usage_limit``, so concurrent enrolments cannot overspend a key whatever this
process believes. ``allocate_address`` picks the lowest free address of the pool, skipping the network and
broadcast addresses and any address quarantined after its peer was revoked or deleted (``ADDRESS_QUARANTINE``); a
unique index on addresses makes a race between two enrolments fail one of them, which then retries. It is the
rule's plain statement over a set of taken addresses; the server finds the same address without reading every
peer (``ManagementServer._allocate_address``), and the tests check one against the other.

Pure: no database, no clock. Errors carry the API error code.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Final

from .policy import valid_name

__all__ = [
    "ADDRESS_QUARANTINE",
    "DEFAULT_EPHEMERAL_TIMEOUT",
    "DEFAULT_NETWORK",
    "DEFAULT_SETUP_KEY_LIFETIME",
    "EnrolmentError",
    "SetupKeyRequest",
    "SetupKeyRow",
    "allocate_address",
    "check_setup_key",
    "ephemeral_expired",
    "parse_setup_key_request",
]

DEFAULT_NETWORK: Final = "100.64.0.0/16"  # RFC 6598 shared address space, as Netbird and Tailscale use
DEFAULT_SETUP_KEY_LIFETIME: Final = 86400  # seconds (security model: setup keys expire, default 24 hours)
MAX_SETUP_KEY_LIFETIME: Final = 365 * 86400  # seconds (ours)
MIN_SETUP_KEY_LIFETIME: Final = 60  # seconds (ours)
MAX_USAGE_LIMIT: Final = 1_000_000  # uses of one reusable key (ours)
DEFAULT_EPHEMERAL_TIMEOUT: Final = 600  # seconds offline before an ephemeral peer is deleted (ours)
MAX_EPHEMERAL_TIMEOUT: Final = 30 * 86400  # seconds (ours)
ADDRESS_QUARANTINE: Final = 86400  # seconds a released address stays unused (contract)
MAX_AUTO_GROUPS: Final = 64  # groups one setup key may add (ours)
_SETUP_KEY_FIELDS: Final = frozenset(
    {
        "name",
        "reusable",
        "usage_limit",
        "expires_in",
        "auto_groups",
        "approval_required",
        "ephemeral",
        "ephemeral_timeout",
    }
)


class EnrolmentError(ValueError):
    """An enrolment or setup-key request is refused. ``code`` is the API error code, ``status`` the HTTP status."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


@dataclass(frozen=True, slots=True)
class SetupKeyRow:
    """What the store keeps of a setup key (its hash is not needed here)."""

    id: str
    reusable: bool
    usage_limit: int
    used: int
    expires_at: float
    revoked: bool
    auto_groups: tuple[str, ...] = ()
    approval_required: bool = False
    ephemeral: bool = False
    ephemeral_timeout: int = DEFAULT_EPHEMERAL_TIMEOUT


@dataclass(frozen=True, slots=True)
class SetupKeyRequest:
    """A validated ``POST /api/v1/setup-keys`` body."""

    name: str
    reusable: bool
    usage_limit: int
    expires_in: int
    auto_groups: tuple[str, ...]
    approval_required: bool
    ephemeral: bool
    ephemeral_timeout: int


def check_setup_key(row: SetupKeyRow | None, now: float) -> SetupKeyRow:
    """Whether a setup key may enrol a peer now; returns the row.

    Raises:
        EnrolmentError: ``unknown_setup_key`` (401), ``revoked_setup_key``, ``expired_setup_key`` or
            ``used_setup_key`` (403).
    """
    if row is None:
        raise EnrolmentError("unknown_setup_key", "no such setup key", 401)
    if row.revoked:
        raise EnrolmentError("revoked_setup_key", "the setup key was revoked", 403)
    if now >= row.expires_at:
        raise EnrolmentError("expired_setup_key", "the setup key has expired", 403)
    if row.used >= row.usage_limit:
        raise EnrolmentError("used_setup_key", "the setup key has been used up", 403)
    return row


def _bool(body: Mapping[str, object], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise EnrolmentError("invalid_value", f"{name} must be true or false")
    return value


def _int(body: Mapping[str, object], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise EnrolmentError("invalid_value", f"{name} must be an integer from {lo} to {hi}")
    return value


def parse_setup_key_request(body: object) -> SetupKeyRequest:
    """Validate a setup-key creation body (unknown fields refused).

    Raises:
        EnrolmentError: ``malformed``, ``unknown_field`` or ``invalid_value`` (400).
    """
    if not isinstance(body, Mapping):
        raise EnrolmentError("malformed", "the body must be a JSON object")
    unknown = sorted(str(key) for key in body if key not in _SETUP_KEY_FIELDS)
    if unknown:
        raise EnrolmentError("unknown_field", f"unknown field {unknown[0][:40]!r}")
    name = body.get("name")
    if not valid_name(name):
        raise EnrolmentError("invalid_value", "name must be 1-64 characters of [A-Za-z0-9_.:@-]")
    assert isinstance(name, str)  # noqa: S101 (valid_name checked it; for the type checker)
    reusable = _bool(body, "reusable", False)
    usage_limit = _int(body, "usage_limit", 1, 1, MAX_USAGE_LIMIT)
    if not reusable and usage_limit != 1:
        raise EnrolmentError("invalid_value", "a one-off key (reusable: false) has usage_limit 1")
    expires_in = _int(body, "expires_in", DEFAULT_SETUP_KEY_LIFETIME, MIN_SETUP_KEY_LIFETIME, MAX_SETUP_KEY_LIFETIME)
    raw_groups = body.get("auto_groups", [])
    if not isinstance(raw_groups, list) or len(raw_groups) > MAX_AUTO_GROUPS:
        raise EnrolmentError("invalid_value", f"auto_groups must be a list of at most {MAX_AUTO_GROUPS} group names")
    groups: list[str] = []
    for item in raw_groups:
        if not valid_name(item) or item in groups:
            raise EnrolmentError("invalid_value", "auto_groups must hold distinct group names")
        groups.append(str(item))
    approval_required = _bool(body, "approval_required", False)
    ephemeral = _bool(body, "ephemeral", False)
    timeout = _int(body, "ephemeral_timeout", DEFAULT_EPHEMERAL_TIMEOUT, 60, MAX_EPHEMERAL_TIMEOUT)
    if "ephemeral_timeout" in body and not ephemeral:
        raise EnrolmentError("invalid_value", "ephemeral_timeout is only for ephemeral keys")
    return SetupKeyRequest(
        name, reusable, usage_limit, expires_in, tuple(groups), approval_required, ephemeral, timeout
    )


def parse_network(text: str) -> ipaddress.IPv4Network:
    """The address pool (IPv4, at most /30 so that it has two usable addresses)."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValueError(f"{text[:50]!r} is not a network with its host bits clear") from None
    if not isinstance(network, ipaddress.IPv4Network) or network.prefixlen > 30:
        raise ValueError("the address pool must be an IPv4 network of /30 or larger")
    return network


def allocate_address(network: ipaddress.IPv4Network, taken: Container[int]) -> str:
    """The lowest address of ``network`` that is neither the network nor the broadcast address nor ``taken``.

    ``taken`` holds the integer addresses of live peers and of quarantined ones.

    Raises:
        EnrolmentError: ``address_pool_exhausted`` (409).
    """
    first = int(network.network_address) + 1
    last = int(network.broadcast_address) - 1
    for value in range(first, last + 1):
        if value not in taken:
            return str(ipaddress.IPv4Address(value))
    raise EnrolmentError("address_pool_exhausted", "no free address is left in the pool", 409)


def quarantined(released_at: float | None, now: float) -> bool:
    """Whether an address released at ``released_at`` must still stay unused."""
    return released_at is not None and now < released_at + ADDRESS_QUARANTINE


def ephemeral_expired(*, ephemeral: bool, timeout: int, last_seen: float, online: bool, now: float) -> bool:
    """Whether an ephemeral peer has been offline long enough to be deleted."""
    return ephemeral and not online and now >= last_seen + timeout
