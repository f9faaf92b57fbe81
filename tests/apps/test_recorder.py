"""Recorder: playable MP4/WAV per user with received-time timestamps; the dropping worker;
the file camera."""

from __future__ import annotations

import asyncio
import threading
import time
import wave
from pathlib import Path

import av
import numpy as np

from callclient.apps.recorder import Mp4View, Recorder
from callclient.apps.worker import DroppingWorker
from callclient.media.analysis import dominant_frequency
from callclient.media.base import RenderedFrame
from callclient.media.filesource import FileVideoSource, media_streams
from callclient.media.pattern import read_stamp
from callclient.media.virtual import VirtualCamera


def tone_block(index: int, freq: float) -> np.ndarray:
    """Block ``index`` (20 ms) of a continuous ``freq`` Hz tone."""
    n = np.arange(index * 960, (index + 1) * 960)
    return np.rint(8000 * np.sin(2 * np.pi * freq * n / 48000)).astype(np.int16)


async def feed(view: Mp4View, camera: VirtualCamera, offsets: list[float], base: float) -> None:
    """Give the view one stamped frame per offset (seconds after ``base``), paced gently."""
    for i, offset in enumerate(offsets):
        view.on_frame(RenderedFrame("alice", camera.draw(i, base + offset), base + offset))
        await asyncio.sleep(0.005)


async def test_recordings_are_playable_with_received_timing(tmp_path: Path) -> None:
    """After close the MP4 decodes (stamps in order, pts = received times) and the WAV
    holds the tone; close is idempotent and a second recording does not overwrite."""
    recorder = Recorder(tmp_path)
    view = recorder.start("alice")
    assert recorder.start("alice") is view
    camera = VirtualCamera(320, 180)
    offsets = [0.0, 0.040, 0.070, 0.150, 0.160, 0.300, 0.333, 0.500]
    base = time.time()
    await feed(view, camera, offsets, base)
    for i in range(100):
        recorder.audio_tap("alice", tone_block(i, 750.0))
    recorder.audio_tap("nobody", tone_block(0, 100.0))  # not recorded: ignored
    infos = await recorder.close()
    assert await recorder.close() == infos
    assert len(infos) == 1
    info = infos[0]
    assert info.video_path == tmp_path / "alice.mp4" and info.audio_path == tmp_path / "alice.wav"
    assert info.video_frames == len(offsets) and info.video_dropped == 0
    assert not (tmp_path / "nobody.wav").exists()

    with av.open(str(info.video_path)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == len(offsets)
    counters = [read_stamp(f.to_ndarray(format="bgr24"), rotations=False) for f in frames]
    assert [c[0] for c in counters if c is not None] == list(range(len(offsets)))
    times = [float(f.time) for f in frames]
    assert np.allclose(times, offsets, atol=0.002), times

    with wave.open(str(info.audio_path), "rb") as wav:
        assert wav.getframerate() == 48000 and wav.getnframes() == 100 * 960
        samples = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    assert abs(dominant_frequency(samples) - 750.0) < 1.0
    assert info.audio.dominant_hz is not None and abs(info.audio.dominant_hz - 750.0) < 1.0

    again = Recorder(tmp_path)
    again.start("alice").on_frame(RenderedFrame("alice", camera.draw(0, base), base))
    second = await again.close()
    assert second[0].video_path == tmp_path / "alice-2.mp4"
    assert (tmp_path / "alice.mp4").stat().st_size > 0


async def test_finish_then_late_audio_is_ignored(tmp_path: Path) -> None:
    """A finished user's late audio blocks do not reopen a recording."""
    recorder = Recorder(tmp_path)
    recorder.start("bob")
    recorder.audio_tap("bob", tone_block(0, 500.0))
    info = await recorder.finish("bob")
    assert info is not None and info.audio_seconds == 0.02 and info.video_path is None
    recorder.audio_tap("bob", tone_block(1, 500.0))
    assert recorder.active == {}
    assert await recorder.finish("bob") is None
    await recorder.close()


def test_dropping_worker_drops_oldest_and_never_blocks() -> None:
    """With the handler stuck, puts return at once and only the newest items are kept."""
    started, release = threading.Event(), threading.Event()
    handled: list[int] = []

    def handle(item: int) -> None:
        if item == 0:
            started.set()
            release.wait(5)
        handled.append(item)

    finished: list[bool] = []
    worker: DroppingWorker[int] = DroppingWorker("test", handle, 2, lambda: finished.append(True))
    worker.put(0)
    assert started.wait(5)
    t0 = time.monotonic()
    results = [worker.put(i) for i in range(1, 6)]
    # Blocking would mean waiting for the held worker (5 s); anything well under that is
    # "did not block" on a loaded machine.
    assert time.monotonic() - t0 < 2.5
    assert results == [True, True, False, False, False]
    release.set()
    worker.close()
    worker.close()
    assert handled == [0, 4, 5] and worker.dropped == 3 and finished == [True]
    assert not worker.alive
    assert worker.put(9) is False


async def test_file_video_source_loops_at_file_rate(tmp_path: Path) -> None:
    """A 10-frame 25 fps clip plays at ~25 fps and starts over after its last frame."""
    path = tmp_path / "clip.mp4"
    camera = VirtualCamera(160, 96)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(camera.draw(i, 1000.0 + i), format="bgr24")
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    assert media_streams(path) == (False, True)
    source = FileVideoSource(path)
    await source.start()
    try:
        t0 = time.monotonic()
        frames = [await source.read() for _ in range(15)]
        elapsed = time.monotonic() - t0
    finally:
        await source.stop()
    assert source.fps == 25.0
    # 15 frames at 25 fps: 14 periods, 0.56 s; never sooner (the file's rate, not as fast as
    # it decodes). The upper bound is only against a stuck loop: a loaded machine is late.
    assert elapsed >= 14 / 25 - 0.02, elapsed
    assert elapsed <= 10.0, elapsed
    stamps = [read_stamp(f.image, rotations=False) for f in frames]
    assert [s[0] if s else None for s in stamps] == [*range(10), *range(5)]
    assert [f.index for f in frames] == list(range(15))
