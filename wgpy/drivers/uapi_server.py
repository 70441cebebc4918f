"""The UAPI unix socket (``/var/run/wireguard/<ifname>.sock``) that ``wg`` and ``wg-quick`` talk to.

Theory of operation: each connection carries one or more requests. ``get=1`` followed by a blank line is answered
with the device's configuration and ``errno=0``; ``set=1`` followed by ``key=value`` lines and a blank line is
validated as a whole, applied, and answered with ``errno=0`` or a negated errno. Any other first line closes the
connection without an answer, as wireguard-go does. The socket is created with umask 077 (mode 0600-equivalent:
only root talks to it) in a directory created 0700 if it did not exist.

Large requests (issue #11 items 3 and 4): a ``set=1`` body is validated line by line while it is read (no line is
kept) and may be at most ``MAX_SET_REQUEST`` bytes; past that nothing more is parsed, the answer is ``errno=-90``
(EMSGSIZE) and the connection closes once the client has sent the rest (at most ``DISCARD_LIMIT`` bytes are read
and dropped). The event loop runs every ``LINES_PER_YIELD`` lines while a body is read, between the steps of
``uapi.apply_set_steps`` while it is applied and between the chunks of ``uapi.format_get_chunks`` while a ``get``
is written, so forwarding goes on. One ``set``, ``get`` or ``mesh_apply`` runs at a time (a lock; in mesh mode
the daemon's own lock, ``MeshExtension.apply_lock``, which its map file takes too), so a ``get`` never sees half of
a ``set``; the data plane does not either: the steps build the new configuration beside the device and one step
swaps it in (``device.ConfigurationChange``). After a request that touched at least ``LARGE_REQUEST_PEERS`` peers,
free pages go back to the kernel (``memory.release_free_memory``).

A large configuration is a million new objects, and CPython's cyclic collector scans every object it tracks each
time the old generation grew by a quarter: with 100,000 peers those full collections held the loop for up to
0.8 s at a time, in the middle of a step. While a large request is read and applied, the server therefore calls
``gc.freeze()`` at every step, which moves everything allocated so far out of the collector's generations: a step
then costs tens of milliseconds. Frozen objects are still freed by reference counting (a removed peer holds no
reference cycle, see ``Device.remove_peer``); what the collector no longer finds is a reference cycle among
objects that existed at a freeze. So after each large request ``thaw_collector`` gives the frozen objects back to
the collector when there are few of them (``UNFREEZE_BELOW``: after 100,000 peers were removed, about 25,000,
whose next full collection costs about 10 ms), and keeps them frozen while a large configuration is in place
(1.3 million objects for 100,000 peers: unfrozen, the next full collection would stop the loop for most of a
second, and then again whenever the old generation grew by a quarter).

A wgpy extension, served only when the daemon runs in mesh mode (a ``MeshExtension`` is given; ``wg`` never sends
it, and without the extension it is an unknown operation that closes the connection as before)::

    mesh_apply=1
    <the signed network map document as JSON on ONE line>
    <blank line>

The document line may be up to ``MAX_MESH_DOCUMENT`` bytes (every other line keeps the ``MAX_LINE`` bound). The
answer is ``key=value`` lines and then ``errno=0`` (applied: ``serial=``, ``added=``, ``removed=``, ``changed=``) or
``reason=<why>``, ``detail=<one line of text>`` and ``errno=-22`` (refused, nothing changed; ``why`` is a
``wgpy.mesh.RejectReason`` value or ``no_private_key``), then a blank line. A document line that is too long, cut
short or not followed by the blank line closes the connection without an answer. ``wgpy mesh apply IFNAME FILE``
is the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from .. import uapi
from ..errors import UapiError
from .asyncio_udp import Tunnel
from .clock import monotonic_now
from .memory import release_free_memory

__all__ = [
    "MAX_MESH_DOCUMENT",
    "SOCKET_DIRECTORY",
    "MeshApplyReply",
    "MeshExtension",
    "UapiServer",
    "bind_uapi_socket",
    "socket_path",
    "thaw_collector",
]

logger = logging.getLogger("wgpy.uapi")

SOCKET_DIRECTORY: Final = Path("/var/run/wireguard")
MAX_LINE: Final = 4096  # bytes of one request line (the mesh document line excepted)
MAX_SET_REQUEST: Final = 64 * 1024 * 1024  # bytes of one set=1 body: about 200,000 fully configured peers
DISCARD_LIMIT: Final = 1024 * 1024 * 1024  # bytes of an oversized body read (and dropped) before the connection closes
LINES_PER_YIELD: Final = 1000  # set=1 lines parsed between two turns of the event loop (about 10 ms)
LARGE_REQUEST_PEERS: Final = 1000  # after a set or get of this many peers, free pages go back to the kernel
FREEZE_AFTER_LINES: Final = 20_000  # set=1 lines after which what was allocated is moved out of the collector's way
MAX_MESH_DOCUMENT: Final = 16 * 1024 * 1024  # bytes of the mesh_apply document line (= wgpy.mesh MAX_DOCUMENT_SIZE)
UNFREEZE_BELOW: Final = 200_000  # frozen objects given back to the collector after a large request (ours: ~50 ms)


def thaw_collector() -> None:
    """After a large request: give the objects that ``gc.freeze()`` set aside back to the cyclic collector, unless
    there are so many that its next full collection would stop the event loop (see the module docstring)."""
    if 0 < gc.get_freeze_count() <= UNFREEZE_BELOW:
        gc.unfreeze()


def socket_path(ifname: str, directory: Path = SOCKET_DIRECTORY) -> Path:
    return directory / f"{ifname}.sock"


def bind_uapi_socket(ifname: str, directory: Path = SOCKET_DIRECTORY) -> socket.socket:
    """Create the listening unix socket, refusing to replace one that a live process still answers on."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = socket_path(ifname, directory)
    if path.exists():
        if not stat.S_ISSOCK(path.stat().st_mode):
            raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # stale socket of a process that is gone
        else:
            raise OSError(errno.EADDRINUSE, f"interface {ifname} is already served by another process ({path})")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    sock.setblocking(False)
    return sock


@dataclass(frozen=True, slots=True)
class MeshApplyReply:
    """The answer to ``mesh_apply=1``: ``fields`` as ``key=value`` lines, then ``errno`` (positive, sent negated)."""

    errno: int
    fields: tuple[tuple[str, str], ...] = ()


class MeshExtension(Protocol):
    """What the server needs from the mesh daemon (``wgpy.mesh.agent.MeshAgent`` implements it)."""

    apply_lock: asyncio.Lock
    """The server's one-request-at-a-time lock: the daemon holds it too while it applies a map of its own."""

    async def apply_document(self, document: bytes) -> MeshApplyReply:
        """Verify (off the event loop: a document may be 16 MiB) and apply a signed network map document; never
        raises for bad input."""
        ...

    def configuration_changed(self) -> None:
        """Called after every successful ``set=1`` (a private key may just have arrived), the lock still held and
        the set swapped in."""
        ...


class UapiServer:
    """Serves UAPI requests for one ``Tunnel``."""

    def __init__(self, tunnel: Tunnel, sock: socket.socket, *, mesh: MeshExtension | None = None) -> None:
        """
        Args:
            tunnel: The tunnel whose device is configured.
            sock: The listening unix socket (``bind_uapi_socket``).
            mesh: Serve the ``mesh_apply=1`` extension with it (mesh mode); ``None`` refuses it like any unknown
                operation.
        """
        self.tunnel = tunnel
        self.sock = sock
        self.mesh = mesh
        self.path = sock.getsockname()
        self._server: asyncio.base_events.Server | None = None
        # One set, get or mesh_apply at a time (a get never sees half of a set); in mesh mode the daemon's map file
        # takes part too.
        self._lock = mesh.apply_lock if mesh is not None else asyncio.Lock()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, sock=self.sock, limit=MAX_LINE)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            if isinstance(self.path, str) and self.path:
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if line == b"get=1\n":
                    if await reader.readline() != b"\n":
                        writer.write(uapi.format_errno(errno.EINVAL).encode())
                        await writer.drain()
                        return
                    async with self._lock:
                        await self._get(writer)
                elif line == b"set=1\n":
                    parsed = await self._read_set(reader)
                    if parsed is None:
                        return
                    if isinstance(parsed, _Oversized):
                        logger.info("UAPI set refused: larger than %d bytes", MAX_SET_REQUEST)
                        writer.write(uapi.format_errno(errno.EMSGSIZE).encode())
                        await writer.drain()
                        thaw_collector()
                        release_free_memory()
                        await _discard(reader, DISCARD_LIMIT)
                        return  # the rest of the connection cannot be trusted to be in step
                    if isinstance(parsed, UapiError):
                        logger.info("UAPI set refused: %s", parsed)
                        code = parsed.errno
                        thaw_collector()  # reading may have frozen what the refused request had allocated
                    else:
                        large = len(parsed.peers) >= LARGE_REQUEST_PEERS or parsed.replace_peers
                        async with self._lock:
                            code = await self._set(parsed)
                        parsed = None  # the request's objects go before the trim
                        if large:
                            thaw_collector()
                            release_free_memory()
                    writer.write(uapi.format_errno(code).encode())
                elif line == b"mesh_apply=1\n" and self.mesh is not None:
                    document = await _read_long_line(reader, MAX_MESH_DOCUMENT)
                    if document is None or await reader.readline() != b"\n":
                        return  # too long, cut short or not followed by the blank line: apply nothing
                    async with self._lock:  # not while a set is built beside the device (it would refuse its swap)
                        reply = await self.mesh.apply_document(document)
                    self.tunnel.flush()
                    text = "".join(f"{key}={value}\n" for key, value in reply.fields)
                    writer.write((text + uapi.format_errno(reply.errno)).encode())
                else:
                    return  # unknown operation or end of stream: close without answer
                await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    async def _read_set(self, reader: asyncio.StreamReader) -> uapi.SetRequest | UapiError | _Oversized | None:
        """Read and validate a ``set=1`` body as it arrives (no line is kept), up to its blank line.

        Returns the request, the first ``UapiError`` (the rest of the body is read to stay in step), ``_Oversized``
        once more than ``MAX_SET_REQUEST`` bytes came (at once: nothing more is parsed or kept), or ``None`` when the
        connection ended or a line was longer than ``MAX_LINE`` (apply nothing, answer nothing).
        """
        parser: uapi.SetParser | None = uapi.SetParser()
        failure: UapiError | None = None
        size = 0
        lines = 0
        while True:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError, ConnectionError):
                return None
            if not raw.endswith(b"\n"):
                return None  # connection closed mid-request: apply nothing
            if raw == b"\n":
                return failure if failure is not None else parser.finish() if parser is not None else None
            size += len(raw)
            if size > MAX_SET_REQUEST:
                return _Oversized()
            lines += 1
            if lines % LINES_PER_YIELD == 0:
                if lines >= FREEZE_AFTER_LINES:
                    gc.freeze()
                await asyncio.sleep(0)  # the data plane runs between slices of a large request
            if parser is None:
                continue
            try:
                parser.feed(raw[:-1].decode("ascii"))
            except UnicodeDecodeError:
                failure, parser = UapiError(errno.EPROTO, "a line is not ASCII"), None
            except UapiError as exc:
                failure, parser = exc, None  # drop what was parsed: the request will be refused

    async def _get(self, writer: asyncio.StreamWriter) -> None:
        """Write the ``get=1`` answer in chunks, letting the data plane run between them."""
        for chunk in uapi.format_get_chunks(self.tunnel.device, self.tunnel):
            writer.write(chunk.encode())
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(uapi.format_errno(0).encode())
        if len(self.tunnel.device.peers) >= LARGE_REQUEST_PEERS:
            release_free_memory()

    async def _set(self, request: uapi.SetRequest) -> int:
        """Apply a validated request: the socket half on the tunnel first (a new port is bound, with the new fwmark,
        before anything else changes), then the rest on the device in steps of ``uapi.PEERS_PER_STEP`` peers,
        flushing and letting the data plane run between them. The server's lock keeps other requests out until
        the last step."""
        tunnel = self.tunnel
        old_port, old_fwmark = tunnel.listen_port, tunnel.fwmark
        try:
            if request.listen_port is not None:
                await tunnel.rebind(request.listen_port, fwmark=request.fwmark)
                request.listen_port = None  # the tunnel set the port it actually bound
            if request.fwmark is not None:
                tunnel.set_fwmark(request.fwmark)
                request.fwmark = None
        except UapiError as exc:
            logger.info("UAPI set refused: %s", exc)
            return exc.errno
        large = len(request.peers) >= LARGE_REQUEST_PEERS
        try:
            for _ in uapi.apply_set_steps(tunnel.device, request, monotonic_now()):
                tunnel.flush()
                if large:
                    gc.freeze()
                await asyncio.sleep(0)
        except UapiError as exc:  # the device was configured otherwise while this was built: nothing changed
            logger.info("UAPI set refused: %s", exc)
            await self._restore_sockets(old_port, old_fwmark)
            return exc.errno
        if self.mesh is not None:
            self.mesh.configuration_changed()
        self.tunnel.flush()
        return 0

    async def _restore_sockets(self, port: int, fwmark: int) -> None:
        """Undo the socket half of a refused request, so that a refusal changes nothing (the port it bound is
        released, and the old one bound again with the old fwmark)."""
        tunnel = self.tunnel
        try:
            if tunnel.listen_port != port:
                await tunnel.rebind(port, fwmark=fwmark)
            if tunnel.fwmark != fwmark:
                tunnel.set_fwmark(fwmark)
        except UapiError as exc:  # the old port was taken meanwhile: the new one stays, and the log says so
            logger.warning("UAPI set refused, but listen-port %d could not be bound again: %s", port, exc)


class _Oversized:
    """A ``set=1`` body longer than ``MAX_SET_REQUEST``."""


async def _discard(reader: asyncio.StreamReader, limit: int) -> None:
    """Read and drop up to ``limit`` bytes, until the body's blank line or the end of the stream, so that a client
    still writing its oversized request can finish and read the answer it was already sent."""
    seen = 0
    last = b""
    while seen < limit:
        try:
            chunk = await reader.read(65536)
        except ConnectionError:
            return
        if not chunk:
            return
        seen += len(chunk)
        if b"\n\n" in last + chunk:
            return
        last = chunk[-1:]


async def _read_long_line(reader: asyncio.StreamReader, limit: int) -> bytes | None:
    """One line (without its newline) of up to ``limit`` bytes from a reader whose own limit is ``MAX_LINE``.

    ``readuntil`` leaves the bytes in the buffer when the line is longer than the reader's limit and says how many
    it looked at (``LimitOverrunError.consumed``, none of them the separator): take those and look again. So the
    long line is allowed here only, and every other line of the protocol keeps its bound.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            size += exc.consumed
            if size > limit:
                return None
            try:
                chunks.append(await reader.readexactly(exc.consumed))
            except asyncio.IncompleteReadError:
                return None
            continue
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        size += len(chunk) - 1
        if size > limit:
            return None
        chunks.append(chunk[:-1])
        return b"".join(chunks)
