"""Real devices: cameras through OpenCV, microphones and speakers through sounddevice.

* :class:`OpenCVCamera` opens a camera by index, or a video file or stream by path/URL, so a
  file can stand in for a camera. A daemon thread reads frames and keeps only the newest in a
  single slot; ``read()`` waits for it on the event loop.
* :class:`SoundDeviceMicrophone` and :class:`SoundDeviceSpeaker` run PortAudio streams of
  48 kHz mono int16 in 20 ms blocks; their callbacks never block (the microphone hands blocks
  to the loop through a bounded queue that drops the oldest, the speaker calls ``pull()``).

sounddevice is imported lazily: without the PortAudio library only the audio devices fail,
with a :class:`~callclient.errors.DeviceError` saying what to install.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

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
from callclient.media.deviceset import DeviceSet
from callclient.types import AudioDeviceInfo, AudioPlaybackDevice, Camera, CameraInfo, DeviceList

__all__ = [
    "PORTAUDIO_HINT",
    "OpenCVCamera",
    "SoundDeviceMicrophone",
    "SoundDeviceSpeaker",
    "SystemDeviceProbe",
    "list_devices",
    "load_sounddevice",
    "real_devices",
]

logger = logging.getLogger(__name__)

Image = npt.NDArray[np.uint8]
DeviceSpec = int | str | None
"""A device by index, by name (a unique substring, for audio) or path/URL; None: the default."""

PORTAUDIO_HINT = (
    "PortAudio is not installed: install it with `apt-get install libportaudio2` "
    "(Debian/Ubuntu) or `brew install portaudio` (macOS)"
)
_JOIN_TIMEOUT = 2.0
_MAX_DRAIN = 0.5
"""Longest a stopping speaker waits for the blocks it already pulled to be played."""


def load_sounddevice(code: int = ErrorCode.SPEAKER_START_FAIL) -> Any:
    """Import sounddevice; ``DeviceError(code)`` saying what to install if PortAudio is missing."""
    try:
        import sounddevice
    except OSError as exc:
        raise DeviceError(f"{PORTAUDIO_HINT} ({exc})", code) from exc
    return sounddevice


def _spec(device: DeviceSpec) -> DeviceSpec:
    """``"2"`` (from a command line) means index 2."""
    if isinstance(device, str) and device.strip().isdigit():
        return int(device)
    return device


# ---------------------------------------------------------------------------- camera


class _Capture:
    """One started session of an :class:`OpenCVCamera`: its thread, slot and wake-up event."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.wake = asyncio.Event()
        self.slot: CapturedFrame | None = None
        self.captured = 0
        self.dropped = 0
        self.last_frame = time.monotonic()
        self.error: DeviceError | None = None
        self.thread: threading.Thread | None = None

    def notify(self) -> bool:
        """Wake the reader on the loop; False when the loop is gone."""
        try:
            self.loop.call_soon_threadsafe(self.wake.set)
        except RuntimeError:
            return False
        return True


class OpenCVCamera(VideoSource):
    """A camera read with ``cv2.VideoCapture``: a device index, a video file, or a stream URL.

    ``width``/``height``/``fps`` are hints for devices. A file is paced at its own frame rate
    (``fps`` if it has none) and starts over at its end when ``loop`` is true; otherwise it
    ends there and ``read()`` raises ``DeviceError(CAMERA_STOPPED)`` once the last frame is taken.
    A source delivering no frame for ``stall_timeout`` seconds, or failing to read, raises the
    same. Frame indices count captured frames, so a slow reader sees gaps, never a backlog.
    """

    def __init__(
        self,
        device: int | str,
        *,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        loop: bool = True,
        stall_timeout: float = 3.0,
        open_timeout: float = 10.0,
        name: str | None = None,
    ) -> None:
        if stall_timeout <= 0 or open_timeout <= 0:
            raise ValueError("stall_timeout and open_timeout must be positive")
        if fps is not None and fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        spec = _spec(device)
        assert spec is not None
        self.device: int | str = spec
        self.width = width
        self.height = height
        self.fps = fps
        self.loop = loop
        self.stall_timeout = stall_timeout
        self.open_timeout = open_timeout
        self.name = name or (
            f"camera {spec}" if isinstance(spec, int) else f"video source {spec!r}"
        )
        # The camera's path in the device lists (CameraInfo.path) for an index on Linux.
        self.device_id = (
            f"/dev/video{spec}" if isinstance(spec, int) and sys.platform.startswith("linux")
            else str(spec)
        )
        self._session: _Capture | None = None

    @property
    def running(self) -> bool:
        """Whether the camera is started."""
        return self._session is not None

    @property
    def dropped(self) -> int:
        """Frames of the current session replaced by a newer one before ``read()`` took them."""
        session = self._session
        return session.dropped if session is not None else 0

    @property
    def is_file(self) -> bool:
        """Whether the device is a local video file (paced at its frame rate)."""
        return isinstance(self.device, str) and Path(self.device).is_file()

    async def start(self) -> None:
        """Open the device (in a thread) and start capturing. Idempotent."""
        if self._session is not None:
            return
        loop = asyncio.get_running_loop()
        opening = loop.run_in_executor(None, self._open)
        try:
            cap, first, fps = await asyncio.wait_for(asyncio.shield(opening), self.open_timeout)
        except TimeoutError:
            opening.add_done_callback(_release_abandoned)
            raise DeviceError(
                f"cannot open {self.name}: no answer within {self.open_timeout:g} s",
                ErrorCode.CAMERA_START_FAIL,
            ) from None
        except DeviceError:
            raise
        except Exception as exc:  # cv2.error and the like
            raise DeviceError(f"cannot open {self.name}: {exc}",
                              ErrorCode.CAMERA_START_FAIL) from exc
        session = _Capture(loop)
        session.slot = CapturedFrame(first, time.time(), 0)
        session.captured = 1
        session.thread = threading.Thread(
            target=self._run, args=(session, cap, fps), name=f"{self.name} capture", daemon=True
        )
        self._session = session
        session.thread.start()

    async def read(self) -> CapturedFrame:
        """The newest frame not yet read, waiting for one; ``DeviceError`` when the source fails."""
        session = self._session
        while True:
            if session is None or session is not self._session:
                raise DeviceError(f"{self.name} is not started", ErrorCode.CAMERA_STOPPED)
            session.wake.clear()
            with session.lock:
                frame, session.slot = session.slot, None
                last = session.last_frame
            if frame is not None:
                return frame
            if session.error is not None:
                raise session.error
            remaining = last + self.stall_timeout - time.monotonic()
            if remaining <= 0:
                raise DeviceError(
                    f"{self.name} delivered no frame for {self.stall_timeout:g} s",
                    ErrorCode.CAMERA_STOPPED,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.wake.wait(), remaining)

    async def stop(self) -> None:
        """Stop the capture thread (joined with a timeout); it releases the device. Idempotent."""
        session, self._session = self._session, None
        if session is None:
            return
        session.stopping.set()
        session.wake.set()
        thread = session.thread
        if thread is not None:
            await asyncio.to_thread(thread.join, _JOIN_TIMEOUT)
            if thread.is_alive():
                logger.warning(
                    "%s: capture thread still blocked after %g s; it releases the device "
                    "when its read returns", self.name, _JOIN_TIMEOUT,
                )

    # -- capture thread and helpers

    def _open_capture(self) -> Any:
        device = self.device
        if isinstance(device, int):
            backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            return cv2.VideoCapture(device, backend)
        return cv2.VideoCapture(device)

    def _open(self) -> tuple[Any, Image, float | None]:
        """Open the capture, apply the hints, read a first frame (runs in a thread)."""
        device = self.device
        if isinstance(device, str) and "://" not in device and not Path(device).exists():
            raise DeviceError(f"cannot open {self.name}: no such file or device",
                              ErrorCode.CAMERA_START_FAIL)
        cap = self._open_capture()
        try:
            if not cap.isOpened():
                raise DeviceError(f"cannot open {self.name}: OpenCV could not open it",
                                  ErrorCode.CAMERA_START_FAIL)
            file_fps: float | None = None
            if self.is_file:
                native = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
                file_fps = native if 0 < native <= 240 else (self.fps or 30.0)
            else:
                if self.width:
                    cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                if self.height:
                    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
                if self.fps:
                    cap.set(cv2.CAP_PROP_FPS, self.fps)
            ok, image = cap.read()
            if not ok or image is None:
                raise DeviceError(f"cannot open {self.name}: it opened but delivered no frame",
                                  ErrorCode.CAMERA_START_FAIL)
        except BaseException:
            cap.release()
            raise
        return cap, _bgr(image), file_fps

    def _run(self, session: _Capture, cap: Any, file_fps: float | None) -> None:
        """Capture thread: read frames into the slot until stopped, ended or failed."""
        period = 1.0 / file_fps if file_fps else 0.0
        due = time.monotonic() + period
        failures_since: float | None = None
        this_pass = 1
        try:
            while not session.stopping.is_set():
                if period:
                    delay = due - time.monotonic()
                    if delay > 0 and session.stopping.wait(delay):
                        break
                    due = max(due + period, time.monotonic() - period)
                ok, image = cap.read()
                if session.stopping.is_set():
                    break
                if ok and image is not None:
                    failures_since = None
                    this_pass += 1
                    with session.lock:
                        if session.slot is not None:
                            session.dropped += 1
                        session.slot = CapturedFrame(_bgr(image), time.time(), session.captured)
                        session.captured += 1
                        session.last_frame = time.monotonic()
                    if not session.notify():
                        break
                    continue
                if file_fps is not None:
                    if self.loop and this_pass > 0:
                        cap.release()
                        cap = self._open_capture()
                        this_pass = 0
                        if cap.isOpened():
                            continue
                    message = (f"{self.name} could not be reopened to loop" if self.loop
                               else f"{self.name} ended")
                    session.error = DeviceError(message, ErrorCode.CAMERA_STOPPED)
                    session.notify()
                    break
                now = time.monotonic()
                failures_since = failures_since or now
                if now - failures_since >= min(self.stall_timeout, 1.0):
                    session.error = DeviceError(
                        f"{self.name} stopped delivering: reading a frame failed",
                        ErrorCode.CAMERA_STOPPED,
                    )
                    session.notify()
                    break
                session.stopping.wait(0.01)
        except Exception as exc:  # an OpenCV error must not kill the thread silently
            logger.exception("%s: capture thread failed", self.name)
            session.error = DeviceError(f"{self.name} failed: {exc}", ErrorCode.CAMERA_STOPPED)
            session.notify()
        finally:
            cap.release()


def _release_abandoned(future: asyncio.Future[tuple[Any, Image, float | None]]) -> None:
    """Release a capture whose open finished after ``start()`` gave up on it."""
    if not future.cancelled() and future.exception() is None:
        future.result()[0].release()


def _bgr(image: Any) -> Image:
    array = np.asarray(image)
    if array.ndim == 2:
        array = cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    result: Image = np.ascontiguousarray(array, dtype=np.uint8)
    return result


# ---------------------------------------------------------------------------- microphone


class _OpenStreams:
    """How many PortAudio streams this process has open: PortAudio can only re-read its
    device list (a device plugged in) when there are none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0

    def add(self, delta: int) -> None:
        with self._lock:
            self._count += delta

    @property
    def any_open(self) -> bool:
        """Whether a stream is open now."""
        with self._lock:
            return self._count > 0

    def rescan_if_idle(self, sd: Any) -> bool:
        """Re-initialize PortAudio (a fresh device list) if no stream is open; whether done."""
        with self._lock:
            if self._count:
                return False
            sd._terminate()  # sounddevice's documented way to re-read the devices
            sd._initialize()
            return True


_STREAMS = _OpenStreams()


def _start_stream(
    stream_type: Any, device: int | str | None, latency: Any, callback: Any
) -> Any:
    """Open and start a 48 kHz mono int16 PortAudio stream of 20 ms blocks (blocking)."""
    stream = stream_type(
        samplerate=SAMPLE_RATE, channels=1, dtype="int16", blocksize=BLOCK_SAMPLES,
        device=device, latency=latency, callback=callback,
    )
    _STREAMS.add(1)
    try:
        stream.start()
    except BaseException:
        _close_stream(stream, abort=False)
        raise
    return stream


class SoundDeviceMicrophone(AudioSource):
    """A PortAudio input: 48 kHz mono int16 in 20 ms blocks.

    The PortAudio callback copies each block and hands it to the event loop with
    ``call_soon_threadsafe``; the loop puts it into a queue of at most ``queue_blocks`` blocks,
    dropping the oldest when full (counted in ``dropped``), so latency cannot grow. ``read()``
    raises ``DeviceError(MIC_START_FAIL)`` after ``stall_timeout`` seconds without audio.
    It is ``acoustic``: the engine processes it (echo, noise, gain) by default.
    """

    acoustic = True

    def __init__(
        self,
        device: DeviceSpec = None,
        *,
        queue_blocks: int = 10,
        stall_timeout: float = 3.0,
        latency: float | str = "low",
        name: str | None = None,
    ) -> None:
        if queue_blocks < 1:
            raise ValueError(f"queue_blocks must be >= 1, got {queue_blocks}")
        self.device = _spec(device)
        self.queue_blocks = queue_blocks
        self.stall_timeout = stall_timeout
        self.latency = latency
        self.name = name or (
            "default microphone" if self.device is None else f"microphone {self.device!r}"
        )
        self.device_id = "" if self.device is None else str(self.device)
        self._stream: Any = None
        self._queue: asyncio.Queue[Block | None] | None = None
        self.dropped = 0
        """Blocks dropped because the reader fell behind."""
        self.overflows = 0
        """Callbacks PortAudio flagged with an input overflow."""

    @property
    def running(self) -> bool:
        """Whether the input stream is open."""
        return self._stream is not None

    @property
    def input_latency(self) -> float:
        """PortAudio's input latency of the open stream plus one block (0 when closed)."""
        return _stream_latency(self._stream)

    async def start(self) -> None:
        """Open and start the input stream (in a thread). Idempotent."""
        if self._stream is not None:
            return
        sd = load_sounddevice(ErrorCode.MIC_START_FAIL)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Block | None] = asyncio.Queue(self.queue_blocks)
        pending: list[Block] = []

        def deliver(data: Block) -> None:  # on the loop
            if pending or data.size != BLOCK_SAMPLES:
                pending.append(data)
                joined = np.concatenate(pending)
                pending.clear()
                whole = joined.size - joined.size % BLOCK_SAMPLES
                if joined.size > whole:
                    pending.append(joined[whole:])
                blocks = [joined[i : i + BLOCK_SAMPLES] for i in range(0, whole, BLOCK_SAMPLES)]
            else:
                blocks = [data]
            for block in blocks:
                if queue is not self._queue:
                    return
                if queue.full():
                    queue.get_nowait()
                    self.dropped += 1
                queue.put_nowait(block)

        def callback(indata: Any, frames: int, time_info: Any, status: Any) -> None:
            if status.input_overflow:
                self.overflows += 1
            data = np.array(indata[:, 0], dtype=np.int16)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(deliver, data)

        try:
            stream = await asyncio.to_thread(
                _start_stream, sd.InputStream, self.device, self.latency, callback
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(f"cannot open {self.name}: {exc}", ErrorCode.MIC_START_FAIL) from exc
        self._queue = queue
        self._stream = stream

    async def read(self) -> Block:
        """The next 20 ms block; ``DeviceError`` if stopped or silent for ``stall_timeout``."""
        queue = self._queue
        if queue is None:
            raise DeviceError(f"{self.name} is not started", ErrorCode.MIC_START_FAIL)
        try:
            block = await asyncio.wait_for(queue.get(), self.stall_timeout)
        except TimeoutError:
            raise DeviceError(
                f"{self.name} delivered no audio for {self.stall_timeout:g} s",
                ErrorCode.MIC_START_FAIL,
            ) from None
        if block is None:
            queue.put_nowait(None)  # wake every other pending reader too
            raise DeviceError(f"{self.name} is not started", ErrorCode.MIC_START_FAIL)
        return block

    async def stop(self) -> None:
        """Stop and close the stream; a pending ``read()`` raises ``DeviceError``. Idempotent."""
        stream, self._stream = self._stream, None
        queue, self._queue = self._queue, None
        if queue is not None:
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        if stream is not None:
            await asyncio.to_thread(_close_stream, stream)


# ---------------------------------------------------------------------------- speaker


class SoundDeviceSpeaker(AudioSink):
    """A PortAudio output: 48 kHz mono int16 in 20 ms blocks, each taken from ``pull()``.

    The callback calls ``pull()`` (which must not block: the engine's ``Mixer.pull`` only takes
    a lock briefly) and plays silence if it raises or returns a bad block. The first
    ``prime_blocks`` callbacks play silence without pulling, because some backends (ALSA's
    PulseAudio plugin) drop part of the first buffer. ``stop()`` first lets the blocks already
    pulled play out, then closes the stream, so switching devices loses nothing.
    """

    def __init__(
        self,
        device: DeviceSpec = None,
        *,
        latency: float | str = "low",
        prime_blocks: int = 1,
        name: str | None = None,
    ) -> None:
        if prime_blocks < 0:
            raise ValueError(f"prime_blocks must be >= 0, got {prime_blocks}")
        self.device = _spec(device)
        self.latency = latency
        self.prime_blocks = prime_blocks
        self.name = name or (
            "default speaker" if self.device is None else f"speaker {self.device!r}"
        )
        self.device_id = "" if self.device is None else str(self.device)
        self._stream: Any = None
        self._draining = False
        self._played_until = 0.0
        self.blocks = 0
        """Blocks pulled since creation."""
        self.underflows = 0
        """Callbacks PortAudio flagged with an output underflow."""
        self.pull_errors = 0
        """Blocks replaced by silence because ``pull()`` raised or returned a bad block."""

    @property
    def running(self) -> bool:
        """Whether the output stream is open."""
        return self._stream is not None

    @property
    def output_latency(self) -> float:
        """PortAudio's output latency of the open stream plus one block (0 when closed)."""
        return _stream_latency(self._stream)

    async def start(self, pull: Callable[[], Block]) -> None:
        """Open the stream (in a thread) and start pulling. Starting twice is an error."""
        if self._stream is not None:
            raise RuntimeError(f"{self.name} is already started")
        sd = load_sounddevice(ErrorCode.SPEAKER_START_FAIL)
        self._draining = False
        self._played_until = 0.0
        priming = [self.prime_blocks]

        def callback(outdata: Any, frames: int, time_info: Any, status: Any) -> None:
            if status.output_underflow:
                self.underflows += 1
            if self._draining or priming[0] > 0:
                priming[0] -= 1
                outdata.fill(0)
                return
            for start in range(0, frames, BLOCK_SAMPLES):
                count = min(BLOCK_SAMPLES, frames - start)
                outdata[start : start + count, 0] = self._pull_one(pull)[:count]
            self._played_until = time_info.outputBufferDacTime + frames / SAMPLE_RATE

        try:
            self._stream = await asyncio.to_thread(
                _start_stream, sd.OutputStream, self.device, self.latency, callback
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(
                f"cannot open {self.name}: {exc}", ErrorCode.SPEAKER_START_FAIL
            ) from exc

    async def stop(self) -> None:
        """Play out the blocks already pulled, then stop and close the stream. Idempotent."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        self._draining = True
        await asyncio.sleep(BLOCK_SECONDS)  # a callback in progress finishes
        try:
            remaining = self._played_until - float(stream.time)
        except Exception:
            remaining = -1.0
        if self._played_until <= 0 or remaining > _MAX_DRAIN:
            remaining = float(stream.latency)  # no usable DAC times from this host API
        if remaining > 0:
            await asyncio.sleep(min(remaining, _MAX_DRAIN))
        await asyncio.to_thread(_close_stream, stream)

    def _pull_one(self, pull: Callable[[], Block]) -> Block:
        self.blocks += 1
        try:
            block = np.asarray(pull())
        except Exception:
            logger.exception("%s: pull() failed; playing silence", self.name)
            block = np.zeros(0, dtype=np.int16)
        if block.dtype != np.int16 or block.shape != (BLOCK_SAMPLES,):
            self.pull_errors += 1
            return np.zeros(BLOCK_SAMPLES, dtype=np.int16)
        return block


def _stream_latency(stream: Any) -> float:
    """A stream's reported latency plus its 20 ms block (the callback's own buffer)."""
    if stream is None:
        return 0.0
    try:
        return float(stream.latency) + BLOCK_SECONDS
    except Exception:
        return 0.0


def _close_stream(stream: Any, abort: bool = True) -> None:
    """Abort (no waiting for the buffer: what is left is silence or unwanted) and close."""
    try:
        if abort:
            stream.abort()
    finally:
        try:
            stream.close()
        finally:
            _STREAMS.add(-1)


# ---------------------------------------------------------------------------- listing


def list_devices(max_camera_index: int = 9, *, dev: str = "/dev",
                 rescan_audio: bool = False) -> DeviceList:
    """List cameras (``/dev/video*`` on Linux, else probing indices) and PortAudio devices.

    ``rescan_audio`` makes PortAudio read its device list again first (seeing devices plugged
    in since it started), which it can only do while this process has no audio stream open.
    """
    cameras = _list_cameras(max_camera_index, dev)
    try:
        sd = load_sounddevice()
        if rescan_audio:
            _STREAMS.rescan_if_idle(sd)
        devices = list(sd.query_devices())
        host_apis = [str(api["name"]) for api in sd.query_hostapis()]
        default_in, default_out = (int(i) if i is not None else -1 for i in sd.default.device)
    except DeviceError as exc:
        return DeviceList(cameras, audio_error=exc.message)
    microphones: list[AudioDeviceInfo] = []
    speakers: list[AudioDeviceInfo] = []
    for index, info in enumerate(devices):
        host_api = host_apis[info["hostapi"]] if info["hostapi"] < len(host_apis) else "?"
        for channels, default, out in (
            (int(info["max_input_channels"]), default_in, microphones),
            (int(info["max_output_channels"]), default_out, speakers),
        ):
            if channels > 0:
                out.append(AudioDeviceInfo(index, str(info["name"]), host_api, channels,
                                           float(info["default_samplerate"]), index == default))
    return DeviceList(cameras, microphones, speakers)


def _list_cameras(max_index: int, dev: str = "/dev") -> list[CameraInfo]:
    if sys.platform.startswith("linux"):
        found: list[CameraInfo] = []
        for path in glob.glob(f"{glob.escape(dev)}/video*"):
            match = re.fullmatch(r".*/video(\d+)", path)
            if match is None:
                continue
            sysfs = Path(f"/sys/class/video4linux/video{match.group(1)}/name")
            try:
                name = sysfs.read_text().strip()
            except OSError:
                name = path
            found.append(CameraInfo(int(match.group(1)), path, name))
        return sorted(found, key=lambda c: c.index or 0)
    cameras = []
    for index in range(max_index + 1):
        cap = cv2.VideoCapture(index)
        try:
            if cap.isOpened():
                cameras.append(CameraInfo(index, str(index), f"camera {index}"))
        finally:
            cap.release()
    return cameras


class SystemDeviceProbe:
    """The system's devices for a :class:`~callclient.media.devicewatch.DeviceWatcher`.

    The fingerprint is the names of the camera nodes (``video*``) and sound nodes
    (``snd/*``) under ``dev``: a directory listing, microseconds, while enumerating devices
    through OpenCV and PortAudio takes milliseconds. A change also makes PortAudio re-read its
    devices, which it does only while no audio stream is open; a sound device that appears
    mid-call is listed once the call's streams are closed (the fingerprint stays "dirty"
    until then).
    """

    def __init__(self, dev: str = "/dev", max_camera_index: int = 9) -> None:
        self.dev = dev
        self.max_camera_index = max_camera_index
        self._audio_stale = False

    def fingerprint(self) -> Hashable:
        """Camera and sound device node names (and whether audio still needs a rescan)."""
        try:
            video = sorted(n for n in os.listdir(self.dev) if n.startswith("video"))
        except OSError:
            video = []
        try:
            sound = sorted(os.listdir(os.path.join(self.dev, "snd")))
        except OSError:
            sound = []
        return tuple(video), tuple(sound), self._audio_stale

    def list(self) -> DeviceList:
        """Every device now; PortAudio re-reads its list when it can."""
        self._audio_stale = False
        listing = list_devices(self.max_camera_index, dev=self.dev, rescan_audio=True)
        if _STREAMS.any_open:  # a stream is open: the audio list is PortAudio's old one
            self._audio_stale = True
        return listing


# ---------------------------------------------------------------------------- device set


def real_devices(
    front: int | str | None = 0,
    back: int | str | None = 1,
    mic: DeviceSpec = None,
    speakerphone: DeviceSpec = None,
    earpiece: DeviceSpec = None,
    *,
    width: int = 1280,
    height: int = 720,
    fps: float = 30.0,
) -> DeviceSet:
    """A :class:`DeviceSet` of real devices; a camera given as None is left out.

    Cameras are OpenCV indices or paths/URLs (a video file stands in for a camera); audio
    devices are PortAudio indices or names, None for the system default. Nothing is opened
    until the engine starts a device.
    """
    cameras: dict[Camera, VideoSource] = {}
    for camera, spec in ((Camera.FRONT, front), (Camera.BACK, back)):
        if spec is not None:
            cameras[camera] = OpenCVCamera(spec, width=width, height=height, fps=fps,
                                           name=f"{camera.name.lower()} camera ({spec})")
    return DeviceSet(
        probe=SystemDeviceProbe(),
        cameras=cameras,
        microphone=SoundDeviceMicrophone(mic, name=f"microphone ({_label(mic)})"),
        speakers={
            AudioPlaybackDevice.SPEAKERPHONE: SoundDeviceSpeaker(
                speakerphone, name=f"speakerphone ({_label(speakerphone)})"
            ),
            AudioPlaybackDevice.EARPIECE: SoundDeviceSpeaker(
                earpiece, name=f"earpiece ({_label(earpiece)})"
            ),
        },
    )


def _label(device: DeviceSpec) -> str:
    return "default device" if device is None else repr(device)
