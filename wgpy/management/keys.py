"""Signing keys shared by replicas: where they come from, and how one is rotated.

Theory of operation: every replica of one deployment must sign maps and tokens with the same Ed25519 key and
answer proofs with the same X25519 key, so that an agent may talk to any of them with the same tokens. The keys
come from the state directory's 0600 files (``signing.key``, ``proof.key``: base64 of 32 bytes, as
``wgpy management init`` writes them; copy them to each replica, or share the directory), or from the environment
(``WGPY_SIGNING_KEY``, ``WGPY_PROOF_KEY``: the same base64 text), which wins over the files. Never the database.

Rotation of the signing key, announced in the signed maps (``key_rotation`` in ``wgpy.mesh.netmap``), in three
steps that each replica may take at its own pace:

1. *announce*: generate the next key and give every replica ``rotation.json`` (or ``WGPY_SIGNING_ROTATION``)
   ``{"next_key": "<base64 public key>", "until": <Unix seconds>}``; their maps, still signed with the old key,
   announce the next one, and agents accept maps signed by either until ``until``;
2. *switch*, before ``until``: make the next key each replica's ``signing.key`` and add ``"previous_key"`` (the old
   public key) to ``rotation.json``; maps and tokens are now signed with the new key; tokens signed with the old one
   stay valid (the replica verifies with both), and agents accept the new maps whichever replica sends them;
3. *finish*, after ``until``: remove ``rotation.json``. Agents pinned the new key when the window ended.

An agent offline for the whole window still pins the old key and must be enrolled again; choose the window to
cover the longest absence you expect. Refresh tokens signed by the old key verify while ``previous_key`` is
configured: keep it at least as long as a refresh token lives.

Pure: ``parse_rotation`` takes the text; ``server.load_keys`` reads the files and the environment.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .. import crypto

__all__ = [
    "PROOF_KEY_ENV",
    "ROTATION_ENV",
    "ROTATION_FILE",
    "SIGNING_KEY_ENV",
    "KeyRotation",
    "RotationError",
    "parse_rotation",
]

SIGNING_KEY_ENV: Final = "WGPY_SIGNING_KEY"
PROOF_KEY_ENV: Final = "WGPY_PROOF_KEY"
ROTATION_ENV: Final = "WGPY_SIGNING_ROTATION"
ROTATION_FILE: Final = "rotation.json"
_MAX_ROTATION_TEXT: Final = 4096


class RotationError(ValueError):
    """The rotation settings are malformed (one line, no key material)."""


@dataclass(frozen=True, slots=True)
class KeyRotation:
    """A rotation under way: maps announce ``next_key`` until ``until``; ``previous_key`` still verifies tokens."""

    next_key: crypto.Ed25519PublicKey
    until: int
    previous_key: crypto.Ed25519PublicKey | None = None

    @property
    def next_key_b64(self) -> str:
        return base64.b64encode(self.next_key.public_bytes_raw()).decode("ascii")

    def announcement(self) -> tuple[str, int]:
        """``(next_key base64, until)``: what each map's ``key_rotation`` carries."""
        return self.next_key_b64, self.until


def _public_key(value: object, name: str) -> crypto.Ed25519PublicKey:
    if not isinstance(value, str):
        raise RotationError(f"{name} must be a base64 Ed25519 public key")
    try:
        raw = base64.b64decode(value.strip(), validate=True)
        if len(raw) != 32:
            raise ValueError(name)
        return crypto.Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise RotationError(f"{name} must be a base64 Ed25519 public key (32 bytes)") from None


def parse_rotation(text: str) -> KeyRotation:
    """The rotation settings from their JSON text.

    Raises:
        RotationError: not the JSON object of the module docstring.
    """
    if len(text) > _MAX_ROTATION_TEXT:
        raise RotationError("the rotation settings are too long")
    try:
        value = json.loads(text)
    except ValueError:
        raise RotationError("the rotation settings are not JSON") from None
    if not isinstance(value, Mapping):
        raise RotationError("the rotation settings must be a JSON object")
    unknown = set(value) - {"next_key", "until", "previous_key"}
    if unknown:
        raise RotationError(f"unknown rotation setting {sorted(unknown)[0][:40]!r}")
    until = value.get("until")
    if not isinstance(until, int) or isinstance(until, bool) or not 0 < until < 2**53:
        raise RotationError("until must be Unix seconds (an integer)")
    previous = value.get("previous_key")
    return KeyRotation(
        _public_key(value.get("next_key"), "next_key"),
        until,
        None if previous is None else _public_key(previous, "previous_key"),
    )
