"""``wgpy mesh keygen | pubkey | sign --key FILE MAP.json | apply IFNAME FILE``: the management side of mesh mode.

``keygen`` and ``pubkey`` handle the management Ed25519 key the way ``wg genkey`` / ``wg pubkey`` handle WireGuard
keys, ``sign`` turns a map body into the signed document devices accept (``wgpy.mesh.sign_network_map``), and
``apply`` hands a signed document to a running daemon over its UAPI socket (the ``mesh_apply=1`` extension of
``wgpy.drivers.uapi_server``, served by ``wgpy.mesh.agent.MeshAgent``).

Bad input gives one line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import os
import re
import socket
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn

from ..crypto import Ed25519PrivateKey
from ..drivers.uapi_server import MAX_MESH_DOCUMENT, SOCKET_DIRECTORY, socket_path
from ..mesh import MapRejected, sign_network_map
from ..mesh.netmap import MAX_DOCUMENT_SIZE
from ._streams import read_stdin, write_stdout

__all__ = ["main"]

ED25519_KEY_SIZE: Final = 32  # RFC 8032 §5.1.5: private seed and public key are both 32 bytes
_IFNAME_RE: Final = re.compile(r"^[A-Za-z0-9_=+.-]{1,15}$")  # IFNAMSIZ - 1, and never a path
_KEY_INPUT_LIMIT: Final = 4096  # bytes of stdin `mesh pubkey` reads; a key is 44 characters
_REPLY_LIMIT: Final = 65536  # bytes of a mesh_apply answer the client reads before giving up


class _Failure(Exception):
    """A command failed; the message is printed as one line on stderr."""


def _fail(message: str) -> NoReturn:
    raise _Failure(message)


def _decode_key(text: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        _fail("Key is not the correct length or format")
    if len(raw) != ED25519_KEY_SIZE:
        _fail("Key is not the correct length or format")
    return raw


def _load_private_key(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(_decode_key(text))


def _warn_if_world_readable() -> None:
    """Like ``wg genkey``: a private key written to a file others can read deserves a warning."""
    with contextlib.suppress(OSError, ValueError):
        mode = os.fstat(sys.stdout.fileno()).st_mode
        if stat.S_ISREG(mode) and mode & 0o007:
            print(
                "Warning: writing to world accessible file.\nConsider setting the umask to 077 and trying again.",
                file=sys.stderr,
            )


def _cmd_keygen() -> int:
    private = Ed25519PrivateKey.generate()
    _warn_if_world_readable()
    write_stdout(base64.b64encode(private.private_bytes_raw()).decode("ascii") + "\n")
    public = base64.b64encode(private.public_key().public_bytes_raw()).decode("ascii")
    print(f"public key: {public}", file=sys.stderr)
    return 0


def _cmd_pubkey() -> int:
    private = _load_private_key(read_stdin(_KEY_INPUT_LIMIT).decode("ascii", errors="replace"))
    write_stdout(base64.b64encode(private.public_key().public_bytes_raw()).decode("ascii") + "\n")
    return 0


def _read_input(name: str) -> bytes:
    try:
        if name == "-":
            return read_stdin(MAX_DOCUMENT_SIZE + 1)
        with open(name, "rb") as stream:
            return stream.read(MAX_DOCUMENT_SIZE + 1)
    except OSError as exc:
        _fail(f"cannot read {name}: {exc.strerror or exc}")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            _fail(f"the map repeats the key {key[:40]!r} in one object")
        result[key] = value
    return result


def _cmd_sign(key_file: str, body_file: str) -> int:
    try:
        key_text = Path(key_file).read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        _fail(f"cannot read the key {key_file}: {exc.strerror or exc}")
    private = _load_private_key(key_text)
    data = _read_input(body_file)
    if len(data) > MAX_DOCUMENT_SIZE:
        _fail(f"{body_file} is larger than {MAX_DOCUMENT_SIZE} bytes")
    try:
        body = json.loads(data, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as exc:
        _fail(f"{body_file} is not valid JSON: {str(exc).splitlines()[0]}")
    if not isinstance(body, dict):
        _fail(f"{body_file} does not hold a JSON object (the map body)")
    if set(body) == {"map", "signature"}:
        _fail(f"{body_file} is already a signed document; sign its map body")
    try:
        document = sign_network_map(body, private)
    except MapRejected as exc:
        _fail(f"invalid network map: {exc.detail}")
    write_stdout(json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n")
    return 0


def _cmd_apply(ifname: str, document_file: str, socket_override: str | None) -> int:
    if socket_override is not None:
        path = Path(socket_override)
    elif _IFNAME_RE.fullmatch(ifname):
        path = socket_path(ifname, SOCKET_DIRECTORY)
    else:
        _fail(f"invalid interface name {ifname!r}")
    data = _read_input(document_file)
    # JSON allows a line break only between tokens (one inside a string must be escaped), so turning CR and LF into
    # spaces keeps any valid document valid and identical, and puts it on the one line the extension expects.
    line = data.replace(b"\r", b" ").replace(b"\n", b" ").strip()
    if not line:
        _fail(f"{document_file} is empty")
    if len(line) > MAX_MESH_DOCUMENT:
        _fail(f"{document_file} is larger than {MAX_MESH_DOCUMENT} bytes")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(30.0)
            sock.connect(str(path))
            sock.sendall(b"mesh_apply=1\n" + line + b"\n\n")
            reply = b""
            while not reply.endswith(b"\n\n") and len(reply) < _REPLY_LIMIT:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        _fail(f"cannot talk to {ifname} ({path}): {exc.strerror or exc}")
    fields: dict[str, str] = {}
    for raw in reply.decode("ascii", errors="replace").splitlines():
        key, sep, value = raw.partition("=")
        if sep:
            fields[key] = value
    code = fields.get("errno")
    if code is None:
        _fail(f"{ifname} does not accept network maps (is it a wgpy daemon started with --mesh-key?)")
    if code == "0":
        print(
            f"{ifname}: network map serial {fields.get('serial', '?')} applied: {fields.get('added', '?')} peers added,"
            f" {fields.get('removed', '?')} removed, {fields.get('changed', '?')} changed"
        )
        return 0
    reason = fields.get("reason", f"errno {code}")
    detail = fields.get("detail")
    _fail(f"{ifname}: network map rejected ({reason})" + (f": {detail}" if detail else ""))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wgpy mesh", description="Signed network maps for wgpy's mesh mode.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "keygen", help="print a new management Ed25519 private key (base64); its public key goes to stderr"
    )
    commands.add_parser("pubkey", help="read a management private key on stdin, print its public key")
    sign = commands.add_parser("sign", help="sign a map body (JSON) into the document devices accept")
    sign.add_argument("--key", required=True, metavar="FILE", help="the management private key (from keygen)")
    sign.add_argument("body", metavar="MAP.json", help="the map body, or - for stdin")
    apply = commands.add_parser("apply", help="send a signed map to a running daemon over its UAPI socket")
    apply.add_argument("--socket", metavar="PATH", help="the UAPI socket (default /var/run/wireguard/IFNAME.sock)")
    apply.add_argument("interface", metavar="IFNAME")
    apply.add_argument("document", metavar="FILE", help="the signed document, or - for stdin")
    return parser


def main(argv: Sequence[str]) -> int:
    """``wgpy mesh keygen | pubkey | sign --key FILE MAP.json | apply IFNAME FILE``; returns the exit status."""
    args = _parser().parse_args(list(argv))
    try:
        if args.command == "keygen":
            return _cmd_keygen()
        if args.command == "pubkey":
            return _cmd_pubkey()
        if args.command == "sign":
            return _cmd_sign(args.key, args.body)
        return _cmd_apply(args.interface, args.document, args.socket)
    except _Failure as exc:
        print(f"wgpy: {exc}", file=sys.stderr)
        return 1
