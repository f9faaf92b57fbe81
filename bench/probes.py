"""Measuring instruments shared by the stack bench's participant processes.

* :class:`StampView` is the "glass" end of the video path: a view that takes ``time.time()``
  when a rendered frame reaches it and reads the frame's stamp (capture time) in its own
  thread, so the latency is ``render time - capture time`` and reading costs the media path
  nothing but a queue append. Only the centre of the frame (where the stamp is) is analysed.
* :class:`ClickMicrophone` is the "mouth": a virtual microphone playing a click train that
  records the wall time each click leaves it. :class:`OnsetDetector` finds the clicks again
  at the "ear" (:class:`RecordingSpeaker`, the virtual speaker's pulled output, or any tap).
* :class:`CountingCamera` counts the frames captured (for encodes per captured frame).
* :class:`CpuMeter` measures a process's CPU over a window, with and without the threads of
  the instruments themselves.
* :func:`serve` runs a participant's JSON-lines command loop on stdin/stdout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import IO, Any, ClassVar

import numpy as np
import numpy.typing as npt
import psutil

from callclient.media.base import (
    BLOCK_SAMPLES,
    SAMPLE_RATE,
    CapturedFrame,
    RenderedFrame,
    VideoView,
)
from callclient.media.pattern import read_stamp
from callclient.media.virtual import (
    Sequence,
    Silence,
    Tone,
    VirtualCamera,
    VirtualMicrophone,
    VirtualSpeaker,
)

__all__ = [
    "CLICK_PERIOD",
    "ClickMicrophone",
    "CountingCamera",
    "CpuMeter",
    "OnsetDetector",
    "Participant",
    "RecordingSpeaker",
    "StampView",
    "die_with_parent",
    "serve",
    "wait_first_frames",
]

logger = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
Block = npt.NDArray[np.int16]
Dispatch = Callable[[str, dict[str, Any]], Awaitable[Any]]

CLICK_PERIOD = 0.5
"""Seconds between two clicks of the click train."""
CLICK_SECONDS = 0.005
CLICK_HZ = 1000.0
_ONSET_LEVEL = 0.3 * 32767
"""A click starts at the first sample above 30 % of full scale."""
_ONSET_GAP = 0.2
"""Seconds after an onset during which no new onset is detected (the click's own tail)."""


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (a ``preexec_fn``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# ---------------------------------------------------------------------------------- video


async def wait_first_frames(
    views: dict[str, StampView], within: float
) -> dict[str, float | None]:
    """Wait up to ``within`` s until every view rendered a frame; their first render times."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            for view in views.values():
                await view.first_frame.wait()
    return {name: view.first_time for name, view in views.items()}


def _stamp_region(image: Image) -> Image:
    """The centred part of ``image`` that holds the stamp (the centre stays exactly central)."""
    height, width = image.shape[:2]
    short = min(width, height)
    # The stamp covers 17/30 x 10/30 of the short side with its margin: keep 0.64 x 0.4.
    margin_x = max(0, (width - int(short * 0.64)) // 2)
    margin_y = max(0, (height - int(short * 0.40)) // 2)
    return image[margin_y : height - margin_y, margin_x : width - margin_x]


class StampView(VideoView):
    """A view timing every rendered frame and reading its stamp in a worker thread.

    ``on_frame`` records ``time.time()`` (the render time) and queues the frame; the worker
    reads the stamp and stores ``(render time, render latency, receive latency)`` where the
    receive latency uses the frame's own ``received_time`` (when the client got the decoded
    frame, before rendering). At most ``max_pending`` frames wait; older ones are dropped
    from the latency samples (they are still counted). With ``read_stamps=False`` frames are
    only counted.
    """

    thread_ids: ClassVar[set[int]] = set()
    """Native ids of every live stamp reader thread in this process (excluded from CPU)."""

    def __init__(self, read_stamps: bool = True, max_pending: int = 4) -> None:
        self.size = None
        self.read_stamps = read_stamps
        self.max_pending = max_pending
        self._cond = threading.Condition()
        self._pending: collections.deque[tuple[Image, float, float]] = collections.deque()
        self._closing = False
        self.render_times: list[float] = []
        self.samples: list[tuple[float, float, float]] = []
        self.dropped = 0
        self.unreadable = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self.first_frame = asyncio.Event()
        """Set once the first frame was rendered (create the view on the loop that waits)."""
        if read_stamps:
            self._thread = threading.Thread(target=self._run, name="stamp reader", daemon=True)
            self._thread.start()

    @property
    def first_time(self) -> float | None:
        """Render time of the first frame, None before it."""
        with self._cond:
            return self.render_times[0] if self.render_times else None

    def on_frame(self, frame: RenderedFrame) -> None:
        """Time the frame and queue it for the stamp reader (never blocks)."""
        now = time.time()
        with self._cond:
            self.render_times.append(now)
            if len(self.render_times) == 1 and self._loop is not None:
                self._loop.call_soon_threadsafe(self.first_frame.set)
            if not self.read_stamps or self._closing:
                return
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append((frame.image, frame.received_time, now))
            self._cond.notify()

    def window(self, since: float, until: float) -> dict[str, Any]:
        """Frames, fps and latencies (ms) of the frames rendered within ``[since, until]``."""
        with self._cond:
            times = [t for t in self.render_times if since <= t <= until]
            samples = [s for s in self.samples if since <= s[0] <= until]
            dropped, unreadable = self.dropped, self.unreadable
        span = until - since
        return {
            "frames": len(times),
            "fps": len(times) / span if span > 0 else 0.0,
            "latency_ms": [round(s[1] * 1000.0, 2) for s in samples],
            "recv_latency_ms": [round(s[2] * 1000.0, 2) for s in samples],
            "stamps_read": len(samples),
            "dropped": dropped,
            "unreadable": unreadable,
        }

    def close(self) -> None:
        """Read what is queued and stop the worker. Idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10.0)

    def _run(self) -> None:
        ident = threading.get_native_id()
        StampView.thread_ids.add(ident)
        try:
            while True:
                with self._cond:
                    while not self._pending and not self._closing:
                        self._cond.wait()
                    if not self._pending:
                        return
                    image, received, rendered = self._pending.popleft()
                found = read_stamp(_stamp_region(image), rotations=False)
                with self._cond:
                    if found is None:
                        self.unreadable += 1
                    else:
                        capture = found[1]
                        self.samples.append((rendered, rendered - capture, received - capture))
        finally:
            StampView.thread_ids.discard(ident)


class CountingCamera(VirtualCamera):
    """A :class:`VirtualCamera` counting the frames it delivered (:attr:`captured`)."""

    def __init__(self, width: int, height: int, fps: float, label: str = "") -> None:
        super().__init__(width, height, fps, name="bench camera", label=label or None)
        self.captured = 0

    async def read(self) -> CapturedFrame:
        """The next frame, counted."""
        frame = await super().read()
        self.captured += 1
        return frame


# ---------------------------------------------------------------------------------- audio


def click_program() -> Sequence:
    """A full-scale 5 ms 1 kHz burst every :data:`CLICK_PERIOD` seconds on silence."""
    return Sequence(
        ((Tone(CLICK_HZ, 1.0), CLICK_SECONDS), (Silence(), CLICK_PERIOD - CLICK_SECONDS)),
        loop=True,
    )


class OnsetDetector:
    """Finds click onsets in consecutive blocks; :attr:`onsets` holds their wall times.

    A block handed over at wall time ``t`` is taken to start at ``t``: an onset at sample
    ``i`` of it happened at ``t + i / 48000``. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.onsets: list[float] = []
        self._last = -1e9

    def feed(self, block: npt.NDArray[Any], when: float) -> None:
        """Look for an onset in ``block`` (mono samples, int16 scale) played at ``when``."""
        loud = np.flatnonzero(np.abs(block.astype(np.int32)) > _ONSET_LEVEL)
        if loud.size == 0:
            return
        onset = when + float(loud[0]) / SAMPLE_RATE
        with self._lock:
            if onset - self._last >= _ONSET_GAP:
                self.onsets.append(onset)
                self._last = onset

    def since(self, start: float) -> list[float]:
        """Onsets at or after ``start``."""
        with self._lock:
            return [t for t in self.onsets if t >= start]


class ClickMicrophone(VirtualMicrophone):
    """A virtual microphone playing :func:`click_program`; :attr:`emitted` times each click.

    A click's emission time is the wall time its block left :meth:`read` plus the click's
    offset in the block (0 here: the period is a whole number of blocks).
    """

    def __init__(self) -> None:
        super().__init__(click_program(), name="bench click microphone")
        self.emitted = OnsetDetector()

    async def read(self) -> Block:
        """The next block, with its click (if any) recorded."""
        block = await super().read()
        self.emitted.feed(block, time.time())
        return block


class RecordingSpeaker(VirtualSpeaker):
    """A virtual speaker that detects clicks in what it plays, at the time it pulls them."""

    def __init__(self, name: str = "bench speaker") -> None:
        super().__init__(keep_seconds=2.0, name=name)
        self.heard = OnsetDetector()

    async def start(self, pull: Callable[[], Block]) -> None:
        """Start pulling, timing each block as it is played."""

        def timed_pull() -> Block:
            block = pull()
            if isinstance(block, np.ndarray) and block.shape == (BLOCK_SAMPLES,):
                self.heard.feed(block, time.time())
            return block

        await super().start(timed_pull)


# ---------------------------------------------------------------------------------- CPU


class CpuMeter:
    """CPU of this process over a window, as a fraction of one core.

    ``cpu`` counts every thread; ``cpu_app`` leaves out the stamp reader threads (the
    instrument), so it is what the call itself costs.
    """

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._start: tuple[float, float, float] | None = None

    def _sample(self) -> tuple[float, float, float]:
        times = self._proc.cpu_times()
        instrument = sum(
            t.user_time + t.system_time
            for t in self._proc.threads()
            if t.id in StampView.thread_ids
        )
        return time.perf_counter(), float(times.user + times.system), float(instrument)

    def start(self) -> None:
        """Open the window."""
        self._start = self._sample()

    def stop(self) -> dict[str, float]:
        """Close the window: ``{"cpu", "cpu_app", "wall"}``."""
        if self._start is None:
            raise RuntimeError("CpuMeter.stop() before start()")
        end = self._sample()
        wall = end[0] - self._start[0]
        total = end[1] - self._start[1]
        instrument = max(0.0, end[2] - self._start[2])
        return {
            "cpu": total / wall if wall > 0 else 0.0,
            "cpu_app": max(0.0, total - instrument) / wall if wall > 0 else 0.0,
            "wall": wall,
        }


# ---------------------------------------------------------------------------------- protocol


def _protocol_stdout() -> IO[str]:
    """A private copy of stdout for the protocol; fd 1 and ``sys.stdout`` go to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


class Participant:
    """A participant process: JSON commands ``cmd`` run the methods ``cmd_<cmd>(**args)``."""

    async def dispatch(self, cmd: str, args: dict[str, Any]) -> Any:
        """Run command ``cmd`` with ``args``."""
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            raise ValueError(f"unknown command {cmd!r}")
        return await handler(**args)


async def serve(dispatch: Dispatch) -> None:
    """Answer JSON-line requests from stdin until ``quit`` is answered or stdin closes.

    A request is ``{"id": N, "cmd": NAME, "args": {...}}``; each runs in its own task and is
    answered with ``{"id": N, "ok": true, "result": ...}`` or ``{"id": N, "ok": false,
    "error": "..."}``. ``dispatch("quit", {})`` is called on end of input too.
    """
    out = _protocol_stdout()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    done = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()

    def reply(message: dict[str, Any]) -> None:
        out.write(json.dumps(message, separators=(",", ":")) + "\n")
        out.flush()

    async def handle(request: dict[str, Any]) -> None:
        ident = request.get("id")
        cmd = str(request.get("cmd", ""))
        try:
            result = await dispatch(cmd, dict(request.get("args") or {}))
        except Exception as exc:
            logger.error("%s failed:\n%s", cmd, traceback.format_exc())
            reply({"id": ident, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        else:
            reply({"id": ident, "ok": True, "result": result})
        if cmd == "quit":
            done.set()

    async def read_requests() -> None:
        while line := await reader.readline():
            try:
                request = json.loads(line)
            except ValueError:
                logger.error("bad request line %r", line[:200])
                continue
            task = loop.create_task(handle(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if not done.is_set():
            await dispatch("quit", {})
            done.set()

    reading = loop.create_task(read_requests())
    await done.wait()
    reading.cancel()
    for task in list(tasks):
        if task is not asyncio.current_task():
            task.cancel()
    await asyncio.gather(reading, *tasks, return_exceptions=True)


def run_participant(dispatch_factory: Callable[[], Dispatch]) -> int:
    """Entry point of a participant process: logging to stderr, serve, exit status 0."""
    logging.basicConfig(
        level=os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator ends us (also on Ctrl-C)

    async def main() -> None:
        await serve(dispatch_factory())

    asyncio.run(main())
    return 0
