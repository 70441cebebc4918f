"""Benchmark collection: pytest only collects ``test_*.py`` by default, so also collect ``bench_*.py`` here.

This makes ``pytest benchmarks --benchmark-only`` find every benchmark module (naming one file on the
command line works either way). The default ``pytest`` run never looks in this folder (``testpaths = ["tests"]``).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """No workers for benchmarks (pyproject's ``-n auto`` is for the test suite): pytest-benchmark turns itself off
    under xdist, and timings taken beside another worker would not be worth much."""
    return 0


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if parent.session.isinitpath(file_path):
            return None  # named on the command line: pytest collects it already
        module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
        return module
    return None


# Rates and ratios that the benchmarks put in ``extra_info`` (pytest-benchmark's table does not show them).
_HEADLINES = (
    "per_second",
    "packets_per_second",
    "MB_per_second",
    "us_per_packet",
    "ratio_to_crypto_only",
    "ratio_to_encrypt_only",
    "ns_per_counter",
    "ns_per_lookup",
)


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    benchmarks = getattr(session, "benchmarks", None) or []
    rows = []
    for bench in benchmarks:
        extra = getattr(bench, "extra_info", None) or {}
        shown = [f"{key}={extra[key]:,}" for key in _HEADLINES if key in extra]
        if shown:
            rows.append(f"{bench.name:<44} " + "  ".join(shown))
    if rows:
        terminalreporter.write_sep("-", "wgpy rates (from extra_info, computed from each benchmark's mean)")
        for row in rows:
            terminalreporter.write_line(row)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, object]) -> None:
    """pytest-benchmark's JSON (``--benchmark-json``/``--benchmark-autosave``) records the machine as the other
    benchmarks do (``machineinfo.py``): CPU model, cores, kernel, Python, cryptography, OpenSSL, NumPy, load."""
    import machineinfo

    machine_info["wgpy_machine"] = machineinfo.describe()
