"""``wgpy management init`` + ``serve`` as a subprocess on 127.0.0.1 with a free port, and ``wgpy admin`` against
it: one-line errors with a non-zero status for bad input, keys in 0600 files, the admin token printed once."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import selectors
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[2]
POLICY = "acls:\n  - name: dev-to-prod\n    src: [developers]\n    dst: [production]\n    proto: tcp\n    ports: ['22']\n    action: accept\n"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WGPY_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _wgpy(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wgpy", *args],
        capture_output=True,
        text=True,
        env=env or _env(),
        timeout=timeout,
        check=False,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclasses.dataclass
class Served:
    url: str
    token: str
    token_file: pathlib.Path
    log: str = ""  # the server's stderr, once it has stopped


@contextlib.contextmanager
def serving(tmp_path: pathlib.Path) -> Iterator[Served]:
    """``wgpy management init`` and ``serve`` on a free port; on exit the server is stopped (by its PID) and its
    log checked: no traceback, no admin token."""
    state = tmp_path / "state"
    init = _wgpy("management", "init", "--state-dir", str(state))
    assert init.returncode == 0, init.stderr
    token = init.stdout.strip()
    assert token.startswith("wgat_") and token not in init.stderr
    # The management key that devices pin is printed, and it is the public half of the signing key on disk.
    from wgpy.management.server import load_keys

    assert f"--management-key): {load_keys(state).info()['signing_key']}" in init.stderr
    for name in ("signing.key", "proof.key"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600
    again = _wgpy("management", "init", "--state-dir", str(state))
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr and len(again.stderr.splitlines()) == 1
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "wgpy",
            "management",
            "serve",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    token_file = tmp_path / "token"
    served = Served(f"http://127.0.0.1:{port}", token, token_file)
    try:
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline and not line:
            if selector.select(timeout=0.5):
                line = process.stdout.readline()
            if process.poll() is not None:
                break
        assert line.startswith("listening on http://127.0.0.1:"), (line, process.poll())
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        served.log = process.stderr.read()
        assert "Traceback" not in served.log
        assert token not in served.log


def _raw_request(url: str, request: bytes) -> bytes:
    """Send ``request`` as it is on a new connection; what the server answers before it closes (bounded)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def _send_malformed(server: Served) -> None:
    """Requests aiohttp's parser refuses before any handler runs, the admin token in the refused line: it used to
    log each with a traceback quoting that line; now one line each, naming the client and the kind of fault
    (``_assert_malformed_logged``)."""
    secret = server.token.encode()
    malformed = [
        b"GET /api/v1/peers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + secret + b"\x00\r\n\r\n",
        b"GET /api/v1/peers?token=" + secret + b"\x80 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    for request in malformed:
        assert _raw_request(server.url, request).startswith(b"HTTP/1.0 400 ")
    info = b"GET /api/v1/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert _raw_request(server.url, info).startswith(b"HTTP/1.1 200 ")


def _assert_malformed_logged(log: str) -> None:
    refused = [line for line in log.splitlines() if "malformed HTTP request" in line]
    assert len(refused) == 2, log
    assert refused[0].endswith("WARNING refused a malformed HTTP request from 127.0.0.1: Invalid header value char")
    assert refused[1].endswith("WARNING refused a malformed HTTP request from 127.0.0.1: Invalid char in url query")
    assert "aiohttp" not in log.replace("aiohttp.server WARNING refused a malformed", ""), log  # nothing else of it


def test_admin_cli_against_a_served_management_server(tmp_path: pathlib.Path) -> None:
    with serving(tmp_path) as server:
        url, token, token_file = server.url, server.token, server.token_file
        env = _env(WGPY_ADMIN_TOKEN=token, WGPY_MANAGEMENT_URL=url)
        created = _wgpy("admin", "setup-key", "create", "--name", "laptop", "--group", "developers", env=env)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert key.startswith("wgsk_")
        listed = _wgpy("admin", "--url", url, "--token-file", str(token_file), "setup-key", "list")
        assert listed.returncode == 0, listed.stderr
        keys = json.loads(listed.stdout)
        assert keys[0]["auto_groups"] == ["developers"] and key not in listed.stdout
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        assert json.loads(_wgpy("admin", "policy", "set", str(policy), env=env).stdout) == {"rules": 1}
        assert _wgpy("admin", "policy", "show", env=env).stdout == POLICY
        bad = tmp_path / "bad.yaml"
        bad.write_text(POLICY.replace("proto: tcp", "proto: icmp"))
        refused = _wgpy("admin", "policy", "set", str(bad), env=env)
        assert refused.returncode == 1
        assert (
            refused.stderr.strip()
            == "wgpy admin: invalid_policy: line 6: acls[0].ports: ports apply only to tcp and udp rules (proto is icmp)"
        )
        assert _wgpy("admin", "policy", "show", env=env).stdout == POLICY
        assert json.loads(_wgpy("admin", "peer", "list", env=env).stdout) == []
        missing = _wgpy("admin", "peer", "approve", "nope", env=env)
        assert missing.returncode == 1 and missing.stderr.strip() == "wgpy admin: not_found: no such peer"
        revoke = _wgpy("admin", "setup-key", "revoke", keys[0]["id"], env=env)
        assert revoke.returncode == 0, revoke.stderr
        tail = _wgpy("admin", "audit", "tail", "--kind", "setup_key_revoked", env=env)
        events = [json.loads(line) for line in tail.stdout.splitlines()]
        assert [event["kind"] for event in events] == ["setup_key_revoked"]
        for args, message in [
            (("peer", "list"), "wgpy admin: invalid_token: not a valid admin token"),
        ]:
            result = _wgpy("admin", *args, env=_env(WGPY_ADMIN_TOKEN="wgat_nope", WGPY_MANAGEMENT_URL=url))  # noqa: S106
            assert result.returncode == 1 and result.stderr.strip() == message
        no_token = _wgpy("admin", "peer", "list", env=_env(WGPY_MANAGEMENT_URL=url))
        assert (
            no_token.returncode == 1 and "no admin token" in no_token.stderr and len(no_token.stderr.splitlines()) == 1
        )
        unreachable = _wgpy("admin", "--url", f"http://127.0.0.1:{_free_port()}", "peer", "list", env=env)
        assert unreachable.returncode == 1 and unreachable.stderr.startswith("wgpy admin: cannot reach")
        _send_malformed(server)
    _assert_malformed_logged(server.log)


def test_serve_errors_are_one_line(tmp_path: pathlib.Path) -> None:
    missing = _wgpy("management", "serve", "--state-dir", str(tmp_path / "none"), "--listen", "127.0.0.1:1")
    assert missing.returncode == 1 and "missing (run wgpy management init)" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad_db = _wgpy("management", "init", "--state-dir", str(tmp_path / "s"), "--db", "mysql://x/y")
    assert bad_db.returncode == 1 and bad_db.stderr.strip().startswith("wgpy management: the database must be")
    assert not (tmp_path / "s" / "signing.key").exists()
    # a key file that others may read is refused before anything is served (the proof key and the signing key alike)
    state = tmp_path / "open"
    assert _wgpy("management", "init", "--state-dir", str(state)).returncode == 0
    for name in ("signing.key", "proof.key"):
        (state / name).chmod(0o640)
        refused = _wgpy("management", "serve", "--state-dir", str(state), "--listen", "127.0.0.1:1")
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert name in lines[0] and "readable by others" in lines[0] and "chmod 600" in lines[0]
        (state / name).chmod(0o600)
