"""Sliding replay window for transport counters (whitepaper §5.4.6, RFC 6479).

Theory of operation: the receiver remembers the highest counter it has accepted and a bitmap of which counters
below it were seen. A counter is accepted once, and only if it is no more than ``REPLAY_WINDOW_SIZE`` (8128, the
kernel's and wireguard-go's value) behind the highest. The check is split in two, as the style guide's rule 5 asks:
``would_accept`` is a pure pre-check done before the costly AEAD open, ``accept`` commits the counter only once the
packet has authenticated, so a forged packet can never move the window.

The bitmap is a ring of 64-bit words as in RFC 6479 and the kernel's ``counter_validate``: when the window moves
forward, whole words are cleared, which is why the effective window is 8128 counters (8192 bits minus one word).
Internally counters are stored plus one, so that "nothing received yet" is zero.
"""

from __future__ import annotations

from typing import Final

from .constants import REJECT_AFTER_MESSAGES, REPLAY_WINDOW_SIZE

__all__ = ["ReplayWindow"]

_WORD_BITS: Final = 64
_RING_BITS: Final = REPLAY_WINDOW_SIZE + _WORD_BITS  # 8192
_RING_WORDS: Final = _RING_BITS // _WORD_BITS  # 128
_EMPTY_RING: Final = (0,) * _RING_WORDS


class ReplayWindow:
    """Replay protection for one receiving keypair."""

    __slots__ = ("_ring", "_top")

    def __init__(self) -> None:
        self._top = 0  # highest accepted counter + 1; 0 when none was accepted
        self._ring = [0] * _RING_WORDS

    @property
    def greatest(self) -> int | None:
        """The highest counter accepted so far, or ``None``."""
        return self._top - 1 if self._top else None

    def would_accept(self, counter: int) -> bool:
        """Whether ``counter`` is fresh. Changes nothing; call it before decrypting."""
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        slot = counter + 1
        if slot + REPLAY_WINDOW_SIZE < self._top:
            return False  # too far behind the window
        if slot > self._top:
            return True  # ahead of everything seen
        return not (self._ring[(slot // _WORD_BITS) % _RING_WORDS] >> (slot % _WORD_BITS)) & 1

    def accept(self, counter: int) -> bool:
        """Record ``counter`` as received (after the AEAD check). Returns ``False`` if it was not fresh."""
        if not self.would_accept(counter):
            return False
        self.commit(counter)
        return True

    def commit(self, counter: int) -> None:
        """Record a counter that ``would_accept`` has just approved (the receive path's second half).

        The device calls ``would_accept`` before the AEAD and ``commit`` after it, with nothing in between that
        touches this window, so the check is not repeated here.
        """
        slot = counter + 1
        word = slot >> 6  # slot // _WORD_BITS
        ring = self._ring
        top = self._top
        if slot > top:
            # Moving forward: clear the words that the window slides over (at most the whole ring); none while it
            # stays in the current word, which is 63 of 64 in-order packets.
            current_word = top >> 6
            if word != current_word:
                if word - current_word >= _RING_WORDS:
                    ring[:] = _EMPTY_RING
                else:
                    for i in range(current_word + 1, word + 1):
                        ring[i % _RING_WORDS] = 0
            self._top = slot
        ring[word % _RING_WORDS] |= 1 << (slot & (_WORD_BITS - 1))

    def ahead(self, first: int, count: int) -> bool:
        """Whether the ``count`` consecutive counters from ``first`` are all ahead of everything accepted (so each
        one alone would be accepted), and fit in one window (1 <= count <= REPLAY_WINDOW_SIZE)."""
        return 1 <= count <= REPLAY_WINDOW_SIZE and first + 1 > self._top and first + count <= REJECT_AFTER_MESSAGES

    def commit_run(self, first: int, count: int) -> None:
        """Record the counters ``first`` .. ``first + count - 1`` that ``ahead`` has just approved: the same window
        as ``commit`` on each in order, with one slide and one mask per ring word."""
        last_slot = first + count  # the slot of the last counter
        self.commit(last_slot - 1)  # slides the window and sets the last bit
        ring = self._ring
        slot = first + 1
        while slot < last_slot:
            word = slot >> 6
            end = min(last_slot, (word + 1) << 6)  # one past the last slot of this run in this word
            low = slot & (_WORD_BITS - 1)
            ring[word % _RING_WORDS] |= ((1 << (end - slot)) - 1) << low
            slot = end
