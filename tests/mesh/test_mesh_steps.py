"""A network map applied in steps (``MeshController.apply_verified_steps``, issue #11): the device's peers and the
packet filter's map change in the same step, and a reader between two steps sees the old map or the new one."""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.helpers import make_device, pub

from wgpy.device import Device
from wgpy.keys import PublicKey
from wgpy.mesh import MapRejected, MeshController, RejectReason, sign_network_map, verify_and_parse

MANAGEMENT = Ed25519PrivateKey.from_private_bytes(bytes(range(80, 112)))
NOW_WALL = 1_700_000_000.0


def _body(serial: int, own: PublicKey, others: list[PublicKey], third_octet: int) -> dict[str, Any]:
    peers = [
        {
            "public_key": own.to_base64(),
            "allowed_ips": ["10.255.0.1/32"],
            "endpoint": None,
            "groups": ["g"],
            "relay": False,
        }
    ]
    for i, key in enumerate(others):
        network = f"10.{third_octet}.{i >> 8}.{i & 255}/32"
        peers.append(
            {"public_key": key.to_base64(), "allowed_ips": [network], "endpoint": None, "groups": ["g"], "relay": False}
        )
    issued = int(NOW_WALL) - 5
    return {"version": 1, "serial": serial, "issued_at": issued, "expires_at": issued + 600, "peers": peers, "acl": []}


def _random_keys(count: int) -> list[PublicKey]:
    return [PublicKey(os.urandom(32)) for _ in range(count)]


def _view(device: Device, controller: MeshController) -> tuple[frozenset[PublicKey], int | None, object, object]:
    """The peers, the filter's map serial and the owners of one address of each map, as the data plane sees them."""
    netmap = controller.filter.netmap
    first = device.allowed_ips.lookup_ip("10.1.0.3")
    second = device.allowed_ips.lookup_ip("10.2.0.3")
    return (
        frozenset(device.peers),
        netmap.serial if netmap is not None else None,
        first.public_key if first is not None else None,
        second.public_key if second is not None else None,
    )


def test_a_reader_between_the_steps_sees_the_old_map_or_the_new_one() -> None:
    device = make_device(41)
    own = pub(device)
    controller = MeshController(MANAGEMENT.public_key())
    old, new = _random_keys(120), _random_keys(120)
    controller.apply_network_map(device, sign_network_map(_body(1, own, old, 1), MANAGEMENT), NOW_WALL, 1.0)
    old_view = _view(device, controller)
    netmap = verify_and_parse(sign_network_map(_body(2, own, new, 2), MANAGEMENT), MANAGEMENT.public_key(), NOW_WALL)
    seen = []
    steps = controller.apply_verified_steps(device, netmap, NOW_WALL, 2.0, peers_per_step=10)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            changes = done.value
            break
        seen.append(_view(device, controller))
    new_view = (frozenset(new), 2, None, new[3])  # from the map itself: its peers, serial, and 10.2.0.3 = peer 3
    assert old_view == (frozenset(old), 1, old[3], None)
    assert all(view in (old_view, new_view) for view in seen), "a reader saw half of a map"
    assert seen.count(old_view) >= 120 // 10  # built over many steps while the old map served
    assert _view(device, controller) == new_view
    assert len(changes.added) == 120 and len(changes.removed) == 120


def test_a_map_overtaken_while_it_is_built_changes_nothing() -> None:
    device = make_device(42)
    own = pub(device)
    controller = MeshController(MANAGEMENT.public_key())
    first = _random_keys(30)
    controller.apply_network_map(device, sign_network_map(_body(1, own, first, 1), MANAGEMENT), NOW_WALL, 1.0)
    netmap = verify_and_parse(
        sign_network_map(_body(2, own, _random_keys(30), 2), MANAGEMENT), MANAGEMENT.public_key(), NOW_WALL
    )
    steps = controller.apply_verified_steps(device, netmap, NOW_WALL, 2.0, peers_per_step=5)
    next(steps)
    third = _random_keys(5)  # a newer map arrives another way (the map file) and is applied whole
    controller.apply_network_map(device, sign_network_map(_body(3, own, third, 3), MANAGEMENT), NOW_WALL, 2.5)
    with pytest.raises(MapRejected) as info:
        for _ in steps:
            pass
    assert info.value.reason is RejectReason.STALE_SERIAL
    assert set(device.peers) == set(third)
    assert controller.filter.netmap is not None and controller.filter.netmap.serial == 3
