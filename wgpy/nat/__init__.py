"""NAT traversal and relay for the mesh (issue #15).

Pure parts (decisions, driven by ``now``): ``stun`` (STUN/WireGuard demux, server-reflexive discovery),
``candidates`` (candidate sets, what a peer may make us send to), ``paths`` (the path-selection state machine),
``credentials`` (coturn ``use-auth-secret`` TURN credentials) and ``signal`` (the stream frames of the candidate
exchange). I/O parts (``io/``): ``relay`` (a TURN allocation through aioice), ``stun_codec`` (aioice's STUN codec: importing
aioice imports asyncio and socket) and ``io.handler`` (the hook on the tunnel's socket).
"""

from __future__ import annotations

from .stun import MAGIC_COOKIE, BindingDiscovery, DatagramKind, StunDrop, classify

__all__ = ["MAGIC_COOKIE", "BindingDiscovery", "DatagramKind", "StunDrop", "classify"]
