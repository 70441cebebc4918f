"""wgpy as a user installs it: a wheel in a fresh venv, run from outside the source tree.

``wgpy trace --golden`` reads its golden transcripts as package data (``wgpy/tools/data/``, ``importlib.resources``);
from the work tree it would find them whatever ``pyproject.toml`` ships, so this builds the wheel
(``pip wheel --no-deps --no-build-isolation``, from a copy of the tree so that no ``build/`` or ``*.egg-info`` is left
in the checkout), installs it with ``pip install --no-deps`` into a throwaway venv made with
``--system-site-packages`` (the dependencies come from the system), and runs the installed ``wgpy`` script with a
clean environment (no ``PYTHONPATH``) from a folder outside the tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wgpy.cli.trace import main as trace_main

ROOT = Path(__file__).resolve().parents[2]
DATA_FILE = "wgpy/tools/data/handshake_transcripts.json"
STEP_LIMIT = 300.0  # seconds for one venv, build or install step on a busy machine


@dataclass(frozen=True, slots=True)
class Installed:
    venv: Path
    wheel: Path
    outside: Path  # a cwd with no wgpy in it

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}  # no PYTHONPATH, no VIRTUAL_ENV, no LANG
        return subprocess.run(
            list(argv),
            cwd=self.outside,
            env=clean,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=STEP_LIMIT,
            check=False,
        )


def _step(argv: list[str], cwd: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=STEP_LIMIT, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"


def _has_bdist_wheel(python: Path) -> bool:
    probe = "import importlib.util as u; raise SystemExit(not (u.find_spec('wheel') or u.find_spec('setuptools.command.bdist_wheel')))"
    return (
        subprocess.run([str(python), "-c", probe], capture_output=True, timeout=STEP_LIMIT, check=False).returncode == 0
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for package in ("wgpy", "tun"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = base / "venv"
    _step([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], base)
    python = venv / "bin" / "python"
    if not _has_bdist_wheel(python):  # setuptools < 70.1 builds wheels with the `wheel` package
        _step([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "wheel"], base)
    dist = base / "dist"
    _step(
        [str(python), "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), "."],
        source,
    )
    (wheel,) = dist.glob("wgpy-*.whl")
    _step([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], base)
    outside = base / "elsewhere"
    outside.mkdir()
    yield Installed(venv=venv, wheel=wheel, outside=outside)


def test_the_wheel_ships_the_package_data(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
    assert {DATA_FILE, "wgpy/py.typed", "tun/py.typed", "wgpy/cli/trace.py", "wgpy/tools/trace.py"} <= names
    with zipfile.ZipFile(installed.wheel) as wheel:
        assert wheel.read(DATA_FILE) == (ROOT / DATA_FILE).read_bytes()


def test_the_venv_imports_the_installed_copy(installed: Installed) -> None:
    done = installed.run(
        str(installed.python), "-c", "import wgpy.tools.trace as t; print(t.__file__); print(t.DEFAULT_GOLDEN)"
    )
    assert done.returncode == 0, done.stderr
    module, golden = done.stdout.splitlines()
    site = installed.venv / "lib"
    assert Path(module).is_relative_to(site) and Path(golden).is_relative_to(site)
    assert not Path(module).is_relative_to(ROOT)


@pytest.mark.parametrize("name", ["psk", "no_psk"])
def test_installed_wgpy_trace_golden_prints_the_transcript(
    installed: Installed, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    done = installed.run(str(installed.venv / "bin" / "wgpy"), "trace", "--golden", name)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert trace_main(["--golden", name, "--color", "never"]) == 0  # the work tree's output, for comparison
    assert done.stdout == capsys.readouterr().out
    assert done.stdout.startswith("WireGuard handshake trace: Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s")
