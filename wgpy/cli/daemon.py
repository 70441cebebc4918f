"""``wgpy [-f|--foreground] IFNAME``: the interface daemon (wireguard-go's invocation).

``wgpy IFNAME`` creates the TUN interface and the UAPI socket, then daemonizes unless ``-f``/``--foreground`` or
``WG_PROCESS_FOREGROUND=1``; so ``WG_QUICK_USERSPACE_IMPLEMENTATION=wgpy wg-quick up wg0`` works. ``WG_TUN_FD`` /
``WG_UAPI_FD`` adopt descriptors opened by a parent; ``LOG_LEVEL`` is ``silent``, ``error`` (default), ``info`` or
``verbose``/``debug``. The mesh options (``--mesh-key`` ...) are parsed here and checked by ``wgpy.mesh.agent``.

Bad input (a bad interface name, no permission, a bad mesh option) gives one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .. import __version__
from ..device import DEFAULT_MTU, Device
from ..drivers.private_file import open_private_append
from ..errors import ConfigError
from ..mesh.agent import prepare_daemon

if TYPE_CHECKING:
    from tun import TunDevice

    from ..mesh.agent import MeshDaemonConfig

__all__ = ["add_mesh_arguments", "main"]

logger = logging.getLogger("wgpy")

_LOG_LEVELS = {
    "silent": logging.CRITICAL + 10,
    "error": logging.ERROR,
    "info": logging.INFO,
    "verbose": logging.DEBUG,
    "debug": logging.DEBUG,
}


def _fail(message: str) -> int:
    print(f"wgpy: {message}", file=sys.stderr)
    return 1


def add_mesh_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mesh options (``wgpy.mesh.agent.prepare_daemon`` checks them) to the daemon's parser."""
    group = parser.add_argument_group("mesh mode (signed network maps, ACL, audit log)")
    group.add_argument(
        "--mesh-key",
        metavar="KEY|FILE",
        help="run in mesh mode, accepting network maps signed by this Ed25519 public key (base64, or a file holding it)",
    )
    group.add_argument("--mesh-map", metavar="FILE", help="apply this signed network map file and watch it for changes")
    group.add_argument(
        "--mesh-state", metavar="FILE", help="remember the last accepted map here, so a restart refuses older maps"
    )
    group.add_argument(
        "--fail-closed", action="store_true", help="deny all traffic while no map is in force or the map has expired"
    )
    group.add_argument(
        "--audit-log", metavar="FILE|-", help="write the audit log (JSON lines) to FILE (appended, mode 0600) or stdout"
    )


def _setup_logging(level_name: str | None, stream: object = None) -> None:
    name = (level_name or "error").lower()
    level = _LOG_LEVELS.get(name)
    if level is None:
        level = logging.ERROR
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s: %(asctime)s %(name)s: %(message)s"))
    root = logging.getLogger("wgpy")
    root.handlers[:] = [handler]
    root.setLevel(level)


_FALSE = ("0", "false", "no", "off")


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _tso() -> bool:
    """Whether to read TCP super-packets from the TUN device: by default, where numpy cuts them into one buffer
    (``WGPY_TUN_TSO=0`` turns it off)."""
    from tun.offload import VECTORIZED_SPLIT

    return VECTORIZED_SPLIT and os.environ.get("WGPY_TUN_TSO", "1").strip().lower() not in _FALSE


def _open_tun(name: str) -> TunDevice:
    """The interface's TUN device, with virtio-net header offloads where the kernel takes them.

    Offload mode glues the TCP segments of one flow into one write (``tun.offload``) and reads TCP super-packets
    (TSO) of up to 64 KiB, which ``LinuxTun.read_run`` cuts into one buffer that ``Device.send_run`` seals from
    where the segments lie: one read instead of one per segment (``WGPY_TUN_TSO=0`` reads single packets).
    ``WGPY_TUN_OFFLOAD=0`` turns offloads off.
    """
    from tun import TunError, open_tun

    if sys.platform == "linux" and os.environ.get("WGPY_TUN_OFFLOAD", "1").strip().lower() not in _FALSE:
        from tun.linux import LinuxTun

        try:
            return LinuxTun(name, mtu=DEFAULT_MTU, offload=True, tso=_tso())
        except TunError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES, errno.ENOENT):
                raise  # no offload would not help: say why the device cannot be opened at all
            logger.info("TUN offloads refused (%s): plain TUN device", exc)
    return open_tun(name)


def _daemonize(keep_output: bool) -> bool:
    """Fork into the background. Returns ``True`` in the child, ``False`` in the parent (which should exit)."""
    if os.fork() != 0:
        return False
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if not keep_output:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    os.close(devnull)
    return True


def main(argv: Sequence[str]) -> int:
    """``wgpy [-f|--foreground] [--worker] [--keylog FILE] [mesh options] INTERFACE``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="wgpy", description="Userspace WireGuard: wgpy [-f] INTERFACE")
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "--keylog",
        metavar="FILE",
        help="append each handshake's secrets to FILE (mode 0600) in the format of Wireshark's wg.keylog_file",
    )
    parser.add_argument(
        "--worker",
        action="store_true",
        help="seal and write to the TUN device in a second process, on a second core (also WGPY_WORKER=1)",
    )
    add_mesh_arguments(parser)
    parser.add_argument("interface", help="interface name, e.g. wg0")
    args = parser.parse_args(argv)
    foreground = args.foreground or _truthy(os.environ.get("WG_PROCESS_FOREGROUND"))
    _setup_logging(os.environ.get("LOG_LEVEL"))
    try:
        # before the interface exists: a bad option must not leave one behind
        mesh = prepare_daemon(
            mesh_key=args.mesh_key,
            mesh_map=args.mesh_map,
            mesh_state=args.mesh_state,
            fail_closed=args.fail_closed,
            audit_log=args.audit_log,
        )
    except ConfigError as exc:
        return _fail(str(exc))

    try:
        # Everything the environment and the options name is checked before the interface exists: a bad value
        # must not leave a TUN device or a UAPI socket behind.
        tun_fd = _env_fd("WG_TUN_FD")
        uapi_fd = _env_fd("WG_UAPI_FD")
    except ConfigError as exc:
        return _fail(str(exc))
    keylog: _KeyLog | None = None
    if args.keylog:
        try:
            keylog = _open_keylog(args.keylog)
        except OSError as exc:
            return _fail(f"cannot open key log {args.keylog}: {exc.strerror or exc}")
    started = False
    try:
        started = _start(args, tun_fd, uapi_fd, keylog, mesh, foreground)
    finally:
        if keylog is not None:
            keylog.close(remove=not started)
    return 0 if started else 1


def _start(
    args: argparse.Namespace,
    tun_fd: int | None,
    uapi_fd: int | None,
    keylog: _KeyLog | None,
    mesh: MeshDaemonConfig | None,
    foreground: bool,
) -> bool:
    """Create (or adopt) the TUN device and the UAPI socket and serve; ``False`` after a one-line error."""
    from tun import TunError

    from ..drivers.uapi_server import bind_uapi_socket

    tun: TunDevice
    try:
        if tun_fd is not None:
            from tun.linux import LinuxTun

            tun = LinuxTun.from_fd(tun_fd, tso=_tso())
        else:
            tun = _open_tun(args.interface)
    except ValueError as exc:
        _fail(f"invalid interface name {args.interface!r}: {exc}")
        return False
    except TunError as exc:
        _fail(str(exc))
        return False
    try:
        if uapi_fd is not None:
            uapi_sock = socket.socket(fileno=uapi_fd)
        else:
            uapi_sock = bind_uapi_socket(tun.name)
    except OSError as exc:
        tun.close()
        _fail(f"UAPI socket for {tun.name}: {exc.strerror or exc}")
        return False

    keep_output = bool(os.environ.get("LOG_LEVEL")) or args.audit_log == "-"  # `--audit-log -` writes to stdout
    if not foreground and not _daemonize(keep_output=keep_output):
        return True  # the parent: the child keeps the interface, the socket and the key log
    logger.info("wgpy %s serving interface %s", __version__, tun.name)
    try:
        worker = args.worker or _truthy(os.environ.get("WGPY_WORKER"))
        asyncio.run(_serve(tun, uapi_sock, keylog.fd if keylog is not None else None, mesh, worker=worker))
    finally:
        with contextlib.suppress(OSError):
            path = uapi_sock.getsockname()
            if isinstance(path, str) and path:
                os.unlink(path)
    return True


def _env_fd(name: str) -> int | None:
    """The descriptor number in the environment variable ``name`` (``WG_TUN_FD``, ``WG_UAPI_FD``), if it is set.

    Raises:
        ConfigError: the value is not a decimal descriptor number.
    """
    value = os.environ.get(name)
    if value is None:
        return None
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ConfigError(f"{name}={value[:20]!r} is not a file descriptor number")
    return int(text)


class _KeyLog:
    """The ``--keylog`` file, opened by ``_open_keylog``; remembers whether this run created it."""

    __slots__ = ("created", "fd", "path")

    def __init__(self, fd: int, path: str, created: bool) -> None:
        self.fd = fd
        self.path = path
        self.created = created

    def close(self, *, remove: bool) -> None:
        """Close the descriptor; with ``remove``, delete the file again if this run created it and left it empty."""
        try:
            if remove and self.created:
                with contextlib.suppress(OSError):
                    ours = os.fstat(self.fd)
                    there = os.stat(self.path, follow_symlinks=False)
                    if ours.st_size == 0 and (ours.st_dev, ours.st_ino) == (there.st_dev, there.st_ino):
                        os.unlink(self.path)
        finally:
            os.close(self.fd)


def _open_keylog(path: str) -> _KeyLog:
    """Open the key log for appending, readable by its owner only (it holds session secrets): no symbolic link,
    FIFO, hard link or file of another user (``drivers.private_file.open_private_append``, shared with
    ``--audit-log``).

    Raises:
        OSError: the file cannot be opened or is refused (``strerror`` says why, in one line).
    """
    fd, created = open_private_append(path)
    return _KeyLog(fd, path, created=created)


def _keylog_sink(fd: int) -> Callable[[str], None]:
    def write(entry: str) -> None:
        try:
            os.write(fd, entry.encode("ascii"))
        except OSError as exc:
            logger.error("cannot write the key log: %s", exc.strerror or exc)

    return write


async def _serve(
    tun: object,
    uapi_sock: socket.socket,
    keylog_fd: int | None = None,
    mesh: MeshDaemonConfig | None = None,
    *,
    worker: bool = False,
) -> None:
    from tun import TunDevice

    from ..drivers.asyncio_udp import Tunnel
    from ..drivers.uapi_server import UapiServer

    if not isinstance(tun, TunDevice):
        raise TypeError("not a TUN device")
    device = Device()
    if keylog_fd is not None:
        from ..keylog import KeyLogWriter

        device.keylog = KeyLogWriter(_keylog_sink(keylog_fd))
    tunnel = Tunnel(device, tun=tun, worker=worker)
    await tunnel.start()
    agent = mesh.start(tunnel) if mesh is not None else None  # the filter is in place before any peer exists
    server = UapiServer(tunnel, uapi_sock, mesh=agent)
    await server.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, tunnel.close)
    try:
        await tunnel.wait_closed()
    finally:
        server.close()
        if agent is not None:
            agent.close()
        tunnel.close()
        logger.info("shut down")
