"""``wgpy genkey | pubkey | genpsk``: WireGuard keys printed the way ``wg`` prints them.

A bad key on stdin gives one line on stderr and exit status 1; so do a closed stdin and a stdout that cannot be
written (``_streams.StreamError``, reported by ``wgpy.cli.main``).
"""

from __future__ import annotations

import sys
from typing import Final

from ..errors import ConfigError
from ..keys import PresharedKey, PrivateKey
from ._streams import read_stdin, write_stdout

__all__ = ["genkey", "genpsk", "pubkey"]

MAX_KEY_INPUT: Final = 4096  # bytes of stdin `pubkey` reads: a key is 44 characters, the rest is whitespace at most


def genkey() -> int:
    """``wgpy genkey``: a new private key, base64."""
    write_stdout(PrivateKey.generate().to_base64() + "\n")
    return 0


def genpsk() -> int:
    """``wgpy genpsk``: a new preshared key, base64."""
    write_stdout(PresharedKey.generate().to_base64() + "\n")
    return 0


def pubkey() -> int:
    """``wgpy pubkey``: the public key of the private key on stdin."""
    data = read_stdin(MAX_KEY_INPUT + 1)
    try:
        if len(data) > MAX_KEY_INPUT:
            raise ConfigError("too long")
        key = PrivateKey.from_base64(data.decode("ascii"))
    except (ConfigError, UnicodeDecodeError):
        print("wgpy: Key is not the correct length or format", file=sys.stderr)
        return 1
    write_stdout(key.public_key().to_base64() + "\n")
    return 0
