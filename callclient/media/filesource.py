"""A camera that plays a video file: PyAV decodes it in a thread, looping at its frame rate."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from callclient.errors import DeviceError, ErrorCode
from callclient.media.base import CapturedFrame, VideoSource
from callclient.media.tracks import frame_to_bgr

__all__ = ["FileVideoSource", "media_streams"]

logger = logging.getLogger(__name__)


def media_streams(path: str | Path) -> tuple[bool, bool]:
    """``(has_audio, has_video)`` of a media file; ``DeviceError`` if it cannot be opened."""
    try:
        with av.open(str(path)) as container:
            return bool(container.streams.audio), bool(container.streams.video)
    except (OSError, av.FFmpegError) as exc:
        raise DeviceError(f"cannot open {str(path)!r}: {exc}", ErrorCode.MIC_START_FAIL) from exc


class FileVideoSource(VideoSource):
    """Frames of a video file, paced at its frame rate (``fps`` overrides), looping by default.

    Decoding runs in a worker thread (``asyncio.to_thread``), one frame per :meth:`read`.
    Like :class:`~callclient.media.virtual.VirtualCamera`, a consumer that falls behind gets
    the next frame at once and the schedule restarts, so no backlog builds up.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        loop: bool = True,
        fps: float | None = None,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.loop = loop
        self.name = name or f"file camera {self.path.name}"
        self.fps = fps or 0.0
        self._container: Any = None
        self._frames: Iterator[av.VideoFrame] = iter(())
        self._running = False
        self._index = 0
        self._next_due = 0.0
        self._lock = asyncio.Lock()

    @property
    def running(self) -> bool:
        """Whether the source is started."""
        return self._running

    async def start(self) -> None:
        """Open the file (in a thread). Idempotent."""
        if self._running:
            return
        await asyncio.to_thread(self._open)
        self._running = True
        self._next_due = time.monotonic()

    async def stop(self) -> None:
        """Close the file. Idempotent."""
        self._running = False
        async with self._lock:
            await asyncio.to_thread(self._close)

    async def read(self) -> CapturedFrame:
        """Wait for the next frame's time, then decode it."""
        self._check_running()
        period = 1.0 / self.fps
        delay = self._next_due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            self._check_running()
        elif delay < -period:
            self._next_due = time.monotonic()
        self._next_due += period
        async with self._lock:
            self._check_running()
            image = await asyncio.to_thread(self._decode_next)
        index = self._index
        self._index += 1
        return CapturedFrame(image, time.time(), index)

    def _check_running(self) -> None:
        if not self._running:
            raise DeviceError(f"{self.name} is not started", ErrorCode.CAMERA_STOPPED)

    def _open(self) -> None:
        self._close()
        try:
            container = av.open(str(self.path))
            stream = container.streams.video[0]
        except (OSError, IndexError, av.FFmpegError) as exc:
            raise DeviceError(
                f"cannot play video file {str(self.path)!r}: {exc}", ErrorCode.CAMERA_START_FAIL
            ) from exc
        if not self.fps:
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 30.0
            if not 1.0 <= self.fps <= 120.0:
                self.fps = 30.0
        stream.thread_type = "AUTO"
        self._container = container
        self._frames = container.decode(stream)

    def _close(self) -> None:
        container, self._container = self._container, None
        self._frames = iter(())
        if container is not None:
            container.close()

    def _decode_next(self) -> npt.NDArray[np.uint8]:
        for attempt in range(2):
            try:
                frame = next(self._frames)
            except StopIteration:
                frame = None
            except av.FFmpegError as exc:
                logger.warning("decoding %s failed: %s", self.path, exc)
                frame = None
            if frame is not None:
                return frame_to_bgr(frame)
            if not self.loop or attempt:
                break
            self._open()
        raise DeviceError(f"{self.name}: no more frames", ErrorCode.CAMERA_STOPPED)
