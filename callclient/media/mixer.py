"""Mix the decoded audio of every remote user into one block per 20 ms."""

from __future__ import annotations

import logging
import threading
from collections import deque

import numpy as np
import numpy.typing as npt

from callclient.media.base import BLOCK_SAMPLES

__all__ = ["Mixer"]

logger = logging.getLogger(__name__)

Block = npt.NDArray[np.int16]
_INT16_MIN = np.iinfo(np.int16).min
_INT16_MAX = np.iinfo(np.int16).max


class Mixer:
    """A thread-safe mixer of per-user queues of 20 ms int16 mono blocks.

    ``push`` appends to a user's queue (at most ``max_blocks``; when full the oldest block is
    dropped so latency cannot grow). ``pull`` (from any thread, e.g. a sound card callback)
    takes the next block of every queue, applies per-user gain, sums in int32 and clips to
    int16. A user with an empty queue contributes silence.
    """

    def __init__(self, max_blocks: int = 10) -> None:
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        self.max_blocks = max_blocks
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Block]] = {}
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
            return list(self._queues)

    def queued(self, user_id: str | None = None) -> int:
        """Blocks waiting for one user, or for all users when ``user_id`` is None."""
        with self._lock:
            if user_id is not None:
                queue = self._queues.get(user_id)
                return len(queue) if queue is not None else 0
            return sum(len(queue) for queue in self._queues.values())

    def push(self, user_id: str, block: Block) -> None:
        """Queue one int16 block of shape ``(BLOCK_SAMPLES,)`` for ``user_id``."""
        if block.dtype != np.int16 or block.shape != (BLOCK_SAMPLES,):
            raise ValueError(
                f"expected int16 block of shape ({BLOCK_SAMPLES},), "
                f"got {block.dtype} {block.shape}"
            )
        with self._lock:
            queue = self._queues.get(user_id)
            if queue is None:
                queue = self._queues[user_id] = deque()
            if len(queue) >= self.max_blocks:
                queue.popleft()
                self.dropped += 1
            queue.append(block)
            self.pushed += 1

    def pull(self) -> Block:
        """Mix and return the next block (silence when nothing is queued)."""
        with self._lock:
            taken = [
                (queue.popleft(), self._gains.get(user_id, 1.0))
                for user_id, queue in self._queues.items()
                if queue
            ]
            self.mixed += len(taken)
        total = np.zeros(BLOCK_SAMPLES, dtype=np.int32)
        for block, gain in taken:
            if gain == 1.0:
                total += block
            elif gain > 0.0:
                total += np.rint(block.astype(np.float32) * np.float32(gain)).astype(np.int32)
        result: Block = np.clip(total, _INT16_MIN, _INT16_MAX).astype(np.int16)
        return result

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
            self._gains.pop(user_id, None)
