"""CameraTrack sends the newest frame of a swappable source at a settable size."""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError

from callclient.errors import DeviceError
from callclient.media.base import CapturedFrame, MemoryView, VideoSource
from callclient.media.pattern import read_stamp
from callclient.media.tracks import CameraTrack, frame_to_bgr
from callclient.media.virtual import VirtualCamera
from callclient.types import FillMode, VideoRenderParams


class SolidSource(VideoSource):
    """A fake camera: solid-colour frames at a fixed rate, optionally failing after n frames."""

    def __init__(self, colour: tuple[int, int, int], fail_after: int | None = None) -> None:
        self.name = f"solid {colour}"
        self.colour = colour
        self.fail_after = fail_after
        self.index = 0

    async def start(self) -> None:
        """Nothing to open."""

    async def read(self) -> CapturedFrame:
        """A frame every 20 ms."""
        await asyncio.sleep(0.02)
        if self.fail_after is not None and self.index >= self.fail_after:
            raise DeviceError("unplugged")
        image = np.empty((240, 320, 3), dtype=np.uint8)
        image[:] = self.colour
        self.index += 1
        return CapturedFrame(image, time.time(), self.index - 1)

    async def stop(self) -> None:
        """Nothing to close."""


async def _camera(fps: float = 30) -> VirtualCamera:
    camera = VirtualCamera(640, 360, fps=fps)
    await camera.start()
    return camera


async def test_frames_have_exactly_the_set_size_changed_live() -> None:
    """recv() yields yuv420p frames of the set size; set_size applies to the next frame."""
    camera = await _camera()
    track = CameraTrack(camera, size=(320, 180))
    for _ in range(3):
        frame = await track.recv()
        assert (frame.width, frame.height, frame.format.name) == (320, 180, "yuv420p")
    track.set_size((240, 240))  # different aspect: centred crop, then scale
    frame = await track.recv()
    assert (frame.width, frame.height) == (240, 240)
    assert read_stamp(frame_to_bgr(frame)) is not None
    with pytest.raises(ValueError, match="even"):
        track.set_size((241, 240))
    await track.aclose()
    await camera.stop()


async def test_pts_strictly_increasing_on_90khz_clock() -> None:
    """pts increase strictly, in steps near 3000 (1/30 s at 90 kHz), time_base 1/90000."""
    camera = await _camera()
    track = CameraTrack(camera, size=(320, 180))
    frames = [await track.recv() for _ in range(10)]
    await track.aclose()
    await camera.stop()
    pts = [f.pts for f in frames if f.pts is not None]
    assert len(pts) == len(frames)
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert str(frames[0].time_base) == "1/90000"
    steps = np.diff(pts)
    assert 2000 <= float(np.median(steps)) <= 4000


async def test_slow_consumer_gets_newest_frame() -> None:
    """A consumer slower than the camera skips indices instead of falling behind."""
    camera = await _camera(fps=30)
    track = CameraTrack(camera, size=(320, 180))
    first = read_stamp(frame_to_bgr(await track.recv()))
    indices = []
    for _ in range(3):
        await asyncio.sleep(0.2)
        frame = await track.recv()
        found = read_stamp(frame_to_bgr(frame))
        assert found is not None
        indices.append(found[0])
        assert time.time() - found[1] < 0.1  # fresh, not queued
    await track.aclose()
    await camera.stop()
    assert first is not None
    steps = np.diff([first[0], *indices])
    assert all(step >= 4 for step in steps)  # ~6 frames per 0.2 s
    assert track.frames_skipped >= 10


async def test_source_swap_and_none() -> None:
    """Swapping sources changes the picture at once; None sends black frames at idle_interval."""
    red, blue = SolidSource((0, 0, 255)), SolidSource((255, 0, 0))
    track = CameraTrack(red, size=(64, 48), idle_interval=0.1)
    frame = frame_to_bgr(await track.recv())
    assert frame[24, 32, 2] > 200 and frame[24, 32, 0] < 50
    track.set_source(blue)
    frame = frame_to_bgr(await track.recv())
    assert frame[24, 32, 0] > 200 and frame[24, 32, 2] < 50
    track.set_source(None)
    start = time.monotonic()
    black = [frame_to_bgr(await track.recv()) for _ in range(3)]
    elapsed = time.monotonic() - start
    assert all(int(image.max()) < 10 for image in black)
    # First at once, then every 0.1 s: never sooner than two intervals. The upper bound is
    # only against a stuck loop (a loaded 2-core machine can be late by far more than 0.1 s).
    assert 0.2 - 0.01 <= elapsed <= 5.0
    track.set_source(red)
    frame = frame_to_bgr(await track.recv())
    assert frame[24, 32, 2] > 200
    await track.aclose()


async def test_source_failure_reports_and_goes_black() -> None:
    """A failing source calls on_error with the DeviceError; the track then sends black."""
    errors: list[DeviceError] = []
    track = CameraTrack(SolidSource((0, 255, 0), fail_after=2), size=(64, 48),
                        idle_interval=0.05, on_error=errors.append)
    frames = [frame_to_bgr(await track.recv()) for _ in range(4)]
    await track.aclose()
    assert frames[0][10, 10, 1] > 200
    assert int(frames[-1].max()) < 10
    assert len(errors) == 1 and "unplugged" in str(errors[0])
    assert track.source is None


async def test_local_views_see_every_captured_frame() -> None:
    """Local views get each captured frame rendered at their own size and params."""
    camera = await _camera(fps=50)
    track = CameraTrack(camera, size=(320, 180), user_id="me")
    view = MemoryView(size=(90, 160))
    track.add_local_view(view, VideoRenderParams(FillMode.FIT))
    await view.wait_frames(5, timeout=2)
    await track.aclose()
    await camera.stop()
    last = view.last
    assert last is not None and last.user_id == "me"
    assert last.image.shape == (160, 90, 3)
    assert not last.image[:50].any()  # FIT of 16:9 into 9:16: black bars above and below


async def test_stop_ends_recv_and_cancels_reader() -> None:
    """After stop(), recv() raises MediaStreamError, also for a pending recv()."""
    track = CameraTrack(None, size=(64, 48), idle_interval=5)
    await track.recv()  # the first black frame comes at once
    pending = asyncio.create_task(track.recv())
    await asyncio.sleep(0.05)
    track.stop()
    track.stop()
    with pytest.raises(MediaStreamError):
        await pending
    with pytest.raises(MediaStreamError):
        await track.recv()
    assert track.readyState == "ended"
