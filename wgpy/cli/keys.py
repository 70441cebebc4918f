"""``wgpy genkey | pubkey | genpsk``: WireGuard keys printed the way ``wg`` prints them.

A bad key on stdin gives one line on stderr and exit status 1.
"""

from __future__ import annotations

import sys

from ..errors import ConfigError
from ..keys import PresharedKey, PrivateKey

__all__ = ["genkey", "genpsk", "pubkey"]


def genkey() -> int:
    """``wgpy genkey``: a new private key, base64."""
    print(PrivateKey.generate().to_base64())
    return 0


def genpsk() -> int:
    """``wgpy genpsk``: a new preshared key, base64."""
    print(PresharedKey.generate().to_base64())
    return 0


def pubkey() -> int:
    """``wgpy pubkey``: the public key of the private key on stdin."""
    try:
        key = PrivateKey.from_base64(sys.stdin.read())
    except ConfigError:
        print("wgpy: Key is not the correct length or format", file=sys.stderr)
        return 1
    print(key.public_key().to_base64())
    return 0
