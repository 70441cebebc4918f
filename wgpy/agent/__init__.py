"""``wgpy up``: the device side of the control plane.

Theory of operation: the agent enrols a device with a management server (``docs/management-api.md``) using a
setup key, keeps its WireGuard private key on the device (``keystore.py``: the OS keyring where a working backend
exists, else a mode-0600 file in the state directory), keeps its refresh token in the state directory and its
access token in memory only, and signs every request with proof of possession (``wgpy.management.proof``). It
subscribes to its network map over a WebSocket (``client.py``) and hands every map, whatever channel brought it,
to ``MeshController.apply_network_map`` through the mesh daemon glue (``runner.py``): the signature is checked
against the management key pinned at enrolment (``--management-key``), never against anything the server says.

The agent never trusts the server for anything but liveness: a server that is down, slow or compromised can at
worst stop new maps from arriving. The last valid map stays in force (peers go on talking); with ``--fail-closed``
traffic stops when that map expires.
"""

from __future__ import annotations

__all__: list[str] = []
