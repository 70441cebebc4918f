"""``wgpy management init | serve``: the management server's command line.

- ``wgpy management init [--state-dir D] [--db URL]`` creates the signing key, the proof key (0600 files) and the
  database, and prints the first admin token once. It refuses to overwrite existing keys.
- ``wgpy management serve [--db URL] --listen HOST:PORT [--state-dir D] [--tls-cert F --tls-key F]`` migrates the
  database and serves the API until SIGINT/SIGTERM. It prints ``listening on URL`` once ready.

Bad input gives one line on stderr and exit status 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import sys
from collections.abc import Sequence

__all__ = ["DEFAULT_STATE_DIR", "main"]

DEFAULT_STATE_DIR = "/var/lib/wgpy/management"
STATE_DIR_ENV = "WGPY_MANAGEMENT_STATE"


def _fail(message: str) -> int:
    print(f"wgpy management: {message}", file=sys.stderr)
    return 1


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 (an empty host means every address, as stated)


def _rate_limit(text: str) -> tuple[str, object]:
    from ..management.ratelimit import DEFAULT_LIMITS, Limit

    kind, sep, value = text.partition("=")
    if not sep or kind not in DEFAULT_LIMITS:
        raise argparse.ArgumentTypeError(
            f"expected CLASS=RATE/BURST or CLASS=0, CLASS one of {', '.join(DEFAULT_LIMITS)}"
        )
    try:
        return kind, Limit.parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError("expected an IP address") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgpy management", description="the wgpy mesh management server")
    commands = parser.add_subparsers(dest="command", required=True)
    state_default = os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR)
    init = commands.add_parser("init", help="create the keys, the database and the first admin token")
    init.add_argument("--state-dir", default=state_default, type=pathlib.Path)
    init.add_argument("--db", help="database URL (default: SQLite in the state directory)")
    serve = commands.add_parser("serve", help="serve the API")
    serve.add_argument("--state-dir", default=state_default, type=pathlib.Path)
    serve.add_argument("--db", help="database URL (default: SQLite in the state directory)")
    serve.add_argument("--listen", required=True, type=_listen, metavar="HOST:PORT")
    serve.add_argument("--tls-cert", type=pathlib.Path)
    serve.add_argument("--tls-key", type=pathlib.Path)
    serve.add_argument("--network", default=None, help="address pool (default 100.64.0.0/16)")
    serve.add_argument(
        "--turn", action="append", default=[], type=_listen, metavar="HOST:PORT", help="a STUN/TURN server for peers"
    )
    serve.add_argument("--turn-secret-file", type=pathlib.Path, help="coturn's static-auth-secret (use-auth-secret)")
    serve.add_argument(
        "--turn-credential-lifetime", type=int, default=3600, metavar="SECONDS", help="TURN credentials' lifetime"
    )
    serve.add_argument(
        "--rate-limit",
        action="append",
        default=[],
        type=_rate_limit,
        metavar="CLASS=RATE/BURST",
        help="per-source limit of credentials (enrol, login) or peer (signed) requests; CLASS=0 turns it off",
    )
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        type=_address,
        metavar="IP",
        help="a reverse proxy whose X-Forwarded-For names the client (by default the TCP peer is the source)",
    )
    serve.add_argument("--log-level", default="info", choices=["error", "warning", "info", "debug"])
    return parser


async def _serve(args: argparse.Namespace) -> None:
    from ..management.enrolment import DEFAULT_NETWORK
    from ..management.ratelimit import DEFAULT_LIMITS, RateLimits
    from ..management.server import serve

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, task.cancel if task is not None else (lambda: None))

    def ready(url: str) -> None:
        print(f"listening on {url}", flush=True)

    host, port = args.listen
    with contextlib.suppress(asyncio.CancelledError):
        await serve(
            args.state_dir,
            args.db,
            host,
            port,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            network=args.network or DEFAULT_NETWORK,
            ready=ready,
            turn_servers=args.turn,
            turn_secret=args.turn_secret_file.read_bytes().strip() if args.turn_secret_file else b"",
            turn_lifetime=args.turn_credential_lifetime,
            rate_limits=RateLimits({**DEFAULT_LIMITS, **dict(args.rate_limit)}, frozenset(args.trusted_proxy)),
        )


def main(argv: Sequence[str]) -> int:
    """Run ``wgpy management ...``; returns the exit status."""
    args = _parser().parse_args(list(argv))
    os.umask(0o077)  # the database and anything else the server creates are the operator's alone
    from sqlalchemy.exc import SQLAlchemyError

    from ..management.server import StateError, init_state

    try:
        if args.command == "init":
            keys, token = asyncio.run(init_state(args.state_dir, args.db))
            print(f"state directory: {args.state_dir}", file=sys.stderr)
            # Public: devices pin it at enrolment (wgpy up --management-key), so a proxy cannot forge their maps.
            print(
                f"management key (give it to wgpy up --management-key): {keys.info()['signing_key']}", file=sys.stderr
            )
            print("the first admin token (shown once; keep it in a 0600 file):", file=sys.stderr)
            print(token)
            return 0
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root = logging.getLogger("wgpy")
        root.addHandler(handler)
        root.setLevel(args.log_level.upper())
        from ..management.httplog import AIOHTTP_SERVER_LOGGER, quiet_malformed_requests

        # aiohttp's own records (a request its parser refused, say) in the same format, without the request's bytes.
        aiohttp_server = logging.getLogger(AIOHTTP_SERVER_LOGGER)
        aiohttp_server.addHandler(handler)
        aiohttp_server.propagate = False
        quiet_malformed_requests(aiohttp_server)
        asyncio.run(_serve(args))
        return 0
    except StateError as exc:
        return _fail(str(exc))
    except ValueError as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else "invalid value")
    except SQLAlchemyError as exc:
        return _fail(f"database error: {type(exc).__name__}")
    except OSError as exc:
        return _fail(f"{exc.strerror or exc}")
    except KeyboardInterrupt:
        return 130
