"""wgpy: a userspace WireGuard implementation in Python, built around an I/O-free protocol core."""

from __future__ import annotations

__version__ = "0.1.0"
