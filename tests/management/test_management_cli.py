"""``wgpy management init`` + ``serve`` as a subprocess on 127.0.0.1 with a free port, and ``wgpy admin`` against
it: one-line errors with a non-zero status for bad input, keys in 0600 files, the admin token printed once."""

from __future__ import annotations

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

import pytest

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


@pytest.fixture
def served(tmp_path: pathlib.Path) -> Iterator[tuple[str, str, pathlib.Path]]:
    state = tmp_path / "state"
    init = _wgpy("management", "init", "--state-dir", str(state))
    assert init.returncode == 0, init.stderr
    token = init.stdout.strip()
    assert token.startswith("wgat_") and token not in init.stderr
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
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        yield f"http://127.0.0.1:{port}", token, token_file
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert process.stderr is not None
        log = process.stderr.read()
        assert "Traceback" not in log
        assert token not in log


def test_admin_cli_against_a_served_management_server(
    served: tuple[str, str, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    url, token, token_file = served
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
    assert no_token.returncode == 1 and "no admin token" in no_token.stderr and len(no_token.stderr.splitlines()) == 1
    unreachable = _wgpy("admin", "--url", f"http://127.0.0.1:{_free_port()}", "peer", "list", env=env)
    assert unreachable.returncode == 1 and unreachable.stderr.startswith("wgpy admin: cannot reach")


def test_serve_errors_are_one_line(tmp_path: pathlib.Path) -> None:
    missing = _wgpy("management", "serve", "--state-dir", str(tmp_path / "none"), "--listen", "127.0.0.1:1")
    assert missing.returncode == 1 and "missing (run wgpy management init)" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    bad_db = _wgpy("management", "init", "--state-dir", str(tmp_path / "s"), "--db", "mysql://x/y")
    assert bad_db.returncode == 1 and bad_db.stderr.strip().startswith("wgpy management: the database must be")
    assert not (tmp_path / "s" / "signing.key").exists()
