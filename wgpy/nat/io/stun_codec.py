"""The STUN message codec of ``wgpy.nat.stun.BindingDiscovery``, implemented with aioice (``aioice.stun``).

It is in the I/O layer only because of what importing aioice brings: its package ``__init__`` imports
``aioice.ice``, and with it asyncio, socket, ssl, subprocess, dnspython and ifaddr (aioice 0.13). The functions
used here are aioice's pure ones: ``Message`` (framing, XOR-MAPPED-ADDRESS, FINGERPRINT) and ``parse_message``
(which checks the length, the attributes and the FINGERPRINT, raising ``ValueError``).
"""

from __future__ import annotations

from aioice import stun as _stun

__all__ = ["AioiceStunCodec"]


class AioiceStunCodec:
    """``wgpy.nat.stun.StunCodec`` on aioice."""

    def binding_request(self, transaction_id: bytes) -> bytes:
        message = _stun.Message(
            message_method=_stun.Method.BINDING,
            message_class=_stun.Class.REQUEST,
            transaction_id=transaction_id,
        )
        message.add_fingerprint()
        return bytes(message)

    def mapped_address(self, data: bytes) -> object:
        return _stun.parse_message(data).attributes.get("XOR-MAPPED-ADDRESS")
