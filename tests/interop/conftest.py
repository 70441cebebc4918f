"""Interop fixtures: wgpy against Debian's wireguard-go (and against itself) inside network namespaces.

The ``lab`` fixture gives each test a fresh ``interop_lab.Lab`` (namespaces, veth, daemons; see that module) and
tears it down afterwards whatever the outcome: processes stopped by PID, namespaces deleted, stale sockets removed.
When a test fails, the daemons' logs are attached to its report. ``measure`` records throughput numbers, printed in
an "interop measurements" section at the end of the run.

Prerequisites: root, /dev/net/tun, ``ip``/``ss``, ``wg``, ``wg-quick``, ``wireguard-go``, ``iperf3``, ``ping`` and the
``wgpy`` command on PATH (``pip install -e .``). Without them every test here is skipped with the list of what is
missing, except when ``CI=true``: there a skip would hide a broken CI image, so the tests fail instead.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path

import pytest
from interop_lab import Lab, in_ci, missing_prerequisites
from support.helpers import MEASUREMENT

_LABS = pytest.StashKey[Lab]()


@pytest.fixture(autouse=True)
def _interop_prerequisites() -> None:
    missing = missing_prerequisites()
    if not missing:
        return
    message = (
        "interop tests need " + ", ".join(missing) + " (apt-get install wireguard-go wireguard-tools iperf3 "
        "iputils-ping iproute2; pip install -e .; run as root)"
    )
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing prerequisite is a failure, not a skip", pytrace=False)
    pytest.skip(message)


# -- fixtures and hooks ----------------------------------------------------------------------------------------


@pytest.fixture
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> Generator[Lab, None, None]:
    """A fresh lab for one test, torn down afterwards whatever happens."""
    the_lab = Lab(tmp_path)
    request.node.stash[_LABS] = the_lab
    try:
        yield the_lab
    finally:
        the_lab.close()


@pytest.fixture
def measure(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Record a line of measurements; all of them are printed in the terminal summary."""

    def record(line: str) -> None:
        print(line)
        request.node.user_properties.append((MEASUREMENT, line))

    return record


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    the_lab = item.stash.get(_LABS, None)
    if the_lab is not None and report.failed:
        for title, text in the_lab.logs():
            report.sections.append((f"log: {title}", text[-20000:] or "(empty)"))
    return report
