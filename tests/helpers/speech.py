"""Deterministic test signals for the audio-processing tests: speech, noises, rooms.

Signals are float64 at 48 kHz with full scale 1.0 (:func:`to_int16` converts). Speech is
espeak-ng (the Debian package) speaking Harvard sentences, written to a WAV once per process
and resampled to 48 kHz with PyAV; every random part has a fixed seed, so a run is
bit-identical to the last on the same espeak-ng build. Two talkers differ in voice, pitch
and text: ``far`` (the remote user) and ``near`` (the local one).

Levels: the *active level* of speech is the RMS over its active 10 ms frames (within 35 dB
of the loudest, a simplified ITU-T P.56), in dBFS (20 log10 of the RMS).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers.audio_metrics import FS, active_level_db, active_mask, level_db, power

__all__ = [
    "FS",
    "EchoScenario",
    "convolve",
    "echo_scenario",
    "hum_noise",
    "noisy_speech",
    "pink_noise",
    "room_ir",
    "set_active_level",
    "speech",
    "to_int16",
    "white_noise",
]

Signal = npt.NDArray[np.float64]

FAR_TEXT = (
    "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background. "
    "It is easy to tell the depth of a well. These days a chicken leg is a rare dish. "
    "Rice is often served in round bowls. The juice of lemons makes fine punch. "
    "The box was thrown beside the parked truck. The hogs were fed chopped corn and garbage. "
    "Four hours of steady work faced us. A large size in stockings is hard to sell. "
    "The boy was there when the sun rose. A rod is used to catch pink salmon."
)
NEAR_TEXT = (
    "The small pup gnawed a hole in the sock. The fish twisted and turned on the bent hook. "
    "Press the pants and sew a button on the vest. The swan dive was far short of perfect. "
    "The beauty of the view stunned the young boy. Two blue fish swam in the tank. "
    "Her purse was full of useless trash. The colt reared and threw the tall rider. "
    "It snowed, rained, and hailed the same morning. Read verse out loud for pleasure."
)
_VOICES = {"far": ("en-us", 165, 40, FAR_TEXT), "near": ("en-gb+f3", 150, 60, NEAR_TEXT)}


def to_int16(x: Signal) -> npt.NDArray[np.int16]:
    """Full scale 1.0 to int16, rounded and clipped."""
    return np.clip(np.rint(np.asarray(x) * 32767.0), -32768, 32767).astype(np.int16)


def set_active_level(x: Signal, level: float) -> Signal:
    """``x`` scaled so that its active level is ``level`` dBFS."""
    return x * 10 ** ((level - active_level_db(x)) / 20.0)


@functools.cache
def _espeak(which: str) -> Signal:
    """One talker's whole text at 48 kHz, DC removed, leading/trailing silence cut."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("the audio-processing tests speak with espeak-ng: apt-get install espeak-ng")
    voice, wpm, pitch, text = _VOICES[which]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"{which}.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-g", "4",
             "-w", str(path), text],
            check=True, capture_output=True, timeout=60,
        )
        with wave.open(str(path), "rb") as wav:
            rate = wav.getframerate()
            raw = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    frame = av.AudioFrame.from_ndarray(raw.reshape(1, -1).astype(np.int16), format="s16",
                                       layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="flt", layout="mono", rate=FS)
    chunks = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    y = np.concatenate(chunks).astype(np.float64)
    y -= y.mean()
    loud = np.flatnonzero(np.abs(y) > 1e-3)
    return y[loud[0] : loud[-1] + 1]


def speech(which: str = "near", level: float = -26.0, seconds: float | None = None) -> Signal:
    """One talker at ``level`` dBFS active level, looped with 0.3 s pauses to ``seconds``."""
    x = _espeak(which)
    if seconds is not None:
        n = round(seconds * FS)
        unit = np.concatenate([x, np.zeros(round(0.3 * FS))])
        x = np.tile(unit, n // unit.size + 1)[:n]
    return set_active_level(x, level)


def white_noise(n: int, seed: int) -> Signal:
    """Unit-power white noise."""
    return np.random.default_rng(seed).standard_normal(n)


def pink_noise(n: int, seed: int) -> Signal:
    """Unit-power 1/f noise (-3 dB/octave from 20 Hz), by shaping white noise's spectrum."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / FS)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    spectrum[0] = 0.0
    x = np.fft.irfft(spectrum, n)
    return x / np.sqrt(power(x))


def hum_noise(n: int, seed: int, f0: float = 100.0) -> Signal:
    """Unit-power mains hum: 100 Hz and its harmonics to 500 Hz, decaying, random phases."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / FS
    x = sum(a * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
            for k, a in zip(range(1, 6), (1.0, 0.5, 0.3, 0.15, 0.08), strict=True))
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(power(x))


NOISES = {"white": white_noise, "pink": pink_noise, "hum": hum_noise}


def convolve(x: Signal, h: Signal) -> Signal:
    """Linear convolution by FFT, cut to ``len(x)``."""
    size = 1 << int(np.ceil(np.log2(x.size + h.size - 1)))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: x.size]


def room_ir(rt60: float = 0.25, seconds: float = 0.35, seed: int = 7) -> Signal:
    """A loudspeaker-to-microphone impulse response of unit energy.

    A direct path at 1 ms, then from 3 ms an exponentially decaying Gaussian tail (60 dB in
    ``rt60``, slightly low-passed like air and walls) with as much energy as the direct path.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * FS)
    start = round(0.003 * FS)
    t = np.arange(n - start) / FS
    tail = rng.standard_normal(n - start) * np.exp(-3.0 * np.log(10.0) * t / rt60)
    tail = np.convolve(tail, [0.6, 0.4])[: tail.size]
    h = np.zeros(n)
    h[start:] = tail / np.sqrt(np.sum(tail**2))
    h[round(0.001 * FS)] += 1.0
    return h / np.sqrt(np.sum(h**2))


@dataclass
class EchoScenario:
    """Far-end speech played, and the microphone hearing its echo and the near end.

    ``segments`` (seconds): far end only, double talk, near end only, far end only again.
    """

    far: Signal
    """What the speaker plays (the echo canceller's reference)."""
    echo: Signal
    """The echo of ``far`` at the microphone."""
    near: Signal
    """The near-end talker at the microphone (zero outside double talk and near only)."""
    noise: Signal
    delay_ms: float
    atten_db: float
    segments: dict[str, tuple[float, float]]

    @property
    def mic(self) -> Signal:
        """What the microphone picks up."""
        return self.echo + self.near + self.noise


ECHO_SEGMENTS = {"far_only": (2.0, 14.0), "double_talk": (14.0, 22.0),
                 "near_only": (22.0, 26.0), "far_only_again": (26.0, 34.0)}


def echo_scenario(
    delay_ms: float = 120.0, atten_db: float = -9.0, seed: int = 1, noise_db: float = -70.0
) -> EchoScenario:
    """34 s of far-end speech (silent 22..26 s), its echo through a room, the near end 14..26 s.

    The echo is the far end through :func:`room_ir` after a bulk delay of ``delay_ms``, at
    ``atten_db`` relative to the far end's power; the microphone adds white noise at
    ``noise_db`` dBFS. Both talkers speak at -26 dBFS active level.
    """
    end = ECHO_SEGMENTS["far_only_again"][1]
    n = round(end * FS)

    def at(t: float) -> int:
        return round(t * FS)

    far = speech("far", -26.0, seconds=end)
    far[at(22.0) : at(26.0)] = 0.0
    near = np.zeros(n)
    near[at(14.0) : at(26.0)] = speech("near", -26.0, seconds=12.0)
    delay = round(delay_ms * FS / 1000.0)
    echo = np.concatenate([np.zeros(delay), convolve(far, room_ir(seed=seed + 6))])[:n]
    echo *= np.sqrt(10 ** (atten_db / 10.0) * power(far[: at(22.0)])
                    / power(echo[delay : at(22.0)]))
    noise = white_noise(n, seed + 100) * 10 ** (noise_db / 20.0)
    return EchoScenario(far, echo, near, noise, delay_ms, atten_db, dict(ECHO_SEGMENTS))


def noisy_speech(kind: str, snr_db: float = 5.0, seconds: float = 20.0,
                 lead: float = 2.0, seed: int = 3) -> tuple[Signal, Signal]:
    """(clean speech after ``lead`` s of nothing, ``kind`` noise at ``snr_db`` to it)."""
    clean = np.concatenate([np.zeros(round(lead * FS)), speech("near", -26.0, seconds)])
    noise = NOISES[kind](clean.size, seed)
    mask = active_mask(clean)
    noise *= 10 ** ((level_db(clean, mask) - snr_db - level_db(noise, mask)) / 20.0)
    return clean, noise
