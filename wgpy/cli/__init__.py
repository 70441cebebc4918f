"""Command line: ``wgpy [-f|--foreground] IFNAME`` (wireguard-go's invocation), key tools and the demo.

- ``wgpy IFNAME`` creates the TUN interface and the UAPI socket, then daemonizes unless ``-f``/``--foreground``
  or ``WG_PROCESS_FOREGROUND=1``; so ``WG_QUICK_USERSPACE_IMPLEMENTATION=wgpy wg-quick up wg0`` works.
  ``WG_TUN_FD`` / ``WG_UAPI_FD`` adopt descriptors opened by a parent; ``LOG_LEVEL`` is ``silent``, ``error``
  (default), ``info`` or ``verbose``/``debug``.
- ``wgpy genkey | pubkey | genpsk`` print keys the way ``wg`` does.
- ``wgpy demo`` runs two wgpy peers in one process over real UDP on 127.0.0.1 (no root needed) and prints stats.

Bad input (a bad key on stdin, a bad interface name, no permission) gives one line on stderr and exit status 1.
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
from ..errors import ConfigError
from ..keys import PresharedKey, PrivateKey

if TYPE_CHECKING:
    from tun import TunDevice

    from ..drivers.mesh_daemon import MeshDaemonConfig

__all__ = ["main"]

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


def _cmd_genkey() -> int:
    print(PrivateKey.generate().to_base64())
    return 0


def _cmd_genpsk() -> int:
    print(PresharedKey.generate().to_base64())
    return 0


def _cmd_pubkey() -> int:
    try:
        key = PrivateKey.from_base64(sys.stdin.read())
    except ConfigError:
        return _fail("Key is not the correct length or format")
    print(key.public_key().to_base64())
    return 0


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


def _open_tun(name: str) -> TunDevice:
    """The interface's TUN device, with virtio-net header offloads where the kernel takes them.

    Offload mode glues the TCP segments of one flow into one write (``tun.offload``); TSO on reads stays off, as
    splitting super-packets in Python costs more than the reads it saves. ``WGPY_TUN_OFFLOAD=0`` turns it off.
    """
    from tun import TunError, open_tun

    if sys.platform == "linux" and os.environ.get("WGPY_TUN_OFFLOAD", "1").strip().lower() not in _FALSE:
        from tun.linux import LinuxTun

        try:
            return LinuxTun(name, mtu=DEFAULT_MTU, offload=True, tso=False)
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


def _cmd_interface(argv: Sequence[str]) -> int:
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
    from ..drivers.mesh_daemon import add_daemon_arguments, prepare_daemon

    add_daemon_arguments(parser)
    parser.add_argument("interface", help="interface name, e.g. wg0")
    args = parser.parse_args(argv)
    foreground = args.foreground or _truthy(os.environ.get("WG_PROCESS_FOREGROUND"))
    _setup_logging(os.environ.get("LOG_LEVEL"))
    try:
        mesh = prepare_daemon(args)  # before the interface exists: a bad option must not leave one behind
    except ConfigError as exc:
        return _fail(str(exc))

    from tun import TunError

    from ..drivers.uapi_server import bind_uapi_socket

    tun: TunDevice
    try:
        tun_fd = os.environ.get("WG_TUN_FD")
        if tun_fd is not None:
            from tun.linux import LinuxTun

            tun = LinuxTun.from_fd(int(tun_fd), tso=False)
        else:
            tun = _open_tun(args.interface)
    except ValueError as exc:
        return _fail(f"invalid interface name {args.interface!r}: {exc}")
    except TunError as exc:
        return _fail(str(exc))
    try:
        uapi_fd = os.environ.get("WG_UAPI_FD")
        if uapi_fd is not None:
            uapi_sock = socket.socket(fileno=int(uapi_fd))
        else:
            uapi_sock = bind_uapi_socket(tun.name)
    except OSError as exc:
        tun.close()
        return _fail(f"UAPI socket for {tun.name}: {exc.strerror or exc}")

    keylog_fd: int | None = None
    if args.keylog:
        try:
            keylog_fd = _open_keylog(args.keylog)
        except OSError as exc:
            tun.close()
            uapi_sock.close()
            return _fail(f"cannot open key log {args.keylog}: {exc.strerror or exc}")
    keep_output = bool(os.environ.get("LOG_LEVEL")) or args.audit_log == "-"  # `--audit-log -` writes to stdout
    if not foreground and not _daemonize(keep_output=keep_output):
        return 0  # the parent: the child keeps the interface and the socket
    logger.info("wgpy %s serving interface %s", __version__, tun.name)
    try:
        worker = args.worker or _truthy(os.environ.get("WGPY_WORKER"))
        asyncio.run(_serve(tun, uapi_sock, keylog_fd, mesh, worker=worker))
    finally:
        with contextlib.suppress(OSError):
            path = uapi_sock.getsockname()
            if isinstance(path, str) and path:
                os.unlink(path)
    return 0


def _open_keylog(path: str) -> int:
    """Open the key log for appending, readable by its owner only (it holds session secrets)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


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


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(
            "usage: wgpy [-f|--foreground] [--worker] [--keylog FILE] INTERFACE\n"
            "       wgpy [-f] --mesh-key KEY [--mesh-map FILE] [--mesh-state FILE] [--fail-closed]"
            " [--audit-log FILE|-] INTERFACE\n"
            "       wgpy mesh keygen | pubkey | sign --key FILE MAP.json | apply INTERFACE FILE\n"
            "       wgpy genkey | pubkey | genpsk\n"
            "       wgpy demo [--seconds N]\n"
            "       wgpy trace [--golden no_psk|psk | --random] [--json]\n"
            "       wgpy probe --endpoint HOST:PORT --peer-public-key B64 --private-key-file FILE ... (--help)\n"
            "       wgpy --version"
        )
        return 0 if args else 2
    command = args[0]
    if command in ("--version", "-v", "version"):
        print(f"wgpy {__version__}")
        return 0
    if command == "genkey":
        return _cmd_genkey()
    if command == "genpsk":
        return _cmd_genpsk()
    if command == "pubkey":
        return _cmd_pubkey()
    if command == "trace":
        from ..trace import main as trace_main

        return trace_main(args[1:])
    if command == "probe":
        from ..drivers.probe import main as probe_main

        return probe_main(args[1:])
    if command == "demo":
        from ..drivers.demo import main as demo_main

        return demo_main(args[1:])
    if command == "mesh":
        from ..drivers.mesh_daemon import main as mesh_main

        return mesh_main(args[1:])
    if command == "management":
        from .management import main as management_main

        return management_main(args[1:])
    if command == "admin":
        from .admin import main as admin_main

        return admin_main(args[1:])
    if command in ("up", "status", "down", "logout"):  # the agent (wgpy/cli/up.py)
        from . import up

        return {"up": up.main_up, "status": up.main_status, "down": up.main_down, "logout": up.main_logout}[command](
            args[1:]
        )
    return _cmd_interface(args)
