"""Virtual devices: a stamped test-pattern camera, a programmable microphone, a recording speaker.

They implement the same interfaces as the real devices and pace themselves in real time
against a monotonic schedule; when the consumer falls behind they skip ahead instead of
building a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt

from callclient.errors import DeviceError, ErrorCode
from callclient.media.base import (
    BLOCK_SAMPLES,
    BLOCK_SECONDS,
    SAMPLE_RATE,
    AudioSink,
    AudioSource,
    Block,
    CapturedFrame,
    VideoSource,
)
from callclient.media.pattern import stamp

__all__ = [
    "AudioFile",
    "Program",
    "Sequence",
    "Silence",
    "Tone",
    "VirtualCamera",
    "VirtualMicrophone",
    "VirtualSpeaker",
]

logger = logging.getLogger(__name__)

_RESYNC_SECONDS = 0.1
"""An audio device later than this behind its schedule restarts the schedule (no burst)."""

# BGR colour bars: white, yellow, cyan, green, magenta, red, blue.
_BARS = [
    (235, 235, 235),
    (16, 235, 235),
    (235, 235, 16),
    (16, 235, 16),
    (235, 16, 235),
    (16, 16, 235),
    (235, 16, 16),
]


class VirtualCamera(VideoSource):
    """A camera drawing colour bars, a moving box and a :mod:`~callclient.media.pattern` stamp.

    Frames are numbered consecutively (0, 1, 2, ...) and each carries its stamp with that
    number and its capture time. ``read()`` paces at ``fps`` against a monotonic schedule;
    a consumer that falls more than one frame behind gets the next frame at once and the
    schedule restarts from now, so no backlog builds up.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 360,
        fps: float = 30.0,
        name: str = "virtual camera",
        label: str | None = None,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"frame size must be at least 32x32, got {width}x{height}")
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.width = width
        self.height = height
        self.fps = float(fps)
        self.name = name
        self.label = label
        self._background: npt.NDArray[np.uint8] | None = None
        self._running = False
        self._index = 0
        self._next_due = 0.0
        self.skipped = 0
        """Times the schedule was restarted because the consumer was late."""

    @property
    def running(self) -> bool:
        """Whether the camera is started."""
        return self._running

    async def start(self) -> None:
        """Precompute the background and start the schedule. Idempotent."""
        if self._running:
            return
        if self._background is None:
            self._background = self._draw_background()
        self._running = True
        self._next_due = time.monotonic()

    async def stop(self) -> None:
        """Stop delivering frames; a pending ``read()`` raises ``DeviceError``. Idempotent."""
        self._running = False

    async def read(self) -> CapturedFrame:
        """Wait for the next scheduled frame and draw it."""
        self._check_running()
        period = 1.0 / self.fps
        delay = self._next_due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
            self._check_running()
        elif delay < -period:
            self.skipped += 1
            self._next_due = time.monotonic()
        self._next_due += period
        index = self._index
        self._index += 1
        capture_time = time.time()
        return CapturedFrame(self.draw(index, capture_time), capture_time, index)

    def draw(self, index: int, capture_time: float) -> npt.NDArray[np.uint8]:
        """Draw frame ``index``: background copy, moving box, stamp."""
        if self._background is None:
            self._background = self._draw_background()
        image = self._background.copy()
        side = max(4, min(self.width, self.height) // 6)
        travel = self.width - side
        phase = (index / self.fps / 4.0) % 1.0  # one round trip every 4 s
        x = int(travel * (2 * phase if phase < 0.5 else 2 - 2 * phase))
        y = int(self.height * 0.75)
        image[y : y + side, x : x + side] = (40, 220, 255)
        image[y + side // 4 : y + side - side // 4, x + side // 4 : x + side - side // 4] = 0
        stamp(image, index, capture_time)
        return image

    def _check_running(self) -> None:
        if not self._running:
            raise DeviceError(f"{self.name} is not started", ErrorCode.CAMERA_STOPPED)

    def _draw_background(self) -> npt.NDArray[np.uint8]:
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        edges = np.linspace(0, self.width, len(_BARS) + 1).astype(int)
        for colour, left, right in zip(_BARS, edges[:-1], edges[1:], strict=True):
            image[: self.height * 2 // 3, left:right] = colour
        ramp = np.linspace(16, 235, self.width).astype(np.uint8)
        image[self.height * 2 // 3 :] = ramp[None, :, None]
        if self.label:
            scale = max(0.4, self.height / 360)
            thickness = max(1, round(2 * scale))
            origin = (round(10 * scale), round(32 * scale))
            cv2.putText(image, self.label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                        thickness * 3, cv2.LINE_AA)
            cv2.putText(image, self.label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (255, 255, 255), thickness, cv2.LINE_AA)
        return image


@dataclass(frozen=True)
class Tone:
    """A sine tone of ``freq_hz`` at ``amplitude`` (0..1 of full scale)."""

    freq_hz: float
    amplitude: float = 0.5


@dataclass(frozen=True)
class Silence:
    """Digital silence."""


@dataclass(frozen=True)
class AudioFile:
    """Any PyAV-decodable audio file, resampled to 48 kHz mono; silence after the end."""

    path: str | Path
    loop: bool = False


@dataclass(frozen=True)
class Sequence:
    """Programs played one after another, each for its number of seconds."""

    items: tuple[tuple[Program, float], ...]
    loop: bool = False


Program = Tone | Silence | AudioFile | Sequence
"""What a :class:`VirtualMicrophone` plays."""


class _Generator:
    """Produces the samples of one program, block by block."""

    def fill(self, count: int) -> Block:
        return np.zeros(count, dtype=np.int16)

    def close(self) -> None:
        """Release resources (files)."""


class _ToneGenerator(_Generator):
    def __init__(self, tone: Tone, phase: float = 0.0) -> None:
        if not 0.0 <= tone.amplitude <= 1.0:
            raise ValueError(f"amplitude must be within 0..1, got {tone.amplitude}")
        self.step = 2 * math.pi * tone.freq_hz / SAMPLE_RATE
        self.scale = tone.amplitude * 32767
        self.phase = phase

    def fill(self, count: int) -> Block:
        phases = self.phase + self.step * np.arange(count)
        self.phase = (self.phase + self.step * count) % (2 * math.pi)
        block: Block = np.rint(self.scale * np.sin(phases)).astype(np.int16)
        return block


class _FileGenerator(_Generator):
    def __init__(self, program: AudioFile) -> None:
        self.path = str(program.path)
        self.loop = program.loop
        self.finished = False
        self.buffer = np.zeros(0, dtype=np.int16)
        self.container: av.container.InputContainer | None = None
        self.frames: Iterator[av.AudioFrame] = iter(())
        self.resampler: av.AudioResampler | None = None
        self.produced_this_pass = 0
        self._open()

    def _open(self) -> None:
        self.close()
        try:
            container = av.open(self.path)
            stream = container.streams.audio[0]
        except (OSError, IndexError, av.FFmpegError) as exc:
            raise DeviceError(
                f"cannot play audio file {self.path!r}: {exc}", ErrorCode.MIC_START_FAIL
            ) from exc
        self.container = container
        self.frames = container.decode(stream)
        self.resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self.produced_this_pass = 0

    def _decode_more(self) -> None:
        assert self.resampler is not None
        try:
            frame: av.AudioFrame | None = next(self.frames)
        except StopIteration:
            frame = None
        except av.FFmpegError as exc:
            logger.warning("decoding %s failed, ending playback: %s", self.path, exc)
            frame = None
        chunks = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        if chunks:
            data = np.concatenate([self.buffer, *chunks]).astype(np.int16)
            self.produced_this_pass += data.size - self.buffer.size
            self.buffer = data
        if frame is None:
            if self.loop and self.produced_this_pass > 0:
                self._open()
            else:
                self.finished = True
                self.close()

    def fill(self, count: int) -> Block:
        while self.buffer.size < count and not self.finished:
            self._decode_more()
        out = np.zeros(count, dtype=np.int16)
        taken = min(count, self.buffer.size)
        out[:taken] = self.buffer[:taken]
        self.buffer = self.buffer[taken:]
        return out

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


class _SequenceGenerator(_Generator):
    def __init__(self, program: Sequence) -> None:
        self.items = [(p, max(0, round(seconds * SAMPLE_RATE))) for p, seconds in program.items]
        self.loop = program.loop and sum(n for _, n in self.items) > 0
        self.position = -1
        self.remaining = 0
        self.current: _Generator = _Generator()

    def _advance(self) -> bool:
        self.current.close()
        self.position += 1
        if self.position >= len(self.items):
            if not self.loop:
                self.current = _Generator()
                return False
            self.position = 0
        program, self.remaining = self.items[self.position]
        self.current = _make_generator(program)
        return True

    def fill(self, count: int) -> Block:
        parts: list[Block] = []
        needed = count
        while needed > 0:
            if self.remaining == 0 and not self._advance():
                parts.append(np.zeros(needed, dtype=np.int16))
                break
            take = min(needed, self.remaining)
            parts.append(self.current.fill(take))
            self.remaining -= take
            needed -= take
        result: Block = np.concatenate(parts) if len(parts) != 1 else parts[0]
        return result

    def close(self) -> None:
        self.current.close()


def _make_generator(program: Program, phase: float = 0.0) -> _Generator:
    if isinstance(program, Tone):
        return _ToneGenerator(program, phase)
    if isinstance(program, Silence):
        return _Generator()
    if isinstance(program, AudioFile):
        return _FileGenerator(program)
    if isinstance(program, Sequence):
        return _SequenceGenerator(program)
    raise TypeError(f"not a microphone program: {program!r}")


class VirtualMicrophone(AudioSource):
    """A microphone playing a :data:`Program`; 20 ms blocks paced in real time.

    ``set_program`` switches live (a tone following a tone keeps its phase); while muted the
    program keeps advancing but the blocks are silent, like a muted real microphone.
    """

    def __init__(self, program: Program | None = None, name: str = "virtual microphone") -> None:
        self.name = name
        self._generator = _make_generator(program if program is not None else Silence())
        self._running = False
        self._next_due: float | None = None
        self.muted = False
        self.blocks = 0
        """Blocks delivered since creation."""

    @property
    def running(self) -> bool:
        """Whether the microphone is started."""
        return self._running

    def set_program(self, program: Program) -> None:
        """Play ``program`` from the next block; ``DeviceError`` if a file cannot be opened."""
        phase = self._generator.phase if isinstance(self._generator, _ToneGenerator) else 0.0
        generator = _make_generator(program, phase)
        self._generator.close()
        self._generator = generator

    def mute(self) -> None:
        """Deliver silence (the program keeps running)."""
        self.muted = True

    def unmute(self) -> None:
        """Deliver the program again."""
        self.muted = False

    async def start(self) -> None:
        """Start the schedule. Idempotent."""
        if not self._running:
            self._running = True
            self._next_due = None

    async def stop(self) -> None:
        """Stop; a pending ``read()`` raises ``DeviceError``. Idempotent."""
        self._running = False

    def close(self) -> None:
        """Release the program's resources (an open file)."""
        self._generator.close()

    async def read(self) -> Block:
        """Wait for the next 20 ms block of the program."""
        self._check_running()
        now = time.monotonic()
        if self._next_due is None or now - self._next_due > _RESYNC_SECONDS:
            self._next_due = now
        delay = self._next_due - now
        if delay > 0:
            await asyncio.sleep(delay)
            self._check_running()
            if self._next_due is None:  # stopped and started again during the sleep
                self._next_due = time.monotonic()
        self._next_due += BLOCK_SECONDS
        block = self._generator.fill(BLOCK_SAMPLES)
        self.blocks += 1
        if self.muted:
            return np.zeros(BLOCK_SAMPLES, dtype=np.int16)
        return block

    def _check_running(self) -> None:
        if not self._running:
            raise DeviceError(f"{self.name} is not started", ErrorCode.MIC_START_FAIL)


class VirtualSpeaker(AudioSink):
    """A speaker that pulls a block every 20 ms and records what it played.

    It keeps the last ``keep_seconds`` in a ring (:meth:`samples`) and, with ``wav_path``,
    appends every block to a 48 kHz mono 16-bit WAV file whose header is valid after every
    write; :meth:`close` finalizes it.
    """

    def __init__(
        self,
        keep_seconds: float = 60.0,
        wav_path: str | Path | None = None,
        name: str = "virtual speaker",
    ) -> None:
        if keep_seconds <= 0:
            raise ValueError(f"keep_seconds must be positive, got {keep_seconds}")
        self.name = name
        self._ring = np.zeros(max(BLOCK_SAMPLES, round(keep_seconds * SAMPLE_RATE)), np.int16)
        self._written = 0
        self._wav_path = Path(wav_path) if wav_path is not None else None
        self._wav: wave.Wave_write | None = None
        self._task: asyncio.Task[None] | None = None
        self.underruns = 0
        """Times the schedule was restarted because the task ran late."""
        self.pull_errors = 0
        """Blocks replaced by silence because ``pull()`` raised or returned a bad block."""

    @property
    def played_samples(self) -> int:
        """Samples played since creation."""
        return self._written

    @property
    def running(self) -> bool:
        """Whether the pulling task runs."""
        return self._task is not None and not self._task.done()

    def samples(self) -> Block:
        """A copy of the last ``keep_seconds`` (or fewer) of played samples, oldest first."""
        size = self._ring.size
        if self._written <= size:
            return self._ring[: self._written].copy()
        start = self._written % size
        return np.concatenate([self._ring[start:], self._ring[:start]])

    async def start(self, pull: Callable[[], Block]) -> None:
        """Start pulling a block from ``pull`` every 20 ms. Starting twice is an error."""
        if self.running:
            raise RuntimeError(f"{self.name} is already started")
        if self._wav_path is not None and self._wav is None:
            try:
                self._wav = wave.open(str(self._wav_path), "wb")  # noqa: SIM115
            except OSError as exc:
                raise DeviceError(
                    f"cannot write {self._wav_path}: {exc}", ErrorCode.SPEAKER_START_FAIL
                ) from exc
            self._wav.setnchannels(1)
            self._wav.setsampwidth(2)
            self._wav.setframerate(SAMPLE_RATE)
        self._task = asyncio.create_task(self._run(pull), name=f"{self.name} pull")

    async def stop(self) -> None:
        """Stop pulling (the WAV file stays open for a later start). Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        """Stop and finalize the WAV file. Idempotent."""
        await self.stop()
        if self._wav is not None:
            self._wav.close()
            self._wav = None

    async def _run(self, pull: Callable[[], Block]) -> None:
        due = time.monotonic()
        while True:
            now = time.monotonic()
            if now - due > _RESYNC_SECONDS:
                self.underruns += 1
                due = now
            if due > now:
                await asyncio.sleep(due - now)
            due += BLOCK_SECONDS
            self._play(self._pull_one(pull))

    def _pull_one(self, pull: Callable[[], Block]) -> Block:
        try:
            block = np.asarray(pull())
        except Exception:
            logger.exception("%s: pull() failed; playing silence", self.name)
            block = np.zeros(0, dtype=np.int16)
        if block.dtype != np.int16 or block.shape != (BLOCK_SAMPLES,):
            self.pull_errors += 1
            return np.zeros(BLOCK_SAMPLES, dtype=np.int16)
        return block

    def _play(self, block: Block) -> None:
        size = self._ring.size
        start = self._written % size
        first = min(BLOCK_SAMPLES, size - start)
        self._ring[start : start + first] = block[:first]
        self._ring[: BLOCK_SAMPLES - first] = block[first:]
        self._written += BLOCK_SAMPLES
        if self._wav is not None:
            self._wav.writeframes(block.astype("<i2").tobytes())
