"""wgpy as the data plane of a mesh VPN: signed network maps, an ACL packet filter and an audit log.

Theory of operation: a management server describes the whole mesh in a *network map* (peers, their allowed IPs,
endpoints and groups, and ordered ACL rules between groups) and signs it with its Ed25519 key (``netmap.py``).
Each device holds the management public key in a ``MeshController`` (``controller.py``), which verifies each map
and applies it to the ``Device`` atomically, and loads its rules into a ``PacketFilter`` (``acl.py``, with
``conntrack.py``) that the device consults for every packet it encrypts or decrypts. ``AuditLog`` (``audit.py``)
writes JSON lines about connections, handshakes, peers and maps through ``logging``.

Like the rest of the core this package does no I/O and reads no clock: wall-clock time arrives as ``now_wall``
(Unix seconds) and the device's monotonic time as ``now``. Wiring into the device is one hook: the device calls
``filter.check_outbound(packet, peer.public_key, now)`` before staging a packet from the TUN and
``filter.check_inbound(packet, peer.public_key, now)`` after the allowed-IPs source check of a decrypted one, and
drops the packet when the answer is ``False``.
"""

from __future__ import annotations

from .acl import INBOUND, OUTBOUND, FilterStats, PacketFilter, PacketFilterHook, Verdict
from .audit import AUDIT_LOGGER_NAME, AuditLog
from .conntrack import ConnTrack
from .controller import MapChanges, MeshController
from .netmap import (
    NETWORK_MAP_SCHEMA,
    AclRule,
    MapPeer,
    MapRejected,
    NetworkMap,
    RejectReason,
    canonical_json,
    load_management_public_key,
    parse_network_map,
    sign_network_map,
    verify_and_parse,
)

__all__ = [
    "AUDIT_LOGGER_NAME",
    "INBOUND",
    "NETWORK_MAP_SCHEMA",
    "OUTBOUND",
    "AclRule",
    "AuditLog",
    "ConnTrack",
    "FilterStats",
    "MapChanges",
    "MapPeer",
    "MapRejected",
    "MeshController",
    "NetworkMap",
    "PacketFilter",
    "PacketFilterHook",
    "RejectReason",
    "Verdict",
    "canonical_json",
    "load_management_public_key",
    "parse_network_map",
    "sign_network_map",
    "verify_and_parse",
]
