"""Protocol constants (from the whitepaper) kept apart from implementation choices.

Spec constants carry the section of the WireGuard whitepaper (``whitepaper §6.1`` is "Timers & Stateless UX",
§5.4 is the handshake messages) they come from. Implementation constants mirror the kernel's or wireguard-go's
choices and say so.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "CONSTRUCTION",
    "COOKIE_REFRESH_TIME",
    "HANDSHAKE_INITIATION_RATE",
    "IDENTIFIER",
    "KEEPALIVE_TIMEOUT",
    "LABEL_COOKIE",
    "LABEL_MAC1",
    "MAX_STAGED_PACKETS",
    "MAX_TIMER_HANDSHAKES",
    "REJECT_AFTER_MESSAGES",
    "REJECT_AFTER_TIME",
    "REKEY_AFTER_MESSAGES",
    "REKEY_AFTER_TIME",
    "REKEY_ATTEMPT_TIME",
    "REKEY_TIMEOUT",
    "REKEY_TIMEOUT_JITTER_MAX",
    "REPLAY_WINDOW_SIZE",
]

# --- Spec constants -------------------------------------------------------------------------------------------
CONSTRUCTION: Final = b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"  # whitepaper §5.4
IDENTIFIER: Final = b"WireGuard v1 zx2c4 Jason@zx2c4.com"  # whitepaper §5.4
LABEL_MAC1: Final = b"mac1----"  # whitepaper §5.4.4
LABEL_COOKIE: Final = b"cookie--"  # whitepaper §5.4.7

REKEY_AFTER_MESSAGES: Final = 2**60  # whitepaper §6.1
REJECT_AFTER_MESSAGES: Final = 2**64 - 2**13 - 1  # whitepaper §6.1 and wireguard-go (the kernel uses 2**64 - 8130)
REKEY_AFTER_TIME: Final = 120.0  # whitepaper §6.1
REJECT_AFTER_TIME: Final = 180.0  # whitepaper §6.1
REKEY_ATTEMPT_TIME: Final = 90.0  # whitepaper §6.1
REKEY_TIMEOUT: Final = 5.0  # whitepaper §6.1
KEEPALIVE_TIMEOUT: Final = 10.0  # whitepaper §6.1
COOKIE_REFRESH_TIME: Final = 120.0  # whitepaper §6.6 (cookie secret changes every two minutes)

# --- Implementation constants ---------------------------------------------------------------------------------
REKEY_TIMEOUT_JITTER_MAX: Final = 0.333  # kernel timers.c: up to 333 ms of jitter on handshake retransmits
MAX_TIMER_HANDSHAKES: Final = int(REKEY_ATTEMPT_TIME / REKEY_TIMEOUT)  # kernel/wireguard-go: 18 attempts
REPLAY_WINDOW_SIZE: Final = 8192 - 64  # kernel COUNTER_WINDOW_SIZE: 8192 bits minus one 64-bit word = 8128
MAX_STAGED_PACKETS: Final = 128  # kernel MAX_STAGED_PACKETS
HANDSHAKE_INITIATION_RATE: Final = 1.0 / 50  # kernel/wireguard-go: at most 50 initiations per second per peer
