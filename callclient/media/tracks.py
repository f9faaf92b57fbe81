"""aiortc tracks fed by the device interfaces, and conversions of received frames.

* :class:`CameraTrack` sends the newest frame of a swappable :class:`VideoSource`, scaled
  (FILL: centred crop to the target aspect, then resize) to a size changeable live.
  Without a source it sends a black frame every ``idle_interval`` seconds (1 s by default),
  which keeps the stream and the receiver's decoder alive at almost no cost.
* :class:`MicrophoneTrack` sends the 20 ms blocks of a swappable :class:`AudioSource`, or
  paced silence without one.

Tracks never start or stop their sources: whoever opened a device closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import threading
import time
from collections.abc import Awaitable, Callable

import av
import cv2
import numpy as np
import numpy.typing as npt
from aiortc import AudioStreamTrack, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError
from av.video.reformatter import VideoReformatter

from callclient.errors import DeviceError, ErrorCode
from callclient.media.base import (
    BLOCK_SAMPLES,
    BLOCK_SECONDS,
    SAMPLE_RATE,
    AudioSource,
    Block,
    CapturedFrame,
    RenderedFrame,
    VideoSource,
    VideoView,
)
from callclient.media.render import render
from callclient.types import FillMode, VideoRenderParams

__all__ = [
    "VIDEO_CLOCK_RATE",
    "AudioConverter",
    "CameraTrack",
    "MicrophoneTrack",
    "audio_frame_to_mono",
    "frame_to_bgr",
]

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90000
_VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
_AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
_THREAD_PIXELS = 1280 * 720
"""Frames with at least this many pixels (source or target) are converted in a thread."""
_MAX_CAPTURE_AGE = 1.0
_RESYNC_SECONDS = 0.1
_FILL = VideoRenderParams(fill_mode=FillMode.FILL)

Image = npt.NDArray[np.uint8]


_reformatters = threading.local()


def frame_to_bgr(frame: av.VideoFrame) -> Image:
    """A received video frame as an H x W x 3 uint8 BGR array.

    ``frame.to_ndarray(format="bgr24")`` would build and free a swscale context for every
    frame (about 1 ms at 360p, half of it freeing the context on whichever thread drops the
    frame). yuv420p, what the VP8 and H.264 decoders give, is converted by OpenCV with the
    same BT.601 matrix the camera track encodes with; other formats go through one swscale
    context kept per thread.
    """
    if frame.format.name == "yuv420p":
        return np.asarray(cv2.cvtColor(frame.to_ndarray(), cv2.COLOR_YUV2BGR_I420), np.uint8)
    reformatter = getattr(_reformatters, "current", None)
    if reformatter is None:
        reformatter = _reformatters.current = VideoReformatter()
    return np.asarray(reformatter.reformat(frame, format="bgr24").to_ndarray(), np.uint8)


class AudioConverter:
    """Converts one stream's received audio frames to int16 48 kHz mono.

    Keep one per stream: the resampler carries state between frames. It is rebuilt when the
    input format, layout or rate changes.
    """

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._key: tuple[str, str, int] | None = None

    def convert(self, frame: av.AudioFrame) -> Block:
        """The frame's samples as int16 mono at 48 kHz (may be empty while the resampler fills)."""
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key == ("s16", "stereo", SAMPLE_RATE):
            # What aiortc's Opus decoder gives, for every remote user 50 times a second:
            # averaging the two channels in numpy takes half the time of a resampler call
            # (and is exact when both channels are equal).
            pairs = frame.to_ndarray().reshape(-1, 2).astype(np.int32)
            mono: Block = ((pairs[:, 0] + pairs[:, 1]) >> 1).astype(np.int16)
            return mono
        if self._resampler is None or key != self._key:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            self._key = key
        chunks = [out.to_ndarray().reshape(-1) for out in self._resampler.resample(frame)]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        result: Block = np.concatenate(chunks).astype(np.int16, copy=False)
        return result


def audio_frame_to_mono(frame: av.AudioFrame) -> Block:
    """One frame as int16 48 kHz mono, with a fresh resampler (use AudioConverter for streams)."""
    return AudioConverter().convert(frame)


def _device_error(name: str, exc: Exception, code: int) -> DeviceError:
    """``exc`` as the DeviceError a source failure is reported with."""
    if isinstance(exc, DeviceError):
        return exc
    return DeviceError(f"{name} failed: {exc!r}", code)


def _check_video_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"video size must be even and at least 2x2, got {width}x{height}")
    return width, height


def _to_video_frame(image: Image, size: tuple[int, int]) -> av.VideoFrame:
    """Crop and scale a BGR image to ``size`` (FILL) and convert it to a yuv420p frame."""
    scaled = render(image, _FILL, size)
    yuv = np.asarray(cv2.cvtColor(scaled, cv2.COLOR_BGR2YUV_I420), dtype=np.uint8)
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


class CameraTrack(VideoStreamTrack):
    """A video track that sends the newest frame of a swappable source at a settable size.

    A reader task pulls frames from the source as fast as it delivers them and keeps only the
    newest, so ``recv()`` never returns a stale queued frame: a slow consumer sees skipped
    indices, not growing latency. Every captured frame is also rendered to the local views.
    pts are on a 90 kHz clock, derived from the capture time (mapped onto the monotonic
    clock) and strictly increasing. ``on_error`` is called when the source fails; the track
    then continues as if the source were None.
    """

    def __init__(
        self,
        source: VideoSource | None = None,
        size: tuple[int, int] = (640, 360),
        user_id: str = "",
        idle_interval: float = 1.0,
        on_error: Callable[[DeviceError], None] | None = None,
    ) -> None:
        super().__init__()
        if idle_interval <= 0:
            raise ValueError(f"idle_interval must be positive, got {idle_interval}")
        self.user_id = user_id
        self.idle_interval = idle_interval
        self.on_error = on_error
        self._size = _check_video_size(size)
        self._source = source
        self._reader: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._latest: tuple[CapturedFrame, float] | None = None
        self._latest_seq = 0
        self._sent_seq = 0
        self._idle_due: float | None = None
        self._mono_start: float | None = None
        self._last_pts = -1
        self._views: list[tuple[VideoView, VideoRenderParams]] = []
        self.frames_sent = 0
        """Frames returned by ``recv()``."""
        self.frames_skipped = 0
        """Captured frames replaced by a newer one before ``recv()`` took them."""
        self._ensure_reader()

    @property
    def source(self) -> VideoSource | None:
        """The current source."""
        return self._source

    @property
    def size(self) -> tuple[int, int]:
        """The size (w, h) of the frames sent."""
        return self._size

    def set_size(self, size: tuple[int, int]) -> None:
        """Send frames of exactly ``size`` (w, h, both even) from the next frame on."""
        self._size = _check_video_size(size)

    def set_source(self, source: VideoSource | None) -> None:
        """Take frames from ``source`` from now on (None: black frames every idle_interval)."""
        if source is self._source:
            return
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self._source = source
        self._latest = None
        self._sent_seq = self._latest_seq
        self._idle_due = None
        self._ensure_reader()
        self._wakeup.set()

    def add_local_view(
        self, view: VideoView, params: VideoRenderParams | None = None
    ) -> None:
        """Render every captured frame (before scaling for sending) to ``view``."""
        self.remove_local_view(view)
        self._views.append((view, params if params is not None else VideoRenderParams()))
        self._ensure_reader()

    def remove_local_view(self, view: VideoView) -> None:
        """Stop rendering to ``view``; unknown views are ignored."""
        self._views = [(v, p) for v, p in self._views if v is not view]

    def stop(self) -> None:
        """End the track and cancel its reader task. Idempotent."""
        super().stop()
        if self._reader is not None:
            self._reader.cancel()
        self._wakeup.set()

    async def aclose(self) -> None:
        """Stop and wait until the reader task has finished."""
        reader = self._reader
        self.stop()
        self._reader = None
        if reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def recv(self) -> av.VideoFrame:
        """Wait for a frame newer than the last one sent and return it scaled, as yuv420p."""
        self._ensure_reader()
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            timeout: float | None = None
            if self._latest is not None and self._latest_seq != self._sent_seq:
                captured, arrival = self._latest
                self._sent_seq = self._latest_seq
                age = min(max(time.time() - captured.capture_time, 0.0), _MAX_CAPTURE_AGE)
                image: Image | None = captured.image
                moment = arrival - age
                break
            if self._source is None:
                now = time.monotonic()
                if self._idle_due is None or now >= self._idle_due:
                    self._idle_due = now + self.idle_interval
                    image, moment = None, now
                    break
                timeout = self._idle_due - now
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

        size = self._size
        if image is None:
            image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        if max(image.shape[0] * image.shape[1], size[0] * size[1]) >= _THREAD_PIXELS:
            frame = await asyncio.to_thread(_to_video_frame, image, size)
        else:
            frame = _to_video_frame(image, size)
        if self._mono_start is None:
            self._mono_start = moment
        pts = max(round((moment - self._mono_start) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = pts
        frame.pts = pts
        frame.time_base = _VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame

    def _ensure_reader(self) -> None:
        if self._reader is not None or self._source is None or self.readyState != "live":
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # started by the first recv(), set_source() or add_local_view() on a loop
        self._reader = asyncio.create_task(
            self._read_loop(self._source), name=f"camera track reader {self.user_id}"
        )

    async def _read_loop(self, source: VideoSource) -> None:
        while True:
            try:
                captured = await source.read()
            except Exception as exc:
                self._source_failed(source, exc)
                return
            if self._latest is not None and self._latest_seq != self._sent_seq:
                self.frames_skipped += 1
            self._latest = (captured, time.monotonic())
            self._latest_seq += 1
            self._wakeup.set()
            if self._views:
                pixels = captured.image.shape[0] * captured.image.shape[1]
                if pixels >= _THREAD_PIXELS:
                    await asyncio.to_thread(self._render_views, captured)
                else:
                    self._render_views(captured)

    def _render_views(self, captured: CapturedFrame) -> None:
        for view, params in list(self._views):
            try:
                image = render(captured.image, params, view.size)
                view.on_frame(RenderedFrame(self.user_id, image, captured.capture_time))
            except Exception:
                logger.exception("local view %r failed", view)

    def _source_failed(self, source: VideoSource, exc: Exception) -> None:
        if source is not self._source:
            return
        error = _device_error(source.name, exc, ErrorCode.CAMERA_STOPPED)
        logger.warning("video source %s stopped delivering: %s", source.name, error)
        self._source = None
        self._reader = None
        self._latest = None
        self._idle_due = None
        self._wakeup.set()
        if self.on_error is not None:
            self.on_error(error)


class MicrophoneTrack(AudioStreamTrack):
    """An audio track sending s16 mono 48 kHz 20 ms frames from a swappable source.

    pts count samples (time_base 1/48000). The source paces the track; without a source the
    track sends silence paced by a monotonic schedule. ``process`` (the capture processing)
    is applied to every block of the source before anything else sees it. ``muted`` sends
    silence while still reading the source. ``on_error`` is called when the source fails;
    the track then sends silence.
    """

    def __init__(
        self,
        source: AudioSource | None = None,
        on_error: Callable[[DeviceError], None] | None = None,
    ) -> None:
        super().__init__()
        self._source = source
        self.on_error = on_error
        self.on_block: Callable[[Block], None] | None = None
        """Called with every block sent (the local volume meter listens here)."""
        self.process: Callable[[Block], Awaitable[Block]] | None = None
        """Applied to every source block (echo cancellation, noise suppression, gain)."""
        self.muted = False
        self._pts = 0
        self._due: float | None = None

    @property
    def source(self) -> AudioSource | None:
        """The current source."""
        return self._source

    def set_source(self, source: AudioSource | None) -> None:
        """Take blocks from ``source`` from the next frame on (None: silence)."""
        self._source = source

    async def recv(self) -> av.AudioFrame:
        """The next 20 ms frame."""
        if self.readyState != "live":
            raise MediaStreamError
        block = await self._next_block()
        if self.readyState != "live":
            raise MediaStreamError
        if self.muted:
            block = np.zeros(BLOCK_SAMPLES, dtype=np.int16)
        if self.on_block is not None:
            self.on_block(block)
        frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = _AUDIO_TIME_BASE
        self._pts += BLOCK_SAMPLES
        return frame

    async def _next_block(self) -> Block:
        source = self._source
        if source is not None:
            try:
                block = np.asarray(await source.read())
            except Exception as exc:
                self._source_failed(source, exc)
            else:
                if block.dtype == np.int16 and block.shape == (BLOCK_SAMPLES,):
                    self._due = None
                    if self.process is not None:
                        block = await self.process(block)
                    return block
                logger.warning(
                    "audio source %s gave a %s %s block; sending silence",
                    source.name, block.dtype, block.shape,
                )
        now = time.monotonic()
        if self._due is None or now - self._due > _RESYNC_SECONDS:
            self._due = now
        if self._due > now:
            await asyncio.sleep(self._due - now)
        self._due += BLOCK_SECONDS
        return np.zeros(BLOCK_SAMPLES, dtype=np.int16)

    def _source_failed(self, source: AudioSource, exc: Exception) -> None:
        if source is not self._source:
            return
        error = _device_error(source.name, exc, ErrorCode.MIC_START_FAIL)
        logger.warning("audio source %s stopped delivering: %s", source.name, error)
        self._source = None
        if self.on_error is not None:
            self.on_error(error)
