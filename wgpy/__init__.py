"""wgpy: a userspace WireGuard implementation in Python, built around an I/O-free protocol core.

The public API, re-exported here: ``Device`` (the sans-I/O engine), the key types, the events it emits, and the
errors and drop reasons. Everything that does I/O lives in ``wgpy.drivers`` and the top-level ``tun`` package.
"""

from __future__ import annotations

from .device import Device, DeviceStats
from .errors import ConfigError, DropReason, MalformedMessage, UapiError, WgpyError
from .events import Endpoint, EndpointChanged, Event, HandshakeCompleted, KeypairExpired, PeerRemoved
from .keys import PresharedKey, PrivateKey, PublicKey
from .send import PlaintextFilter

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Device",
    "DeviceStats",
    "DropReason",
    "Endpoint",
    "EndpointChanged",
    "Event",
    "HandshakeCompleted",
    "KeypairExpired",
    "MalformedMessage",
    "PeerRemoved",
    "PlaintextFilter",
    "PresharedKey",
    "PrivateKey",
    "PublicKey",
    "UapiError",
    "WgpyError",
    "__version__",
]
