"""Measuring instruments shared by the stack bench's participant processes.

* :class:`~callclient.apps.measure.StampView` (the project's one stamp-reading view) is the
  "glass" end of the video path: it takes ``time.time()`` when a rendered frame reaches it and
  reads the frame's stamp (capture time) in its own thread, so the latency is ``render time -
  capture time`` and reading costs the media path nothing but a queue append.
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
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import psutil

from callclient.apps.measure import StampView
from callclient.media.base import (
    BLOCK_SAMPLES,
    SAMPLE_RATE,
    CapturedFrame,
)
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
    return {name: view.meter.first_render_time for name, view in views.items()}


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
