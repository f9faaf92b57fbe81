"""OpenCVCamera on real video files and pipes: pacing, newest-frame-only, loop/end, failures,
and a file-backed camera in an engine call, switched mid-call."""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest

from callclient.errors import DeviceError, ErrorCode
from callclient.media.devices import OpenCVCamera
from callclient.media.deviceset import DeviceSet
from callclient.media.pattern import read_stamp, stamp
from callclient.types import CallMediaType, Camera
from tests.helpers.engine import MakeParty
from tests.helpers.waits import eventually

T = 10.0
FPS = 30
SIZE = (320, 240)


def stamped_image(counter: int) -> npt.NDArray[np.uint8]:
    """A grey frame carrying the stamp ``counter``."""
    image = np.full((SIZE[1], SIZE[0], 3), 90, dtype=np.uint8)
    stamp(image, counter, 1000.0 + counter)
    return image


def write_video(path: Path, frames: int, base: int = 0) -> Path:
    """An MPEG-4 file of ``frames`` frames at 30 fps stamped ``base``, ``base + 1``, ..."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.bit_rate = 4_000_000
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(stamped_image(base + i), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def counter(image: npt.NDArray[np.uint8]) -> int:
    """The stamp counter of ``image`` (fails the test if unreadable)."""
    found = read_stamp(image)
    assert found is not None, "frame carries no readable stamp"
    return found[0]


async def test_file_frames_are_paced_and_stamped_in_order(tmp_path: Path) -> None:
    """A file plays at its 30 fps from frame 0, index equal to the stamp, BGR uint8."""
    camera = OpenCVCamera(str(write_video(tmp_path / "a.mp4", 60)), loop=False)
    await camera.start()
    try:
        started = time.monotonic()
        frames = [await asyncio.wait_for(camera.read(), T) for _ in range(16)]
        elapsed = time.monotonic() - started
    finally:
        await camera.stop()
    stamps = [counter(f.image) for f in frames]
    assert stamps == [f.index for f in frames]
    assert stamps[0] == 0
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert stamps[-1] <= 18, f"frames came faster than 30 fps: {stamps}"
    assert all(f.image.shape == (SIZE[1], SIZE[0], 3) and f.image.dtype == np.uint8
               for f in frames)
    assert all(a.capture_time <= b.capture_time for a, b in itertools.pairwise(frames))
    expected = stamps[-1] / FPS
    # Never sooner than the file's rate allows; later is only bounded against a stuck
    # reader (the decoding thread can lag seconds on a loaded 2-core machine).
    assert expected - 0.1 < elapsed < expected + 5.0, (
        f"{stamps[-1]} frame periods took {elapsed:.2f} s, expected {expected:.2f}"
    )


async def test_slow_reader_gets_the_newest_frame_not_a_backlog(tmp_path: Path) -> None:
    """A reader pausing 0.5 s then reads the newest frame (stamps skipped), then live ones."""
    camera = OpenCVCamera(str(write_video(tmp_path / "a.mp4", 90)), loop=False)
    await camera.start()
    try:
        first = await camera.read()
        started = time.monotonic()
        await asyncio.sleep(0.5)
        after_pause = await camera.read()
        paused = time.monotonic() - started
        following = await camera.read()
        dropped = camera.dropped
    finally:
        await camera.stop()
    # Counts, not a window: a backlog would hand over the frame right after ``first``; the
    # newest one is at least several frames on (15 frame periods passed at full speed; the
    # decoding thread may lag on a loaded machine, so only a third of them is required).
    newest = round(paused * FPS)
    stamp_after = counter(after_pause.image)
    skipped = stamp_after - counter(first.image) - 1
    assert skipped >= max(2, newest // 3), (
        f"after a {paused:.2f} s pause the reader got stamp {stamp_after}: a stale frame"
    )
    assert after_pause.index == stamp_after
    assert counter(following.image) > stamp_after
    assert dropped >= skipped, "the skipped frames are counted as dropped"


async def test_looping_file_starts_over(tmp_path: Path) -> None:
    """With loop=True a 10-frame file plays 0..9, 0..9, ...: stamp == index % 10."""
    camera = OpenCVCamera(str(write_video(tmp_path / "a.mp4", 10)), loop=True)
    await camera.start()
    try:
        frames = [await asyncio.wait_for(camera.read(), T) for _ in range(25)]
    finally:
        await camera.stop()
    stamps = [counter(f.image) for f in frames]
    assert stamps == [f.index % 10 for f in frames]
    assert all(a.index < b.index for a, b in itertools.pairwise(frames))
    assert frames[-1].index >= 20, "the file did not start over"


async def test_file_end_without_loop_raises_camera_stopped(tmp_path: Path) -> None:
    """With loop=False, after the last frame read() raises -1316 promptly, and stays failed."""
    camera = OpenCVCamera(str(write_video(tmp_path / "a.mp4", 8)), loop=False, stall_timeout=2.0)
    await camera.start()
    try:
        frames = []
        with pytest.raises(DeviceError) as info:
            async with asyncio.timeout(T):  # a file that never ends fails, not hangs
                while True:
                    frames.append(await camera.read())
                    last = time.monotonic()
        assert time.monotonic() - last < camera.stall_timeout
        assert info.value.code == ErrorCode.CAMERA_STOPPED
        assert "ended" in info.value.message
        stamps = [counter(f.image) for f in frames]
        assert stamps == [f.index for f in frames]
        assert stamps[0] == 0 and stamps[-1] == 7, "the first and last frames are delivered"
        with pytest.raises(DeviceError):
            await camera.read()
    finally:
        await camera.stop()
    await camera.stop()  # idempotent


async def test_missing_devices_fail_fast_with_camera_start_fail(tmp_path: Path) -> None:
    """A missing index, a missing path and a file that is not video give -1301 quickly."""
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    for device in (97, str(tmp_path / "missing.mp4"), str(text)):
        camera = OpenCVCamera(device, open_timeout=5.0)
        started = time.monotonic()
        with pytest.raises(DeviceError) as info:
            await camera.start()
        assert time.monotonic() - started < 3.0
        assert info.value.code == ErrorCode.CAMERA_START_FAIL
        assert str(device) in info.value.message
        assert not camera.running
        with pytest.raises(DeviceError) as info:
            await camera.read()
        assert info.value.code == ErrorCode.CAMERA_STOPPED


def y4m_header() -> bytes:
    """The header of a raw YUV4MPEG2 stream of SIZE at 30 fps."""
    return f"YUV4MPEG2 W{SIZE[0]} H{SIZE[1]} F{FPS}:1 Ip A1:1 C420jpeg\n".encode()


def y4m_frame(count: int) -> bytes:
    """One stamped YUV4MPEG2 frame."""
    yuv = cv2.cvtColor(stamped_image(count), cv2.COLOR_BGR2YUV_I420)
    return b"FRAME\n" + yuv.tobytes()


async def test_live_source_that_stops_delivering_raises_and_stop_does_not_hang(
    tmp_path: Path,
) -> None:
    """A live stream (a pipe) that goes quiet without closing: read() raises -1316 after
    stall_timeout, and stop() returns although the capture thread is blocked in a read."""
    fifo = tmp_path / "camera.y4m"
    os.mkfifo(fifo)
    stalled = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with fifo.open("wb") as pipe:
            pipe.write(y4m_header())
            for i in range(20):
                pipe.write(y4m_frame(i))
                pipe.flush()
                time.sleep(1 / FPS)
            stalled.set()
            release.wait(T)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    camera = OpenCVCamera(str(fifo), stall_timeout=1.0)
    try:
        await camera.start()
        assert not camera.is_file
        frame = await asyncio.wait_for(camera.read(), T)
        assert 0 <= counter(frame.image) < 20
        await asyncio.to_thread(stalled.wait, T)
        started = time.monotonic()
        with pytest.raises(DeviceError) as info:
            async with asyncio.timeout(T):  # frames that keep coming fail, not hang
                while True:
                    await camera.read()
        assert time.monotonic() - started < camera.stall_timeout + 0.5
        assert info.value.code == ErrorCode.CAMERA_STOPPED
        assert "no frame for 1 s" in info.value.message
        started = time.monotonic()
        await camera.stop()
        assert time.monotonic() - started < 3.0
    finally:
        release.set()
        await asyncio.to_thread(thread.join, T)
        await camera.stop()
    await eventually(
        lambda: not any(t.name.endswith("capture") and t.is_alive()
                        for t in threading.enumerate()),
        "the blocked capture thread exits once its read returns",
    )


async def test_file_cameras_in_a_call_and_switch_camera(
    tmp_path: Path, make_party: MakeParty
) -> None:
    """A file-backed front camera's stamps reach the remote view; switch_camera(BACK) mid-call
    brings the second file's stamps, on the same peer connection without renegotiation."""
    devices = DeviceSet.virtual("alice")
    devices.cameras = {
        Camera.FRONT: OpenCVCamera(str(write_video(tmp_path / "front.mp4", 60))),
        Camera.BACK: OpenCVCamera(str(write_video(tmp_path / "back.mp4", 60, base=100_000))),
    }
    alice = await make_party("alice", devices=devices)
    bob = await make_party("bob")
    await alice.engine.open_camera(Camera.FRONT)
    await alice.engine.call("bob", CallMediaType.VIDEO)
    await bob.rec.wait_for("on_call_received")
    view = bob.view_of("alice")
    await bob.engine.accept()

    def latest_stamp() -> int | None:
        frame = view.last
        found = read_stamp(frame.image) if frame is not None else None
        return found[0] if found is not None else None

    def showing(low: int, high: int) -> bool:
        value = latest_stamp()
        return value is not None and low <= value < high

    await eventually(lambda: showing(0, 60), "bob sees the front file's frames")
    mesh = alice.engine._media.mesh  # the peer connection, to check no renegotiation
    assert mesh is not None
    pc = mesh.peers["bob"].pc
    sdp = pc.localDescription.sdp, pc.remoteDescription.sdp
    errors = alice.rec.mark()

    await alice.engine.switch_camera(Camera.BACK)
    await eventually(lambda: showing(100_000, 100_060), "bob sees the back file's frames")
    assert not devices.cameras[Camera.FRONT].running  # type: ignore[attr-defined]
    count = view.count
    await view.wait_frames(count + 10, T)
    assert showing(100_000, 100_060)
    assert mesh.peers["bob"].pc is pc
    assert (pc.localDescription.sdp, pc.remoteDescription.sdp) == sdp
    assert alice.rec.find("on_error", start=errors) is None
    await alice.engine.hangup()
