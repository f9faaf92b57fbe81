"""Record each remote user of a call: their video to MP4 and their audio to WAV.

:class:`Recorder` keeps one :class:`UserRecording` per remote user: an :class:`Mp4View` (a
:class:`~callclient.media.base.VideoView`) that encodes H.264 (``libx264``, else MPEG-4 Part 2)
with PyAV, and a :class:`WavWriter` of the user's received audio, fed by
:meth:`CallEngine.add_audio_tap <callclient.engine.CallEngine.add_audio_tap>`. Encoding and
file writes run in worker threads fed by bounded queues that drop the oldest item when full,
so the engine is never blocked. The MP4 timestamps follow the frames' received times
(variable frame rate). Closing a recording flushes the encoder and closes the files, so they
are playable; :meth:`Recorder.attach` wires all of it to an engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import re
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from callclient.apps.measure import AudioMeter, AudioSummary, FrameMeter, VideoSummary
from callclient.apps.worker import DroppingWorker
from callclient.engine import CallEngine
from callclient.media.base import SAMPLE_RATE, RenderedFrame, VideoView
from callclient.observer import CallObserver
from callclient.types import CallMediaType, CallRole, RoomId

__all__ = [
    "Mp4View",
    "Recorder",
    "RecordingInfo",
    "UserRecording",
    "WavWriter",
    "video_codec",
]

logger = logging.getLogger(__name__)

_TIME_BASE = fractions.Fraction(1, 1000)
"""MP4 timestamps are in milliseconds since the first frame."""


def video_codec() -> str:
    """``libx264`` when this PyAV build has it, else ``mpeg4``."""
    try:
        av.codec.Codec("libx264", "w")
    except Exception:
        return "mpeg4"
    return "libx264"


class Mp4View(VideoView):
    """A view that encodes every frame it gets into an MP4 file, in a worker thread.

    The file is created at the first frame, with that frame's size (later frames of another
    size are scaled to it). ``max_pending`` frames may wait for the encoder; beyond that the
    oldest is dropped (:attr:`dropped`). With a ``meter``, the encoder thread also reads each
    frame's stamp into it. :meth:`close` flushes and closes the file; it is idempotent.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        codec: str | None = None,
        fps_hint: int = 30,
        max_pending: int = 30,
        meter: FrameMeter | None = None,
    ) -> None:
        self.path = Path(path)
        self.size = None
        self.codec = codec or video_codec()
        self.fps_hint = fps_hint
        self.meter = meter
        self.frames_written = 0
        self._container: Any = None
        self._stream: Any = None
        self._first_time: float | None = None
        self._last_pts = -1
        self._worker: DroppingWorker[RenderedFrame] = DroppingWorker(
            f"mp4 {self.path.name}", self._encode, max_pending, self._finish
        )

    @property
    def dropped(self) -> int:
        """Frames dropped because the encoder was behind."""
        return self._worker.dropped

    @property
    def created(self) -> bool:
        """Whether the file was created (a frame arrived)."""
        return self._container is not None or self.frames_written > 0

    def on_frame(self, frame: RenderedFrame) -> None:
        """Queue the frame for the encoder; never blocks."""
        if self.meter is not None:
            self.meter.count(frame.received_time)
        self._worker.put(frame)

    def close(self) -> None:
        """Encode what is queued, flush, close the file (blocks until done). Idempotent."""
        self._worker.close()

    # -- worker thread

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        container = av.open(str(self.path), mode="w")
        stream = container.add_stream(self.codec, rate=self.fps_hint)
        assert isinstance(stream, av.VideoStream)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = _TIME_BASE
        stream.codec_context.time_base = _TIME_BASE
        if self.codec == "libx264":
            stream.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "23"}
        else:
            stream.bit_rate = 2_000_000
        self._container = container
        self._stream = stream

    def _encode(self, frame: RenderedFrame) -> None:
        image = frame.image
        if self.meter is not None:
            self.meter.read(image, frame.received_time)
        height, width = image.shape[:2]
        if self._container is None:
            self._open(width - width % 2, height - height % 2)
            self._first_time = frame.received_time
        stream = self._stream
        if (width, height) != (stream.width, stream.height):
            image = np.asarray(
                cv2.resize(image, (stream.width, stream.height), interpolation=cv2.INTER_AREA),
                dtype=np.uint8,
            )
        video = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="bgr24")
        video = video.reformat(format="yuv420p")
        assert self._first_time is not None
        pts = max(round((frame.received_time - self._first_time) * 1000), self._last_pts + 1)
        self._last_pts = pts
        video.pts = pts
        video.time_base = _TIME_BASE
        for packet in stream.encode(video):
            self._container.mux(packet)
        self.frames_written += 1

    def _finish(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        try:
            for packet in self._stream.encode(None):
                container.mux(packet)
        finally:
            container.close()


class WavWriter:
    """Writes 48 kHz mono int16 blocks to a WAV file in a worker thread.

    The file is created at the first block. Up to ``max_pending`` blocks (10 s by default)
    may wait; beyond that the oldest is dropped. :meth:`close` finalizes the header.
    """

    def __init__(self, path: str | Path, max_pending: int = 500) -> None:
        self.path = Path(path)
        self.samples_written = 0
        self._wav: wave.Wave_write | None = None
        self._worker: DroppingWorker[npt.NDArray[np.int16]] = DroppingWorker(
            f"wav {self.path.name}", self._write, max_pending, self._finish
        )

    @property
    def dropped(self) -> int:
        """Blocks dropped because the writer was behind."""
        return self._worker.dropped

    @property
    def created(self) -> bool:
        """Whether the file was created (a block arrived)."""
        return self._wav is not None or self.samples_written > 0

    def write(self, block: npt.NDArray[np.int16]) -> None:
        """Queue a block; never blocks."""
        self._worker.put(block)

    def close(self) -> None:
        """Write what is queued and finalize the file (blocks until done). Idempotent."""
        self._worker.close()

    def _write(self, block: npt.NDArray[np.int16]) -> None:
        if self._wav is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            wav = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed in _finish
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(SAMPLE_RATE)
            self._wav = wav
        self._wav.writeframes(block.astype("<i2").tobytes())
        self.samples_written += block.size

    def _finish(self) -> None:
        wav, self._wav = self._wav, None
        if wav is not None:
            wav.close()


@dataclass(frozen=True)
class RecordingInfo:
    """One finished recording of one remote user."""

    user_id: str
    video_path: Path | None
    """The MP4 file, or None if no video arrived."""
    audio_path: Path | None
    """The WAV file, or None if no audio arrived."""
    video_frames: int
    video_dropped: int
    audio_seconds: float
    video: VideoSummary
    audio: AudioSummary

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form."""
        return {
            "user": self.user_id,
            "video_path": str(self.video_path) if self.video_path else None,
            "audio_path": str(self.audio_path) if self.audio_path else None,
            "video_frames": self.video_frames,
            "video_dropped": self.video_dropped,
            "audio_seconds": round(self.audio_seconds, 3),
            "fps": round(self.video.fps, 2),
            "latency_median_ms": _round(self.video.latency_median_ms),
            "latency_p95_ms": _round(self.video.latency_p95_ms),
            "dominant_hz": _round(self.audio.dominant_hz),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class UserRecording:
    """The MP4 view and the WAV writer of one remote user, with their measurements."""

    def __init__(self, user_id: str, base: Path) -> None:
        self.user_id = user_id
        self.meter = FrameMeter()
        self.audio_meter = AudioMeter()
        self.video = Mp4View(base.with_suffix(".mp4"), meter=self.meter)
        self.audio = WavWriter(base.with_suffix(".wav"))

    def add_audio(self, block: npt.NDArray[np.int16], received_time: float) -> None:
        """Record one received audio block (event loop)."""
        self.audio_meter.add(block, received_time)
        self.audio.write(block)

    def close(self) -> RecordingInfo:
        """Finalize both files (blocking: run it in a thread from async code)."""
        self.video.close()
        self.audio.close()
        return RecordingInfo(
            user_id=self.user_id,
            video_path=self.video.path if self.video.created else None,
            audio_path=self.audio.path if self.audio.created else None,
            video_frames=self.video.frames_written,
            video_dropped=self.video.dropped,
            audio_seconds=self.audio.samples_written / SAMPLE_RATE,
            video=self.meter.summary(),
            audio=self.audio_meter.summary(),
        )


def _safe_name(user_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", user_id).strip(".") or "user"


class Recorder:
    """Recordings of every remote user under ``directory``: ``<user>.mp4`` and ``<user>.wav``.

    A user who comes back (a later call) gets ``<user>-2.*`` and so on; existing files are
    never overwritten. Use :meth:`attach` to record an engine's calls, or :meth:`start`,
    :meth:`audio_tap` and :meth:`finish` directly. :meth:`close` finalizes everything.
    """

    def __init__(
        self,
        directory: str | Path,
        on_finished: Callable[[RecordingInfo], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.on_finished = on_finished
        """Called on the event loop with each recording once its files are final."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.finished: list[RecordingInfo] = []
        """Recordings finalized so far, in order."""
        self._active: dict[str, UserRecording] = {}
        self._names: set[str] = set()
        self._tasks: set[asyncio.Task[RecordingInfo | None]] = set()
        self._engine: CallEngine | None = None
        self._observer: _RecorderObserver | None = None
        self._closed = False

    @property
    def active(self) -> dict[str, UserRecording]:
        """Recordings in progress by user id."""
        return dict(self._active)

    def start(self, user_id: str) -> Mp4View:
        """Start recording ``user_id`` (or return the recording in progress); its video view."""
        if self._closed:
            raise RuntimeError("the recorder is closed")
        recording = self._active.get(user_id)
        if recording is None:
            recording = UserRecording(user_id, self._unique_base(user_id))
            self._active[user_id] = recording
        return recording.video

    def audio_tap(self, user_id: str, block: npt.NDArray[np.int16]) -> None:
        """An :data:`~callclient.media.remote.AudioTap`: record ``block`` of recorded users."""
        recording = self._active.get(user_id)
        if recording is not None:
            recording.add_audio(block, time.time())

    async def finish(self, user_id: str) -> RecordingInfo | None:
        """Finalize ``user_id``'s recording (in a thread); None if none was in progress."""
        recording = self._active.pop(user_id, None)
        if recording is None:
            return None
        info = await asyncio.to_thread(recording.close)
        self.finished.append(info)
        logger.info("recorded %s: %s", user_id, info)
        if self.on_finished is not None:
            try:
                self.on_finished(info)
            except Exception:
                logger.exception("on_finished callback failed")
        return info

    def finish_soon(self, user_id: str) -> None:
        """Start :meth:`finish` in a task owned by the recorder (for sync callbacks)."""
        if user_id not in self._active:
            return
        task = asyncio.get_running_loop().create_task(self.finish(user_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def attach(self, engine: CallEngine) -> None:
        """Record every remote user of ``engine``'s calls from their join to their leave."""
        if self._engine is not None:
            raise RuntimeError("the recorder is already attached")
        self._engine = engine
        self._observer = _RecorderObserver(self, engine)
        engine.add_observer(self._observer)
        engine.add_audio_tap(self.audio_tap)

    def detach(self) -> None:
        """Stop following the engine (recordings in progress go on until finished)."""
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.remove_audio_tap(self.audio_tap)
            if self._observer is not None:
                engine.remove_observer(self._observer)
        self._observer = None

    async def close(self) -> list[RecordingInfo]:
        """Detach, finalize every recording, and return all finished ones. Idempotent."""
        if not self._closed:
            self._closed = True
            self.detach()
            for user_id in list(self._active):
                await self.finish(user_id)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        return list(self.finished)

    def _unique_base(self, user_id: str) -> Path:
        name = _safe_name(user_id)
        candidate, n = name, 1
        while candidate in self._names or any(
            (self.directory / f"{candidate}{ext}").exists() for ext in (".mp4", ".wav")
        ):
            n += 1
            candidate = f"{name}-{n}"
        self._names.add(candidate)
        return self.directory / candidate


class _RecorderObserver(CallObserver):
    """Starts a user's recording when they join and finishes it when they leave."""

    def __init__(self, recorder: Recorder, engine: CallEngine) -> None:
        self._recorder = recorder
        self._engine = engine

    def on_user_join(self, user_id: str) -> None:
        with contextlib.suppress(RuntimeError):
            self._engine.start_remote_view(user_id, self._recorder.start(user_id))

    def on_user_leave(self, user_id: str) -> None:
        self._engine.stop_remote_view(user_id)
        self._recorder.finish_soon(user_id)

    def on_call_end(
        self, room_id: RoomId, call_media_type: CallMediaType, call_role: CallRole,
        total_time: float,
    ) -> None:
        for user_id in self._recorder.active:
            self._engine.stop_remote_view(user_id)
            self._recorder.finish_soon(user_id)

    def on_call_cancelled(self, user_id: str) -> None:
        for remote in self._recorder.active:
            self._engine.stop_remote_view(remote)
            self._recorder.finish_soon(remote)
