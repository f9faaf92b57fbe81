"""VirtualCamera paces at its fps without drift or backlog and stamps every frame."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from callclient.errors import DeviceError
from callclient.media.pattern import read_stamp
from callclient.media.virtual import VirtualCamera


async def test_paces_at_fps() -> None:
    """Over one second a 30 fps camera delivers about 30 frames (generous range)."""
    camera = VirtualCamera(fps=30)
    await camera.start()
    start = time.monotonic()
    count = 0
    while time.monotonic() - start < 1.0:
        await camera.read()
        count += 1
    await camera.stop()
    assert 25 <= count <= 36


async def test_frames_are_numbered_and_stamped() -> None:
    """Indices count 0, 1, 2...; each image is W x H BGR and its stamp holds index and time."""
    camera = VirtualCamera(320, 240, fps=60, label="alice")
    await camera.start()
    frames = [await camera.read() for _ in range(5)]
    await camera.stop()
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    for frame in frames:
        assert frame.image.shape == (240, 320, 3)
        assert frame.image.dtype == np.uint8
        counter, capture_time = read_stamp(frame.image) or (None, 0.0)
        assert counter == frame.index
        assert capture_time == pytest.approx(frame.capture_time, abs=1e-6)
    assert all(b.capture_time > a.capture_time for a, b in itertools.pairwise(frames))


async def test_box_moves() -> None:
    """Consecutive frames differ outside the stamp (the encoder sees motion)."""
    camera = VirtualCamera()
    first, second = camera.draw(0, 1.0), camera.draw(5, 1.0)
    bottom = slice(int(360 * 0.7), 360)
    assert not np.array_equal(first[bottom], second[bottom])


async def test_no_backlog_after_a_stall() -> None:
    """A consumer that stalls gets one immediate frame and then paced ones, not a burst."""
    camera = VirtualCamera(fps=30)
    await camera.start()
    for _ in range(3):
        await camera.read()
    await asyncio.sleep(0.5)  # 15 frame periods
    start = time.monotonic()
    for _ in range(6):
        await camera.read()
    elapsed = time.monotonic() - start
    await camera.stop()
    assert elapsed >= 4.5 / 30
    assert camera.skipped == 1


async def test_no_drift() -> None:
    """The schedule is absolute: 45 frames at 30 fps end near 1.5 s, not later."""
    camera = VirtualCamera(fps=30)
    await camera.start()
    start = time.monotonic()
    for _ in range(46):
        await camera.read()
    elapsed = time.monotonic() - start
    await camera.stop()
    assert 1.45 <= elapsed <= 1.6


async def test_read_requires_start_and_stop_is_idempotent() -> None:
    """read() before start or after stop raises DeviceError; stop() twice is fine."""
    camera = VirtualCamera()
    with pytest.raises(DeviceError, match="not started"):
        await camera.read()
    await camera.start()
    pending = asyncio.create_task(camera.read())
    await pending
    pending = asyncio.create_task(camera.read())
    await asyncio.sleep(0)
    await camera.stop()
    await camera.stop()
    with pytest.raises(DeviceError):
        await pending


def test_draw_cost_note() -> None:
    """Drawing a 1080p frame is cheap (prints ms per frame; bound is generous)."""
    camera = VirtualCamera(1920, 1080, label="bench")
    camera.draw(0, 0.0)
    start = time.perf_counter()
    for index in range(30):
        camera.draw(index, time.time())
    per_frame = (time.perf_counter() - start) / 30 * 1000
    print(f"VirtualCamera.draw 1920x1080: {per_frame:.2f} ms/frame")
    assert per_frame < 25
