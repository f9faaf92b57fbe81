"""Task ownership: every task the engine starts is kept, logged when it fails, and ended.

:class:`TaskOwner` is shared by the engine's parts (call media, peer mesh, receive pipeline),
so :meth:`CallEngine.close` finds every task in one place: ordinary tasks are cancelled;
*cleanup* tasks (closing peer connections, stopping the speaker) are awaited first, because a
cancelled teardown would leave UDP sockets or a sound stream open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["TaskOwner"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class TaskOwner:
    """Starts tasks on the running loop and remembers them until they end."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cleanups: set[asyncio.Task[Any]] = set()

    def spawn(
        self, coro: Coroutine[Any, Any, _T], *, cleanup: bool = False, name: str | None = None
    ) -> asyncio.Task[_T]:
        """Run ``coro`` as a task; ``cleanup`` tasks are awaited, not cancelled, at close."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        if cleanup:
            self._cleanups.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def finish_cleanups(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for the cleanup tasks running now."""
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=timeout)

    async def cancel_all(self) -> None:
        """Cancel every task still running and wait for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
