"""The dashboard's pure parts: session cookies and CSRF tokens (``session.py``), search, sorting and the network
drawing (``views.py``)."""

from __future__ import annotations

import base64
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgpy.management.dashboard import views
from wgpy.management.dashboard.session import REVEAL_LIFETIME, SESSION_LIFETIME, SessionKeys
from wgpy.management.policy import parse_policy

NOW = 1_800_000_000.0


def _keys(secret: bytes = b"k" * 32) -> SessionKeys:
    counter = itertools.count()
    return SessionKeys(secret, rng=lambda n: bytes((next(counter) + i) % 256 for i in range(n)))


def test_a_session_opens_until_it_expires() -> None:
    keys = _keys()
    cookie, session = keys.seal("wgat_secret", NOW)
    assert "wgat_secret" not in cookie and "secret" not in repr(session)
    opened = keys.open(cookie, NOW + SESSION_LIFETIME - 1)
    assert opened == session
    assert keys.open(cookie, NOW + SESSION_LIFETIME) is None
    assert repr(keys) == "SessionKeys(<hidden>)"


def test_another_servers_key_cannot_open_it() -> None:
    cookie, _session = _keys(b"a" * 32).seal("wgat_secret", NOW)
    assert _keys(b"b" * 32).open(cookie, NOW) is None


@given(st.integers(min_value=0), st.integers(min_value=1, max_value=255))
def test_any_flipped_byte_is_refused(position: int, flip: int) -> None:
    keys = _keys()
    cookie, _session = keys.seal("wgat_secret", NOW)
    raw = bytearray(base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4)))
    raw[position % len(raw)] ^= flip
    assert keys.open(base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="), NOW) is None


@pytest.mark.parametrize("cookie", [None, "", "!!!", "A", "A" * 5000, "e30", "bm9uY2U"])
def test_garbage_is_refused(cookie: str | None) -> None:
    assert _keys().open(cookie, NOW) is None


def test_csrf_tokens_are_per_session() -> None:
    keys = _keys()
    _c1, one = keys.seal("wgat_a", NOW)
    _c2, two = keys.seal("wgat_a", NOW)
    assert keys.check_csrf(one, keys.csrf(one))
    assert not keys.check_csrf(one, keys.csrf(two))
    assert not keys.check_csrf(one, None)
    assert not keys.check_csrf(one, "")


def test_a_reveal_cookie_belongs_to_its_session_and_is_short_lived() -> None:
    keys = _keys()
    _c1, one = keys.seal("wgat_a", NOW)
    _c2, two = keys.seal("wgat_a", NOW)
    reveal = keys.seal_reveal(one, {"name": "k", "key": "wgsk_x"}, NOW)
    assert keys.open_reveal(one, reveal, NOW) == {"name": "k", "key": "wgsk_x"}
    assert keys.open_reveal(two, reveal, NOW) is None
    assert keys.open_reveal(one, reveal, NOW + REVEAL_LIFETIME) is None
    assert keys.open(reveal, NOW) is None  # not a session cookie


PEERS: list[dict[str, object]] = [
    {
        "id": "1",
        "name": "web",
        "address": "100.64.0.10",
        "groups": ["production"],
        "public_key": "AAA",
        "approved": True,
        "revoked": False,
        "online": True,
        "last_seen": 5.0,
        "created_at": 1.0,
    },
    {
        "id": "2",
        "name": "Laptop",
        "address": "100.64.0.9",
        "groups": ["developers"],
        "public_key": "BBB",
        "approved": False,
        "revoked": False,
        "online": False,
        "last_seen": 9.0,
        "created_at": 2.0,
    },
    {
        "id": "3",
        "name": "old",
        "address": "100.64.0.2",
        "groups": ["developers", "production"],
        "public_key": "CCC",
        "approved": True,
        "revoked": True,
        "online": False,
        "last_seen": 1.0,
        "created_at": 3.0,
    },
]


def _names(peers: list[dict[str, object]] | list[views.PeerInfo]) -> list[object]:
    return [peer["name"] for peer in peers]


def test_search_matches_name_address_key_and_group() -> None:
    assert _names(views.filter_peers(PEERS, "LAP")) == ["Laptop"]
    assert _names(views.filter_peers(PEERS, "0.10")) == ["web"]
    assert _names(views.filter_peers(PEERS, "ccc")) == ["old"]
    assert _names(views.filter_peers(PEERS, "production")) == ["web", "old"]
    assert len(views.filter_peers(PEERS, "  ")) == 3


def test_sorting() -> None:
    assert _names(views.sort_peers(PEERS, "name", False)) == ["Laptop", "old", "web"]
    assert _names(views.sort_peers(PEERS, "name", True)) == ["web", "old", "Laptop"]
    assert _names(views.sort_peers(PEERS, "address", False)) == ["old", "Laptop", "web"]  # numerically
    assert _names(views.sort_peers(PEERS, "last_seen", True)) == ["Laptop", "web", "old"]
    assert _names(views.sort_peers(PEERS, "online", True))[0] == "web"
    assert [views.peer_state(p) for p in views.sort_peers(PEERS, "state", False)] == ["approved", "pending", "revoked"]
    assert _names(views.sort_peers(PEERS, "no-such-key", False)) == ["Laptop", "old", "web"]


def test_path_words_and_sorting() -> None:
    names = {"AAA": "web", "BBB": "Laptop"}
    web = {**PEERS[0], "path": "mixed", "paths": {"BBB": "relayed", "CCC": "direct", "ZZZZZZZZZZ": "direct"}}
    assert views.path_detail(web, names) == "direct to CCC…, ZZZZZZZZ…; relayed to Laptop"  # unknown keys: a prefix
    assert views.path_detail(PEERS[1], names) == ""  # reported nothing
    laptop = {**PEERS[1], "path": "direct", "paths": {"AAA": "direct"}}
    assert views.path_detail(laptop, names) == "direct to web"
    ordered = views.sort_peers([web, laptop, PEERS[2]], "path", False)
    assert _names(ordered) == ["old", "Laptop", "web"]  # none, direct, mixed


def test_error_line_and_times() -> None:
    assert views.error_line("line 7: acls[0].proto: 'x' is not one of tcp") == 7
    assert views.error_line("the policy is not UTF-8 text") is None
    assert views.format_ts(0) == "1970-01-01 00:00:00 UTC"
    assert views.format_ts(None) == ""


def test_the_network_graph_draws_accept_rules_between_groups() -> None:
    policy = parse_policy(
        """
groups: [guests]
acls:
  - {name: dev-to-prod, src: [developers], dst: [production], action: accept}
  - {name: no-guests, src: [guests], dst: ["*"], action: deny}
  - {name: prod-all, src: [production], dst: ["*"], proto: icmp, action: accept}
"""
    )
    graph = views.network_graph(policy, PEERS)
    assert [node.name for node in graph.nodes] == ["developers", "guests", "production"]
    assert {node.name: node.peers for node in graph.nodes}["developers"] == ("Laptop",)  # the revoked one is not drawn
    pairs = {(edge.src, edge.dst): edge.rules for edge in graph.edges}
    assert pairs[("developers", "production")] == ("dev-to-prod",)
    assert pairs[("production", "production")] == ("prod-all",)
    assert ("guests", "developers") not in pairs  # deny rules draw no arrow
    assert graph.reach["production"] == ("developers", "guests", "production")
    assert graph.reach["guests"] == ()
    for node in graph.nodes:
        assert 0 < node.x < graph.size and 0 < node.y < graph.size
