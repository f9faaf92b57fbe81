"""Measurements of received media: frame rate and glass-to-glass latency from the stamp, and
what was heard.

Latency is ``received_time - capture_time``: the capture time is read from the stamp the
sender's :class:`~callclient.media.virtual.VirtualCamera` draws into every frame, the received
time is when the engine got the decoded frame. Both are ``time.time()`` on the same machine
in the loopback and the demo (across machines it includes their clock offset).

:class:`StampView` reads the stamp of *every* frame, in a worker thread (only the centre of
the frame, where the stamp is), fed by a bounded queue: when that thread falls behind, the
oldest frames are skipped for the latency (not for the frame count) and counted in
:attr:`VideoSummary.unread`. It also times when each frame reached the view, so benchmarks
read glass-to-glass latency (render - capture) from the same instrument.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from callclient.apps.worker import DroppingWorker
from callclient.media.analysis import dominant_frequency, rms_dbfs
from callclient.media.base import BLOCK_SECONDS, MemoryView, RenderedFrame, VideoView
from callclient.media.pattern import read_stamp

__all__ = [
        "AudioMeter",
    "AudioSummary",
    "FrameMeter",
    "StampView",
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
    """Frame times and stamp latencies of one received stream. Thread-safe.

    Each frame has the time the engine received it (decoded) and, for views, the time it
    reached the view (rendered); a stamp read gives both latencies: received - captured and
    rendered - captured ("glass to glass").
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._times: list[float] = []
        self._render_times: list[float] = []
        self._latencies: list[tuple[float, float]] = []
        self._samples: list[tuple[float, float, float]] = []
        self.unreadable = 0
        """Frames whose stamp could not be read."""

    def count(self, received_time: float, rendered_time: float | None = None) -> None:
        """Count one frame received at ``received_time`` (and shown at ``rendered_time``)."""
        with self._lock:
            self._times.append(received_time)
            if rendered_time is not None:
                self._render_times.append(rendered_time)

    def read(self, image: npt.NDArray[np.uint8], received_time: float,
             rendered_time: float | None = None) -> float | None:
        """Read the stamp of ``image``; record and return the receive latency (s) or None."""
        found = read_stamp(_stamp_region(image), rotations=False)
        if found is None:
            with self._lock:
                self.unreadable += 1
            return None
        capture = found[1]
        latency = received_time - capture
        with self._lock:
            self._latencies.append((received_time, latency))
            if rendered_time is not None:
                self._samples.append((rendered_time, rendered_time - capture, latency))
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

    @property
    def first_render_time(self) -> float | None:
        """When the first frame reached the view."""
        with self._lock:
            return self._render_times[0] if self._render_times else None

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

    def render_window(self, since: float, until: float) -> dict[str, Any]:
        """Frames and fps by render time within ``[since, until]``, with every latency (ms)."""
        with self._lock:
            times = [t for t in self._render_times if since <= t <= until]
            samples = [s for s in self._samples if since <= s[0] <= until]
            unreadable = self.unreadable
        span = until - since
        return {
            "frames": len(times),
            "fps": len(times) / span if span > 0 else 0.0,
            "latency_ms": [round(s[1] * 1000.0, 2) for s in samples],
            "recv_latency_ms": [round(s[2] * 1000.0, 2) for s in samples],
            "stamps_read": len(samples),
            "unreadable": unreadable,
        }


def _stamp_region(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """The centred part of ``image`` that holds the stamp (the centre stays exactly central).

    Reading only this part costs a fraction of the whole frame at 720p and 1080p.
    """
    height, width = image.shape[:2]
    short = min(width, height)
    # The stamp covers 17/30 x 10/30 of the short side with its margin: keep 0.64 x 0.4.
    margin_x = max(0, (width - int(short * 0.64)) // 2)
    margin_y = max(0, (height - int(short * 0.40)) // 2)
    return image[margin_y : height - margin_y, margin_x : width - margin_x]


def _within(value: float, since: float | None, until: float | None) -> bool:
    return (since is None or value >= since) and (until is None or value <= until)


class StampView(VideoView):
    """The one stamp-reading view: counts every frame, reads stamps in a thread, keeps the last.

    ``on_frame`` records ``time.time()`` (the render time) and queues the frame for the stamp
    reader (:class:`~callclient.apps.worker.DroppingWorker`): at most ``max_pending`` wait, older
    ones are skipped for the latency (not for the count, see :attr:`VideoSummary.unread`).
    With ``read_stamps=False`` frames are only counted. The loopback, the demo, the bot's
    recorder and the benchmarks all measure with it.
    """

    thread_ids: ClassVar[set[int]] = set()
    """Native ids of every live stamp reader thread (a CPU meter leaves them out)."""

    def __init__(self, size: tuple[int, int] | None = None, max_pending: int = 4,
                 read_stamps: bool = True) -> None:
        self.size = size
        self.meter = FrameMeter()
        self._memory = MemoryView(keep=1)
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self.first_frame = asyncio.Event()
        """Set at the first frame (create the view on the loop that waits for it)."""
        self._worker: DroppingWorker[tuple[RenderedFrame, float]] | None = None
        if read_stamps:
            self._worker = DroppingWorker("stamp reader", self._analyse, max_pending,
                                          on_start=StampView.thread_ids.add,
                                          on_stop=StampView.thread_ids.discard)

    def on_frame(self, frame: RenderedFrame) -> None:
        """Count the frame and queue it for the stamp reader; never blocks."""
        now = time.time()
        first = self.meter.frames == 0
        self.meter.count(frame.received_time, now)
        self._memory.on_frame(frame)
        if first and self._loop is not None:
            self._loop.call_soon_threadsafe(self.first_frame.set)
        if self._worker is not None:
            self._worker.put((frame, now))

    @property
    def last(self) -> RenderedFrame | None:
        """The newest frame, or None before the first."""
        return self._memory.last

    @property
    def dropped(self) -> int:
        """Frames the stamp reader skipped because it was behind."""
        return self._worker.dropped if self._worker is not None else 0

    async def wait_frames(self, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until ``n`` frames in total arrived; ``TimeoutError`` after ``timeout``."""
        await self._memory.wait_frames(n, timeout)

    def summary(self, since: float | None = None, until: float | None = None) -> VideoSummary:
        """See :meth:`FrameMeter.summary`."""
        return self.meter.summary(since, until)

    def window(self, since: float, until: float) -> dict[str, Any]:
        """See :meth:`FrameMeter.render_window`; also the frames the reader skipped."""
        return {**self.meter.render_window(since, until), "dropped": self.dropped}

    def close(self) -> None:
        """Analyse what is queued and stop the thread. Idempotent; blocks briefly."""
        if self._worker is not None:
            self._worker.close()

    def _analyse(self, item: tuple[RenderedFrame, float]) -> None:
        frame, rendered = item
        self.meter.read(frame.image, frame.received_time, rendered)


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
