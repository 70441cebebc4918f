"""Shared fixtures of the device tests; the helpers themselves live in ``tests/support/helpers.py``.

``tests/`` is not a package: this directory is put on ``sys.path`` (pytest's default import mode does so too, this
makes it hold under ``--import-mode=importlib`` as well) so that test modules in every folder can
``import support.helpers``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from support.helpers import Pair, make_pair  # noqa: E402


@pytest.fixture
def pair() -> Pair:
    """Two devices on a lossless network, configured as each other's peer, with no session yet."""
    return make_pair()


@pytest.fixture
def connected() -> Pair:
    """Two devices with a confirmed session (A initiated), nothing delivered yet."""
    p = make_pair()
    p.handshake()
    return p


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory for unix sockets: a socket path must fit in 108 bytes, which tmp_path does not
    promise."""
    path = Path(tempfile.mkdtemp(prefix="wgpys"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
