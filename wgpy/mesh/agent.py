"""Mesh mode for the daemon: the glue between a running ``Tunnel`` and a ``MeshController``.

This module is part of the I/O layer (it reads and writes the state file, polls the map file, opens the audit log
and runs on the event loop); the decisions are the controller's (``wgpy.mesh.controller``). Its options are parsed
by ``wgpy.cli.daemon`` and the ``wgpy mesh keygen | pubkey | sign | apply`` commands live in ``wgpy.cli.mesh``.

Theory of operation: ``MeshAgent`` is the glue between a running ``Tunnel`` and a ``MeshController`` (``wgpy.mesh``).
It installs the controller's packet filter in the device (``Device.packet_filter``), forwards the device's events to
the audit log (``Tunnel.on_event``), and feeds the controller signed network maps from two places:

* a *watched file* (``--mesh-map FILE``): applied at start, then its inode, mtime and size are polled every
  ``POLL_INTERVAL`` seconds on the event loop (``call_later``, no extra dependency) and each new version is applied.
  Write new versions atomically (write a temporary file, then ``rename`` it over the old one); a half-written file
  is only refused as ``malformed`` and retried when it changes again;
* the UAPI socket (``wgpy mesh apply IFNAME FILE``, the ``mesh_apply=1`` extension of ``uapi_server.py``).

Both, and the saved map of a restart, take the same path once a document is larger than ``INLINE_DOCUMENT``:
verified in a worker thread, then applied in steps on the event loop, built beside the device and swapped in at
once (the serial checked again at the swap), so forwarding goes on while a 16 MiB map is taken in. One apply runs
at a time: the UAPI server serialises ``set``, ``get`` and ``mesh_apply`` with the agent's ``apply_lock``, and the
file and saved maps take that lock too (``_apply_queued``). A smaller document is verified and applied at once
(tens of milliseconds) when that cannot come between another apply's steps.

A refused map is logged as one line (``network map ... rejected (reason): detail``) and changes nothing. A map can
only be applied once the device has its private key (it finds itself in the map by its public key); a daemon
started with ``--mesh-map`` and configured with ``wg set ... private-key`` afterwards applies the file as soon as
the key arrives (the UAPI server tells the agent after each ``set``).

Restarts. With ``--mesh-state FILE`` the last accepted map (its serial and the signed document) is saved after each
map, atomically and with mode 0600. At start the saved serial is handed to the controller, so any older map is
refused (``stale_serial``) and a replayed old map file cannot roll the device back. If the saved document itself
still verifies (signature, not expired), it is applied again first: the device comes back with its last known good
map even when maps only ever arrive over the socket. A state file that cannot be read stops the daemon before it
creates its interface (delete it to start afresh, accepting any serial again).

Clocks. Map validity is wall-clock (``time.time()``); the filter runs on the device's monotonic clock.
``MeshController.note_clock`` ties the two together on every tick. With ``--fail-closed`` the controller gives the
filter the monotonic instant at which the map expires, and the filter drops every packet from then on
(``map-expired``) until a newer map arrives; the agent logs the change once each way. Without it an expired map
stays in force (last known good), with one warning.

The map is authoritative for peers: a peer added with ``wg set`` survives only until the next map is applied.
Where the audit log goes is chosen here too: ``--audit-log FILE`` (appended, mode 0600) or ``-`` (stdout) puts the
``wgpy.audit`` JSON lines there and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..crypto import Ed25519PublicKey
from ..drivers.clock import monotonic_now
from ..drivers.private_file import open_private_append
from ..drivers.uapi_server import MeshApplyReply, thaw_collector
from ..errors import ConfigError
from . import (
    AUDIT_LOGGER_NAME,
    AuditLog,
    MapChanges,
    MapRejected,
    MeshController,
    RejectReason,
    load_management_public_key,
)
from .netmap import MAX_DOCUMENT_SIZE, NetworkMap

if TYPE_CHECKING:
    from ..drivers.asyncio_udp import Tunnel
    from ..events import Event

__all__ = [
    "POLL_INTERVAL",
    "MeshAgent",
    "MeshDaemonConfig",
    "MeshState",
    "open_audit_log",
    "prepare_daemon",
    "read_state",
    "write_private_file",
    "write_state",
]

logger = logging.getLogger("wgpy.mesh")

POLL_INTERVAL: Final = 1.0  # seconds between looks at the map file and the clocks (ours)
STATE_VERSION: Final = 1  # the "version" field of the state file (ours)
LARGE_DOCUMENT: Final = 1024 * 1024  # bytes of a mesh_apply document above which the collector is kept away (ours)
FREEZE_INTERVAL: Final = 0.05  # seconds between two gc.freeze() while a large document is verified (ours)
INLINE_DOCUMENT: Final = 64 * 1024  # bytes of a file or saved map still verified and applied at once (ours: ~30 ms)
NO_PRIVATE_KEY: Final = "no_private_key"  # the UAPI reason when the device cannot find itself in any map yet


# ----------------------------------------------------------------------------------------------------------------
# The state file
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeshState:
    """What ``--mesh-state`` remembers: the serial of the last accepted map and that map's signed document."""

    serial: int | None = None
    document: bytes | None = None


def read_state(path: Path) -> MeshState:
    """Read a state file; a missing file is an empty state.

    Raises:
        ConfigError: The file exists but cannot be read or is not a state file (one line, for the command line).
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return MeshState()
    except OSError as exc:
        raise ConfigError(f"cannot read the mesh state {path}: {exc.strerror or exc}") from None
    try:
        state = json.loads(raw)
        serial = state["serial"]
        document = state.get("document")
        if state.get("version") != STATE_VERSION or not isinstance(serial, int) or isinstance(serial, bool):
            raise ValueError("unknown format")
        if serial < 0 or (document is not None and not isinstance(document, dict)):
            raise ValueError("unknown format")
    except (ValueError, TypeError, KeyError, AttributeError):
        raise ConfigError(
            f"the mesh state {path} is not a wgpy state file (delete it to accept maps of any serial again)"
        ) from None
    encoded = json.dumps(document, separators=(",", ":")).encode("ascii") if document is not None else None
    return MeshState(serial, encoded)


def write_state(path: Path, serial: int, document: bytes) -> None:
    """Save the accepted map atomically (temporary file, fsync, rename), readable by its owner only.

    Raises:
        OSError: The file could not be written; the old one is left as it was.
    """
    record = {"version": STATE_VERSION, "serial": serial, "document": json.loads(document)}
    data = (json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
    write_private_file(path, data)


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file opened ``O_NOFOLLOW``, fsync, rename) with mode 0600.

    Raises:
        OSError: The file could not be written; the old one is left as it was and the temporary file is removed.
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


SAVED_STATE: Final = "the saved state"  # the source of a resumed map, in log lines


# ----------------------------------------------------------------------------------------------------------------
# The agent
# ----------------------------------------------------------------------------------------------------------------


class MeshAgent:
    """Runs a ``MeshController`` beside a ``Tunnel``: map file, UAPI maps, state, clocks and audit events."""

    def __init__(
        self,
        tunnel: Tunnel,
        controller: MeshController,
        *,
        map_path: Path | None,
        state_path: Path | None,
        resume_document: bytes | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """
        Args:
            tunnel: The running tunnel whose device the maps configure.
            controller: The controller (its ``current_serial`` already restored, see ``MeshAgent.create``).
            map_path: The map file to apply and watch, or ``None``.
            state_path: Where to save each accepted map, or ``None``.
            resume_document: A saved map to apply before anything else (``MeshAgent.create`` decides).
            wall_clock: Unix time in seconds, for map validity (tests replace it).
        """
        self.tunnel = tunnel
        self.controller = controller
        self.map_path = map_path
        self.state_path = state_path
        self._resume_document = resume_document
        self.wall_clock = wall_clock
        self._file_stamp: tuple[int, int, int] | None = None
        self._file_pending: bytes | None = None  # a new file version waiting for the private key
        self._file_problem: str | None = None  # the last problem logged about the file, so it is logged once
        self._waiting_logged = False
        self._traffic_allowed: bool | None = None
        self._expired_logged: int | None = None  # serial of the map whose (fail-open) expiry was logged
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # One map (or UAPI set) applied at a time: the UAPI server takes this lock around set, get and mesh_apply,
        # and the file and saved maps take it too, so two applies never build beside the device at once.
        self.apply_lock = asyncio.Lock()
        self._applying: asyncio.Task[None] | None = None  # the task applying the file or saved map off the loop

    @classmethod
    def create(
        cls,
        tunnel: Tunnel,
        management_public_key: Ed25519PublicKey | bytes | str,
        *,
        fail_closed: bool = False,
        map_path: Path | None = None,
        state_path: Path | None = None,
        state: MeshState | None = None,
        audit: AuditLog | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> MeshAgent:
        """An agent with a new controller whose serial is restored from ``state`` (read from ``state_path`` if
        not given).

        Raises:
            ConfigError: A bad management key, or an unreadable state file.
        """
        key = load_management_public_key(management_public_key)
        if state is None:
            state = read_state(state_path) if state_path is not None else MeshState()
        # The saved map is verified only when it is applied again (``resuming``, see ``MeshController``).
        serial, document = state.serial, state.document if state.serial is not None else None
        controller = MeshController(key, fail_closed=fail_closed, audit=audit, current_serial=serial)
        return cls(
            tunnel,
            controller,
            map_path=map_path,
            state_path=state_path,
            resume_document=document,
            wall_clock=wall_clock,
        )

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Install the filter and the event hook, apply what can be applied, and start the poll timer.

        Call it from the event loop, after ``Tunnel.start`` and before the UAPI server starts.
        """
        self._loop = asyncio.get_running_loop()
        self.tunnel.device.packet_filter = self.controller.filter
        self.tunnel.on_event = self._on_event
        self._tick()

    def close(self) -> None:
        """Stop polling. The filter stays installed: closing the agent never opens the device up."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._applying is not None:
            self._applying.cancel()  # nothing is swapped in by a cancelled apply

    async def settled(self) -> None:
        """Wait until the file or saved map being applied (if any) has been applied or refused."""
        while self._applying is not None and not self._applying.done():
            await asyncio.wait((self._applying,))

    # --- inputs ---------------------------------------------------------------------------------------------------

    async def apply_document(self, document: bytes) -> MeshApplyReply:
        """The ``mesh_apply=1`` UAPI extension: apply a signed map, answer with what happened (never raises).

        A document may be 16 MiB, whose verification (JSON, canonical form, signature, every peer's fields) took
        5.9 s for 65,535 peers: it runs in a worker thread (``MeshController.verifier``, which reads no state),
        and the event loop, and so the data plane, keeps running meanwhile. The apply (2.6 s for those peers) runs
        on the loop in steps, built beside the device and swapped in at once, the serial checked again at the swap.
        """
        try:
            changes = await self._verify_and_apply(document, "the UAPI socket")
        except MapRejected as exc:
            return self._refused("the UAPI socket", exc)
        if changes is None:
            return _no_private_key()
        return MeshApplyReply(
            0,
            (
                ("serial", str(changes.serial)),
                ("added", str(len(changes.added))),
                ("removed", str(len(changes.removed))),
                ("changed", str(len(set(changes.allowed_ips_changed) | set(changes.endpoints_changed)))),
            ),
        )

    async def _verify_and_apply(self, document: bytes, source: str, *, resuming: bool = False) -> MapChanges | None:
        """Verify ``document`` in a worker thread, then apply it in steps on the loop (``_apply_verified``); the
        caller holds ``apply_lock``. ``None`` when the device has no private key (before or after the verification).
        ``resuming``: ``document`` is the saved map (``MeshController.apply_network_map``).

        Raises:
            MapRejected: The map was refused (audited, not logged); nothing changed.
        """
        if self.tunnel.device.public_key is None:
            return None
        now_wall = self.wall_clock()
        self.controller.note_clock(now_wall, monotonic_now())
        verify = self.controller.verifier(now_wall, resuming=resuming)
        large = len(document) >= LARGE_DOCUMENT
        try:
            verifying = asyncio.ensure_future(asyncio.to_thread(verify, document))
            while large and not verifying.done():
                # The worker allocates millions of objects; CPython's full collections over them (up to 1.5 s, GIL
                # held) would stop the loop as surely as verifying on it. As for a large UAPI set (see
                # drivers/uapi_server.py), move what exists out of the collector's way now and then.
                gc.freeze()
                await asyncio.wait((verifying,), timeout=FREEZE_INTERVAL)
            netmap = await verifying
        except MapRejected as exc:
            if large:
                thaw_collector()
            self.controller.map_rejected(exc, monotonic_now())
            raise
        if self.tunnel.device.public_key is None:
            return None  # removed while the document was verified
        return await self._apply_verified(netmap, document, now_wall, source, resuming=resuming)

    def _refused(self, source: str, exc: MapRejected) -> MeshApplyReply:
        self._log_rejected(source, exc)
        return MeshApplyReply(errno.EINVAL, (("reason", exc.reason.value), ("detail", _printable(exc.detail))))

    def configuration_changed(self) -> None:
        """After a UAPI ``set``: a private key may have arrived, so apply what was waiting for one (and look at the
        map file now rather than at the next poll)."""
        if not self._closed:
            self._apply_pending(lock_holder_done=True)
            self._check_file(lock_holder_done=True)
            self._check_traffic(self.wall_clock())

    def poll(self) -> None:
        """One look at the clocks and the map file (the timer does this every ``POLL_INTERVAL`` seconds)."""
        now_wall = self.wall_clock()
        self.controller.note_clock(now_wall, monotonic_now())
        self._apply_pending()
        self._check_file()
        self._check_traffic(now_wall)

    # --- internals ------------------------------------------------------------------------------------------------

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        try:
            self.poll()
        finally:
            if self._loop is not None and not self._closed:
                self._timer = self._loop.call_later(POLL_INTERVAL, self._tick)

    def _on_event(self, event: Event) -> None:
        self.controller.observe_event(event, monotonic_now())

    def _apply(self, document: bytes, source: str, *, resuming: bool = False) -> MapChanges:
        """Apply a document now (the device has its private key). Raises ``MapRejected``; saves the state."""
        now_wall = self.wall_clock()
        device = self.tunnel.device
        changes = self.controller.apply_network_map(device, document, now_wall, monotonic_now(), resuming=resuming)
        return self._applied(changes, document, now_wall, source)

    async def _apply_verified(
        self, netmap: NetworkMap, document: bytes, now_wall: float, source: str, *, resuming: bool = False
    ) -> MapChanges:
        """``_apply`` for a document verified already (in a worker thread), in steps between which the event loop
        runs (``MeshController.apply_verified_steps``). Raises ``MapRejected``."""
        device = self.tunnel.device
        steps = self.controller.apply_verified_steps(device, netmap, now_wall, monotonic_now(), resuming=resuming)
        large = len(document) >= LARGE_DOCUMENT
        while True:
            try:
                next(steps)
            except StopIteration as done:
                changes: MapChanges = done.value
                break
            self.tunnel.flush()
            if large:
                gc.freeze()
            await asyncio.sleep(0)
        if large:
            thaw_collector()
        return self._applied(changes, document, now_wall, source)

    def _applied(self, changes: MapChanges, document: bytes, now_wall: float, source: str) -> MapChanges:
        logger.info(
            "network map serial %d from %s applied: %d peers added, %d removed, %d changed, %d connections cut",
            changes.serial,
            source,
            len(changes.added),
            len(changes.removed),
            len(set(changes.allowed_ips_changed) | set(changes.endpoints_changed)),
            changes.flows_removed,
        )
        self._save(changes.serial, document)
        self._check_traffic(now_wall)
        self.tunnel.flush()
        return changes

    def _save(self, serial: int, document: bytes) -> None:
        if self.state_path is None:
            return
        try:
            write_state(self.state_path, serial, document)
        except (OSError, ValueError) as exc:
            logger.error(
                "cannot save the mesh state %s (%s): after a restart, maps older than serial %d would be accepted",
                self.state_path,
                getattr(exc, "strerror", None) or exc,
                serial,
            )

    def _log_rejected(self, source: str, exc: MapRejected) -> None:
        if source == SAVED_STATE:  # expired while the daemon was down, say, or overtaken by a newer map
            logger.warning(
                "the saved network map (serial %s) is not resumed (%s): %s", exc.serial, exc.reason.value, exc.detail
            )
            return
        if exc.reason is RejectReason.STALE_SERIAL and exc.serial is not None and exc.serial == self.controller.serial:
            logger.info("network map serial %d from %s is already in force", exc.serial, source)
            return
        logger.error("network map from %s rejected (%s): %s", source, exc.reason.value, exc.detail)

    def _apply_pending(self, *, lock_holder_done: bool = False) -> None:
        """Apply the saved map, then the new file version, if the device has its private key.

        Small documents (up to ``INLINE_DOCUMENT`` bytes) are verified and applied at once, when that cannot come
        between the steps of another apply: nobody holds ``apply_lock``, or its holder is done (a UAPI ``set`` calls
        ``configuration_changed`` after its swap). Otherwise a task takes the lock and applies them as
        ``mesh_apply`` does (``_verify_and_apply``), the event loop running meanwhile.
        """
        if self.tunnel.device.public_key is None:
            if (self._resume_document is not None or self._file_pending is not None) and not self._waiting_logged:
                self._waiting_logged = True
                logger.info("the network map waits for the device's private key (wg set IFNAME private-key FILE)")
            return
        if self._resume_document is None and self._file_pending is None:
            return
        if self._applying is not None and not self._applying.done():
            return  # the running task takes what is pending before it ends
        inline = (lock_holder_done or not self.apply_lock.locked()) and all(
            len(document) <= INLINE_DOCUMENT for document in (self._resume_document, self._file_pending) if document
        )
        if not inline and self._loop is not None:
            self._applying = self._loop.create_task(self._apply_queued())
            return
        resume, self._resume_document = self._resume_document, None
        if resume is not None:
            try:
                self._apply(resume, SAVED_STATE, resuming=True)
            except MapRejected as exc:
                self._log_rejected(SAVED_STATE, exc)
        pending, self._file_pending = self._file_pending, None
        if pending is not None and self.map_path is not None:
            try:
                self._apply(pending, str(self.map_path))
            except MapRejected as exc:
                self._log_rejected(str(self.map_path), exc)

    async def _apply_queued(self) -> None:
        """The task of ``_apply_pending``: under ``apply_lock``, the saved map then the file's, one at a time."""
        async with self.apply_lock:
            while not self._closed:
                if self._resume_document is not None:
                    document, source, resumed = self._resume_document, SAVED_STATE, True
                    self._resume_document = None
                elif self._file_pending is not None and self.map_path is not None:
                    document, source, resumed = self._file_pending, str(self.map_path), False
                    self._file_pending = None
                else:
                    return
                try:
                    changes = await self._verify_and_apply(document, source, resuming=resumed)
                except MapRejected as exc:
                    self._log_rejected(source, exc)
                    continue
                if changes is None:  # the private key went away: wait for the next one
                    if resumed:
                        self._resume_document = document
                    elif self._file_pending is None:
                        self._file_pending = document
                    return

    def _check_file(self, *, lock_holder_done: bool = False) -> None:
        path = self.map_path
        if path is None:
            return
        try:
            info = path.stat()
        except OSError as exc:
            self._file_stamp = None
            self._file_problem_once(f"cannot read the network map file {path}: {exc.strerror or exc}")
            return
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._file_stamp:
            return
        if not stat.S_ISREG(info.st_mode):
            self._file_problem_once(f"the network map file {path} is not a regular file")
            return
        if info.st_size > MAX_DOCUMENT_SIZE:  # never read a file larger than any map may be
            self._file_stamp = stamp
            logger.error("network map from %s rejected (malformed): larger than %d bytes", path, MAX_DOCUMENT_SIZE)
            return
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._file_problem_once(f"cannot read the network map file {path}: {exc.strerror or exc}")
            return
        self._file_stamp = stamp
        self._file_problem = None
        self._file_pending = data
        self._apply_pending(lock_holder_done=lock_holder_done)

    def _file_problem_once(self, message: str) -> None:
        if message != self._file_problem:
            self._file_problem = message
            logger.warning("%s", message)

    def _check_traffic(self, now_wall: float) -> None:
        controller = self.controller
        netmap = controller.network_map
        allowed = controller.traffic_allowed(now_wall)
        if allowed != self._traffic_allowed:
            previous, self._traffic_allowed = self._traffic_allowed, allowed
            if not allowed:
                # The filter already denies everything: with no map it has no rule that accepts, and with an
                # expired one note_clock gave it a deadline in the past (map-expired). This only says so, once.
                if netmap is None:
                    logger.warning("fail closed: no network map is in force, all traffic is denied")
                else:
                    logger.error(
                        "fail closed: network map serial %d expired at %d, all traffic is denied until a newer map",
                        netmap.serial,
                        netmap.expires_at,
                    )
            elif previous is False and netmap is not None:
                logger.warning("network map serial %d is in force: traffic flows again", netmap.serial)
        if (
            not controller.fail_closed
            and netmap is not None
            and now_wall >= netmap.expires_at
            and self._expired_logged != netmap.serial
        ):
            self._expired_logged = netmap.serial
            logger.warning(
                "network map serial %d expired at %d; it stays in force (start with --fail-closed to deny traffic)",
                netmap.serial,
                netmap.expires_at,
            )


def _no_private_key() -> MeshApplyReply:
    return MeshApplyReply(errno.EINVAL, (("reason", NO_PRIVATE_KEY), ("detail", "the device has no private key")))


def _printable(text: str) -> str:
    """``text`` made safe for one ``key=value`` line of the UAPI answer."""
    return "".join(char if " " <= char <= "~" else "?" for char in text)


# ----------------------------------------------------------------------------------------------------------------
# Daemon options (``wgpy [-f] --mesh-key ... IFNAME``, parsed by ``wgpy.cli.daemon``)
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MeshDaemonConfig:
    """The mesh options of the daemon, checked before the interface is created."""

    management_public_key: Ed25519PublicKey
    map_path: Path | None
    state_path: Path | None
    fail_closed: bool
    state: MeshState

    def start(self, tunnel: Tunnel) -> MeshAgent:
        """Create and start the agent for a running tunnel."""
        agent = MeshAgent.create(
            tunnel,
            self.management_public_key,
            fail_closed=self.fail_closed,
            map_path=self.map_path,
            state_path=self.state_path,
            state=self.state,
        )
        agent.start()
        return agent


def prepare_daemon(
    *,
    mesh_key: str | None,
    mesh_map: str | None = None,
    mesh_state: str | None = None,
    fail_closed: bool = False,
    audit_log: str | None = None,
) -> MeshDaemonConfig | None:
    """Check the mesh options, read the state file and open the audit log; ``None`` without ``--mesh-key``.

    Args:
        mesh_key: ``--mesh-key``: the management public key (base64) or a file holding it.
        mesh_map: ``--mesh-map``: the signed map file to apply and watch.
        mesh_state: ``--mesh-state``: where the last accepted map is remembered.
        fail_closed: ``--fail-closed``.
        audit_log: ``--audit-log``: a file (appended, mode 0600) or ``-`` for stdout.

    Raises:
        ConfigError: One line saying what is wrong.
    """
    key_text = mesh_key
    if key_text is None:
        used = [
            name
            for name, value in (
                ("--mesh-map", mesh_map),
                ("--mesh-state", mesh_state),
                ("--fail-closed", fail_closed),
                ("--audit-log", audit_log),
            )
            if value
        ]
        if used:
            raise ConfigError(f"{', '.join(used)} need --mesh-key")
        return None
    key_path = Path(key_text)
    if key_path.is_file():
        try:
            key_text = key_path.read_text(encoding="ascii", errors="replace")
        except OSError as exc:
            raise ConfigError(f"cannot read the mesh key {key_path}: {exc.strerror or exc}") from None
    try:
        key = load_management_public_key(key_text)
    except ConfigError as exc:
        if not key_path.is_file() and ("/" in key_text or "." in key_text) and len(key_text.strip()) != 44:
            raise ConfigError(f"cannot read the mesh key {key_path}: no such file") from None  # (base64 has "/")
        raise ConfigError(f"--mesh-key: {exc}") from None
    state_path = Path(mesh_state) if mesh_state else None
    state = read_state(state_path) if state_path is not None else MeshState()
    if audit_log:
        open_audit_log(audit_log)
    return MeshDaemonConfig(
        management_public_key=key,
        map_path=Path(mesh_map) if mesh_map else None,
        state_path=state_path,
        fail_closed=bool(fail_closed),
        state=state,
    )


def open_audit_log(target: str) -> logging.Handler:
    """Send the ``wgpy.audit`` lines to ``target`` (a file, appended with mode 0600, or ``-`` for stdout) only.

    Raises:
        ConfigError: The file cannot be opened.
    """
    if target == "-":
        handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            # The audit log is a security record: the same checks as the key log (no symbolic link, FIFO, hard
            # link or file of another user; mode 0600).
            fd, _created = open_private_append(target)
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {target}: {exc.strerror or exc}") from None
        handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="ascii", errors="replace", buffering=1))
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit = logging.getLogger(AUDIT_LOGGER_NAME)
    audit.handlers[:] = [handler]
    audit.setLevel(logging.INFO)
    audit.propagate = False  # the lines go where the operator said, not also to the daemon's log
    return handler
