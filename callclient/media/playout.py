"""An adaptive playout buffer for one remote user's decoded audio (20 ms int16 blocks).

The receive path hands every audio packet to the decoder as soon as it arrives
(:mod:`callclient.media.receive`), so network and scheduling jitter reach this buffer, which
knows when the speaker needs each block. It keeps as little audio queued as the stream's
recent jitter allows:

* Start: playback starts once ``prefetch`` blocks are queued (2, i.e. 40 ms of slack).
* Underrun (the speaker wants a block, none is queued): the last block is repeated, fading
  (``conceal_gains``), instead of a hard silence. If the next thing to arrive is the missing
  block itself, it was *late*: it is kept, which delays the stream by one block, and the
  wanted slack (``target``) grows by one (up to ``max_target``). If the receiver instead
  reports it *missing* (lost in the network: :meth:`push_missing`), it is not waited for.
  After ``len(conceal_gains)`` blocks without audio the stream counts as stopped and the
  buffer starts again with a prefetch when audio returns.
* Known losses inside the queue (:meth:`push_missing` before later blocks) are concealed in
  place at their turn, so loss does not shift the stream.
* Shrink: each block's *earliness* is how many blocks (lost ones included) are queued ahead
  of it when it arrives. Every ``window`` blocks, if none arrived with fewer than
  ``target + 1`` ahead, the surplus is latency nobody needed: for each surplus block, at
  one pull after another, two queued blocks are cross-faded into one (20 ms less delay
  each, no hard cut). Measured on arrival, known losses
  keep their slot, so loss does not hide a surplus. ``target`` itself decays by one after
  ``relax_pulls`` pulls without a late block.
* Cap: the queue never holds more than ``max_blocks``; beyond, the oldest block is dropped.

Not thread-safe: :class:`~callclient.media.mixer.Mixer` serializes access with its lock.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from callclient.media.base import BLOCK_SAMPLES, Block

__all__ = ["PlayoutBuffer"]


_DEFAULT_CONCEAL = (0.9, 0.7, 0.5, 0.3, 0.1)
_FADE_IN = np.linspace(0.0, 1.0, BLOCK_SAMPLES, dtype=np.float32)
_FADE_OUT = _FADE_IN[::-1].copy()


def _crossfade(first: Block, second: Block) -> Block:
    """One block that fades from ``first`` into ``second`` (replaces the two of them)."""
    mixed = first.astype(np.float32) * _FADE_OUT + second.astype(np.float32) * _FADE_IN
    result: Block = np.clip(np.rint(mixed), -32768, 32767).astype(np.int16)
    return result


class PlayoutBuffer:
    """The adaptive jitter/playout buffer of one stream (see the module docstring)."""

    def __init__(
        self,
        max_blocks: int = 8,
        *,
        prefetch: int = 2,
        target: int = 0,
        max_target: int = 5,
        window: int = 50,
        relax_pulls: int = 150,
        conceal_gains: tuple[float, ...] = _DEFAULT_CONCEAL,
    ) -> None:
        if max_blocks < 2:
            raise ValueError(f"max_blocks must be >= 2, got {max_blocks}")
        if not 1 <= prefetch <= max_blocks:
            raise ValueError(f"prefetch must be within 1..max_blocks, got {prefetch}")
        if not 0 <= target <= max_target < max_blocks:
            raise ValueError("need 0 <= target <= max_target < max_blocks")
        self.max_blocks = max_blocks
        self.prefetch = prefetch
        self.target = target
        """Blocks of slack wanted in the queue beyond the one about to play."""
        self.max_target = max_target
        self.window = window
        self.relax_pulls = relax_pulls
        self.conceal_gains = conceal_gains
        self._queue: deque[Block | None] = deque()
        self._playing = False
        self._last: Block | None = None
        self._concealing = 0
        """Blocks concealed in a row (underruns and known losses)."""
        self._owed = 0
        """Slots concealed during the current underrun: the stream owes these blocks."""
        self._window_count = 0
        self._window_min: int | None = None
        self._since_late = 0
        self._to_merge = 0
        self.pushed = 0
        """Blocks accepted by :meth:`push`."""
        self.played = 0
        """Real blocks returned by :meth:`pull`."""
        self.dropped = 0
        """Blocks dropped because the queue was at ``max_blocks``."""
        self.merged = 0
        """Times two blocks were cross-faded into one to cut latency."""
        self.concealed = 0
        """Blocks synthesized for missing audio (underruns and known losses)."""
        self.late = 0
        """Blocks that arrived after their turn was concealed (each grew the delay)."""
        self.skipped = 0
        """Missing-block reports or blocks discarded because their turn was concealed."""

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def playing(self) -> bool:
        """Whether the stream is playing (prefetched and not stopped)."""
        return self._playing

    def push(self, block: Block) -> None:
        """Queue the next block of the stream."""
        self.pushed += 1
        self._append(block)

    def push_missing(self, count: int = 1) -> None:
        """The receiver knows ``count`` blocks before the next one were lost."""
        for _ in range(max(0, count)):
            self._append(None)

    def _append(self, item: Block | None) -> None:
        if self._owed:
            self._owed -= 1
            if item is None or self.target >= self.max_target:
                self.skipped += 1  # already concealed at its turn: lost, or no room to wait
                return
            # The block came after its turn: play it late and keep more slack from now on.
            self.late += 1
            self.target += 1
            self._since_late = 0
        if item is None and not self._playing and not self._queue:
            return  # nothing to play before it: a gap at the start needs no concealment
        if len(self._queue) >= self.max_blocks:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(item)
        if item is not None and self._playing:
            self._track_earliness(len(self._queue) - 1)

    def pull(self) -> Block | None:
        """The block to play now: audio, concealment, or None when the stream is silent."""
        if not self._playing:
            if sum(1 for item in self._queue if item is not None) < self.prefetch:
                return None
            while self._queue and self._queue[0] is None:
                self._queue.popleft()
            self._playing = True
            self._owed = 0
            self._window_count = 0
            self._window_min = None
            self._to_merge = 0
        if self._to_merge and len(self._queue) >= 2:
            self._to_merge -= 1
            self._merge_one()
        if not self._queue:
            self._owed += 1
            return self._conceal()
        item = self._queue.popleft()
        if item is None:
            return self._conceal()
        self._concealing = 0
        self._last = item
        self.played += 1
        self._since_late += 1
        if self._since_late >= self.relax_pulls and self.target > 0:
            self.target -= 1
            self._since_late = 0
        return item

    def _conceal(self) -> Block | None:
        gains = self.conceal_gains
        if self._concealing >= len(gains) or self._last is None:
            # Silent too long: the stream stopped (or never played); prefetch again.
            self._playing = False
            self._owed = 0
            self._queue.clear()
            self._concealing = 0
            return None
        gain = gains[self._concealing]
        self._concealing += 1
        self.concealed += 1
        result: Block = np.rint(self._last.astype(np.float32) * np.float32(gain)).astype(
            np.int16
        )
        return result

    def _track_earliness(self, ahead: int) -> None:
        low = self._window_min
        self._window_min = ahead if low is None else min(low, ahead)
        self._window_count += 1
        if self._window_count < self.window:
            return
        surplus = self._window_min - self.target
        self._window_count = 0
        self._window_min = None
        self._to_merge = max(surplus, 0)

    def _merge_one(self) -> None:
        """Cross-fade the first two queued blocks into one: the stream gets 20 ms ahead."""
        first = self._queue.popleft()
        second = self._queue.popleft()
        if first is None or second is None:
            merged = second if first is None else first
        else:
            merged = _crossfade(first, second)
        self._queue.appendleft(merged)
        self.merged += 1

    def clear(self) -> None:
        """Drop everything queued and start again with a prefetch."""
        self._queue.clear()
        self._playing = False
        self._owed = 0
        self._concealing = 0
        self._to_merge = 0
