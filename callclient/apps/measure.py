"""Measurements of received media: frame rate and glass-to-glass latency from the stamp, and
what was heard.

Latency is ``received_time - capture_time``: the capture time is read from the stamp the
sender's :class:`~callclient.media.virtual.VirtualCamera` draws into every frame, the received
time is when the engine got the decoded frame. Both are ``time.time()`` on the same machine
in the loopback and the demo (across machines it includes their clock offset).

:class:`AnalyserView` reads the stamp of *every* frame, in a worker thread (about 1 ms at
640x360 and 6 ms at 1920x1080), fed by a bounded queue: when that thread falls behind, the
oldest frames are skipped for the latency (not for the frame count) and counted in
:attr:`VideoSummary.unread`.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from callclient.apps.worker import DroppingWorker
from callclient.media.analysis import dominant_frequency, rms_dbfs
from callclient.media.base import BLOCK_SECONDS, MemoryView, RenderedFrame, VideoView
from callclient.media.pattern import read_stamp

__all__ = [
    "AnalyserView",
    "AudioMeter",
    "AudioSummary",
    "FrameMeter",
    "VideoSummary",
    "percentile",
]


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` (0..1) percentile of ``values`` by linear interpolation."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class VideoSummary:
    """Video received from one user over a time window."""

    frames: int
    fps: float
    latency_median_ms: float | None
    latency_p95_ms: float | None
    stamps_read: int
    """Frames whose stamp was read (the latency samples)."""
    unread: int
    """Frames counted but not analysed (no stamp, or skipped by a busy analyser)."""
    first_frame_time: float | None


class FrameMeter:
    """Frame times and stamp latencies of one received stream. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._latencies: list[tuple[float, float]] = []

    def count(self, received_time: float) -> None:
        """Count one frame received at ``received_time``."""
        with self._lock:
            self._times.append(received_time)

    def read(self, image: npt.NDArray[np.uint8], received_time: float) -> float | None:
        """Read the stamp of ``image``; record and return the latency in seconds (or None)."""
        found = read_stamp(image, rotations=False)
        if found is None:
            return None
        latency = received_time - found[1]
        with self._lock:
            self._latencies.append((received_time, latency))
        return latency

    @property
    def frames(self) -> int:
        """Frames counted so far."""
        with self._lock:
            return len(self._times)

    @property
    def first_frame_time(self) -> float | None:
        """When the first frame was received."""
        with self._lock:
            return self._times[0] if self._times else None

    def summary(self, since: float | None = None, until: float | None = None) -> VideoSummary:
        """Frames, fps and latency of the frames received within ``[since, until]``.

        Without a window the fps is measured from the first to the last frame.
        """
        with self._lock:
            times = [t for t in self._times if _within(t, since, until)]
            latencies = [lat for t, lat in self._latencies if _within(t, since, until)]
            first = self._times[0] if self._times else None
        if since is not None and until is not None:
            span = until - since
            fps = len(times) / span if span > 0 else 0.0
        elif len(times) >= 2:
            fps = (len(times) - 1) / (times[-1] - times[0])
        else:
            fps = 0.0
        millis = [lat * 1000.0 for lat in latencies]
        return VideoSummary(
            frames=len(times),
            fps=fps,
            latency_median_ms=statistics.median(millis) if millis else None,
            latency_p95_ms=percentile(millis, 0.95) if millis else None,
            stamps_read=len(millis),
            unread=len(times) - len(millis),
            first_frame_time=first,
        )


def _within(value: float, since: float | None, until: float | None) -> bool:
    return (since is None or value >= since) and (until is None or value <= until)


class AnalyserView(VideoView):
    """A view that counts every frame, reads every frame's stamp in a thread, keeps the last.

    ``max_pending`` bounds the frames waiting for the analyser; :meth:`close` stops it.
    """

    def __init__(self, size: tuple[int, int] | None = None, max_pending: int = 4) -> None:
        self.size = size
        self.meter = FrameMeter()
        self._memory = MemoryView(keep=1)
        self._worker: DroppingWorker[RenderedFrame] = DroppingWorker(
            "stamp reader", self._analyse, max_pending
        )

    def on_frame(self, frame: RenderedFrame) -> None:
        """Count the frame and queue it for the stamp reader; never blocks."""
        self.meter.count(frame.received_time)
        self._memory.on_frame(frame)
        self._worker.put(frame)

    @property
    def last(self) -> RenderedFrame | None:
        """The newest frame, or None before the first."""
        return self._memory.last

    async def wait_frames(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until ``n`` frames in total arrived; ``TimeoutError`` after ``timeout``."""
        await self._memory.wait_frames(n, timeout)

    def summary(self, since: float | None = None, until: float | None = None) -> VideoSummary:
        """See :meth:`FrameMeter.summary`."""
        return self.meter.summary(since, until)

    def close(self) -> None:
        """Analyse what is queued and stop the thread. Idempotent; blocks briefly."""
        self._worker.close()

    def _analyse(self, frame: RenderedFrame) -> None:
        self.meter.read(frame.image, frame.received_time)


@dataclass(frozen=True)
class AudioSummary:
    """Audio received from one user over a time window."""

    blocks: int
    seconds: float
    dominant_hz: float | None
    """Strongest frequency of the last second received (None if silent or nothing)."""
    level_dbfs: float | None


class AudioMeter:
    """Counts the 20 ms blocks received from one user and keeps the last second of them."""

    def __init__(self, keep_blocks: int = 50) -> None:
        self._times: list[float] = []
        self.started = asyncio.Event()
        """Set at the first block."""
        self._recent: collections.deque[npt.NDArray[np.int16]] = collections.deque(
            maxlen=keep_blocks
        )

    def add(self, block: npt.NDArray[np.int16], received_time: float) -> None:
        """Count a block received at ``received_time`` (event loop only)."""
        self._times.append(received_time)
        self._recent.append(block)
        self.started.set()

    @property
    def first_time(self) -> float | None:
        """When the first block was received."""
        return self._times[0] if self._times else None

    def summary(self, since: float | None = None, until: float | None = None) -> AudioSummary:
        """Blocks within ``[since, until]``; pitch and level of the last second received."""
        blocks = sum(1 for t in self._times if _within(t, since, until))
        dominant: float | None = None
        level: float | None = None
        if self._recent:
            samples = np.concatenate(list(self._recent))
            level = rms_dbfs(samples)
            if level > -60.0:
                dominant = dominant_frequency(samples)
        return AudioSummary(blocks, blocks * BLOCK_SECONDS, dominant, level)
