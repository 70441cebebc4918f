"""The agent process: a mesh-mode tunnel and the management client in one asyncio loop.

Theory of operation: ``AgentRunner`` owns a ``Device`` with the stored private key, a ``Tunnel`` (with a TUN
device, or without one: ``tun=None`` and an ``on_packet`` callback, as the demo and the tests run it) and the mesh
glue (``MeshAgent``, whose ``MeshController`` verifies every map against the pinned management key, applies it,
and keeps the ACL filter in the device). Beside them runs the control loop:

1. make sure an access token is in memory (refresh with the stored refresh token; the new refresh token is saved
   before the access token is used);
2. report the tunnel's endpoint (``POST /api/v1/peer/endpoint``): once, and again after a reconnect if the local
   address facing the server changed;
3. subscribe to the map stream; each ``map`` message's document goes to ``MeshAgent`` (and so to
   ``MeshController.apply_network_map``) and is acknowledged by serial once applied or already in force; a refused
   map is logged and not acknowledged;
4. when the connection ends or fails, wait ``Backoff.next_delay()`` (exponential, with jitter, capped) and go
   back to 1. While the server is away the last valid map stays in force and peers go on talking; with
   ``fail_closed`` the filter denies everything from the map's expiry on (``MeshAgent`` watches the clocks).

A refresher task keeps the access token fresh while a WebSocket stays open for hours. A revocation (a ``{"type":
"revoked"}`` frame, or a 403 ``revoked`` answer) that carries a notice signed by the pinned management key for this
peer (``wgpy.mesh.revocation``) drops every peer, denies all traffic, forgets the saved map and the refresh token,
says so in one line and stops the runner with ``RunnerExit.REVOKED``. The same signal without a valid notice (a
frame or status code anyone on the path of a plain-HTTP link could forge, the 4001 close code, the 403 of a
WebSocket handshake, which has no body) is not believed: the agent forgets its access token and reconnects, and the
server's answer to the refresh that follows carries the notice. Other refused credentials (401: the peer deleted,
the refresh token refused) stop the runner with ``CREDENTIALS_REFUSED`` and keep the state. ``status()`` is what
``wgpy status`` shows; with a state directory it is also written to ``status.json`` every second.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import enum
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from ..device import Device
from ..drivers.asyncio_udp import Tunnel
from ..drivers.clock import monotonic_now
from ..drivers.tasks import cancel_and_wait
from ..errors import ConfigError
from ..keys import PrivateKey, PublicKey
from ..management.pathreport import MAX_PATH_PEERS
from ..mesh import MapChanges, MapRejected, RejectReason
from ..mesh.agent import MeshAgent
from ..mesh.netmap import KeyRotation, load_management_public_key
from ..mesh.revocation import RevocationNotice, RevocationRejected, verify_revocation
from ..nat.io.agent import NatAgent
from ..nat.signal import NAT_FRAMES
from .client import Backoff, ManagementClient, ManagementError, MapStream
from .keystore import MAP_FILE, REFRESH_FILE, Enrolment, StateDir

if TYPE_CHECKING:
    from tun import TunDevice

    from ..crypto import Ed25519PublicKey

__all__ = ["AgentRunner", "RunnerExit", "ServerMeshAgent", "local_address_towards"]

logger = logging.getLogger("wgpy.agent")

CLOSE_REVOKED: Final = 4001  # the stream's close code for a revoked peer (docs/management-api.md)
CLOSE_REPLACED: Final = 4000  # the same peer opened a newer stream (another agent with this key?)
_CLOSE_WORDS: Final = {
    CLOSE_REPLACED: "another stream of this peer replaced ours (is a second agent running with this key?)",
    1013: "the management server holds its maximum of streams",
    1001: "the management server is shutting down",
    CLOSE_REVOKED: "the map stream was closed as revoked without a signed notice (asking the server again)",
}
STATUS_INTERVAL: Final = 1.0  # seconds between status.json writes (ours)
PATH_REPORT_EVERY: Final = 2.0  # seconds between looks at the peers' paths; a report is sent only on a change (ours)


def verified_revocation(
    notice: object,
    enrolment: Enrolment,
    public_key: PublicKey | None,
    keys: tuple[Ed25519PublicKey, ...] | None = None,
) -> RevocationNotice:
    """``notice`` checked against the management key(s) (``keys``, else the enrolment's pinned key) and this peer's
    id and WireGuard public key (``wgpy.mesh.revocation``).

    Raises:
        RevocationRejected: it is not a revocation of this peer by the management server.
    """
    if public_key is None:
        raise RevocationRejected("this device has no key")
    if keys is None:
        keys = (load_management_public_key(enrolment.management_key),)
    return verify_revocation(notice, keys, peer_id=enrolment.peer_id, public_key=public_key.to_base64())


def forget_revoked_state(state: StateDir) -> None:
    """What a revoked agent deletes: its saved map and its refresh token (the key and the enrolment stay, for
    ``wgpy status`` and ``wgpy logout``)."""
    for name in (MAP_FILE, REFRESH_FILE):
        with contextlib.suppress(OSError):
            state.file(name).unlink()


class RunnerExit(enum.Enum):
    STOPPED = "stopped"  # asked to stop (SIGTERM, wgpy down, the caller)
    REVOKED = "revoked"  # the server said the peer is revoked
    CREDENTIALS_REFUSED = "credentials_refused"  # the refresh token or the peer is no longer accepted
    TUNNEL_CLOSED = "tunnel_closed"  # the TUN device failed


class ServerMeshAgent(MeshAgent):
    """``MeshAgent`` with maps from the management stream: the same controller path, logged as from the server."""

    async def apply_from_server(self, document: bytes) -> MapChanges | None:
        """Verify and apply a map from the server as a map file or ``mesh_apply`` is: verified in a worker thread,
        applied in steps between which the data plane runs, one apply at a time (``apply_lock``); saves the state.
        ``None`` when the device has no private key. Applied on the loop in one go, a map of some thousands of
        peers stopped the tunnel for as long as its verification and its apply took (0.1-0.2 s each at 5,000 peers
        on a 2-vCPU AMD EPYC).

        Raises:
            MapRejected: The map was refused (logged here); nothing changed.
        """
        async with self.apply_lock:
            try:
                return await self._verify_and_apply(document, "the management server")
            except MapRejected as exc:
                self._log_rejected("the management server", exc)
                raise


def local_address_towards(url_host: str, port: int) -> str | None:
    """The local address the kernel would use to reach the management server (a UDP connect sends nothing)."""
    try:
        infos = socket.getaddrinfo(url_host, port, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _name, address in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as sock:
            sock.connect(address)
            host = sock.getsockname()[0]
            if isinstance(host, str) and host not in ("0.0.0.0", "::"):  # noqa: S104 - compared, not bound
                return host
    return None


class AgentRunner:
    """One enrolled device: its tunnel in mesh mode, and the control loop that keeps its map current."""

    def __init__(
        self,
        enrolment: Enrolment,
        private_key: PrivateKey,
        client: ManagementClient,
        *,
        state: StateDir | None = None,
        tun: TunDevice | None = None,
        on_packet: Callable[[bytes], None] | None = None,
        bind_address: str | None = None,
        advertise_host: str | None = None,
        fail_closed: bool = False,
        initial_map: bytes | None = None,
        backoff: Backoff | None = None,
        wall_clock: Callable[[], float] = time.time,
        worker: bool = False,
    ) -> None:
        """
        Args:
            enrolment: Who we are (``state.json``).
            private_key: The device's key (from the ``KeyStore``).
            client: The management client (its refresh token loaded, ``on_refresh_token`` persisting new ones).
            state: The state directory for ``map.json`` and ``status.json``; ``None`` keeps nothing on disk.
            tun: The TUN device, or ``None`` for an embedded tunnel whose packets go to ``on_packet``.
            bind_address: Bind the UDP socket to this address only (``127.0.0.1`` in the demo).
            advertise_host: The endpoint host to report; by default the address facing the management server.
            fail_closed: Deny all traffic once the map in force expires.
            initial_map: A signed document to apply at start (the map the enrolment answer carried).
            worker: Seal and write to the TUN device in a data-plane worker process (``drivers/worker.py``).
        """
        self.enrolment = enrolment
        self.client = client
        self.state = state
        self.fail_closed = fail_closed
        self.advertise_host = advertise_host
        self.backoff = backoff if backoff is not None else Backoff()
        self.wall_clock = wall_clock
        self.device = Device(private_key, listen_port=enrolment.listen_port)
        self.tunnel = Tunnel(self.device, tun=tun, on_packet=on_packet, bind_address=bind_address, worker=worker)
        self.nat = NatAgent(wall_clock=wall_clock)  # NAT traversal (issue #15): STUN, candidates, the relay
        self._bind_address = bind_address
        self._initial_map = initial_map
        self.mesh: ServerMeshAgent | None = None
        self.connected = False
        self.endpoint: tuple[str, int] | None = None
        self.endpoint_reported = False
        self.last_error: str | None = None
        self.maps_applied = 0
        self.exit_reason: RunnerExit | None = None
        self.map_applied = asyncio.Event()  # set after each applied map (tests and the demo wait on it)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._status_timer: asyncio.TimerHandle | None = None
        self._logged_error: str | None = None
        self._stream: MapStream | None = None  # the open map stream, for the path report

    def __repr__(self) -> str:
        return f"AgentRunner(peer={self.enrolment.peer_id!r}, address={self.enrolment.address!r})"

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the tunnel, install the mesh filter (deny all until a map), apply what we have, start the loop."""
        map_path = self.state.file(MAP_FILE) if self.state is not None else None
        await self.tunnel.start()
        self.nat.attach(self.tunnel)
        try:
            mesh = ServerMeshAgent.create(
                self.tunnel, self.enrolment.management_key, fail_closed=self.fail_closed, state_path=map_path
            )
        except Exception:
            self.tunnel.close()
            raise
        if not isinstance(mesh, ServerMeshAgent):  # create() is typed as returning the base class
            raise TypeError("ServerMeshAgent.create returned another class")
        self.mesh = mesh
        self._restore_rotation(mesh)
        mesh.start()  # the filter is in place before any peer exists; resumes the saved map if still valid
        self._refresh_endpoint()
        if self._initial_map is not None:
            await self.apply_map(self._initial_map)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._control_loop()),
            loop.create_task(self._refresher()),
            loop.create_task(self._path_reporter()),
        ]
        self._write_status()

    def stop(self, reason: RunnerExit = RunnerExit.STOPPED) -> None:
        """Ask the runner to stop (idempotent; the first reason wins)."""
        if self.exit_reason is None:
            self.exit_reason = reason
        self._stop.set()

    async def wait(self) -> RunnerExit:
        """Run until stopped (or the tunnel closes), then tear everything down; returns why it ended."""
        closed = asyncio.ensure_future(self.tunnel.wait_closed())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            stopping.cancel()
        if self.exit_reason is None:
            self.exit_reason = RunnerExit.TUNNEL_CLOSED
        await self.close()
        return self.exit_reason

    async def close(self) -> None:
        """Stop the loop, the tunnel and the client."""
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        with contextlib.suppress(Exception):  # a task's own failure does not stop the close; a cancel of ours does
            await cancel_and_wait(*tasks)
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        self.connected = False
        if self.mesh is not None:
            self.mesh.close()
        self.nat.close()
        self.tunnel.close()
        self._write_status()
        await self.client.close()

    def _refresh_endpoint(self) -> None:
        """Work out the endpoint to report; report it again if it changed (the device moved to another network)."""
        host = self.advertise_host or self._bind_address
        if host is None:
            url = self.client.base_url
            host = local_address_towards(url.host or "", url.port or (443 if url.scheme == "https" else 80))
        endpoint = (host, self.tunnel.local_port) if host else None
        self.nat.handler.host_candidates = [endpoint] if endpoint else []
        if endpoint != self.endpoint:
            self.endpoint = endpoint
            self.endpoint_reported = False

    # --- maps -----------------------------------------------------------------------------------------------------

    async def apply_map(self, document: bytes) -> int | None:
        """Apply a signed document through the controller; the serial now in force for it, or ``None`` if refused."""
        mesh = self.mesh
        if mesh is None:
            return None
        try:
            changes = await mesh.apply_from_server(document)
        except MapRejected as exc:
            if (
                exc.reason is RejectReason.STALE_SERIAL
                and exc.serial is not None
                and exc.serial == mesh.controller.serial
            ):
                return exc.serial  # the map in force already: acknowledge it again
            return None
        if changes is None:  # the device has no private key (never so for an enrolled agent)
            return None
        self.maps_applied += 1
        self.nat.peers_changed()
        self._persist_keys(mesh)
        self.map_applied.set()
        self._write_status()
        return changes.serial

    def _restore_rotation(self, mesh: ServerMeshAgent) -> None:
        """Give the controller the rotation a signed map announced before a restart (``state.json``)."""
        enrolment = self.enrolment
        if enrolment.management_key_next is None or enrolment.management_key_until is None:
            return
        try:
            key = load_management_public_key(enrolment.management_key_next)
        except ConfigError:
            return
        mesh.controller.rotation = KeyRotation(key.public_bytes_raw(), enrolment.management_key_until)

    def _persist_keys(self, mesh: ServerMeshAgent) -> None:
        """Keep the pinned key and any announced rotation in ``state.json`` (and the client) once they change."""
        controller = mesh.controller
        pinned = base64.b64encode(controller.management_public_key.public_bytes_raw()).decode("ascii")
        rotation = controller.rotation
        following = base64.b64encode(rotation.next_key).decode("ascii") if rotation is not None else None
        until = rotation.until if rotation is not None else None
        enrolment = self.enrolment
        if (pinned, following, until) == (
            enrolment.management_key,
            enrolment.management_key_next,
            enrolment.management_key_until,
        ):
            return
        if pinned != enrolment.management_key:
            logger.info("the management signing key rotation is complete: the new key is pinned")
            self.client.management_key = controller.management_public_key
        self.enrolment = dataclasses.replace(
            enrolment, management_key=pinned, management_key_next=following, management_key_until=until
        )
        if self.state is not None:
            try:
                self.state.write_enrolment(self.enrolment)
            except ConfigError as exc:
                logger.warning("%s", exc)

    def revoke(self, reason: str = "revoked") -> None:
        """The peer was revoked (or deleted: ``reason``): drop every peer, deny everything, forget the map and
        tokens, stop."""
        device = self.device
        if self.mesh is not None:
            self.mesh.close()  # first: a saved map still being applied in steps must not bring its peers back
        for key in list(device.peers):
            device.remove_peer(key)
        if self.mesh is not None:
            self.mesh.controller.filter.load(None)
            self.mesh.controller.network_map = None
        self.tunnel.flush()
        if self.state is not None:
            forget_revoked_state(self.state)
        logger.error(
            "peer %s was %s by the management server: all peers dropped, traffic stopped",
            self.enrolment.peer_id,
            reason,
        )
        self.last_error = f"{reason} by the management server"
        self.stop(RunnerExit.REVOKED)

    # --- the control loop -----------------------------------------------------------------------------------------

    def _note_error(self, exc: ManagementError) -> None:
        message = str(exc)
        self.last_error = message
        if message != self._logged_error:  # one line per distinct problem, not one per retry
            self._logged_error = message
            logger.warning("%s (retrying with backoff; the last map stays in force)", message)

    def _notice_verified(self, notice: object, where: str) -> RevocationNotice | None:
        """The notice if it is a revocation of this peer signed by a management key in force; else logs why not."""
        keys = self.mesh.controller.accepted_keys(self.wall_clock()) if self.mesh is not None else None
        try:
            return verified_revocation(notice, self.enrolment, self.device.public_key, keys)
        except RevocationRejected as exc:
            logger.warning("%s said this peer is revoked, but not believed (%s): asking the server again", where, exc)
            return None

    def _credentials_refused(self, exc: ManagementError) -> bool:
        """The server refused our credentials: revoke, stop, or (``False``) go on retrying."""
        if exc.status == 403:  # the peer itself is revoked (a 401 "revoked" is a refresh-token family)
            verified = self._notice_verified(exc.notice, "a 403 answer")
            if verified is not None:
                self.revoke(verified.reason)
                return True
            self.client.forget_access_token()  # the refresh that follows gets the notice, if the 403 was real
            self._note_error(ManagementError(f"{exc} (no valid signed revocation notice)", retryable=True))
            return False
        self.last_error = str(exc)
        logger.error("%s: the server no longer accepts this peer's credentials; enrol again with a setup key", exc)
        self.stop(RunnerExit.CREDENTIALS_REFUSED)
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

    async def _control_loop(self) -> None:
        client = self.client
        asked_again = False
        while not self._stop.is_set():
            try:
                await client.ensure_access()
                self._refresh_endpoint()
                if not self.endpoint_reported and self.endpoint is not None:
                    await client.report_endpoint(*self.endpoint)
                    self.endpoint_reported = True
                async with client.stream() as stream:
                    self.connected = True
                    self._logged_error = None
                    self.last_error = None
                    logger.info("connected to the management server %s", client.base_url)
                    self._write_status()
                    await self.nat.stream_opened(stream.send)
                    self._stream = stream  # for the path reporter, while ``connected``
                    asked_again = False  # a stream came up: the next bodiless 403 may be asked about at once
                    revoked = await self._consume(stream)
                    self.nat.stream_closed()
                    code = stream.close_code
                self.connected = False
                if revoked is not None:
                    self.revoke(revoked.reason)
                    return
                if code == CLOSE_REVOKED:
                    client.forget_access_token()  # not believed without a notice: the refresh will tell
                if not self._stop.is_set():
                    words = _CLOSE_WORDS.get(code or 0, "the management server closed the map stream")
                    self._note_error(ManagementError(words, retryable=True))
            except ManagementError as exc:
                self.connected = False
                if exc.fatal and not exc.retryable:
                    if self._credentials_refused(exc):
                        return
                    if exc.notice is None and not asked_again:
                        # A 403 with no body at all (the WebSocket handshake's): a real revocation's notice is one
                        # refresh away, so ask once at once, not after the backoff (which an outage may have grown).
                        asked_again = True
                        continue
                else:
                    if exc.status == 401:
                        client.forget_access_token()
                    self._note_error(exc)
            except (OSError, ValueError) as exc:  # a broken frame or socket below aiohttp's own errors
                self.connected = False
                self._note_error(ManagementError(f"the map stream failed ({type(exc).__name__})", retryable=True))
            self._write_status()
            if self._stop.is_set():
                return
            await self._sleep(self.backoff.next_delay())

    async def _consume(self, stream: MapStream) -> RevocationNotice | None:
        """Read server messages until the stream ends; the verified notice if the peer was revoked."""
        first = True
        attempt = self.backoff.attempt  # where the backoff stood before this connection
        while not self._stop.is_set():
            message = await stream.receive()
            if message is None:
                return None
            kind = message.get("type")
            if kind == "map":
                document = message.get("document")
                if not isinstance(document, dict):
                    logger.warning("the management server sent a map message without a document: ignored")
                    continue
                data = json.dumps(document, separators=(",", ":")).encode("ascii")
                serial = await self.apply_map(data)
                if serial is not None:
                    await stream.ack(serial)
                    if first:
                        self.backoff.reset()  # a working connection: the next failure starts from the base delay
                        first = False
            elif kind == "revoked":
                verified = self._notice_verified(message.get("notice"), "the map stream")
                if verified is None:
                    # Not believed: the refresh that follows tells, and this connection did not count as working
                    # (forged frames after each map must not keep the agent reconnecting at the base delay).
                    self.client.forget_access_token()
                    self.backoff.attempt = max(self.backoff.attempt, attempt)
                return verified
            elif kind == "pong":
                continue
            elif kind in NAT_FRAMES:
                await self.nat.on_frame(message)
            else:
                logger.info("the management server sent a message of unknown type: ignored")
        return None

    async def _refresher(self) -> None:
        """Refresh the access token before it expires, also while one WebSocket stays open for hours."""
        client = self.client
        backoff = Backoff(base=1.0, cap=60.0)
        while not self._stop.is_set():
            due = client.access_refresh_at
            if due == 0.0:
                await self._sleep(1.0)
                continue
            wait = due - self.wall_clock()
            if wait > 0:
                await self._sleep(min(wait, 30.0))
                continue
            try:
                await client.refresh()
                backoff.reset()
            except ManagementError as exc:
                if exc.fatal and not exc.retryable:
                    if self._credentials_refused(exc):
                        return
                else:
                    self._note_error(exc)
                await self._sleep(backoff.next_delay())

    # --- the path report (docs/management-api.md, "Path report") ----------------------------------------------

    def path_report(self) -> dict[str, str]:
        """Each peer's path as this agent sees it, for the server's peer listing: the NAT traversal's state
        (``wgpy.nat.paths.PathState``), or ``direct`` for a peer reached on its map endpoint without candidates
        (a completed handshake, no relay involved). Peers with nothing to say yet are left out."""
        self.nat.handler.observe_paths()
        report: dict[str, str] = {}
        for key, peer in self.device.peers.items():
            paths = self.nat.handler.paths.get(key)
            state = paths.state.value if paths is not None else "idle"
            if state == "idle":
                if peer.last_handshake_at is None:
                    continue
                state = "direct"
            report[key.to_base64()] = state
            if len(report) >= MAX_PATH_PEERS:
                break
        return report

    async def _path_reporter(self) -> None:
        """Send ``{"type": "paths"}`` on the open stream whenever the report changed (and once per new stream)."""
        sent: tuple[MapStream, dict[str, str]] | None = None
        while not self._stop.is_set():
            await self._sleep(PATH_REPORT_EVERY)
            stream = self._stream
            if stream is None or not self.connected:
                continue
            report = self.path_report()
            if sent is not None and sent[0] is stream and sent[1] == report:
                continue
            try:
                await stream.send({"type": "paths", "paths": report})
            except (ConnectionError, RuntimeError, OSError):
                continue  # the stream is closing: the next one gets the report
            sent = (stream, report)

    # --- status ---------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """What ``wgpy status`` shows about the running agent (no secret in it)."""
        netmap = self.mesh.controller.network_map if self.mesh is not None else None
        now = monotonic_now()
        peers = []
        for key, peer in self.device.peers.items():
            peers.append(
                {
                    "public_key": key.to_base64(),
                    "allowed_ips": [str(n) for n in self.device.allowed_ips.entries_for_peer(peer)],
                    "endpoint": list(peer.endpoint[:2]) if peer.endpoint is not None else None,
                    "latest_handshake_ago": (
                        round(now - peer.last_handshake_at, 1) if peer.last_handshake_at is not None else None
                    ),
                    "rx_bytes": peer.rx_bytes,
                    "tx_bytes": peer.tx_bytes,
                    "path": self.nat.describe(key),
                }
            )
        return {
            "pid": os.getpid(),
            "connected": self.connected,
            "peer_id": self.enrolment.peer_id,
            "address": self.enrolment.address,
            "management_url": self.enrolment.management_url,
            "endpoint": list(self.endpoint) if self.endpoint is not None else None,
            "listen_port": self.tunnel.local_port,
            "map_serial": netmap.serial if netmap is not None else None,
            "map_expires_at": netmap.expires_at if netmap is not None else None,
            "fail_closed": self.fail_closed,
            "traffic_allowed": self.mesh.controller.traffic_allowed(self.wall_clock()) if self.mesh else False,
            "peers": peers,
            "last_error": self.last_error,
            "exit": self.exit_reason.value if self.exit_reason is not None else None,
            "updated_at": int(self.wall_clock()),
        }

    def _write_status(self) -> None:
        if self._status_timer is not None:
            self._status_timer.cancel()
            self._status_timer = None
        if self.state is None:
            return
        self.state.write_status(self.status())
        if not self._stop.is_set():
            with contextlib.suppress(RuntimeError):
                self._status_timer = asyncio.get_running_loop().call_later(STATUS_INTERVAL, self._write_status)
