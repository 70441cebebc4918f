"""The agent's decisions, pure: when to reconnect, when to refresh, what a token says about its lifetime.

Theory of operation: like the rest of the core, nothing here reads a clock or does I/O; the caller passes
lifetimes and random numbers. ``Backoff`` is the reconnect policy: attempt ``n`` waits between half and all of
``min(cap, base * 2**n)`` seconds (exponential with jitter, bounded), so that a thousand agents whose server
restarts do not all come back in the same second, and none waits longer than ``cap``. ``refresh_delay`` says how
long after receiving an access token to refresh it: after ``REFRESH_FRACTION`` of its lifetime, and never later
than ``REFRESH_MARGIN`` before it expires when the lifetime leaves room for that. ``token_expiry`` reads a JWT's
``iat`` and ``exp`` without verifying it (only to schedule the refresh; the agent trusts tokens for nothing).
"""

from __future__ import annotations

import base64
import binascii
import json
import random
from collections.abc import Callable
from typing import Final

__all__ = ["REFRESH_FRACTION", "REFRESH_MARGIN", "Backoff", "refresh_delay", "token_expiry"]

REFRESH_MARGIN: Final = 60.0  # refresh the access token at least this long before it expires (ours)
REFRESH_FRACTION: Final = 0.8  # ... or after this fraction of its lifetime, whichever is earlier (ours)
MIN_REFRESH_DELAY: Final = 0.5  # seconds: never a hot refresh loop, whatever the server hands out (ours)


def refresh_delay(lifetime: float) -> float:
    """Seconds after receiving a token of ``lifetime`` seconds at which to refresh it."""
    due = lifetime * REFRESH_FRACTION
    if lifetime > 2 * REFRESH_MARGIN:
        due = min(due, lifetime - REFRESH_MARGIN)
    return max(MIN_REFRESH_DELAY, due)


def token_expiry(token: str) -> tuple[float, float] | None:
    """``(iat, exp)`` of a JWT, read without verifying it (only to decide when to refresh), or ``None``."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload["exp"]
        iat = payload.get("iat", exp - 3600)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (exp, iat)):
            return None
        return float(iat), float(exp)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None


class Backoff:
    """Exponential backoff with jitter: attempt ``n`` waits between half and all of ``min(cap, base * 2**n)``."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random) -> None:
        if not 0 < base <= cap:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return float(ceiling / 2 + self._rng() * ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0
