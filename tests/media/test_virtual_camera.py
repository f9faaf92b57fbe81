"""VirtualCamera paces at its fps without drift or backlog and stamps every frame."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest

from callclient.errors import DeviceError
from callclient.media import virtual
from callclient.media.pattern import read_stamp
from callclient.media.virtual import VirtualCamera
from tests.helpers.fakeclock import FakeClock


async def test_paces_at_fps(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a fake clock (issue 12: no 100 ms wall-clock windows): the first frame at once,
    then one every 1/30 s exactly, 31 frames in one second."""
    clock = FakeClock().install(monkeypatch, virtual)
    camera = VirtualCamera(fps=30)
    await camera.start()
    start = clock.now
    count = 0
    while clock.now - start < 1.0 - 1e-9:
        await camera.read()
        count += 1
    await camera.stop()
    assert count == 31
    assert clock.sleeps[0] == pytest.approx(1 / 30)  # the first read did not sleep
    assert len(clock.sleeps) == 30
    assert all(d == pytest.approx(1 / 30) for d in clock.sleeps)
    assert camera.skipped == 0


async def test_paces_in_real_time_too() -> None:
    """The real clock: 10 frames at 30 fps take at least 9 periods (never early; no upper
    bound, a loaded machine may be late)."""
    camera = VirtualCamera(fps=30)
    await camera.start()
    start = time.monotonic()
    for _ in range(10):
        await camera.read()
    elapsed = time.monotonic() - start
    await camera.stop()
    assert elapsed >= 9 / 30 - 0.005


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


async def test_no_backlog_after_a_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that stalls gets one immediate frame and then paced ones, not a burst."""
    clock = FakeClock().install(monkeypatch, virtual)
    camera = VirtualCamera(fps=30)
    await camera.start()
    for _ in range(3):
        await camera.read()
    clock.advance(0.5)  # 15 frame periods
    start, slept = clock.now, len(clock.sleeps)
    for _ in range(6):
        await camera.read()
    await camera.stop()
    assert clock.now - start == pytest.approx(5 / 30)  # one at once, then five paced
    assert len(clock.sleeps) - slept == 5
    assert camera.skipped == 1


async def test_no_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """The schedule is absolute: with 5 ms of work after each frame, 46 frames at 30 fps
    still end at exactly 1.5 s (a relative sleep would end at 1.5 + 45 x 5 ms)."""
    clock = FakeClock().install(monkeypatch, virtual)
    camera = VirtualCamera(fps=30)
    await camera.start()
    start = clock.now
    for _ in range(46):
        await camera.read()
        clock.advance(0.005)
    await camera.stop()
    assert clock.now - start == pytest.approx(45 / 30 + 0.005)
    assert camera.skipped == 0


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
