"""What the live hardening benchmarks share (``flood.py``, ``uapi_large.py``, ``loop_stalls.py``; issue #11).

- ``machine()``: the machine a number was measured on (CPU model, cores, kernel, Python, cryptography and OpenSSL),
  as every result must say;
- ``lab_session(prefix)``: a ``tests/interop/interop_lab.Lab`` in a fresh temporary folder, closed (namespaces
  deleted, only the processes it started stopped) whatever happens, or ``None`` with the reason printed when the
  prerequisites are missing (root, ip(8), wireguard-go, ...);
- ``write_result(out, stem, document)``: ``<out>/<stem>-<UTC date>.json`` with the date and the machine added.

The interop helpers live in ``tests/interop``; importing this module puts that folder on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
if str(REPO / "tests" / "interop") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "interop"))

__all__ = ["REPO", "RESULTS", "lab_session", "machine", "write_result"]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine() -> dict[str, Any]:
    """The machine and the software versions a measurement depends on."""
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": _cpu_model(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": backend.openssl_version_text(),
        "load_average_1min": round(load[0], 2),
    }


@contextlib.contextmanager
def lab_session(prefix: str, name: str) -> Iterator[Any | None]:
    """A fresh ``interop_lab.Lab`` (``None``, with the reason on stderr, when it cannot be built here)."""
    from interop_lab import Lab, missing_prerequisites  # type: ignore[import-not-found,unused-ignore]

    missing = missing_prerequisites()
    if missing:
        print(f"{name}: needs " + ", ".join(missing), file=sys.stderr)
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        lab = Lab(Path(tmp))
        try:
            yield lab
        finally:
            lab.close()


def write_result(out: Path, stem: str, document: dict[str, Any]) -> Path:
    """Write ``document`` (with ``date`` and ``machine`` added first) to ``<out>/<stem>-<date>.json``."""
    date = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{date}.json"
    path.write_text(json.dumps({"date": date, "machine": machine(), **document}, indent=2) + "\n")
    print(f"written to {path}")
    return path
