"""Shared fixtures of the device tests; the helpers themselves live in ``tests/support/helpers.py``.

``tests/`` is not a package: this directory is put on ``sys.path`` (pytest's default import mode does so too, this
makes it hold under ``--import-mode=importlib`` as well) so that test modules in every folder can
``import support.helpers``.

The suite runs on one worker per CPU (pytest-xdist, ``-n auto --dist loadgroup`` in pyproject.toml). The live tests
(``LIVE``: network namespaces, real WireGuard peers, coturn, a browser, real timers) mostly wait, and several of them
bound how long something may take: they all go to one worker, one after another, and they are collected first so
that this worker starts with them while the others share the rest. Measurements that live tests report through
``measure`` travel with their test's report (``user_properties``), so the summary at the end lists them whichever
worker ran the test.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from support.helpers import MEASUREMENT, Pair, make_pair  # noqa: E402

LIVE = ("interop/", "nat/test_netns_nat.py", "agent/test_mesh_netns.py", "dashboard/test_browser.py")
_measurements: list[str] = []  # in the process that reports (the controller under xdist)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """``-n auto``'s worker count: none under ``-s`` (what a test prints should reach the terminal, and workers do not
    pass it on), else one per CPU (xdist's own count)."""
    return 0 if config.getoption("capture") == "no" else None


def _is_live(item: pytest.Item) -> bool:
    path = item.path.resolve().relative_to(_HERE).as_posix()
    return any(path == part or (part.endswith("/") and path.startswith(part)) for part in LIVE)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:  # a module's tests stay together on one worker: its module-scoped fixtures are built once
        item.add_marker(pytest.mark.xdist_group("live" if _is_live(item) else item.path.stem))
    items.sort(key=lambda item: not _is_live(item))  # stable: the live tests first, each part in its own order


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        name = report.location[2]  # the test's name, without the group suffix xdist adds to its node id
        _measurements.extend(f"{name}: {value}" for key, value in report.user_properties if key == MEASUREMENT)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _measurements:
        terminalreporter.section("interop measurements")
        for line in _measurements:
            terminalreporter.write_line(line)


@pytest.fixture
def pair() -> Pair:
    """Two devices on a lossless network, configured as each other's peer, with no session yet."""
    return make_pair()


@pytest.fixture
def connected() -> Pair:
    """Two devices with a confirmed session (A initiated), nothing delivered yet."""
    p = make_pair()
    p.handshake()
    return p


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory for unix sockets: a socket path must fit in 108 bytes, which tmp_path does not
    promise."""
    path = Path(tempfile.mkdtemp(prefix="wgpys"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
