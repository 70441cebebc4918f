"""``wgpy admin``: the management API's admin client (setup keys, peers, policy, audit).

``wgpy admin [--url U] [--token-file F] COMMAND``; the token comes from ``--token-file`` or ``WGPY_ADMIN_TOKEN``, the
URL from ``--url`` or ``WGPY_MANAGEMENT_URL`` (default ``http://127.0.0.1:8080``). Answers are printed as JSON (one
object or array); ``setup-key create`` prints the key on its own line (shown once) and its details on stderr.
Any error is one line on stderr (the server's ``error: detail``) and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8080"
TIMEOUT = 30.0  # seconds per request
MAX_ANSWER = 64 * 1024 * 1024  # bytes read of one answer


class AdminError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgpy admin", description="administer a wgpy management server")
    parser.add_argument("--url", default=os.environ.get("WGPY_MANAGEMENT_URL", DEFAULT_URL))
    parser.add_argument("--token-file", type=pathlib.Path, help="file holding the admin token (else WGPY_ADMIN_TOKEN)")
    commands = parser.add_subparsers(dest="area", required=True)

    keys = commands.add_parser("setup-key").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create")
    create.add_argument("--name", required=True)
    create.add_argument("--reusable", action="store_true")
    create.add_argument("--usage-limit", type=int)
    create.add_argument("--expires-in", type=int, help="seconds (default 86400)")
    create.add_argument("--group", action="append", default=[], dest="groups", help="auto group (repeatable)")
    create.add_argument("--approval-required", action="store_true")
    create.add_argument("--ephemeral", action="store_true")
    create.add_argument("--ephemeral-timeout", type=int)
    keys.add_parser("list")
    revoke = keys.add_parser("revoke")
    revoke.add_argument("id")

    peers = commands.add_parser("peer").add_subparsers(dest="action", required=True)
    peers.add_parser("list")
    for name in ("approve", "revoke"):
        peers.add_parser(name).add_argument("id")
    rename = peers.add_parser("rename")
    rename.add_argument("id")
    rename.add_argument("name")
    groups = peers.add_parser("groups")
    groups.add_argument("id")
    groups.add_argument("groups", nargs="*")

    policy = commands.add_parser("policy").add_subparsers(dest="action", required=True)
    policy.add_parser("set").add_argument("file", type=pathlib.Path)
    policy.add_parser("show")

    audit = commands.add_parser("audit").add_subparsers(dest="action", required=True)
    tail = audit.add_parser("tail")
    tail.add_argument("--kind")
    tail.add_argument("--peer")
    tail.add_argument("--limit", type=int, default=20)
    tail.add_argument("--follow", action="store_true")
    tail.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    return parser


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        try:
            token: str = args.token_file.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminError(f"cannot read the token file: {getattr(exc, 'strerror', None) or 'not text'}") from None
    else:
        token = os.environ.get("WGPY_ADMIN_TOKEN", "").strip()
    if not token:
        raise AdminError("no admin token: pass --token-file FILE or set WGPY_ADMIN_TOKEN")
    if not token.isascii() or any(c.isspace() for c in token):
        raise AdminError("the admin token is not a single word of ASCII")
    return token


def _call(
    args: argparse.Namespace,
    method: str,
    path: str,
    body: object = None,
    *,
    raw: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, bytes]:
    url = args.url.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise AdminError("--url must start with http:// or https://")
    headers = {"Authorization": f"Bearer {_token(args)}"}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    if data is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 (scheme checked above)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # noqa: S310
            return response.status, response.read(MAX_ANSWER)
    except urllib.error.HTTPError as exc:
        payload = exc.read(MAX_ANSWER)
        try:
            error = json.loads(payload)
            message = f"{error['error']}: {error['detail']}"
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {exc.code}"
        raise AdminError(message) from None
    except urllib.error.URLError as exc:
        raise AdminError(f"cannot reach {args.url}: {exc.reason}") from None
    except (TimeoutError, OSError) as exc:
        raise AdminError(f"cannot reach {args.url}: {exc}") from None


def _print(payload: bytes) -> None:
    if payload:
        print(json.dumps(json.loads(payload), indent=2, sort_keys=True))


def _run(args: argparse.Namespace) -> int:
    area, action = args.area, args.action
    if area == "setup-key":
        if action == "create":
            body: dict[str, object] = {"name": args.name, "reusable": args.reusable, "auto_groups": args.groups}
            for field in ("usage_limit", "expires_in", "ephemeral_timeout"):
                if getattr(args, field) is not None:
                    body[field] = getattr(args, field)
            if args.approval_required:
                body["approval_required"] = True
            if args.ephemeral:
                body["ephemeral"] = True
            _status, payload = _call(args, "POST", "/api/v1/setup-keys", body)
            created = json.loads(payload)
            key = created.pop("key")
            print(json.dumps(created, sort_keys=True), file=sys.stderr)
            print(key)
        elif action == "list":
            _print(_call(args, "GET", "/api/v1/setup-keys")[1])
        else:
            _call(args, "DELETE", f"/api/v1/setup-keys/{urllib.parse.quote(args.id, safe='')}")
    elif area == "peer":
        if action == "list":
            _print(_call(args, "GET", "/api/v1/peers")[1])
            return 0
        path = f"/api/v1/peers/{urllib.parse.quote(args.id, safe='')}"
        if action in ("approve", "revoke"):
            _print(_call(args, "POST", f"{path}/{action}")[1])
        elif action == "rename":
            _print(_call(args, "PATCH", path, {"name": args.name})[1])
        else:
            _print(_call(args, "PATCH", path, {"groups": args.groups})[1])
    elif area == "policy":
        if action == "set":
            try:
                text = args.file.read_bytes()
            except OSError as exc:
                raise AdminError(f"cannot read {args.file}: {exc.strerror}") from None
            _print(_call(args, "PUT", "/api/v1/policy", raw=text, content_type="application/yaml")[1])
        else:
            sys.stdout.write(_call(args, "GET", "/api/v1/policy")[1].decode("utf-8"))
    else:
        _tail(args)
    return 0


def _tail(args: argparse.Namespace) -> None:
    query = {"limit": str(max(1, min(args.limit, 1000)))}
    if args.kind:
        query["kind"] = args.kind
    if args.peer:
        query["peer"] = args.peer
    events = json.loads(_call(args, "GET", "/api/v1/audit?" + urllib.parse.urlencode(query))[1])
    last = 0
    for event in reversed(events):
        print(json.dumps(event, sort_keys=True), flush=True)
        last = max(last, event["id"])
    while args.follow:
        time.sleep(args.interval)
        query_follow = {**query, "after_id": str(last), "limit": "1000"}
        events = json.loads(_call(args, "GET", "/api/v1/audit?" + urllib.parse.urlencode(query_follow))[1])
        for event in reversed(events):
            print(json.dumps(event, sort_keys=True), flush=True)
            last = max(last, event["id"])


def main(argv: Sequence[str]) -> int:
    """Run ``wgpy admin ...``; returns the exit status."""
    args = _parser().parse_args(list(argv))
    try:
        return _run(args)
    except AdminError as exc:
        print(f"wgpy admin: {exc}", file=sys.stderr)
        return 1
    except (ValueError, KeyError) as exc:
        print(f"wgpy admin: unexpected answer from the server ({type(exc).__name__})", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
