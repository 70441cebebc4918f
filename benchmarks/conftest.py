"""Benchmark collection: pytest only collects ``test_*.py`` by default, so also collect ``bench_*.py`` here.

This makes ``pytest benchmarks --benchmark-only`` find every benchmark module (naming one file on the
command line works either way). The default ``pytest`` run never looks in this folder (``testpaths = ["tests"]``).
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        if parent.session.isinitpath(file_path):
            return None  # named on the command line: pytest collects it already
        module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
        return module
    return None
