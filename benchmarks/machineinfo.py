"""What every benchmark report records about the machine it ran on (issue #12: never one ratio across two machines).

``describe()`` returns the CPU model, the core count, the kernel, Python, cryptography and the OpenSSL it is linked
against, NumPy, and the load average at the moment of the call (the machine is often shared). The scripts import it
as a sibling module (``python benchmarks/X.py`` puts ``benchmarks/`` first on ``sys.path``; pytest does the same
for ``bench_*.py`` through ``conftest.py``, which also adds it to pytest-benchmark's ``machine_info``).
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def describe() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }
    try:
        import cryptography
        from cryptography.hazmat.backends.openssl.backend import backend

        info["cryptography"] = cryptography.__version__
        info["openssl"] = backend.openssl_version_text()
    except ImportError:
        info["cryptography"] = info["openssl"] = "not installed"
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        info["numpy"] = "not installed"
    info["load_average"] = load_average()
    return info


def one_line(info: dict[str, Any] | None = None) -> str:
    """The same, as one line for a printed report."""
    info = describe() if info is None else info
    return (
        f"{info['cpu_model']}, {info['nproc']} CPUs, kernel {info['kernel']}, Python {info['python']}, "
        f"cryptography {info['cryptography']} ({info['openssl']}), numpy {info['numpy']}, "
        f"load {' '.join(f'{v:.2f}' for v in info['load_average'])}"
    )


def append_report(path: Path | None, lines: list[str]) -> None:
    """Append a printed report's lines to ``path`` (a results file kept across runs), if one was given."""
    if path is not None:
        with path.open("a") as out:
            out.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    print(one_line())
