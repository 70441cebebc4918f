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

__all__ = ["REPO", "RESULTS", "lab_session", "machine", "memory_map", "write_result"]


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


def memory_map(pid: int) -> dict[str, float]:
    """MiB of RSS of process ``pid`` by kind of mapping (``/proc/PID/smaps``): ``libraries``, ``heap`` (glibc's
    brk heap), ``anon 1 MiB`` (pymalloc arenas that stand alone), ``anon larger`` (mmapped blocks, and arenas the
    kernel merged with their neighbours), ``other``."""
    kinds: dict[str, int] = {}
    kind = "other"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and not fields[0].endswith(":"):
                low, high = (int(part, 16) for part in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                if name == "[heap]":
                    kind = "heap"
                elif ".so" in name:
                    kind = "libraries"
                elif name:
                    kind = "other"
                else:
                    kind = "anon 1 MiB" if high - low == 1 << 20 else "anon larger" if high - low > 1 << 20 else "other"
            elif fields and fields[0] == "Rss:":
                kinds[kind] = kinds.get(kind, 0) + int(fields[1])
    return {name: round(kib / 1024, 1) for name, kib in sorted(kinds.items())}


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
