"""Running test scenarios inside network namespaces the tests create themselves (shared by the TUN tests).

A test asks for a fresh namespace (``fresh_netns``), which is deleted afterwards whatever the outcome, and runs a
scenario of its own file in it as a child process (``run_scenario``: ``ip netns exec NS python FILE SCENARIO``).
Without root, /dev/net/tun or ip(8) the test is skipped with the reason, except with ``CI=true``, where a missing
capability fails it instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

__all__ = ["REPO_ROOT", "fresh_netns", "in_ci", "run_in_netns", "run_scenario", "unavailable"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS_DIR = Path(__file__).resolve().parents[1]  # on the child's path, so that a scenario file can import support
SCENARIO_TIMEOUT = 60.0


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    message = f"needs root and /dev/net/tun: {reason}"
    if in_ci():
        pytest.fail(
            f"{message} (CI=true, so a missing capability fails this test instead of skipping it)", pytrace=False
        )
    pytest.skip(message)


def _environment_problem() -> str | None:
    if sys.platform != "linux":
        return f"this is {sys.platform}, not Linux"
    if os.geteuid() != 0:
        return f"running as uid {os.geteuid()}, not root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun does not exist (modprobe tun, or pass the device into the container)"
    if shutil.which("ip") is None:
        return "ip(8) from iproute2 is not installed"
    return None


def fresh_netns(prefix: str) -> Iterator[str]:
    """A new network namespace ``<prefix>-<pid>-<random>`` (for a fixture to ``yield from``), deleted afterwards."""
    problem = _environment_problem()
    if problem is not None:
        unavailable(problem)
    name = f"{prefix}-{os.getpid()}-{os.urandom(3).hex()}"
    created = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        unavailable(f"`ip netns add {name}` failed: {created.stderr.strip()}")
    try:
        yield name
    finally:
        deleted = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
        assert deleted.returncode == 0, f"could not delete netns {name}: {deleted.stderr.strip()}"


def _child_env() -> dict[str, str]:
    paths = [str(REPO_ROOT), str(TESTS_DIR), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def run_in_netns(
    namespace: str, argv: Sequence[str], timeout: float = SCENARIO_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_scenario(namespace: str, script: str, scenario: str, timeout: float = SCENARIO_TIMEOUT) -> None:
    """Run ``python SCRIPT SCENARIO`` inside ``namespace``; fail the test with its output if it exits non-zero."""
    result = run_in_netns(namespace, [sys.executable, script, scenario], timeout)
    if result.returncode != 0:
        pytest.fail(
            f"scenario {scenario!r} failed in netns {namespace} (exit {result.returncode})\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}",
            pytrace=False,
        )
