"""Mix the decoded audio of every remote user into one block per 20 ms.

A plain mixer queues each user's blocks first in, first out. An adaptive one
(``Mixer(adaptive=True)``, what the engine uses) gives each user a
:class:`~callclient.media.playout.PlayoutBuffer`: it keeps only the queue the stream's
jitter needs (one or two blocks when steady), conceals missing blocks by fading the last one
out instead of playing silence, and never holds more than ``max_blocks``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np

from callclient.media.base import BLOCK_SAMPLES, Block
from callclient.media.playout import PlayoutBuffer

__all__ = ["Mixer"]

logger = logging.getLogger(__name__)

_INT16_MIN = np.iinfo(np.int16).min
_INT16_MAX = np.iinfo(np.int16).max


class Mixer:
    """A thread-safe mixer of per-user queues of 20 ms int16 mono blocks.

    ``push`` appends to a user's queue (at most ``max_blocks``; when full the oldest block is
    dropped so latency cannot grow). ``pull`` (from any thread, e.g. a sound card callback)
    takes the next block of every queue, applies per-user gain, sums in int32 and clips to
    int16. A user with an empty queue contributes silence.

    With ``adaptive=True`` each user's queue is a :class:`PlayoutBuffer` of ``max_blocks``
    (at least 2): playback of a user starts after a short prefetch, missing blocks are
    concealed, the queue is kept near the depth the jitter needs, and :meth:`push_missing`
    reports blocks known to be lost. ``pushed == mixed + dropped + queued()`` holds for the
    plain mixer only (the adaptive one also merges, conceals and skips blocks).
    """

    def __init__(self, max_blocks: int = 10, *, adaptive: bool = False) -> None:
        if max_blocks < (2 if adaptive else 1):
            raise ValueError(f"max_blocks must be >= {2 if adaptive else 1}, got {max_blocks}")
        self.max_blocks = max_blocks
        self.adaptive = adaptive
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Block]] = {}
        self._playout: dict[str, PlayoutBuffer] = {}
        self._gains: dict[str, float] = {}
        self.pushed = 0
        """Blocks accepted by ``push``."""
        self.dropped = 0
        """Blocks dropped because a queue was full."""
        self.mixed = 0
        """Blocks taken out of the queues by ``pull``."""

    @property
    def users(self) -> list[str]:
        """Users with a queue."""
        with self._lock:
            return list(self._playout) if self.adaptive else list(self._queues)

    def queued(self, user_id: str | None = None) -> int:
        """Blocks waiting for one user, or for all users when ``user_id`` is None."""
        with self._lock:
            queues: dict[str, deque[Block]] | dict[str, PlayoutBuffer] = (
                self._playout if self.adaptive else self._queues
            )
            if user_id is not None:
                queue = queues.get(user_id)
                return len(queue) if queue is not None else 0
            return sum(len(queue) for queue in queues.values())

    def playout(self, user_id: str) -> PlayoutBuffer | None:
        """The playout buffer of ``user_id`` (adaptive mixers only), for statistics."""
        with self._lock:
            return self._playout.get(user_id)

    def push(self, user_id: str, block: Block) -> None:
        """Queue one int16 block of shape ``(BLOCK_SAMPLES,)`` for ``user_id``."""
        if block.dtype != np.int16 or block.shape != (BLOCK_SAMPLES,):
            raise ValueError(
                f"expected int16 block of shape ({BLOCK_SAMPLES},), "
                f"got {block.dtype} {block.shape}"
            )
        with self._lock:
            if self.adaptive:
                buffer = self._buffer(user_id)
                dropped = buffer.dropped
                buffer.push(block)
                self.dropped += buffer.dropped - dropped
                self.pushed += 1
                return
            queue = self._queues.get(user_id)
            if queue is None:
                queue = self._queues[user_id] = deque()
            if len(queue) >= self.max_blocks:
                queue.popleft()
                self.dropped += 1
            queue.append(block)
            self.pushed += 1

    def push_missing(self, user_id: str, count: int = 1) -> None:
        """``count`` blocks of ``user_id`` before the next push were lost (adaptive only).

        They are concealed at their turn instead of being waited for; a plain mixer ignores
        the report.
        """
        if not self.adaptive or count <= 0:
            return
        with self._lock:
            self._buffer(user_id).push_missing(count)

    def _buffer(self, user_id: str) -> PlayoutBuffer:
        buffer = self._playout.get(user_id)
        if buffer is None:
            buffer = self._playout[user_id] = PlayoutBuffer(
                self.max_blocks, max_target=min(3, self.max_blocks - 1)
            )
        return buffer

    def pull(self) -> Block:
        """Mix and return the next block (silence when nothing is queued)."""
        if self.adaptive:
            return self._pull_adaptive()
        with self._lock:
            taken = [
                (queue.popleft(), self._gains.get(user_id, 1.0))
                for user_id, queue in self._queues.items()
                if queue
            ]
            self.mixed += len(taken)
        return _mix(taken)

    def _pull_adaptive(self) -> Block:
        taken: list[tuple[Block, float]] = []
        with self._lock:
            before = 0
            for user_id, buffer in self._playout.items():
                before += buffer.played
                block = buffer.pull()
                if block is not None:
                    taken.append((block, self._gains.get(user_id, 1.0)))
            self.mixed += sum(b.played for b in self._playout.values()) - before
        return _mix(taken)

    def set_gain(self, user_id: str, gain: float) -> None:
        """Set a user's gain in 0..1 (kept until ``remove``)."""
        if not 0.0 <= gain <= 1.0:
            raise ValueError(f"gain must be within 0..1, got {gain}")
        with self._lock:
            self._gains[user_id] = float(gain)

    def gain(self, user_id: str) -> float:
        """A user's gain (1.0 unless set)."""
        with self._lock:
            return self._gains.get(user_id, 1.0)

    def remove(self, user_id: str) -> None:
        """Forget a user: drop the queued blocks and the gain. Unknown users are ignored."""
        with self._lock:
            self._queues.pop(user_id, None)
            self._playout.pop(user_id, None)
            self._gains.pop(user_id, None)


def _mix(taken: list[tuple[Block, float]]) -> Block:
    """Sum blocks with their gains in int32 and clip to int16."""
    total = np.zeros(BLOCK_SAMPLES, dtype=np.int32)
    for block, gain in taken:
        if gain == 1.0:
            total += block
        elif gain > 0.0:
            total += np.rint(block.astype(np.float32) * np.float32(gain)).astype(np.int32)
    result: Block = np.clip(total, _INT16_MIN, _INT16_MAX).astype(np.int16)
    return result
