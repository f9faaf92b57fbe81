"""Call-progress tones: a looping WAV player for a ringtone or a ringback, and the tones.

:class:`TonePlayer` plays a sound file in a loop through an :class:`AudioSink` while a call
rings. A call's own audio must take the same output over once the call connects, so an app
wraps each output in a :class:`SharedSink`: the engine starts and stops the shared sink as
usual, and its ``start()`` first stops a tone still playing on it (waiting for that stop to
finish), while a tone started through :attr:`SharedSink.tone` never interrupts a call's audio.

:func:`ringtone` and :func:`ringback` synthesize the default tones, :func:`write_wav` writes
them (``scripts/make-tones`` writes the copies the package ships, :mod:`callclient.assets`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import wave
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from callclient.errors import DeviceError, ErrorCode
from callclient.media.base import BLOCK_SAMPLES, SAMPLE_RATE, AudioSink, Block

__all__ = [
    "TONE_RATE",
    "SharedSink",
    "TonePlayer",
    "load_audio",
    "ringback",
    "ringtone",
    "write_default_tones",
    "write_wav",
]

logger = logging.getLogger(__name__)

Pull = Callable[[], Block]

TONE_RATE = 16000
"""Sample rate of the generated tone files (enough for 400-450 Hz, and small files)."""
_MAX_SECONDS = 120.0
"""Longest sound a :class:`TonePlayer` loads (a longer file is cut)."""
_FADE_SECONDS = 0.005


def _burst(freqs: tuple[float, ...], seconds: float, rate: int, amplitude: float) -> Block:
    """A tone burst of the summed ``freqs`` with short fades (no clicks)."""
    t = np.arange(round(seconds * rate)) / rate
    wave_ = sum(np.sin(2 * np.pi * f * t) for f in freqs) / len(freqs)
    fade = min(len(t) // 2, round(_FADE_SECONDS * rate))
    envelope = np.ones(len(t))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        envelope[:fade] = ramp
        envelope[-fade:] = ramp[::-1]
    samples: Block = np.rint(amplitude * 32767 * wave_ * envelope).astype(np.int16)
    return samples


def _pattern(parts: list[tuple[tuple[float, ...], float]], rate: int, amplitude: float) -> Block:
    blocks = [
        _burst(freqs, seconds, rate, amplitude) if freqs
        else np.zeros(round(seconds * rate), np.int16)
        for freqs, seconds in parts
    ]
    return np.concatenate(blocks)


def ringtone(rate: int = TONE_RATE, amplitude: float = 0.4) -> Block:
    """A two-tone (400 + 450 Hz) double ring: 0.4 s on, 0.2 s off, 0.4 s on, 2 s off."""
    ring = (400.0, 450.0)
    return _pattern([(ring, 0.4), ((), 0.2), (ring, 0.4), ((), 2.0)], rate, amplitude)


def ringback(rate: int = TONE_RATE, amplitude: float = 0.3) -> Block:
    """The ringback a caller hears: 425 Hz, 1 s on, 4 s off."""
    return _pattern([((425.0,), 1.0), ((), 4.0)], rate, amplitude)


def write_wav(path: str | Path, samples: Block, rate: int = TONE_RATE) -> None:
    """Write int16 mono ``samples`` as a 16-bit PCM WAV file."""
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.asarray(samples, np.int16).astype("<i2").tobytes())


def write_default_tones(directory: str | Path) -> list[Path]:
    """Write ``ringtone.wav`` and ``ringback.wav`` into ``directory``; returns their paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "ringtone.wav", folder / "ringback.wav"]
    write_wav(paths[0], ringtone())
    write_wav(paths[1], ringback())
    return paths


def load_audio(path: str | Path, max_seconds: float = _MAX_SECONDS) -> Block:
    """Decode any PyAV-readable audio file to 48 kHz mono int16 (blocking; use a thread).

    Raises :class:`DeviceError` when the file cannot be read or holds no audio.
    """
    limit = round(max_seconds * SAMPLE_RATE)
    chunks: list[Block] = []
    total = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1).astype(np.int16)
                    chunks.append(chunk)
                    total += chunk.size
                if total >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1).astype(np.int16))
    except (OSError, IndexError, av.error.FFmpegError) as exc:
        raise DeviceError(f"cannot read tone {path}: {exc}", ErrorCode.SPEAKER_START_FAIL) from exc
    samples = np.concatenate(chunks)[:limit] if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise DeviceError(f"tone {path} holds no audio", ErrorCode.SPEAKER_START_FAIL)
    return samples


class _Loop:
    """Hands out 20 ms blocks of a sound, looping; thread-safe (a sink may pull anywhere)."""

    def __init__(self, samples: Block) -> None:
        reps = -(-BLOCK_SAMPLES // samples.size) + 1
        self._samples = np.tile(samples, reps) if samples.size < 2 * BLOCK_SAMPLES else samples
        self._period = samples.size
        self._pos = 0
        self._lock = threading.Lock()

    def pull(self) -> Block:
        with self._lock:
            pos = self._pos
            self._pos = (pos + BLOCK_SAMPLES) % self._period
        end = pos + BLOCK_SAMPLES
        if end <= self._samples.size:
            return self._samples[pos:end].copy()
        head = self._samples[pos:]
        return np.concatenate([head, self._samples[: BLOCK_SAMPLES - head.size]])


class SharedSink(AudioSink):
    """One output shared by a call (``start``/``stop``, as the engine uses them) and a tone.

    The call has priority: ``start()`` stops a tone playing on the output, waiting until it
    has stopped, before it starts the call's audio; a tone started through :attr:`tone`
    while the call's audio plays stays silent. Every start and stop is serialized.
    """

    def __init__(self, inner: AudioSink) -> None:
        self.inner = inner
        self.name = inner.name
        self._lock = asyncio.Lock()
        self._owner: str | None = None
        self.tone = _TonePort(self)
        """The tone side of this output: an :class:`AudioSink` for a :class:`TonePlayer`."""

    @property
    def output_latency(self) -> float:
        """The shared output's latency."""
        return self.inner.output_latency

    @property
    def owner(self) -> str | None:
        """Who plays now: ``"call"``, ``"tone"`` or None."""
        return self._owner

    async def start(self, pull: Pull) -> None:
        """Start the call's audio, first stopping a tone. Starting twice is an error."""
        async with self._lock:
            if self._owner == "call":
                raise RuntimeError(f"{self.name} is already started")
            if self._owner == "tone":
                self._owner = None
                await self.inner.stop()
            await self.inner.start(pull)
            self._owner = "call"

    async def stop(self) -> None:
        """Stop the call's audio (a tone is left alone). Idempotent."""
        async with self._lock:
            if self._owner == "call":
                self._owner = None
                await self.inner.stop()

    async def _start_tone(self, pull: Pull) -> None:
        async with self._lock:
            if self._owner is None:
                await self.inner.start(pull)
                self._owner = "tone"

    async def _stop_tone(self) -> None:
        async with self._lock:
            if self._owner == "tone":
                self._owner = None
                await self.inner.stop()


class _TonePort(AudioSink):
    """The tone side of a :class:`SharedSink`."""

    def __init__(self, shared: SharedSink) -> None:
        self._shared = shared
        self.name = f"{shared.name} (tone)"

    async def start(self, pull: Pull) -> None:
        """Play ``pull`` unless the output is busy with a call."""
        await self._shared._start_tone(pull)

    async def stop(self) -> None:
        """Stop the tone if it plays. Idempotent."""
        await self._shared._stop_tone()


class TonePlayer:
    """Plays a sound file in a loop through a sink: ``await start(path)``, ``await stop()``.

    Files are decoded once (in a thread) and cached. Starting while playing restarts with the
    new file; :meth:`stop` is idempotent. Pass :attr:`SharedSink.tone` as the sink when the
    engine uses the same output.
    """

    def __init__(self, sink: AudioSink) -> None:
        self.sink = sink
        self._cache: dict[Path, Block] = {}
        self._playing: Path | None = None
        self._lock = asyncio.Lock()

    @property
    def playing(self) -> Path | None:
        """The file playing now, or None."""
        return self._playing

    async def start(self, path: str | Path) -> None:
        """Play ``path`` in a loop (decoded on first use); raises :class:`DeviceError`."""
        key = Path(path)
        async with self._lock:
            samples = self._cache.get(key)
            if samples is None:
                samples = await asyncio.to_thread(load_audio, key)
                self._cache[key] = samples
            await self._stop_locked()
            await self.sink.start(_Loop(samples).pull)
            self._playing = key

    async def stop(self) -> None:
        """Stop playing. Idempotent."""
        async with self._lock:
            await self._stop_locked()

    async def set_sink(self, sink: AudioSink) -> None:
        """Move to another output (e.g. a new playback route), still playing if it was."""
        async with self._lock:
            playing = self._playing
            await self._stop_locked()
            self.sink = sink
            if playing is not None:
                await self.sink.start(_Loop(self._cache[playing]).pull)
                self._playing = playing

    async def _stop_locked(self) -> None:
        if self._playing is not None:
            self._playing = None
            await self.sink.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m callclient.media.tones DIR``: write the default tones into ``DIR``."""
    import argparse

    parser = argparse.ArgumentParser(description="Write the ringtone and ringback WAV files.")
    parser.add_argument("directory", help="where to write them (the package's: "
                        "callclient/assets in a checkout)")
    args = parser.parse_args(argv)
    for path in write_default_tones(args.directory):
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
