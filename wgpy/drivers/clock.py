"""The two clocks the core needs, read here so that the core never reads one."""

from __future__ import annotations

import time

__all__ = ["monotonic_now", "wall_ns"]


def monotonic_now() -> float:
    """Seconds on a clock that counts through suspend (CLOCK_BOOTTIME on Linux, as the kernel's timers use)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):  # not Linux
        return time.monotonic()


def wall_ns() -> int:
    """Unix time in nanoseconds, for TAI64N timestamps and ``last_handshake_time``."""
    return time.time_ns()
