"""Candidates as remote input, and the path state machine (pure, driven by ``now``)."""

from __future__ import annotations

import pytest

from wgpy.nat.candidates import Candidate, CandidateError, CandidateKind, admit, parse_candidates
from wgpy.nat.paths import RELAY_AFTER_TIME, PathState, PeerPaths

RAW = [
    {"kind": "host", "host": "192.168.1.2", "port": 51820},
    {"kind": "srflx", "host": "198.51.100.7", "port": 40000},
    {"kind": "relay", "host": "192.0.2.50", "port": 49160},
]


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        [{"kind": "host", "host": "192.168.1.2"}],
        [{"kind": "peer", "host": "192.168.1.2", "port": 1}],
        [{"kind": "host", "host": "example.org", "port": 1}],
        [{"kind": "host", "host": "127.0.0.1", "port": 1}],
        [{"kind": "host", "host": "224.0.0.1", "port": 1}],
        [{"kind": "host", "host": "0.0.0.0", "port": 1}],  # noqa: S104 - a refused candidate, not a bind
        [{"kind": "host", "host": "192.168.1.2", "port": 0}],
        [{"kind": "host", "host": "192.168.1.2", "port": True}],
        [{"kind": "host", "host": "192.168.1.2", "port": 1, "extra": 1}],
        [RAW[0]] * 9,
    ],
)
def test_malformed_candidates_are_refused(raw: object) -> None:
    with pytest.raises(CandidateError):
        parse_candidates(raw)


def state_of(paths: PeerPaths) -> PathState:
    """The path state, read afresh (mypy would keep an ``is`` narrowing of ``paths.state`` across method calls)."""
    return paths.state


def test_only_candidates_on_announced_ips_are_admitted() -> None:
    parsed = parse_candidates([*RAW, {"kind": "srflx", "host": "203.0.113.66", "port": 53}])
    admitted = admit(parsed, ["198.51.100.7", "192.0.2.50", "192.168.1.2"])
    assert [c.host for c in admitted] == ["192.168.1.2", "198.51.100.7", "192.0.2.50"]
    assert admit(parsed, []) == ()


def test_direct_first_then_the_relay_with_a_reason_then_back_to_direct() -> None:
    paths = PeerPaths()
    candidates = parse_candidates(RAW)
    paths.set_candidates(candidates, refused=1, now=10.0)
    assert state_of(paths) is PathState.CHECKING
    assert paths.probe_targets() == (("192.168.1.2", 51820), ("198.51.100.7", 40000))  # no relay while checking
    paths.note_probe(("198.51.100.7", 40000))
    paths.handle_timer(10.0 + RELAY_AFTER_TIME - 0.01)
    assert state_of(paths) is PathState.CHECKING
    assert paths.get_timer() == 10.0 + RELAY_AFTER_TIME
    paths.handle_timer(10.0 + RELAY_AFTER_TIME)
    assert state_of(paths) is PathState.RELAYED
    assert ("192.0.2.50", 49160) in paths.probe_targets() and ("198.51.100.7", 40000) in paths.probe_targets()
    assert "198.51.100.7:40000 (1 probes)" in paths.reason
    paths.observe(("192.0.2.50", 49160), handshake_done=True)
    line = paths.describe()
    assert line.startswith("path: relayed local -> relay 192.0.2.50:49160 (relayed: no handshake on a direct path")
    assert "1 candidates refused" in line
    paths.observe(("198.51.100.7", 40000), handshake_done=True)  # the device roamed to a direct candidate
    assert state_of(paths) is PathState.DIRECT and paths.reason == ""
    assert paths.describe().startswith("path: direct local -> srflx 198.51.100.7:40000")


def test_no_relay_candidate_means_no_relay_state() -> None:
    paths = PeerPaths()
    paths.set_candidates((Candidate(CandidateKind.SERVER_REFLEXIVE, "198.51.100.7", 1),), 0, 0.0)
    paths.handle_timer(100.0)
    assert state_of(paths) is PathState.CHECKING
    paths.observe(None, handshake_done=False)
    assert state_of(paths) is PathState.CHECKING


def test_the_pair_names_our_side_and_a_relay_first_answer_still_says_why() -> None:
    ours = (
        Candidate(CandidateKind.HOST, "192.168.9.2", 5000),
        Candidate(CandidateKind.SERVER_REFLEXIVE, "198.51.100.9", 5000),
        Candidate(CandidateKind.RELAYED, "192.0.2.50", 49170),
    )
    paths = PeerPaths()
    paths.set_candidates(parse_candidates(RAW), refused=0, now=0.0)
    paths.note_probe(("198.51.100.7", 40000))
    # The peer's first authenticated answer comes through the relay, before our own relay timer fired.
    paths.observe(("192.0.2.50", 49160), handshake_done=True)
    paths.set_local(ours)
    line = paths.describe()
    assert line.startswith("path: relayed relay 192.0.2.50:49170 -> relay 192.0.2.50:49160 (relayed: "), line
    assert "198.51.100.7:40000 (1 probes)" in line and "192.168.1.2:51820 (0 probes)" in line
    paths.observe(("198.51.100.7", 40000), handshake_done=True)
    paths.set_local(ours)
    assert paths.describe() == "path: direct srflx 198.51.100.9:5000 -> srflx 198.51.100.7:40000"
    paths.observe(("192.168.1.2", 51820), handshake_done=True)
    paths.set_local(ours)
    assert paths.describe() == "path: direct host 192.168.9.2:5000 -> host 192.168.1.2:51820"
