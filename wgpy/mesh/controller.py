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
pass ``current_serial`` when recreating it so a restart does not reopen the door to replayed older maps. Until the
first map is applied, the saved map itself may be applied again with that serial (``resuming=True``, which the
driver passes for that one document only): it is verified again (off the event loop, where the driver chooses) and
applied like any other, and it is stale once another map has been applied. Any other map needs a greater serial.

Key rotation: a map (verified) that carries ``key_rotation`` makes ``accepted_keys`` the pinned key *and* the
announced next key until the announced ``until``; from ``until`` on the next key alone is pinned
(``management_public_key`` changes; the caller may persist it). A map without the field leaves a rotation under
way as it is: only a signed announcement starts or moves one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

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
    stale_detail,
    verify_and_parse,
)

if TYPE_CHECKING:
    from ..crypto import Ed25519PublicKey
    from ..device import Device
    from ..peer import Peer

__all__ = ["MapChanges", "MeshController"]

PEERS_PER_STEP: Final = 500  # peers planned, applied or audited between two turns of the event loop (ours)


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
            current_serial: The serial of the last map applied before a restart, if it was persisted; until a map
                is applied, the saved map of this serial may be applied again (``resuming=True``).
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
        self._resumable = current_serial is not None  # until a map is applied: the saved map may come again
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
        self,
        device: Device,
        document: bytes | str | Mapping[str, object],
        now_wall: float,
        now: float,
        *,
        resuming: bool = False,
    ) -> MapChanges:
        """Verify a signed map document and apply it to ``device`` and the filter, all or nothing.

        Args:
            device: The device whose peers the map configures; it must have its private key.
            document: The signed document, as JSON text or already parsed.
            now_wall: Unix time, for the map's validity window.
            now: The device's monotonic clock, for the filter and the audit log.
            resuming: ``document`` is the map saved before a restart (``current_serial`` at construction): until
                a map is applied, its serial may equal the current one. Pass it for that document only.

        Returns:
            What changed.

        Raises:
            MapRejected: The map was refused (the reason says why); nothing changed.
            ConfigError: The device has no private key, so it cannot find itself in a map.
        """
        if device.public_key is None:
            raise ConfigError("the device needs its private key before a network map can be applied")
        self.note_clock(now_wall, now)
        try:
            netmap = self.verifier(now_wall, resuming=resuming)(document)
        except MapRejected as rejected:
            self.map_rejected(rejected, now)
            raise
        return self.apply_verified(device, netmap, now_wall, now, resuming=resuming)

    def verifier(
        self, now_wall: float, *, resuming: bool = False
    ) -> Callable[[bytes | str | Mapping[str, object]], NetworkMap]:
        """``netmap.verify_and_parse`` bound to what a map arriving now is checked against: the accepted keys, the
        time, the serial in force (``resuming`` as in ``apply_network_map``) and the allowed clock skew. The
        function reads no state of the controller, so a driver can run it on a large document in a worker thread
        and hand its map to ``apply_verified``."""
        return functools.partial(
            verify_and_parse,
            management_public_key=self.accepted_keys(now_wall),
            now_wall=now_wall,
            current_serial=self._serial,
            max_clock_skew=self.max_clock_skew,
            resuming=resuming and self._resumable,
        )

    def map_rejected(self, rejected: MapRejected, now: float) -> None:
        """Audit a refused map (``apply_network_map`` does it; a driver that verified elsewhere calls it)."""
        self.audit.map_rejected(now, reason=rejected.reason.value, detail=rejected.detail, serial=rejected.serial)

    def apply_verified(
        self, device: Device, netmap: NetworkMap, now_wall: float, now: float, *, resuming: bool = False
    ) -> MapChanges:
        """Apply a map that ``verify_and_parse`` accepted (with ``verifier``'s arguments), all or nothing.

        The serial is checked again: another map may have been applied since the verification began. ``resuming``
        as in ``apply_network_map``.

        Raises:
            MapRejected: The map is not for this device, or no longer newer than the map in force (audited).
            ConfigError: The device has no private key.
        """
        steps = self.apply_verified_steps(device, netmap, now_wall, now, resuming=resuming)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                changes: MapChanges = done.value
                return changes

    def apply_verified_steps(
        self,
        device: Device,
        netmap: NetworkMap,
        now_wall: float,
        now: float,
        peers_per_step: int = PEERS_PER_STEP,
        *,
        resuming: bool = False,
    ) -> Generator[int, None, MapChanges]:
        """``apply_verified`` in steps of ``peers_per_step`` peers (a generator whose return value is the
        ``MapChanges``), so that a driver can let its data plane run between them: a 65,535-peer map took 2.6 s
        to apply. The device's new peers and the filter's new owner table are built beside the ones in force
        (``Device.begin_change``, ``PacketFilter.prepare``) and both are swapped in by the same step, so packets
        meet the old map or the new one, never half of each. The audit lines of the peers come after the swap.
        ``now`` is the time of the request; ``resuming`` as in ``apply_network_map``.

        Raises:
            MapRejected: As ``apply_verified``, and ``STALE_SERIAL`` when the device was configured otherwise
                while the steps ran (nothing of this map is applied).
            ConfigError: The device has no private key.
        """
        local = device.public_key
        if local is None:
            raise ConfigError("the device needs its private key before a network map can be applied")
        try:
            self._check_current(netmap, local, resuming)
        except MapRejected as rejected:
            self.map_rejected(rejected, now)
            raise

        # --- plan and build beside the device: nothing the data plane uses changes until the commit -------------
        wanted: dict[PublicKey, MapPeer] = {peer.public_key: peer for peer in netmap.peers if peer.public_key != local}
        previous: dict[PublicKey, MapPeer] = (
            {peer.public_key: peer for peer in self.network_map.peers} if self.network_map is not None else {}
        )
        change = device.begin_change()
        try:
            removed = [key for key in change.peers if key not in wanted]
            added: list[MapPeer] = []
            moved: list[tuple[Peer, MapPeer]] = []
            endpoints: list[tuple[Peer, tuple[str, int]]] = []
            for done, (key, entry) in enumerate(wanted.items(), start=1):
                peer = change.peer(key)
                if peer is None:
                    added.append(entry)
                else:
                    if set(change.allowed_ips.entries_for_peer(peer)) != set(entry.allowed_ips):
                        moved.append((peer, entry))
                    endpoint = entry.endpoint
                    if endpoint is not None and peer.endpoint != endpoint:
                        before = previous.get(key)
                        if peer.endpoint is None or before is None or before.endpoint != endpoint:
                            endpoints.append((peer, endpoint))
                if done % peers_per_step == 0:
                    yield done
            done = 0
            for key in removed:
                change.remove_peer(key)
                done += 1
                if done % peers_per_step == 0:
                    yield done
            for peer, entry in moved:
                change.set_allowed_ips(peer, entry.allowed_ips)
                done += 1
                if done % peers_per_step == 0:
                    yield done
            for peer, endpoint in endpoints:
                change.set_endpoint(peer, endpoint)
            for entry in added:
                new = change.add_peer(entry.public_key)
                if entry.endpoint is not None:
                    change.set_endpoint(new, entry.endpoint)
                for network in entry.allowed_ips:
                    change.insert_allowed_ip(network, new)
                done += 1
                if done % peers_per_step == 0:
                    yield done
            prepared = yield from self.filter.prepare(netmap, peers_per_step)

            # --- commit: the device's tables and the filter's in one step ---------------------------------------
            try:
                self._check_current(netmap, local, resuming)
                change.commit(now)
            except (MapRejected, ConfigError) as exc:
                overtaken = MapRejected(
                    RejectReason.STALE_SERIAL, f"another configuration was applied meanwhile ({exc})", netmap.serial
                )
                self.map_rejected(overtaken, now)
                raise overtaken from None
        finally:
            change.abandon()  # does nothing once committed
        flows_removed = self.filter.install(prepared)
        self.network_map = netmap
        self._serial = netmap.serial
        self._resumable = False
        if netmap.key_rotation is not None:
            if netmap.key_rotation.public_key().public_bytes_raw() == self.management_public_key.public_bytes_raw():
                self.rotation = None  # announced by the new key itself after we completed the rotation: done
            else:
                self.rotation = netmap.key_rotation
        self.note_clock(now_wall, now)

        # --- after the swap: finish off removed peers, then the audit lines ----------------------------------------
        yield from change.finish_steps(now, peers_per_step)
        audit = self.audit
        for done, key in enumerate(removed, start=1):
            audit.peer_removed(now, key)
            if done % peers_per_step == 0:
                yield done
        for done, entry in enumerate(added, start=1):
            audit.peer_added(now, entry.public_key, entry.allowed_ips, entry.groups, entry.endpoint)
            if done % peers_per_step == 0:
                yield done
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

    def _check_current(self, netmap: NetworkMap, local: PublicKey, resuming: bool) -> None:
        current = self._serial
        resuming = resuming and self._resumable
        if current is not None and (netmap.serial < current or (netmap.serial == current and not resuming)):
            raise MapRejected(RejectReason.STALE_SERIAL, stale_detail(netmap.serial, current, resuming), netmap.serial)
        if netmap.peer(local) is None:
            raise MapRejected(
                RejectReason.NOT_FOR_THIS_DEVICE, "the map does not list this device's public key", netmap.serial
            )
