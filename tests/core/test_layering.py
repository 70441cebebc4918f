"""The core does no I/O (style guide §0 rule 1), and ``tun/`` never imports ``wgpy`` (§9 decision 2).

Every module under ``wgpy/`` is core, and checked, unless it is in ``IO_LAYER``: a short explicit list of the I/O
layer, so that a new module is checked by default and a new I/O module has to be named here (with its reason):

* ``wgpy/drivers/``: sockets, the TUN device, the clock, the worker process, the UAPI socket server;
* ``wgpy/cli/`` and ``wgpy/__main__.py``: every command's argument parsing and output (the only place that prints);
* ``wgpy/tools/``: trace, conformance, probe and demo, built on the core (package data, sockets, clocks);
* ``wgpy/mesh/agent.py``: the mesh daemon glue (state file, map file polling, audit log, the event loop);
* the control plane's shells: ``wgpy/management/{api,audit,notify,push,server,store}.py`` and ``migrations/`` (HTTP, WebSocket, database, key
  files), ``wgpy/management/dashboard/app.py`` (the dashboard's routes) and ``wgpy/agent/{client,enrol,keystore,runner}.py``
  (HTTP client, keyring and state files, the event loop);
* NAT traversal's shells: ``wgpy/nat/io/`` (the tunnel's socket hook and timers, the TURN
  allocation, the management stream's frames, aioice's STUN codec).

A library can do I/O behind an innocent name (importing ``aioice.stun`` runs aioice's ``__init__``, which imports
asyncio and socket), so the pure NAT modules are also imported, each in a fresh interpreter, and must not bring in
any of the forbidden modules (or aioice, dnspython, ifaddr, ssl, selectors) at all.

The control plane's decisions stay core and are checked like the engine: ``management/{policy,tokens,enrolment,
proof}.py`` and ``agent/rules.py``.

Each core module is parsed with ``ast``, never imported, and must not:

* import ``socket``, ``asyncio``, ``select``, ``fcntl``, ``threading``, ``time``, ``subprocess``, ``argparse``,
  ``pathlib``, ``io``, ``builtins`` or ``shutil`` (in any form: ``import x``, ``import x.y``, ``from x import y``,
  ``__import__("x")``, ``importlib.import_module("x")``);
* import the I/O layer (``wgpy.drivers``, ``wgpy.cli``, ``wgpy.__main__``, ``wgpy.tools``, ``wgpy.mesh.agent``),
  absolutely or relatively;
* use ``os`` for anything but ``os.urandom`` (no ``os.environ``, ``os.path``, ``from os import open`` ...);
* use ``print``, ``open`` or ``input`` (called or not: ``p = print`` counts), or ``sys.stdout`` / ``sys.stderr`` /
  ``sys.stdin`` (also as ``from sys import stdout`` and through an alias of ``sys``).

Within the I/O layer only ``wgpy/cli/`` prints: the tools, drivers and the mesh agent hand their lines to it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = frozenset(
    {
        "socket",
        "asyncio",
        "select",
        "fcntl",
        "threading",
        "time",
        "subprocess",
        "argparse",
        "pathlib",
        "io",
        "builtins",
        "shutil",
    }
)
FORBIDDEN_NAMES = frozenset({"print", "open", "input"})
STANDARD_STREAMS = frozenset({"stdout", "stderr", "stdin", "__stdout__", "__stderr__", "__stdin__"})
#: The I/O layer, as paths under ``wgpy/`` (a folder covers everything in it). Everything else is core.
_CONTROL_PLANE_SHELLS = (
    *(f"management/{name}.py" for name in ("api", "audit", "notify", "push", "server", "store")),
    "management/migrations",
    "management/dashboard/app.py",
    *(f"agent/{name}.py" for name in ("client", "enrol", "keystore", "runner")),
    "nat/io",
)
IO_LAYER_PATHS = ("drivers", "cli", "__main__.py", "tools", "mesh/agent.py", *_CONTROL_PLANE_SHELLS)
IO_LAYER = tuple(f"wgpy.{entry.removesuffix('.py').replace('/', '.')}" for entry in IO_LAYER_PATHS)


def is_io_layer(path: Path, package: Path | None = None) -> bool:
    """Whether ``path`` (a module under ``package``, by default ``wgpy/``) is in the I/O layer."""
    relative = path.relative_to(package if package is not None else ROOT / "wgpy")
    for entry in IO_LAYER_PATHS:
        parts = tuple(Path(entry).parts)
        if relative.parts[: len(parts)] == parts:
            return True
    return False


def core_modules() -> list[Path]:
    """Every module of ``wgpy/`` that is not in the I/O layer: new modules are core unless listed."""
    return [p for p in sorted((ROOT / "wgpy").rglob("*.py")) if not is_io_layer(p)]


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


def output_misuse(path: Path) -> list[str]:
    """Uses of ``print`` / ``open`` / ``input`` and of the standard streams."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems: list[str] = []
    sys_aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            sys_aliases |= {alias.asname or "sys" for alias in node.names if alias.name == "sys"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "sys":
            problems += [
                f"line {node.lineno}: from sys import {a.name}" for a in node.names if a.name in STANDARD_STREAMS
            ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES and isinstance(node.ctx, ast.Load):
            problems.append(f"line {node.lineno}: {node.id}")
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in sys_aliases
            and node.attr in STANDARD_STREAMS
        ):
            problems.append(f"line {node.lineno}: sys.{node.attr}")
    return problems


def test_the_walk_finds_the_core() -> None:
    core = {p.relative_to(ROOT / "wgpy").as_posix() for p in core_modules()}
    assert {"device.py", "noise.py", "timers.py", "cookie.py", "testing.py", "__init__.py"} <= core
    assert {"crypto/__init__.py", "mesh/__init__.py", "mesh/controller.py", "management/proof.py"} <= core
    assert {"management/policy.py", "management/tokens.py", "management/enrolment.py", "agent/rules.py"} <= core
    assert not any(name.split("/")[0] in ("drivers", "cli", "tools") for name in core)
    assert "__main__.py" not in core and "mesh/agent.py" not in core


def test_the_io_layer_list_is_short_and_current() -> None:
    """Every entry names something that exists (a stale entry would exempt whatever later takes its name)."""
    # One entry per I/O shell: the engine has five, the control plane one per shell module (server, agent, NAT).
    # A list that grows faster than the shells do means the core is leaking I/O.
    assert len(IO_LAYER_PATHS) <= 20
    for entry in IO_LAYER_PATHS:
        assert (ROOT / "wgpy" / entry).exists(), entry
    assert {f"wgpy.{entry.removesuffix('.py').replace('/', '.')}" for entry in IO_LAYER_PATHS} == set(IO_LAYER)


@pytest.mark.parametrize(
    ("relative", "io"),
    [
        ("drivers/udp.py", True),
        ("cli/__init__.py", True),
        ("__main__.py", True),
        ("tools/trace.py", True),
        ("tools/data/x.py", True),
        ("mesh/agent.py", True),
        ("mesh/agents.py", False),
        ("mesh/controller.py", False),
        ("toolsy.py", False),
        ("management/proof.py", False),
        ("brand_new.py", False),
        ("newpkg/thing.py", False),
    ],
)
def test_new_modules_are_core_by_default(tmp_path: Path, relative: str, io: bool) -> None:
    assert is_io_layer(tmp_path / relative, tmp_path) == io


def core_violations(path: Path, root: Path = ROOT) -> list[str]:
    bad = []
    for line, module in imported_modules(path, root):
        top = module.split(".")[0]
        if top in FORBIDDEN or module == "<dynamic>":
            bad.append(f"line {line}: imports {module}")
        if any(module == io or module.startswith(io + ".") for io in IO_LAYER):
            bad.append(f"line {line}: imports the I/O layer ({module})")
    return bad + os_misuse(path) + output_misuse(path)


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_core_module_does_no_io(path: Path) -> None:
    bad = core_violations(path)
    assert bad == [], f"{_module_name(path)} breaks the no-I/O rule: {bad}"


def nat_core_modules() -> list[Path]:
    return [p for p in core_modules() if p.relative_to(ROOT / "wgpy").parts[0] == "nat"]


#: What importing a pure NAT module must not bring in, even through a third-party library. ``threading`` is left
#: out: the standard library's ``logging`` imports it, and every core module logs.
TRANSITIVE_FORBIDDEN = (FORBIDDEN - {"threading"}) | {"selectors", "ssl", "aioice", "dns", "ifaddr"}


def test_the_nat_walk_finds_the_pure_modules() -> None:
    names = {p.relative_to(ROOT / "wgpy").as_posix() for p in nat_core_modules()}
    assert {"nat/stun.py", "nat/candidates.py", "nat/paths.py", "nat/credentials.py", "nat/signal.py"} <= names
    assert not any(name.startswith("nat/io/") for name in names)


@pytest.mark.parametrize("path", nat_core_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_nat_module_pulls_in_no_io_even_transitively(path: Path) -> None:
    module = _module_name(path)
    # What the interpreter had loaded before (its start-up imports io, time and more) is not the module's doing.
    probe = (
        "import sys, importlib\n"
        "before = set(sys.modules)\n"
        f"importlib.import_module({module!r})\n"
        "new = set(sys.modules) - before\n"
        f"print(' '.join(sorted(m for m in new if m.split('.')[0] in {sorted(TRANSITIVE_FORBIDDEN)!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], f"importing {module} brings in {result.stdout.split()}"


def test_the_transitive_check_sees_a_library_that_imports_asyncio() -> None:
    """The check above can fail: aioice's STUN codec, imported alone, brings asyncio and socket (aioice 0.13)."""
    probe = (
        "import sys\nbefore = set(sys.modules)\nimport aioice.stun\n"
        "print('asyncio' in set(sys.modules) - before, 'socket' in set(sys.modules) - before)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr  # aioice is a dependency (pyproject.toml)
    assert result.stdout.split() == ["True", "True"]


def prints(path: Path) -> list[str]:
    """Each use of ``print`` in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return [f"line {n.lineno}: print" for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == "print"]


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((ROOT / "wgpy").rglob("*.py")) if "cli" not in p.relative_to(ROOT / "wgpy").parts],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_only_the_cli_prints(path: Path) -> None:
    """Tools, drivers and the mesh agent return or report what they have to say; ``wgpy/cli/`` prints it."""
    assert prints(path) == [], f"{_module_name(path)} prints: {prints(path)}"


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
        ("import argparse\n", True),
        ("from pathlib import Path\n", True),
        ("import io\n", True),
        ("from io import StringIO\n", True),
        ("from . import tools\n", True),
        ("from .tools.trace import main\n", True),
        ("from .mesh import agent\n", True),
        ("import wgpy.mesh.agent\n", True),
        ("print('hello')\n", True),
        ("def f(x):\n    print(x)\n", True),
        ("with open('/etc/passwd') as f:\n    pass\n", True),
        ("log = print\n", True),
        ("x = input()\n", True),
        ("import sys\nsys.stdout.write('x')\n", True),
        ("import sys as s\ns.stderr.flush()\n", True),
        ("from sys import stdin\n", True),
        ("import builtins\nbuiltins.print('x')\n", True),
        ("import sys\nv = sys.version_info\n", False),
        ("def f(keypair, counter, data):\n    return keypair.open(counter, data)\n", False),
        ("class K:\n    def open(self):\n        return 1\n", False),
        ("from .mesh import controller\n", False),
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
