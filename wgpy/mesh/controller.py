"""The mesh controller: applies signed network maps to a ``Device`` and keeps the packet filter in step.

Theory of operation: a ``MeshController`` holds the management public key, the map in force (and so the current
serial), the ``PacketFilter`` and the ``AuditLog``. ``apply_network_map`` is the only way a map changes anything,
and it follows style rule 4, *compute into locals, commit at the end*:

1. verify and parse the document (``netmap.verify_and_parse``: signature, structure, serial, validity window) and
   check that the map lists this device's own public key (``NOT_FOR_THIS_DEVICE``);
2. compute the whole difference between the device's peers and the map's (by public key) without touching either;
3. only then commit: remove the peers the map no longer lists (``Device.remove_peer`` zeroes their keys, drops
   their sessions and frees their allowed IPs), move changed allowed IPs (``Device.set_allowed_ips``, only for peers
   whose set really changed), update endpoints, add the new peers, and load the map into the filter.

A map that is refused raises ``MapRejected`` before step 3, so it changes nothing; it is audited as
``map_rejected`` with its reason. Unchanged peers are not touched at all, so their handshakes and sessions carry on.

The map is authoritative: a device peer that the map does not list is removed, whoever configured it. The local
device's own entry gives the filter its addresses and groups and is never added as a peer. An endpoint in the
map is applied to a new peer, to a peer with no endpoint, and to a peer whose map endpoint changed since the last
map; otherwise the endpoint the device learnt from authenticated packets (roaming) is kept.

Two clocks: ``now_wall`` is Unix time (map validity is wall-clock), ``now`` the device's monotonic clock (the
filter's timeouts). ``note_clock`` ties them together; with ``fail_closed`` the filter is given the monotonic
instant at which the map expires and denies every packet from then on (``map-expired``) until a newer map arrives.
Without it, an expired map stays in force (last known good). The serial survives only as long as this object:
pass ``current_serial`` when recreating it so a restart does not reopen the door to replayed older maps.

Key rotation: a map (verified) that carries ``key_rotation`` makes ``accepted_keys`` the pinned key *and* the
announced next key until the announced ``until``; from ``until`` on the next key alone is pinned
(``management_public_key`` changes; the caller may persist it). A map without the field leaves a rotation under
way as it is: only a signed announcement starts or moves one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..events import Event
from ..keys import PublicKey
from .acl import PacketFilter
from .audit import AuditLog
from .conntrack import DEFAULT_MAX_FLOWS
from .netmap import (
    MAX_CLOCK_SKEW,
    KeyRotation,
    MapPeer,
    MapRejected,
    NetworkMap,
    RejectReason,
    load_management_public_key,
    verify_and_parse,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..crypto import Ed25519PublicKey
    from ..device import Device
    from ..peer import Peer

__all__ = ["MapChanges", "MeshController"]


@dataclass(frozen=True, slots=True)
class MapChanges:
    """What applying a map did to the device and the filter."""

    serial: int
    added: tuple[PublicKey, ...]
    removed: tuple[PublicKey, ...]
    allowed_ips_changed: tuple[PublicKey, ...]
    endpoints_changed: tuple[PublicKey, ...]
    flows_removed: int


class MeshController:
    """Applies network maps signed by the management key to a device, and owns the mesh packet filter."""

    def __init__(
        self,
        management_public_key: Ed25519PublicKey | bytes | str,
        *,
        fail_closed: bool = False,
        audit: AuditLog | None = None,
        current_serial: int | None = None,
        max_flows: int = DEFAULT_MAX_FLOWS,
        max_clock_skew: float = MAX_CLOCK_SKEW,
    ) -> None:
        """Create a controller with no map in force (its filter denies everything until the first map).

        Args:
            management_public_key: The Ed25519 key maps must be signed with (key object, 32 bytes or base64).
            fail_closed: Deny all traffic once the map in force has expired.
            audit: The audit log; by default one on the ``wgpy.audit`` logger.
            current_serial: The serial of the last map applied before a restart, if it was persisted.
            max_flows: The bound of the connection tracking table.
            max_clock_skew: Seconds a map's ``issued_at`` may lie in our future.

        Raises:
            ConfigError: The management key is not a 32-byte Ed25519 public key.
        """
        self.management_public_key = load_management_public_key(management_public_key)
        self.fail_closed = fail_closed
        self.audit = audit if audit is not None else AuditLog()
        self.filter = PacketFilter(max_flows=max_flows, audit=self.audit)
        self.network_map: NetworkMap | None = None
        self.max_clock_skew = max_clock_skew
        self._serial = current_serial
        self._wall_offset: float | None = None  # now_wall - now, from the last note_clock
        self.rotation: KeyRotation | None = None  # the announced next key, until its window ends

    def accepted_keys(self, now_wall: float) -> tuple[Ed25519PublicKey, ...]:
        """The keys a map may be signed with now; completes a rotation whose window has ended."""
        rotation = self.rotation
        if rotation is None:
            return (self.management_public_key,)
        if now_wall >= rotation.until:
            self.management_public_key = rotation.public_key()
            self.rotation = None
            return (self.management_public_key,)
        return (self.management_public_key, rotation.public_key())

    @property
    def serial(self) -> int | None:
        """The serial of the map in force (or the one given at construction), ``None`` before any."""
        return self._serial

    def note_clock(self, now_wall: float, now: float) -> None:
        """Tell the controller that monotonic ``now`` is Unix time ``now_wall`` (re-arms the fail-closed deadline)."""
        self._wall_offset = now_wall - now
        self.audit.set_clock(now_wall, now)
        netmap = self.network_map
        if self.fail_closed and netmap is not None:
            self.filter.set_deadline(netmap.expires_at - self._wall_offset)
        else:
            self.filter.set_deadline(None)

    def traffic_allowed(self, now_wall: float) -> bool:
        """Whether the map in force still permits traffic at ``now_wall``: ``False`` only when fail-closed and
        there is no map or it has expired. (The filter enforces the same on its own; this is for status output.)"""
        if not self.fail_closed:
            return True
        netmap = self.network_map
        return netmap is not None and now_wall < netmap.expires_at

    def observe_event(self, event: Event, now: float) -> None:
        """Pass each event drained from ``Device.next_event()`` here to audit handshakes."""
        self.audit.observe(event, now)

    def apply_network_map(
        self, device: Device, document: bytes | str | Mapping[str, object], now_wall: float, now: float
    ) -> MapChanges:
        """Verify a signed map document and apply it to ``device`` and the filter, all or nothing.

        Args:
            device: The device whose peers the map configures; it must have its private key.
            document: The signed document, as JSON text or already parsed.
            now_wall: Unix time, for the map's validity window.
            now: The device's monotonic clock, for the filter and the audit log.

        Returns:
            What changed.

        Raises:
            MapRejected: The map was refused (the reason says why); nothing changed.
            ConfigError: The device has no private key, so it cannot find itself in a map.
        """
        local = device.public_key
        if local is None:
            raise ConfigError("the device needs its private key before a network map can be applied")
        self.note_clock(now_wall, now)
        try:
            netmap = verify_and_parse(
                document, self.accepted_keys(now_wall), now_wall, self._serial, max_clock_skew=self.max_clock_skew
            )
            if netmap.peer(local) is None:
                raise MapRejected(
                    RejectReason.NOT_FOR_THIS_DEVICE, "the map does not list this device's public key", netmap.serial
                )
        except MapRejected as rejected:
            self.audit.map_rejected(now, reason=rejected.reason.value, detail=rejected.detail, serial=rejected.serial)
            raise

        # --- plan: nothing below changes state until the commit -----------------------------------------------------
        wanted: dict[PublicKey, MapPeer] = {peer.public_key: peer for peer in netmap.peers if peer.public_key != local}
        previous: dict[PublicKey, MapPeer] = (
            {peer.public_key: peer for peer in self.network_map.peers} if self.network_map is not None else {}
        )
        removed = [key for key in device.peers if key not in wanted]
        added: list[MapPeer] = []
        moved: list[tuple[Peer, MapPeer]] = []
        endpoints: list[tuple[Peer, tuple[str, int]]] = []
        for key, entry in wanted.items():
            peer = device.peer(key)
            if peer is None:
                added.append(entry)
                continue
            if set(device.allowed_ips.entries_for_peer(peer)) != set(entry.allowed_ips):
                moved.append((peer, entry))
            endpoint = entry.endpoint
            if endpoint is not None and peer.endpoint != endpoint:
                before = previous.get(key)
                if peer.endpoint is None or before is None or before.endpoint != endpoint:
                    endpoints.append((peer, endpoint))

        # --- commit ---------------------------------------------------------------------------------------------------
        audit = self.audit
        for key in removed:
            device.remove_peer(key)
            audit.peer_removed(now, key)
        for peer, entry in moved:
            device.set_allowed_ips(peer, entry.allowed_ips)
        for peer, endpoint in endpoints:
            device.add_peer(peer.public_key, endpoint=endpoint, now=now)
        for entry in added:
            device.add_peer(entry.public_key, endpoint=entry.endpoint, allowed_ips=entry.allowed_ips, now=now)
            audit.peer_added(now, entry.public_key, entry.allowed_ips, entry.groups, entry.endpoint)
        flows_removed = self.filter.load(netmap)
        self.network_map = netmap
        self._serial = netmap.serial
        if netmap.key_rotation is not None:
            if netmap.key_rotation.public_key().public_bytes_raw() == self.management_public_key.public_bytes_raw():
                self.rotation = None  # announced by the new key itself after we completed the rotation: done
            else:
                self.rotation = netmap.key_rotation
        self.note_clock(now_wall, now)
        audit.map_applied(
            now,
            serial=netmap.serial,
            issued_at=netmap.issued_at,
            expires_at=netmap.expires_at,
            added=len(added),
            removed=len(removed),
            changed=len(moved) + len(endpoints),
        )
        return MapChanges(
            serial=netmap.serial,
            added=tuple(entry.public_key for entry in added),
            removed=tuple(removed),
            allowed_ips_changed=tuple(peer.public_key for peer, _ in moved),
            endpoints_changed=tuple(peer.public_key for peer, _ in endpoints),
            flows_removed=flows_removed,
        )
