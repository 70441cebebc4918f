"""``wgpy up | status | down | logout`` as commands, against the fake server running in a thread.

Bad input must give exactly one line on stderr and a non-zero status, never a traceback or a secret. The full
cycle runs the real command line in subprocesses (``--no-tun``, so no root is needed): enrol and go to the
background, status, down, up again without a setup key, logout.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_server import FakeServer

REPO = Path(__file__).resolve().parents[2]


class ServerThread:
    """The fake server on its own event loop in a daemon thread."""

    def __init__(self) -> None:
        self.server = FakeServer()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coroutine: object, timeout: float = 10.0) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    def start(self) -> None:
        self.thread.start()
        self.call(self.server.start())

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[ServerThread]:
    thread = ServerThread()
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def wgpy(*args: str, state: Path | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "WGPY_KEYRING": "0", "LOG_LEVEL": "info"}
    env.pop("WG_PROCESS_FOREGROUND", None)
    argv = [sys.executable, "-m", "wgpy", *args]
    if state is not None:
        argv += ["--state-dir", str(state)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "--management, --setup-key, --management-key needed"),
        (("--management", "ftp://x", "--setup-key", "k", "--management-key", KEY), "--management"),
        (("--management", "http://h", "--setup-key", "k", "--management-key", "nope"), "--management-key"),
        (("--management", "http://h", "--setup-key", "k", "--management-key", "AAAA"), "--management-key"),
        (("--listen-port", "70000"), "--listen-port"),
        (("--interface", "a/b"), "--interface"),
        (("--name", "no spaces"), "--name"),
        (("--setup-key", " "), "--setup-key"),
        (("--bogus",), "unrecognized arguments"),
    ],
)
def test_up_bad_input_is_one_line(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    assert_one_line_error(wgpy("up", *args, state=tmp_path / "s"), needle)
    assert not (tmp_path / "s" / "state.json").exists()


def test_status_down_logout_without_state(tmp_path: Path) -> None:
    assert_one_line_error(wgpy("status", state=tmp_path), "not enrolled")
    assert_one_line_error(wgpy("down", state=tmp_path), "no agent is running")
    assert_one_line_error(wgpy("logout", state=tmp_path), "not enrolled")
    (tmp_path / "state.json").write_text("{not json")
    assert_one_line_error(wgpy("status", state=tmp_path), "not a wgpy state file")


def test_unreachable_server_and_refusals_are_one_line(tmp_path: Path, server: ServerThread) -> None:
    state = tmp_path / "s"
    result = wgpy("up", "--management", "http://127.0.0.1:1", "--setup-key", "k", "--management-key", KEY, state=state)
    assert_one_line_error(result, "cannot reach the management server")
    assert not (state / "state.json").exists() and not (state / "private.key").exists()
    fake = server.server
    result = wgpy("up", "--management", fake.url, "--setup-key", "k", "--management-key", KEY, "-f", state=state)
    assert_one_line_error(result, "not signed by the pinned management key")
    setup_key = fake.add_setup_key(["developers"])
    result = wgpy(
        "up", "--management", fake.url, "--setup-key", "wrong", "--management-key", fake.management_key_b64, state=state
    )
    assert_one_line_error(result, "401", "bad_setup_key")
    assert setup_key not in result.stderr
    assert not (state / "state.json").exists()


def wait_status(state: Path, predicate: object, timeout: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    report: dict[str, object] = {}
    while time.monotonic() < deadline:
        result = wgpy("status", "--json", state=state)
        if result.returncode == 0:
            report = json.loads(result.stdout)
            if predicate(report):  # type: ignore[operator]
                return report
        time.sleep(0.2)
    raise AssertionError(f"status never matched: {report}")


def test_up_status_down_up_logout(tmp_path: Path, server: ServerThread) -> None:
    fake = server.server
    state = tmp_path / "s"
    key = fake.add_setup_key(["developers"])
    up = ["up", "--management", fake.url, "--management-key", fake.management_key_b64, "--no-tun"]
    result = wgpy(*up, "--setup-key", key, "--name", "laptop", state=state)
    try:
        assert result.returncode == 0, result.stderr
        assert "peer p1 (laptop) is up without a TUN device: address 100.64.0.1/16" in result.stdout
        assert oct((state / "refresh_token").stat().st_mode & 0o777) == "0o600"
        assert oct((state / "private.key").stat().st_mode & 0o777) == "0o600"
        report = wait_status(state, lambda r: r["connected"] and r["map_serial"] is not None)
        assert report["peer_id"] == "p1" and report["address"] == "100.64.0.1/16"
        assert str(report["private_key"]).startswith("file ")
        text = wgpy("status", state=state).stdout
        assert "running (pid" in text and "connected" in text and "network map:  serial" in text
        private = (state / "private.key").read_text().strip()
        assert private not in text and private not in (state / "agent.log").read_text()
        assert private not in (state / "status.json").read_text()

        again = wgpy(*up, state=state)
        assert_one_line_error(again, "already runs")

        down = wgpy("down", state=state)
        assert down.returncode == 0 and "stopped" in down.stdout
        assert "not running" in wgpy("status", state=state).stdout

        # a second up reconnects with the saved state: no setup key
        result = wgpy("up", "--no-tun", state=state)
        assert result.returncode == 0, result.stderr
        assert "peer p1 (laptop) is up" in result.stdout
        wait_status(state, lambda r: r["connected"])
        assert fake.refreshes >= 1

        # pinning: another management key is refused without touching the running agent's state
        other = wgpy("up", "--management-key", KEY, "--no-tun", state=state)
        assert_one_line_error(other)

        logout = wgpy("logout", state=state)
        assert logout.returncode == 0, logout.stderr
        assert "deregistered" in logout.stdout
        assert not state.exists()
        assert "p1" not in fake.peers
    finally:
        wgpy("down", state=state)


def _enrolled_and_down(fake: FakeServer, state: Path) -> None:
    """Enrol an agent (``wgpy up`` with a setup key, no TUN), then stop it: its state stays, ready to resume."""
    key = fake.add_setup_key(["developers"])
    up = ["up", "--management", fake.url, "--management-key", fake.management_key_b64, "--no-tun"]
    assert wgpy(*up, "--setup-key", key, state=state).returncode == 0
    wgpy("down", state=state)


def test_up_after_revocation_is_one_line(tmp_path: Path, server: ServerThread) -> None:
    fake = server.server
    state = tmp_path / "s"
    try:
        _enrolled_and_down(fake, state)
        fake.peers["p1"].revoked = True
        assert (state / "refresh_token").exists()
        result = wgpy("up", "--no-tun", "-f", state=state)
        assert_one_line_error(result, "403", "revoked")
        assert "not running" in wgpy("status", state=state).stdout
        # the 403 carried the signed notice: what a revoked agent forgets is gone
        assert not (state / "refresh_token").exists() and not (state / "map.json").exists()
    finally:
        wgpy("down", state=state)


def test_up_starts_on_its_last_map_when_a_403_carries_no_valid_notice(tmp_path: Path, server: ServerThread) -> None:
    """A 403 "revoked" at start-up that anyone on a plain-HTTP path could forge: not believed, the agent starts on
    its saved map and keeps its state."""
    fake = server.server
    state = tmp_path / "s"
    try:
        _enrolled_and_down(fake, state)
        fake.forged_403 = None
        result = wgpy("up", "--no-tun", state=state)
        assert result.returncode == 0, result.stderr
        shown = wgpy("status", state=state).stdout
        assert "not running" not in shown and "running" in shown, shown
        assert (state / "refresh_token").exists() and (state / "map.json").exists()
    finally:
        fake.forged_403 = False
        wgpy("down", state=state)
