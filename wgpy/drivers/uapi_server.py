"""The UAPI unix socket (``/var/run/wireguard/<ifname>.sock``) that ``wg`` and ``wg-quick`` talk to.

Theory of operation: each connection carries one or more requests. ``get=1`` followed by a blank line is answered
with the device's configuration and ``errno=0``; ``set=1`` followed by ``key=value`` lines and a blank line is
validated as a whole, applied, and answered with ``errno=0`` or a negated errno. Any other first line closes the
connection without an answer, as wireguard-go does. The socket is created with umask 077 (mode 0600-equivalent:
only root talks to it) in a directory created 0700 if it did not exist.

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

__all__ = [
    "MAX_MESH_DOCUMENT",
    "SOCKET_DIRECTORY",
    "MeshApplyReply",
    "MeshExtension",
    "UapiServer",
    "bind_uapi_socket",
    "socket_path",
]

logger = logging.getLogger("wgpy.uapi")

SOCKET_DIRECTORY: Final = Path("/var/run/wireguard")
MAX_REQUEST_LINES: Final = 1_000_000  # a bound, so one client cannot make us buffer without end
MAX_LINE: Final = 4096
MAX_MESH_DOCUMENT: Final = 16 * 1024 * 1024  # bytes of the mesh_apply document line (= wgpy.mesh MAX_DOCUMENT_SIZE)


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
    """What the server needs from the mesh daemon (``wgpy.drivers.mesh_daemon.MeshAgent`` implements it)."""

    def apply_document(self, document: bytes) -> MeshApplyReply:
        """Verify and apply a signed network map document; never raises for bad input."""
        ...

    def configuration_changed(self) -> None:
        """Called after every successful ``set=1`` (a private key may just have arrived)."""
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
                    writer.write((uapi.format_get(self.tunnel.device, self.tunnel) + uapi.format_errno(0)).encode())
                elif line == b"set=1\n":
                    body = await self._read_body(reader)
                    if body is None:
                        return
                    writer.write(uapi.format_errno(await self._set(body)).encode())
                elif line == b"mesh_apply=1\n" and self.mesh is not None:
                    document = await _read_long_line(reader, MAX_MESH_DOCUMENT)
                    if document is None or await reader.readline() != b"\n":
                        return  # too long, cut short or not followed by the blank line: apply nothing
                    reply = self.mesh.apply_document(document)
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

    async def _read_body(self, reader: asyncio.StreamReader) -> list[str] | None:
        lines: list[str] = []
        while len(lines) < MAX_REQUEST_LINES:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                return None
            if not raw.endswith(b"\n"):
                return None  # connection closed mid-request: apply nothing
            if raw == b"\n":
                return lines
            try:
                lines.append(raw[:-1].decode("ascii"))
            except UnicodeDecodeError:
                lines.append("\x00")  # becomes an EPROTO/EINVAL answer below
        return None

    async def _set(self, body: list[str]) -> int:
        """Validate the whole request, then apply the socket half on the tunnel first (a new port is bound, with
        the new fwmark, before anything else changes), then the rest on the device."""
        tunnel = self.tunnel
        try:
            request = uapi.parse_set(body)
            if request.listen_port is not None:
                await tunnel.rebind(request.listen_port, fwmark=request.fwmark)
                request.listen_port = None  # the tunnel set the port it actually bound
            if request.fwmark is not None:
                tunnel.set_fwmark(request.fwmark)
                request.fwmark = None
            uapi.apply_set(tunnel.device, request, monotonic_now())
        except UapiError as exc:
            logger.info("UAPI set refused: %s", exc)
            return exc.errno
        if self.mesh is not None:
            self.mesh.configuration_changed()
        self.tunnel.flush()
        return 0


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
