"""The core does no I/O (style guide §0 rule 1), and ``tun/`` never imports ``wgpy`` (§9 decision 2).

Every module of the core (``wgpy/*.py``, ``wgpy/crypto/*.py`` and any other subpackage; ``wgpy/drivers/``,
``wgpy/cli.py`` and ``wgpy/__main__.py`` are the I/O layer and are exempt) is parsed with ``ast``, never imported, and must not:

* import ``socket``, ``asyncio``, ``select``, ``fcntl``, ``threading``, ``time`` or ``subprocess`` (in any form:
  ``import x``, ``import x.y``, ``from x import y``, ``__import__("x")``, ``importlib.import_module("x")``);
* import the I/O layer (``wgpy.drivers``, ``wgpy.cli``, ``wgpy.__main__``), absolutely or relatively;
* use ``os`` for anything but ``os.urandom`` (no ``os.environ``, ``os.path``, ``from os import open`` ...).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = frozenset({"socket", "asyncio", "select", "fcntl", "threading", "time", "subprocess"})
IO_LAYER = ("wgpy.drivers", "wgpy.cli", "wgpy.__main__")
CORE_EXEMPT = {"cli.py", "__main__.py"}


def core_modules() -> list[Path]:
    """``wgpy/*.py``, ``wgpy/crypto/*.py`` and any other subpackage of the core: all of ``wgpy/`` but the I/O layer."""
    package = ROOT / "wgpy"
    return [
        p
        for p in sorted(package.rglob("*.py"))
        if not (p.parent == package and p.name in CORE_EXEMPT) and "drivers" not in p.relative_to(package).parts
    ]


def tun_modules() -> list[Path]:
    return sorted((ROOT / "tun").rglob("*.py"))


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Every module name ``path`` imports, as absolute dotted names, with line numbers.

    ``from x import y`` yields both ``x`` and ``x.y`` (``y`` may be a submodule); relative imports are resolved
    against the module's package; string arguments of ``__import__`` and ``importlib.import_module`` count too.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = list(path.relative_to(root).with_suffix("").parts)[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module") and node.args:
                first = node.args[0]
                literal = first.value if isinstance(first, ast.Constant) else None
                found.append((node.lineno, literal if isinstance(literal, str) else "<dynamic>"))
    return found


def os_misuse(path: Path) -> list[str]:
    """Uses of ``os`` other than ``os.urandom``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems: list[str] = []
    os_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "os":
                    os_aliases.add(alias.asname or "os")
                elif alias.name.startswith("os."):
                    problems.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            if node.module == "os":
                problems += [f"line {node.lineno}: from os import {a.name}" for a in node.names if a.name != "urandom"]
            elif node.module.startswith("os."):
                problems.append(f"line {node.lineno}: from {node.module} import ...")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in os_aliases:
            if node.attr != "urandom":
                problems.append(f"line {node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in os_aliases:
            parent_ok = any(
                isinstance(p, ast.Attribute) and p.value is node and p.attr == "urandom" for p in ast.walk(tree)
            )
            if not parent_ok and not isinstance(node.ctx, ast.Store):
                problems.append(f"line {node.lineno}: bare use of os")
    return problems


def test_the_walk_finds_the_core() -> None:
    names = {p.name for p in core_modules()}
    assert {"device.py", "noise.py", "timers.py", "cookie.py", "testing.py", "__init__.py"} <= names
    assert any(p.parent.name == "crypto" for p in core_modules())
    assert not any(p.parent.name == "drivers" or p.name in CORE_EXEMPT for p in core_modules())


def core_violations(path: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for line, module in imported_modules(path, root):
        top = module.split(".")[0]
        if top in FORBIDDEN or module == "<dynamic>":
            bad.append(f"line {line}: imports {module}")
        if any(module == io or module.startswith(io + ".") for io in IO_LAYER):
            bad.append(f"line {line}: imports the I/O layer ({module})")
    return bad + os_misuse(path)


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_does_no_io(path: Path) -> None:
    bad = core_violations(path)
    assert bad == [], f"{_module_name(path)} breaks the no-I/O rule: {bad}"


def tun_violations(path: Path, root: Path = ROOT) -> list[str]:
    return [
        f"line {line}: imports {module}"
        for line, module in imported_modules(path, root)
        if module == "wgpy" or module.startswith("wgpy.")
    ]


@pytest.mark.parametrize("path", tun_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_tun_never_imports_wgpy(path: Path) -> None:
    bad = tun_violations(path)
    assert bad == [], f"{_module_name(path)} must not import wgpy: {bad}"


@pytest.mark.parametrize(
    ("source", "should_fail"),
    [
        ("import socket\n", True),
        ("import time as t\n", True),
        ("from asyncio import sleep\n", True),
        ("import threading.local\n", True),
        ("import subprocess\n", True),
        ("x = __import__('select')\n", True),
        ("import importlib\nm = importlib.import_module('fcntl')\n", True),
        ("from .drivers import asyncio_udp\n", True),
        ("from . import cli\n", True),
        ("from wgpy.drivers.asyncio_udp import run\n", True),
        ("import os\nos.environ.get('X')\n", True),
        ("import os\nx = os\n", True),
        ("from os import path\n", True),
        ("import os.path\n", True),
        ("from os import urandom\n", False),
        ("import os\nf = os.urandom\n", False),
        ("import os\ndef g(rng=os.urandom): return rng(4)\n", False),
        ("import random\nimport struct\nimport logging\nfrom . import crypto\n", False),
        ("from .timers import PeerTimers\n", False),
    ],
)
def test_the_walker_catches_each_form(tmp_path: Path, source: str, should_fail: bool) -> None:
    module = tmp_path / "wgpy" / "probe.py"
    module.parent.mkdir()
    module.write_text(source, encoding="utf-8")
    assert bool(core_violations(module, tmp_path)) == should_fail


@pytest.mark.parametrize(
    ("source", "should_fail"),
    [
        ("import wgpy\n", True),
        ("from wgpy.device import Device\n", True),
        ("import wgpy.keys as k\n", True),
        ("from . import memory\nimport fcntl\n", False),
    ],
)
def test_the_tun_walker(tmp_path: Path, source: str, should_fail: bool) -> None:
    module = tmp_path / "tun" / "probe.py"
    module.parent.mkdir()
    module.write_text(source, encoding="utf-8")
    assert bool(tun_violations(module, tmp_path)) == should_fail
