"""Path selection for one peer: direct candidates first, the relay after a few seconds, and why (pure, ``now``).

Theory of operation: ``PeerPaths`` starts ``CHECKING`` when the peer's candidates arrive. While checking, every
handshake initiation to the peer is also sent to every admitted *direct* candidate (an initiation is an
authenticated probe); the first path on which a handshake completes is the device's endpoint (the device itself
sets the endpoint to the source of the authenticated answer), which ``observe`` reports. If no direct path answered
within ``RELAY_AFTER_TIME`` the state becomes ``RELAYED``: initiations then go to the relayed candidates too, and
the reason names the direct checks that failed. A relayed peer keeps probing its direct candidates in the
background; the moment the device's endpoint is a direct candidate again the state is ``DIRECT``. Of two peers
whose candidates cross, the one with the lower public key initiates first (``initiates_first``).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from .candidates import Candidate, CandidateKind

__all__ = ["RELAY_AFTER_TIME", "PathState", "PeerPaths", "initiates_first"]

RELAY_AFTER_TIME: Final = 6.0  # seconds of failed direct checks before the relay (ours; issue #15 "a few seconds")
PATH_SILENT_TIME: Final = 2.0  # seconds of sending with nothing received before the path is suspect (ours)
PATH_SILENT_MAX_INTERVAL: Final = 30.0  # seconds between alarms of a lasting silence (ours)
DIRECT_PROBE_TIME: Final = 2.0  # seconds between background direct probes of a relayed peer (ours)
NAT_KEEPALIVE_INTERVAL: Final = 25  # seconds, persistent keepalive holding the NAT binding (wg(8) suggests 25)


def initiates_first(own_key: bytes, peer_key: bytes) -> bool:
    """Whether our side sends its initiation as soon as the peer's candidates arrive: the lower public key (as bytes)
    does, the other holds its own a moment, so that two initiations sent at once do not cross (``io/handler.py``).
    Each side computes the same order, so exactly one of any two peers goes first."""
    return own_key < peer_key


class PathState(enum.Enum):
    IDLE = "idle"  # no candidates yet
    CHECKING = "checking"
    DIRECT = "direct"
    RELAYED = "relayed"


@dataclass(slots=True)
class PeerPaths:
    """One peer's candidate pairs and the state of its path."""

    remote: tuple[Candidate, ...] = ()
    state: PathState = PathState.IDLE
    checking_since: float | None = None
    selected: tuple[str, int] | None = None
    local: str = ""  # which local candidate the selected pair uses (for status)
    reason: str = ""  # why relayed
    refused: int = 0  # candidates refused by ``admit`` (not announced by the server)
    probes_sent: dict[tuple[str, int], int] = field(default_factory=dict)
    rx_bytes: int = 0
    tx_bytes: int = 0
    tx_since_rx: bool = False
    observed_rx: int = -1
    silent_alarm_at: float = 0.0
    silent_interval: float = 0.0
    direct_probe_at: float = 0.0

    def set_candidates(self, remote: tuple[Candidate, ...], refused: int, now: float) -> None:
        self.remote, self.refused = remote, refused
        if self.state in (PathState.IDLE, PathState.CHECKING):
            self.state = PathState.CHECKING
            self.checking_since = now if self.checking_since is None else self.checking_since

    @property
    def direct(self) -> tuple[tuple[str, int], ...]:
        return tuple(c.address for c in self.remote if c.kind is not CandidateKind.RELAYED)

    @property
    def relayed(self) -> tuple[tuple[str, int], ...]:
        return tuple(c.address for c in self.remote if c.kind is CandidateKind.RELAYED)

    def probe_targets(self) -> tuple[tuple[str, int], ...]:
        """Where a copy of each initiation goes: the direct candidates, and once relayed the relayed ones too."""
        if self.state is PathState.IDLE:
            return ()
        if self.state is PathState.RELAYED:
            return self.direct + self.relayed
        return self.direct

    def note_probe(self, target: tuple[str, int]) -> None:
        self.probes_sent[target] = self.probes_sent.get(target, 0) + 1

    def handle_timer(self, now: float) -> None:
        if (
            self.state is PathState.CHECKING
            and self.checking_since is not None
            and now - self.checking_since >= RELAY_AFTER_TIME
            and self.relayed
        ):
            self.state = PathState.RELAYED
            self.reason = self._failed_checks(f"no handshake on a direct path within {RELAY_AFTER_TIME:g} s")

    def _failed_checks(self, why: str) -> str:
        """Why relayed: ``why``, then the direct checks that got no handshake, each with the probes sent to it."""
        failed = ", ".join(f"{h}:{p} ({self.probes_sent.get((h, p), 0)} probes)" for h, p in self.direct)
        return f"{why}: {failed or 'no direct candidate'}"

    def get_timer(self) -> float | None:
        if self.state is PathState.CHECKING and self.checking_since is not None:
            return self.checking_since + RELAY_AFTER_TIME
        return None

    def note_counters(self, rx_bytes: int, tx_bytes: int, now: float) -> bool:
        """The peer's byte counters now; ``True`` when we have been sending for ``PATH_SILENT_TIME`` and heard
        nothing (a NAT rebinding, or a path gone): time to ask STUN again and tell the peer. While the silence
        lasts it says so again after 2, 4, 8 ... up to ``PATH_SILENT_MAX_INTERVAL`` seconds. A one-way flow looks
        the same until the peer's passive keepalive (10 s): a false alarm costs one STUN transaction."""
        if rx_bytes != self.rx_bytes:
            self.rx_bytes = rx_bytes
            self.tx_since_rx = False
        if tx_bytes != self.tx_bytes:
            self.tx_bytes = tx_bytes
            if not self.tx_since_rx:
                self.tx_since_rx, self.silent_interval = True, PATH_SILENT_TIME
                self.silent_alarm_at = now + PATH_SILENT_TIME
        if self.tx_since_rx and now >= self.silent_alarm_at:
            self.silent_interval = min(2 * self.silent_interval, PATH_SILENT_MAX_INTERVAL)
            self.silent_alarm_at = now + self.silent_interval
            return True
        return False

    def direct_probe_due(self, now: float) -> bool:
        """Whether a relayed peer's next transport datagram should also go to its direct candidates."""
        if self.state is not PathState.RELAYED or not self.direct or now < self.direct_probe_at:
            return False
        self.direct_probe_at = now + DIRECT_PROBE_TIME
        return True

    def describe(self) -> str:
        """One ``wg show``-style line: direct or relayed, which candidate pair, and why it is relayed."""
        if self.state is PathState.IDLE:
            return "path: no candidates yet"
        if self.selected is None:
            return f"path: {self.state.value} ({len(self.direct)} direct, {len(self.relayed)} relayed candidates)"
        kind = next((c.kind.value for c in self.remote if c.address == self.selected), "?")
        line = f"path: {self.state.value} {self.local or 'local'} -> {kind} {self.selected[0]}:{self.selected[1]}"
        if self.state is PathState.RELAYED and self.reason:
            line += f" (relayed: {self.reason})"
        if self.refused:
            line += f"; {self.refused} candidates refused (not announced by the server)"
        return line

    def observe(self, endpoint: tuple[object, ...] | None, handshake_done: bool, rx_bytes: int | None = None) -> None:
        """The device's endpoint for the peer now, whether a session exists, and the peer's received-byte count.

        Only an endpoint something authenticated came from since the last look counts (``rx_bytes`` grew): the
        device sets it from authenticated datagrams, but we also move it by hand to probe (a rebinding), and a
        path we only send on is no selected pair."""
        if rx_bytes is not None:
            if rx_bytes == self.observed_rx:
                return
            self.observed_rx = rx_bytes
        if endpoint is None or not handshake_done:
            return
        address = (str(endpoint[0]), int(str(endpoint[1])))
        if address in self.direct:
            self.state, self.selected, self.reason = PathState.DIRECT, address, ""
        elif address in self.relayed:
            if self.state is not PathState.RELAYED or not self.reason:
                # The peer's answer came through the relay before our own timer gave the direct checks up.
                self.reason = self._failed_checks("the peer answered through the relay; no handshake on a direct path")
            self.state, self.selected = PathState.RELAYED, address

    def set_local(self, ours: Sequence[Candidate]) -> None:
        """Our side of the selected pair, from our candidates: our relayed address on a relayed path; on a direct
        one, our server-reflexive address if the peer's side is server-reflexive too (the pair crosses both NATs),
        else our host address."""
        if self.selected is None:
            return
        remote = next((c.kind for c in self.remote if c.address == self.selected), None)
        if self.state is PathState.RELAYED:
            wanted = CandidateKind.RELAYED
        elif remote is CandidateKind.SERVER_REFLEXIVE:
            wanted = CandidateKind.SERVER_REFLEXIVE
        else:
            wanted = CandidateKind.HOST
        mine = next((c for c in ours if c.kind is wanted), None)
        self.local = str(mine) if mine is not None else ""
