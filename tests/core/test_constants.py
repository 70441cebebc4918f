"""wgpy.constants: the protocol constants against their published values, typed here from the sources.

Sources: the WireGuard whitepaper §5.4 (construction, identifier, labels) and §6.1 (the timer and message-count
table); the kernel's drivers/net/wireguard/messages.h (COUNTER_WINDOW_SIZE, MAX_STAGED_PACKETS) and timers.c (the
retransmission jitter); wireguard-go device/constants.go (RejectAfterMessages).
"""

from __future__ import annotations

from wgpy import constants


def test_noise_construction_and_labels() -> None:
    # whitepaper §5.4: the protocol name hashed into the first chaining key, the prologue, and the MAC labels
    assert constants.CONSTRUCTION == b"Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    assert constants.IDENTIFIER == b"WireGuard v1 zx2c4 Jason@zx2c4.com"
    assert constants.LABEL_MAC1 == b"mac1----"
    assert constants.LABEL_COOKIE == b"cookie--"
    assert len(constants.LABEL_MAC1) == len(constants.LABEL_COOKIE) == 8


def test_whitepaper_timer_table() -> None:
    # whitepaper §6.1, the table of constants (seconds)
    assert constants.REKEY_AFTER_TIME == 120
    assert constants.REJECT_AFTER_TIME == 180
    assert constants.REKEY_ATTEMPT_TIME == 90
    assert constants.REKEY_TIMEOUT == 5
    assert constants.KEEPALIVE_TIMEOUT == 10
    # whitepaper §6.6: the cookie secret changes every two minutes
    assert constants.COOKIE_REFRESH_TIME == 120


def test_message_limits() -> None:
    # whitepaper §6.1: Rekey-After-Messages is 2^60; Reject-After-Messages is 2^64 - 2^13 - 1 (wireguard-go's
    # RejectAfterMessages; the kernel's 2^64 - 8130 differs by one and is the same bound for all practical use)
    assert constants.REKEY_AFTER_MESSAGES == 1 << 60
    assert constants.REJECT_AFTER_MESSAGES == (1 << 64) - (1 << 13) - 1
    assert constants.REKEY_AFTER_MESSAGES < constants.REJECT_AFTER_MESSAGES


def test_kernel_implementation_constants() -> None:
    # kernel messages.h: COUNTER_BITS_TOTAL 8192 minus one word of 64 bits (RFC 6479 window)
    assert constants.REPLAY_WINDOW_SIZE == 8128
    # kernel messages.h MAX_STAGED_PACKETS
    assert constants.MAX_STAGED_PACKETS == 128
    # kernel timers.c: REKEY_ATTEMPT_TIME / REKEY_TIMEOUT handshake attempts; jitter up to HZ / 3 (333 ms)
    assert constants.MAX_TIMER_HANDSHAKES == 18
    assert constants.REKEY_TIMEOUT_JITTER_MAX == 0.333
    # kernel/wireguard-go: at most one consumed initiation per peer every 1/50 s
    assert constants.HANDSHAKE_INITIATION_RATE == 0.02
