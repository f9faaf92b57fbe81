"""MemoryView keeps the newest frames, counts them and wakes waiters from any thread."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from callclient.media.base import MemoryView, RenderedFrame


def _frame(value: int) -> RenderedFrame:
    return RenderedFrame("u", np.full((2, 2, 3), value, dtype=np.uint8), time.time())


def test_keeps_last_frames_and_counts() -> None:
    """Only the last ``keep`` frames are kept; the count covers all of them."""
    view = MemoryView(size=(4, 2), keep=2)
    assert view.last is None
    for value in range(5):
        view.on_frame(_frame(value))
    assert view.count == 5
    assert [int(f.image[0, 0, 0]) for f in view.frames] == [3, 4]
    assert view.last is not None and int(view.last.image[0, 0, 0]) == 4
    assert view.size == (4, 2)


async def test_wait_frames_returns_when_reached() -> None:
    """wait_frames returns once the total count reaches n."""
    view = MemoryView()
    waiter = asyncio.create_task(view.wait_frames(3, timeout=5))
    for value in range(3):
        await asyncio.sleep(0.01)
        assert not waiter.done()
        view.on_frame(_frame(value))
    await waiter
    await view.wait_frames(2, timeout=0.01)  # already reached


async def test_wait_frames_times_out() -> None:
    """wait_frames raises TimeoutError naming the counts."""
    view = MemoryView()
    view.on_frame(_frame(0))
    with pytest.raises(TimeoutError, match="got 1 frames, expected 2"):
        await view.wait_frames(2, timeout=0.05)


async def test_on_frame_from_another_thread() -> None:
    """Frames delivered from a thread wake a waiter on the loop."""
    view = MemoryView()

    def deliver() -> None:
        for value in range(10):
            view.on_frame(_frame(value))

    waiter = asyncio.create_task(view.wait_frames(10, timeout=5))
    await asyncio.sleep(0)
    thread = threading.Thread(target=deliver)
    thread.start()
    await waiter
    thread.join()
    assert view.count == 10
