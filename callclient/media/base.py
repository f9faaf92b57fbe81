"""Device interfaces: video and audio sources, audio sinks and video views.

Every device is asynchronous and paces itself: ``read()`` waits for the next frame or block.
Audio is always 48 kHz mono int16 in 20 ms blocks of :data:`BLOCK_SAMPLES` samples.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BLOCK_SAMPLES",
    "BLOCK_SECONDS",
    "SAMPLE_RATE",
    "AudioSink",
    "AudioSource",
    "Block",
    "CapturedFrame",
    "MemoryView",
    "RenderedFrame",
    "VideoSource",
    "VideoView",
]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
"""Audio sample rate of every source, sink and track, in Hz."""
BLOCK_SAMPLES = 960
"""Samples in one 20 ms audio block."""
BLOCK_SECONDS = BLOCK_SAMPLES / SAMPLE_RATE
"""Duration of one audio block in seconds (0.02)."""

ImageArray = npt.NDArray[np.uint8]
Block = npt.NDArray[np.int16]
"""One block of int16 mono samples at 48 kHz (20 ms, :data:`BLOCK_SAMPLES`, unless said)."""


@dataclass(frozen=True)
class CapturedFrame:
    """One camera frame: an H x W x 3 uint8 BGR image, its capture time and its index."""

    image: ImageArray
    capture_time: float
    """Wall-clock capture time, ``time.time()`` seconds."""
    index: int
    """Consecutive number of the frame since the source started (0, 1, 2, ...)."""


@dataclass(frozen=True)
class RenderedFrame:
    """A frame rendered for one user's view (fill/fit, rotation and size already applied)."""

    user_id: str
    image: ImageArray
    received_time: float
    """Wall-clock time the frame was received or captured, ``time.time()`` seconds."""


class VideoSource(ABC):
    """A camera: ``start()``, then ``read()`` paced frames, then ``stop()``."""

    name: str = "video source"
    device_id: str = ""
    """Its id in the device lists of ``on_devices_updated`` (a camera's path, an audio
    device's PortAudio name or index); ``""`` for the system default and virtual devices."""

    @abstractmethod
    async def start(self) -> None:
        """Open the device; raise :class:`~callclient.errors.DeviceError` if it cannot."""

    @abstractmethod
    async def read(self) -> CapturedFrame:
        """Wait for the next frame; raise ``DeviceError`` if the device stops delivering."""

    @abstractmethod
    async def stop(self) -> None:
        """Close the device. Idempotent."""


class AudioSource(ABC):
    """A microphone delivering 20 ms int16 mono blocks at 48 kHz, paced in real time."""

    name: str = "audio source"
    acoustic: bool = False
    """Whether it picks up a room (a real microphone): audio processing is on by default."""

    @property
    def input_latency(self) -> float:
        """Seconds from the sound reaching the device to its block being read (0: unknown)."""
        return 0.0

    device_id: str = ""
    """Its id in the device lists of ``on_devices_updated`` (a camera's path, an audio
    device's PortAudio name or index); ``""`` for the system default and virtual devices."""

    @abstractmethod
    async def start(self) -> None:
        """Open the device; raise ``DeviceError`` if it cannot."""

    @abstractmethod
    async def read(self) -> npt.NDArray[np.int16]:
        """Wait for the next block: int16, shape ``(BLOCK_SAMPLES,)``."""

    @abstractmethod
    async def stop(self) -> None:
        """Close the device. Idempotent."""


class AudioSink(ABC):
    """A speaker that pulls 20 ms int16 mono blocks whenever it needs one."""

    name: str = "audio sink"
    device_id: str = ""
    """Its id in the device lists of ``on_devices_updated`` (a camera's path, an audio
    device's PortAudio name or index); ``""`` for the system default and virtual devices."""

    @property
    def output_latency(self) -> float:
        """Seconds from a block being pulled to its sound leaving the device (0: unknown)."""
        return 0.0

    @abstractmethod
    async def start(self, pull: Callable[[], npt.NDArray[np.int16]]) -> None:
        """Start playing; ``pull()`` is called for each block, possibly from another thread."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop playing. Idempotent."""


class VideoView(ABC):
    """Where one user's rendered video goes; ``size`` is the target (w, h) or None (native)."""

    size: tuple[int, int] | None = None

    @abstractmethod
    def on_frame(self, frame: RenderedFrame) -> None:
        """Take one rendered frame. Must not block; may be called from any thread."""


class MemoryView(VideoView):
    """A view that keeps the last ``keep`` frames in memory and counts every frame.

    Thread-safe: ``on_frame`` may be called from any thread; ``wait_frames`` runs on a loop.
    """

    def __init__(self, size: tuple[int, int] | None = None, keep: int = 1) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.size = size
        self._lock = threading.Lock()
        self._frames: deque[RenderedFrame] = deque(maxlen=keep)
        self._count = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def count(self) -> int:
        """Frames received since creation."""
        with self._lock:
            return self._count

    @property
    def frames(self) -> list[RenderedFrame]:
        """The kept frames, oldest first."""
        with self._lock:
            return list(self._frames)

    @property
    def last(self) -> RenderedFrame | None:
        """The newest frame, or None before the first."""
        with self._lock:
            return self._frames[-1] if self._frames else None

    def on_frame(self, frame: RenderedFrame) -> None:
        """Keep the frame and wake the waiters whose count is reached."""
        with self._lock:
            self._frames.append(frame)
            self._count += 1
            ready = [fut for n, fut in self._waiters if self._count >= n]
            self._waiters = [(n, fut) for n, fut in self._waiters if self._count < n]
        for fut in ready:
            loop = fut.get_loop()
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                _resolve(fut)
            elif not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, fut)

    async def wait_frames(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until at least ``n`` frames in total were received; TimeoutError after timeout."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._count >= n:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((n, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"view got {self.count} frames, expected {n} within {timeout} s"
            ) from None
        finally:
            with self._lock:
                self._waiters = [(m, f) for m, f in self._waiters if f is not fut]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
