"""``wgpy probe --endpoint HOST:PORT --peer-public-key B64 --private-key-file FILE ...``: the probe's command line.

Parses and checks the arguments into a ``wgpy.tools.probe.ProbeConfig``, runs the ``Probe`` and prints one line per
check as it ends, then a summary; ``--json FILE`` also writes the report (``wgpy.tools.conformance.report``).

Exit status: 0 when no check failed (an inconclusive check is not a failure), 1 when one did, 2 for bad arguments, keys or a socket that cannot be bound
(one line on stderr, never a traceback), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, NoReturn, TextIO

from .. import __version__
from ..errors import ConfigError
from ..events import Endpoint
from ..keys import PresharedKey, PrivateKey, PublicKey
from ..tools import conformance
from ..tools.probe import DEFAULT_BURST, DEFAULT_TIMEOUT, Probe, ProbeConfig, ProbeUsageError

__all__ = ["main", "parse_args"]

_NAME_WIDTH: Final = 20


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr and exit status 2 (argparse would print the whole usage first)."""
        raise ProbeUsageError(message)


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="wgpy probe",
        description="Run protocol checks against a live WireGuard endpoint (see docs/probe.md).",
        epilog="checks: " + ", ".join(conformance.CHECK_NAMES),
    )
    parser.add_argument("--endpoint", required=True, metavar="HOST:PORT", help="the endpoint's UDP address")
    parser.add_argument("--peer-public-key", required=True, metavar="B64", help="the endpoint's public key")
    parser.add_argument(
        "--private-key-file", required=True, metavar="FILE", help="our private key (its public key must be a peer)"
    )
    parser.add_argument("--preshared-key-file", metavar="FILE", help="the preshared key of that peer, if any")
    parser.add_argument(
        "--tunnel-address", required=True, metavar="ADDR", help="our inner address (in our allowed IPs there)"
    )
    parser.add_argument("--target", required=True, metavar="ADDR", help="an inner address that answers (see --echo)")
    parser.add_argument(
        "--echo",
        default="icmp",
        metavar="icmp|udp:PORT|tcp:PORT",
        help="how the target is asked to answer: ICMP echo (default), a UDP echo service on PORT (RFC 862: port 7), "
        "or a TCP SYN to PORT (any SYN-ACK or RST is an answer)",
    )
    parser.add_argument("--listen-port", type=int, default=0, metavar="N", help="our UDP port (default: any)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"silence that counts as ignored (default {DEFAULT_TIMEOUT})",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--only", metavar="CHECK,...", help="run only these checks (handshake always runs)")
    parser.add_argument("--skip-slow", action="store_true", help="skip the checks that wait out 10-20 s timers")
    parser.add_argument(
        "--burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="N",
        help=f"initiations sent to cause load (default {DEFAULT_BURST})",
    )
    return parser


def _read_key_file(option: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="strict")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProbeUsageError(f"{option}: cannot read {path}: {reason}") from None


def _resolve(text: str) -> tuple[Endpoint, socket.AddressFamily]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProbeUsageError(f"--endpoint: expected HOST:PORT or [IPv6]:PORT, got {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(host, int(port_text), type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise ProbeUsageError(f"--endpoint: cannot resolve {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    endpoint: Endpoint
    if family == socket.AF_INET6:  # keep flow info and scope id: a link-local endpoint needs its interface
        endpoint = (str(sockaddr[0]), int(sockaddr[1]), int(sockaddr[2]), int(sockaddr[3]))  # type: ignore[misc]
    else:
        endpoint = (str(sockaddr[0]), int(sockaddr[1]))
    return endpoint, socket.AddressFamily(family)


def _address(option: str, text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_interface(text.strip()).ip
    except ValueError:
        raise ProbeUsageError(f"{option}: not an IP address: {text!r}") from None


def _echo(text: str) -> tuple[conformance.EchoKind, int]:
    kind, _, port_text = text.strip().lower().partition(":")
    if kind == "icmp" and not port_text:
        return conformance.EchoKind.ICMP, 0
    if kind in ("udp", "tcp") and port_text.isdigit() and 0 < int(port_text) < 65536:
        return conformance.EchoKind(kind), int(port_text)
    raise ProbeUsageError(f"--echo: expected icmp, udp:PORT or tcp:PORT, got {text!r}")


def parse_args(argv: Sequence[str]) -> ProbeConfig:
    """Parse and check the command line. Raises ``ProbeUsageError`` with a one-line message."""
    args = _build_parser().parse_args(list(argv))
    endpoint, family = _resolve(args.endpoint)
    try:
        peer_public_key = PublicKey.from_base64(args.peer_public_key)
    except ConfigError:
        raise ProbeUsageError("--peer-public-key: not a base64 WireGuard public key (44 characters)") from None
    try:
        private_key = PrivateKey.from_base64(_read_key_file("--private-key-file", args.private_key_file))
    except ConfigError:
        raise ProbeUsageError(
            f"--private-key-file: {args.private_key_file} does not hold a base64 private key"
        ) from None
    if private_key.public_key() == peer_public_key:
        raise ProbeUsageError("--private-key-file: that is the endpoint's own key; the probe needs a key of a peer")
    preshared_key = None
    if args.preshared_key_file:
        text = _read_key_file("--preshared-key-file", args.preshared_key_file)
        try:
            preshared_key = PresharedKey.from_base64(text)
        except ConfigError:
            raise ProbeUsageError(
                f"--preshared-key-file: {args.preshared_key_file} does not hold a base64 preshared key"
            ) from None
    tunnel_address = _address("--tunnel-address", args.tunnel_address)
    target = _address("--target", args.target)
    if tunnel_address.version != target.version:
        raise ProbeUsageError("--tunnel-address and --target must both be IPv4 or both IPv6")
    if tunnel_address == target:
        raise ProbeUsageError("--target must differ from --tunnel-address (it is an address behind the endpoint)")
    if not 0 <= args.listen_port < 65536:
        raise ProbeUsageError("--listen-port must be 0-65535")
    if not 0.05 <= args.timeout <= 60:
        raise ProbeUsageError("--timeout must be between 0.05 and 60 seconds")
    if not 1 <= args.burst <= 100_000:
        raise ProbeUsageError("--burst must be between 1 and 100000")
    echo, echo_port = _echo(args.echo)
    json_path = Path(args.json) if args.json else None
    if json_path is not None and not json_path.parent.is_dir():
        raise ProbeUsageError(f"--json: directory {json_path.parent} does not exist")
    checks = conformance.CHECK_NAMES
    if args.only is not None:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in conformance.CHECK_NAMES]
        if unknown or not wanted:
            raise ProbeUsageError(
                f"--only: unknown check {', '.join(unknown) or '(none given)'}; "
                f"checks are {', '.join(conformance.CHECK_NAMES)}"
            )
        checks = tuple(name for name in conformance.CHECK_NAMES if name in wanted or name == "handshake")
    return ProbeConfig(
        endpoint=endpoint,
        endpoint_text=args.endpoint,
        family=family,
        peer_public_key=peer_public_key,
        private_key=private_key,
        preshared_key=preshared_key,
        tunnel_address=str(tunnel_address),
        target=str(target),
        listen_port=args.listen_port,
        timeout=args.timeout,
        checks=checks,
        skip_slow=args.skip_slow,
        burst=args.burst,
        json_path=json_path,
        echo=echo,
        echo_port=echo_port,
    )


def _settings(config: ProbeConfig, probe: Probe, started: datetime) -> dict[str, object]:
    return {
        "tool": f"wgpy probe {__version__}",
        "started_at": started.isoformat(timespec="seconds").replace("+00:00", "Z"),
        "endpoint": config.endpoint_text,
        "peer_public_key": config.peer_public_key.to_base64(),
        "our_public_key": probe.identity.public_key.to_base64(),
        "preshared_key": config.preshared_key is not None,
        "tunnel_address": config.tunnel_address,
        "target": config.target,
        "echo": probe.echo.describe(),
        "listen_port": probe.listen_port,
        "timeout_s": config.timeout,
        "skip_slow": config.skip_slow,
        "engine_drops": {reason.name: count for reason, count in sorted(probe.device.stats.drops.items(), key=str)},
    }


def main(
    argv: Sequence[str] | None = None, *, out: TextIO | None = None, rng: Callable[[int], bytes] = os.urandom
) -> int:
    """``wgpy probe ...``: returns 0 when no check failed (inconclusive is not failed), 1 when one did, 2 for bad
    arguments."""
    stream = out if out is not None else sys.stdout
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        _build_parser().print_help(stream)
        return 0
    try:
        config = parse_args(args)
        probe = Probe(config, rng=rng)
    except ProbeUsageError as error:
        print(f"wgpy probe: error: {error}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    start = time.monotonic()
    try:
        print(
            f"wgpy probe: {config.endpoint_text} (peer {config.peer_public_key.short()}) as "
            f"{probe.identity.public_key.short()} from {config.tunnel_address} (UDP port {probe.listen_port}), "
            f"target {probe.echo.describe()}",
            file=stream,
            flush=True,
        )
        results = probe.run(lambda result: print(result.line(_NAME_WIDTH), file=stream, flush=True))
    except KeyboardInterrupt:
        print("wgpy probe: interrupted", file=sys.stderr)
        return 130
    finally:
        probe.close()
    duration = time.monotonic() - start
    counts = conformance.summary(results)
    print(
        f"{counts['pass']} passed, {counts['fail']} failed, {counts['inconclusive']} inconclusive, "
        f"{counts['skip']} skipped in {duration:.1f} s",
        file=stream,
        flush=True,
    )
    if config.json_path is not None:
        document = conformance.report(results, _settings(config, probe, started), duration)
        try:
            config.json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"wgpy probe: error: cannot write {config.json_path}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 1 if counts["fail"] else 0
