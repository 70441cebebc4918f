"""Enrolment and resumption: from a setup key (or the state directory) to a client with live credentials.

Theory of operation: ``enrol_device`` pins the management key the operator gave, asks ``/api/v1/info`` for the
proof key and accepts it only if the pinned key signed it, generates the WireGuard key pair *here* and keeps the
private half in the ``KeyStore``, sends only the public half with the setup key, then saves the enrolment and the
refresh token. A failed enrolment leaves nothing behind (the fresh private key is deleted again).

``resume_device`` reads the same state back for a second ``wgpy up``: no setup key is needed, the refresh token
brings a new access token. A ``--management-key`` given again must equal the pinned one: a server cannot be
swapped under an enrolled device by changing a flag.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..keys import PrivateKey, PublicKey
from ..mesh import load_management_public_key
from .client import ManagementClient
from .keystore import Enrolment, KeyStore, StateDir

if TYPE_CHECKING:
    import aiohttp

__all__ = ["Enrolled", "enrol_device", "normalise_management_key", "resume_device"]


@dataclass(slots=True)
class Enrolled:
    """An enrolled device: its state, key and a client holding its credentials."""

    enrolment: Enrolment
    private_key: PrivateKey
    client: ManagementClient
    initial_map: bytes | None = None

    def __repr__(self) -> str:
        return f"Enrolled(peer_id={self.enrolment.peer_id!r}, private_key=<hidden>)"


def normalise_management_key(text: str) -> str:
    """The pinned key in canonical base64.

    Raises:
        ConfigError: ``--management-key: ...`` when it is not a 32-byte Ed25519 public key in base64.
    """
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("--management-key: not base64 (the management server's Ed25519 public key)") from None
    try:
        load_management_public_key(raw)
    except ConfigError as exc:
        raise ConfigError(f"--management-key: {exc}") from None
    return base64.b64encode(raw).decode("ascii")


async def enrol_device(
    state: StateDir,
    keystore: KeyStore,
    *,
    url: str,
    setup_key: str,
    management_key: str,
    name: str | None = None,
    interface: str | None = None,
    listen_port: int = 0,
    fail_closed: bool = False,
    endpoint: tuple[str, int] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Enrolled:
    """Enrol with a setup key. Raises ``ConfigError`` or ``ManagementError`` (one line each)."""
    pinned = normalise_management_key(management_key)
    state.ensure()
    private_key, storage = keystore.create()
    client = ManagementClient(
        url,
        private_key,
        load_management_public_key(pinned),
        on_refresh_token=state.write_refresh_token,
        session=session,
    )
    try:
        info = await client.fetch_info()
        result = await client.enrol(setup_key, name, endpoint)
    except BaseException:
        await client.close()
        keystore.delete(storage)
        state.remove_all()
        raise
    enrolment = Enrolment(
        management_url=url,
        management_key=pinned,
        proof_key=info.proof_key.to_base64(),
        peer_id=result.peer_id,
        address=result.address,
        network=info.network,
        name=result.name if result.name is not None else name,
        interface=interface,
        listen_port=listen_port,
        key_storage=storage,
        fail_closed=fail_closed,
    )
    state.write_enrolment(enrolment)
    document = None
    if result.map_document is not None:
        document = json.dumps(result.map_document, separators=(",", ":")).encode("ascii")
    return Enrolled(enrolment, private_key, client, document)


def resume_device(
    state: StateDir,
    keystore: KeyStore,
    *,
    management_key: str | None = None,
    url: str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> Enrolled:
    """A client for an enrolled device from its state directory (no network yet).

    Raises:
        ConfigError: Not enrolled, corrupt state, a different --management-key or --management URL.
    """
    enrolment = state.read_enrolment()
    if enrolment is None:
        raise ConfigError(f"not enrolled (no state in {state.path}): run wgpy up with --setup-key")
    if management_key is not None and normalise_management_key(management_key) != enrolment.management_key:
        raise ConfigError(
            "--management-key differs from the key pinned at enrolment (run wgpy logout first to enrol elsewhere)"
        )
    if url is not None and url.rstrip("/") != enrolment.management_url.rstrip("/"):
        raise ConfigError(
            f"already enrolled with {enrolment.management_url} (run wgpy logout first to enrol elsewhere)"
        )
    private_key = keystore.load(enrolment.key_storage)
    refresh_token = state.read_refresh_token()
    if refresh_token is None:
        raise ConfigError("no refresh token in the state directory: enrol again (wgpy logout --force, then wgpy up)")
    client = ManagementClient(
        enrolment.management_url,
        private_key,
        load_management_public_key(enrolment.management_key),
        proof_key=PublicKey.from_base64(enrolment.proof_key),
        refresh_token=refresh_token,
        on_refresh_token=state.write_refresh_token,
        session=session,
    )
    return Enrolled(enrolment, private_key, client)
