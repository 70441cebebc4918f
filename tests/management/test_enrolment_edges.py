"""Edges of the enrolment rules (wgpy.management.enrolment) that the mutation audit found untested.

Expected values come from the contract (docs/management-api.md, "Admin endpoints": the setup-key body's defaults
``reusable: false, usage_limit: 1, expires_in: 86400, auto_groups: [], approval_required: false, ephemeral: false``;
"a one-off key has usage_limit 1, a reusable one up to 1,000,000; expires_in is 60 s to 365 days;
ephemeral_timeout (60 s to 30 days, default 600) only with ephemeral"; enrolment errors ``expired_setup_key``,
``used_setup_key``, ``revoked_setup_key`` (403), ``unknown_setup_key`` (401), ``address_pool_exhausted`` (409); the
lowest free address, never the network or broadcast address) and the security model (setup keys expire, default
24 hours; one-time use per key).
"""

from __future__ import annotations

import ipaddress

import pytest
from management_helpers import setup_key_row

from wgpy.management import enrolment
from wgpy.management.enrolment import EnrolmentError, SetupKeyRow

NOW = 1_800_000_000.0
DAY = 86400


def _row(**overrides: object) -> SetupKeyRow:
    row: SetupKeyRow = setup_key_row(NOW, **overrides)
    return row


def _refusal(body: object) -> EnrolmentError:
    with pytest.raises(EnrolmentError) as caught:
        enrolment.parse_setup_key_request(body)
    return caught.value


def test_setup_key_statuses() -> None:
    """The contract: ``401 unknown_setup_key``; ``403`` for expired, used and revoked keys."""
    cases = [
        (None, "unknown_setup_key", 401),
        (_row(revoked=True), "revoked_setup_key", 403),
        (_row(expires_at=NOW), "expired_setup_key", 403),
        (_row(used=1), "used_setup_key", 403),
    ]
    for row, code, status in cases:
        with pytest.raises(EnrolmentError) as caught:
            enrolment.check_setup_key(row, NOW)
        assert (caught.value.code, caught.value.status) == (code, status)


def test_setup_key_usable_until_the_instant_it_expires() -> None:
    """A key whose ``expires_at`` is a moment away still enrols (expiry is at ``expires_at``, not before), and a
    reusable key with uses left is usable whatever its count."""
    assert enrolment.check_setup_key(_row(expires_at=NOW + 0.001), NOW).id == "k"
    assert enrolment.check_setup_key(_row(reusable=True, usage_limit=1_000_000, used=999_999), NOW).used == 999_999
    with pytest.raises(EnrolmentError) as caught:
        enrolment.check_setup_key(_row(reusable=True, usage_limit=3, used=4), NOW)
    assert caught.value.code == "used_setup_key"


def test_defaults_of_a_setup_key_request() -> None:
    """The contract's body defaults, each one: a one-off key of one use, 24 hours, no groups, no approval, not
    ephemeral, ephemeral timeout 600 s."""
    spec = enrolment.parse_setup_key_request({"name": "laptop"})
    assert spec.name == "laptop"
    assert spec.reusable is False
    assert spec.usage_limit == 1
    assert spec.expires_in == DAY
    assert spec.auto_groups == ()
    assert spec.approval_required is False
    assert spec.ephemeral is False
    assert spec.ephemeral_timeout == 600


@pytest.mark.parametrize(
    ("field", "lowest", "highest", "extra"),
    [
        ("usage_limit", 1, 1_000_000, {"reusable": True}),
        ("expires_in", 60, 365 * DAY, {}),
        ("ephemeral_timeout", 60, 30 * DAY, {"ephemeral": True}),
    ],
)
def test_numeric_bounds_are_inclusive(field: str, lowest: int, highest: int, extra: dict[str, object]) -> None:
    """The contract's ranges (usage_limit up to 1,000,000; expires_in 60 s to 365 days; ephemeral_timeout 60 s to
    30 days) include both ends and nothing past them."""
    for value in (lowest, highest):
        spec = enrolment.parse_setup_key_request({"name": "k", **extra, field: value})
        assert getattr(spec, field) == value
    for value in (lowest - 1, highest + 1):
        refusal = _refusal({"name": "k", **extra, field: value})
        assert (refusal.code, refusal.status) == ("invalid_value", 400)


@pytest.mark.parametrize("field", ["reusable", "approval_required", "ephemeral"])
def test_flags_are_json_booleans_and_kept(field: str) -> None:
    """The contract writes the flags as JSON booleans: ``true`` is kept as given, and 1 or "true" is not a
    boolean."""
    extra: dict[str, object] = {"usage_limit": 2} if field == "reusable" else {}
    spec = enrolment.parse_setup_key_request({"name": "k", field: True, **extra})
    assert getattr(spec, field) is True
    for wrong in (1, "true"):
        assert _refusal({"name": "k", field: wrong}).code == "invalid_value"


def test_usage_limit_of_one_off_and_reusable_keys() -> None:
    """The contract: a one-off key (``reusable: false``) has usage_limit 1; a reusable key may have 1 as well."""
    assert enrolment.parse_setup_key_request({"name": "k", "reusable": False, "usage_limit": 1}).usage_limit == 1
    assert enrolment.parse_setup_key_request({"name": "k", "reusable": True, "usage_limit": 1}).usage_limit == 1
    assert _refusal({"name": "k", "usage_limit": 2}).code == "invalid_value"


def test_ephemeral_timeout_only_with_ephemeral() -> None:
    """The contract: ``ephemeral_timeout`` only with ``ephemeral``; with it, it is kept."""
    spec = enrolment.parse_setup_key_request({"name": "k", "ephemeral": True, "ephemeral_timeout": 120})
    assert (spec.ephemeral, spec.ephemeral_timeout) == (True, 120)
    assert _refusal({"name": "k", "ephemeral": False, "ephemeral_timeout": 120}).code == "invalid_value"


def test_auto_groups_kept_in_order_and_invalid_names_refused() -> None:
    """The contract: ``auto_groups`` is a list of group names; names follow the policy's rule (a space is not
    allowed), and each is kept in the order given."""
    spec = enrolment.parse_setup_key_request({"name": "k", "auto_groups": ["b", "a"]})
    assert spec.auto_groups == ("b", "a")
    assert _refusal({"name": "k", "auto_groups": ["ok", "not ok"]}).code == "invalid_value"
    assert _refusal({"name": "k", "auto_groups": "a"}).code == "invalid_value"


def _taken(*addresses: str) -> set[int]:
    return {int(ipaddress.IPv4Address(a)) for a in addresses}


def test_allocation_never_gives_the_broadcast_or_network_address() -> None:
    """The contract: the lowest free address of the pool; the network and broadcast addresses are not host
    addresses (RFC 919/922), so a /24 with .1-.253 taken gives .254, and with .1-.254 taken is exhausted (409)."""
    network = enrolment.parse_network("10.9.8.0/24")
    almost = _taken(*(f"10.9.8.{i}" for i in range(1, 254)))
    assert enrolment.allocate_address(network, almost) == "10.9.8.254"
    with pytest.raises(EnrolmentError) as caught:
        enrolment.allocate_address(network, almost | _taken("10.9.8.254"))
    assert (caught.value.code, caught.value.status) == ("address_pool_exhausted", 409)
    assert enrolment.allocate_address(network, _taken("10.9.8.1", "10.9.8.3")) == "10.9.8.2"


def test_a_slash_30_pool_is_allowed() -> None:
    """A /30 is the smallest pool with two host addresses; it is accepted (only /31 and /32 are refused)."""
    assert enrolment.parse_network("10.0.0.0/30").prefixlen == 30
    with pytest.raises(ValueError):
        enrolment.parse_network("10.0.0.0/32")


def test_ephemeral_peer_expiry_boundary() -> None:
    """An ephemeral peer is deleted once offline for ``ephemeral_timeout``: not a second earlier."""
    assert not enrolment.ephemeral_expired(ephemeral=True, timeout=600, last_seen=NOW, online=False, now=NOW + 599)
    assert enrolment.ephemeral_expired(ephemeral=True, timeout=600, last_seen=NOW, online=False, now=NOW + 601)


@pytest.mark.parametrize("field", ["usage_limit", "ephemeral_timeout", "expires_in"])
def test_a_boolean_is_not_a_number(field: str) -> None:
    """RFC 8259 section 3: ``true`` is a literal name, not a number, although Python's ``True == 1``; the contract's
    counts and durations are numbers, so ``true`` is ``invalid_value`` even where 1 would be in range."""
    extra: dict[str, object] = {"reusable": True, "ephemeral": True}
    assert _refusal({"name": "k", **extra, field: True}).code == "invalid_value"
