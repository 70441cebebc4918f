"""``wgpy up | status | down | logout``: the device side of the management plane.

- ``wgpy up --management URL --setup-key KEY --management-key B64 [--name NAME] [--interface IF]
  [--listen-port P] [--state-dir D] [--fail-closed] [--no-tun] [--endpoint-host HOST] [-f]`` enrols the device
  (first time) or reconnects with the saved state (no setup key needed), then runs the agent: in the background
  by default (the command returns once the agent is up, or prints why it could not start), in the foreground with
  ``-f``. ``--no-tun`` runs the tunnel without a TUN device (tests, containers without /dev/net/tun). With a TUN
  device the interface also gets its UAPI socket, so ``wg show IF`` works.
- ``wgpy status [--state-dir D] [--json]``: peer id, address, management URL, connected or not, map serial and
  expiry, peers, and where the private key is stored.
- ``wgpy down [--state-dir D]``: stops the agent that ``wgpy up`` started (pid file, SIGTERM, waits).
- ``wgpy logout [--state-dir D] [--force]``: deregisters the peer at the server and deletes the local state
  (``--force``: delete it even when the server cannot be told).

Bad input gives one line on stderr and exit status 1 (2 for a usage error); never a traceback, never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ..errors import ConfigError

if TYPE_CHECKING:
    from tun import TunDevice

    from ..agent.client import ManagementError
    from ..agent.enrol import Enrolled
    from ..agent.keystore import KeyStore, StateDir
    from ..agent.runner import AgentRunner
    from ..drivers.uapi_server import UapiServer

__all__ = ["main_down", "main_logout", "main_status", "main_up"]

logger = logging.getLogger("wgpy.agent")

DEFAULT_INTERFACE = "wgpy0"
STOP_TIMEOUT = 10.0  # seconds `wgpy down` waits for the agent to exit
READY_TIMEOUT = 60.0  # seconds `wgpy up` waits for the background agent to say it is up
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")  # IFNAMSIZ - 1, and never a path
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]{0,63}$")
_EXIT_OK, _EXIT_FAIL, _EXIT_USAGE = 0, 1, 2


class _Failure(Exception):
    """A command failed: the message is printed as one line."""

    def __init__(self, message: str, status: int = _EXIT_FAIL) -> None:
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``wgpy up: --listen-port: ...``), not usage plus message."""

    def error(self, message: str) -> NoReturn:
        raise _Failure(f"{message} (see {self.prog} --help)", _EXIT_USAGE)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _run(prog: str, body: Callable[[], int]) -> int:
    try:
        return body()
    except _Failure as exc:
        print(f"{prog}: {_one_line(str(exc))}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"{prog}: {_one_line(str(exc))}", file=sys.stderr)
        return _EXIT_FAIL
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def _state(path: str | None) -> StateDir:
    from ..agent.keystore import StateDir, default_state_dir

    if path is not None and not path.strip():
        raise _Failure("--state-dir: empty path", _EXIT_USAGE)
    return StateDir(Path(path).absolute() if path else default_state_dir())


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (0-65535): {text[:20]!r}")
    return int(text)


def _setup_logging(stream: object, default: str = "info") -> None:
    levels = {"silent": logging.CRITICAL + 10, "error": logging.ERROR, "warning": logging.WARNING}
    levels |= {"info": logging.INFO, "verbose": logging.DEBUG, "debug": logging.DEBUG}
    level = levels.get((os.environ.get("LOG_LEVEL") or default).strip().lower(), logging.INFO)
    handler = logging.StreamHandler(stream)  # type: ignore[call-overload]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("wgpy")
    root.handlers[:] = [handler]
    root.setLevel(level)


# ----------------------------------------------------------------------------------------------------------------
# wgpy up
# ----------------------------------------------------------------------------------------------------------------


def _up_parser() -> _Parser:
    parser = _Parser(prog="wgpy up", description="Enrol this device with a wgpy management server and join the mesh.")
    parser.add_argument(
        "--management",
        metavar="URL",
        action="append",
        help="the management server, e.g. https://mgmt.example:8443; replicas: repeat it or URL1,URL2 (failover)",
    )
    parser.add_argument("--setup-key", metavar="KEY", help="the setup key (first enrolment only)")
    parser.add_argument(
        "--management-key", metavar="B64", help="the management server's Ed25519 public key: maps must be signed by it"
    )
    parser.add_argument("--name", help="this peer's name at the server (default: the host name)")
    parser.add_argument("--interface", metavar="IF", help=f"the TUN interface (default {DEFAULT_INTERFACE})")
    parser.add_argument("--listen-port", type=_port, metavar="P", help="the WireGuard UDP port (default: any)")
    parser.add_argument("--state-dir", metavar="D", help="where the agent keeps its state")
    parser.add_argument("--fail-closed", action="store_true", help="deny all traffic once the network map expires")
    parser.add_argument("--no-tun", action="store_true", help="run the tunnel without a TUN device")
    parser.add_argument("--endpoint-host", metavar="HOST", help="the address to report as this peer's endpoint")
    parser.add_argument(
        "--worker", action="store_true", help="seal and write to the TUN device in a second process (a second core)"
    )
    parser.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    return parser


def _check_up_arguments(args: argparse.Namespace) -> None:
    if args.management is not None:
        from yarl import URL

        texts = [part.strip() for value in args.management for part in value.split(",") if part.strip()]
        if not texts:
            raise _Failure("--management: not a URL", _EXIT_USAGE)
        for text in texts:
            try:
                url = URL(text)
            except (ValueError, TypeError):
                raise _Failure("--management: not a URL", _EXIT_USAGE) from None
            if url.scheme not in ("http", "https") or not url.host:
                raise _Failure("--management: must be http://HOST[:PORT] or https://HOST[:PORT]", _EXIT_USAGE)
            if url.user or url.password or url.query_string or url.fragment:
                raise _Failure("--management: no user, password, query or fragment in the URL", _EXIT_USAGE)
        # One string, the replicas in order: how the state file keeps it and the client takes it.
        args.management = ",".join(text.rstrip("/") for text in texts)
    if args.setup_key is not None:
        key = args.setup_key.strip()
        if not key or len(key) > 512 or not all("!" <= char <= "~" for char in key):
            raise _Failure("--setup-key: not a setup key (printable ASCII without spaces)", _EXIT_USAGE)
        args.setup_key = key
    if args.management_key is not None:
        from ..agent.enrol import normalise_management_key

        try:
            args.management_key = normalise_management_key(args.management_key)
        except ConfigError as exc:
            raise _Failure(str(exc), _EXIT_USAGE) from None
    if args.name is not None and not _NAME_RE.fullmatch(args.name):
        raise _Failure("--name: 1-64 characters from A-Z a-z 0-9 _ . : @ - (not starting with . : @ -)", _EXIT_USAGE)
    if args.interface is not None and not _IFNAME_RE.fullmatch(args.interface):
        raise _Failure("--interface: 1-15 characters from A-Z a-z 0-9 _ = + . -", _EXIT_USAGE)
    if args.endpoint_host is not None:
        import ipaddress

        try:
            ipaddress.ip_address(args.endpoint_host)
        except ValueError:
            raise _Failure("--endpoint-host: not an IP address", _EXIT_USAGE) from None


def _default_name() -> str:
    import socket

    name = re.sub(r"[^A-Za-z0-9_.:@-]", "-", socket.gethostname())[:64].lstrip(".:@-")
    return name or "wgpy-peer"


def main_up(argv: Sequence[str]) -> int:
    return _run("wgpy up", lambda: _up(argv))


def _up(argv: Sequence[str]) -> int:
    args = _up_parser().parse_args(list(argv))
    _check_up_arguments(args)
    state = _state(args.state_dir)
    existing = state.read_enrolment()
    pid = state.read_pid()
    if pid is not None:
        raise _Failure(f"an agent already runs for {state.path} (pid {pid}): wgpy down first")
    if existing is None:
        missing = [
            flag
            for flag, value in (
                ("--management", args.management),
                ("--setup-key", args.setup_key),
                ("--management-key", args.management_key),
            )
            if value is None
        ]
        if missing:
            raise _Failure(f"not enrolled yet ({state.path}): {', '.join(missing)} needed", _EXIT_USAGE)
        if args.name is None:
            args.name = _default_name()
    elif args.setup_key is not None:
        print(
            f"wgpy up: already enrolled as peer {existing.peer_id}: --setup-key is not used"
            " (wgpy logout first to enrol again)",
            file=sys.stderr,
        )
    if args.foreground or os.environ.get("WG_PROCESS_FOREGROUND", "").strip() == "1":
        _setup_logging(sys.stderr)
        return asyncio.run(_serve(args, state, lambda line: print(line, flush=True)))
    return _daemonize(args, state)


def _daemonize(args: argparse.Namespace, state: StateDir) -> int:
    """Fork; the child runs the agent and writes one line to a pipe once it is up (or why it is not)."""
    state.ensure()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid != 0:
        os.close(write_fd)
        return _wait_ready(read_fd, pid)
    # the child
    from ..agent.keystore import LOG_FILE

    os.close(read_fd)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    log_fd = os.open(state.file(LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    _setup_logging(sys.stderr)
    reported = False

    def ready(line: str) -> None:
        nonlocal reported
        if not reported:
            reported = True
            with contextlib.suppress(OSError):
                os.write(write_fd, ("ok " + _one_line(line) + "\n").encode("utf-8", errors="replace"))
                os.close(write_fd)

    status = _EXIT_FAIL
    try:
        status = asyncio.run(_serve(args, state, ready))
    except (_Failure, ConfigError) as exc:
        if not reported:
            reported = True
            with contextlib.suppress(OSError):
                os.write(write_fd, ("error " + _one_line(str(exc)) + "\n").encode("utf-8", errors="replace"))
        logger.error("%s", _one_line(str(exc)))
    except BaseException:
        logger.exception("the agent failed")
    finally:
        with contextlib.suppress(OSError):
            os.close(write_fd)
        os._exit(status)


def _wait_ready(read_fd: int, child: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    import select

    try:
        while b"\n" not in data and time.monotonic() < deadline:
            readable, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                break
            chunk = os.read(read_fd, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
    line = data.decode("utf-8", errors="replace").strip()
    if line.startswith("ok "):
        print(line[3:])
        return _EXIT_OK
    if line.startswith("error "):
        raise _Failure(line[6:])
    raise _Failure(f"the agent (pid {child}) did not start within {READY_TIMEOUT:.0f} s; see its log")


async def _start(args: argparse.Namespace, state: StateDir) -> Enrolled:
    from ..agent.client import ManagementError
    from ..agent.enrol import enrol_device, resume_device
    from ..agent.keystore import KeyStore

    keystore = KeyStore(state)
    existing = state.read_enrolment()
    interface = None if args.no_tun else (args.interface or DEFAULT_INTERFACE)
    try:
        if existing is None:
            return await enrol_device(
                state,
                keystore,
                url=args.management.rstrip("/"),
                setup_key=args.setup_key,
                management_key=args.management_key,
                name=args.name,
                interface=interface,
                listen_port=args.listen_port or 0,
                fail_closed=args.fail_closed,
            )
        enrolled = resume_device(state, keystore, management_key=args.management_key, url=args.management)
        try:
            await enrolled.client.refresh()
        except ManagementError as exc:
            if exc.fatal and not exc.retryable and not _unproven_revocation(exc, enrolled, state):
                await enrolled.client.close()
                raise
            logger.warning("%s: starting on the last network map, reconnecting in the background", exc)
        return enrolled
    except ManagementError as exc:
        raise _Failure(str(exc)) from None


def _unproven_revocation(exc: ManagementError, enrolled: Enrolled, state: StateDir) -> bool:
    """A 403 at start-up: ``True`` if it carries no valid signed revocation notice (not believed: the agent starts
    on its last map and asks again). With a valid one, the saved map and refresh token are deleted first, as a
    running agent does on revocation, and ``False`` (the start fails in one line)."""
    from ..agent.runner import forget_revoked_state, verified_revocation
    from ..mesh.revocation import RevocationRejected

    if exc.status != 403:
        return False
    try:
        verified_revocation(exc.notice, enrolled.enrolment, enrolled.private_key.public_key())
    except RevocationRejected as refused:
        logger.warning("the management server's 403 is not believed (%s)", refused)
        return True
    forget_revoked_state(state)
    return False


def _open_tun(name: str) -> TunDevice:
    from tun import TunError, open_tun

    try:
        return open_tun(name)
    except TunError as exc:
        raise _Failure(f"cannot create the interface {name}: {exc}") from None
    except (ValueError, OSError) as exc:
        raise _Failure(f"cannot create the interface {name}: {exc}") from None


def _configure_interface(name: str, prefix: str, mtu: int) -> None:
    """Give the interface its mesh address and bring it up (iproute2)."""
    for command in (
        ["ip", "address", "replace", prefix, "dev", name],
        ["ip", "link", "set", "dev", name, "mtu", str(mtu), "up"],
    ):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)  # noqa: S603
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise _Failure(f"cannot configure {name} ({' '.join(command[:3])}): {exc}") from None
        if done.returncode != 0:
            raise _Failure(f"cannot configure {name}: {_one_line(done.stderr) or 'ip failed'}")


async def _serve_uapi(runner: AgentRunner, ifname: str) -> UapiServer | None:
    """The interface's UAPI socket, so that ``wg show IF`` works (``wg set`` too, but each map is authoritative)."""
    from ..drivers.uapi_server import UapiServer, bind_uapi_socket

    try:
        sock = bind_uapi_socket(ifname)
    except OSError as exc:
        logger.warning("no UAPI socket for %s (%s): wg show will not see it", ifname, exc.strerror or exc)
        return None
    server = UapiServer(runner.tunnel, sock, mesh=runner.mesh)
    await server.start()
    return server


async def _serve(args: argparse.Namespace, state: StateDir, ready: Callable[[str], None]) -> int:
    from ..agent.runner import AgentRunner, RunnerExit
    from ..device import DEFAULT_MTU

    enrolled = await _start(args, state)
    enrolment = enrolled.enrolment
    tun = None
    interface = None if args.no_tun else (args.interface or enrolment.interface or DEFAULT_INTERFACE)
    if interface is not None:
        tun = _open_tun(interface)
        try:
            _configure_interface(tun.name, enrolment.interface_prefix, DEFAULT_MTU)
        except _Failure:
            tun.close()
            await enrolled.client.close()
            raise
    runner = AgentRunner(
        enrolment,
        enrolled.private_key,
        enrolled.client,
        state=state,
        tun=tun,
        advertise_host=args.endpoint_host,
        fail_closed=args.fail_closed or enrolment.fail_closed,
        initial_map=enrolled.initial_map,
        worker=args.worker,
    )
    try:
        await runner.start()
    except (OSError, ConfigError) as exc:
        await enrolled.client.close()
        if tun is not None:
            tun.close()
        raise _Failure(f"cannot start the tunnel: {getattr(exc, 'strerror', None) or exc}") from None
    uapi = await _serve_uapi(runner, tun.name) if tun is not None else None
    state.write_pid()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, runner.stop)
    where = f"on {tun.name}" if tun is not None else "without a TUN device"
    endpoint = f"{runner.endpoint[0]}:{runner.endpoint[1]}" if runner.endpoint else f"port {runner.tunnel.local_port}"
    ready(
        f"peer {enrolment.peer_id} ({enrolment.name or '-'}) is up {where}: address {enrolment.interface_prefix},"
        f" endpoint {endpoint}, management {enrolment.management_url} (pid {os.getpid()})"
    )
    try:
        reason = await runner.wait()
    finally:
        if uapi is not None:
            uapi.close()
        state.remove_pid()
    if reason is RunnerExit.REVOKED:
        print("wgpy up: this peer was revoked by the management server; traffic stopped", file=sys.stderr)
        return _EXIT_FAIL
    if reason is RunnerExit.CREDENTIALS_REFUSED:
        print(f"wgpy up: {runner.last_error}", file=sys.stderr)
        return _EXIT_FAIL
    if reason is RunnerExit.TUNNEL_CLOSED:
        print("wgpy up: the tunnel closed", file=sys.stderr)
        return _EXIT_FAIL
    return _EXIT_OK


# ----------------------------------------------------------------------------------------------------------------
# wgpy status / down / logout
# ----------------------------------------------------------------------------------------------------------------


def _simple_parser(prog: str, description: str) -> _Parser:
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--state-dir", metavar="D", help="the agent's state directory")
    return parser


def _when(unix: object) -> str:
    if not isinstance(unix, (int, float)) or isinstance(unix, bool):
        return "?"
    moment = datetime.datetime.fromtimestamp(float(unix), tz=datetime.UTC)
    delta = float(unix) - time.time()
    relative = f"in {delta:.0f} s" if delta >= 0 else f"{-delta:.0f} s ago"
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative})"


def _saved_map(state: StateDir) -> tuple[int | None, int | None]:
    from ..agent.keystore import MAP_FILE

    try:
        record = json.loads(state.file(MAP_FILE).read_bytes())
        body = record["document"]["map"]
        return int(body["serial"]), int(body["expires_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def main_status(argv: Sequence[str]) -> int:
    return _run("wgpy status", lambda: _status(argv))


def _status(argv: Sequence[str]) -> int:
    parser = _simple_parser("wgpy status", "Show this device's enrolment and the agent's state.")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(list(argv))
    from ..agent.keystore import KeyStore

    state = _state(args.state_dir)
    enrolment = state.read_enrolment()
    if enrolment is None:
        raise _Failure(f"not enrolled (no state in {state.path}): run wgpy up")
    pid = state.read_pid()
    live = state.read_status() if pid is not None else None
    if live is not None and live.get("pid") != pid:
        live = None
    serial, expires = _saved_map(state)
    if live is not None:
        serial, expires = live.get("map_serial"), live.get("map_expires_at")  # type: ignore[assignment]
    key_location = KeyStore(state, keyring_backend=False).describe(enrolment.key_storage)
    report: dict[str, object] = {
        "peer_id": enrolment.peer_id,
        "name": enrolment.name,
        "address": enrolment.interface_prefix,
        "management_url": enrolment.management_url,
        "running": pid is not None,
        "pid": pid,
        "connected": bool(live and live.get("connected")),
        "map_serial": serial,
        "map_expires_at": expires,
        "traffic_allowed": live.get("traffic_allowed") if live else None,
        "fail_closed": live.get("fail_closed") if live else enrolment.fail_closed,
        "endpoint": live.get("endpoint") if live else None,
        "last_error": live.get("last_error") if live else None,
        "interface": enrolment.interface,
        "private_key": key_location,
        "peers": live.get("peers", []) if live else [],
        "last_exit": (state.read_status() or {}).get("exit") if pid is None else None,
    }
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
        return _EXIT_OK
    lines = [
        f"peer:         {enrolment.peer_id} ({enrolment.name or '-'})",
        f"address:      {enrolment.interface_prefix}" + (f" on {enrolment.interface}" if enrolment.interface else ""),
        f"management:   {enrolment.management_url}",
    ]
    if pid is None:
        last = state.read_status()
        exit_reason = last.get("exit") if last is not None else None
        words = {"revoked": "revoked by the management server", "credentials_refused": "credentials refused"}
        if exit_reason in words:
            lines.append(f"agent:        not running (it stopped: {words[str(exit_reason)]})")
        else:
            lines.append("agent:        not running")
    else:
        connection = "connected" if report["connected"] else "not connected"
        if not report["connected"] and report["last_error"]:
            connection += f" ({report['last_error']})"
        lines.append(f"agent:        running (pid {pid}), {connection}")
        if isinstance(report["endpoint"], list):
            lines.append(f"endpoint:     {report['endpoint'][0]}:{report['endpoint'][1]}")
    if serial is None:
        lines.append("network map:  none")
    else:
        lines.append(f"network map:  serial {serial}, expires {_when(expires)}")
    if report["traffic_allowed"] is False:
        lines.append("traffic:      DENIED (fail-closed: the network map has expired)")
    lines.append(f"private key:  {key_location}")
    peers = report["peers"] if isinstance(report["peers"], list) else []
    lines.append(f"peers:        {len(peers)}" if pid is not None else "peers:        (agent not running)")
    for peer in peers:
        if not isinstance(peer, dict):
            continue
        key = str(peer.get("public_key", ""))
        endpoint = peer.get("endpoint")
        handshake = peer.get("latest_handshake_ago")
        lines.append(
            f"  {key[:4]}…{key[-5:-1]}  {', '.join(map(str, peer.get('allowed_ips', [])))}"
            f"  endpoint {endpoint[0] + ':' + str(endpoint[1]) if isinstance(endpoint, list) else '(none)'}"
            f"  handshake {str(handshake) + ' s ago' if handshake is not None else 'never'}"
            f"  rx {peer.get('rx_bytes', 0)} B  tx {peer.get('tx_bytes', 0)} B"
        )
        if isinstance(peer.get("path"), str):
            lines.append(f"    {peer['path']}")  # NAT traversal: direct or relayed, the pair, why relayed
    print("\n".join(lines))
    return _EXIT_OK


def _stop_agent(state: StateDir) -> int | None:
    """SIGTERM the running agent and wait for it; its pid, or ``None`` if none ran."""
    pid = state.read_pid()
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    except PermissionError:
        raise _Failure(f"not allowed to stop the agent (pid {pid})") from None
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _alive(pid):
            return pid
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # reap it if it is our child (tests run up and down in one process)
        time.sleep(0.05)
    raise _Failure(f"the agent (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s")


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent to reap it has stopped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return True
    return not fields or fields[0] not in ("Z", "X")


def main_down(argv: Sequence[str]) -> int:
    return _run("wgpy down", lambda: _down(argv))


def _down(argv: Sequence[str]) -> int:
    args = _simple_parser("wgpy down", "Stop the agent that wgpy up started.").parse_args(list(argv))
    state = _state(args.state_dir)
    pid = _stop_agent(state)
    if pid is None:
        raise _Failure(f"no agent is running for {state.path}")
    print(f"wgpy down: agent (pid {pid}) stopped")
    return _EXIT_OK


def main_logout(argv: Sequence[str]) -> int:
    return _run("wgpy logout", lambda: _logout(argv))


def _logout(argv: Sequence[str]) -> int:
    parser = _simple_parser("wgpy logout", "Deregister this peer at the server and delete the local state.")
    parser.add_argument("--force", action="store_true", help="delete the local state even if the server is not told")
    args = parser.parse_args(list(argv))
    from ..agent.keystore import STORAGE_FILE, STORAGE_KEYRING, KeyStore

    state = _state(args.state_dir)
    try:
        enrolment = state.read_enrolment()
    except ConfigError:
        if not args.force:
            raise
        enrolment = None
    if enrolment is None and not args.force:
        raise _Failure(f"not enrolled (no state in {state.path})")
    _stop_agent(state)
    keystore = KeyStore(state)
    outcome = None
    problem = None
    if enrolment is not None:
        try:
            outcome = asyncio.run(_deregister(state, keystore))
        except (ConfigError, _Failure) as exc:
            problem = str(exc)
    if outcome is None and problem is not None and not args.force:
        raise _Failure(f"{problem}; local state kept (wgpy logout --force deletes it anyway)")
    if enrolment is not None:
        keystore.delete(enrolment.key_storage)
    else:
        for storage in (STORAGE_KEYRING, STORAGE_FILE):
            keystore.delete(storage)
    state.remove_all()
    if outcome is not None and enrolment is not None:
        print(f"wgpy logout: peer {enrolment.peer_id} {outcome}; local state deleted")
    else:
        print(f"wgpy logout: local state deleted (the server was not told: {problem or 'not enrolled'})")
    return _EXIT_OK


async def _deregister(state: StateDir, keystore: KeyStore) -> str:
    """Tell the server; what happened, in words. Raises ``_Failure`` when the server could not be told."""
    from ..agent.client import ManagementError
    from ..agent.enrol import resume_device

    enrolled = resume_device(state, keystore)
    try:
        await enrolled.client.logout()
    except ManagementError as exc:
        if exc.fatal and not exc.retryable:
            return "was already revoked or deleted at the server"  # nothing left to deregister
        raise _Failure(str(exc)) from None
    finally:
        await enrolled.client.close()
    return "deregistered"
