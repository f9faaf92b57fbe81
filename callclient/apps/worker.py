"""A worker thread fed by a bounded queue that drops the oldest item instead of blocking.

The producer (usually the event loop) never waits: :meth:`DroppingWorker.put` returns at once,
and when the worker falls behind the oldest queued items are discarded and counted.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["DroppingWorker"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DroppingWorker(Generic[T]):
    """Runs ``handle(item)`` in one daemon thread for each item :meth:`put`, in order.

    At most ``maxsize`` items wait; a put on a full queue drops the oldest (:attr:`dropped`).
    :meth:`close` handles what is still queued, then ``finish()`` (in the worker thread),
    and joins. Exceptions from ``handle`` are logged and the worker goes on. ``on_start`` and
    ``on_stop`` get the thread's native id as it starts and ends (CPU meters leave it out).
    """

    def __init__(
        self,
        name: str,
        handle: Callable[[T], None],
        maxsize: int,
        finish: Callable[[], None] | None = None,
        *,
        on_start: Callable[[int], None] | None = None,
        on_stop: Callable[[int], None] | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.name = name
        self._handle = handle
        self._finish = finish
        self._on_start = on_start
        self._on_stop = on_stop
        self._maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self.dropped = 0
        """Items discarded because the queue was full."""
        self.handled = 0
        """Items handled so far."""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> bool:
        """Queue ``item`` without blocking; False if it was refused (closing) or one dropped."""
        with self._cond:
            if self._closing:
                return False
            kept = True
            if len(self._items) >= self._maxsize:
                self._items.popleft()
                self.dropped += 1
                kept = False
            self._items.append(item)
            self._cond.notify()
        return kept

    def close(self, timeout: float | None = 30.0) -> None:
        """Handle the queued items, run ``finish``, and join the thread. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("%s did not finish within %s s", self.name, timeout)

    @property
    def alive(self) -> bool:
        """Whether the thread still runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        ident = threading.get_native_id()
        if self._on_start is not None:
            self._on_start(ident)
        try:
            self._loop()
        finally:
            if self._on_stop is not None:
                self._on_stop(ident)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    break
                item = self._items.popleft()
            try:
                self._handle(item)
            except Exception:
                logger.exception("%s failed on an item", self.name)
            self.handled += 1
        if self._finish is not None:
            try:
                self._finish()
            except Exception:
                logger.exception("%s failed to finish", self.name)
